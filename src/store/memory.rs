//! The embedded store: counters in this process, sharded so requests on different keys never
//! wait for each other, and bounded so that a flood of distinct keys cannot exhaust memory.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Applied, Check, Counter, Store, StoreError, admits};
use crate::algorithm::window;
use crate::clock::Clock;

/// Default bound on live counters: about 150 MB at the worst.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

const SHARDS: usize = 64;
/// Candidates looked at when a full shard must evict a live counter.
const EVICTION_SAMPLE: usize = 8;

/// Counters in process memory; the default store, and the reference for the Redis one.
#[derive(Debug)]
pub struct MemoryStore<C> {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: Arc<C>,
}

#[derive(Debug, Default)]
struct Shard {
    counters: HashMap<String, Slot>,
    capacity: usize,
    /// No counter expires before this instant, so sweeping earlier finds nothing.
    earliest_expiry_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    window_start: u64,
    count: u64,
    expires_ms: u64,
}

impl<C: Clock> MemoryStore<C> {
    /// A store holding at most about `max_keys` counters, reading time from `clock`.
    pub fn new(clock: Arc<C>, max_keys: usize) -> MemoryStore<C> {
        let capacity = max_keys.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    capacity,
                    ..Shard::default()
                })
            })
            .collect();
        MemoryStore {
            shards,
            hasher: RandomState::new(),
            clock,
        }
    }

    /// Number of counters held, expired ones included until they are swept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).counters.len()).sum()
    }

    /// Whether the store holds no counters.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn apply_now(&self, checks: &[Check]) -> Applied {
        let now = self.clock.now_ms();
        let shard_ids: Vec<usize> = checks.iter().map(|c| self.shard_of(&c.key)).collect();
        // Lock every shard involved, in index order so two requests can never deadlock. The
        // locks are std mutexes: held for a few map operations, never across an await.
        let mut order = shard_ids.clone();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> =
            order.iter().map(|&i| (i, lock(&self.shards[i]))).collect();
        let slot_of = |shard: usize| -> usize {
            guards
                .binary_search_by_key(&shard, |(i, _)| *i)
                .unwrap_or_default()
        };
        let positions: Vec<usize> = shard_ids.iter().map(|&s| slot_of(s)).collect();

        let mut counters = Vec::with_capacity(checks.len());
        for (i, check) in checks.iter().enumerate() {
            let (start, reset_ms) = window(now, check.window_secs);
            let shard = &guards[positions[i]].1;
            let stored = shard
                .counters
                .get(&check.key)
                .filter(|slot| slot.window_start == start)
                .map_or(0, |slot| slot.count);
            // Earlier checks on the same key in this request count too.
            let earlier: u64 = checks[..i]
                .iter()
                .filter(|c| c.key == check.key)
                .map(|c| c.hits)
                .sum();
            counters.push(Counter {
                count: stored.saturating_add(earlier).saturating_add(check.hits),
                reset_ms,
            });
        }
        let admitted = admits(checks, |i| counters[i].count);
        if admitted {
            for (i, check) in checks.iter().enumerate().filter(|(_, c)| c.hits > 0) {
                let (start, reset_ms) = window(now, check.window_secs);
                guards[positions[i]]
                    .1
                    .add(&check.key, start, now + reset_ms, check.hits, now);
            }
        }
        Applied { admitted, counters }
    }
}

