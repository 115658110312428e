//! Validation and compilation of one domain file into the tree the matcher walks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::error::Problem;
use super::model::{DescriptorNode, DomainFile, InvalidKeysSpec, RateLimitSpec, TierSpec};
use super::rule::{InvalidKeys, Limit, Metadata, Rule, SeedKey, Tier, Unit, mask_secret};
use crate::algorithm::Algorithm;
use crate::telemetry::MetricKey;

/// Index of a node in its domain's arena.
pub type NodeId = usize;

/// One configured domain: a tree of descriptor nodes under an implicit root.
#[derive(Debug)]
pub struct Domain {
    name: String,
    /// Arena of nodes; index 0 is the root, which has children but never a rule.
    nodes: Vec<Node>,
    tiers: Vec<Tier>,
    seed_keys: Vec<SeedKey>,
    invalid_keys: InvalidKeys,
    has_tiered: bool,
}

/// A map keyed by names from the config, looked up on every request: foldhash rather than
/// SipHash, since its entries come from the config, not from requests.
pub(crate) type TableMap<V> = foldhash::HashMap<String, V>;

/// A node of the descriptor tree.
#[derive(Debug, Default)]
pub struct Node {
    /// Children grouped by entry key.
    pub children: TableMap<KeyBranch>,
    /// The rule for requests whose last entry lands here.
    pub rule: Option<Rule>,
    /// For a wildcard node with `share_threshold`: its pattern, which stands for the request's
    /// value in counter keys so that every matching value shares one counter.
    pub shared_value: Option<String>,
}

/// The children of a node that share one entry key, in matching precedence.
#[derive(Debug, Default)]
pub struct KeyBranch {
    /// key + exact value.
    pub exact: TableMap<NodeId>,
    /// key + value with `*`, in configuration order; the first match wins.
    pub wildcards: Vec<(String, NodeId)>,
    /// key without a value: any value.
    pub any: Option<NodeId>,
}

impl Domain {
    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root node (holds the top-level descriptors).
    pub fn root(&self) -> &Node {
        &self.nodes[0]
    }

    /// The node with id `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// The tier called `name`.
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name == name)
    }

    /// Every tier, in file order.
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The API keys the config seeds.
    pub fn seed_keys(&self) -> &[SeedKey] {
        &self.seed_keys
    }

    /// The invalid-key policy (defaults unless the file sets `invalid_keys`).
    pub fn invalid_keys(&self) -> InvalidKeys {
        self.invalid_keys
    }

    /// Whether any descriptor is `tiered`, i.e. requests carry API keys.
    pub fn has_tiered(&self) -> bool {
        self.has_tiered
    }
}

/// Parses one domain file.
pub(crate) fn parse_file(text: &str) -> Result<DomainFile, Problem> {
    match serde_yaml::from_str(text) {
        Ok(file) => Ok(file),
        // What the reference's YAML 1.1 parser reads and serde's YAML 1.2 one refuses is read as
        // the reference reads it; anything else keeps the strict parse's error, which says where.
        Err(strict) => yaml_1_1(text).ok_or_else(|| Problem::Syntax(strict.to_string())),
    }
}

/// Flags, which YAML 1.1 also spells yes/no, on/off, y/n.
const FLAGS: &[&str] = &[
    "shadow_mode",
    "quota_mode",
    "unlimited",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "tiered",
    "count_denied_hits",
];

/// `text` read as the reference reads it: `<<` merge keys applied, a `~` (null) value taken as
/// an absent field (an absent list, a false flag), flags spelt yes/no/on/off.
fn yaml_1_1(text: &str) -> Option<DomainFile> {
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    value.apply_merge().ok()?;
    absent_nulls_and_yaml_1_1_flags(&mut value);
    serde_yaml::from_value(value).ok()
}

