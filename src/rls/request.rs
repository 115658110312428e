//! The wire request made into a [`RateLimitQuery`], refusing what is malformed or too large.

use thiserror::Error;

use crate::config::{Limit, Unit};
use crate::pb::{RateLimitDescriptor, RateLimitRequest, RateLimitUnit};
use crate::query::{DescriptorQuery, Entry, RateLimitQuery};

/// Bounds on one request, so that no client can make the service do unbounded work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Descriptors per request.
    pub max_descriptors: usize,
    /// Entries per descriptor.
    pub max_entries: usize,
    /// Bytes in the domain, in an entry key or in an entry value.
    pub max_value_len: usize,
}

impl Default for InputLimits {
    /// Generous for Envoy (route configs rarely send more than a handful of descriptors of a few
    /// entries), small enough that one request stays cheap.
    fn default() -> InputLimits {
        InputLimits {
            max_descriptors: 64,
            max_entries: 32,
            max_value_len: 1024,
        }
    }
}

/// Hits one descriptor may add; keeps counters far from overflow in Redis' Lua numbers.
pub const MAX_HITS: u64 = u32::MAX as u64;

/// Why a request was refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RequestError {
    /// No domain.
    #[error("domain must not be empty")]
    EmptyDomain,
    /// No descriptors.
    #[error("descriptors must not be empty")]
    NoDescriptors,
    /// Too many descriptors.
    #[error("too many descriptors: {count} (at most {max})")]
    TooManyDescriptors {
        /// Sent.
        count: usize,
        /// Allowed.
        max: usize,
    },
    /// A descriptor without entries.
    #[error("descriptors[{index}]: entries must not be empty")]
    NoEntries {
        /// Descriptor index.
        index: usize,
    },
    /// Too many entries in a descriptor.
    #[error("descriptors[{index}]: too many entries: {count} (at most {max})")]
    TooManyEntries {
        /// Descriptor index.
        index: usize,
        /// Sent.
        count: usize,
        /// Allowed.
        max: usize,
    },
    /// An entry with an empty key.
    #[error("descriptors[{index}].entries[{entry}]: key must not be empty")]
    EmptyKey {
        /// Descriptor index.
        index: usize,
        /// Entry index.
        entry: usize,
    },
    /// A domain, key or value longer than allowed.
    #[error("{field}: too long: {len} bytes (at most {max})")]
    TooLong {
        /// Which field.
        field: String,
        /// Sent.
        len: usize,
        /// Allowed.
        max: usize,
    },
    /// A limit override without a known unit.
    #[error(
        "descriptors[{index}].limit: unit must be SECOND, MINUTE, HOUR, DAY, WEEK, MONTH or YEAR"
    )]
    BadOverrideUnit {
        /// Descriptor index.
        index: usize,
    },
    /// A hits_addend beyond [`MAX_HITS`].
    #[error("descriptors[{index}].hits_addend: {hits} is more than {MAX_HITS}")]
    TooManyHits {
        /// Descriptor index.
        index: usize,
        /// Sent.
        hits: u64,
    },
}

/// Checks `request` against `limits` and moves its strings into a query (no copies).
pub fn to_query(
    request: RateLimitRequest,
    limits: &InputLimits,
) -> Result<RateLimitQuery, RequestError> {
    if request.domain.is_empty() {
        return Err(RequestError::EmptyDomain);
    }
    check_len("domain", &request.domain, limits)?;
    if request.descriptors.is_empty() {
        return Err(RequestError::NoDescriptors);
    }
    if request.descriptors.len() > limits.max_descriptors {
        return Err(RequestError::TooManyDescriptors {
            count: request.descriptors.len(),
            max: limits.max_descriptors,
        });
    }
    // proto3 cannot tell an unset hits_addend from 0; both mean one hit.
    let request_hits = u64::from(request.hits_addend.max(1));
    let mut descriptors = Vec::with_capacity(request.descriptors.len());
    for (index, descriptor) in request.descriptors.into_iter().enumerate() {
        descriptors.push(to_descriptor(index, descriptor, request_hits, limits)?);
    }
    Ok(RateLimitQuery {
        domain: request.domain,
        descriptors,
    })
}

/// Descriptor `index` checked and moved into its query; `request_hits` is the request's
/// hits_addend, for a descriptor without its own.
fn to_descriptor(
    index: usize,
    descriptor: RateLimitDescriptor,
    request_hits: u64,
    limits: &InputLimits,
) -> Result<DescriptorQuery, RequestError> {
    if descriptor.entries.is_empty() {
        return Err(RequestError::NoEntries { index });
    }
    if descriptor.entries.len() > limits.max_entries {
        return Err(RequestError::TooManyEntries {
            index,
            count: descriptor.entries.len(),
            max: limits.max_entries,
        });
    }
    let mut entries = Vec::with_capacity(descriptor.entries.len());
    for (entry, e) in descriptor.entries.into_iter().enumerate() {
        if e.key.is_empty() {
            return Err(RequestError::EmptyKey { index, entry });
        }
        check_len_at(index, entry, "key", &e.key, limits)?;
        check_len_at(index, entry, "value", &e.value, limits)?;
        entries.push(Entry {
            key: e.key,
            value: e.value,
        });
    }
    let limit_override = descriptor
        .limit
        .map(|l| {
            let unit = RateLimitUnit::try_from(l.unit)
                .ok()
                .and_then(unit_of)
                .ok_or(RequestError::BadOverrideUnit { index })?;
            Ok(Limit::per(l.requests_per_unit, unit))
        })
        .transpose()?;
    // A descriptor's own hits_addend (a wrapper, so 0 is meaningful) wins: 0 only looks.
    let hits = descriptor.hits_addend.map_or(request_hits, |h| h.value);
    if hits > MAX_HITS {
        return Err(RequestError::TooManyHits { index, hits });
    }
    Ok(DescriptorQuery {
        entries,
        limit_override,
        hits,
    })
}

