//! Admissions against the limits, from the ledger: per key and window, the OK answers against
//! the limit; and per failover, the writes Redis acknowledged and then lost.
//!
//! **Which window an answer counted in.** Windows are aligned to the Unix epoch and Redis
//! decides by its own clock (`TIME`), which on this machine is the wall clock the ledger reads.
//! A call's decision was made between its `sent` and `answered` times, so when both fall in
//! one window, that is its window; when a window boundary lies between them (about
//! latency ÷ window of the answers), the answer may belong to either. Over-admission is then
//! the least any placement of those ambiguous answers allows: windows in time order, each
//! takes the answers that must be in it, then as many of the ambiguous answers it shares with
//! the next window as its limit leaves room for; the rest move on. No placement admits fewer
//! beyond the limits, so a non-zero figure is over-admission whatever the exact timing.
//!
//! **Lost writes.** Around each master fault, the per-minute counter of every limited key is
//! read ([`Snapshot`]): from the old master just before the fault (a check of the method: it
//! should find no loss), from the new master as soon as every Sentinel names it, and once more
//! when the fault has settled, from the master the Sentinels then agree on. Every OK answered
//! before a read began must be in it; the answers in flight during the read, or sent before the
//! window began and answered in it, may or may not be. A key whose counter is below the OKs
//! that must be in it lost at least the difference (the low bound), and at most the difference
//! with the uncertain ones added (the high bound). Over-admission in a window the fault's
//! handling overlaps is explained up to the high bound on the same key: since the counter never
//! passes its limit, what a window admits beyond it cannot exceed the OKs missing from the
//! counter.

use std::collections::BTreeMap;

use super::faults::{FaultEvent, Snapshot};
use super::ledger::{Class, Record};

/// A fixed-window limit the ledger checks.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct WindowLimit {
    /// `sec` or `min`: the descriptor key.
    pub(crate) name: &'static str,
    /// Requests per window.
    pub(crate) limit: u32,
    /// Window length (µs).
    pub(crate) window_us: u64,
}

/// A window that admitted more than its limit.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct OverWindow {
    /// Which limit.
    pub(crate) limit_name: &'static str,
    /// The limited key.
    pub(crate) key: u32,
    /// The window's start (ms since the epoch).
    pub(crate) window_start_ms: u64,
    /// Admissions that must lie in it (the placement above).
    pub(crate) admitted: u32,
    /// The limit.
    pub(crate) limit: u32,
    /// Admitted beyond it.
    pub(crate) over: u32,
    /// The failover (fault number) whose handling, from its injection until its counters were
    /// read settled, overlaps the window, if one does.
    pub(crate) failover: Option<usize>,
    /// How much of `over` that failover's measured loss on this key explains.
    pub(crate) explained: u32,
}

/// One limit checked over the run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct LimitCheck {
    /// The limit.
    pub(crate) limit: WindowLimit,
    /// Windows with at least one admission.
    pub(crate) windows: usize,
    /// Windows that admitted exactly their limit (the limit was reached, so it was tested).
    pub(crate) windows_full: usize,
    /// Admissions (OK answers).
    pub(crate) admitted: u64,
    /// Admissions whose window was ambiguous (a boundary between sent and answered).
    pub(crate) ambiguous: u64,
    /// Admissions beyond the limits, in all.
    pub(crate) over_admitted: u64,
    /// Of which not explained by a failover's lost writes.
    pub(crate) unexplained: u64,
    /// The windows over their limit.
    pub(crate) over: Vec<OverWindow>,
}

/// Per window: admissions that lie in it, and ambiguous ones shared with the next window.
type Windows = BTreeMap<u64, (u32, u32)>;

