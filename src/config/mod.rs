//! Rate limit configuration: envoyproxy/ratelimit's YAML domains, loaded from a file or a
//! directory, validated and compiled into an immutable [`Config`] that the matcher walks.
//!
//! Loading reads files; everything after that (validation, compilation) is pure.

mod compile;
mod error;
mod glob;
mod model;
mod rule;

use std::fs;
use std::path::{Path, PathBuf};

pub use compile::{Domain, KeyBranch, Node, NodeId};
pub use error::{ConfigError, Problem};
pub use glob::glob_match;
pub use rule::{InvalidKeys, Limit, Metadata, Rule, SeedKey, Tier, TierMode, Unit, mask_secret};

/// Every loaded domain, immutable once built; a reload builds a new one and swaps it in whole.
#[derive(Debug, Default)]
pub struct Config {
    domains: compile::TableMap<Domain>,
    version: String,
}

impl Config {
    /// Loads `path`: a YAML file holding one domain, or a directory whose `*.yaml` / `*.yml`
    /// files each hold one domain (hidden entries, such as a Kubernetes ConfigMap's `..data`,
    /// are skipped).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, &LoadOptions::default())
    }

    /// Builds a config from (file name, YAML text) pairs; the names only label errors.
    pub fn from_sources<'a>(
        sources: impl IntoIterator<Item = (&'a Path, &'a str)>,
    ) -> Result<Config, ConfigError> {
        Config::from_sources_with(sources, &LoadOptions::default())
    }

    /// Like [`Config::load`], with `options`.
    pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Config, ConfigError> {
        let sources = read_sources(path, options)?;
        Config::from_sources_with(
            sources.iter().map(|(p, t)| (p.as_path(), t.as_str())),
            options,
        )
    }

    /// Like [`Config::from_sources`], with `options`.
    pub fn from_sources_with<'a>(
        sources: impl IntoIterator<Item = (&'a Path, &'a str)>,
        options: &LoadOptions,
    ) -> Result<Config, ConfigError> {
        let mut paths: Vec<&Path> = Vec::new();
        // Domains in the order their first file came, each with that file's index.
        let mut building: Vec<(usize, compile::DomainBuilder)> = Vec::new();
        let mut digest = Vec::new();
        for (index, (path, text)) in sources.into_iter().enumerate() {
            paths.push(path);
            digest.extend_from_slice(path.as_os_str().as_encoded_bytes());
            digest.push(0);
            digest.extend_from_slice(text.as_bytes());
            digest.push(0);
            let invalid = |problem| ConfigError::Invalid {
                path: path.to_owned(),
                problem,
            };
            let file = compile::parse_file(text).map_err(invalid)?;
            let name = file.name().map_err(invalid)?;
            match building.iter_mut().find(|(_, d)| d.name() == name) {
                None => building.push((
                    index,
                    compile::DomainBuilder::new(&file, index).map_err(invalid)?,
                )),
                Some((first, _)) if !options.merge_domains => {
                    return Err(ConfigError::DuplicateDomain {
                        path: path.to_owned(),
                        domain: name.to_owned(),
                        first: paths[*first].to_owned(),
                    });
                }
                Some((first, _)) if file.has_plans() => {
                    return Err(invalid(Problem::MergedDomainPlans {
                        first: paths[*first].to_owned(),
                    }));
                }
                Some((_, domain)) => domain.merge(&file, index).map_err(invalid)?,
            }
        }
        let mut domains = compile::TableMap::<Domain>::default();
        for (_, builder) in building {
            let domain = builder
                .finish()
                .map_err(|(index, problem)| ConfigError::Invalid {
                    path: paths[index].to_owned(),
                    problem,
                })?;
            domains.insert(domain.name().to_owned(), domain);
        }
        let version = format!("{:016x}", crate::hash::fnv1a(&digest));
        Ok(Config { domains, version })
    }

    /// A hash of the files this config was built from: equal files, equal version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Parses one YAML text, for tests and tools.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Config::from_sources([(Path::new("<inline>"), text)])
    }

    /// The domain called `name`, if configured.
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    /// The loaded limits as text, one line per rule in domain and tree order, as the reference's
    /// debug endpoint `/rlconfig` lists them: `<domain>.<key path>: unit=MINUTE
    /// requests_per_unit=20, shadow_mode: false, quota_mode: false`.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for name in self.domain_names() {
            if let Some(domain) = self.domain(name) {
                dump_node(domain, domain.root(), &mut out);
            }
        }
        out
    }

    /// Whether any domain is configured.
    pub fn has_domains(&self) -> bool {
        !self.domains.is_empty()
    }

    /// Names of the configured domains, sorted.
    pub fn domain_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.domains.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// Appends the rules under `node` (children in key order: exact values sorted, wildcards in
