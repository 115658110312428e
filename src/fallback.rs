//! The local fallback (`--failure-mode local`): while the shared store cannot answer (its
//! circuit open, calls timing out), each replica decides from counters in its own memory, with
//! every limit divided among the replicas, and goes back to the shared counters as soon as the
//! store answers again.
//!
//! Replicas learn how many they are while the store is up: each announces itself every few
//! seconds (a heartbeat, see [`crate::store::Backend::live_replicas`]) and reads how many did
//! within [`HEARTBEAT_TTL`]; the last count is kept through the outage. `--fallback-replicas`
//! fixes the count instead. The fallback is approximate by design: each replica's share starts
//! from zero when the outage starts (what the shared counters held in that window is not
//! known), and a share is rounded up, so the replicas together admit at most one window's limit
//! plus one request per replica more than the limit while the outage lasts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use crate::clock::Clock;
use crate::store::{Check, Counted, CounterStore, MemoryStore, StoreError};
use crate::telemetry;

/// How long a replica's heartbeat counts it as live.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);

/// Keys the local counters hold at most (the memory store's bound, per replica).
const LOCAL_MAX_KEYS: usize = 1_000_000;

/// Settings of a [`LocalFallback`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FallbackOptions {
    /// A fixed number of replicas to divide limits by; `None` learns it from heartbeats.
    pub replicas: Option<u32>,
}

/// This replica's counters for when the shared store cannot answer; see the module doc.
#[derive(Debug)]
pub struct LocalFallback {
    counters: MemoryStore,
    /// The fixed replica count, if one was given.
    fixed: Option<u32>,
    /// The replica count last learned from the store (at least 1).
    learned: AtomicU32,
    /// This replica's name in the heartbeats: random, so that a restart counts as a new
    /// replica only until its old heartbeat expires.
    id: String,
    /// Deciding locally now (an outage is under way).
    active: AtomicBool,
}

impl LocalFallback {
    /// A fallback with empty counters, timed by `clock`.
    pub fn new(options: &FallbackOptions, clock: Arc<dyn Clock>) -> LocalFallback {
        LocalFallback {
            counters: MemoryStore::new(clock, LOCAL_MAX_KEYS),
            fixed: options.replicas.map(|n| n.max(1)),
            learned: AtomicU32::new(1),
            id: random_id(),
            active: AtomicBool::new(false),
        }
    }

    /// This replica's name in the heartbeats.
    pub fn replica_id(&self) -> &str {
        &self.id
    }

    /// Whether the replica count comes from heartbeats (no fixed count was given).
    pub fn learns_replicas(&self) -> bool {
        self.fixed.is_none()
    }

    /// Records the number of live replicas the store reported.
    pub fn learn_replicas(&self, live: u32) {
        self.learned.store(live.max(1), Ordering::Relaxed);
    }

    /// The number of replicas limits are divided by now.
    pub fn replicas(&self) -> u32 {
        self.fixed
            .unwrap_or_else(|| self.learned.load(Ordering::Relaxed))
    }

    /// This replica's share of `limit`: rounded up, so that no limit above zero becomes zero.
    pub fn share(&self, limit: u64) -> u64 {
        limit.div_ceil(u64::from(self.replicas()))
    }

    /// Counts `checks` locally, each against this replica's share of its limit, because the
    /// store failed with `cause`. The first call of an outage logs it.
    pub async fn apply(&self, checks: &[Check], cause: &StoreError) -> Result<Counted, StoreError> {
        if !self.active.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                error = %cause,
                replicas = self.replicas(),
                "store failing: deciding from local counters, each limit divided among the replicas"
            );
        }
        metrics::counter!(telemetry::FALLBACK_DECISIONS).increment(1);
        let shares: Vec<Check> = checks
            .iter()
            .map(|check| Check {
                limit: self.share(check.limit),
                ..check.clone()
            })
            .collect();
        self.counters.apply(&shares).await
    }

    /// The store answered: if an outage was under way, it is over (logged once).
    pub fn store_answered(&self) {
        if self.active.load(Ordering::Relaxed) && self.active.swap(false, Ordering::AcqRel) {
            tracing::info!("store answering again: shared counters decide again");
        }
    }

    /// Publishes the replica count's gauge (called periodically, right after the heartbeat).
    pub fn observe(&self) {
        metrics::gauge!(telemetry::FALLBACK_REPLICAS).set(f64::from(self.replicas()));
    }
}

/// A name unlikely to be any other replica's: the process id and a randomly seeded hash of the
/// start time.
fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{}-{:016x}", std::process::id(), hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn fallback(replicas: Option<u32>) -> LocalFallback {
        let clock = Arc::new(ManualClock::new(1_000_000));
        LocalFallback::new(&FallbackOptions { replicas }, clock)
    }

    #[test]
    fn shares_round_up_and_never_reach_zero() {
        let fallback = fallback(None);
        assert_eq!(
            fallback.share(10),
            10,
            "one replica until others are heard of"
        );
        fallback.learn_replicas(3);
        assert_eq!(
            (fallback.share(10), fallback.share(9), fallback.share(1)),
            (4, 3, 1)
        );
        assert_eq!(fallback.share(0), 0);
        fallback.learn_replicas(0);
        assert_eq!(
            fallback.replicas(),
            1,
            "a count of zero is taken as this replica alone"
        );
    }

    #[test]
    fn a_fixed_count_overrides_heartbeats() {
        let fallback = fallback(Some(4));
        fallback.learn_replicas(2);
        assert_eq!(fallback.replicas(), 4);
        assert!(!fallback.learns_replicas());
        assert_eq!(fallback.share(100), 25);
    }

    #[tokio::test]
    async fn local_counters_admit_the_share_then_deny() {
        let fallback = fallback(Some(2));
        let cause = StoreError::CircuitOpen;
        let check = [Check::fixed_window("k", 10, 60, 1)];
        let mut admitted = 0;
        for _ in 0..10 {
            if fallback.apply(&check, &cause).await.unwrap().admitted {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 5);
        assert!(fallback.active.load(Ordering::Relaxed));
        fallback.store_answered();
        assert!(!fallback.active.load(Ordering::Relaxed));
    }
}
