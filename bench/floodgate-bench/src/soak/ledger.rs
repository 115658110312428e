//! The ledger: one record per call, whatever its end, with the wall-clock times it was sent
//! and answered. Everything the report says is computed from it afterwards.
//!
//! Times are the wall clock (`CLOCK_REALTIME`) in microseconds since the Unix epoch, the clock
//! Redis' `TIME` reads on this same machine: a decision Redis made for a call was made between
//! the call's `sent` and `answered`, which is what places an admission in its window.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::client::Answer;

/// Now, in microseconds since the Unix epoch.
pub(crate) fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A limited key (`sec` and `min` descriptors): the steady load whose admissions the
    /// ledger checks against the limits.
    Limited,
    /// An unconstrained key (`free`): answered OK whenever the store decides, so that every
    /// replica shows many decisions a second (the recovery signal).
    Free,
    /// A limited key, sent in an overload burst.
    Burst,
}

/// One call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    /// Sent (µs, wall clock).
    pub(crate) sent: u64,
    /// Answered, failed or given up on (µs, wall clock).
    pub(crate) answered: u64,
    /// From when the open loop meant to send it to its end (µs): the latency a client sees.
    pub(crate) latency: u32,
    /// The replica it went to.
    pub(crate) replica: u8,
    /// What it was for.
    pub(crate) class: Class,
    /// The key's number within its class.
    pub(crate) key: u32,
    /// How it ended.
    pub(crate) answer: Answer,
}

/// Every record of the run, shared by the calls that add to it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ledger {
    records: Arc<Mutex<Vec<Record>>>,
}

impl Ledger {
    /// Adds one record. The lock is held for a push only.
    pub(crate) fn push(&self, record: Record) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }

    /// Every record so far, by the time it was sent.
    pub(crate) fn sorted(&self) -> Vec<Record> {
        let mut records = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        records.sort_by_key(|r| r.sent);
        records
    }
}

/// Writes `records` to `path` as CSV, one call a line.
pub(crate) fn write_csv(records: &[Record], path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "sent_us,answered_us,latency_us,replica,class,key,outcome,reset_s"
    )?;
    for r in records {
        writeln!(
            out,
            "{},{},{},{},{:?},{},{},{}",
            r.sent,
            r.answered,
            r.latency,
            r.replica,
            r.class,
            r.key,
            r.answer.outcome.name(),
            r.answer.reset_secs
        )?;
    }
    out.flush()
}
