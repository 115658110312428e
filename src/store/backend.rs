//! [`Backend`]: the store chosen at start-up, so that nothing above the stores carries a store
//! type parameter. Each call is one `match`, far cheaper than the call itself.

use super::{
    Check, Counted, CounterStore, Identity, MemoryStore, RedisStore, RegistryError, SharedState,
    SqliteStore, StoreError, TierModeRecord, UserRecord, UserRegistry,
};

/// The store this process runs on.
#[derive(Debug)]
pub enum Backend {
    /// Counters in this process (`--store memory`).
    Memory(MemoryStore),
    /// Counters in Redis: standalone, Sentinel or Cluster (`--store redis`).
    Redis(RedisStore),
    /// Counters in a SQLite file shared by the processes of one machine (`--store sqlite`).
    Sqlite(SqliteStore),
}

impl From<MemoryStore> for Backend {
    fn from(store: MemoryStore) -> Backend {
        Backend::Memory(store)
    }
}

impl From<SqliteStore> for Backend {
    fn from(store: SqliteStore) -> Backend {
        Backend::Sqlite(store)
    }
}

impl From<RedisStore> for Backend {
    fn from(store: RedisStore) -> Backend {
        Backend::Redis(store)
    }
}

impl Backend {
    /// Announces replica `id` as live for `ttl_ms` and answers how many replicas share this
    /// store (for the local fallback); `None` for stores no other machine shares.
    pub async fn live_replicas(&self, id: &str, ttl_ms: u64) -> Result<Option<u32>, StoreError> {
        match self {
            Backend::Redis(store) => store.live_replicas(id, ttl_ms).await.map(Some),
            Backend::Memory(_) | Backend::Sqlite(_) => Ok(None),
        }
    }
}

/// Calls `$call` on whichever store `$backend` holds.
macro_rules! each {
    ($backend:expr, $store:ident => $call:expr) => {
        match $backend {
            Backend::Memory($store) => $call,
            Backend::Redis($store) => $call,
            Backend::Sqlite($store) => $call,
        }
    };
}

impl CounterStore for Backend {
    async fn apply(&self, checks: &[Check]) -> Result<Counted, StoreError> {
        each!(self, store => store.apply(checks).await)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        each!(self, store => store.ping().await)
    }

    fn observe(&self) {
        each!(self, store => store.observe());
    }
}

impl SharedState for Backend {
    async fn set_flag(&self, key: &str, ttl_ms: u64) -> Result<(), StoreError> {
        each!(self, store => store.set_flag(key, ttl_ms).await)
    }

    async fn tier_mode(&self) -> Result<Option<TierModeRecord>, StoreError> {
        each!(self, store => store.tier_mode().await)
    }

    async fn set_tier_mode(&self, record: &TierModeRecord) -> Result<(), StoreError> {
        each!(self, store => store.set_tier_mode(record).await)
    }
}

impl UserRegistry for Backend {
    async fn identity(&self, domain: &str, api_key: &str) -> Result<Option<Identity>, StoreError> {
        each!(self, store => store.identity(domain, api_key).await)
    }

    async fn user(&self, domain: &str, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        each!(self, store => store.user(domain, user_id).await)
    }

    async fn users(
        &self,
        domain: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        each!(self, store => store.users(domain, after, limit).await)
    }

    async fn create_user(&self, domain: &str, user: &UserRecord) -> Result<(), RegistryError> {
        each!(self, store => store.create_user(domain, user).await)
    }

    async fn add_key(
        &self,
        domain: &str,
        user_id: &str,
        api_key: &str,
    ) -> Result<(), RegistryError> {
        each!(self, store => store.add_key(domain, user_id, api_key).await)
    }

    async fn revoke_key(
        &self,
        domain: &str,
        user_id: &str,
        api_key: &str,
    ) -> Result<(), RegistryError> {
        each!(self, store => store.revoke_key(domain, user_id, api_key).await)
    }

    async fn set_tier(&self, domain: &str, user_id: &str, tier: &str) -> Result<(), RegistryError> {
        each!(self, store => store.set_tier(domain, user_id, tier).await)
    }
}
