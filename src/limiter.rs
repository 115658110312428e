//! The service core: the live config, a store, the cached shared state (health, API key
//! owners), and the one `decide` that gRPC and HTTP share.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::breaker::{BreakerSettings, BreakerState, CircuitBreaker, Permit, Transition};
use crate::cache::TtlCache;
use crate::clock::Clock;
use crate::config::{Config, Domain, mask_secret};
use crate::decision::{
    self, Decision, Denial, FailureMode, KeyResolution, PlanContext, PlanOptions, block_key,
    remote_address, strike_key,
};
use crate::health::{HealthRecord, HealthStatus};
use crate::query::RateLimitQuery;
use crate::store::{Applied, Check, Identity, RegistryError, Store, StoreError, UserRecord};
use crate::telemetry::{self, DescriptorStats, LatencyHistogram};

/// Default bound on how stale a replica's view of shared state (health, API key owners) may be.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(2);
/// API key owners remembered per replica.
const IDENTITY_CACHE_ENTRIES: usize = 100_000;

/// Settings of a [`Limiter`].
#[derive(Debug, Clone)]
pub struct LimiterOptions {
    /// Key prefix and global shadow mode.
    pub plan: PlanOptions,
    /// How long shared state read from the store may be reused.
    pub cache_ttl: Duration,
    /// What to answer when the store cannot.
    pub failure_mode: FailureMode,
    /// When to stop calling a failing store.
    pub breaker: BreakerSettings,
    /// Counters remembered as full until their window resets, answered without the store;
    /// 0 turns the local over-limit cache off.
    pub over_limit_cache: usize,
    /// A descriptor within its limit counts as "near" once it has used this share of it.
    pub near_limit_ratio: f64,
}

impl Default for LimiterOptions {
    fn default() -> LimiterOptions {
        LimiterOptions {
            plan: PlanOptions::default(),
            cache_ttl: DEFAULT_CACHE_TTL,
            failure_mode: FailureMode::default(),
            breaker: BreakerSettings::default(),
            over_limit_cache: 0,
            near_limit_ratio: 0.8,
        }
    }
}

/// Decides queries against the current config with one store call each (plus, for tiered
/// domains, cached look-ups of API key owners).
pub struct Limiter<S> {
    config: ArcSwap<Config>,
    /// False from [`Limiter::awaiting_config`] until a config is put in.
    config_loaded: AtomicBool,
    store: S,
    options: LimiterOptions,
    clock: Arc<dyn Clock>,
    /// The health record last read from the store (or set through this replica).
    health: ArcSwap<HealthRecord>,
    /// "domain\0api key" → owner, or None for a key nobody owns.
    identities: TtlCache<Option<Identity>>,
    breaker: CircuitBreaker,
    /// Keys known full (at the limit stored: a tier switch may raise it) until the instant
    /// stored, so that attack traffic on them costs the store nothing; `None` when off.
    over_limit: Option<TtlCache<u64>>,
    stats: DescriptorStats,
    /// Store call latency.
    store_latency: Arc<LatencyHistogram>,
    /// Addresses this replica blocked, by the instant their block ends: [`Limiter::observe`]
    /// reports each unblock from its block's own expiry (no task waits per address).
    blocks: std::sync::Mutex<BinaryHeap<Reverse<BlockEnd>>>,
}

/// When a block this replica set ends: (instant, domain, address).
type BlockEnd = (u64, String, String);

/// Blocks whose end is reported at most; past it (an attack from very many addresses) a block
/// still binds but its end is not reported.
const MAX_REPORTED_BLOCKS: usize = 100_000;

impl<S> std::fmt::Debug for Limiter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Limiter<S> {
    /// A limiter serving `config` from `store`, reading time from `clock`.
    pub fn new(
        config: Config,
        store: S,
        options: LimiterOptions,
        clock: Arc<dyn Clock>,
    ) -> Limiter<S> {
        Limiter {
            config: ArcSwap::from_pointee(config),
            config_loaded: AtomicBool::new(true),
            store,
            clock,
            health: ArcSwap::from_pointee(HealthRecord::default()),
            identities: TtlCache::new(IDENTITY_CACHE_ENTRIES),
            breaker: CircuitBreaker::new(options.breaker),
            stats: DescriptorStats::new(options.near_limit_ratio),
            store_latency: LatencyHistogram::get(telemetry::STORE_DURATION, "op", "decide"),
            blocks: std::sync::Mutex::default(),
            over_limit: (options.over_limit_cache > 0)
                .then(|| TtlCache::new(options.over_limit_cache)),
            options,
        }
    }