fn unit_of(unit: RateLimitUnit) -> Option<Unit> {
    Some(match unit {
        RateLimitUnit::Unknown => return None,
        RateLimitUnit::Second => Unit::Second,
        RateLimitUnit::Minute => Unit::Minute,
        RateLimitUnit::Hour => Unit::Hour,
        RateLimitUnit::Day => Unit::Day,
        RateLimitUnit::Week => Unit::Week,
        RateLimitUnit::Month => Unit::Month,
        RateLimitUnit::Year => Unit::Year,
    })
}

fn check_len(field: &str, value: &str, limits: &InputLimits) -> Result<(), RequestError> {
    if value.len() > limits.max_value_len {
        return Err(RequestError::TooLong {
            field: field.to_owned(),
            len: value.len(),
            max: limits.max_value_len,
        });
    }
    Ok(())
}

fn check_len_at(
    index: usize,
    entry: usize,
    what: &str,
    value: &str,
    limits: &InputLimits,
) -> Result<(), RequestError> {
    if value.len() > limits.max_value_len {
        return check_len(
            &format!("descriptors[{index}].entries[{entry}].{what}"),
            value,
            limits,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::rate_limit_descriptor;

    fn descriptor(pairs: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: pairs
                .iter()
                .map(|(k, v)| rate_limit_descriptor::Entry {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "d".into(),
            descriptors,
            hits_addend: 0,
        }
    }

    #[test]
    fn refusals() {
        let limits = InputLimits {
            max_descriptors: 2,
            max_entries: 2,
            max_value_len: 4,
        };
        let cases: Vec<(RateLimitRequest, RequestError)> = vec![
            (
                RateLimitRequest {
                    domain: String::new(),
                    ..request(vec![descriptor(&[("a", "b")])])
                },
                RequestError::EmptyDomain,
            ),
            (request(vec![]), RequestError::NoDescriptors),
            (
                request(vec![descriptor(&[("a", "b")]); 3]),
                RequestError::TooManyDescriptors { count: 3, max: 2 },
            ),
            (
                request(vec![descriptor(&[])]),
                RequestError::NoEntries { index: 0 },
            ),
            (
                request(vec![
                    descriptor(&[("a", "b")]),
                    descriptor(&[("a", "b"); 3]),
                ]),
                RequestError::TooManyEntries {
                    index: 1,
                    count: 3,
                    max: 2,
                },
            ),
            (
                request(vec![descriptor(&[("a", "b"), ("", "b")])]),
                RequestError::EmptyKey { index: 0, entry: 1 },
            ),
            (
                request(vec![descriptor(&[("a", "toolong")])]),
                RequestError::TooLong {
                    field: "descriptors[0].entries[0].value".into(),
                    len: 7,
                    max: 4,
                },
            ),
            (
                RateLimitRequest {
                    domain: "domain".into(),
                    ..request(vec![descriptor(&[("a", "b")])])
                },
                RequestError::TooLong {
                    field: "domain".into(),
                    len: 6,
                    max: 4,
                },
            ),
            (
                request(vec![RateLimitDescriptor {
                    limit: Some(rate_limit_descriptor::RateLimitOverride {
                        requests_per_unit: 1,
                        unit: 0,
                    }),
                    ..descriptor(&[("a", "b")])
                }]),
                RequestError::BadOverrideUnit { index: 0 },
            ),
            (
                request(vec![RateLimitDescriptor {
                    hits_addend: Some(pbjson_types::UInt64Value {
                        value: MAX_HITS + 1,
                    }),
                    ..descriptor(&[("a", "b")])
                }]),
                RequestError::TooManyHits {
                    index: 0,
                    hits: MAX_HITS + 1,
                },
            ),
        ];
        for (req, want) in cases {
            assert_eq!(to_query(req, &limits), Err(want.clone()), "{want}");
        }
    }

    #[test]
    fn hits() {
        let limits = InputLimits::default();
        let mut req = request(vec![
            descriptor(&[("a", "b")]),
            RateLimitDescriptor {
                hits_addend: Some(pbjson_types::UInt64Value { value: 0 }),
                ..descriptor(&[("a", "b")])
            },
            RateLimitDescriptor {
                hits_addend: Some(pbjson_types::UInt64Value { value: 7 }),
                ..descriptor(&[("a", "b")])
            },
        ]);
        let hits = |q: RateLimitQuery| q.descriptors.iter().map(|d| d.hits).collect::<Vec<_>>();
        assert_eq!(hits(to_query(req.clone(), &limits).unwrap()), vec![1, 0, 7]);
        req.hits_addend = 3;
        assert_eq!(hits(to_query(req, &limits).unwrap()), vec![3, 0, 7]);
    }
}
