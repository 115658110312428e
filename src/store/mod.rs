//! The stores: the embedded in-memory store and Redis, each doing three jobs behind three
//! traits ([`CounterStore`], [`SharedState`], [`UserRegistry`]), and [`Backend`], the one type
//! the rest of the service holds. Around the counters, [`Guarded`] (the circuit breaker) and
//! [`OverLimitCache`] implement [`CounterStore`] too, assembled once at start-up.
//!
//! A store applies all checks of one request as one atomic step: either every counter takes its
//! hits, or (when any non-shadow check would go over its limit) none does. That is what makes a
//! denied request consume nothing.

mod backend;
mod counting;
pub mod guard;
pub mod key;
pub mod memory;
pub mod over_limit;
pub mod redis;
pub mod sqlite;

use std::future::Future;

use thiserror::Error;

use crate::algorithm::Algorithm;
use crate::config::TierMode;

pub use backend::Backend;
pub use guard::Guarded;
pub use key::counter_key;
pub use memory::MemoryStore;
pub use over_limit::OverLimitCache;
pub use redis::RedisStore;
pub use sqlite::SqliteStore;

/// One counter to check and, if the request is admitted, to increment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The counter's key (see [`key::counter_key`]).
    pub key: String,
    /// Requests allowed per window.
    pub limit: u64,
    /// Window length in seconds.
    pub window_secs: u64,
    /// Hits this request adds; 0 only reads.
    pub hits: u64,
    /// A shadow check never denies the request.
    pub shadow: bool,
    /// A gate (e.g. a blocked address): over while its flag is set (see [`SharedState::set_flag`]),
    /// and never written.
    pub gate: bool,
    /// A quota (the reference's `quota_mode`): over it, the request is denied only when every
    /// quota check of the request is over too.
    pub quota: bool,
    /// Usage-metered: the hits are counted even when the request is denied, so the counter may
    /// pass its limit (the reference's way, for every check).
    pub count_denied: bool,
    /// How the counter counts.
    pub algorithm: Algorithm,
}

impl Check {
    /// A plain fixed-window check of `hits` against `limit` per `window_secs` (neither shadow
    /// nor gate): the simplest counter, for tools and tests.
    pub fn fixed_window(key: impl Into<String>, limit: u64, window_secs: u64, hits: u64) -> Check {
        Check {
            key: key.into(),
            limit,
            window_secs,
            hits,
            shadow: false,
            gate: false,
            quota: false,
            count_denied: false,
            algorithm: Algorithm::FixedWindow,
        }
    }

    /// A check that denies while the flag at `key` is set.
    pub fn gate(key: String) -> Check {
        Check {
            gate: true,
            ..Check::fixed_window(key, 0, 1, 0)
        }
    }

    /// Whether its hits are recorded when the request is `admitted` (or not).
    pub const fn records(&self, admitted: bool) -> bool {
        (admitted || self.count_denied) && self.hits > 0 && !self.gate
    }
}

/// A counter as the request leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// This request's hits would take it over its limit (for a gate: the flag is set).
    pub over: bool,
    /// Requests left after this request: counting its hits if they were recorded (the
    /// request was admitted, or the check counts denied hits), not counting them otherwise;
    /// 0 when over.
    pub remaining: u64,
    /// Milliseconds until the window resets (gate: until the flag expires).
    pub reset_ms: u64,
}

/// What a store did with one request's checks: admitted or not, and each counter as left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// Whether the request was admitted (see [`admits`]), and so its hits recorded; a denied
    /// request's hits are recorded only on its `count_denied` checks.
    pub admitted: bool,
    /// One counter per check, in order.
    pub counters: Counters,
}

/// The counters of one request, inline for the usual few checks: on Redis they are made on
/// the dispatcher's thread and read on the request's, and memory passed between threads costs
/// more to allocate and free than memory kept on one.
pub type Counters = smallvec::SmallVec<[Counter; 4]>;