    /// Matches, counts and decides one query. When the store fails, the failure mode answers
    /// (or, in mode `error`, the error is returned).
    pub async fn decide(&self, query: &RateLimitQuery) -> Result<Decision, StoreError> {
        // One clock read for the whole decision (the stores read their own).
        let now = self.clock.now_ms();
        match self.decide_with_store(query, now).await {
            Ok(decision) => {
                self.stats.record(&query.domain, &decision);
                Ok(decision)
            }
            Err(e) => {
                metrics::counter!(telemetry::STORE_ERRORS, "kind" => e.kind()).increment(1);
                if let Some(reference) = telemetry::reference::installed() {
                    reference.record_store_error();
                }
                tracing::debug!(error = %e, "store failed");
                decision::fallback(query.descriptors.len(), self.options.failure_mode).ok_or(e)
            }
        }
    }

    /// Runs `call` unless the circuit is open at `now`, and tells the breaker how it went.
    async fn guarded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
        now: u64,
    ) -> Result<T, StoreError> {
        let permit = self.breaker.permit(now);
        if permit == Permit::Reject {
            return Err(StoreError::CircuitOpen);
        }
        let result = call.await;
        // Protocol errors are our bug, not the store's health.
        let healthy = !matches!(
            result,
            Err(StoreError::Timeout(_) | StoreError::Unavailable(_))
        );
        // A failure is timed when it is known (it may have taken the whole timeout).
        let finished = if healthy { now } else { self.clock.now_ms() };
        match (self.breaker.record(permit, healthy, finished), &result) {
            // Once per outage, with its cause (single failures are logged at debug only).
            (Transition::Opened, Err(e)) => tracing::warn!(
                error = %e,
                "store failing: circuit opened; requests get the failure mode until a probe succeeds"
            ),
            (Transition::Closed, _) => tracing::info!("store answering again: circuit closed"),
            (Transition::Failing, Err(e)) => tracing::warn!(
                error = %e,
                "store failing (circuit breaker off): requests get the failure mode"
            ),
            (Transition::Recovered, _) => tracing::info!("store answering again"),
            _ => {}
        }
        result
    }

    /// The circuit breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state(self.clock.now_ms())
    }

    /// Publishes the gauges (circuit, health state, caches, the store's own); called
    /// periodically.
    pub fn observe(&self) {
        self.report_unblocks(self.clock.now_ms());
        metrics::gauge!(telemetry::CIRCUIT_STATE).set(self.breaker_state().gauge());
        let degraded = self.health_status() == HealthStatus::Degraded;
        metrics::gauge!(telemetry::HEALTH_STATE).set(if degraded { 1.0 } else { 0.0 });
        if let Some(cache) = &self.over_limit {
            metrics::gauge!(telemetry::LOCAL_CACHE_ENTRIES).set(cache.len() as f64);
        }
        self.store.observe();
    }

    async fn decide_with_store(
        &self,
        query: &RateLimitQuery,
        now: u64,
    ) -> Result<Decision, StoreError> {
        // An Arc (not a guard) because API key look-ups may await before the plan is made; the
        // plan owns what it needs, so a reload never waits for requests in flight.
        let config = self.config.load_full();
        let domain = config.domain(&query.domain);
        let matches = domain
            .map(|d| decision::match_query(d, query))
            .unwrap_or_default();
        let mut keys = Vec::new();
        // The first key nobody owns, for the audit trail.
        let mut unknown_key = None;
        for (index, api_key) in decision::api_keys(query, &matches) {
            keys.resize(query.descriptors.len(), KeyResolution::NotTiered);
            keys[index] = match self.identity(&query.domain, api_key, now).await? {
                Some(identity) => KeyResolution::Known(identity),
                None => {
                    unknown_key.get_or_insert(api_key);
                    KeyResolution::Unknown
                }
            };
        }
        let context = PlanContext {
            keys: &keys,
            health: self.health.load().at(now),
        };
        let plan = decision::plan(&config, query, &matches, context, &self.options.plan);
        let applied = self.apply(&plan.checks, now).await?;
        let mut decision = decision::decide(plan, &applied);
        if decision.denial == Some(Denial::InvalidApiKey)
            && let Some(domain) = domain
        {
            // Boxed: rare, and its store calls would otherwise grow every request's future.
            Box::pin(self.punish_invalid_key(
                domain,
                query,
                unknown_key.unwrap_or_default(),
                &mut decision,
            ))
            .await;
        }
        Ok(decision)
    }

    async fn apply(&self, checks: &[Check], now: u64) -> Result<Applied, StoreError> {
        if checks.is_empty() {
            return Ok(Applied {
                admitted: true,
                counters: crate::store::Counters::new(),
            });
        }
        let Some(full) = self.known_full(checks, now) else {
            return self.store_apply(checks, now).await;
        };
        // Some counter is known full, so the request is denied and consumes nothing; the
        // store is still asked how the other counters stand (and counts the hits that count
        // even when denied), so that every status is what a store call would have said.
        metrics::counter!(telemetry::LOCAL_CACHE_HITS).increment(1);
        let mut counters: crate::store::Counters = full
            .iter()
            .map(|until| crate::store::Counter {
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
            let answered = self.store_apply(&looks, now).await?;
            for (&i, counter) in unknown.iter().zip(answered.counters) {
                counters[i] = counter;
            }
        }
        Ok(Applied {
            admitted: false,
            counters,
        })
    }

    /// One store call for `checks`, behind the breaker, remembering what it finds full.
    async fn store_apply(&self, checks: &[Check], now: u64) -> Result<Applied, StoreError> {
        let started = std::time::Instant::now();
        let applied = self.guarded(self.store.apply(checks), now).await;
        self.store_latency.record(started.elapsed());
        let applied = applied?;
        if applied.counters.len() != checks.len() {
            return Err(StoreError::Protocol(format!(
                "{} counters for {} checks",
                applied.counters.len(),
                checks.len()
            )));
        }
        self.remember_full(checks, &applied, now);
        Ok(applied)
    }

    /// Whether a check can be answered from the local over-limit cache: it may deny by itself,
    /// and a full counter of its algorithm stays full until its reset whatever is not counted
    /// meanwhile. So not a shadow check, a gate or a quota (whose denial depends on the other
    /// quotas); not a sliding window (it drains continuously); not a token bucket counting
    /// denied hits (each one owes more).
    fn cacheable(check: &Check) -> bool {
        use crate::algorithm::Algorithm;
        !check.shadow
            && !check.gate
            && !check.quota
            && match check.algorithm {
                Algorithm::FixedWindow => true,
                Algorithm::SlidingWindow => false,
                Algorithm::TokenBucket { .. } => !check.count_denied,
            }
    }

    /// For a request with some counter known full: until when each check's counter is known
    /// full (`None` for the others); `None` when none is (or the cache is off).
    fn known_full(&self, checks: &[Check], now: u64) -> Option<Vec<Option<u64>>> {
        let cache = self.over_limit.as_ref()?;
        let full: Vec<Option<u64>> = checks
            .iter()
            .map(|c| {
                (Self::cacheable(c) && c.hits > 0)
                    .then(|| cache.entry(&c.key, now))
                    .flatten()
                    .filter(|(full_at, _)| c.limit <= *full_at)
                    .map(|(_, until)| until)
            })
            .collect();
        full.iter().any(Option::is_some).then_some(full)
    }

    /// Remembers the counters this answer found full, until they reset: those found over, and
    /// fixed windows left with nothing (the next hit is over until the window ends). A check
    /// counting denied hits is remembered only once counted past its limit: at exactly its
    /// limit, a later report would be denied here without being counted, and the counter would
    /// never pass its limit.
    fn remember_full(&self, checks: &[Check], applied: &Applied, now: u64) {
        let Some(cache) = &self.over_limit else {
            return;
        };
        for (check, counter) in checks.iter().zip(&applied.counters) {
            let full = counter.over
                || (applied.admitted
                    && !check.count_denied
                    && check.algorithm == crate::algorithm::Algorithm::FixedWindow);
            if full && counter.remaining == 0 && counter.reset_ms > 0 && Self::cacheable(check) {
                cache.insert(check.key.clone(), check.limit, now, now + counter.reset_ms);
            }
        }
    }

    /// The owner of `api_key`, from the cache if it is fresh enough.
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
        // Boxed: a cache miss is rare, and the store call would grow every request's future.
        let identity = self
            .guarded(Box::pin(self.store.identity(domain, api_key)), now)
            .await?;
        let expires = now + self.options.cache_ttl.as_millis() as u64;
        self.identities
            .insert(cache_key, identity.clone(), now, expires);
        Ok(identity)
    }

    /// Records an invalid API key: an audit event, and a strike against the request's address,
    /// which blocks the address once it has too many.
    async fn punish_invalid_key(
        &self,
        domain: &Domain,
        query: &RateLimitQuery,
        api_key: &str,
        decision: &mut Decision,
    ) {
        let address = remote_address(query);
        let masked = mask_secret(api_key);
        crate::audit::security_event("invalid_api_key", domain.name(), &masked, address);
        let Some(address) = address else {
            return;
        };
        let policy = domain.invalid_keys();
        let prefix = &self.options.plan.key_prefix;
        let strike = Check {
            key: strike_key(prefix, domain.name(), address),
            limit: u64::from(policy.max_attempts),
            window_secs: policy.window_secs,
            hits: 1,
            shadow: false,
            gate: false,
            quota: false,
            count_denied: false,
            algorithm: crate::algorithm::Algorithm::FixedWindow,
        };
        match self.store.apply(std::slice::from_ref(&strike)).await {
            Ok(applied) if applied.admitted => {
                let reset_ms = applied.counters.first().map_or(0, |c| c.reset_ms);
                decision.retry_after_secs = Some(reset_ms.div_ceil(1000).max(1));
            }
            Ok(_) => {
                let block_ms = policy.block_for_secs * 1000;
                let flag = block_key(prefix, domain.name(), address);
                match self.store.set_flag(&flag, block_ms).await {
                    Ok(()) => {
                        crate::audit::security_event(
                            "address_blocked",
                            domain.name(),
                            address,
                            Some(address),
                        );
                        decision.retry_after_secs = Some(policy.block_for_secs);
                        let ends = self.clock.now_ms() + block_ms;
                        let mut blocks = self.blocks.lock().unwrap_or_else(PoisonError::into_inner);
                        if blocks.len() < MAX_REPORTED_BLOCKS {
                            blocks.push(Reverse((
                                ends,
                                domain.name().to_owned(),
                                address.to_owned(),
                            )));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not block an address"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not count an invalid API key"),
        }
    }

    /// Reports the end of every block this replica set that has ended by `now`.
    fn report_unblocks(&self, now: u64) {
        let mut ended = Vec::new();
        {
            let mut blocks = self.blocks.lock().unwrap_or_else(PoisonError::into_inner);
            while blocks
                .peek()
                .is_some_and(|Reverse((ends, _, _))| *ends <= now)
            {
                if let Some(Reverse(block)) = blocks.pop() {
                    ended.push(block);
                }
            }
        }
        for (_, domain, address) in ended {
            crate::audit::security_event("address_unblocked", &domain, &address, Some(&address));
        }
    }

    /// Blocks set by this replica whose end is still to be reported.
    pub fn blocks_pending(&self) -> usize {
        self.blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The health state in force now, as last read from the store (at most the cache TTL ago,
    /// while the store answers).
    pub fn health_status(&self) -> HealthStatus {
        self.health.load().at(self.clock.now_ms())
    }

    /// The health record as last read.
    pub fn health_record(&self) -> HealthRecord {
        HealthRecord::clone(&self.health.load())
    }

    /// Reads the shared health state from the store into this replica's cache.
    pub async fn refresh_health(&self) -> Result<(), StoreError> {
        let record = self.store.health().await?.unwrap_or_default();
        self.health.store(Arc::new(record));
        Ok(())
    }

    /// Records a new health state for every replica, and applies it here at once.
    pub async fn set_health(&self, record: HealthRecord) -> Result<(), StoreError> {
        self.store.set_health(&record).await?;
        self.health.store(Arc::new(record));
        Ok(())
    }

    /// Writes the API keys the config seeds into the store: missing users are created and
    /// missing keys added; what exists (e.g. a tier changed through the admin API) is kept.
    pub async fn seed_registry(&self) -> Result<(), StoreError> {
        let config = self.config.load_full();
        for name in config.domain_names() {
            let Some(domain) = config.domain(name) else {
                continue;
            };
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
            for user in users.into_values() {
                match self.store.create_user(name, &user).await {
                    Ok(()) => {}
                    Err(RegistryError::Store(e)) => return Err(e),
                    // The user exists, or one of its keys does: add what is missing, one by one.
                    Err(_) => {
                        let bare = UserRecord {
                            api_keys: Vec::new(),
                            ..user.clone()
                        };
                        match self.store.create_user(name, &bare).await {
                            Err(RegistryError::Store(e)) => return Err(e),
                            Ok(()) | Err(RegistryError::UserExists(_)) => {}
                            Err(e) => {
                                tracing::warn!(domain = name, error = %e, "seeding a user")
                            }
                        }
                        for key in &user.api_keys {
                            match self.store.add_key(name, &user.user_id, key).await {
                                Err(RegistryError::Store(e)) => return Err(e),
                                Err(RegistryError::KeyTaken(_)) | Ok(()) => {}
                                Err(e) => {
                                    tracing::warn!(domain = name, error = %e, "seeding an API key")
                                }
                            }
                        }
                    }
                }
            }
        }
        self.identities.clear();
        Ok(())
    }

    /// Forgets cached API key owners, after a registry change made through this replica.
    pub fn forget_identities(&self) {
        self.identities.clear();
    }

    /// A limiter with no config yet: it decides nothing (see [`Limiter::config_loaded`]) until
    /// [`Limiter::replace_config`] puts one in. For starting when the first config could not be
    /// loaded (the reference's FORCE_START_WITHOUT_INITIAL_CONFIG).
    pub fn awaiting_config(store: S, options: LimiterOptions, clock: Arc<dyn Clock>) -> Limiter<S> {
        let limiter = Limiter::new(Config::default(), store, options, clock);
        limiter.config_loaded.store(false, Ordering::Release);
        limiter
    }

    /// Whether a config has been loaded (always, unless made by [`Limiter::awaiting_config`]).
    pub fn config_loaded(&self) -> bool {
        self.config_loaded.load(Ordering::Acquire)
    }

    /// Replaces the config for every request that starts from now on.
    pub fn replace_config(&self, config: Config) {
        self.config.store(Arc::new(config));
        self.config_loaded.store(true, Ordering::Release);
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The settings.
    pub fn options(&self) -> &LimiterOptions {
        &self.options
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::{Limit, Unit};
    use crate::decision::Code;
    use crate::query::{DescriptorQuery, Entry};
    use crate::store::MemoryStore;

    const CONFIG: &str = r#"
domain: d
descriptors:
  - key: user
    rate_limit: { unit: minute, requests_per_unit: 2, name: per_user }
  - key: vip
    rate_limit: { unit: minute, requests_per_unit: 5 }
    replaces: [{ name: per_user }]
  - key: free
    rate_limit: { unlimited: true }
  - key: shadow
    shadow_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: blocked
    rate_limit: { unit: hour, requests_per_unit: 0 }
  - key: quota
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
"#;

    fn new_limiter(global_shadow: bool) -> Limiter<MemoryStore<ManualClock>> {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let options = PlanOptions {
            key_prefix: "t:".into(),
            global_shadow,
            ..Default::default()
        };
        Limiter::new(
            Config::from_yaml(CONFIG).unwrap(),
            MemoryStore::new(clock.clone(), 1000),
            LimiterOptions {
                plan: options,
                ..LimiterOptions::default()
            },
            clock,
        )
    }

    fn descriptor(key: &str, value: &str) -> DescriptorQuery {
        DescriptorQuery {
            entries: vec![Entry {
                key: key.into(),
                value: value.into(),
            }],
            limit_override: None,
            hits: 1,
        }
    }

    fn query(descriptors: Vec<DescriptorQuery>) -> RateLimitQuery {
        RateLimitQuery {
            domain: "d".into(),
            descriptors,
        }
    }

    async fn codes(
        limiter: &Limiter<MemoryStore<ManualClock>>,
        q: &RateLimitQuery,
    ) -> (Code, Vec<Code>) {
        let decision = limiter.decide(q).await.unwrap();
        (
            decision.overall,
            decision.statuses.iter().map(|s| s.code).collect(),
        )
    }

    #[tokio::test]
    async fn counts_remaining_and_reset() {
        let limiter = new_limiter(false);
        let q = query(vec![descriptor("user", "a")]);
        let first = limiter.decide(&q).await.unwrap();
        assert_eq!(first.overall, Code::Ok);
        let status = &first.statuses[0];
        assert_eq!(status.remaining, 1);
        assert_eq!(status.reset_ms, Some(20_000)); // 1_000_000 s is 40 s into its minute
        let applied = status.limit.as_ref().unwrap();
        assert_eq!(applied.name.as_deref(), Some("per_user"));
        assert_eq!(applied.limit, Limit::per(2, Unit::Minute));
        assert_eq!(codes(&limiter, &q).await, (Code::Ok, vec![Code::Ok]));
        let third = limiter.decide(&q).await.unwrap();
        assert_eq!(third.overall, Code::OverLimit);
        assert_eq!(third.statuses[0].remaining, 0);
    }

    #[tokio::test]
    async fn denied_request_consumes_nothing() {
        let limiter = new_limiter(false);
        let q = query(vec![descriptor("user", "a"), descriptor("blocked", "x")]);
        assert_eq!(
            codes(&limiter, &q).await,
            (Code::OverLimit, vec![Code::Ok, Code::OverLimit])
        );
        let decision = limiter.decide(&q).await.unwrap();
        assert_eq!(decision.statuses[0].remaining, 2, "user counter untouched");
        let alone = limiter
            .decide(&query(vec![descriptor("user", "a")]))
            .await
            .unwrap();
        assert_eq!(alone.statuses[0].remaining, 1);
    }

    #[tokio::test]
    async fn replaces_unlimited_unknown_and_no_match() {
        let limiter = new_limiter(false);
        // vip replaces per_user: only the vip limit applies
        let q = query(vec![descriptor("user", "a"), descriptor("vip", "a")]);
        let decision = limiter.decide(&q).await.unwrap();
        assert_eq!(decision.statuses[0].limit, None);
        assert_eq!(decision.statuses[1].remaining, 4);
        let decision = limiter
            .decide(&query(vec![descriptor("free", "x")]))
            .await
            .unwrap();
        assert_eq!(decision.statuses[0].remaining, u32::MAX);
        assert_eq!(decision.statuses[0].limit, None);
        let decision = limiter
            .decide(&query(vec![descriptor("nothing", "x")]))
            .await
            .unwrap();
        assert_eq!(
            (decision.statuses[0].code, decision.statuses[0].remaining),
            (Code::Ok, 0)
        );
        let unknown = RateLimitQuery {
            domain: "other".into(),
            ..query(vec![descriptor("blocked", "x")])
        };
        assert_eq!(codes(&limiter, &unknown).await, (Code::Ok, vec![Code::Ok]));
    }

    #[tokio::test]
    async fn shadow_mode_counts_but_never_denies() {
        let limiter = new_limiter(false);
        let q = query(vec![descriptor("shadow", "s")]);
        for _ in 0..3 {
            assert_eq!(codes(&limiter, &q).await, (Code::Ok, vec![Code::Ok]));
        }
        assert_eq!(limiter.decide(&q).await.unwrap().statuses[0].remaining, 0);

        let global = new_limiter(true);
        let q = query(vec![descriptor("blocked", "x"), descriptor("user", "b")]);
        assert_eq!(
            codes(&global, &q).await,
            (Code::Ok, vec![Code::OverLimit, Code::Ok])
        );
        // the request passed, so its other descriptor was counted
        assert_eq!(global.decide(&q).await.unwrap().statuses[1].remaining, 0);
    }

    #[tokio::test]
    async fn a_quota_debited_past_its_limit_runs_out() {
        let limiter = new_limiter(false);
        let with_hits = |hits| {
            let mut d = descriptor("quota", "q");
            d.hits = hits;
            query(vec![d])
        };
        // look, debit one (at the limit), look: still OK
        assert_eq!(codes(&limiter, &with_hits(0)).await.0, Code::Ok);
        assert_eq!(codes(&limiter, &with_hits(1)).await.0, Code::Ok);
        assert_eq!(codes(&limiter, &with_hits(0)).await.0, Code::Ok);
        // the next debit is denied but counted, so the quota has run out
        assert_eq!(codes(&limiter, &with_hits(1)).await.0, Code::OverLimit);
        assert_eq!(
            codes(&limiter, &with_hits(0)).await,
            (Code::OverLimit, vec![Code::OverLimit])
        );
    }

    #[tokio::test]
    async fn overrides_and_peeks() {
        let limiter = new_limiter(false);
        let mut over = descriptor("user", "c");
        over.limit_override = Some(Limit::per(1, Unit::Second));
        let q = query(vec![over.clone()]);
        assert_eq!(codes(&limiter, &q).await, (Code::Ok, vec![Code::Ok]));
        assert_eq!(
            codes(&limiter, &q).await,
            (Code::OverLimit, vec![Code::OverLimit])
        );
        // an override applies even where no rule matches
        let mut unmatched = descriptor("nothing", "x");
        unmatched.limit_override = over.limit_override;
        assert_eq!(
            limiter
                .decide(&query(vec![unmatched]))
                .await
                .unwrap()
                .statuses[0]
                .remaining,
            0
        );
        // hits 0 only looks
        let mut peek = descriptor("user", "d");
        peek.hits = 0;
        for _ in 0..5 {
            assert_eq!(
                limiter
                    .decide(&query(vec![peek.clone()]))
                    .await
                    .unwrap()
                    .statuses[0]
                    .remaining,
                2
            );
        }
        // several hits at once
        let mut heavy = descriptor("user", "e");
        heavy.hits = 3;
        assert_eq!(
            codes(&limiter, &query(vec![heavy])).await.0,
            Code::OverLimit
        );
    }

    #[tokio::test]
    async fn a_block_s_end_is_reported_from_its_expiry() {
        let config = r#"
domain: api
tiers:
  free: { unit: minute, base: 10, burst: 20, degraded: 2 }
invalid_keys: { max_attempts: 1, window: 1m, block_for: 30s }
descriptors:
  - key: api_key
    tiered: true
"#;
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let limiter = Limiter::new(
            Config::from_yaml(config).unwrap(),
            MemoryStore::new(clock.clone(), 1000),
            LimiterOptions::default(),
            clock.clone(),
        );
        let q = RateLimitQuery {
            domain: "api".into(),
            descriptors: vec![
                descriptor("remote_address", "192.0.2.9"),
                descriptor("api_key", "made-up"),
            ],
        };
        // One strike is allowed; the second blocks the address.
        for _ in 0..2 {
            let decision = limiter.decide(&q).await.unwrap();
            assert_eq!(decision.overall, Code::OverLimit);
        }
        assert_eq!(limiter.blocks_pending(), 1);
        limiter.observe();
        assert_eq!(limiter.blocks_pending(), 1, "the block has not ended yet");
        clock.advance(30_000);
        limiter.observe();
        assert_eq!(limiter.blocks_pending(), 0, "its end reported");
    }
}
