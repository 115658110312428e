//! The one place that turns a [`Decision`] into the wire response.

use std::collections::HashMap;

use pbjson_types::value::Kind;
use pbjson_types::{ListValue, Struct, Value};

use crate::config::{Metadata, Unit};
use crate::decision::{AppliedLimit, Code, Decision, Denial, DescriptorStatus};
use crate::pb::rate_limit_response::{self, DescriptorStatus as PbStatus, rate_limit};
use crate::pb::{HeaderValue, RateLimitRequest, RateLimitResponse};

/// Optional response decorations.
#[derive(Debug, Clone, Default)]
pub struct ResponseOptions {
    /// Add RateLimit-Limit / -Remaining / -Reset headers from the most constrained descriptor,
    /// as the reference's LIMIT_RESPONSE_HEADERS_ENABLED does.
    pub limit_headers: bool,
    /// Their names (the reference's LIMIT_LIMIT_HEADER, LIMIT_REMAINING_HEADER,
    /// LIMIT_RESET_HEADER).
    pub header_names: LimitHeaderNames,
    /// Fill the response's `dynamic_metadata` with the request and the passed descriptors'
    /// `metadata`, as the reference's RESPONSE_DYNAMIC_METADATA does.
    pub dynamic_metadata: bool,
}

/// The names of the limit headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitHeaderNames {
    /// The limit's requests per unit.
    pub limit: String,
    /// Requests left.
    pub remaining: String,
    /// Seconds until the window resets.
    pub reset: String,
}

impl Default for LimitHeaderNames {
    fn default() -> LimitHeaderNames {
        LimitHeaderNames {
            limit: LIMIT_HEADER.to_owned(),
            remaining: REMAINING_HEADER.to_owned(),
            reset: RESET_HEADER.to_owned(),
        }
    }
}

/// Default name of the limit header.
pub const LIMIT_HEADER: &str = "RateLimit-Limit";
/// Remaining-requests header.
pub const REMAINING_HEADER: &str = "RateLimit-Remaining";
/// Seconds-until-reset header.
pub const RESET_HEADER: &str = "RateLimit-Reset";
/// On every OVER_LIMIT answer: whole seconds until retrying can help.
pub const RETRY_AFTER_HEADER: &str = "retry-after";
/// On answers denied for the API key or address: why.
pub const REASON_HEADER: &str = "x-floodgate-reason";
/// On answers given without the store, because it could not answer: who decided
/// ([`crate::decision::Degraded::marker`]).
pub const DEGRADED_HEADER: &str = "x-floodgate-degraded";

/// Builds the response for `decision`; `echo` is the request as the dynamic metadata repeats
/// it ([`request_metadata`]), when that is on.
pub fn build(
    decision: Decision,
    options: &ResponseOptions,
    echo: Option<Struct>,
) -> RateLimitResponse {
    let mut headers = if options.limit_headers {
        limit_headers(&decision.statuses, &options.header_names)
    } else {
        Vec::new()
    };
    if let Some(degraded) = decision.degraded {
        headers.push(header(DEGRADED_HEADER, degraded.marker()));
    }
    if let Some(seconds) = decision.retry_after_secs {
        headers.push(header(RETRY_AFTER_HEADER, &seconds.to_string()));
    }
    let raw_body = match decision.denial {
        None => Vec::new(),
        Some(denial) => {
            let (reason, body) = match denial {
                Denial::InvalidApiKey => ("invalid-api-key", "invalid API key\n"),
                Denial::AddressBlocked => (
                    "address-blocked",
                    "too many invalid API keys from this address: temporarily blocked\n",
                ),
            };
            headers.push(header(REASON_HEADER, reason));
            body.as_bytes().to_vec()
        }
    };
    let dynamic_metadata = echo.map(|mut echo| {
        let passed = passed_metadata(&decision.statuses);
        if !passed.fields.is_empty() {
            echo.fields.insert("metadata".into(), struct_value(passed));
        }
        echo
    });
    RateLimitResponse {
        overall_code: code(decision.overall) as i32,
        statuses: decision.statuses.into_iter().map(status).collect(),
        dynamic_metadata,
        response_headers_to_add: headers,
        raw_body,
        ..Default::default()
    }
}

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.to_owned(),
        value: value.to_owned(),
        raw_value: Vec::new(),
    }
}

fn code(code: Code) -> rate_limit_response::Code {
    match code {
        Code::Ok => rate_limit_response::Code::Ok,
        Code::OverLimit => rate_limit_response::Code::OverLimit,
    }
}

fn unit(unit: Unit) -> rate_limit::Unit {
    match unit {
        Unit::Second => rate_limit::Unit::Second,
        Unit::Minute => rate_limit::Unit::Minute,
        Unit::Hour => rate_limit::Unit::Hour,
        Unit::Day => rate_limit::Unit::Day,
        Unit::Week => rate_limit::Unit::Week,
        Unit::Month => rate_limit::Unit::Month,
        Unit::Year => rate_limit::Unit::Year,
    }
}