/// A store that could not answer.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The store did not answer within its deadline; likely transient.
    #[error("store timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The store could not be reached or failed; may be transient.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this version does not understand; a bug or a mismatch.
    #[error("unexpected store reply: {0}")]
    Protocol(String),
    /// The circuit breaker is open after repeated failures: the store was not called.
    #[error("store circuit open after repeated failures")]
    CircuitOpen,
    /// The store's settings cannot be used (a malformed Redis URL, an unreadable certificate,
    /// a SQLite file that is not a database): found when the store is built, at start-up, and
    /// never transient. The message names the store.
    #[error("{0}")]
    Settings(String),
}

impl StoreError {
    /// A short label for metrics.
    pub const fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Protocol(_) => "protocol",
            StoreError::CircuitOpen => "circuit_open",
            StoreError::Settings(_) => "settings",
        }
    }
}

/// Who an API key belongs to, as the registry says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user; all of a user's keys share the user's counters.
    pub user_id: String,
    /// The user's tier.
    pub tier: String,
}

/// A user of a tiered domain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserRecord {
    /// The user's id.
    pub user_id: String,
    /// The user's tier.
    pub tier: String,
    /// The user's API keys, sorted.
    pub api_keys: Vec<String>,
}

/// Why a registry change was refused.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The user already exists.
    #[error("user '{0}' already exists")]
    UserExists(String),
    /// No such user.
    #[error("unknown user '{0}'")]
    UnknownUser(String),
    /// The API key already belongs to a user.
    #[error("API key {0} is already in use")]
    KeyTaken(String),
    /// No such API key.
    #[error("unknown API key {0}")]
    UnknownKey(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where counters live: the one job on every request's path. Wrappers that add behaviour to
/// a counter store (the circuit breaker, the over-limit cache) implement it too.
pub trait CounterStore: Send + Sync + 'static {
    /// Checks and (if admitted) increments every counter of one request, atomically.
    fn apply(&self, checks: &[Check]) -> impl Future<Output = Result<Counted, StoreError>> + Send;

    /// Answers when the store is reachable.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Publishes the store's own gauges (pool connections, keys held); called periodically.
    fn observe(&self) {}
}

