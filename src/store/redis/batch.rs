//! Cross-request batching: the decisions of concurrent requests are queued and sent together,
//! by a few dispatcher tasks (one per pooled connection). Queued requests share script calls
//! (one call decides up to [`CALL_REQUESTS`] of them in turn, each all-or-nothing as if alone),
//! and the calls of a batch share one round trip. While a round trip is in flight, new
//! requests gather in the queue and leave in the next one: batching comes from load itself,
//! with no window to wait out when load is light.
//!
//! Redis pays a fixed cost per script call (parsing, setting up Lua, converting the reply)
//! about a third of a one-check decision's; shared calls pay it once for many requests.
//!
//! Every request carries its deadline (the store's timeout after it was queued) and is
//! answered by then: a dispatcher answers what expired in the queue at once, and waits for a
//! round trip no longer than the earliest deadline of its batch. One timer per round trip
//! instead of one per request; and since requests leave the queue in order, a request is
//! taken by the time every request before it has been answered, so by its own deadline.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::{Cmd, RedisError, Value};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;

use super::connections::Connections;
use super::{ScriptPart, decode, reply_values, script_call};
use crate::store::{Counted, StoreError};

/// Most requests in one round trip: bounds its size and that of a retry.
pub(crate) const MAX_BATCH: usize = 128;
/// Most requests decided by one script call: bounds how long Redis runs one script (other
/// clients wait meanwhile) while keeping the fixed cost per request small.
pub(crate) const CALL_REQUESTS: usize = 32;
/// Most checks in one script call, for the same reason (a request with more gets a call of
/// its own).
pub(crate) const CALL_CHECKS: usize = 128;
/// Calls that may wait in the queue; past it callers get an error at once, not a longer wait.
const QUEUE: usize = 16_384;

struct Job {
    part: ScriptPart,
    /// The time to decide at (`None`: the server's); requests share a call only with others
    /// of the same time and mode.
    now: Option<u64>,
    dry_run: bool,
    /// When the request stops waiting: it gets a timeout error then at the latest.
    deadline: Instant,
    reply: oneshot::Sender<Result<Counted, StoreError>>,
}

/// Counters of what the dispatchers sent, for metrics and tests.
#[derive(Debug, Default)]
pub(crate) struct BatchStats {
    pub(crate) round_trips: AtomicU64,
    pub(crate) script_calls: AtomicU64,
}

/// The queue of script calls and its dispatchers.
pub(crate) struct Batcher {
    queue: mpsc::Sender<Job>,
    timeout: Duration,
    pub(crate) stats: Arc<BatchStats>,
}

impl Batcher {
    /// Starts `dispatchers` tasks sending `script` calls over `backend`.
    pub(crate) fn start(
        backend: Connections,
        script: Arc<redis::Script>,
        dispatchers: u32,
        timeout: Duration,
        wait_replicas: u32,
    ) -> Batcher {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        let stats = Arc::new(BatchStats::default());
        for _ in 0..dispatchers.max(1) {
            let dispatcher = Dispatcher {
                backend: backend.clone(),
                script: script.clone(),
                receiver: receiver.clone(),
                stats: stats.clone(),
                timeout,
                wait_replicas,
                counters: std::sync::OnceLock::new(),
            };
            tokio::spawn(dispatcher.run());
        }
        Batcher {
            queue,
            timeout,
            stats,
        }
    }

    /// Queues one request's decision and waits for it, at most `timeout` (see the module).
    pub(crate) async fn call(
        &self,
        part: ScriptPart,
        now: Option<u64>,
        dry_run: bool,
    ) -> Result<Counted, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Job {
                part,
                now,
                dry_run,
                deadline: Instant::now() + self.timeout,
                reply,
            })
            .map_err(|_| StoreError::Unavailable("Redis call queue full".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("Redis dispatcher stopped".into())))
    }
}

