//! The run's plain figures from the ledger and the samples: load held, answers by kind,
//! deadline overruns, the servers' `duration_until_reset` against the ledger's windows, and
//! memory per replica process.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use super::client::{DEADLINE_EXCEEDED, Failure, Outcome};
use super::ledger::{Class, Record};
use super::load::Sent;
use super::memory::Sample;

/// The load as sent and as answered.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct LoadFigures {
    /// Requests a second asked for.
    pub(crate) target_rps: u64,
    /// Requests a second sent.
    pub(crate) sent_rps: f64,
    /// Steady-load calls sent.
    pub(crate) sent: u64,
    /// Calls due but not sent (the generator fell behind).
    pub(crate) not_sent: u64,
    /// Latency of the store's decisions, from the intended send time (ms): p50.
    pub(crate) p50_ms: f64,
    /// p99.
    pub(crate) p99_ms: f64,
    /// p99.9.
    pub(crate) p999_ms: f64,
    /// The slowest.
    pub(crate) max_ms: f64,
}

/// The load figures of the steady load.
pub(crate) fn load(records: &[Record], sent: Sent, target_rps: u64) -> LoadFigures {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static bounds");
    for r in records
        .iter()
        .filter(|r| r.class != Class::Burst && r.answer.outcome.decided())
    {
        let _ = histogram.record(u64::from(r.latency).max(1));
    }
    let ms = |us: u64| us as f64 / 1000.0;
    LoadFigures {
        target_rps,
        sent_rps: sent.sent as f64 / sent.elapsed.as_secs_f64().max(1e-9),
        sent: sent.sent,
        not_sent: sent.not_sent,
        p50_ms: ms(histogram.value_at_quantile(0.5)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        p999_ms: ms(histogram.value_at_quantile(0.999)),
        max_ms: ms(histogram.max()),
    }
}

/// Calls by how they ended, per class of call.
pub(crate) fn answers(records: &[Record]) -> BTreeMap<&'static str, BTreeMap<String, u64>> {
    let mut answers: BTreeMap<&'static str, BTreeMap<String, u64>> = BTreeMap::new();
    for r in records {
        let class = match r.class {
            Class::Limited => "limited",
            Class::Free => "free",
            Class::Burst => "burst",
        };
        *answers
            .entry(class)
            .or_default()
            .entry(r.answer.outcome.name())
            .or_insert(0) += 1;
    }
    answers
}

/// Calls that outlived their deadline.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct DeadlineFigures {
    /// The client's deadline (ms).
    pub(crate) deadline_ms: f64,
    /// Calls with no answer by then.
    pub(crate) past_deadline: u64,
    /// Calls the server itself ended with DEADLINE_EXCEEDED.
    pub(crate) deadline_exceeded: u64,
    /// The slowest call that was answered (ms from send to answer).
    pub(crate) slowest_answer_ms: f64,
}

/// The deadline figures over every call, bursts included.
pub(crate) fn deadlines(records: &[Record], deadline_ms: f64) -> DeadlineFigures {
    let overrun = |outcome| {
        records
            .iter()
            .filter(|r| r.answer.outcome == outcome)
            .count() as u64
    };
    DeadlineFigures {
        deadline_ms,
        past_deadline: overrun(Outcome::PastDeadline),
        deadline_exceeded: overrun(Outcome::Failed(Failure::Grpc(DEADLINE_EXCEEDED))),
        slowest_answer_ms: records
            .iter()
            .filter(|r| r.answer.outcome != Outcome::PastDeadline)
            .map(|r| r.answered.saturating_sub(r.sent))
            .max()
            .unwrap_or(0) as f64
            / 1000.0,
    }
}

/// How far apart the processes' readings of the clock may be: an answer from a replica's
/// cache of full counters states its reset from the replica's reading of the time, taken a
/// moment after Redis'.
const CLOCK_SLACK_US: u64 = 10_000;

/// Decisions on limited keys whose `duration_until_reset` names no window end the ledger's
/// timing allows for the per-minute window (`window_us`): the check that the ledger's clock
/// is the one Redis decides by. A status's reset is whole seconds rounded up, so the window
/// end lies in (t + (reset − 1) s, t + reset s] for the decision's time t in [sent, answered],
/// give or take [`CLOCK_SLACK_US`].
pub(crate) fn reset_mismatches(records: &[Record], window_us: u64) -> u64 {
    let second = 1_000_000;
    records
        .iter()
        .filter(|r| r.class != Class::Free && r.answer.outcome.decided())
        .filter(|r| {
            let reset = u64::from(r.answer.reset_secs) * second;
            let earliest = (r.sent + reset).saturating_sub(second + CLOCK_SLACK_US);
            let latest = r.answered + reset + CLOCK_SLACK_US;
            let ends = [r.sent, r.answered].map(|t| (t / window_us + 1) * window_us);
            !ends.iter().any(|&end| end > earliest && end <= latest)
        })
        .count() as u64
}

/// One replica process's memory over its life.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ProcessMemory {
    /// The replica.
    pub(crate) replica: u8,
    /// Its process id.
    pub(crate) pid: u32,
    /// Seconds it was sampled over.
    pub(crate) sampled_s: f64,
    /// RSS at the first sample (MiB).
    pub(crate) first_mib: f64,
    /// The highest (MiB).
    pub(crate) max_mib: f64,
    /// At the last sample (MiB).
    pub(crate) last_mib: f64,
}

/// Per replica process (a restart starts a new one), its RSS first, highest and last.
pub(crate) fn memory(samples: &[Sample]) -> Vec<ProcessMemory> {
    let mut by_process: BTreeMap<(u8, u32), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_process.entry((s.replica, s.pid)).or_default().push(s);
    }
    let mib = |kib: u64| (kib as f64 / 1024.0 * 10.0).round() / 10.0;
    let mut memory: Vec<ProcessMemory> = by_process
        .into_iter()
        .map(|((replica, pid), samples)| ProcessMemory {
            replica,
            pid,
            sampled_s: (samples[samples.len() - 1].at - samples[0].at) as f64 / 1e6,
            first_mib: mib(samples[0].rss_kib),
            max_mib: mib(samples.iter().map(|s| s.rss_kib).max().unwrap_or(0)),
            last_mib: mib(samples[samples.len() - 1].rss_kib),
        })
        .collect();
    memory.sort_by_key(|m| {
        (
            m.replica,
            samples.iter().find(|s| s.pid == m.pid).map(|s| s.at),
        )
    });
    memory
}
