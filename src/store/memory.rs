//! The embedded store: counters in this process, sharded so requests on different keys never
//! wait for each other, and bounded so that a flood of distinct keys cannot exhaust memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use hashbrown::HashTable;

use super::counting::{self, Few, StoredCounter};
use super::{
    Check, Counted, CounterStore, Identity, RegistryError, SharedState, StoreError, TierModeRecord,
    UserRecord, UserRegistry,
};
use crate::algorithm::Cell;
use crate::clock::Clock;

/// Default bound on live counters: about 150 MB at the worst.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

const SHARDS: usize = 64;
/// Candidates looked at when a full shard must evict a live counter.
const EVICTION_SAMPLE: usize = 8;

/// Counters in process memory; the default store, and the reference for the Redis one.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
    /// Users and keys. Read-mostly (the limiter caches identities in front of it) and changed
    /// only by the admin API, so one RwLock serves.
    registry: RwLock<Registry>,
    tier_mode: Mutex<Option<TierModeRecord>>,
}

/// Users and API keys per domain.
#[derive(Debug, Default)]
struct Registry {
    /// (domain, api key) → user id.
    keys: HashMap<(String, String), String>,
    /// (domain, user id) → tier and keys; ordered for paging.
    users: BTreeMap<(String, String), UserEntry>,
}

impl Registry {
    /// The user `user_id` of `domain`, to change.
    fn user_mut(&mut self, domain: &str, user_id: &str) -> Result<&mut UserEntry, RegistryError> {
        self.users
            .get_mut(&(domain.to_owned(), user_id.to_owned()))
            .ok_or_else(|| RegistryError::UnknownUser(user_id.to_owned()))
    }
}

#[derive(Debug, Clone)]
struct UserEntry {
    tier: String,
    keys: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Shard {
    /// Keys boxed, not `String`: eight bytes less per slot, over a million slots. A table
    /// rather than a map so that a key is hashed once per check (that hash also picks the
    /// shard), not once per map operation.
    counters: HashTable<(Box<str>, StoredCounter)>,
    capacity: usize,
    /// No counter expires before this instant, so sweeping earlier finds nothing.
    earliest_expiry_ms: u64,
}

impl MemoryStore {
    /// A store holding at most about `max_keys` counters, reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>, max_keys: usize) -> MemoryStore {
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
            registry: RwLock::default(),
            tier_mode: Mutex::default(),
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

    /// The hash of `key` in every shard's table, and the index of its shard (from bits the
    /// table does not use for its buckets or tags, so keys sharing a shard still spread).
    fn locate(&self, key: &str) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, ((hash >> 32) as usize) % SHARDS)
    }

    fn apply_now(&self, checks: &[Check]) -> Counted {
        let now = self.clock.now_ms();
        // On the stack for the usual few checks: no allocation but the answer's.
        let located: Few<(u64, usize)> = checks.iter().map(|c| self.locate(&c.key)).collect();
        let mut held = self.lock_shards(&located);
        let stored = |i: usize| held.stored(i).get(located[i].0, &checks[i].key).copied();
        let verdicts = counting::look(checks, stored, now);
        counting::record(checks, &verdicts, now, |i, verdict| {
            held.shard(i).put(
                &self.hasher,
                (located[i].0, &checks[i].key),
                verdict.next,
                verdict.expires_ms,
                now,
            );
        })
    }

    /// Locks every shard the checks at `located` touch, in index order so two requests can
    /// never deadlock. The locks are std mutexes: held for a few map operations, never across
    /// an await.
    fn lock_shards(&self, located: &[(u64, usize)]) -> Held<'_> {
        let mut order: Few<usize> = located.iter().map(|&(_, shard)| shard).collect();
        order.sort_unstable();
        order.dedup();
        let guards: Few<(usize, MutexGuard<'_, Shard>)> =
            order.iter().map(|&i| (i, lock(&self.shards[i]))).collect();
        let positions = located
            .iter()
            .map(|&(_, shard)| {
                guards
                    .binary_search_by_key(&shard, |(i, _)| *i)
                    .unwrap_or_default()
            })
            .collect();
        Held { guards, positions }
    }
}

/// The shards one request's checks touch, locked, and which of them each check's is.
struct Held<'a> {
    guards: Few<(usize, MutexGuard<'a, Shard>)>,
    positions: Few<usize>,
}

