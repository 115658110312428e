//! The thread that owns the connection: it takes the jobs waiting, runs them in one
//! transaction and answers each once the transaction is committed: an answered decision is a
//! recorded one. (No savepoint per job: SQLite copies every page a savepoint's job touches,
//! which made a decision with a million keys cost a third more: 62 against 46 µs of CPU.)

use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::mpsc;

use super::tables;
use crate::store::StoreError;

/// Jobs grouped into one transaction at most: enough to carry a burst, few enough that the
/// write lock is not held long.
const MAX_GROUP: usize = 256;
/// How often expired rows are removed, a bounded number at a time, between groups.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// How often the live row count behind the key cap is read again (other processes add rows
/// too).
const RECOUNT_EVERY: Duration = Duration::from_secs(10);

/// The connection and what the thread knows about the file.
#[derive(Debug)]
pub(super) struct Db {
    pub(super) connection: Connection,
    /// Counter rows, as last counted plus those added since: the key cap's measure.
    pub(super) rows: usize,
    /// Counter rows kept at most.
    pub(super) max_keys: usize,
    /// The machine's clock, for sweeping.
    pub(super) clock: std::sync::Arc<dyn crate::clock::Clock>,
}

/// What a job says once its transaction has ended: `None` committed, or why it did not.
pub(super) type Answer = Box<dyn FnOnce(Option<&StoreError>) + Send>;
/// One call to the store: run against the database (or told why it cannot be), it returns
/// what it will answer, and whether one of its statements failed (the group is then undone).
pub(super) type Job = Box<dyn FnOnce(Result<&mut Db, &StoreError>) -> (Answer, bool) + Send>;

/// Runs jobs until every sender is gone.
pub(super) fn run(mut db: Db, mut jobs: mpsc::Receiver<Job>) {
    let mut last_sweep = Instant::now();
    let mut last_count = Instant::now();
    while let Some(first) = jobs.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        run_group(&mut db, group);
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            if let Err(e) = tables::sweep(&mut db) {
                tracing::warn!(error = %e, "SQLite store: could not remove expired rows");
            }
        }
        if last_count.elapsed() >= RECOUNT_EVERY {
            last_count = Instant::now();
            match tables::count_counters(&db.connection) {
                Ok(rows) => db.rows = rows,
                Err(e) => tracing::warn!(error = %e, "SQLite store: could not count rows"),
            }
        }
    }
}

/// One transaction for `group`; each job's answer goes out after the commit. A job whose
/// statement fails (the disk is full, the file is damaged) fails the whole group, which is
/// rolled back: no job is answered as done unless all of its writes are committed. A refusal
/// (an existing user, a taken key) writes nothing and fails nothing.
fn run_group(db: &mut Db, group: Vec<Job>) {
    let rows_before = db.rows;
    // IMMEDIATE: take the write lock now (waiting up to the busy timeout for another process),
    // so that no statement inside finds the database locked halfway.
    let begun = db
        .connection
        .execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| unavailable("begin", &e));
    let mut failed = None;
    let answers: Vec<Answer> = group
        .into_iter()
        .map(|job| match (&begun, &failed) {
            (Err(e), _) | (Ok(()), Some(e)) => job(Err(e)).0,
            (Ok(()), None) => {
                let (answer, statement_failed) = job(Ok(db));
                if statement_failed {
                    failed = Some(StoreError::Unavailable(
                        "SQLite: a statement failed; the group was rolled back".into(),
                    ));
                }
                answer
            }
        })
        .collect();
    let ended = match (begun, failed) {
        (Err(e), _) | (Ok(()), Some(e)) => Err(e),
        (Ok(()), None) => db
            .connection
            .execute_batch("COMMIT")
            .map_err(|e| unavailable("commit", &e)),
    };
    if let Err(e) = &ended {
        let _ = db.connection.execute_batch("ROLLBACK");
        db.rows = rows_before;
        tracing::debug!(error = %e, "SQLite store: a group failed");
    }
    for answer in answers {
        answer(ended.as_ref().err());
    }
}

/// A database error on a store call: the store cannot answer now.
pub(super) fn unavailable(what: &str, e: &rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("SQLite {what}: {e}"))
}