struct Dispatcher {
    backend: Connections,
    script: Arc<redis::Script>,
    receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
    stats: Arc<BatchStats>,
    timeout: Duration,
    /// Replicas that must acknowledge a round trip's writes before its requests are answered
    /// (Redis `WAIT`); 0: none.
    wait_replicas: u32,
    /// Metric handles, taken at the first round trip: the store may be made before the
    /// recorder is installed.
    counters: std::sync::OnceLock<(metrics::Counter, metrics::Counter)>,
}

impl Dispatcher {
    async fn run(self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut calls = Vec::with_capacity(MAX_BATCH);
        loop {
            {
                // Held only to take what is queued, never across the round trip.
                let mut receiver = self.receiver.lock().await;
                let Some(first) = receiver.recv().await else {
                    return; // the store was dropped
                };
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match receiver.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
            }
            let now = Instant::now();
            for late in batch.extract_if(.., |job| job.deadline <= now) {
                let _ = late.reply.send(Err(StoreError::Timeout(self.timeout)));
            }
            let Some(deadline) = batch.iter().map(|job| job.deadline).min() else {
                continue; // all of it had expired in the queue
            };
            share_calls(&batch, &mut calls);
            let outcome = self.send(&batch, &calls, deadline).await;
            let mut jobs = batch.drain(..);
            match outcome {
                Ok(replies) => {
                    for (call, reply) in calls.iter().zip(replies) {
                        answer(&mut jobs, call.len(), &reply);
                    }
                }
                Err(e) => jobs.for_each(|job| {
                    let _ = job.reply.send(Err(clone_error(&e)));
                }),
            }
        }
    }

    /// The batch's round trip, answered by `deadline` (see [`Connections::within`]).
    async fn send(
        &self,
        batch: &[Job],
        calls: &[Range<usize>],
        deadline: Instant,
    ) -> Result<Vec<Value>, StoreError> {
        let exchange =
            |mut conn| async move { self.exchange(batch, calls, deadline, &mut conn).await };
        self.backend.within(deadline, self.timeout, exchange).await
    }

    /// One round trip for the whole batch (two if Redis had forgotten the script), one
    /// script call per range of `calls`, and then, when replicas must acknowledge, a `WAIT`.
    async fn exchange(
        &self,
        batch: &[Job],
        calls: &[Range<usize>],
        deadline: Instant,
        conn: &mut super::connections::Conn,
    ) -> Result<Vec<Value>, StoreError> {
        let hash = self.script.get_hash();
        let mut pipe = redis::pipe();
        for call in calls {
            let first = &batch[call.start];
            let parts = batch[call.clone()].iter().map(|job| &job.part);
            pipe.add_command(script_call(hash, first.now, first.dry_run, parts));
        }
        let script_calls = pipe.len();
        self.push_wait(&mut pipe, deadline);
        let mut replies = self.pipeline(conn, &mut pipe).await?;
        self.check_wait(&mut replies, script_calls)?;
        let missing: Vec<usize> = (0..replies.len())
            .filter(|&i| is_error(&replies[i], "NOSCRIPT"))
            .collect();
        if !missing.is_empty() {
            // Restarted or flushed: load the script once, then resend the calls that missed it.
            let load = self.script.prepare_invoke().load_async(conn).await;
            if let Err(e) = load {
                conn.check(&e);
                return Err(StoreError::from(e));
            }
            let sent: Vec<&Cmd> = pipe.cmd_iter().collect();
            let mut resend = redis::pipe();
            for &i in &missing {
                resend.add_command(sent[i].clone());
            }
            self.push_wait(&mut resend, deadline);
            let mut again = self.pipeline(conn, &mut resend).await?;
            self.check_wait(&mut again, missing.len())?;
            for (i, reply) in missing.into_iter().zip(again) {
                replies[i] = reply;
            }
        }
        Ok(replies)
    }

    /// Adds a `WAIT` for the replicas that must acknowledge, bounded by `deadline` (never 0,
    /// which would wait for ever), when there are any.
    fn push_wait(&self, pipe: &mut redis::Pipeline, deadline: Instant) {
        if self.wait_replicas > 0 {
            // Redis checks a WAIT's timeout about every 100 ms (hz 10): asked to stop that
            // much before the deadline, its answer, not the deadline, says what was missing.
            let left = deadline.saturating_duration_since(Instant::now());
            let left = left.saturating_sub(Duration::from_millis(110));
            let millis = (left.as_millis() as u64).max(1);
            pipe.cmd("WAIT").arg(self.wait_replicas).arg(millis);
        }
    }