impl Held<'_> {
    /// The shard of check `i`, to read.
    fn stored(&self, i: usize) -> &Shard {
        &self.guards[self.positions[i]].1
    }

    /// The shard of check `i`, to write.
    fn shard(&mut self, i: usize) -> &mut Shard {
        &mut self.guards[self.positions[i]].1
    }
}

impl CounterStore for MemoryStore {
    async fn apply(&self, checks: &[Check]) -> Result<Counted, StoreError> {
        Ok(self.apply_now(checks))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn observe(&self) {
        metrics::gauge!(crate::telemetry::MEMORY_KEYS).set(self.len() as f64);
    }
}

impl SharedState for MemoryStore {
    async fn set_flag(&self, key: &str, ttl_ms: u64) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let (hash, shard) = self.locate(key);
        lock(&self.shards[shard]).put(
            &self.hasher,
            (hash, key),
            Cell::default(),
            now + ttl_ms,
            now,
        );
        Ok(())
    }

    async fn tier_mode(&self) -> Result<Option<TierModeRecord>, StoreError> {
        let now = self.clock.now_ms();
        let mode = self
            .tier_mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(mode
            .clone()
            .filter(|m| m.expires_ms.is_none_or(|expires| now < expires)))
    }

    async fn set_tier_mode(&self, record: &TierModeRecord) -> Result<(), StoreError> {
        *self
            .tier_mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(record.clone());
        Ok(())
    }
}

impl UserRegistry for MemoryStore {
    async fn identity(&self, domain: &str, api_key: &str) -> Result<Option<Identity>, StoreError> {
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        let Some(user_id) = registry.keys.get(&(domain.to_owned(), api_key.to_owned())) else {
            return Ok(None);
        };
        Ok(registry
            .users
            .get(&(domain.to_owned(), user_id.clone()))
            .map(|entry| Identity {
                user_id: user_id.clone(),
                tier: entry.tier.clone(),
            }))
    }

    async fn user(&self, domain: &str, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        Ok(registry
            .users
            .get(&(domain.to_owned(), user_id.to_owned()))
            .map(|entry| record(user_id, entry)))
    }

    async fn users(
        &self,
        domain: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        let start = (domain.to_owned(), after.to_owned());
        Ok(registry
            .users
            .range((Excluded(start), Unbounded))
            .take_while(|((d, _), _)| d == domain)
            .take(limit)
            .map(|((_, id), entry)| record(id, entry))
            .collect())
    }

    async fn create_user(&self, domain: &str, user: &UserRecord) -> Result<(), RegistryError> {
        let mut registry = self
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let id = (domain.to_owned(), user.user_id.clone());
        if registry.users.contains_key(&id) {
            return Err(RegistryError::UserExists(user.user_id.clone()));
        }
        for key in &user.api_keys {
            if registry
                .keys
                .contains_key(&(domain.to_owned(), key.clone()))
            {
                return Err(RegistryError::KeyTaken(crate::config::mask_secret(key)));
            }
        }
        for key in &user.api_keys {
            registry
                .keys
                .insert((domain.to_owned(), key.clone()), user.user_id.clone());
        }
        let keys = user.api_keys.iter().cloned().collect();
        registry.users.insert(
            id,
            UserEntry {
                tier: user.tier.clone(),
                keys,
            },
        );
        Ok(())
    }

    async fn add_key(
        &self,
        domain: &str,
        user_id: &str,
        api_key: &str,
    ) -> Result<(), RegistryError> {
        let mut registry = self
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // The user first, then the key: the order the Redis registry script checks them in.
        registry.user_mut(domain, user_id)?;
        let key = (domain.to_owned(), api_key.to_owned());
        if registry.keys.contains_key(&key) {
            return Err(RegistryError::KeyTaken(crate::config::mask_secret(api_key)));
        }
        let entry = registry.user_mut(domain, user_id)?;
        entry.keys.insert(api_key.to_owned());
        registry.keys.insert(key, user_id.to_owned());
        Ok(())
    }

    async fn revoke_key(
        &self,
        domain: &str,
        user_id: &str,
        api_key: &str,
    ) -> Result<(), RegistryError> {
        let mut registry = self
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = registry.user_mut(domain, user_id)?;
        if !entry.keys.remove(api_key) {
            return Err(RegistryError::UnknownKey(crate::config::mask_secret(
                api_key,
            )));
        }
        registry
            .keys
            .remove(&(domain.to_owned(), api_key.to_owned()));
        Ok(())
    }

