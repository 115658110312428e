//! Tiers: everything about API keys and the plans they grant. A tiered descriptor's API key is
//! resolved to its owner (cached per replica for the cache TTL), the owner's tier gives the
//! limit in the current [`TierMode`], and the owner's counter is shared by all their keys.
//! Unknown keys are audited and counted against the sender's address, which is blocked after
//! too many ([`strikes`]). The admin API's registry changes go through here too
//! ([`registry`]), so the owner cache is cleared wherever the registry changes.

pub mod keys;
mod registry;
mod strikes;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::cache::TtlCache;
use crate::clock::Clock;
use crate::config::{Domain, TierMode};
use crate::decision::{KeyResolution, PlanContext, TierGrant};
use crate::matcher::RuleMatch;
use crate::query::RateLimitQuery;
use crate::store::{Backend, Guarded, Identity, SharedState, StoreError, TierModeRecord};
use crate::telemetry;

pub use registry::Usage;
use strikes::BlockEnds;

/// API key owners remembered per replica.
const IDENTITY_CACHE_ENTRIES: usize = 100_000;

/// The tiers of every domain, over the store that keeps users, keys, flags and the mode.
#[derive(Debug)]
pub struct Tiers {
    store: Arc<Guarded<Backend>>,
    clock: Arc<dyn Clock>,
    key_prefix: String,
    /// How long an owner read from the store may be reused.
    cache_ttl: Duration,
    /// "domain\0api key" → owner, or None for a key nobody owns.
    identities: TtlCache<Option<Identity>>,
    /// The tier mode last read from the store (or set through this replica).
    mode: ArcSwap<TierModeRecord>,
    /// Blocks this replica set, until their end is reported.
    blocks: BlockEnds,
}

/// What the tiers found in one request: the plan's context, and the first API key nobody
/// owns (for the audit trail).
#[derive(Debug, Default)]
pub struct Resolution<'q> {
    /// Each descriptor's key resolution and the address block's gate.
    pub context: PlanContext,
    /// The first unknown API key.
    pub unknown_key: Option<&'q str>,
}

impl Tiers {
    /// Tiers over `store`, keys under `key_prefix`, owners cached for `cache_ttl`.
    pub fn new(
        store: Arc<Guarded<Backend>>,
        clock: Arc<dyn Clock>,
        key_prefix: String,
        cache_ttl: Duration,
    ) -> Tiers {
        Tiers {
            store,
            clock,
            key_prefix,
            cache_ttl,
            identities: TtlCache::new(IDENTITY_CACHE_ENTRIES),
            mode: ArcSwap::from_pointee(TierModeRecord::default()),
            blocks: BlockEnds::default(),
        }
    }

    /// Resolves the API keys of `query`'s tiered descriptors (`matches` in `domain`) at
    /// `now`, and the gate of its address; nothing for a domain without API keys.
    pub async fn resolve<'q>(
        &self,
        domain: Option<&Domain>,
        query: &'q RateLimitQuery,
        matches: &[Option<RuleMatch<'_>>],
        now: u64,
    ) -> Result<Resolution<'q>, StoreError> {
        let Some(domain) = domain.filter(|d| d.has_tiered()) else {
            return Ok(Resolution::default());
        };
        let mut resolution = Resolution::default();
        let tiered = query
            .descriptors
            .iter()
            .zip(matches)
            .enumerate()
            .filter(|(_, (_, m))| m.as_ref().is_some_and(|m| m.rule.tiered));
        for (index, (descriptor, _)) in tiered {
            let Some(api_key) = descriptor.entries.last().map(|e| e.value.as_str()) else {
                continue;
            };
            let keys = &mut resolution.context.keys;
            keys.resize(query.descriptors.len(), KeyResolution::NotTiered);
            keys[index] = match self.identity(domain.name(), api_key, now).await? {
                Some(owner) => self.grant(domain, &descriptor.entries, &owner, now),
                None => {
                    resolution.unknown_key.get_or_insert(api_key);
                    KeyResolution::Unknown
                }
            };
        }
        resolution.context.gate = query
            .remote_address()
            .map(|address| keys::block_key(&self.key_prefix, domain.name(), address));
        Ok(resolution)
    }

    /// What `owner`'s tier grants under the tiered descriptor `entries`.
    fn grant(
        &self,
        domain: &Domain,
        entries: &[crate::query::Entry],
        owner: &Identity,
        now: u64,
    ) -> KeyResolution {
        let Some(tier) = domain.tier(&owner.tier) else {
            return KeyResolution::TierGone;
        };
        let limit = tier.limit(self.mode(now));
        let key = keys::user_counter_key(
            &self.key_prefix,
            domain.name(),
            entries,
            &owner.user_id,
            &limit,
        );
        KeyResolution::Granted(TierGrant {
            tier: tier.name.clone(),
            limit,
            key,
        })
    }

    /// The owner of `api_key`, from the cache if it is fresh enough. When the store cannot
    /// answer, an owner read before (however long ago) still answers, so that the failure
    /// mode `local` can go on counting a known user against their tier.
    async fn identity(
        &self,
        domain: &str,
        api_key: &str,
        now: u64,
    ) -> Result<Option<Identity>, StoreError> {
        let cache_key = format!("{domain}\0{api_key}");
        if let Some(identity) = self.identities.get(&cache_key, now) {
            return Ok(identity);
        }
        let identity = match self.store.identity(domain, api_key).await {
            Ok(identity) => identity,
            Err(e) => return self.identities.get_stale(&cache_key).ok_or(e),
        };
        let expires = now + self.cache_ttl.as_millis() as u64;
        self.identities
            .insert(cache_key, identity.clone(), now, expires);
        Ok(identity)
    }

    /// The tier mode in force at `now`, as last read from the store (at most the cache TTL
    /// ago, while the store answers).
    pub fn mode(&self, now: u64) -> TierMode {
        self.mode.load().at(now)
    }

    /// The tier mode's record as last read.
    pub fn mode_record(&self) -> TierModeRecord {
        TierModeRecord::clone(&self.mode.load())
    }

    /// The tier mode's record as the store has it now.
    pub async fn stored_mode(&self) -> Result<Option<TierModeRecord>, StoreError> {
        self.store.unguarded().tier_mode().await
    }

    /// Reads the shared tier mode from the store into this replica's cache.
    pub async fn refresh_mode(&self) -> Result<(), StoreError> {
        let record = self
            .store
            .unguarded()
            .tier_mode()
            .await?
            .unwrap_or_default();
        self.mode.store(Arc::new(record));
        Ok(())
    }

    /// Records a new tier mode for every replica, and applies it here at once.
    pub async fn set_mode(&self, record: TierModeRecord) -> Result<(), StoreError> {
        self.store.unguarded().set_tier_mode(&record).await?;
        self.mode.store(Arc::new(record));
        Ok(())
    }

    /// Publishes the mode's gauge and reports the blocks that have ended; called periodically.
    pub fn observe(&self) {
        let now = self.clock.now_ms();
        self.blocks.report_ended(now);
        let degraded = self.mode(now) == TierMode::Degraded;
        metrics::gauge!(telemetry::TIER_MODE).set(if degraded { 1.0 } else { 0.0 });
    }

    /// Blocks set by this replica whose end is still to be reported.
    pub fn blocks_pending(&self) -> usize {
        self.blocks.len()
    }

    /// The clock's time now.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}
