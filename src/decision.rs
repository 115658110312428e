//! From a query to a decision, purely: which rule each descriptor matches (`match_query`),
//! which checks the query needs given what the tiers resolved (`plan`), and what the store's
//! answer means for each descriptor and for the request (`decide`).

use std::sync::Arc;

use crate::config::{Domain, Limit, Metadata};
use crate::matcher::{RuleMatch, find_rule};
use crate::query::{DescriptorQuery, RateLimitQuery};
use crate::store::{Check, Counted, counter_key};
use crate::telemetry::{DescriptorOutcome, MetricKey};

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
    /// Set when the store could not answer and something else decided: the failure mode, or
    /// this replica's local counters.
    pub degraded: Option<Degraded>,
}

/// Who decided a request the store could not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Degraded {
    /// The failure mode's fixed answer (allow or deny).
    FailureMode,
    /// This replica's own counters, each limit divided among the replicas
    /// (the `fallback` module).
    LocalFallback,
}

impl Degraded {
    /// The value of the response's degraded marker.
    pub const fn marker(self) -> &'static str {
        match self {
            Degraded::FailureMode => "store-unavailable",
            Degraded::LocalFallback => "local-fallback",
        }
    }
}

impl Decision {
    /// The limited descriptors' outcomes, for the per-descriptor statistics.
    pub fn outcomes(&self) -> impl Iterator<Item = DescriptorOutcome<'_>> {
        self.statuses.iter().filter_map(|status| {
            let limit = status.limit.as_ref()?;
            Some(DescriptorOutcome {
                metric_key: &limit.metric_key,
                metric_values: limit.metric_values,
                limit: limit.limit.requests_per_unit,
                hits: status.hits,
                over: status.over,
                shadow: status.shadow,
                remaining: status.remaining,
                tier: limit
                    .tiered
                    .then(|| limit.name.as_deref().unwrap_or_default()),
                denied: status.code == Code::OverLimit,
            })
        })
    }
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
    /// Decide from this replica's own counters, each limit divided among the live replicas
    /// (see the `fallback` module); a request that cannot be planned without the store (an API
    /// key whose owner this replica has never seen) is denied, marked degraded.
    Local,
}

/// The decision `mode` gives a query of `descriptors` descriptors when the store failed;
/// `None` for [`FailureMode::Error`].
pub fn fallback(descriptors: usize, mode: FailureMode) -> Option<Decision> {
    let code = match mode {
        FailureMode::Error => return None,
        FailureMode::Allow => Code::Ok,
        FailureMode::Deny | FailureMode::Local => Code::OverLimit,
    };
    let degraded = match mode {
        FailureMode::Local => Degraded::LocalFallback,
        _ => Degraded::FailureMode,
    };
    Some(Decision {
        overall: code,
        statuses: (0..descriptors)
            .map(|_| DescriptorStatus::unchecked(code, 0))
            .collect(),
        denial: None,
        // Denied only while the store is away: worth retrying soon.
        retry_after_secs: (code == Code::OverLimit).then_some(1),
        degraded: Some(degraded),
    })
}

/// How the tiers resolved a tiered descriptor's API key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KeyResolution {
    /// The descriptor is not tiered.
    #[default]
    NotTiered,
    /// The key's owner has a tier: what it grants.
    Granted(TierGrant),
    /// Nobody owns the key: the request is denied for it.
    Unknown,
    /// The owner's tier is no longer in the config: the key grants nothing.
    TierGone,
}

/// What a known API key grants: its owner's tier, the tier's limit in the current mode, and
/// the owner's counter (every key of a user shares it; see [`crate::tiers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierGrant {
    /// The tier's name, reported as the limit's name.
    pub tier: String,
    /// The tier's limit now.
    pub limit: Limit,
    /// The user's counter key.
    pub key: String,
}

/// What the limiter knows beyond the config when it plans a query.
#[derive(Debug, Clone, Default)]
pub struct PlanContext {
    /// One resolution per descriptor, or none when no descriptor is tiered.
    pub keys: Vec<KeyResolution>,
    /// The flag key of the request's address block, for domains with API keys.
    pub gate: Option<String>,
}

