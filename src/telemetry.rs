//! Metrics: the Prometheus recorder, every metric name in one place, and the per-descriptor
//! statistics that envoyproxy/ratelimit users know (total, over, near, within, shadow).
//!
//! Labels are bounded: per-descriptor metrics are labelled by domain and the rule's key path
//! (values appear only for rules that ask, `detailed_metric` / `value_to_metric`, and at most
//! [`MAX_DETAILED_KEYS`] distinct ones; beyond that they count under `_overflow`).
//!
//! Histograms are [`LatencyHistogram`]s, not the recorder's: those keep every sample until
//! upkeep or a scrape folds them (an unscraped replica grows with every request), and cost a
//! shared append per sample.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;

use metrics::Counter;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

mod latency;
pub mod reference;

pub use self::latency::LatencyHistogram;

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
/// Connections opened to the Redis master (label `result`: ok, error). A count that keeps
/// rising while Redis is up means connections are being replaced (missed deadlines, failovers).
pub const REDIS_CONNECTS: &str = "floodgate_redis_connects_total";
/// Redis pool connections (label `state`: in_use, idle).
pub const REDIS_CONNECTIONS: &str = "floodgate_redis_pool_connections";
/// Requests answered by the local over-limit cache.
pub const LOCAL_CACHE_HITS: &str = "floodgate_local_cache_hits_total";
/// Keys in the local over-limit cache.
pub const LOCAL_CACHE_ENTRIES: &str = "floodgate_local_cache_entries";
/// Circuit breaker state: 0 closed, 1 open, 2 half-open.
pub const CIRCUIT_STATE: &str = "floodgate_circuit_state";
/// Tier mode (the admin API's health state): 0 NORMAL, 1 DEGRADED.
pub const TIER_MODE: &str = "floodgate_health_state";
/// Config reloads (label `result`: success, failure).
pub const CONFIG_RELOADS: &str = "floodgate_config_reloads_total";
/// Security events (label `event`).
pub const SECURITY_EVENTS: &str = "floodgate_security_events_total";
/// Admin changes (label `action`).
pub const ADMIN_CHANGES: &str = "floodgate_admin_changes_total";
/// 1 while the xDS config stream is open, 0 otherwise.
pub const XDS_CONNECTED: &str = "floodgate_xds_connected";
/// xDS responses handled (label `result`: accepted, rejected — a NACK).
pub const XDS_UPDATES: &str = "floodgate_xds_updates_total";
/// When the last xDS config was accepted, Unix seconds.
pub const XDS_LAST_ACCEPTED: &str = "floodgate_xds_last_accepted_timestamp_seconds";
/// Memory store counters held.
pub const MEMORY_KEYS: &str = "floodgate_memory_store_keys";
/// Decisions made from local counters while the store could not answer (`--failure-mode local`).
pub const FALLBACK_DECISIONS: &str = "floodgate_local_fallback_decisions_total";
/// Replicas the local fallback divides limits by.
pub const FALLBACK_REPLICAS: &str = "floodgate_local_fallback_replicas";

/// Distinct value-bearing metric keys (detailed_metric / value_to_metric) tracked at most.
pub const MAX_DETAILED_KEYS: usize = 10_000;
/// Label used for value-bearing keys past the cap.
pub const OVERFLOW_KEY: &str = "_overflow";

/// Installs the Prometheus recorder (once per process) and returns its handle; [`render`]
/// gives `/metrics`.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            match PrometheusBuilder::new().install_recorder() {
                Ok(handle) => handle,
                // Another recorder was installed first (an embedding program): render ours
                // anyway, empty.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// The Prometheus text exposition of every metric: the recorder's, then the latency
/// histograms kept beside it.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    latency::render(&mut text);
    latency::render_counts(&mut text, REQUEST_DURATION, REQUESTS);
    text
}

/// How a ShouldRateLimit call ended, as the `result` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestResult {
    /// Allowed.
    Ok,
    /// Denied.
    OverLimit,
    /// Refused as malformed.
    InvalidArgument,
    /// The store failed and the failure mode said to fail the call.
    Unavailable,
}

impl RequestResult {
    const ALL: [RequestResult; 4] = [
        RequestResult::Ok,
        RequestResult::OverLimit,
        RequestResult::InvalidArgument,
        RequestResult::Unavailable,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            RequestResult::Ok => "ok",
            RequestResult::OverLimit => "over_limit",
            RequestResult::InvalidArgument => "invalid_argument",
            RequestResult::Unavailable => "unavailable",
        }
    }
}

