//! Cross-request pipelining: decision script calls from concurrent requests are queued and
//! sent together, one pipeline per round trip, by a few dispatcher tasks (one per pooled
//! connection). While a pipeline is in flight, new calls gather in the queue and leave in the
//! next one: batching comes from load itself, with no window to wait out when load is light.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::{Cmd, RedisError, Value};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::backend::Backend;
use crate::store::StoreError;

/// Most calls in one pipeline: bounds the size of a round trip and of a retry.
pub(crate) const MAX_BATCH: usize = 128;
/// Calls that may wait in the queue; past it callers get an error at once, not a longer wait.
const QUEUE: usize = 16_384;

struct Job {
    cmd: Cmd,
    reply: oneshot::Sender<Result<Value, StoreError>>,
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
    pub(crate) stats: Arc<BatchStats>,
}

impl Batcher {
    /// Starts `dispatchers` tasks sending `script` calls over `backend`.
    pub(crate) fn start(
        backend: Backend,
        script: Arc<redis::Script>,
        dispatchers: u32,
        timeout: Duration,
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
                counters: std::sync::OnceLock::new(),
            };
            tokio::spawn(dispatcher.run());
        }
        Batcher { queue, stats }
    }

    /// Queues one script call and waits for its reply.
    pub(crate) async fn call(&self, cmd: Cmd) -> Result<Value, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Job { cmd, reply })
            .map_err(|_| StoreError::Unavailable("Redis call queue full".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("Redis dispatcher stopped".into())))
    }
}

struct Dispatcher {
    backend: Backend,
    script: Arc<redis::Script>,
    receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
    stats: Arc<BatchStats>,
    timeout: Duration,
    /// Metric handles, taken at the first round trip: the store may be made before the
    /// recorder is installed.
    counters: std::sync::OnceLock<(metrics::Counter, metrics::Counter)>,
}

impl Dispatcher {
    async fn run(self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
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
            let outcome = tokio::time::timeout(self.timeout, self.send(&mut batch)).await;
            let replies = match outcome {
                Ok(Ok(replies)) => replies.into_iter().map(Ok).collect(),
                Ok(Err(e)) => batch.iter().map(|_| Err(clone_error(&e))).collect(),
                Err(_) => batch
                    .iter()
                    .map(|_| Err(StoreError::Timeout(self.timeout)))
                    .collect::<Vec<_>>(),
            };
            for (job, reply) in batch.drain(..).zip(replies) {
                let _ = job.reply.send(reply.and_then(|v: Value| server_error(v)));
            }
        }
    }

    /// One round trip for the whole batch (two if Redis had forgotten the script). The calls
    /// move into the pipeline (no copy of their arguments); only a resend copies them back.
    async fn send(&self, batch: &mut [Job]) -> Result<Vec<Value>, StoreError> {
        let mut conn = self.backend.connection().await?;
        let mut pipe = redis::pipe();
        for job in batch.iter_mut() {
            pipe.add_command(std::mem::replace(&mut job.cmd, Cmd::new()));
        }
        let mut replies = self.pipeline(&mut conn, &mut pipe).await?;
        let missing: Vec<usize> = (0..replies.len())
            .filter(|&i| is_noscript(&replies[i]))
            .collect();
        if !missing.is_empty() {
            // Restarted or flushed: load the script once, then resend the calls that missed it.
            let load = self.script.prepare_invoke().load_async(&mut conn).await;
            if let Err(e) = load {
                conn.check(&e);
                return Err(StoreError::from(e));
            }
            let sent: Vec<&Cmd> = pipe.cmd_iter().collect();
            let mut resend = redis::pipe();
            for &i in &missing {
                resend.add_command(sent[i].clone());
            }
            let again = self.pipeline(&mut conn, &mut resend).await?;
            for (i, reply) in missing.into_iter().zip(again) {
                replies[i] = reply;
            }
        }
        Ok(replies)
    }

    async fn pipeline(
        &self,
        conn: &mut super::backend::Conn,
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
        result.map_err(|e| {
            conn.check(&e);
            StoreError::from(e)
        })
    }
}

fn is_noscript(value: &Value) -> bool {
    matches!(value, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

/// A server error reply to one call becomes that call's error.
fn server_error(value: Value) -> Result<Value, StoreError> {
    match value {
        Value::ServerError(e) => Err(StoreError::Unavailable(format!("Redis replied: {e:?}"))),
        other => Ok(other),
    }
}

fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Timeout(d) => StoreError::Timeout(*d),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Protocol(m) => StoreError::Protocol(m.clone()),
        StoreError::CircuitOpen => StoreError::CircuitOpen,
    }
}