fn status(status: DescriptorStatus) -> PbStatus {
    PbStatus {
        code: code(status.code) as i32,
        current_limit: status.limit.map(|applied| rate_limit_response::RateLimit {
            name: applied.name.unwrap_or_default(),
            requests_per_unit: applied.limit.requests_per_unit,
            unit: unit(applied.limit.unit) as i32,
        }),
        limit_remaining: status.remaining,
        // Whole seconds, rounded up as the reference's (unit - now % unit) is: never 0 while
        // the window is open. Envoy truncates fractions, so these read the same in its headers.
        duration_until_reset: status.reset_ms.map(|ms| pbjson_types::Duration {
            seconds: ms.div_ceil(1000) as i64,
            nanos: 0,
        }),
        quota: None,
    }
}

/// Limit headers from the descriptor the reference picks: the limited one with the fewest
/// requests left (the first of equals), unless one that is not a quota is over its limit (then
/// the last such one).
fn limit_headers(statuses: &[DescriptorStatus], names: &LimitHeaderNames) -> Vec<HeaderValue> {
    let mut chosen: Option<(&AppliedLimit, &DescriptorStatus)> = None;
    let mut fewest = u32::MAX;
    for status in statuses {
        let Some(applied) = &status.limit else {
            continue;
        };
        if status.code == Code::OverLimit && !status.quota {
            (chosen, fewest) = (Some((applied, status)), 0);
        } else if status.remaining < fewest {
            (chosen, fewest) = (Some((applied, status)), status.remaining);
        }
    }
    let Some((applied, status)) = chosen else {
        return Vec::new();
    };
    vec![
        header(&names.limit, &applied.limit.requests_per_unit.to_string()),
        header(&names.remaining, &status.remaining.to_string()),
        header(
            &names.reset,
            &status.reset_ms.unwrap_or(0).div_ceil(1000).to_string(),
        ),
    ]
}

/// The request as the reference's dynamic metadata repeats it: `domain`, `descriptors` (each
/// with its `entries` as "key=value", its `limit` and `hitsAddend` when sent) and the request's
/// `hitsAddend` when not 0. Made before the request is consumed, only when asked for.
pub fn request_metadata(request: &RateLimitRequest) -> Struct {
    let descriptors = request
        .descriptors
        .iter()
        .map(|descriptor| {
            let mut fields = HashMap::new();
            let entries = descriptor
                .entries
                .iter()
                .map(|e| string_value(format!("{}={}", e.key, e.value)))
                .collect();
            fields.insert("entries".to_owned(), list_value(entries));
            if let Some(limit) = &descriptor.limit {
                let unit = crate::pb::RateLimitUnit::try_from(limit.unit)
                    .map_or("UNKNOWN", |u| u.as_str_name());
                fields.insert(
                    "limit".to_owned(),
                    string_value(format!(
                        "requests_per_unit:{} unit:{unit}",
                        limit.requests_per_unit
                    )),
                );
            }
            if let Some(hits) = &descriptor.hits_addend {
                fields.insert("hitsAddend".to_owned(), number_value(hits.value as f64));
            }
            struct_value(Struct { fields })
        })
        .collect();
    let mut fields = HashMap::new();
    fields.insert("domain".to_owned(), string_value(request.domain.clone()));
    fields.insert("descriptors".to_owned(), list_value(descriptors));
    if request.hits_addend != 0 {
        fields.insert(
            "hitsAddend".to_owned(),
            number_value(f64::from(request.hits_addend)),
        );
    }
    Struct { fields }
}

/// The `metadata` of the descriptors that passed (not over their limit; shadow rules pass),
/// merged in request order: the first value of a key wins, maps are merged.
fn passed_metadata(statuses: &[DescriptorStatus]) -> Struct {
    let mut merged = Struct::default();
    for status in statuses.iter().filter(|s| s.code == Code::Ok) {
        if let Some(metadata) = status.limit.as_ref().and_then(|l| l.metadata.as_deref()) {
            merge(&mut merged, metadata);
        }
    }
    merged
}

fn merge(into: &mut Struct, from: &Metadata) {
    for (key, value) in from {
        match into.fields.get_mut(key).and_then(|v| v.kind.as_mut()) {
            Some(Kind::StructValue(inner)) => {
                if let serde_json::Value::Object(from) = value {
                    merge(inner, from);
                }
            }
            Some(_) => {}
            None => {
                into.fields.insert(key.clone(), json_value(value));
            }
        }
    }
}

fn json_value(value: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match value {
        J::Null => Value {
            kind: Some(Kind::NullValue(0)),
        },
        J::Bool(b) => Value {
            kind: Some(Kind::BoolValue(*b)),
        },
        J::Number(n) => number_value(n.as_f64().unwrap_or_default()),
        J::String(s) => string_value(s.clone()),
        J::Array(items) => list_value(items.iter().map(json_value).collect()),
        J::Object(map) => struct_value(Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_value(v)))
                .collect(),
        }),
    }
}

fn string_value(s: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(s)),
    }
}

fn number_value(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn list_value(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

fn struct_value(s: Struct) -> Value {
    Value {
        kind: Some(Kind::StructValue(s)),
    }
}
