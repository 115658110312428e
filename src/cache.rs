//! A small sharded cache whose entries expire, bounded in size: for values read from the store
//! on the hot path (API key owners) that may be up to a configured age.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, PoisonError};

const SHARDS: usize = 16;

/// One shard: key → (value, expiry in Unix ms).
type Shard<V> = Mutex<HashMap<String, (V, u64)>>;

/// String-keyed entries that expire; at most about `capacity` of them.
#[derive(Debug)]
pub struct TtlCache<V> {
    shards: Box<[Shard<V>]>,
    hasher: RandomState,
    per_shard: usize,
}

impl<V: Clone> TtlCache<V> {
    /// A cache of at most about `capacity` entries.
    pub fn new(capacity: usize) -> TtlCache<V> {
        TtlCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &str) -> &Shard<V> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// The value under `key` if it has not expired at `now_ms`.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<V> {
        let shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shard
            .get(key)
            .filter(|(_, expires)| now_ms < *expires)
            .map(|(value, _)| value.clone())
    }

    /// The value under `key` and when it expires, if it is live at `now_ms`.
    pub fn entry(&self, key: &str, now_ms: u64) -> Option<(V, u64)> {
        let shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shard
            .get(key)
            .filter(|(_, expires)| now_ms < *expires)
            .cloned()
    }

    /// Stores `value` under `key` until `expires_ms`. A full shard first drops what has
    /// expired, then (if still full) an arbitrary entry.
    pub fn insert(&self, key: String, value: V, now_ms: u64, expires_ms: u64) {
        let mut shard = self
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, (_, expires)| now_ms < *expires);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().cloned()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(key, (value, expires_ms));
    }

    /// Forgets everything (after a change that any entry may predate).
    pub fn clear(&self) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    /// Number of entries, expired ones included until they are swept.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::TtlCache;

    #[test]
    fn expires_and_stays_bounded() {
        let cache = TtlCache::new(32);
        cache.insert("a".into(), 1, 0, 100);
        assert_eq!(cache.get("a", 99), Some(1));
        assert_eq!(cache.get("a", 100), None);
        for i in 0..1000 {
            cache.insert(format!("k{i}"), i, 0, 1000);
        }
        assert!(cache.len() <= 32);
        cache.clear();
        assert!(cache.is_empty());
    }
}