fn absent_nulls_and_yaml_1_1_flags(value: &mut serde_yaml::Value) {
    use serde_yaml::Value as Y;
    match value {
        Y::Mapping(map) => {
            map.retain(|_, v| !v.is_null());
            for (key, v) in map.iter_mut() {
                let key = key.as_str().unwrap_or_default();
                if key == "metadata" {
                    continue; // free-form: kept as written
                }
                if let Y::String(text) = &*v
                    && FLAGS.contains(&key)
                {
                    match text.as_str() {
                        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
                            *v = Y::Bool(true)
                        }
                        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
                            *v = Y::Bool(false)
                        }
                        _ => {}
                    }
                }
                absent_nulls_and_yaml_1_1_flags(v);
            }
        }
        Y::Sequence(items) => items.iter_mut().for_each(absent_nulls_and_yaml_1_1_flags),
        _ => {}
    }
}

impl DomainFile {
    /// The file's domain name.
    pub(crate) fn name(&self) -> Result<&str, Problem> {
        self.domain
            .as_deref()
            .filter(|d| !d.is_empty())
            .ok_or(Problem::MissingDomain)
    }

    /// Whether the file sets tiers, API keys or the invalid-key policy.
    pub(crate) fn has_plans(&self) -> bool {
        !self.tiers.0.is_empty() || !self.api_keys.0.is_empty() || self.invalid_keys.is_some()
    }
}

/// A domain being compiled from its file, or from several files when domains are merged (the
/// reference's MERGE_DOMAIN_CONFIG): their descriptors join one tree, checked as one.
pub(crate) struct DomainBuilder {
    name: String,
    tiers: Vec<Tier>,
    seed_keys: Vec<SeedKey>,
    invalid_keys: InvalidKeys,
    builder: Builder,
}

impl DomainBuilder {
    /// Starts the domain of `file` (its first file), `index` being the file's place in the load.
    pub(crate) fn new(file: &DomainFile, index: usize) -> Result<DomainBuilder, Problem> {
        let name = file.name()?.to_owned();
        let tiers = tiers(&file.tiers.0)?;
        let seed_keys = seed_keys(&file.api_keys.0, &tiers)?;
        let invalid_keys = invalid_keys(file.invalid_keys.as_ref())?;
        let mut domain = DomainBuilder {
            name,
            builder: Builder {
                nodes: vec![Node::default()],
                names: HashSet::new(),
                replaces: Vec::new(),
                has_tiers: !tiers.is_empty(),
                has_tiered: false,
                file: index,
            },
            tiers,
            seed_keys,
            invalid_keys,
        };
        domain.merge(file, index)?;
        Ok(domain)
    }

    /// The domain's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Adds the descriptors of `file` (the file at `index`) to the domain's tree.
    pub(crate) fn merge(&mut self, file: &DomainFile, index: usize) -> Result<(), Problem> {
        self.builder.file = index;
        self.builder
            .add_children(0, &file.descriptors, "descriptors", "")
    }

    /// The compiled domain, once every `replaces` is known to name a limit of the domain; an
    /// error comes with the index of the file it is in.
    pub(crate) fn finish(self) -> Result<Domain, (usize, Problem)> {
        let builder = self.builder;
        for (file, at, replaced) in &builder.replaces {
            if !builder.names.contains(replaced) {
                return Err((
                    *file,
                    Problem::UnknownReplaces {
                        at: at.clone(),
                        name: replaced.clone(),
                    },
                ));
            }
        }
        Ok(Domain {
            name: self.name,
            nodes: builder.nodes,
            tiers: self.tiers,
            seed_keys: self.seed_keys,
            invalid_keys: self.invalid_keys,
            has_tiered: builder.has_tiered,
        })
    }
}

