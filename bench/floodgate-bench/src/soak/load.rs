//! The steady load: an open loop (requests leave on schedule whatever the servers do, so an
//! outage cannot slow the load down and hide), spread round-robin over the replicas, every
//! call recorded in the ledger.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::client::{Endpoint, Outcome};
use super::ledger::{Class, Ledger, Record, wall_us};
use crate::pace::Pacer;
use crate::wire::encode_entries;

/// Calls in flight past which the generator stops sending (and counts what it did not send):
/// far beyond what deadlines allow, so reaching it means the generator itself fell behind.
const MAX_IN_FLIGHT: u64 = 20_000;

/// The requests: which keys, in what mix.
#[derive(Debug, Clone)]
pub(crate) struct Traffic {
    /// The rate limit domain.
    pub(crate) domain: Arc<str>,
    /// Limited keys (`sec` and `min` descriptors with value `v{n}`).
    pub(crate) limited_keys: u32,
    /// Free keys (`free` descriptor with value `v{n}`).
    pub(crate) free_keys: u32,
    /// Share of the requests that go to free keys.
    pub(crate) free_share: f64,
}

impl Traffic {
    /// The i-th request: its class, its key, and its body. A cheap deterministic mix, so runs
    /// are repeatable.
    pub(crate) fn request(&self, i: u64) -> (Class, u32, Bytes) {
        let mixed = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        if (mixed % 10_000) < (self.free_share * 10_000.0) as u64 {
            let key = ((mixed >> 16) % u64::from(self.free_keys.max(1))) as u32;
            (Class::Free, key, self.body(Class::Free, key))
        } else {
            let key = ((mixed >> 16) % u64::from(self.limited_keys.max(1))) as u32;
            (Class::Limited, key, self.body(Class::Limited, key))
        }
    }

    /// The body of a request for `key` of `class`.
    pub(crate) fn body(&self, class: Class, key: u32) -> Bytes {
        let value = format!("v{key}");
        match class {
            Class::Free => encode_entries(&self.domain, &[("free", &value)]),
            Class::Limited | Class::Burst => {
                encode_entries(&self.domain, &[("sec", &value), ("min", &value)])
            }
        }
    }
}

/// What the open loop did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sent {
    /// Calls sent.
    pub(crate) sent: u64,
    /// Calls due but not sent (the in-flight cap was reached).
    pub(crate) not_sent: u64,
    /// How long it ran.
    pub(crate) elapsed: Duration,
}

/// The running open loop.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<std::io::Result<Sent>>,
}

impl Load {
    /// Starts sending `rate` requests a second to `replicas` in turn, each with `deadline`.
    pub(crate) fn start(
        traffic: Traffic,
        rate: u64,
        replicas: Vec<Arc<Endpoint>>,
        ledger: Ledger,
        deadline: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(open_loop(
            traffic,
            rate,
            replicas,
            ledger,
            deadline,
            stop.clone(),
        ));
        Load { stop, task }
    }

    /// Stops sending and waits for the last answers (at most a deadline).
    pub(crate) async fn stop(self, deadline: Duration) -> anyhow::Result<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.task.await??;
        tokio::time::sleep(deadline + Duration::from_millis(100)).await;
        Ok(sent)
    }
}

async fn open_loop(
    traffic: Traffic,
    rate: u64,
    replicas: Vec<Arc<Endpoint>>,
    ledger: Ledger,
    deadline: Duration,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Sent> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let origin = Instant::now();
    let due_at = |i: u64| origin + interval.mul_f64(i as f64);
    let pacer = Pacer::new()?;
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut totals = Sent::default();
    let mut next = 0u64;
    while !stop.load(Ordering::Relaxed) {
        pacer.until(due_at(next)).await?;
        let now = Instant::now();
        while due_at(next) <= now {
            let i = next;
            next += 1;
            if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                totals.not_sent += 1;
                continue;
            }
            totals.sent += 1;
            let (class, key, body) = traffic.request(i);
            let replica = (i % replicas.len() as u64) as usize;
            let call = Call {
                endpoint: replicas[replica].clone(),
                replica: replica as u8,
                connection: (i / replicas.len() as u64) as usize,
                class,
                key,
                due: due_at(i),
            };
            in_flight.fetch_add(1, Ordering::Relaxed);
            let (ledger, in_flight) = (ledger.clone(), in_flight.clone());
            tokio::spawn(async move {
                call.send(body, deadline, &ledger).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
    totals.elapsed = origin.elapsed();
    Ok(totals)
}

/// One call to make and record.
pub(crate) struct Call {
    /// Where to.
    pub(crate) endpoint: Arc<Endpoint>,
    /// The replica's number.
    pub(crate) replica: u8,
    /// Which of the endpoint's connections.
    pub(crate) connection: usize,
    /// What for.
    pub(crate) class: Class,
    /// The key.
    pub(crate) key: u32,
    /// When it was meant to leave.
    pub(crate) due: Instant,
}

impl Call {
    /// Sends `body`, waits for its end, and records it.
    pub(crate) async fn send(self, body: Bytes, deadline: Duration, ledger: &Ledger) -> Outcome {
        let sent = wall_us();
        let answer = self.endpoint.call(self.connection, body, deadline).await;
        let answered = wall_us();
        ledger.push(Record {
            sent,
            answered,
            latency: self.due.elapsed().as_micros().min(u128::from(u32::MAX)) as u32,
            replica: self.replica,
            class: self.class,
            key: self.key,
            answer,
        });
        answer.outcome
    }
}
