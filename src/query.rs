//! A rate limit question in the service's own terms, free of protobuf types.
//!
//! `rls::request` builds it from the wire (with the input caps) for gRPC and `/json` alike.

use crate::config::Limit;

/// One key/value level of a descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry key, e.g. `remote_address`.
    pub key: String,
    /// The entry value; may be empty.
    pub value: String,
}

/// One descriptor to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorQuery {
    /// The entries, outermost first.
    pub entries: Vec<Entry>,
    /// A limit sent by Envoy that replaces the configured one.
    pub limit_override: Option<Limit>,
    /// Hits to add; 0 only looks.
    pub hits: u64,
}

/// Everything one request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitQuery {
    /// The configuration domain.
    pub domain: String,
    /// The descriptors, in request order.
    pub descriptors: Vec<DescriptorQuery>,
}

/// The entry key whose value identifies the client's address (Envoy's remote_address action).
pub const REMOTE_ADDRESS: &str = "remote_address";

impl RateLimitQuery {
    /// The first `remote_address` value in any descriptor.
    pub fn remote_address(&self) -> Option<&str> {
        self.descriptors
            .iter()
            .flat_map(|d| &d.entries)
            .find(|e| e.key == REMOTE_ADDRESS)
            .map(|e| e.value.as_str())
    }
}