fn tiers(specs: &[(String, TierSpec)]) -> Result<Vec<Tier>, Problem> {
    let mut tiers: Vec<Tier> = Vec::with_capacity(specs.len());
    for (name, spec) in specs {
        let at = format!("tiers.{name}");
        if tiers.iter().any(|t| &t.name == name) {
            return Err(Problem::Tier {
                at,
                message: "listed twice".into(),
            });
        }
        let unit_name = spec.unit.as_deref().ok_or_else(|| Problem::Tier {
            at: at.clone(),
            message: "missing 'unit'".into(),
        })?;
        let unit = Unit::parse(unit_name).ok_or_else(|| Problem::UnknownUnit {
            at: at.clone(),
            unit: unit_name.to_owned(),
        })?;
        let count = |field: &str, value: Option<u32>| match value {
            Some(n) if n > 0 => Ok(n),
            Some(_) => Err(Problem::Tier {
                at: at.clone(),
                message: format!("'{field}' must be greater than 0"),
            }),
            None => Err(Problem::Tier {
                at: at.clone(),
                message: format!("missing '{field}'"),
            }),
        };
        let (base, burst, degraded) = (
            count("base", spec.base)?,
            count("burst", spec.burst)?,
            count("degraded", spec.degraded)?,
        );
        if !(degraded <= base && base <= burst) {
            return Err(Problem::Tier {
                at,
                message: format!(
                    "needs degraded <= base <= burst, got degraded {degraded}, base {base}, burst {burst}"
                ),
            });
        }
        tiers.push(Tier {
            name: name.clone(),
            unit,
            base,
            burst,
            degraded,
        });
    }
    Ok(tiers)
}

fn seed_keys(
    specs: &[(String, super::model::ApiKeySpec)],
    tiers: &[Tier],
) -> Result<Vec<SeedKey>, Problem> {
    let mut keys: Vec<SeedKey> = Vec::with_capacity(specs.len());
    for (api_key, spec) in specs {
        // Keys are secrets: messages show only their start.
        let at = format!("api_keys.{}", mask_secret(api_key));
        if api_key.is_empty() {
            return Err(Problem::ApiKey {
                at,
                message: "empty key".into(),
            });
        }
        if keys.iter().any(|k| &k.api_key == api_key) {
            return Err(Problem::ApiKey {
                at,
                message: "listed twice".into(),
            });
        }
        let user = spec
            .user
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| Problem::ApiKey {
                at: at.clone(),
                message: "missing 'user'".into(),
            })?;
        let tier = spec.tier.clone().ok_or_else(|| Problem::ApiKey {
            at: at.clone(),
            message: "missing 'tier'".into(),
        })?;
        if !tiers.iter().any(|t| t.name == tier) {
            return Err(Problem::ApiKey {
                at,
                message: format!("unknown tier '{tier}'"),
            });
        }
        if let Some(other) = keys.iter().find(|k| k.user == user && k.tier != tier) {
            return Err(Problem::ApiKey {
                at,
                message: format!("user '{user}' is already in tier '{}'", other.tier),
            });
        }
        keys.push(SeedKey {
            api_key: api_key.clone(),
            user,
            tier,
        });
    }
    Ok(keys)
}

fn invalid_keys(spec: Option<&InvalidKeysSpec>) -> Result<InvalidKeys, Problem> {
    let defaults = InvalidKeys::default();
    let Some(spec) = spec else {
        return Ok(defaults);
    };
    let seconds = |field: &str, value: &Option<String>, default: u64| -> Result<u64, Problem> {
        let Some(text) = value else {
            return Ok(default);
        };
        let duration: Duration =
            humantime::parse_duration(text).map_err(|e| Problem::InvalidKeys {
                message: format!("'{field}': {e} (write e.g. 60s, 5m, 1h)"),
            })?;
        match duration.as_secs() {
            0 => Err(Problem::InvalidKeys {
                message: format!("'{field}' must be at least 1s"),
            }),
            secs => Ok(secs),
        }
    };
    let max_attempts = spec.max_attempts.unwrap_or(defaults.max_attempts);
    if max_attempts == 0 {
        return Err(Problem::InvalidKeys {
            message: "'max_attempts' must be greater than 0".into(),
        });
    }
    Ok(InvalidKeys {
        max_attempts,
        window_secs: seconds("window", &spec.window, defaults.window_secs)?,
        block_for_secs: seconds("block_for", &spec.block_for, defaults.block_for_secs)?,
    })
}

