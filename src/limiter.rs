//! The decision pipeline: validate → match → resolve API keys → plan → apply → decide, each
//! step a function of its own, over the live config and the counter store assembled at
//! start-up (the store, behind the circuit breaker, behind the over-limit cache).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::breaker::{BreakerSettings, BreakerState};
use crate::clock::Clock;
use crate::config::Config;
use crate::decision::{self, Decision, Degraded, Denial, FailureMode, PlanOptions};
use crate::fallback::{FallbackOptions, HEARTBEAT_TTL, LocalFallback};
use crate::query::RateLimitQuery;
use crate::store::{Backend, Check, Counted, CounterStore, Guarded, OverLimitCache, StoreError};
use crate::telemetry::{self, DescriptorStats};
use crate::tiers::Tiers;

/// Default bound on how stale a replica's view of shared state (the tier mode, API key owners)
/// may be.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(2);

/// Share of a limit past which a descriptor within it counts as "near": the reference's
/// NEAR_LIMIT_RATIO default, so that its near-limit statistics mean the same here.
pub const DEFAULT_NEAR_LIMIT_RATIO: f64 = 0.8;

/// Settings of a [`Limiter`].
#[derive(Debug, Clone)]
pub struct LimiterOptions {
    /// Key prefix and global shadow mode.
    pub plan: PlanOptions,
    /// How long shared state read from the store may be reused.
    pub cache_ttl: Duration,
    /// What to answer when the store cannot.
    pub failure_mode: FailureMode,
    /// How the local fallback divides limits (with [`FailureMode::Local`]).
    pub fallback: FallbackOptions,
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
            fallback: FallbackOptions::default(),
            breaker: BreakerSettings::default(),
            over_limit_cache: 0,
            near_limit_ratio: DEFAULT_NEAR_LIMIT_RATIO,
        }
    }
}

/// The counter store as the pipeline calls it: the store behind the circuit breaker, behind
/// the over-limit cache.
type Counters = OverLimitCache<Arc<Guarded<Backend>>>;

/// Decides queries against the current config with one counter store call each (plus, for
/// tiered domains, cached look-ups of API key owners).
#[derive(Debug)]
pub struct Limiter {
    config: ArcSwap<Config>,
    /// False from [`Limiter::awaiting_config`] until a config is put in.
    config_loaded: AtomicBool,
    counters: Counters,
    /// The store behind the breaker, shared with the tiers.
    store: Arc<Guarded<Backend>>,
    tiers: Tiers,
    /// This replica's own counters, with [`FailureMode::Local`].
    fallback: Option<LocalFallback>,
    options: LimiterOptions,
    clock: Arc<dyn Clock>,
    stats: DescriptorStats,
}

impl Limiter {
    /// A limiter serving `config` from `store`, reading time from `clock`.
    pub fn new(
        config: Config,
        store: impl Into<Backend>,
        options: LimiterOptions,
        clock: Arc<dyn Clock>,
    ) -> Limiter {
        let store = Arc::new(Guarded::new(store.into(), options.breaker, clock.clone()));
        Limiter {
            config: ArcSwap::from_pointee(config),
            config_loaded: AtomicBool::new(true),
            counters: OverLimitCache::new(store.clone(), options.over_limit_cache, clock.clone()),
            tiers: Tiers::new(
                store.clone(),
                clock.clone(),
                options.plan.key_prefix.clone(),
                options.cache_ttl,
            ),
            store,
            fallback: (options.failure_mode == FailureMode::Local)
                .then(|| LocalFallback::new(&options.fallback, clock.clone())),
            stats: DescriptorStats::new(options.near_limit_ratio),
            clock,
            options,
        }
    }

    /// A limiter with no config yet: it decides nothing (see [`Limiter::config_loaded`]) until
    /// [`Limiter::replace_config`] puts one in. For starting when the first config could not be
    /// loaded (the reference's FORCE_START_WITHOUT_INITIAL_CONFIG).
    pub fn awaiting_config(
        store: impl Into<Backend>,
        options: LimiterOptions,
        clock: Arc<dyn Clock>,
    ) -> Limiter {
        let limiter = Limiter::new(Config::default(), store, options, clock);
        limiter.config_loaded.store(false, Ordering::Release);
        limiter
    }

    /// Matches, counts and decides one (already validated) query. When the store fails, the
    /// failure mode answers (or, in mode `error`, the error is returned).
    pub async fn decide(&self, query: &RateLimitQuery) -> Result<Decision, StoreError> {
        // One clock read for the whole decision (the stores read their own).
        let now = self.clock.now_ms();
        match self.count_and_decide(query, now).await {
            Ok(decision) => {
                self.stats.record(&query.domain, decision.outcomes());
                Ok(decision)
            }
            Err(e) => self.fail(query, e),
        }
    }

