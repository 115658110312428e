//! From a query to a decision, purely: which checks a query needs (`plan`), and what the
//! store's answer means for each descriptor and for the request (`decide`).

use crate::algorithm::is_over;
use crate::config::{Config, Limit};
use crate::matcher::find_rule;
use crate::query::RateLimitQuery;
use crate::store::{Applied, Check, counter_key};

/// Outcome for a descriptor or a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Under the limit (or not limited).
    Ok,
    /// Over the limit.
    OverLimit,
}

/// The limit that was applied to a descriptor, as reported back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedLimit {
    /// Requests per unit, and the unit.
    pub limit: Limit,
    /// The limit's configured name, if any.
    pub name: Option<String>,
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
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// OVER_LIMIT when any non-shadow descriptor is over (and global shadow mode is off).
    pub overall: Code,
    /// One status per descriptor, in request order.
    pub statuses: Vec<DescriptorStatus>,
}

/// The checks a query needs, and how to read their results back per descriptor.
#[derive(Debug)]
pub struct Plan {
    slots: Vec<Slot>,
    /// The counters to check, for the store.
    pub checks: Vec<Check>,
    global_shadow: bool,
}

#[derive(Debug)]
enum Slot {
    NoLimit,
    Unlimited,
    Checked {
        check: usize,
        applied: AppliedLimit,
        shadow: bool,
    },
}

/// Settings that shape every plan.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Prefix of every counter key.
    pub key_prefix: String,
    /// Global shadow mode: count everything, deny nothing.
    pub global_shadow: bool,
}

/// Matches every descriptor of `query` against `config` and lists the checks needed.
pub fn plan(config: &Config, query: &RateLimitQuery, options: &PlanOptions) -> Plan {
    let Some(domain) = config.domain(&query.domain) else {
        // An unknown domain limits nothing, as in the reference.
        return Plan {
            slots: query.descriptors.iter().map(|_| Slot::NoLimit).collect(),
            checks: Vec::new(),
            global_shadow: options.global_shadow,
        };
    };
    let matches: Vec<_> = query
        .descriptors
        .iter()
        .map(|d| match d.limit_override {
            Some(_) => None,
            None => find_rule(domain, &d.entries),
        })
        .collect();
    // A matched rule's `replaces` removes the named limits from this request.
    let is_replaced = |name: Option<&str>| {
        name.is_some_and(|name| {
            matches
                .iter()
                .flatten()
                .any(|m| m.rule.replaces.iter().any(|r| r == name))
        })
    };

    let mut slots = Vec::with_capacity(query.descriptors.len());
    let mut checks = Vec::with_capacity(query.descriptors.len());
    for (descriptor, matched) in query.descriptors.iter().zip(&matches) {
        let (limit, name, shadow, shared): (Limit, Option<&str>, bool, &[(usize, &str)]) =
            match (descriptor.limit_override, matched) {
                (Some(limit), _) => (limit, None, false, &[]),
                (None, None) => {
                    slots.push(Slot::NoLimit);
                    continue;
                }
                (None, Some(m)) if is_replaced(m.rule.name.as_deref()) => {
                    slots.push(Slot::NoLimit);
                    continue;
                }
                (None, Some(m)) => match m.rule.limit {
                    None => {
                        slots.push(Slot::Unlimited);
                        continue;
                    }
                    Some(limit) => (
                        limit,
                        m.rule.name.as_deref(),
                        m.rule.shadow_mode,
                        &m.shared_values,
                    ),
                },
            };
        let window_secs = limit.unit.seconds();
        slots.push(Slot::Checked {
            check: checks.len(),
            applied: AppliedLimit {
                limit,
                name: name.map(str::to_owned),
            },
            shadow,
        });
        checks.push(Check {
            key: counter_key(
                &options.key_prefix,
                &query.domain,
                &descriptor.entries,
                shared,
                window_secs,
            ),
            limit: u64::from(limit.requests_per_unit),
            window_secs,
            hits: descriptor.hits,
            shadow: shadow || options.global_shadow,
        });
    }
    Plan {
        slots,
        checks,
        global_shadow: options.global_shadow,
    }
}

/// Reads the store's answer for `plan` into a decision; `applied` holds one counter per check
/// of the plan (the caller checks the store kept to that).
pub fn decide(plan: Plan, applied: &Applied) -> Decision {
    let mut overall = Code::Ok;
    let statuses = plan
        .slots
        .into_iter()
        .map(|slot| match slot {
            Slot::NoLimit => DescriptorStatus {
                code: Code::Ok,
                limit: None,
                remaining: 0,
                reset_ms: None,
            },
            Slot::Unlimited => DescriptorStatus {
                code: Code::Ok,
                limit: None,
                remaining: u32::MAX,
                reset_ms: None,
            },
            Slot::Checked {
                check,
                applied: applied_limit,
                shadow,
            } => {
                let counter = applied.counters[check];
                let hits = plan.checks[check].hits;
                let limit = u64::from(applied_limit.limit.requests_per_unit);
                let over = is_over(counter.count, limit);
                // What the counter holds now: a denied request's hits were not recorded.
                let recorded = if applied.admitted {
                    counter.count
                } else {
                    counter.count.saturating_sub(hits)
                };
                let code = if over && !shadow {
                    Code::OverLimit
                } else {
                    Code::Ok
                };
                if code == Code::OverLimit && !plan.global_shadow {
                    overall = Code::OverLimit;
                }
                DescriptorStatus {
                    code,
                    limit: Some(applied_limit),
                    remaining: if over {
                        0
                    } else {
                        u32::try_from(limit.saturating_sub(recorded)).unwrap_or(u32::MAX)
                    },
                    reset_ms: Some(counter.reset_ms),
                }
            }
        })
        .collect();
    Decision { overall, statuses }
}
