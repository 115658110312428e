//! The YAML file format, exactly as written by users (envoyproxy/ratelimit's format).
//!
//! These types only describe the syntax; `compile` turns them into the validated [`super::Config`].
//! Unknown fields are refused so that a typo never silently disables a limit.

use serde::Deserialize;

/// One domain file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DomainFile {
    pub(crate) domain: Option<String>,
    #[serde(default)]
    pub(crate) descriptors: Vec<DescriptorNode>,
}

/// One node of the descriptor tree.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DescriptorNode {
    pub(crate) key: Option<String>,
    pub(crate) value: Option<String>,
    pub(crate) rate_limit: Option<RateLimitSpec>,
    #[serde(default)]
    pub(crate) descriptors: Vec<DescriptorNode>,
    #[serde(default)]
    pub(crate) shadow_mode: bool,
    #[serde(default)]
    pub(crate) replaces: Vec<ReplacesSpec>,
    #[serde(default)]
    pub(crate) detailed_metric: bool,
    #[serde(default)]
    pub(crate) value_to_metric: bool,
    #[serde(default)]
    pub(crate) share_threshold: bool,
}

/// The `rate_limit` block of a node.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitSpec {
    pub(crate) unit: Option<String>,
    pub(crate) requests_per_unit: Option<u32>,
    #[serde(default)]
    pub(crate) unlimited: bool,
    pub(crate) name: Option<String>,
}

/// One entry of a node's `replaces` list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplacesSpec {
    pub(crate) name: Option<String>,
}
