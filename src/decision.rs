//! From a query to a decision, purely: which rule each descriptor matches (`match_query`),
//! which checks the query needs given what the limiter resolved (`plan`), and what the store's
//! answer means for each descriptor and for the request (`decide`).

use std::sync::Arc;

use crate::config::{Config, Domain, Limit, Metadata};
use crate::health::HealthStatus;
use crate::matcher::{RuleMatch, find_rule};
use crate::query::RateLimitQuery;
use crate::store::key::state_key;
use crate::store::{Applied, Check, Identity, counter_key};
use crate::telemetry::MetricKey;

/// The entry key whose value identifies the client's address (Envoy's remote_address action).
pub const REMOTE_ADDRESS: &str = "remote_address";

/// Outcome for a descriptor or a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Under the limit (or not limited).
    Ok,
    /// Over the limit.
    OverLimit,
}

/// Why a request was denied other than by a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// A tiered descriptor carried an API key nobody owns.
    InvalidApiKey,
    /// The request's remote address is blocked for sending invalid API keys.
    AddressBlocked,
}

/// The limit that was applied to a descriptor, as reported back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedLimit {
    /// Requests per unit, and the unit.
    pub limit: Limit,
    /// The limit's configured name (for tiered limits: the tier), if any.
    pub name: Option<String>,
    /// The label of the rule's metrics: its key path, or the request's values for rules with
    /// `detailed_metric` / `value_to_metric`.
    pub metric_key: Arc<MetricKey>,
    /// The limit came from a tier (`name` is the tier).
    pub tiered: bool,
    /// `metric_key` holds request values (so its cardinality must be capped).
    pub metric_values: bool,
    /// The rule's `metadata`, for the response's dynamic metadata.
    pub metadata: Option<Arc<Metadata>>,
}

/// The outcome for one descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorStatus {
    /// OK or OVER_LIMIT (a shadow-mode rule always reports OK).
    pub code: Code,
    /// The limit applied; `None` when no rule matched or the rule is unlimited.
    pub limit: Option<AppliedLimit>,
    /// Requests left in the window (`u32::MAX` for unlimited).
    pub remaining: u32,
    /// Milliseconds until the window resets, for limited descriptors.
    pub reset_ms: Option<u64>,
    /// Hits this descriptor asked for.
    pub hits: u64,
    /// The rule is in shadow mode (its code is OK even when over).
    pub shadow: bool,
    /// The descriptor is a quota (`quota_mode`, or the global quota mode): over it alone, the
    /// request is denied only when every quota of the request is over.
    pub quota: bool,
    /// The counter went over its limit (also for shadow rules, whose code stays OK).
    pub over: bool,
}

impl DescriptorStatus {
    /// The status of a descriptor no counter was asked about: no limit applies (unmatched,
    /// replaced, unlimited), or none could be (an invalid key, a store failure).
    const fn unchecked(code: Code, remaining: u32) -> DescriptorStatus {
        DescriptorStatus {
            code,
            limit: None,
            remaining,
            reset_ms: None,
            hits: 0,
            shadow: false,
            quota: false,
            over: false,
        }
    }
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// OVER_LIMIT when any non-shadow descriptor is over (and global shadow mode is off), or
    /// when the request is denied for a [`Denial`].
    pub overall: Code,
    /// One status per descriptor, in request order.
    pub statuses: Vec<DescriptorStatus>,
    /// Set when the request was denied for its API key or address rather than a counter.
    pub denial: Option<Denial>,
    /// For a denied request: whole seconds until retrying can help.
    pub retry_after_secs: Option<u64>,
    /// The store could not answer and the failure mode decided instead.
    pub degraded: bool,
}

/// What to answer when the store cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Fail the call (gRPC UNAVAILABLE), so Envoy's own `failure_mode_deny` decides.
    #[default]
    Error,
    /// Let the request pass, marked degraded.
    Allow,
    /// Deny the request, marked degraded.
    Deny,
}

/// The decision `mode` gives a query of `descriptors` descriptors when the store failed;
/// `None` for [`FailureMode::Error`].
pub fn fallback(descriptors: usize, mode: FailureMode) -> Option<Decision> {
    let code = match mode {
        FailureMode::Error => return None,
        FailureMode::Allow => Code::Ok,
        FailureMode::Deny => Code::OverLimit,
    };
    Some(Decision {
        overall: code,
        statuses: (0..descriptors)
            .map(|_| DescriptorStatus::unchecked(code, 0))
            .collect(),
        denial: None,
        // Denied only while the store is away: worth retrying soon.
        retry_after_secs: (code == Code::OverLimit).then_some(1),
        degraded: true,
    })
}

