//! A bounded concurrent cache whose entries expire: for values read from the store on the hot
//! path (API key owners) and counters known full (the over-limit cache, inserted into on every
//! denied request of an attack).
//!
//! The entries live in a `quick_cache` (sharded, S3-FIFO eviction, O(1) per insert): the
//! hand-rolled sharded map it replaced swept a full shard under its lock on every insert at
//! capacity, 30 times slower under a spray of new keys (docs/benchmarks.md, "Local caches").
//! Expiry is checked on read; an expired entry keeps its slot until evicted, and eviction
//! favours entries read more than once, so a spray of new keys does not push out the hot ones.

use std::hash::RandomState;

use quick_cache::UnitWeighter;
use quick_cache::sync::Cache;

/// String-keyed entries that expire; at most `capacity` of them.
pub(crate) struct TtlCache<V> {
    /// key → (value, expiry in Unix ms).
    entries: Cache<String, (V, u64), UnitWeighter, RandomState>,
}

impl<V: Clone> std::fmt::Debug for TtlCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlCache")
            .field("len", &self.entries.len())
            .field("capacity", &self.entries.capacity())
            .finish()
    }
}

impl<V: Clone> TtlCache<V> {
    /// A cache of at most `capacity` entries.
    pub(crate) fn new(capacity: usize) -> TtlCache<V> {
        let capacity = capacity.max(1);
        TtlCache {
            entries: Cache::with(
                capacity,
                capacity as u64,
                UnitWeighter,
                RandomState::new(),
                Default::default(),
            ),
        }
    }

    /// The value under `key` if it has not expired at `now_ms`.
    pub(crate) fn get(&self, key: &str, now_ms: u64) -> Option<V> {
        self.entry(key, now_ms).map(|(value, _)| value)
    }

    /// The value under `key` and when it expires, if it is live at `now_ms`.
    pub(crate) fn entry(&self, key: &str, now_ms: u64) -> Option<(V, u64)> {
        self.entries
            .get(key)
            .filter(|(_, expires)| now_ms < *expires)
    }

    /// The value under `key` even if it has expired (while it has not been evicted): for when
    /// the source of truth cannot be asked.
    pub(crate) fn get_stale(&self, key: &str) -> Option<V> {
        self.entries.get(key).map(|(value, _)| value)
    }

    /// Stores `value` under `key` until `expires_ms`. A full cache evicts by use, not by
    /// expiry, so `_now_ms` is not needed (kept so callers need not know that).
    pub(crate) fn insert(&self, key: String, value: V, _now_ms: u64, expires_ms: u64) {
        self.entries.insert(key, (value, expires_ms));
    }

    /// Forgets everything (after a change that any entry may predate).
    pub(crate) fn clear(&self) {
        self.entries.clear();
    }

    /// Number of entries, expired ones included until they are evicted.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
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
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_new_entry_is_readable_at_once_in_a_full_cache() {
        // The over-limit cache answers the request after the one that found a counter full.
        let cache = TtlCache::new(1000);
        for i in 0..1000 {
            cache.insert(format!("old{i}"), i, 0, 1000);
        }
        for i in 0..1000 {
            cache.insert(format!("new{i}"), i, 0, 1000);
            assert_eq!(cache.entry(&format!("new{i}"), 1), Some((i, 1000)));
        }
        assert!(cache.len() <= 1000);
    }

    #[test]
    fn a_spray_of_new_keys_leaves_the_entries_in_use() {
        let cache = TtlCache::new(1000);
        for i in 0..100 {
            cache.insert(format!("hot{i}"), i, 0, 1000);
            assert_eq!(cache.get(&format!("hot{i}"), 1), Some(i));
        }
        for round in 0..10_000 {
            cache.insert(format!("spray{round}"), round, 0, 1000);
            let hot = format!("hot{}", round % 100);
            assert!(
                cache.get(&hot, 1).is_some(),
                "{hot} evicted after {round} new keys"
            );
        }
    }
}