    async fn set_tier(&self, domain: &str, user_id: &str, tier: &str) -> Result<(), RegistryError> {
        let mut registry = self
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = registry.user_mut(domain, user_id)?;
        entry.tier = tier.to_owned();
        Ok(())
    }
}

fn record(user_id: &str, entry: &UserEntry) -> UserRecord {
    UserRecord {
        user_id: user_id.to_owned(),
        tier: entry.tier.clone(),
        api_keys: entry.keys.iter().cloned().collect(),
    }
}

impl Shard {
    /// The counter of `key` (whose hash is `hash`), expired or not.
    fn get(&self, hash: u64, key: &str) -> Option<&StoredCounter> {
        self.counters
            .find(hash, |(k, _)| **k == *key)
            .map(|(_, slot)| slot)
    }

    /// Stores the counter of `key` (with its `hash`); `hasher` rehashes keys when the table
    /// grows.
    fn put(
        &mut self,
        hasher: &RandomState,
        (hash, key): (u64, &str),
        cell: Cell,
        expires_ms: u64,
        now: u64,
    ) {
        let counter = StoredCounter { cell, expires_ms };
        if let Some((_, stored)) = self.counters.find_mut(hash, |(k, _)| **k == *key) {
            *stored = counter;
        } else {
            if self.counters.len() >= self.capacity {
                self.make_room(hasher, now);
            }
            self.counters
                .insert_unique(hash, (Box::from(key), counter), |(k, _)| hasher.hash_one(k));
        }
        // Last: making room recomputes the earliest expiry of the counters it keeps.
        self.earliest_expiry_ms = self.earliest_expiry_ms.min(expires_ms);
    }

    /// Frees one place: sweeps finished windows if any can have ended, else evicts the sampled
    /// counter whose window ends first (the one whose loss matters least).
    fn make_room(&mut self, hasher: &RandomState, now: u64) {
        if now >= self.earliest_expiry_ms {
            self.counters.retain(|(_, slot)| slot.expires_ms > now);
            self.earliest_expiry_ms = self
                .counters
                .iter()
                .map(|(_, slot)| slot.expires_ms)
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
            .map(|(key, _)| (hasher.hash_one(key), key.as_ptr()));
        // Keys are distinct allocations: the victim is the entry holding the same one.
        if let Some((hash, victim)) = victim
            && let Ok(entry) = self
                .counters
                .find_entry(hash, |(key, _)| std::ptr::eq(key.as_ptr(), victim))
        {
            entry.remove();
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

    fn store(now_ms: u64, max_keys: usize) -> (Arc<ManualClock>, MemoryStore) {
        let clock = Arc::new(ManualClock::new(now_ms));
        (clock.clone(), MemoryStore::new(clock, max_keys))
    }

    #[test]
    fn bounded_and_sweeps_finished_windows() {
        let (clock, store) = store(0, SHARDS); // one counter per shard
        for i in 0..1_000 {
            store.apply_now(&[Check::fixed_window(format!("k{i}"), 5, 60, 1)]);
        }
        assert!(store.len() <= SHARDS);
        clock.advance(60_000);
        for i in 0..1_000 {
            store.apply_now(&[Check::fixed_window(format!("n{i}"), 5, 60, 1)]);
        }
        assert!(store.len() <= SHARDS);
    }

    #[test]
    fn the_earliest_expiry_counts_the_counter_that_made_room() {
        let hasher = RandomState::new();
        let mut shard = Shard {
            capacity: 1,
            ..Shard::default()
        };
        let put = |shard: &mut Shard, key: &str, expires_ms, now| {
            shard.put(
                &hasher,
                (hasher.hash_one(key), key),
                Cell::default(),
                expires_ms,
                now,
            );
        };
        put(&mut shard, "a", 100, 0);
        // Full: "a" has expired and is swept, then "b" goes in; no counter expires before
        // the recorded earliest expiry, "b" included.
        put(&mut shard, "b", 300, 200);
        assert_eq!(shard.counters.len(), 1);
        assert_eq!(shard.earliest_expiry_ms, 300);
    }
}