/// Checks every limited key's admissions against `limit`; `losses` are the snapshots against
/// the ledger, whose measured lost writes explain over-admission in windows a failover's
/// handling overlaps.
pub(crate) fn check_limit(
    records: &[Record],
    limit: WindowLimit,
    faults: &[FaultEvent],
    losses: &[Loss],
) -> LimitCheck {
    let mut by_key: BTreeMap<u32, Windows> = BTreeMap::new();
    let mut check = LimitCheck {
        limit,
        windows: 0,
        windows_full: 0,
        admitted: 0,
        ambiguous: 0,
        over_admitted: 0,
        unexplained: 0,
        over: Vec::new(),
    };
    for r in records
        .iter()
        .filter(|r| limited(r) && r.answer.outcome.admitted())
    {
        let first = r.sent / limit.window_us;
        let last = (r.answered / limit.window_us).max(first);
        check.admitted += 1;
        let windows = by_key.entry(r.key).or_default();
        if last == first {
            windows.entry(first).or_default().0 += 1;
        } else {
            // Never more than two windows apart: deadlines are shorter than windows.
            check.ambiguous += 1;
            windows.entry(last - 1).or_default().1 += 1;
        }
    }
    for (key, windows) in by_key {
        place(key, &windows, &mut check, faults, losses);
    }
    check
}

/// Places one key's admissions (module doc) and records its windows over the limit.
fn place(
    key: u32,
    windows: &Windows,
    check: &mut LimitCheck,
    faults: &[FaultEvent],
    losses: &[Loss],
) {
    let limit = check.limit;
    let mut carried = 0u32;
    let mut starts: Vec<u64> = windows.keys().copied().collect();
    // An ambiguous answer may land in the window after the last one seen.
    starts.extend(windows.iter().filter(|(_, c)| c.1 > 0).map(|(w, _)| w + 1));
    starts.sort_unstable();
    starts.dedup();
    let mut previous = None;
    for w in starts {
        if previous.is_some_and(|p: u64| p + 1 != w) {
            carried = 0;
        }
        previous = Some(w);
        let (sure, shared) = windows.get(&w).copied().unwrap_or_default();
        let forced = sure + carried;
        let room = limit.limit.saturating_sub(forced);
        let kept = room.min(shared);
        carried = shared - kept;
        let count = forced + kept;
        check.windows += usize::from(count > 0);
        check.windows_full += usize::from(count == limit.limit);
        if forced > limit.limit {
            let over = forced - limit.limit;
            let window_start_us = w * limit.window_us;
            let window = window_start_us..window_start_us + limit.window_us;
            // The fault's handling (until its counters were read settled) overlaps the window.
            let failover = faults
                .iter()
                .position(|f| f.kind.fails_over() && f.at < window.end && window.start <= f.done);
            let lost = failover.map_or(0, |f| lost_on(losses, f, key, &window));
            let explained = over.min(lost);
            check.over_admitted += u64::from(over);
            check.unexplained += u64::from(over - explained);
            check.over.push(OverWindow {
                limit_name: limit.name,
                key,
                window_start_ms: window_start_us / 1000,
                admitted: forced,
                limit: limit.limit,
                over,
                failover,
                explained,
            });
        }
    }
}

/// The most writes of `key` that fault `fault`'s snapshots after the promotion found lost, in
/// a counter window holding `window` (µs).
fn lost_on(losses: &[Loss], fault: usize, key: u32, window: &std::ops::Range<u64>) -> u32 {
    losses
        .iter()
        .filter(|l| l.fault == fault && l.label != "before")
        .filter(|l| {
            let start = l.window_start_ms * 1000;
            start <= window.start && window.end <= start + l.window_us
        })
        .filter_map(|l| l.per_key_high.get(key as usize).copied())
        .max()
        .unwrap_or(0)
}

/// Whether `r` was a call on a limited key.
fn limited(r: &Record) -> bool {
    matches!(r.class, Class::Limited | Class::Burst)
}

/// What a counter snapshot says against the ledger.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Loss {
    /// The fault (its number) the snapshot belongs to.
    pub(crate) fault: usize,
    /// `before`, `promoted` or `settled` ([`Snapshot::label`]).
    pub(crate) label: &'static str,
    /// The node read.
    pub(crate) port: u16,
    /// The counter window read (ms since the epoch).
    pub(crate) window_start_ms: u64,
    /// Its length (µs).
    pub(crate) window_us: u64,
    /// Writes lost at least: OKs that must be in the counters and are not.
    pub(crate) lost_low: u64,
    /// Writes lost at most: the uncertain OKs assumed in the counters too.
    pub(crate) lost_high: u64,
    /// Counts in Redis beyond every OK the ledger saw (hits of calls that got no OK, such as
    /// a call whose answer was lost with its connection).
    pub(crate) unanswered_hits: u64,
    /// Keys whose counter showed a loss.
    pub(crate) keys_with_loss: usize,
    /// Per limited key, the high bound of its loss.
    #[serde(skip)]
    pub(crate) per_key_high: Vec<u32>,
}