/// How the limiter resolved a tiered descriptor's API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyResolution {
    /// The descriptor is not tiered.
    NotTiered,
    /// The key's owner.
    Known(Identity),
    /// Nobody owns the key.
    Unknown,
}

/// What the limiter knows beyond the config when it plans a query.
#[derive(Debug, Clone, Copy)]
pub struct PlanContext<'a> {
    /// One resolution per descriptor.
    pub keys: &'a [KeyResolution],
    /// The health state in force.
    pub health: HealthStatus,
}

/// The checks a query needs, and how to read their results back per descriptor.
#[derive(Debug)]
pub struct Plan {
    slots: Vec<DescriptorPlan>,
    /// The counters to check, for the store.
    pub checks: Vec<Check>,
    /// The check of the address-block gate, when the request carries an address.
    gate: Option<usize>,
    /// The request is denied whatever the counters say: its checks only look.
    denial: Option<Denial>,
    global_shadow: bool,
    /// Every descriptor with a limit (or none), but unlimited ones, is a quota.
    global_quota: bool,
}

/// What a matched descriptor is checked against.
struct Applying<'a> {
    limit: Limit,
    name: Option<&'a str>,
    shadow: bool,
    quota: bool,
    count_denied: bool,
    metadata: Option<Arc<Metadata>>,
    shared: Vec<(usize, &'a str)>,
    metric_key: Arc<MetricKey>,
    metric_values: bool,
    tiered: bool,
}

impl<'a> Applying<'a> {
    /// What the rule `rule` applies with `limit`.
    fn rule(rule: &'a crate::config::Rule, limit: Limit) -> Applying<'a> {
        Applying {
            limit,
            name: rule.name.as_deref(),
            shadow: rule.shadow_mode,
            quota: rule.quota_mode,
            count_denied: rule.count_denied_hits,
            metadata: rule.metadata.clone(),
            shared: Vec::new(),
            metric_key: rule.metric_key.clone(),
            metric_values: false,
            tiered: false,
        }
    }
}

/// What one descriptor of the request comes to: nothing to check, unlimited, refused for its
/// API key, or a check (by its index in the plan's checks).
#[derive(Debug)]
enum DescriptorPlan {
    NoLimit,
    Unlimited,
    InvalidKey,
    Checked {
        check: usize,
        applied: AppliedLimit,
        shadow: bool,
        quota: bool,
    },
}

/// Settings that shape every plan.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Prefix of every counter key.
    pub key_prefix: String,
    /// Global shadow mode: count everything, deny nothing.
    pub global_shadow: bool,
    /// Global quota mode (the reference's QUOTA_MODE): every descriptor is a quota.
    pub global_quota: bool,
    /// Hits of denied requests are counted on every descriptor (the reference's way).
    pub count_denied_hits: bool,
}

/// The rule each descriptor of `query` matches in `domain` (overrides skip matching).
pub fn match_query<'c>(domain: &'c Domain, query: &RateLimitQuery) -> Vec<Option<RuleMatch<'c>>> {
    query
        .descriptors
        .iter()
        .map(|d| match d.limit_override {
            Some(_) => None,
            None => find_rule(domain, &d.entries),
        })
        .collect()
}

/// The API key of each tiered descriptor (its last entry's value), by descriptor index.
pub fn api_keys<'q>(
    query: &'q RateLimitQuery,
    matches: &[Option<RuleMatch<'_>>],
) -> impl Iterator<Item = (usize, &'q str)> {
    query
        .descriptors
        .iter()
        .zip(matches.iter())
        .enumerate()
        .filter(|(_, (_, m))| m.as_ref().is_some_and(|m| m.rule.tiered))
        .filter_map(|(i, (d, _))| d.entries.last().map(|e| (i, e.value.as_str())))
}

/// The first `remote_address` value in any descriptor of `query`.
pub fn remote_address(query: &RateLimitQuery) -> Option<&str> {
    query
        .descriptors
        .iter()
        .flat_map(|d| &d.entries)
        .find(|e| e.key == REMOTE_ADDRESS)
        .map(|e| e.value.as_str())
}