struct Builder {
    nodes: Vec<Node>,
    /// Every limit name in the domain.
    names: HashSet<String>,
    /// (file, location, name) of every `replaces` entry, checked once all names are known.
    replaces: Vec<(usize, String, String)>,
    /// Whether the domain defines tiers (a `tiered` node needs them).
    has_tiers: bool,
    has_tiered: bool,
    /// The index of the file being added.
    file: usize,
}

impl Builder {
    /// Adds the nodes written at `at` (and their descendants) under `parent`.
    fn add_children(
        &mut self,
        parent: NodeId,
        specs: &[DescriptorNode],
        at: &str,
        metric_prefix: &str,
    ) -> Result<(), Problem> {
        for (i, spec) in specs.iter().enumerate() {
            let at = format!("{at}[{i}]");
            let key = spec
                .key
                .as_deref()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| Problem::MissingKey { at: at.clone() })?;
            let value = spec.value.as_deref().filter(|v| !v.is_empty());
            let metric_key = metric_key(metric_prefix, key, value);
            let wildcard = value.is_some_and(|v| v.contains('*'));
            if spec.share_threshold && !wildcard {
                return Err(Problem::ShareThresholdWithoutWildcard { at });
            }
            let rule = if spec.tiered {
                self.tiered_rule(spec, &at, &metric_key)?
            } else {
                self.rule(spec, &at, &metric_key)?
            };
            let id = self.nodes.len();
            self.nodes.push(Node {
                children: TableMap::default(),
                rule,
                shared_value: if spec.share_threshold {
                    value.map(str::to_owned)
                } else {
                    None
                },
            });
            self.attach(parent, key, value, id, at.clone())?;
            self.add_children(
                id,
                &spec.descriptors,
                &format!("{at}.descriptors"),
                &metric_key,
            )?;
        }
        Ok(())
    }

    /// Hangs node `id` under `parent` by its entry key and value; a second node for the same
    /// key and value is refused.
    fn attach(
        &mut self,
        parent: NodeId,
        key: &str,
        value: Option<&str>,
        id: NodeId,
        at: String,
    ) -> Result<(), Problem> {
        let branch = self.nodes[parent]
            .children
            .entry(key.to_owned())
            .or_default();
        let duplicate = match value {
            None => branch.any.replace(id).is_some(),
            Some(v) if v.contains('*') => {
                let seen = branch.wildcards.iter().any(|(p, _)| p == v);
                branch.wildcards.push((v.to_owned(), id));
                seen
            }
            Some(v) => branch.exact.insert(v.to_owned(), id).is_some(),
        };
        if duplicate {
            return Err(Problem::DuplicateDescriptor {
                at,
                key: key.to_owned(),
                value: value.map(str::to_owned),
            });
        }
        Ok(())
    }

    /// The rule of a `tiered` node: no limit of its own, no value, no children.
    fn tiered_rule(
        &mut self,
        spec: &DescriptorNode,
        at: &str,
        metric_key: &str,
    ) -> Result<Option<Rule>, Problem> {
        let refuse = |message: &str| {
            Err(Problem::Tiered {
                at: at.to_owned(),
                message: message.to_owned(),
            })
        };
        if !self.has_tiers {
            return refuse("'tiered: true' needs 'tiers' in the file");
        }
        if spec.rate_limit.is_some() {
            return refuse("a tiered descriptor takes its limit from the tiers, not 'rate_limit'");
        }
        if spec.value.is_some() || spec.share_threshold {
            return refuse(
                "a tiered descriptor matches any API key: no 'value' or 'share_threshold'",
            );
        }
        if !spec.descriptors.is_empty() || !spec.replaces.is_empty() {
            return refuse("a tiered descriptor cannot have nested 'descriptors' or 'replaces'");
        }
        self.has_tiered = true;
        Ok(Some(Rule {
            limit: None,
            name: None,
            shadow_mode: spec.shadow_mode,
            quota_mode: spec.quota_mode,
            count_denied_hits: false,
            metadata: metadata(spec.metadata.as_ref(), at)?,
            replaces: Vec::new(),
            detailed_metric: spec.detailed_metric,
            value_to_metric: false,
            metric_key: Arc::new(MetricKey::new(metric_key)),
            tiered: true,
        }))
    }

    /// The rule of a plain node (its limit, name and `replaces`); `None` without `rate_limit`.
    fn rule(
        &mut self,
        spec: &DescriptorNode,
        at: &str,
        metric_key: &str,
    ) -> Result<Option<Rule>, Problem> {
        // Checked even where no rule carries it, so that a bad block never loads.
        let metadata = metadata(spec.metadata.as_ref(), at)?;
        let Some(rate_limit) = &spec.rate_limit else {
            if !spec.replaces.is_empty() {
                return Err(Problem::ReplacesWithoutLimit { at: at.to_owned() });
            }
            return Ok(None);
        };
        let limit = limit(rate_limit, at)?;
        if rate_limit.count_denied_hits && limit.is_none() {
            return Err(Problem::CountDeniedUnlimited { at: at.to_owned() });
        }
        // Several limits may share a name: `replaces` then drops them all, as in the reference.
        let name = rate_limit.name.clone().filter(|n| !n.is_empty());
        if let Some(name) = &name {
            self.names.insert(name.clone());
        }
        let replaces = self.replaces(spec, rate_limit, name.as_deref(), at)?;
        Ok(Some(Rule {
            limit,
            name,
            shadow_mode: spec.shadow_mode,
            quota_mode: spec.quota_mode,
            count_denied_hits: rate_limit.count_denied_hits,
            metadata,
            replaces,
            detailed_metric: spec.detailed_metric,
            value_to_metric: spec.value_to_metric,
            metric_key: Arc::new(MetricKey::new(metric_key)),
            tiered: false,
        }))
    }

    /// The names a rule's limit replaces (each recorded to be checked once every name is
    /// known); a rule cannot replace itself.
    fn replaces(
        &mut self,
        spec: &DescriptorNode,
        rate_limit: &RateLimitSpec,
        name: Option<&str>,
        at: &str,
    ) -> Result<Vec<String>, Problem> {
        // The reference's place for `replaces` is inside `rate_limit`; beside it is an alias.
        // (the entries, and where they are written)
        let (entries, replaces_at) =
            match (rate_limit.replaces.is_empty(), spec.replaces.is_empty()) {
                (false, false) => return Err(Problem::ReplacesTwice { at: at.to_owned() }),
                (false, true) => (&rate_limit.replaces, format!("{at}.rate_limit")),
                (true, _) => (&spec.replaces, at.to_owned()),
            };
        let mut replaces = Vec::with_capacity(entries.len());
        for entry in entries {
            let replaced = entry
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| Problem::EmptyReplacesName {
                    at: replaces_at.clone(),
                })?;
            if name == Some(replaced.as_str()) {
                return Err(Problem::ReplacesSelf {
                    at: replaces_at,
                    name: replaced,
                });
            }
            self.replaces
                .push((self.file, replaces_at.clone(), replaced.clone()));
            replaces.push(replaced);
        }
        Ok(replaces)
    }
}