/// Compares every snapshot of the faults with the ledger's OK answers for the same window
/// (`window_us` long).
pub(crate) fn losses(records: &[Record], faults: &[FaultEvent], window_us: u64) -> Vec<Loss> {
    let mut losses = Vec::new();
    for (n, fault) in faults.iter().enumerate() {
        for snapshot in &fault.snapshots {
            losses.push(compare(n, snapshot, records, window_us));
        }
    }
    losses
}

fn compare(fault: usize, snapshot: &Snapshot, records: &[Record], window_us: u64) -> Loss {
    let keys = snapshot.counts.len();
    let (mut sure, mut maybe) = (vec![0u64; keys], vec![0u64; keys]);
    let window_start = snapshot.window_start_ms * 1000;
    for r in records
        .iter()
        .filter(|r| limited(r) && r.answer.outcome.admitted())
    {
        let Some(k) = Some(r.key as usize).filter(|&k| k < keys) else {
            continue;
        };
        if r.answered < window_start || r.sent >= snapshot.end {
            continue;
        }
        if r.sent >= window_start && r.answered < snapshot.start {
            sure[k] += 1;
        } else {
            maybe[k] += 1;
        }
    }
    let mut loss = Loss {
        fault,
        label: snapshot.label,
        port: snapshot.port,
        window_start_ms: snapshot.window_start_ms,
        window_us,
        lost_low: 0,
        lost_high: 0,
        unanswered_hits: 0,
        keys_with_loss: 0,
        per_key_high: vec![0; keys],
    };
    for k in 0..keys {
        let count = snapshot.counts[k];
        let high = (sure[k] + maybe[k]).saturating_sub(count);
        loss.lost_low += sure[k].saturating_sub(count);
        loss.lost_high += high;
        loss.unanswered_hits += count.saturating_sub(sure[k] + maybe[k]);
        loss.keys_with_loss += usize::from(high > 0);
        loss.per_key_high[k] = high.min(u64::from(u32::MAX)) as u32;
    }
    loss
}