/// A metric label from a descriptor's entries: the keys joined with '.', or with `values`,
/// `key_value` levels (bounded later by the metrics' cardinality cap).
fn key_path(descriptor: &crate::query::DescriptorQuery, values: bool) -> Arc<MetricKey> {
    let mut path = String::new();
    for (i, entry) in descriptor.entries.iter().enumerate() {
        if i > 0 {
            path.push('.');
        }
        path.push_str(&entry.key);
        if values {
            path.push('_');
            path.push_str(&entry.value);
        }
    }
    Arc::new(MetricKey::new(path))
}

/// Key of the flag that blocks `address` in `domain`.
pub fn block_key(prefix: &str, domain: &str, address: &str) -> String {
    state_key(prefix, "block", domain, address)
}

/// Key of the counter of invalid API keys sent from `address` in `domain`.
pub fn strike_key(prefix: &str, domain: &str, address: &str) -> String {
    state_key(prefix, "strike", domain, address)
}

/// Lists the checks `query` needs, given its matches in `config` and the limiter's context.
pub fn plan(
    config: &Config,
    query: &RateLimitQuery,
    matches: &[Option<RuleMatch<'_>>],
    context: PlanContext<'_>,
    options: &PlanOptions,
) -> Plan {
    let global_shadow = options.global_shadow;
    let Some(domain) = config.domain(&query.domain) else {
        // An unknown domain limits nothing, as in the reference.
        return Plan {
            slots: query
                .descriptors
                .iter()
                .map(|_| DescriptorPlan::NoLimit)
                .collect(),
            checks: Vec::new(),
            gate: None,
            denial: None,
            global_shadow,
            global_quota: options.global_quota,
        };
    };
    // A matched rule's `replaces` removes the named limits from this request.
    let is_replaced = |name: Option<&str>| {
        name.is_some_and(|name| {
            matches
                .iter()
                .flatten()
                .any(|m| m.rule.replaces.iter().any(|r| r == name))
        })
    };
    let invalid_key = context.keys.contains(&KeyResolution::Unknown);
    let denial = invalid_key.then_some(Denial::InvalidApiKey);

    let mut slots = Vec::with_capacity(query.descriptors.len());
    let mut checks = Vec::with_capacity(query.descriptors.len() + 1);
    for (i, (descriptor, matched)) in query.descriptors.iter().zip(matches).enumerate() {
        let resolution = context.keys.get(i).unwrap_or(&KeyResolution::NotTiered);
        let user_value;
        let applied = match (descriptor.limit_override, matched, resolution) {
            (Some(limit), _, _) => Applying {
                limit,
                name: None,
                shadow: false,
                quota: false,
                count_denied: false,
                metadata: None,
                shared: Vec::new(),
                metric_key: key_path(descriptor, false),
                metric_values: false,
                tiered: false,
            },
            (None, None, _) => {
                slots.push(DescriptorPlan::NoLimit);
                continue;
            }
            (None, Some(_), KeyResolution::Unknown) => {
                slots.push(DescriptorPlan::InvalidKey);
                continue;
            }
            (None, Some(m), KeyResolution::Known(identity)) if m.rule.tiered => {
                let Some(tier) = domain.tier(&identity.tier) else {
                    // The user's tier was removed from the config: the key grants nothing.
                    slots.push(DescriptorPlan::InvalidKey);
                    continue;
                };
                // Counted per user: every key of a user shares this counter.
                user_value = format!("user:{}", identity.user_id);
                Applying {
                    name: Some(tier.name.as_str()),
                    shared: vec![(descriptor.entries.len() - 1, user_value.as_str())],
                    tiered: true,
                    ..Applying::rule(m.rule, tier.limit(context.health))
                }
            }
            // An unlimited rule stays unlimited even when named in a `replaces`, as in the
            // reference.
            (None, Some(m), _) if m.rule.limit.is_some() && is_replaced(m.rule.name.as_deref()) => {
                slots.push(DescriptorPlan::NoLimit);
                continue;
            }
            (None, Some(m), _) => {
                let Some(limit) = m.rule.limit else {
                    slots.push(DescriptorPlan::Unlimited);
                    continue;
                };
                let metric_values = m.rule.detailed_metric || m.rule.value_to_metric;
                Applying {
                    shared: m.shared_values.clone(),
                    metric_key: if metric_values {
                        key_path(descriptor, true)
                    } else {
                        m.rule.metric_key.clone()
                    },
                    metric_values,
                    ..Applying::rule(m.rule, limit)
                }
            }
        };
        let Applying {
            limit,
            name,
            shadow,
            quota,
            count_denied,
            metadata,
            shared,
            metric_key,
            metric_values,
            tiered,
        } = applied;
        let quota = quota || options.global_quota;
        let window_secs = limit.window_secs();
        slots.push(DescriptorPlan::Checked {
            check: checks.len(),
            applied: AppliedLimit {
                limit,
                name: name.map(str::to_owned),
                metric_values,
                metric_key,
                tiered,
                metadata,
            },
            shadow,
            quota,
        });
        checks.push(Check {
            key: counter_key(
                &options.key_prefix,
                &query.domain,
                &descriptor.entries,
                &shared,
                window_secs,
                limit.algorithm,
            ),
            limit: u64::from(limit.requests_per_unit),
            window_secs,
            // A request already denied for its key only looks at its counters.
            hits: if denial.is_some() { 0 } else { descriptor.hits },
            shadow: shadow || global_shadow,
            gate: false,
            quota,
            // A quota is debited after the fact (look with 0 hits, then report what was used):
            // its hits count even when the request is denied, or it would never run out.
            count_denied: count_denied || quota || options.count_denied_hits,
            algorithm: limit.algorithm,
        });
    }
    // In the global quota mode a descriptor without a limit is a quota that never runs out
    // (the reference counts it as passed), so the request's quotas can never all be over:
    // none of their checks may deny.
    if options.global_quota && slots.iter().any(|s| matches!(s, DescriptorPlan::NoLimit)) {
        for check in checks.iter_mut().filter(|c| c.quota) {
            check.shadow = true;
        }
    }
    // In domains with API keys, an address blocked for invalid keys is denied outright.
    let gate = match remote_address(query) {
        Some(address) if domain.has_tiered() => {
            checks.push(Check::gate(block_key(
                &options.key_prefix,
                &query.domain,
                address,
            )));
            Some(checks.len() - 1)
        }
        _ => None,
    };
    Plan {
        slots,
        checks,
        gate,
        denial,
        global_shadow,
        global_quota: options.global_quota,
    }
}

/// Reads the store's answer for `plan` into a decision; `applied` holds one counter per check
/// of the plan (the caller checks the store kept to that).
///
/// The request is OVER_LIMIT, as in the reference, when a descriptor that is not a quota is
/// over its limit, or when it has quotas and every one of them is over; global shadow mode
/// turns that into OK, a [`Denial`] into OVER_LIMIT whatever the counters say.
pub fn decide(plan: Plan, applied: &Applied) -> Decision {
    let statuses: Vec<DescriptorStatus> = plan
        .slots
        .into_iter()
        .map(|slot| match slot {
            DescriptorPlan::NoLimit => DescriptorStatus {
                quota: plan.global_quota,
                ..DescriptorStatus::unchecked(Code::Ok, 0)
            },
            DescriptorPlan::Unlimited => DescriptorStatus::unchecked(Code::Ok, u32::MAX),
            DescriptorPlan::InvalidKey => DescriptorStatus::unchecked(Code::OverLimit, 0),
            DescriptorPlan::Checked {
                check,
                applied: applied_limit,
                shadow,
                quota,
            } => {
                let counter = applied.counters[check];
                DescriptorStatus {
                    code: if counter.over && !shadow {
                        Code::OverLimit
                    } else {
                        Code::Ok
                    },
                    limit: Some(applied_limit),
                    remaining: if counter.over {
                        0
                    } else {
                        u32::try_from(counter.remaining).unwrap_or(u32::MAX)
                    },
                    reset_ms: Some(counter.reset_ms),
                    hits: plan.checks[check].hits,
                    shadow,
                    quota,
                    over: counter.over,
                }
            }
        })
        .collect();
    let passed = crate::store::passes(
        statuses
            .iter()
            .map(|s| (s.quota, s.code == Code::OverLimit)),
    );
    let mut overall = if passed || plan.global_shadow {
        Code::Ok
    } else {
        Code::OverLimit
    };
    let mut retry_after_ms = statuses
        .iter()
        .filter(|s| s.code == Code::OverLimit)
        .filter_map(|s| s.reset_ms)
        .max()
        .unwrap_or(0);
    let mut denial = plan.denial;
    if let Some(gate) = plan.gate
        && applied.counters[gate].over
    {
        denial = Some(Denial::AddressBlocked);
        retry_after_ms = retry_after_ms.max(applied.counters[gate].reset_ms);
    }
    if denial.is_some() {
        overall = Code::OverLimit;
    }
    Decision {
        overall,
        statuses,
        denial,
        retry_after_secs: (overall == Code::OverLimit)
            .then(|| retry_after_ms.div_ceil(1000).max(1)),
        degraded: false,
    }
}