    /// The pipeline proper: match, resolve, plan, apply, decide (and punish an invalid key).
    async fn count_and_decide(
        &self,
        query: &RateLimitQuery,
        now: u64,
    ) -> Result<Decision, StoreError> {
        // An Arc (not a guard) because API key look-ups may await before the plan is made; the
        // plan owns what it needs, so a reload never waits for requests in flight.
        let config = self.config.load_full();
        let domain = config.domain(&query.domain);
        let matches = decision::match_query(domain, query);
        let resolved = self.tiers.resolve(domain, query, &matches, now).await?;
        let plan = decision::plan(
            domain,
            query,
            &matches,
            resolved.context,
            &self.options.plan,
        );
        let (counted, degraded) = self.apply_or_fall_back(&plan.checks).await?;
        let mut decision = decision::decide(plan, &counted);
        decision.degraded = degraded;
        if decision.denial == Some(Denial::InvalidApiKey)
            && let Some(domain) = domain
        {
            let api_key = resolved.unknown_key.unwrap_or_default();
            // Boxed: rare, and its store calls would otherwise grow every request's future.
            let punished = Box::pin(self.tiers.punish_invalid_key(domain, query, api_key)).await;
            if let Some(retry_after) = punished {
                decision.retry_after_secs = Some(retry_after);
            }
        }
        Ok(decision)
    }

    /// The plan's checks through the counter store; a plan without checks (nothing matched)
    /// needs no store call.
    async fn apply(&self, checks: &[Check]) -> Result<Counted, StoreError> {
        if checks.is_empty() {
            return Ok(Counted {
                admitted: true,
                counters: crate::store::Counters::new(),
            });
        }
        self.counters.apply(checks).await
    }

    /// The plan's checks through the counter store or, when it fails and there is a local
    /// fallback, through this replica's own counters (then marked as such).
    async fn apply_or_fall_back(
        &self,
        checks: &[Check],
    ) -> Result<(Counted, Option<Degraded>), StoreError> {
        let counted = self.apply(checks).await;
        let Some(fallback) = &self.fallback else {
            return counted.map(|counted| (counted, None));
        };
        match counted {
            Ok(counted) => {
                fallback.store_answered();
                Ok((counted, None))
            }
            Err(e) => {
                self.record_store_error(&e);
                let counted = fallback.apply(checks, &e).await?;
                Ok((counted, Some(Degraded::LocalFallback)))
            }
        }
    }

    /// The failure mode's answer to `query` when the store failed with `e`.
    fn fail(&self, query: &RateLimitQuery, e: StoreError) -> Result<Decision, StoreError> {
        self.record_store_error(&e);
        decision::fallback(query.descriptors.len(), self.options.failure_mode).ok_or(e)
    }

    /// Counts a store failure in the metrics (and the debug log: an outage is logged once by
    /// the breaker, not per call).
    fn record_store_error(&self, e: &StoreError) {
        metrics::counter!(telemetry::STORE_ERRORS, "kind" => e.kind()).increment(1);
        if let Some(reference) = telemetry::reference::installed() {
            reference.record_store_error();
        }
        tracing::debug!(error = %e, "store failed");
    }

    /// Announces this replica to the store and learns how many share it, for the local
    /// fallback; nothing without one, or with a fixed replica count. A failure keeps the last
    /// count (that is what an outage runs on).
    pub async fn heartbeat(&self) {
        let Some(fallback) = self.fallback.as_ref().filter(|f| f.learns_replicas()) else {
            return;
        };
        let ttl_ms = HEARTBEAT_TTL.as_millis() as u64;
        match self
            .store
            .unguarded()
            .live_replicas(fallback.replica_id(), ttl_ms)
            .await
        {
            Ok(Some(live)) => fallback.learn_replicas(live),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat failed; keeping the last replica count")
            }
        }
    }

    /// Answers when the store is reachable (past the breaker: a health check must not wait
    /// for the circuit).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.counters.ping().await
    }

    /// The circuit breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.store.state()
    }

    /// Publishes the gauges (circuit, tier mode, caches, the store's own) and reports ended
    /// blocks; called periodically.
    pub fn observe(&self) {
        self.tiers.observe();
        self.counters.observe();
        if let Some(fallback) = &self.fallback {
            fallback.observe();
        }
    }

    /// The tiers: API key owners, the tier mode, the user registry.
    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    /// Writes the API keys the config in force seeds into the store.
    pub async fn seed_registry(&self) -> Result<(), StoreError> {
        self.tiers.seed(&self.config.load_full()).await
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

    fn new_limiter(global_shadow: bool) -> Limiter {
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

    async fn codes(limiter: &Limiter, q: &RateLimitQuery) -> (Code, Vec<Code>) {
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
        assert_eq!(limiter.tiers().blocks_pending(), 1);
        limiter.observe();
        assert_eq!(
            limiter.tiers().blocks_pending(),
            1,
            "the block has not ended yet"
        );
        clock.advance(30_000);
        limiter.observe();
        assert_eq!(limiter.tiers().blocks_pending(), 0, "its end reported");
    }
}