/// file order, then the key alone) to `out`.
fn dump_node(domain: &Domain, node: &Node, out: &mut String) {
    use std::fmt::Write as _;
    let mut keys: Vec<&String> = node.children.keys().collect();
    keys.sort();
    for key in keys {
        let branch = &node.children[key];
        let mut exact: Vec<(&String, &NodeId)> = branch.exact.iter().collect();
        exact.sort();
        let ids = exact
            .into_iter()
            .map(|(_, id)| *id)
            .chain(branch.wildcards.iter().map(|(_, id)| *id))
            .chain(branch.any);
        for id in ids {
            let child = domain.node(id);
            if let Some(rule) = &child.rule {
                let limit = match rule.limit {
                    Some(l) => format!(
                        "unit={} requests_per_unit={}",
                        l.unit.name().to_ascii_uppercase(),
                        l.requests_per_unit
                    ),
                    None if rule.tiered => "tiered".to_owned(),
                    None => "unlimited".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "{}.{}: {limit}, shadow_mode: {}, quota_mode: {}",
                    domain.name(),
                    rule.metric_key.label(),
                    rule.shadow_mode,
                    rule.quota_mode
                );
            }
            dump_node(domain, child, out);
        }
    }
}

/// How files become a config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// A domain may span several files, whose descriptors are merged (the reference's
    /// MERGE_DOMAIN_CONFIG); otherwise a domain defined twice is refused.
    pub merge_domains: bool,
    /// A directory stands for every regular file in it and its subdirectories, whatever its
    /// name (the reference's runtime directory); otherwise for its top-level `*.yaml` and
    /// `*.yml` files.
    pub all_files: bool,
    /// Hidden entries (names starting with '.') are read too, as the reference does unless
    /// RUNTIME_IGNOREDOTFILES; otherwise they are skipped (a ConfigMap's `..data` twins).
    pub hidden_files: bool,
}

/// Bounds on a config directory, so that a symlink loop or a wrong mount cannot make a load
/// endless: far beyond any real layout.
const MAX_DEPTH: usize = 16;
/// See [`MAX_DEPTH`].
const MAX_FILES: usize = 10_000;

/// The (path, text) of every file `path` stands for.
fn read_sources(path: &Path, options: &LoadOptions) -> Result<Vec<(PathBuf, String)>, ConfigError> {
    let files = source_files(path, options)?;
    let mut sources = Vec::with_capacity(files.len());
    for file in files {
        let text = fs::read_to_string(&file).map_err(|source| ConfigError::Read {
            path: file.clone(),
            source,
        })?;
        sources.push((file, text));
    }
    Ok(sources)
}

/// The files a config at `path` is read from: the file itself, or the domain files of the
/// directory as `options` picks them, sorted by path so that errors are reproducible.
pub fn source_files(path: &Path, options: &LoadOptions) -> Result<Vec<PathBuf>, ConfigError> {
    let meta = fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    collect_files(path, options, 0, &mut files)?;
    if files.is_empty() {
        return Err(ConfigError::NoFiles {
            path: path.to_owned(),
        });
    }
    files.sort();
    Ok(files)
}

