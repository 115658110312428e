//! Invalid API keys: each is audited and counted against the sender's address (a strike);
//! past the domain's `invalid_keys.max_attempts` in a window the address is blocked (a flag
//! every replica's gate check reads) for `block_for`. A block's end is reported from its own
//! expiry, swept by [`super::Tiers::observe`], not by a task waiting per address.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Mutex, PoisonError};

use super::{Tiers, keys};
use crate::config::{Domain, mask_secret};
use crate::query::RateLimitQuery;
use crate::store::{Check, CounterStore, SharedState};

/// Blocks whose end is reported at most; past it (an attack from very many addresses) a block
/// still binds but its end is not reported.
const MAX_REPORTED_BLOCKS: usize = 100_000;

/// When a block this replica set ends: (instant, domain, address).
type BlockEnd = (u64, String, String);

/// The blocks this replica set, soonest end first.
#[derive(Debug, Default)]
pub(super) struct BlockEnds(Mutex<BinaryHeap<Reverse<BlockEnd>>>);

impl BlockEnds {
    fn push(&self, end: BlockEnd) {
        let mut ends = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if ends.len() < MAX_REPORTED_BLOCKS {
            ends.push(Reverse(end));
        }
    }

    /// Reports the end of every block that has ended by `now`.
    pub(super) fn report_ended(&self, now: u64) {
        let mut ended = Vec::new();
        {
            let mut ends = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            while ends.peek().is_some_and(|Reverse((end, _, _))| *end <= now) {
                if let Some(Reverse(block)) = ends.pop() {
                    ended.push(block);
                }
            }
        }
        for (_, domain, address) in ended {
            crate::audit::security_event("address_unblocked", &domain, &address, Some(&address));
        }
    }

    pub(super) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Tiers {
    /// Records the invalid `api_key` a request to `domain` carried: an audit event, and a
    /// strike against the request's address, which blocks the address once it has too many.
    /// Returns the seconds after which retrying can help, when known.
    pub async fn punish_invalid_key(
        &self,
        domain: &Domain,
        query: &RateLimitQuery,
        api_key: &str,
    ) -> Option<u64> {
        let address = query.remote_address();
        let masked = mask_secret(api_key);
        crate::audit::security_event("invalid_api_key", domain.name(), &masked, address);
        let address = address?;
        let policy = domain.invalid_keys();
        let strike = Check::fixed_window(
            keys::strike_key(&self.key_prefix, domain.name(), address),
            u64::from(policy.max_attempts),
            policy.window_secs,
            1,
        );
        // Past the breaker and the over-limit cache: a strike is counted, never answered
        // from memory.
        match self
            .store
            .unguarded()
            .apply(std::slice::from_ref(&strike))
            .await
        {
            Ok(counted) if counted.admitted => {
                let reset_ms = counted.counters.first().map_or(0, |c| c.reset_ms);
                Some(reset_ms.div_ceil(1000).max(1))
            }
            Ok(_) => self.block(domain, address).await,
            Err(e) => {
                tracing::warn!(error = %e, "could not count an invalid API key");
                None
            }
        }
    }

    /// Blocks `address` in `domain` for the domain's `block_for`.
    async fn block(&self, domain: &Domain, address: &str) -> Option<u64> {
        let policy = domain.invalid_keys();
        let block_ms = policy.block_for_secs * 1000;
        let flag = keys::block_key(&self.key_prefix, domain.name(), address);
        if let Err(e) = self.store.unguarded().set_flag(&flag, block_ms).await {
            tracing::warn!(error = %e, "could not block an address");
            return None;
        }
        crate::audit::security_event("address_blocked", domain.name(), address, Some(address));
        let ends = self.clock.now_ms() + block_ms;
        self.blocks
            .push((ends, domain.name().to_owned(), address.to_owned()));
        Some(policy.block_for_secs)
    }
}