/// The checks a query needs, and how to read their results back per descriptor.
#[derive(Debug)]
pub struct Plan {
    descriptors: Vec<DescriptorPlan>,
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

/// The limit a descriptor is checked against, and how it is reported.
struct DescriptorLimit<'a> {
    limit: Limit,
    name: Option<String>,
    shadow: bool,
    quota: bool,
    count_denied: bool,
    metadata: Option<Arc<Metadata>>,
    /// The counter: a key already made (a user's), or made here with these shared values.
    key: Option<String>,
    shared: Vec<(usize, &'a str)>,
    metric_key: Arc<MetricKey>,
    metric_values: bool,
    tiered: bool,
}

impl<'a> DescriptorLimit<'a> {
    /// What the rule `rule` applies with `limit`.
    fn rule(rule: &'a crate::config::Rule, limit: Limit) -> DescriptorLimit<'a> {
        DescriptorLimit {
            limit,
            name: rule.name.clone(),
            shadow: rule.shadow_mode,
            quota: rule.quota_mode,
            count_denied: rule.count_denied_hits,
            metadata: rule.metadata.clone(),
            key: None,
            shared: Vec::new(),
            metric_key: rule.metric_key.clone(),
            metric_values: false,
            tiered: false,
        }
    }

    /// A limit Envoy sent with the descriptor: no rule, nothing but the limit.
    fn sent(limit: Limit, descriptor: &DescriptorQuery) -> DescriptorLimit<'a> {
        DescriptorLimit {
            limit,
            name: None,
            shadow: false,
            quota: false,
            count_denied: false,
            metadata: None,
            key: None,
            shared: Vec::new(),
            metric_key: key_path(descriptor, false),
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
        limit: AppliedLimit,
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

/// The rule each descriptor of `query` matches in `domain` (overrides skip matching; an
/// unknown domain matches nothing).
pub fn match_query<'c>(
    domain: Option<&'c Domain>,
    query: &RateLimitQuery,
) -> Vec<Option<RuleMatch<'c>>> {
    let Some(domain) = domain else {
        return Vec::new();
    };
    query
        .descriptors
        .iter()
        .map(|d| match d.limit_override {
            Some(_) => None,
            None => find_rule(domain, &d.entries),
        })
        .collect()
}

/// A metric label from a descriptor's entries: the keys joined with '.', or with `values`,
/// `key_value` levels (bounded later by the metrics' cardinality cap).
fn key_path(descriptor: &DescriptorQuery, values: bool) -> Arc<MetricKey> {
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

/// Lists the checks `query` needs, given its matches in `domain` and the limiter's context.
/// An unknown domain (`None`) limits nothing, as in the reference.
pub fn plan(
    domain: Option<&Domain>,
    query: &RateLimitQuery,
    matches: &[Option<RuleMatch<'_>>],
    mut context: PlanContext,
    options: &PlanOptions,
) -> Plan {
    let denial = context
        .keys
        .contains(&KeyResolution::Unknown)
        .then_some(Denial::InvalidApiKey);
    let mut plan = Plan {
        descriptors: Vec::with_capacity(query.descriptors.len()),
        checks: Vec::with_capacity(query.descriptors.len() + 1),
        gate: None,
        denial,
        global_shadow: options.global_shadow,
        global_quota: options.global_quota,
    };
    if domain.is_none() {
        plan.descriptors
            .resize_with(query.descriptors.len(), || DescriptorPlan::NoLimit);
        return plan;
    }
    for (i, descriptor) in query.descriptors.iter().enumerate() {
        let resolution = context.keys.get_mut(i).map(std::mem::take);
        let matched = matches.get(i).and_then(Option::as_ref);
        match descriptor_limit(descriptor, matched, resolution.unwrap_or_default(), matches) {
            Ok(limit) => plan.add_check(limit, descriptor, &query.domain, options),
            Err(outcome) => plan.descriptors.push(outcome),
        }
    }
    plan.quotas_never_all_over();
    if let Some(gate) = context.gate {
        plan.checks.push(Check::gate(gate));
        plan.gate = Some(plan.checks.len() - 1);
    }
    plan
}

/// The limit `descriptor` is checked against, or what it comes to without a check.
fn descriptor_limit<'a>(
    descriptor: &DescriptorQuery,
    matched: Option<&RuleMatch<'a>>,
    resolution: KeyResolution,
    matches: &[Option<RuleMatch<'_>>],
) -> Result<DescriptorLimit<'a>, DescriptorPlan> {
    if let Some(limit) = descriptor.limit_override {
        return Ok(DescriptorLimit::sent(limit, descriptor));
    }
    let Some(m) = matched else {
        return Err(DescriptorPlan::NoLimit);
    };
    match resolution {
        KeyResolution::Unknown | KeyResolution::TierGone => Err(DescriptorPlan::InvalidKey),
        KeyResolution::Granted(grant) if m.rule.tiered => Ok(DescriptorLimit {
            name: Some(grant.tier),
            key: Some(grant.key),
            tiered: true,
            ..DescriptorLimit::rule(m.rule, grant.limit)
        }),
        _ => rule_limit(descriptor, m, matches),
    }
}

/// The limit of a matched, untiered rule: none when another matched rule `replaces` it (an
/// unlimited rule stays unlimited even then, as in the reference).
fn rule_limit<'a>(
    descriptor: &DescriptorQuery,
    m: &RuleMatch<'a>,
    matches: &[Option<RuleMatch<'_>>],
) -> Result<DescriptorLimit<'a>, DescriptorPlan> {
    let Some(limit) = m.rule.limit else {
        return Err(DescriptorPlan::Unlimited);
    };
    let replaced = m.rule.name.as_deref().is_some_and(|name| {
        matches
            .iter()
            .flatten()
            .any(|other| other.rule.replaces.iter().any(|r| r == name))
    });
    if replaced {
        return Err(DescriptorPlan::NoLimit);
    }
    let metric_values = m.rule.detailed_metric || m.rule.value_to_metric;
    Ok(DescriptorLimit {
        shared: m.shared_values.clone(),
        metric_key: if metric_values {
            key_path(descriptor, true)
        } else {
            m.rule.metric_key.clone()
        },
        metric_values,
        ..DescriptorLimit::rule(m.rule, limit)
    })
}

impl Plan {
    /// Adds the check of one descriptor's `limit`.
    fn add_check(
        &mut self,
        limit: DescriptorLimit<'_>,
        descriptor: &DescriptorQuery,
        domain: &str,
        options: &PlanOptions,
    ) {
        let quota = limit.quota || options.global_quota;
        let window_secs = limit.limit.window_secs();
        let key = limit.key.unwrap_or_else(|| {
            counter_key(
                &options.key_prefix,
                domain,
                &descriptor.entries,
                &limit.shared,
                window_secs,
                limit.limit.algorithm,
            )
        });
        self.checks.push(Check {
            key,
            limit: u64::from(limit.limit.requests_per_unit),
            window_secs,
            // A request already denied for its key only looks at its counters.
            hits: if self.denial.is_some() {
                0
            } else {
                descriptor.hits
            },
            shadow: limit.shadow || self.global_shadow,
            gate: false,
            quota,
            // A quota is debited after the fact (look with 0 hits, then report what was used):
            // its hits count even when the request is denied, or it would never run out.
            count_denied: limit.count_denied || quota || options.count_denied_hits,
            algorithm: limit.limit.algorithm,
        });
        self.descriptors.push(DescriptorPlan::Checked {
            check: self.checks.len() - 1,
            limit: AppliedLimit {
                limit: limit.limit,
                name: limit.name,
                metric_values: limit.metric_values,
                metric_key: limit.metric_key,
                tiered: limit.tiered,
                metadata: limit.metadata,
            },
            shadow: limit.shadow,
            quota,
        });
    }