/// A node's name in statsd metrics: the reference's `parent.key_value` (or `key` alone).
fn metric_key(prefix: &str, key: &str, value: Option<&str>) -> String {
    match (prefix, value) {
        ("", None) => key.to_owned(),
        ("", Some(v)) => format!("{key}_{v}"),
        (p, None) => format!("{p}.{key}"),
        (p, Some(v)) => format!("{p}.{key}_{v}"),
    }
}

/// A descriptor's `metadata` as the JSON-like map the response carries: a mapping whose keys
/// are strings (numbers and booleans are written as text, as the reference does).
fn metadata(value: Option<&serde_yaml::Value>, at: &str) -> Result<Option<Arc<Metadata>>, Problem> {
    let bad = |message: String| Problem::Metadata {
        at: at.to_owned(),
        message,
    };
    match value {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(mapping @ serde_yaml::Value::Mapping(_)) => match json_value(mapping) {
            Ok(serde_json::Value::Object(map)) if map.is_empty() => Ok(None),
            Ok(serde_json::Value::Object(map)) => Ok(Some(Arc::new(map))),
            Ok(_) => Err(bad("must be a mapping".into())),
            Err(message) => Err(bad(message)),
        },
        Some(_) => Err(bad("must be a mapping".into())),
    }
}

/// A YAML value as JSON, or why it has no JSON form.
fn json_value(value: &serde_yaml::Value) -> Result<serde_json::Value, String> {
    use serde_yaml::Value as Y;
    Ok(match value {
        Y::Null => serde_json::Value::Null,
        Y::Bool(b) => serde_json::Value::Bool(*b),
        Y::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            serde_json::Number::from_f64(f)
                .map(serde_json::Value::Number)
                .ok_or_else(|| format!("{n} is not a finite number"))?
        }
        Y::String(s) => serde_json::Value::String(s.clone()),
        Y::Sequence(items) => {
            serde_json::Value::Array(items.iter().map(json_value).collect::<Result<_, _>>()?)
        }
        Y::Mapping(map) => {
            let mut object = serde_json::Map::with_capacity(map.len());
            for (key, value) in map {
                let key = match key {
                    Y::String(s) => s.clone(),
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    other => return Err(format!("a key must be text, not {other:?}")),
                };
                object.insert(key, json_value(value)?);
            }
            serde_json::Value::Object(object)
        }
        Y::Tagged(tagged) => return Err(format!("tags are not supported ({})", tagged.tag)),
    })
}

