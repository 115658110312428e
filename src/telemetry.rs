//! Metrics: the Prometheus recorder, every metric name in one place, and the per-descriptor
//! statistics that envoyproxy/ratelimit users know (total, over, near, within, shadow).
//!
//! Labels are bounded: per-descriptor metrics are labelled by domain and the rule's key path
//! (values appear only for rules that ask, `detailed_metric` / `value_to_metric`, and at most
//! [`MAX_DETAILED_KEYS`] distinct ones; beyond that they count under `_overflow`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::cache::TtlCache;
use crate::decision::{Code, Decision};

/// ShouldRateLimit latency, seconds (histogram; label `result`).
pub const REQUEST_DURATION: &str = "floodgate_request_duration_seconds";
/// ShouldRateLimit calls (label `result`: ok, over_limit, invalid_argument, unavailable).
pub const REQUESTS: &str = "floodgate_requests_total";
/// Hits per descriptor (labels `domain`, `key`).
pub const TOTAL_HITS: &str = "floodgate_rate_limit_total_hits";
/// Hits over the limit.
pub const OVER_LIMIT: &str = "floodgate_rate_limit_over_limit";
/// Hits within the limit but past the near-limit ratio.
pub const NEAR_LIMIT: &str = "floodgate_rate_limit_near_limit";
/// Hits within the limit.
pub const WITHIN_LIMIT: &str = "floodgate_rate_limit_within_limit";
/// Hits over the limit of a shadow-mode rule (not denied).
pub const SHADOW_MODE: &str = "floodgate_rate_limit_shadow_mode";
/// Decisions of tiered descriptors (labels `domain`, `tier`, `code`).
pub const TIER_DECISIONS: &str = "floodgate_tier_decisions_total";
/// Store call latency, seconds (histogram; label `store`).
pub const STORE_DURATION: &str = "floodgate_store_duration_seconds";
/// Store failures (label `kind`).
pub const STORE_ERRORS: &str = "floodgate_store_errors_total";
/// Redis pipelines sent.
pub const REDIS_ROUND_TRIPS: &str = "floodgate_redis_round_trips_total";
/// Decision script calls sent to Redis.
pub const REDIS_SCRIPT_CALLS: &str = "floodgate_redis_script_calls_total";
/// Redis pool connections (label `state`: in_use, idle).
pub const REDIS_CONNECTIONS: &str = "floodgate_redis_pool_connections";
/// Requests answered by the local over-limit cache.
pub const LOCAL_CACHE_HITS: &str = "floodgate_local_cache_hits_total";
/// Keys in the local over-limit cache.
pub const LOCAL_CACHE_ENTRIES: &str = "floodgate_local_cache_entries";
/// Circuit breaker state: 0 closed, 1 open, 2 half-open.
pub const CIRCUIT_STATE: &str = "floodgate_circuit_state";
/// Health state: 0 NORMAL, 1 DEGRADED.
pub const HEALTH_STATE: &str = "floodgate_health_state";
/// Config reloads (label `result`: success, failure).
pub const CONFIG_RELOADS: &str = "floodgate_config_reloads_total";
/// Security events (label `event`).
pub const SECURITY_EVENTS: &str = "floodgate_security_events_total";
/// Admin changes (label `action`).
pub const ADMIN_CHANGES: &str = "floodgate_admin_changes_total";
/// Memory store counters held.
pub const MEMORY_KEYS: &str = "floodgate_memory_store_keys";

/// Distinct value-bearing metric keys (detailed_metric / value_to_metric) tracked at most.
pub const MAX_DETAILED_KEYS: usize = 10_000;
/// Label used for value-bearing keys past the cap.
pub const OVERFLOW_KEY: &str = "_overflow";

/// Latency buckets, seconds: 50 µs to 1 s, dense where a rate limiter should answer.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Installs the Prometheus recorder (once per process) and returns the handle that renders
/// `/metrics`.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static buckets are valid");
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder was installed first (an embedding program): render ours
                // anyway, empty.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Records the per-descriptor statistics of one decision.
#[derive(Debug)]
pub struct DescriptorStats {
    /// A descriptor within the limit is "near" once it has used this share of it.
    near_limit_ratio: f64,
    detailed: TtlCache<()>,
}

impl DescriptorStats {
    /// Statistics with the given near-limit ratio (the reference uses 0.8).
    pub fn new(near_limit_ratio: f64) -> DescriptorStats {
        DescriptorStats {
            near_limit_ratio,
            detailed: TtlCache::new(MAX_DETAILED_KEYS),
        }
    }

    /// Counts `decision`'s descriptors for `domain`.
    pub fn record(&self, domain: &str, decision: &Decision, now_ms: u64) {
        for status in &decision.statuses {
            let Some(applied) = &status.limit else {
                continue;
            };
            let key: &str = if !applied.metric_values || self.bounded(&applied.metric_key, now_ms) {
                &applied.metric_key
            } else {
                OVERFLOW_KEY
            };
            let labels = [("domain", domain.to_owned()), ("key", key.to_owned())];
            let hits = status.hits;
            metrics::counter!(TOTAL_HITS, &labels).increment(hits);
            let limit = u64::from(applied.limit.requests_per_unit);
            if status.over {
                metrics::counter!(OVER_LIMIT, &labels).increment(hits);
                if status.shadow {
                    metrics::counter!(SHADOW_MODE, &labels).increment(hits);
                }
            } else {
                let used = limit.saturating_sub(u64::from(status.remaining));
                if limit > 0 && used as f64 >= self.near_limit_ratio * limit as f64 {
                    metrics::counter!(NEAR_LIMIT, &labels).increment(hits);
                }
                metrics::counter!(WITHIN_LIMIT, &labels).increment(hits);
            }
            if applied.tiered {
                let code = if status.code == Code::OverLimit {
                    "over_limit"
                } else {
                    "ok"
                };
                let tier = applied.name.clone().unwrap_or_default();
                metrics::counter!(TIER_DECISIONS, "domain" => domain.to_owned(), "tier" => tier, "code" => code).increment(1);
            }
        }
    }

    /// Whether a value-bearing key may be a label: while fewer than the cap are known (an
    /// approximate, lock-sharded set).
    fn bounded(&self, key: &str, now_ms: u64) -> bool {
        if self.detailed.get(key, now_ms).is_some() {
            return true;
        }
        if self.detailed.len() >= MAX_DETAILED_KEYS {
            return false;
        }
        self.detailed.insert(key.to_owned(), (), now_ms, u64::MAX);
        true
    }
}
