//! The user registry as the admin API and the config's seeds change it: every write goes
//! through here, which forgets this replica's cached owners after it (other replicas follow
//! within the cache TTL).

use std::collections::BTreeMap;

use super::{Tiers, keys};
use crate::config::{Config, Domain, TierMode, Unit};
use crate::query::Entry;
use crate::store::{Check, CounterStore, RegistryError, StoreError, UserRecord, UserRegistry};

/// A user's counter under one top-level tiered descriptor, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The descriptor's key.
    pub key: String,
    /// Hits counted in the window.
    pub used: u64,
    /// The tier's limit in the current mode.
    pub limit: u32,
    /// Hits left.
    pub remaining: u64,
    /// The limit's window.
    pub unit: Unit,
    /// Whole seconds until the window resets.
    pub reset_seconds: u64,
    /// The mode the limit is for.
    pub mode: TierMode,
}

impl Tiers {
    /// After a registry write: the cached owners may be wrong now, so forget them (other
    /// replicas follow within the cache TTL).
    fn forget_owners_after(&self, written: Result<(), RegistryError>) -> Result<(), RegistryError> {
        written?;
        self.identities.clear();
        Ok(())
    }

    /// One user of `domain`.
    pub async fn user(
        &self,
        domain: &str,
        user_id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.store.unguarded().user(domain, user_id).await
    }

    /// Up to `limit` users of `domain` with ids after `after`, in id order.
    pub async fn users(
        &self,
        domain: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        self.store.unguarded().users(domain, after, limit).await
    }

    /// Creates a user with its keys, all or nothing.
    pub async fn create_user(&self, domain: &str, user: &UserRecord) -> Result<(), RegistryError> {
        let written = self.store.unguarded().create_user(domain, user).await;
        self.forget_owners_after(written)
    }

    /// Gives an existing user another key.
    pub async fn add_key(
        &self,
        domain: &str,
        user_id: &str,
        api_key: &str,
    ) -> Result<(), RegistryError> {
        let written = self
            .store
            .unguarded()
            .add_key(domain, user_id, api_key)
            .await;
        self.forget_owners_after(written)
    }

    /// Revokes a key of a user.
    pub async fn revoke_key(
        &self,
        domain: &str,
        user_id: &str,
        api_key: &str,
    ) -> Result<(), RegistryError> {
        let written = self
            .store
            .unguarded()
            .revoke_key(domain, user_id, api_key)
            .await;
        self.forget_owners_after(written)
    }

    /// Moves a user to another tier.
    pub async fn set_tier(
        &self,
        domain: &str,
        user_id: &str,
        tier: &str,
    ) -> Result<(), RegistryError> {
        let written = self.store.unguarded().set_tier(domain, user_id, tier).await;
        self.forget_owners_after(written)
    }

    /// `user`'s counter under each top-level tiered descriptor of `domain`, read without
    /// counting; empty when the user's tier is no longer in the config.
    pub async fn usage(
        &self,
        domain: &Domain,
        user: &UserRecord,
    ) -> Result<Vec<Usage>, StoreError> {
        let Some(tier) = domain.tier(&user.tier) else {
            return Ok(Vec::new());
        };
        let mode = self.mode(self.now_ms());
        let limit = tier.limit(mode);
        let mut usage = Vec::new();
        for (key, branch) in &domain.root().children {
            let Some(node) = branch.any else { continue };
            if !domain.node(node).rule.as_ref().is_some_and(|r| r.tiered) {
                continue;
            }
            let entries = [Entry {
                key: key.clone(),
                value: String::new(),
            }];
            let check = Check {
                shadow: true,
                algorithm: limit.algorithm,
                ..Check::fixed_window(
                    keys::user_counter_key(
                        &self.key_prefix,
                        domain.name(),
                        &entries,
                        &user.user_id,
                        &limit,
                    ),
                    u64::from(limit.requests_per_unit),
                    limit.window_secs(),
                    0,
                )
            };
            let counted = self
                .store
                .unguarded()
                .apply(std::slice::from_ref(&check))
                .await?;
            let counter = counted.counters.first();
            let remaining = counter.map_or(0, |c| c.remaining);
            usage.push(Usage {
                key: key.clone(),
                used: u64::from(limit.requests_per_unit).saturating_sub(remaining),
                limit: limit.requests_per_unit,
                remaining,
                unit: limit.unit,
                reset_seconds: counter.map_or(0, |c| c.reset_ms).div_ceil(1000),
                mode,
            });
        }
        Ok(usage)
    }

    /// Writes the API keys `config` seeds into the store: missing users are created and
    /// missing keys added; what exists (e.g. a tier changed through the admin API) is kept.
    /// A store failure stops the seeding (to be retried); any other refusal is logged.
    pub async fn seed(&self, config: &Config) -> Result<(), StoreError> {
        for name in config.domain_names() {
            let Some(domain) = config.domain(name) else {
                continue;
            };
            for user in seeded_users(domain) {
                self.seed_user(name, user).await?;
            }
        }
        self.identities.clear();
        Ok(())
    }

    /// Creates a seeded user, or adds what it misses to the user that exists.
    async fn seed_user(&self, domain: &str, user: UserRecord) -> Result<(), StoreError> {
        match self.store.unguarded().create_user(domain, &user).await {
            Ok(()) => return Ok(()),
            Err(RegistryError::Store(e)) => return Err(e),
            // The user exists, or one of its keys does: add what is missing, one by one.
            Err(_) => {}
        }
        let bare = UserRecord {
            api_keys: Vec::new(),
            ..user.clone()
        };
        match self.store.unguarded().create_user(domain, &bare).await {
            Err(RegistryError::Store(e)) => return Err(e),
            Ok(()) | Err(RegistryError::UserExists(_)) => {}
            Err(e) => tracing::warn!(domain, error = %e, "seeding a user"),
        }
        for key in &user.api_keys {
            match self
                .store
                .unguarded()
                .add_key(domain, &user.user_id, key)
                .await
            {
                Err(RegistryError::Store(e)) => return Err(e),
                Err(RegistryError::KeyTaken(_)) | Ok(()) => {}
                Err(e) => tracing::warn!(domain, error = %e, "seeding an API key"),
            }
        }
        Ok(())
    }
}

/// The users `domain`'s config seeds, each with its keys.
fn seeded_users(domain: &Domain) -> impl Iterator<Item = UserRecord> {
    let mut users: BTreeMap<&str, UserRecord> = BTreeMap::new();
    for seed in domain.seed_keys() {
        users
            .entry(seed.user.as_str())
            .or_insert_with(|| UserRecord {
                user_id: seed.user.clone(),
                tier: seed.tier.clone(),
                api_keys: Vec::new(),
            })
            .api_keys
            .push(seed.api_key.clone());
    }
    users.into_values()
}
