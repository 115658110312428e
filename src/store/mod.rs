//! Counter stores behind one trait: the embedded in-memory store and Redis.
//!
//! A store applies all checks of one request as one atomic step: either every counter takes its
//! hits, or (when any non-shadow check would go over its limit) none does. That is what makes a
//! denied request consume nothing.

pub mod key;
pub mod memory;
pub mod redis;

use std::future::Future;

use thiserror::Error;

pub use key::counter_key;
pub use memory::MemoryStore;
pub use redis::RedisStore;

/// One counter to check and, if the request is admitted, to increment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The counter's key (see [`key::counter_key`]).
    pub key: String,
    /// Requests allowed per window.
    pub limit: u64,
    /// Window length in seconds.
    pub window_secs: u64,
    /// Hits this request adds; 0 only reads.
    pub hits: u64,
    /// A shadow check never denies the request.
    pub shadow: bool,
}

/// A counter as the request leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The count including this request's hits (even if the request was denied and nothing
    /// was written, so that callers can tell how far over it would have gone).
    pub count: u64,
    /// Milliseconds until the counter's window ends.
    pub reset_ms: u64,
}

/// What a store did with one request's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Whether the hits were recorded (no non-shadow check went over).
    pub admitted: bool,
    /// One counter per check, in order.
    pub counters: Vec<Counter>,
}

/// A store that could not answer.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The store did not answer within its deadline; likely transient.
    #[error("store timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The store could not be reached or failed; may be transient.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this version does not understand; a bug or a mismatch.
    #[error("unexpected store reply: {0}")]
    Protocol(String),
}

/// Where counters live.
pub trait Store: Send + Sync + 'static {
    /// Checks and (if admitted) increments every counter of one request, atomically.
    fn apply(&self, checks: &[Check]) -> impl Future<Output = Result<Applied, StoreError>> + Send;

    /// Answers when the store is reachable.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The admission rule both stores follow: the request passes unless a non-shadow check would
/// go over its limit. `count_after[i]` includes the hits of this and earlier same-key checks.
pub fn admits(checks: &[Check], count_after: impl Fn(usize) -> u64) -> bool {
    checks
        .iter()
        .enumerate()
        .all(|(i, c)| c.shadow || !crate::algorithm::is_over(count_after(i), c.limit))
}