/// State every replica shares besides counters: flags (an address block) and the tier mode.
pub trait SharedState: Send + Sync + 'static {
    /// Sets the flag at `key` for `ttl_ms` (read by gate checks).
    fn set_flag(
        &self,
        key: &str,
        ttl_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The recorded tier mode; `None` when never set or expired.
    fn tier_mode(&self) -> impl Future<Output = Result<Option<TierModeRecord>, StoreError>> + Send;

    /// Records the tier mode; it expires at `record.expires_ms` if set.
    fn set_tier_mode(
        &self,
        record: &TierModeRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The users of tiered domains and their API keys. Read through [`crate::tiers`], which
/// caches owners and is the one writer (so its cache stays right).
pub trait UserRegistry: Send + Sync + 'static {
    /// The owner of `api_key` in `domain` and the owner's tier.
    fn identity(
        &self,
        domain: &str,
        api_key: &str,
    ) -> impl Future<Output = Result<Option<Identity>, StoreError>> + Send;

    /// One user.
    fn user(
        &self,
        domain: &str,
        user_id: &str,
    ) -> impl Future<Output = Result<Option<UserRecord>, StoreError>> + Send;

    /// Up to `limit` users with ids after `after`, in id order.
    fn users(
        &self,
        domain: &str,
        after: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<UserRecord>, StoreError>> + Send;

    /// Creates a user with its keys, all or nothing.
    fn create_user(
        &self,
        domain: &str,
        user: &UserRecord,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Gives an existing user another key.
    fn add_key(
        &self,
        domain: &str,
        user_id: &str,
        api_key: &str,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Revokes a key of a user.
    fn revoke_key(
        &self,
        domain: &str,
        user_id: &str,
        api_key: &str,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Moves a user to another tier.
    fn set_tier(
        &self,
        domain: &str,
        user_id: &str,
        tier: &str,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;
}

impl<S: CounterStore> CounterStore for std::sync::Arc<S> {
    fn apply(&self, checks: &[Check]) -> impl Future<Output = Result<Counted, StoreError>> + Send {
        S::apply(self, checks)
    }

    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        S::ping(self)
    }

    fn observe(&self) {
        S::observe(self);
    }
}

/// The tier mode as recorded in the store, with who set it and why.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct TierModeRecord {
    /// The mode (named `status` in the stored JSON, as the admin API calls it).
    #[serde(rename = "status")]
    pub mode: TierMode,
    /// Unix seconds when it was set (0 for the default mode).
    pub since: u64,
    /// Unix milliseconds when it reverts to NORMAL, if it has a TTL.
    pub expires_ms: Option<u64>,
    /// Who set it.
    pub updated_by: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

impl TierModeRecord {
    /// The record as the stores keep it: JSON.
    pub fn to_json(&self) -> Result<String, StoreError> {
        serde_json::to_string(self)
            .map_err(|e| StoreError::Protocol(format!("tier mode record: {e}")))
    }

    /// A record a store kept.
    pub fn from_json(json: &str) -> Result<TierModeRecord, StoreError> {
        serde_json::from_str(json)
            .map_err(|e| StoreError::Protocol(format!("tier mode record: {e}")))
    }

    /// The mode in force at `now_ms`: an expired record has reverted to NORMAL.
    pub fn at(&self, now_ms: u64) -> TierMode {
        match self.expires_ms {
            Some(expires) if now_ms >= expires => TierMode::Normal,
            _ => self.mode,
        }
    }
}

/// The admission rule every store follows: the request passes unless a non-shadow check is
/// over its limit; quota checks deny only together, when the request has some and every one
/// is over (the reference's quota mode: a shadow quota never counts as over).
pub fn admits(checks: &[Check], over: impl Fn(usize) -> bool) -> bool {
    passes(
        checks
            .iter()
            .enumerate()
            .map(|(i, check)| (check.quota, !check.shadow && over(i))),
    )
}

/// The rule behind [`admits`], over (is a quota, denies) pairs: no denying non-quota, and not
/// every quota denying. The decision applies it to descriptor statuses too.
pub fn passes(items: impl IntoIterator<Item = (bool, bool)>) -> bool {
    let (mut quotas, mut quotas_denying) = (0usize, 0usize);
    for (quota, denies) in items {
        if quota {
            quotas += 1;
            quotas_denying += usize::from(denies);
        } else if denies {
            return false;
        }
    }
    quotas == 0 || quotas_denying < quotas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_follows_the_reference_quota_rule() {
        let plain = Check::fixed_window("a", 1, 60, 1);
        let quota = Check {
            quota: true,
            ..plain.clone()
        };
        let shadow_quota = Check {
            shadow: true,
            ..quota.clone()
        };
        // (checks, which are over, admitted)
        let cases: Vec<(Vec<&Check>, Vec<bool>, bool)> = vec![
            (vec![&plain], vec![false], true),
            (vec![&plain], vec![true], false),
            (vec![&plain, &quota], vec![true, false], false),
            (vec![&plain, &quota], vec![false, true], false),
            (vec![&plain, &quota], vec![false, false], true),
            (vec![&quota, &quota], vec![true, true], false),
            (vec![&quota, &quota], vec![true, false], true),
            (vec![&quota, &shadow_quota], vec![true, true], true),
            (vec![&shadow_quota], vec![true], true),
        ];
        for (checks, over, want) in cases {
            let owned: Vec<Check> = checks.into_iter().cloned().collect();
            assert_eq!(admits(&owned, |i| over[i]), want, "{over:?}");
        }
    }
}