fn collect_files(
    dir: &Path,
    options: &LoadOptions,
    depth: usize,
    files: &mut Vec<PathBuf>,
) -> Result<(), ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: dir.to_owned(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') && !options.hidden_files {
            continue;
        }
        // fs::metadata follows symlinks, as ConfigMap mounts need; a dangling one is skipped.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if meta.is_dir() && options.all_files {
            if depth + 1 >= MAX_DEPTH {
                return Err(ConfigError::TooDeep {
                    path,
                    max: MAX_DEPTH,
                });
            }
            collect_files(&path, options, depth + 1, files)?;
        } else if meta.is_file() && (is_yaml || options.all_files) {
            if files.len() == MAX_FILES {
                return Err(ConfigError::TooManyFiles {
                    path: dir.to_owned(),
                    max: MAX_FILES,
                });
            }
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;

    /// Each bad file and (a fragment of) the message it must produce.
    #[test]
    fn refuses_bad_files_naming_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("descriptors: []", "missing or empty 'domain'"),
            ("domain: ''", "missing or empty 'domain'"),
            (
                "domain: d\ndescriptors:\n  - value: v",
                "descriptors[0]: missing or empty 'key'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: fortnight, requests_per_unit: 1 }",
                "descriptors[0].rate_limit: unknown unit 'fortnight'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { requests_per_unit: 1 }",
                "descriptors[0].rate_limit: missing 'unit'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second }",
                "descriptors[0].rate_limit: missing 'requests_per_unit'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unlimited: true, unit: second }",
                "'unlimited: true' cannot also set",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v",
                "descriptors[1]: duplicate descriptor key 'k' value 'v'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n  - key: k",
                "descriptors[1]: duplicate descriptor key 'k' at the same level",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    value: a*\n  - key: k\n    value: a*",
                "duplicate descriptor key 'k' value 'a*'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n        value: x\n      - key: b\n        value: x",
                "descriptors[0].descriptors[1]: duplicate descriptor",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1 }\n    replaces: [{ name: nope }]",
                "descriptors[0].replaces: no limit named 'nope'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1 }\n    replaces: [{}]",
                "every entry needs a non-empty 'name'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    replaces: [{ name: x }]",
                "'replaces' needs a 'rate_limit'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1, name: me, replaces: [{ name: me }] }",
                "descriptors[0].rate_limit.replaces: the limit 'me' cannot replace itself",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1, replaces: [{ name: }] }",
                "descriptors[0].rate_limit.replaces: every entry needs a non-empty 'name'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 1, name: n }\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1, replaces: [{ name: n }] }\n    replaces: [{ name: n }]",
                "descriptors[1]: 'replaces' is given both inside 'rate_limit' and beside it",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unlimited: true, count_denied_hits: true }",
                "descriptors[0].rate_limit: 'count_denied_hits' needs a limit to count against",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    metadata: [a, b]",
                "descriptors[0].metadata: must be a mapping",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    metadata: { a: !tagged x }",
                "descriptors[0].metadata: tags are not supported",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    value: plain\n    share_threshold: true",
                "'share_threshold' needs a value containing '*'",
            ),
            ("domain: d\ndescriptor: []", "unknown field `descriptor`"),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1, bursty: 2 }",
                "unknown field `bursty`",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1, burst: 2 }",
                "descriptors[0].rate_limit: 'burst' applies only to 'algorithm: token_bucket'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1, algorithm: leaky }",
                "descriptors[0].rate_limit: unknown algorithm 'leaky'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1, unit_multiplier: 0 }",
                "'unit_multiplier' must be at least 1",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1, algorithm: token_bucket, burst: 0 }",
                "'burst' must be at least 1",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: -1 }",
                "requests_per_unit",
            ),
            ("domain: [x", "domain"),
        ];
        for (yaml, want) in cases {
            let err = Config::from_sources([(Path::new("limits/d.yaml"), *yaml)]).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with("limits/d.yaml: ") && message.contains(want),
                "for {yaml:?}\n  got:  {message}\n  want: {want}"
            );
        }
    }

    #[test]
    fn refuses_bad_tiers_and_keys() {
        let tiers = "tiers:\n  free: { unit: minute, base: 10, burst: 20, degraded: 2 }\n";
        let cases: Vec<(String, &str)> = vec![
            (
                "domain: d\ntiers:\n  free: { unit: minute, base: 0, burst: 20, degraded: 0 }".into(),
                "tiers.free: 'base' must be greater than 0",
            ),
            (
                "domain: d\ntiers:\n  free: { unit: minute, base: 10, burst: 20 }".into(),
                "tiers.free: missing 'degraded'",
            ),
            (
                "domain: d\ntiers:\n  free: { unit: minute, base: 10, burst: 5, degraded: 2 }".into(),
                "tiers.free: needs degraded <= base <= burst, got degraded 2, base 10, burst 5",
            ),
            (
                "domain: d\ntiers:\n  free: { unit: minute, base: 10, burst: 20, degraded: 11 }".into(),
                "needs degraded <= base <= burst",
            ),
            (
                "domain: d\ntiers:\n  free: { unit: eon, base: 1, burst: 1, degraded: 1 }".into(),
                "tiers.free: unknown unit 'eon'",
            ),
            (
                "domain: d\ntiers:\n  free: { unit: minute, base: 1, burst: 1, degraded: 1 }\n  free: { unit: minute, base: 1, burst: 1, degraded: 1 }".into(),
                "tiers.free: listed twice",
            ),
            (
                format!("domain: d\n{tiers}api_keys:\n  secret_key_1: {{ user: u, tier: gold }}"),
                "api_keys.secr…: unknown tier 'gold'",
            ),
            (
                format!("domain: d\n{tiers}api_keys:\n  secret_key_1: {{ user: u, tier: free }}\n  secret_key_1: {{ user: v, tier: free }}"),
                "api_keys.secr…: listed twice",
            ),
            (
                format!("domain: d\n{tiers}api_keys:\n  secret_key_1: {{ tier: free }}"),
                "api_keys.secr…: missing 'user'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: api_key\n    tiered: true".into(),
                "descriptors[0]: 'tiered: true' needs 'tiers' in the file",
            ),
            (
                format!("domain: d\n{tiers}descriptors:\n  - key: api_key\n    tiered: true\n    rate_limit: {{ unit: second, requests_per_unit: 1 }}"),
                "takes its limit from the tiers",
            ),
            (
                format!("domain: d\n{tiers}descriptors:\n  - key: api_key\n    value: x\n    tiered: true"),
                "matches any API key",
            ),
            (
                format!("domain: d\n{tiers}invalid_keys: {{ window: soon }}"),
                "invalid_keys: 'window'",
            ),
            (
                format!("domain: d\n{tiers}invalid_keys: {{ max_attempts: 0 }}"),
                "invalid_keys: 'max_attempts' must be greater than 0",
            ),
        ];
        for (yaml, want) in &cases {
            let err = Config::from_sources([(Path::new("t.yaml"), yaml.as_str())]).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains(want),
                "for {yaml:?}\n  got:  {message}\n  want: {want}"
            );
            assert!(
                !message.contains("secret_key_1"),
                "API keys are masked: {message}"
            );
        }
    }

    #[test]
    fn accepts_the_tiered_example() {
        let config = Config::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/tiers"
        )))
        .unwrap();
        let domain = config.domain("api").unwrap();
        assert!(domain.has_tiered());
        let free = domain.tier("free").unwrap();
        assert_eq!(free.limit(TierMode::Normal).requests_per_unit, 20);
        assert_eq!(free.limit(TierMode::Degraded).requests_per_unit, 2);
        assert_eq!(domain.seed_keys().len(), 3);
        assert_eq!(domain.invalid_keys().block_for_secs, 300);
    }

    #[test]
    fn accepts_the_reference_format() {
        let yaml = r#"
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: SECOND
      requests_per_unit: 500
      name: users
    detailed_metric: true
  - key: database
    value: default
    shadow_mode: true
    rate_limit: { unit: second, requests_per_unit: 0 }
  - key: client
    rate_limit: { unlimited: true, requests_per_unit: 5 }
  - key: window
    rate_limit: { unit: minute, unit_multiplier: 5, requests_per_unit: 9, algorithm: sliding_window }
  - key: bucket
    rate_limit: { unit: second, requests_per_unit: 9, algorithm: token_bucket, burst: 20 }
  - key: path
    value: "/v1/*"
    share_threshold: true
    value_to_metric: true
    rate_limit: { unit: week, requests_per_unit: 7 }
    replaces: [{ name: users }]
"#;
        let config = Config::from_yaml(yaml).unwrap();
        assert_eq!(config.domain_names(), vec!["mongo_cps"]);
        let domain = config.domain("mongo_cps").unwrap();
        let branch = &domain.root().children["database"];
        let users = domain.node(branch.exact["users"]).rule.as_ref().unwrap();
        assert_eq!(users.limit, Some(Limit::per(500, Unit::Second)));
        assert!(users.detailed_metric);
        let default = domain.node(branch.exact["default"]).rule.as_ref().unwrap();
        assert!(default.shadow_mode);
        assert_eq!(default.limit.unwrap().requests_per_unit, 0);
        let window = domain.node(domain.root().children["window"].any.unwrap());
        let limit = window.rule.as_ref().unwrap().limit.unwrap();
        assert_eq!(
            (limit.window_secs(), limit.algorithm),
            (300, Algorithm::SlidingWindow)
        );
        let bucket = domain.node(domain.root().children["bucket"].any.unwrap());
        let limit = bucket.rule.as_ref().unwrap().limit.unwrap();
        assert_eq!(limit.algorithm, Algorithm::TokenBucket { burst: 20 });
        let client = &domain.root().children["client"];
        assert_eq!(
            domain
                .node(client.any.unwrap())
                .rule
                .as_ref()
                .unwrap()
                .limit,
            None
        );
    }

    /// The rule at `key` (no value) of the domain's top level.
    fn top_rule<'c>(config: &'c Config, domain: &str, key: &str) -> &'c Rule {
        let domain = config.domain(domain).unwrap();
        let id = domain.root().children[key].any.unwrap();
        domain.node(id).rule.as_ref().unwrap()
    }

    #[test]
    fn reads_replaces_metadata_quota_and_usage_metering() {
        let yaml = r#"
domain: d
descriptors:
  - key: a
    rate_limit: { unit: second, requests_per_unit: 5, name: shared }
  - key: b
    rate_limit: { unit: second, requests_per_unit: 5, name: shared }
  - key: c
    quota_mode: true
    metadata:
      name: svc
      nested: { n: 1, list: [x, true] }
      7: seven
    rate_limit:
      unit: second
      requests_per_unit: 10
      count_denied_hits: true
      replaces:
        - name: shared
  - key: alias
    rate_limit: { unit: second, requests_per_unit: 1 }
    replaces: [{ name: shared }]
"#;
        let config = Config::from_yaml(yaml).unwrap();
        let c = top_rule(&config, "d", "c");
        assert_eq!(c.replaces, vec!["shared".to_owned()]);
        assert!(c.quota_mode && c.count_denied_hits);
        let metadata = serde_json::Value::Object(Metadata::clone(c.metadata.as_ref().unwrap()));
        assert_eq!(
            metadata,
            serde_json::json!({"name": "svc", "nested": {"n": 1.0, "list": ["x", true]}, "7": "seven"})
        );
        assert_eq!(
            top_rule(&config, "d", "alias").replaces,
            vec!["shared".to_owned()]
        );
        let a = top_rule(&config, "d", "a");
        assert!(!a.quota_mode && !a.count_denied_hits && a.metadata.is_none());
    }

    #[test]
    fn reads_what_the_reference_s_yaml_1_1_reads() {
        let yaml = r#"
domain: d
descriptors:
  - key: base
    rate_limit: &common { unit: minute, requests_per_unit: 3 }
  - key: flags
    shadow_mode: yes
    detailed_metric: off
    rate_limit:
      <<: *common
      replaces: ~
  - key: nothing
    value: ~
    shadow_mode: ~
    descriptors: ~
"#;
        let config = Config::from_yaml(yaml).unwrap();
        let flags = top_rule(&config, "d", "flags");
        assert!(flags.shadow_mode && !flags.detailed_metric);
        assert_eq!(flags.limit, Some(Limit::per(3, Unit::Minute)));
        let domain = config.domain("d").unwrap();
        let nothing = domain.node(domain.root().children["nothing"].any.unwrap());
        assert!(nothing.rule.is_none() && nothing.children.is_empty());
        // a strict error still says where
        let err = Config::from_yaml("domain: d\ndescriptors:\n  - key: k\n    shadow_mode: maybe")
            .unwrap_err()
            .to_string();
        assert!(err.contains("descriptors[0].shadow_mode"), "{err}");
    }

    #[test]
    fn merges_a_domain_across_files_when_asked() {
        let first = "domain: d\ndescriptors:\n  - key: k1\n    value: v1\n    rate_limit: { unit: minute, requests_per_unit: 10, name: one }";
        let second = "domain: d\ndescriptors:\n  - key: k2\n    value: v2\n    rate_limit: { unit: minute, requests_per_unit: 20, replaces: [{ name: one }] }";
        let merge = LoadOptions {
            merge_domains: true,
            ..LoadOptions::default()
        };
        let sources = [(Path::new("a.yaml"), first), (Path::new("b.yaml"), second)];
        let config = Config::from_sources_with(sources, &merge).unwrap();
        let domain = config.domain("d").unwrap();
        assert_eq!(domain.root().children.len(), 2);
        // without merging, the second file is refused
        let err = Config::from_sources(sources).unwrap_err().to_string();
        assert!(err.starts_with("b.yaml: duplicate domain 'd'"), "{err}");
        // the same descriptor twice is refused, naming the second file
        let twice = [(Path::new("a.yaml"), first), (Path::new("c.yaml"), first)];
        let err = Config::from_sources_with(twice, &merge)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "c.yaml: descriptors[0]: duplicate descriptor key 'k1' value 'v1' at the same level"
        );
        // a replaces naming no limit of the merged domain names its own file
        let stray = "domain: d\ndescriptors:\n  - key: k3\n    rate_limit: { unit: minute, requests_per_unit: 1, replaces: [{ name: nope }] }";
        let err = Config::from_sources_with(
            [(Path::new("a.yaml"), first), (Path::new("s.yaml"), stray)],
            &merge,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("s.yaml: descriptors[0].rate_limit.replaces: no limit named 'nope'"),
            "{err}"
        );
        // plans belong to the first file only
        let plans = "domain: d\ntiers:\n  free: { unit: minute, base: 1, burst: 1, degraded: 1 }";
        let err = Config::from_sources_with(
            [(Path::new("a.yaml"), first), (Path::new("p.yaml"), plans)],
            &merge,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("p.yaml: 'tiers', 'api_keys' and 'invalid_keys' of a merged domain belong in its first file (a.yaml)"), "{err}");
    }

    #[test]
    fn duplicate_domains_across_files_name_both() {
        let err = Config::from_sources([
            (Path::new("a.yaml"), "domain: d"),
            (Path::new("b.yaml"), "domain: d"),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "b.yaml: duplicate domain 'd' (already defined in a.yaml)"
        );
    }

    #[test]
    fn loads_directories_skipping_hidden_and_other_files() {
        let dir = std::env::temp_dir().join(format!("floodgate-config-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("..data")).unwrap();
        fs::write(dir.join("a.yaml"), "domain: a").unwrap();
        fs::write(dir.join("b.yml"), "domain: b").unwrap();
        fs::write(dir.join("notes.txt"), "not yaml").unwrap();
        fs::write(dir.join(".hidden.yaml"), "domain: hidden").unwrap();
        fs::write(dir.join("..data/c.yaml"), "domain: c").unwrap();
        let config = Config::load(&dir).unwrap();
        assert_eq!(config.domain_names(), vec!["a", "b"]);
        fs::write(dir.join("bad.yaml"), "domain: x\nnope: 1").unwrap();
        let err = Config::load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("bad.yaml") && err.contains("unknown field `nope`"),
            "{err}"
        );
        let empty = dir.join("..data");
        fs::remove_file(empty.join("c.yaml")).unwrap();
        assert!(matches!(
            Config::load(&empty),
            Err(ConfigError::NoFiles { .. })
        ));
        assert!(matches!(
            Config::load(&dir.join("missing")),
            Err(ConfigError::Read { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dumps_every_rule_as_the_reference_s_rlconfig() {
        let yaml = r#"
domain: d
descriptors:
  - key: b
    rate_limit: { unit: minute, requests_per_unit: 20 }
  - key: a
    value: v
    shadow_mode: true
    descriptors:
      - key: sub
        quota_mode: true
        rate_limit: { unit: second, requests_per_unit: 5 }
  - key: free
    rate_limit: { unlimited: true }
"#;
        let dump = Config::from_yaml(yaml).unwrap().dump();
        assert_eq!(
            dump,
            "d.a_v.sub: unit=SECOND requests_per_unit=5, shadow_mode: false, quota_mode: true\n\
             d.b: unit=MINUTE requests_per_unit=20, shadow_mode: false, quota_mode: false\n\
             d.free: unlimited, shadow_mode: false, quota_mode: false\n"
        );
    }

    #[test]
    fn reads_the_reference_runtime_directory() {
        // A ConfigMap as Kubernetes mounts it: the files in a hidden timestamped directory,
        // `..data` a symlink to it, and a symlink per file beside them; plus a subdirectory and
        // a file with another extension, which the reference reads too.
        let dir = std::env::temp_dir().join(format!("floodgate-runtime-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("..2026_12_04").join("team")).unwrap();
        fs::write(dir.join("..2026_12_04/limits.conf"), "domain: a").unwrap();
        std::os::unix::fs::symlink("..2026_12_04", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/limits.conf", dir.join("limits.conf")).unwrap();
        fs::create_dir_all(dir.join("team")).unwrap();
        fs::write(dir.join("team/b"), "domain: b").unwrap();
        let reference = LoadOptions {
            all_files: true,
            ..LoadOptions::default()
        };
        let config = Config::load_with(&dir, &reference).unwrap();
        assert_eq!(config.domain_names(), vec!["a", "b"]);
        // Floodgate's own layout reads neither.
        assert!(matches!(
            Config::load(&dir),
            Err(ConfigError::NoFiles { .. })
        ));
        // With hidden entries, the ConfigMap's twins define the domain again.
        let hidden = LoadOptions {
            hidden_files: true,
            ..reference
        };
        let err = Config::load_with(&dir, &hidden).unwrap_err().to_string();
        assert!(err.contains("duplicate domain 'a'"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