/// The limit of a `rate_limit` block; `None` for `unlimited: true`.
fn limit(spec: &RateLimitSpec, at: &str) -> Result<Option<Limit>, Problem> {
    let at = at.to_owned();
    if spec.unlimited {
        // A count beside `unlimited` is ignored, as in the reference (a limit switched off by
        // adding `unlimited: true`); a unit is refused, as there.
        if spec.unit.is_some()
            || spec.algorithm.is_some()
            || spec.burst.is_some()
            || spec.unit_multiplier.is_some()
        {
            return Err(Problem::UnlimitedWithLimit { at });
        }
        return Ok(None);
    }
    let unit_name = spec
        .unit
        .as_deref()
        .ok_or_else(|| Problem::MissingUnit { at: at.clone() })?;
    let unit = Unit::parse(unit_name).ok_or_else(|| Problem::UnknownUnit {
        at: format!("{at}.rate_limit"),
        unit: unit_name.to_owned(),
    })?;
    let requests_per_unit = spec
        .requests_per_unit
        .ok_or_else(|| Problem::MissingRequestsPerUnit { at: at.clone() })?;
    let bad = |message: String| Problem::RateLimit {
        at: format!("{at}.rate_limit"),
        message,
    };
    let unit_multiplier = match spec.unit_multiplier {
        None => 1,
        Some(0) => return Err(bad("'unit_multiplier' must be at least 1".into())),
        Some(n) => n,
    };
    let algorithm = algorithm(spec, requests_per_unit).map_err(bad)?;
    Ok(Some(Limit {
        requests_per_unit,
        unit,
        unit_multiplier,
        algorithm,
    }))
}

/// A `rate_limit` block's algorithm (fixed window unless written), with its `burst` checked;
/// `Err` is why it is refused.
fn algorithm(spec: &RateLimitSpec, requests_per_unit: u32) -> Result<Algorithm, String> {
    let algorithm = match spec.algorithm.as_deref().unwrap_or("fixed_window") {
        "fixed_window" => Algorithm::FixedWindow,
        "sliding_window" => Algorithm::SlidingWindow,
        "token_bucket" => Algorithm::TokenBucket {
            burst: spec.burst.unwrap_or(requests_per_unit),
        },
        other => {
            return Err(format!(
                "unknown algorithm '{other}' (expected fixed_window, sliding_window or token_bucket)"
            ));
        }
    };
    if spec.burst.is_some() && !matches!(algorithm, Algorithm::TokenBucket { .. }) {
        return Err("'burst' applies only to 'algorithm: token_bucket'".into());
    }
    if spec.burst == Some(0) && requests_per_unit > 0 {
        return Err("'burst' must be at least 1".into());
    }
    Ok(algorithm)
}