    /// Takes the `WAIT` reply off the end of `replies` (after `script_calls` script replies):
    /// too few acknowledgements fail the whole round trip, since a failover could lose its
    /// hits.
    fn check_wait(&self, replies: &mut Vec<Value>, script_calls: usize) -> Result<(), StoreError> {
        if self.wait_replicas == 0 {
            return Ok(());
        }
        let acknowledged = match replies.get(script_calls) {
            Some(Value::Int(n)) => *n,
            other => {
                return Err(StoreError::Protocol(format!(
                    "WAIT answered {other:?}, not a count"
                )));
            }
        };
        replies.truncate(script_calls);
        if acknowledged < i64::from(self.wait_replicas) {
            return Err(StoreError::Unavailable(format!(
                "{acknowledged} of {} Redis replicas acknowledged the hits in time",
                self.wait_replicas
            )));
        }
        Ok(())
    }

    async fn pipeline(
        &self,
        conn: &mut super::connections::Conn,
        pipe: &mut redis::Pipeline,
    ) -> Result<Vec<Value>, StoreError> {
        let n = pipe.len() as u64;
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        self.stats.script_calls.fetch_add(n, Ordering::Relaxed);
        let (round_trips, script_calls) = self.counters.get_or_init(|| {
            (
                metrics::counter!(crate::telemetry::REDIS_ROUND_TRIPS),
                metrics::counter!(crate::telemetry::REDIS_SCRIPT_CALLS),
            )
        });
        round_trips.increment(1);
        script_calls.increment(n);
        // Errors of single calls (e.g. NOSCRIPT) come back as values, not as a failed batch.
        pipe.ignore_errors();
        let result: Result<Vec<Value>, RedisError> = pipe.query_async(conn).await;
        let replies = result.map_err(|e| {
            conn.check(&e);
            StoreError::from(e)
        })?;
        if replies.iter().any(|reply| is_error(reply, "READONLY")) {
            // A master demoted by a failover: as an error value, `check` never sees it. The
            // next connection finds the new master.
            conn.retire();
        }
        Ok(replies)
    }
}

fn is_error(value: &Value, code: &str) -> bool {
    matches!(value, Value::ServerError(e) if e.code() == code)
}

/// Splits `batch` into the ranges of requests that share a script call: consecutive, of the
/// same time and mode, at most [`CALL_REQUESTS`] requests and [`CALL_CHECKS`] checks.
fn share_calls(batch: &[Job], calls: &mut Vec<Range<usize>>) {
    calls.clear();
    let mut checks = 0;
    for (i, job) in batch.iter().enumerate() {
        match calls.last_mut() {
            Some(call)
                if call.len() < CALL_REQUESTS
                    && checks + job.part.checks <= CALL_CHECKS
                    && batch[call.start].now == job.now
                    && batch[call.start].dry_run == job.dry_run =>
            {
                call.end = i + 1;
                checks += job.part.checks;
            }
            _ => {
                calls.push(i..i + 1);
                checks = job.part.checks;
            }
        }
    }
}

/// Answers the next `count` requests of `jobs`, those of one script call, from its reply:
/// each its own share of the list, or all the call's error.
fn answer(jobs: &mut std::vec::Drain<'_, Job>, count: usize, reply: &Value) {
    let needed: usize = jobs.as_slice().iter().take(count).map(reply_size).sum();
    // A reply of another length than the call's requests need means the script and this
    // code disagree: no share of it is trusted.
    let values = reply_values(reply).and_then(|values| {
        if values.len() == needed {
            Ok(values)
        } else {
            Err(StoreError::Protocol(format!(
                "script replied {} values where its requests need {needed}",
                values.len()
            )))
        }
    });
    let mut offset = 0;
    for job in jobs.take(count) {
        let size = reply_size(&job);
        let result = match &values {
            // In range: the length was checked against these very requests above.
            Ok(values) => decode(&values[offset..offset + size], job.part.checks),
            Err(e) => Err(clone_error(e)),
        };
        offset += size;
        let _ = job.reply.send(result);
    }
}