    /// In the global quota mode a descriptor without a limit is a quota that never runs out
    /// (the reference counts it as passed), so the request's quotas can never all be over:
    /// none of their checks may deny.
    fn quotas_never_all_over(&mut self) {
        let unlimited_quota = self
            .descriptors
            .iter()
            .any(|d| matches!(d, DescriptorPlan::NoLimit));
        if self.global_quota && unlimited_quota {
            for check in self.checks.iter_mut().filter(|c| c.quota) {
                check.shadow = true;
            }
        }
    }
}

/// One descriptor's status from its plan and the store's answer.
fn status(
    descriptor: DescriptorPlan,
    checks: &[Check],
    counted: &Counted,
    global_quota: bool,
) -> DescriptorStatus {
    match descriptor {
        DescriptorPlan::NoLimit => DescriptorStatus {
            quota: global_quota,
            ..DescriptorStatus::unchecked(Code::Ok, 0)
        },
        DescriptorPlan::Unlimited => DescriptorStatus::unchecked(Code::Ok, u32::MAX),
        DescriptorPlan::InvalidKey => DescriptorStatus::unchecked(Code::OverLimit, 0),
        DescriptorPlan::Checked {
            check,
            limit,
            shadow,
            quota,
        } => {
            let counter = counted.counters[check];
            DescriptorStatus {
                code: if counter.over && !shadow {
                    Code::OverLimit
                } else {
                    Code::Ok
                },
                limit: Some(limit),
                remaining: if counter.over {
                    0
                } else {
                    u32::try_from(counter.remaining).unwrap_or(u32::MAX)
                },
                reset_ms: Some(counter.reset_ms),
                hits: checks[check].hits,
                shadow,
                quota,
                over: counter.over,
            }
        }
    }
}

/// Reads the store's answer for `plan` into a decision; `counted` holds one counter per check
/// of the plan (the caller checks the store kept to that).
///
/// The request is OVER_LIMIT, as in the reference, when a descriptor that is not a quota is
/// over its limit, or when it has quotas and every one of them is over; global shadow mode
/// turns that into OK, a [`Denial`] into OVER_LIMIT whatever the counters say.
pub fn decide(plan: Plan, counted: &Counted) -> Decision {
    let Plan {
        descriptors,
        checks,
        gate,
        mut denial,
        global_shadow,
        global_quota,
    } = plan;
    let statuses: Vec<DescriptorStatus> = descriptors
        .into_iter()
        .map(|d| status(d, &checks, counted, global_quota))
        .collect();
    let passed = crate::store::passes(
        statuses
            .iter()
            .map(|s| (s.quota, s.code == Code::OverLimit)),
    );
    let mut retry_after_ms = statuses
        .iter()
        .filter(|s| s.code == Code::OverLimit)
        .filter_map(|s| s.reset_ms)
        .max()
        .unwrap_or(0);
    if let Some(gate) = gate
        && counted.counters[gate].over
    {
        denial = Some(Denial::AddressBlocked);
        retry_after_ms = retry_after_ms.max(counted.counters[gate].reset_ms);
    }
    let overall = if denial.is_some() || !(passed || global_shadow) {
        Code::OverLimit
    } else {
        Code::Ok
    };
    Decision {
        overall,
        statuses,
        denial,
        retry_after_secs: (overall == Code::OverLimit)
            .then(|| retry_after_ms.div_ceil(1000).max(1)),
        degraded: None,
    }
}
