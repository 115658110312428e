//! [`OverLimitCache`]: counters this replica saw full are remembered until their window resets,
//! so that traffic against them (an attack, a client ignoring 429s) is denied without asking
//! the store. The reference's local cache, with one difference: the store is still asked how
//! a request's other counters stand, so every status is what a store call would have said.

use std::sync::Arc;

use super::{Check, Counted, Counter, CounterStore, Counters, StoreError};
use crate::algorithm::Algorithm;
use crate::cache::TtlCache;
use crate::clock::Clock;
use crate::telemetry;

/// A counter store with a local memory of full counters in front; off (a plain pass-through)
/// when made with no room.
#[derive(Debug)]
pub struct OverLimitCache<S> {
    inner: S,
    /// Key → (the limit it was full at: a tier switch may raise it, until when); `None` off.
    full: Option<TtlCache<u64>>,
    clock: Arc<dyn Clock>,
}

impl<S: CounterStore> OverLimitCache<S> {
    /// `inner` with room for `entries` full counters; 0 turns the cache off.
    pub fn new(inner: S, entries: usize, clock: Arc<dyn Clock>) -> OverLimitCache<S> {
        OverLimitCache {
            inner,
            full: (entries > 0).then(|| TtlCache::new(entries)),
            clock,
        }
    }

    /// For a request with some counter known full: until when each check's counter is known
    /// full (`None` for the others); `None` when none is.
    fn known_full(cache: &TtlCache<u64>, checks: &[Check], now: u64) -> Option<Vec<Option<u64>>> {
        let full: Vec<Option<u64>> = checks
            .iter()
            .map(|c| {
                (cacheable(c) && c.hits > 0)
                    .then(|| cache.entry(&c.key, now))
                    .flatten()
                    .filter(|(full_at, _)| c.limit <= *full_at)
                    .map(|(_, until)| until)
            })
            .collect();
        full.iter().any(Option::is_some).then_some(full)
    }

    /// Denies a request some of whose counters are known full: it consumes nothing, and the
    /// store only looks at the others (counting the hits that count even when denied).
    async fn deny_known(
        &self,
        checks: &[Check],
        full: &[Option<u64>],
        now: u64,
    ) -> Result<Counted, StoreError> {
        metrics::counter!(telemetry::LOCAL_CACHE_HITS).increment(1);
        let mut counters: Counters = full
            .iter()
            .map(|until| Counter {
                over: until.is_some(),
                remaining: 0,
                reset_ms: until.map_or(0, |until| until - now),
            })
            .collect();
        let unknown: Vec<usize> = (0..checks.len()).filter(|&i| full[i].is_none()).collect();
        if !unknown.is_empty() {
            let looks: Vec<Check> = unknown
                .iter()
                .map(|&i| Check {
                    hits: if checks[i].count_denied {
                        checks[i].hits
                    } else {
                        0
                    },
                    ..checks[i].clone()
                })
                .collect();
            let answered = self.counted(&looks, now).await?;
            for (&i, counter) in unknown.iter().zip(answered.counters) {
                counters[i] = counter;
            }
        }
        Ok(Counted {
            admitted: false,
            counters,
        })
    }

    /// One store call for `checks`, remembering what it finds full.
    async fn counted(&self, checks: &[Check], now: u64) -> Result<Counted, StoreError> {
        let counted = self.inner.apply(checks).await?;
        if let Some(cache) = &self.full {
            remember_full(cache, checks, &counted, now);
        }
        Ok(counted)
    }
}

impl<S: CounterStore> CounterStore for OverLimitCache<S> {
    async fn apply(&self, checks: &[Check]) -> Result<Counted, StoreError> {
        let Some(cache) = &self.full else {
            return self.inner.apply(checks).await;
        };
        let now = self.clock.now_ms();
        match Self::known_full(cache, checks, now) {
            Some(full) => self.deny_known(checks, &full, now).await,
            None => self.counted(checks, now).await,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn observe(&self) {
        if let Some(cache) = &self.full {
            metrics::gauge!(telemetry::LOCAL_CACHE_ENTRIES).set(cache.len() as f64);
        }
        self.inner.observe();
    }
}

/// Whether a check can be answered from the cache: it may deny by itself, and a full counter
/// of its algorithm stays full until its reset whatever is not counted meanwhile. So not a
/// shadow check, a gate or a quota (whose denial depends on the other quotas); not a sliding
/// window (it drains continuously); not a token bucket counting denied hits (each one owes
/// more).
fn cacheable(check: &Check) -> bool {
    !check.shadow
        && !check.gate
        && !check.quota
        && match check.algorithm {
            Algorithm::FixedWindow => true,
            Algorithm::SlidingWindow => false,
            Algorithm::TokenBucket { .. } => !check.count_denied,
        }
}

/// Remembers the counters this answer found full, until they reset: those found over, and
/// fixed windows left with nothing (the next hit is over until the window ends). A check
/// counting denied hits is remembered only once counted past its limit: at exactly its limit,
/// a later report would be denied here without being counted, and the counter would never
/// pass its limit.
fn remember_full(cache: &TtlCache<u64>, checks: &[Check], counted: &Counted, now: u64) {
    for (check, counter) in checks.iter().zip(&counted.counters) {
        let full = counter.over
            || (counted.admitted
                && !check.count_denied
                && check.algorithm == Algorithm::FixedWindow);
        if full && counter.remaining == 0 && counter.reset_ms > 0 && cacheable(check) {
            cache.insert(check.key.clone(), check.limit, now, now + counter.reset_ms);
        }
    }
}