/// Values a request's share of a reply holds: admitted, then three per check.
fn reply_size(job: &Job) -> usize {
    1 + 3 * job.part.checks
}

fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Timeout(d) => StoreError::Timeout(*d),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Protocol(m) => StoreError::Protocol(m.clone()),
        StoreError::CircuitOpen => StoreError::CircuitOpen,
        StoreError::Settings(m) => StoreError::Settings(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(now: Option<u64>, dry_run: bool) -> Job {
        sized(now, dry_run, 0)
    }

    fn sized(now: Option<u64>, dry_run: bool, checks: usize) -> Job {
        Job {
            part: ScriptPart::new(&vec![
                crate::store::Check::fixed_window("k", 5, 60, 1);
                checks
            ]),
            now,
            dry_run,
            deadline: Instant::now(),
            reply: oneshot::channel().0,
        }
    }

    fn shares(batch: &[Job]) -> Vec<Range<usize>> {
        let mut calls = Vec::new();
        share_calls(batch, &mut calls);
        calls
    }

    #[test]
    fn requests_share_a_call_only_with_neighbours_of_the_same_time_and_mode() {
        let batch = [
            job(None, false),
            job(None, false),
            job(Some(5), false),
            job(Some(5), false),
            job(Some(5), true),
            job(None, false),
        ];
        assert_eq!(shares(&batch), vec![0..2, 2..4, 4..5, 5..6]);
        assert!(shares(&[]).is_empty());
    }

    #[test]
    fn a_call_decides_at_most_call_requests_and_call_checks() {
        let batch: Vec<Job> = (0..2 * CALL_REQUESTS + 1)
            .map(|_| job(None, false))
            .collect();
        let n = CALL_REQUESTS;
        assert_eq!(shares(&batch), vec![0..n, n..2 * n, 2 * n..2 * n + 1]);
        // Checks are bounded too; a request with more than the bound still gets a call.
        let batch = [
            sized(None, false, CALL_CHECKS - 10),
            sized(None, false, 10),
            sized(None, false, 1),
            sized(None, false, CALL_CHECKS + 5),
            sized(None, false, 1),
        ];
        assert_eq!(shares(&batch), vec![0..2, 2..3, 3..4, 4..5]);
    }

    #[test]
    fn each_request_gets_its_share_of_the_reply_or_the_call_error() {
        let one = || {
            let (reply, answer) = oneshot::channel();
            let job = Job {
                reply,
                ..sized(None, false, 1)
            };
            (job, answer)
        };
        let int = Value::Int;
        // Two one-check requests: the first admitted with 4 left, the second denied.
        let reply = Value::Array(vec![
            int(1),
            int(0),
            int(4),
            int(1000),
            int(0),
            int(1),
            int(0),
            int(900),
        ]);
        let ((a, mut a_answer), (b, mut b_answer)) = (one(), one());
        answer(&mut vec![a, b].drain(..), 2, &reply);
        let a = a_answer.try_recv().unwrap().unwrap();
        let b = b_answer.try_recv().unwrap().unwrap();
        assert!(a.admitted && !a.counters[0].over && a.counters[0].remaining == 4);
        assert!(!b.admitted && b.counters[0].over && b.counters[0].reset_ms == 900);

        // A reply too short or too long for its requests is a protocol error for all of
        // them, not a misread.
        for values in [4, 9] {
            let ((a, mut a_answer), (b, mut b_answer)) = (one(), one());
            answer(
                &mut vec![a, b].drain(..),
                2,
                &Value::Array((0..values).map(|_| int(0)).collect()),
            );
            for answer in [&mut a_answer, &mut b_answer] {
                assert!(matches!(
                    answer.try_recv().unwrap(),
                    Err(StoreError::Protocol(_))
                ));
            }
        }
    }
}