/// The per-call metrics: a latency histogram per result, taken once so that recording a call
/// neither builds a metric key nor looks one up. Its count is also rendered as [`REQUESTS`].
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    by_result: [Arc<LatencyHistogram>; 4],
    reference: Option<&'static reference::ReferenceMetrics>,
}

impl RequestMetrics {
    /// The process's histograms, one per result.
    pub fn new() -> RequestMetrics {
        RequestMetrics {
            by_result: RequestResult::ALL
                .map(|r| LatencyHistogram::get(REQUEST_DURATION, "result", r.label())),
            reference: reference::installed(),
        }
    }

    /// Counts one call that took `elapsed`.
    pub fn record(&self, result: RequestResult, elapsed: Duration) {
        self.by_result[result as usize].record(elapsed);
        if let Some(reference) = self.reference {
            reference.record_call(elapsed, result == RequestResult::InvalidArgument);
        }
    }
}

impl Default for RequestMetrics {
    fn default() -> RequestMetrics {
        RequestMetrics::new()
    }
}

/// The label of a descriptor's metrics (a rule's key path, or a request's values), with the
/// counters it was last counted on. A rule keeps its key for its lifetime, so counting its
/// descriptors finds the counters there instead of building and looking up the label again.
#[derive(Debug)]
pub struct MetricKey {
    label: Box<str>,
    counters: OnceLock<Arc<DescriptorCounters>>,
}

impl MetricKey {
    /// A key labelled `label`, its counters not yet known.
    pub fn new(label: impl Into<Box<str>>) -> MetricKey {
        MetricKey {
            label: label.into(),
            counters: OnceLock::new(),
        }
    }

    /// The label.
    pub fn label(&self) -> &str {
        &self.label
    }
}

impl PartialEq for MetricKey {
    fn eq(&self, other: &MetricKey) -> bool {
        self.label == other.label
    }
}

impl Eq for MetricKey {}