impl<C: Clock> Store for MemoryStore<C> {
    async fn apply(&self, checks: &[Check]) -> Result<Applied, StoreError> {
        Ok(self.apply_now(checks))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl Shard {
    fn add(&mut self, key: &str, window_start: u64, expires_ms: u64, hits: u64, now: u64) {
        if let Some(slot) = self.counters.get_mut(key) {
            if slot.window_start != window_start {
                *slot = Slot {
                    window_start,
                    count: 0,
                    expires_ms,
                };
            }
            slot.count = slot.count.saturating_add(hits);
            return;
        }
        if self.counters.len() >= self.capacity {
            self.make_room(now);
        }
        self.earliest_expiry_ms = self.earliest_expiry_ms.min(expires_ms);
        self.counters.insert(
            key.to_owned(),
            Slot {
                window_start,
                count: hits,
                expires_ms,
            },
        );
    }

    /// Frees one place: sweeps finished windows if any can have ended, else evicts the sampled
    /// counter whose window ends first (the one whose loss matters least).
    fn make_room(&mut self, now: u64) {
        if now >= self.earliest_expiry_ms {
            self.counters.retain(|_, slot| slot.expires_ms > now);
            self.earliest_expiry_ms = self
                .counters
                .values()
                .map(|slot| slot.expires_ms)
                .min()
                .unwrap_or(u64::MAX);
        }
        if self.counters.len() < self.capacity {
            return;
        }
        let victim = self
            .counters
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|(_, slot)| slot.expires_ms)
            .map(|(key, _)| key.clone());
        if let Some(victim) = victim {
            self.counters.remove(&victim);
        }
    }
}

/// Locks a shard; a panic elsewhere while holding it leaves counters that are still valid
/// numbers, so poisoning is ignored rather than spreading the panic.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn check(key: &str, limit: u64, hits: u64) -> Check {
        Check {
            key: key.into(),
            limit,
            window_secs: 60,
            hits,
            shadow: false,
        }
    }

    fn store(now_ms: u64, max_keys: usize) -> (Arc<ManualClock>, MemoryStore<ManualClock>) {
        let clock = Arc::new(ManualClock::new(now_ms));
        (clock.clone(), MemoryStore::new(clock, max_keys))
    }

    #[test]
    fn counts_up_to_the_limit_then_denies() {
        let (_, store) = store(120_000, 100);
        for n in 1..=3 {
            let applied = store.apply_now(&[check("a", 3, 1)]);
            assert!(applied.admitted);
            assert_eq!(applied.counters[0].count, n);
        }
        let applied = store.apply_now(&[check("a", 3, 1)]);
        assert!(!applied.admitted);
        assert_eq!(applied.counters[0].count, 4);
        // the denied hit was not recorded
        assert_eq!(store.apply_now(&[check("a", 3, 0)]).counters[0].count, 3);
    }

    #[test]
    fn window_edges() {
        let (clock, store) = store(60_000 * 5 + 59_999, 100);
        assert!(store.apply_now(&[check("a", 1, 1)]).admitted);
        let applied = store.apply_now(&[check("a", 1, 1)]);
        assert!(!applied.admitted);
        assert_eq!(applied.counters[0].reset_ms, 1);
        clock.advance(1); // first millisecond of the next window
        let applied = store.apply_now(&[check("a", 1, 1)]);
        assert!(applied.admitted);
        assert_eq!(applied.counters[0].count, 1);
        assert_eq!(applied.counters[0].reset_ms, 60_000);
    }

    #[test]
    fn all_or_nothing_and_shadow() {
        let (_, store) = store(0, 100);
        let applied = store.apply_now(&[check("a", 10, 1), check("b", 0, 1)]);
        assert!(!applied.admitted);
        assert_eq!(store.apply_now(&[check("a", 10, 0)]).counters[0].count, 0);
        let shadow = Check {
            shadow: true,
            ..check("b", 0, 1)
        };
        let applied = store.apply_now(&[check("a", 10, 1), shadow]);
        assert!(applied.admitted);
        assert_eq!(
            applied.counters,
            vec![
                Counter {
                    count: 1,
                    reset_ms: 60_000
                },
                Counter {
                    count: 1,
                    reset_ms: 60_000
                },
            ]
        );
    }

    #[test]
    fn same_key_twice_in_one_request_counts_both() {
        let (_, store) = store(0, 100);
        let applied = store.apply_now(&[check("a", 2, 1), check("a", 2, 1)]);
        assert!(applied.admitted);
        assert_eq!(applied.counters[1].count, 2);
        assert!(!store.apply_now(&[check("a", 2, 1)]).admitted);
    }

    #[test]
    fn bounded_and_sweeps_finished_windows() {
        let (clock, store) = store(0, SHARDS); // one counter per shard
        for i in 0..1_000 {
            store.apply_now(&[check(&format!("k{i}"), 5, 1)]);
        }
        assert!(store.len() <= SHARDS);
        clock.advance(60_000);
        for i in 0..1_000 {
            store.apply_now(&[check(&format!("n{i}"), 5, 1)]);
        }
        assert!(store.len() <= SHARDS);
    }
}
