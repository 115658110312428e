//! The one place that turns a [`Decision`] into the wire response.

use crate::config::Unit;
use crate::decision::{Code, Decision, Denial, DescriptorStatus};
use crate::pb::rate_limit_response::{self, DescriptorStatus as PbStatus, rate_limit};
use crate::pb::{HeaderValue, RateLimitResponse};

/// Optional response decorations.
#[derive(Debug, Clone, Default)]
pub struct ResponseOptions {
    /// Add RateLimit-Limit / -Remaining / -Reset headers from the most constrained descriptor,
    /// as the reference's LIMIT_RESPONSE_HEADERS_ENABLED does.
    pub limit_headers: bool,
}

/// Header names of the limit headers.
pub const LIMIT_HEADER: &str = "RateLimit-Limit";
/// Remaining-requests header.
pub const REMAINING_HEADER: &str = "RateLimit-Remaining";
/// Seconds-until-reset header.
pub const RESET_HEADER: &str = "RateLimit-Reset";
/// On every OVER_LIMIT answer: whole seconds until retrying can help.
pub const RETRY_AFTER_HEADER: &str = "retry-after";
/// On answers denied for the API key or address: why.
pub const REASON_HEADER: &str = "x-floodgate-reason";
/// On answers the failure mode gave because the store could not answer.
pub const DEGRADED_HEADER: &str = "x-floodgate-degraded";

/// Builds the response for `decision`.
pub fn build(decision: Decision, options: &ResponseOptions) -> RateLimitResponse {
    let mut headers = if options.limit_headers {
        limit_headers(&decision.statuses)
    } else {
        Vec::new()
    };
    if decision.degraded {
        headers.push(header(DEGRADED_HEADER, "store-unavailable"));
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
    RateLimitResponse {
        overall_code: code(decision.overall) as i32,
        statuses: decision.statuses.into_iter().map(status).collect(),
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
        duration_until_reset: status.reset_ms.map(|ms| pbjson_types::Duration {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }),
        quota: None,
    }
}

/// Limit headers from the limited descriptor with the fewest requests left.
fn limit_headers(statuses: &[DescriptorStatus]) -> Vec<HeaderValue> {
    let Some((applied, status)) = statuses
        .iter()
        .filter_map(|s| s.limit.as_ref().map(|l| (l, s)))
        .min_by_key(|(_, s)| s.remaining)
    else {
        return Vec::new();
    };
    vec![
        header(LIMIT_HEADER, &applied.limit.requests_per_unit.to_string()),
        header(REMAINING_HEADER, &status.remaining.to_string()),
        header(
            RESET_HEADER,
            &status.reset_ms.unwrap_or(0).div_ceil(1000).to_string(),
        ),
    ]
}