/// Writes the failovers lost in all: per fault, the highest high bound of its snapshots after
/// the promotion.
pub(crate) fn lost_writes(losses: &[Loss]) -> u64 {
    let mut per_fault: BTreeMap<usize, u64> = BTreeMap::new();
    for l in losses.iter().filter(|l| l.label != "before") {
        let worst = per_fault.entry(l.fault).or_default();
        *worst = (*worst).max(l.lost_high);
    }
    per_fault.values().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::client::{Answer, Outcome};
    use crate::soak::faults::FaultKind;

    const SECOND: u64 = 1_000_000;
    const LIMIT: WindowLimit = WindowLimit {
        name: "sec",
        limit: 2,
        window_us: SECOND,
    };

    /// An answer on `key`, sent and answered at these times (µs).
    fn record(key: u32, sent: u64, answered: u64, outcome: Outcome) -> Record {
        Record {
            sent,
            answered,
            latency: 0,
            replica: 0,
            class: Class::Limited,
            key,
            answer: Answer {
                outcome,
                reset_secs: 1,
            },
        }
    }

    fn ok(key: u32, sent: u64, answered: u64) -> Record {
        record(key, sent, answered, Outcome::Ok)
    }

    #[test]
    fn admissions_within_the_limit_are_not_over() {
        let records = [
            ok(0, 10, 20),
            ok(0, 30, 40),
            ok(1, 10, 20),
            ok(0, SECOND + 5, SECOND + 9),
        ];
        let check = check_limit(&records, LIMIT, &[], &[]);
        assert_eq!(
            (check.admitted, check.over_admitted, check.windows),
            (4, 0, 3)
        );
        assert_eq!(check.windows_full, 1);
    }

    #[test]
    fn denials_and_failure_mode_denials_are_not_admissions() {
        let records = [
            ok(0, 10, 20),
            ok(0, 30, 40),
            record(0, 50, 60, Outcome::OverLimit),
            record(0, 70, 80, Outcome::DegradedOverLimit),
        ];
        assert_eq!(check_limit(&records, LIMIT, &[], &[]).over_admitted, 0);
    }

    #[test]
    fn a_third_admission_in_a_window_of_two_is_over_and_unexplained_without_a_failover() {
        let records = [ok(0, 10, 20), ok(0, 30, 40), ok(0, 50, 60)];
        let check = check_limit(
            &records,
            LIMIT,
            &[FaultEvent::injected_at(FaultKind::FloodgateKill, 5)],
            &[],
        );
        assert_eq!((check.over_admitted, check.unexplained), (1, 1));
        assert_eq!(check.over[0].window_start_ms, 0);
    }

    #[test]
    fn ambiguous_answers_go_where_the_limits_leave_room() {
        // Two sure admissions in window 1, one that may be in 0 or 1: it fits in 0.
        let straddling = ok(0, SECOND - 10, SECOND + 10);
        let records = [
            straddling,
            ok(0, SECOND + 20, SECOND + 30),
            ok(0, SECOND + 40, SECOND + 50),
        ];
        let check = check_limit(&records, LIMIT, &[], &[]);
        assert_eq!((check.ambiguous, check.over_admitted), (1, 0));
        // Two sure ones in each window: the ambiguous one is over wherever it was.
        let mut crowded = records.to_vec();
        crowded.extend([ok(0, 10, 20), ok(0, 30, 40)]);
        assert_eq!(check_limit(&crowded, LIMIT, &[], &[]).over_admitted, 1);
    }

    #[test]
    fn over_admission_in_a_failover_s_window_is_explained_by_the_loss_measured() {
        let records = [ok(0, 10, 20), ok(0, 30, 40), ok(0, 50, 60), ok(0, 70, 80)];
        let faults = [FaultEvent::injected_at(FaultKind::MasterKill, 35)];
        let loss = |label, high| Loss {
            fault: 0,
            label,
            port: 1,
            window_start_ms: 0,
            window_us: 60 * SECOND,
            lost_low: 0,
            lost_high: u64::from(high),
            unanswered_hits: 0,
            keys_with_loss: 1,
            per_key_high: vec![high],
        };
        let check = check_limit(&records, LIMIT, &faults, &[loss("settled", 1)]);
        assert_eq!((check.over_admitted, check.unexplained), (2, 1));
        // A loss seen before the fault explains nothing.
        let check = check_limit(&records, LIMIT, &faults, &[loss("before", 5)]);
        assert_eq!(check.unexplained, 2);
        // Nor does a fault that cannot lose writes.
        let faults = [FaultEvent::injected_at(FaultKind::ConfigReload, 35)];
        let check = check_limit(&records, LIMIT, &faults, &[loss("settled", 5)]);
        assert_eq!(check.unexplained, 2);
    }

    #[test]
    fn a_snapshot_counts_as_lost_only_what_must_be_in_it() {
        let snapshot = Snapshot {
            label: "promoted",
            port: 1,
            start: 1000,
            end: 1100,
            window_start_ms: 0,
            counts: vec![2, 5],
        };
        let records = [
            // Key 0: three answered before the read (one is missing), one during it.
            ok(0, 10, 20),
            ok(0, 30, 40),
            ok(0, 50, 60),
            ok(0, 990, 1050),
            // Key 1: four before the read, yet Redis counts five (one without an OK).
            ok(1, 10, 20),
            ok(1, 30, 40),
            ok(1, 50, 60),
            ok(1, 70, 80),
            // After the read: not in it.
            ok(0, 1200, 1300),
        ];
        let loss = compare(0, &snapshot, &records, 60 * SECOND);
        assert_eq!((loss.lost_low, loss.lost_high), (1, 2));
        assert_eq!((loss.unanswered_hits, loss.keys_with_loss), (1, 1));
        assert_eq!(lost_writes(&[loss]), 2);
    }
}
