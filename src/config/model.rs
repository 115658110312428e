//! The YAML file format, exactly as written by users (envoyproxy/ratelimit's format).
//!
//! These types only describe the syntax; `compile` turns them into the validated [`super::Config`].
//! Unknown fields are refused so that a typo never silently disables a limit.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

/// One domain file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DomainFile {
    pub(crate) domain: Option<String>,
    #[serde(default)]
    pub(crate) descriptors: Vec<DescriptorNode>,
    /// Plans: name → limits.
    #[serde(default)]
    pub(crate) tiers: Entries<TierSpec>,
    /// API keys the config seeds: key → user and tier.
    #[serde(default)]
    pub(crate) api_keys: Entries<ApiKeySpec>,
    /// How invalid API keys are punished.
    pub(crate) invalid_keys: Option<InvalidKeysSpec>,
}

/// One tier (plan).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TierSpec {
    pub(crate) unit: Option<String>,
    pub(crate) base: Option<u32>,
    pub(crate) burst: Option<u32>,
    pub(crate) degraded: Option<u32>,
}

/// One seeded API key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKeySpec {
    pub(crate) user: Option<String>,
    pub(crate) tier: Option<String>,
}

/// The `invalid_keys` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvalidKeysSpec {
    pub(crate) max_attempts: Option<u32>,
    pub(crate) window: Option<String>,
    pub(crate) block_for: Option<String>,
}

/// A YAML mapping read in file order with its duplicates kept, so that a key listed twice can
/// be refused (serde_yaml would silently keep the last one).
#[derive(Debug)]
pub(crate) struct Entries<V>(pub(crate) Vec<(String, V)>);

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
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
    /// Over this limit alone the request is still admitted while another quota of the request
    /// has room (the reference's `quota_mode`).
    #[serde(default)]
    pub(crate) quota_mode: bool,
    /// Floodgate's older place for `replaces` (the reference reads it inside `rate_limit`);
    /// kept as an alias.
    #[serde(default)]
    pub(crate) replaces: Vec<ReplacesSpec>,
    #[serde(default)]
    pub(crate) detailed_metric: bool,
    #[serde(default)]
    pub(crate) value_to_metric: bool,
    #[serde(default)]
    pub(crate) share_threshold: bool,
    /// The entry's value is an API key, limited by its user's tier.
    #[serde(default)]
    pub(crate) tiered: bool,
    /// Free-form data returned in the response's dynamic metadata when the descriptor passes.
    pub(crate) metadata: Option<serde_yaml::Value>,
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
    /// fixed_window (default), sliding_window or token_bucket.
    pub(crate) algorithm: Option<String>,
    /// Bucket size, for token_bucket.
    pub(crate) burst: Option<u32>,
    /// Window length in units (default 1).
    pub(crate) unit_multiplier: Option<u32>,
    /// Names of limits this one removes from the requests it applies to.
    #[serde(default)]
    pub(crate) replaces: Vec<ReplacesSpec>,
    /// Hits are counted even when the request is denied (usage-metered limits).
    #[serde(default)]
    pub(crate) count_denied_hits: bool,
}

/// One entry of a node's `replaces` list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplacesSpec {
    pub(crate) name: Option<String>,
}