/// The per-descriptor counters of one (domain, key) pair, each registered on first use (so a
/// series appears once it has something to say, as before the handles were kept), in
/// [`reference::DESCRIPTOR_STATS`] order; with the reference's names installed, the same
/// statistics under those too.
#[derive(Debug)]
struct DescriptorCounters {
    labels: [(&'static str, String); 2],
    cells: [OnceLock<Counter>; 5],
    reference: Option<[reference::LazyCounter; 5]>,
}

/// One of the per-descriptor statistics (an index into [`DescriptorCounters`]).
#[derive(Debug, Clone, Copy)]
enum Stat {
    Total,
    Over,
    Near,
    Within,
    Shadow,
}

/// Floodgate's names of the statistics, in [`Stat`] order.
const STAT_NAMES: [&str; 5] = [
    TOTAL_HITS,
    OVER_LIMIT,
    NEAR_LIMIT,
    WITHIN_LIMIT,
    SHADOW_MODE,
];

impl DescriptorCounters {
    fn new(domain: &str, key: &str) -> DescriptorCounters {
        DescriptorCounters {
            labels: [("domain", domain.to_owned()), ("key", key.to_owned())],
            cells: Default::default(),
            reference: reference::installed().map(|r| r.descriptor_counters(domain, key)),
        }
    }

    fn add(&self, stat: Stat, hits: u64) {
        let i = stat as usize;
        self.cells[i]
            .get_or_init(|| metrics::counter!(STAT_NAMES[i], &self.labels))
            .increment(hits);
        if let Some(reference) = &self.reference {
            reference[i].add(hits);
        }
    }
}

/// Shards of the (domain, key) → counters map, so that adding a pair copies a small map.
const STATS_SHARDS: usize = 16;
/// (domain, key) pairs whose handles are kept; past it (only after many reloads that each
/// brought new rules) counters are still counted, through the registry.
const MAX_KEPT_PAIRS: usize = 4 * MAX_DETAILED_KEYS;

/// One shard: read without a lock or a shared write (every descriptor reads it); a new pair
/// replaces the map with a copy (rare: the pairs are bounded and each is added once).
#[derive(Debug, Default)]
struct StatsShard {
    kept: ArcSwap<HashMap<Box<str>, Arc<DescriptorCounters>>>,
    adding: Mutex<()>,
}

thread_local! {
    /// The lookup key "domain\0key", built here instead of in a new String per descriptor.
    static PAIR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs `f` on the map key "domain\0key", built in the per-thread buffer.
fn with_pair<R>(domain: &str, key: &str, f: impl FnOnce(&str) -> R) -> R {
    PAIR.with_borrow_mut(|pair| {
        pair.clear();
        pair.push_str(domain);
        pair.push('\0');
        pair.push_str(key);
        f(pair)
    })
}

/// One limited descriptor's outcome, as the per-descriptor statistics count it (made from a
/// decision by [`crate::decision::Decision::outcomes`]).
#[derive(Debug, Clone, Copy)]
pub struct DescriptorOutcome<'a> {
    /// The rule's metric key.
    pub metric_key: &'a Arc<MetricKey>,
    /// The key holds request values (so its cardinality is capped).
    pub metric_values: bool,
    /// Requests allowed per window.
    pub limit: u32,
    /// Hits the descriptor asked for.
    pub hits: u64,
    /// The counter went over its limit.
    pub over: bool,
    /// The rule is in shadow mode.
    pub shadow: bool,
    /// Requests left in the window.
    pub remaining: u32,
    /// The tier, for a limit a tier granted.
    pub tier: Option<&'a str>,
    /// The descriptor's code is OVER_LIMIT.
    pub denied: bool,
}

/// Records the per-descriptor statistics of each decision.
#[derive(Debug)]
pub struct DescriptorStats {
    /// A descriptor within the limit is "near" once it has used this share of it.
    near_limit_ratio: f64,
    shards: Box<[StatsShard]>,
    hasher: RandomState,
    /// Pairs kept, and of those, value-bearing keys (bounded by [`MAX_DETAILED_KEYS`]).
    kept: AtomicUsize,
    detailed: AtomicUsize,
}

impl DescriptorStats {
    /// Statistics with the given near-limit ratio (the reference uses 0.8).
    pub fn new(near_limit_ratio: f64) -> DescriptorStats {
        DescriptorStats {
            near_limit_ratio,
            shards: (0..STATS_SHARDS).map(|_| StatsShard::default()).collect(),
            hasher: RandomState::new(),
            kept: AtomicUsize::new(0),
            detailed: AtomicUsize::new(0),
        }
    }

    /// Counts a decision's limited descriptors for `domain`.
    pub fn record<'a>(&self, domain: &str, outcomes: impl Iterator<Item = DescriptorOutcome<'a>>) {
        for outcome in outcomes {
            // A rule's key remembers its counters (a key with request values is new every time,
            // and must go through the label cap).
            let remembered = &outcome.metric_key.counters;
            if !outcome.metric_values
                && let Some(counters) = remembered.get()
            {
                self.count(counters, domain, &outcome);
                continue;
            }
            let key = outcome.metric_key.label();
            let counters = self.counters(domain, key, outcome.metric_values);
            self.count(&counters, domain, &outcome);
            if !outcome.metric_values {
                let _ = remembered.set(counters);
            }
        }
    }

    /// Counts one descriptor's hits on its counters.
    fn count(&self, counters: &DescriptorCounters, domain: &str, outcome: &DescriptorOutcome<'_>) {
        let hits = outcome.hits;
        counters.add(Stat::Total, hits);
        let limit = u64::from(outcome.limit);
        if outcome.over {
            counters.add(Stat::Over, hits);
            if outcome.shadow {
                counters.add(Stat::Shadow, hits);
            }
        } else {
            let used = limit.saturating_sub(u64::from(outcome.remaining));
            if limit > 0 && used as f64 >= self.near_limit_ratio * limit as f64 {
                counters.add(Stat::Near, hits);
            }
            counters.add(Stat::Within, hits);
        }
        if let Some(tier) = outcome.tier {
            let code = if outcome.denied { "over_limit" } else { "ok" };
            metrics::counter!(TIER_DECISIONS, "domain" => domain.to_owned(), "tier" => tier.to_owned(), "code" => code).increment(1);
        }
    }

    /// The counters of (`domain`, `key`). A new value-bearing key (`values`) counts under
    /// [`OVERFLOW_KEY`] once [`MAX_DETAILED_KEYS`] others are known, or once no more pairs can
    /// be kept (so the label cap holds whether or not the handles are kept).
    fn counters(&self, domain: &str, key: &str, values: bool) -> Arc<DescriptorCounters> {
        if let Some(found) = self.kept(domain, key) {
            return found;
        }
        let full = self.kept.load(Ordering::Relaxed) >= MAX_KEPT_PAIRS;
        let key = if values && (full || self.detailed.load(Ordering::Relaxed) >= MAX_DETAILED_KEYS)
        {
            OVERFLOW_KEY
        } else {
            key
        };
        if key == OVERFLOW_KEY
            && let Some(found) = self.kept(domain, key)
        {
            return found;
        }
        let counters = Arc::new(DescriptorCounters::new(domain, key));
        if full {
            return counters;
        }
        with_pair(domain, key, |pair| {
            let shard = self.shard(pair);
            let _adding = shard.adding.lock().unwrap_or_else(PoisonError::into_inner);
            let kept = shard.kept.load();
            if let Some(found) = kept.get(pair) {
                return found.clone();
            }
            self.kept.fetch_add(1, Ordering::Relaxed);
            if values && key != OVERFLOW_KEY {
                self.detailed.fetch_add(1, Ordering::Relaxed);
            }
            let mut more = HashMap::clone(&kept);
            more.insert(pair.into(), counters.clone());
            shard.kept.store(Arc::new(more));
            counters
        })
    }

    fn kept(&self, domain: &str, key: &str) -> Option<Arc<DescriptorCounters>> {
        with_pair(domain, key, |pair| {
            self.shard(pair).kept.load().get(pair).cloned()
        })
    }

    fn shard(&self, pair: &str) -> &StatsShard {
        &self.shards[(self.hasher.hash_one(pair) as usize) % STATS_SHARDS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(stats: &DescriptorStats, key: &str, values: bool) -> String {
        stats.counters("d", key, values).labels[1].1.clone()
    }

    #[test]
    fn value_bearing_keys_are_bounded_and_rule_keys_are_not() {
        let stats = DescriptorStats::new(0.8);
        for i in 0..MAX_DETAILED_KEYS {
            assert_eq!(key_of(&stats, &format!("ip_{i}"), true), format!("ip_{i}"));
        }
        // Known ones keep their own label; a new one counts under the overflow label.
        assert_eq!(key_of(&stats, "ip_7", true), "ip_7");
        assert_eq!(key_of(&stats, "ip_new", true), OVERFLOW_KEY);
        // A rule's key path is not value-bearing: always its own label.
        assert_eq!(key_of(&stats, "path", false), "path");
        // The same pair is one set of handles.
        assert!(Arc::ptr_eq(
            &stats.counters("d", "path", false),
            &stats.counters("d", "path", false)
        ));
        assert!(!Arc::ptr_eq(
            &stats.counters("d", "path", false),
            &stats.counters("e", "path", false)
        ));
    }

    #[test]
    fn value_bearing_keys_stay_capped_when_no_more_pairs_are_kept() {
        let stats = DescriptorStats::new(0.8);
        for i in 0..MAX_KEPT_PAIRS {
            stats.counters("d", &format!("rule_{i}"), false);
        }
        assert_eq!(key_of(&stats, "ip_1", true), OVERFLOW_KEY);
        assert_eq!(key_of(&stats, "another_rule", false), "another_rule");
    }

    fn outcome_on(key: &Arc<MetricKey>, values: bool) -> std::iter::Once<DescriptorOutcome<'_>> {
        std::iter::once(DescriptorOutcome {
            metric_key: key,
            metric_values: values,
            limit: 10,
            hits: 1,
            over: false,
            shadow: false,
            remaining: 9,
            tier: None,
            denied: false,
        })
    }

    #[test]
    fn a_rule_key_remembers_its_counters_and_a_value_key_does_not() {
        let stats = DescriptorStats::new(0.8);
        let rule = Arc::new(MetricKey::new("path"));
        stats.record("d", outcome_on(&rule, false));
        let remembered = rule
            .counters
            .get()
            .expect("remembered after the first count");
        assert!(Arc::ptr_eq(remembered, &stats.counters("d", "path", false)));
        // After a reload the new rule's key finds the same counters (the same series).
        let reloaded = Arc::new(MetricKey::new("path"));
        stats.record("d", outcome_on(&reloaded, false));
        assert!(Arc::ptr_eq(remembered, reloaded.counters.get().unwrap()));
        // Request values go through the label cap every time.
        let values = Arc::new(MetricKey::new("ip_1"));
        stats.record("d", outcome_on(&values, true));
        assert!(values.counters.get().is_none());
    }
}
