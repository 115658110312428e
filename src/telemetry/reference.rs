//! envoyproxy/ratelimit's metric names, for dashboards and alerts written against it (Envoy
//! Gateway's among them).
//!
//! The reference names its statistics the statsd way (`ratelimit.service.rate_limit.<domain>.
//! <key path>.total_hits`) and, for Prometheus, turns them into metric names and labels through
//! a statsd_exporter mapping file (`PROMETHEUS_MAPPER_YAML`, or its built-in one). Floodgate
//! builds the same statsd names and runs them through the same kind of mapping: a
//! [`StatMapper`] reads that file format (glob rules first, in order, then regex rules, in
//! order; an unmatched name becomes the name with invalid characters replaced, without
//! labels). Mapping happens once per series, never per request.
//!
//! [`install`] turns the names on for the process; the per-descriptor statistics
//! ([`super::DescriptorStats`]) and the per-call metrics then count under both Floodgate's
//! names and the reference's.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use metrics::Counter;
use regex::Regex;
use serde::Deserialize;
use thiserror::Error;

use super::LatencyHistogram;

/// The kinds of statsd statistics, as a mapping's `match_metric_type` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    /// A count.
    Counter,
    /// A level.
    Gauge,
    /// A timer (statsd_exporter's "observer").
    Timer,
}

/// A Prometheus series: a metric name and its labels (sorted by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// The metric name.
    pub name: String,
    /// The labels.
    pub labels: Vec<(String, String)>,
}

/// A mapping file that cannot be used.
#[derive(Debug, Error)]
pub enum MappingError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a mapping file.
    #[error("{origin}: {reason}")]
    Invalid {
        /// The file, or "the built-in mapping".
        origin: String,
        /// What is wrong, naming the mapping.
        reason: String,
    },
}

/// The statsd_exporter mapping rules the reference's statistics go through.
#[derive(Debug)]
pub struct StatMapper {
    /// Glob rules (anchored regexes made from the globs), then regex rules, each in file order.
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    pattern: Regex,
    name: String,
    labels: Vec<(String, String)>,
    kind: Option<StatKind>,
    drop: bool,
}

#[derive(Deserialize)]
struct MappingFile {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    mappings: Vec<MappingSpec>,
}

#[derive(Deserialize, Default)]
struct Defaults {
    #[serde(default)]
    match_type: Option<String>,
}

/// One mapping; options that shape the Prometheus type (timer_type, buckets, ttl) are accepted
/// and not used: Floodgate's counters are counters and its timers histograms.
#[derive(Deserialize)]
struct MappingSpec {
    #[serde(rename = "match")]
    pattern: String,
    #[serde(default)]
    match_type: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    match_metric_type: Option<String>,
}

/// The per-descriptor statistics, in the order [`super::DescriptorStats`] keeps them (the
/// reference's built-in mapping also tries them in this order: near_limit first).
pub(super) const DESCRIPTOR_STATS: [&str; 5] = [
    "total_hits",
    "over_limit",
    "near_limit",
    "within_limit",
    "shadow_mode",
];

/// The order in which the reference's built-in mapping tries the per-descriptor statistics.
const BUILT_IN_ORDER: [&str; 5] = [
    "near_limit",
    "over_limit",
    "total_hits",
    "within_limit",
    "shadow_mode",
];

fn spec(pattern: String, regex: bool, name: &str, labels: &[(&str, &str)]) -> MappingSpec {
    MappingSpec {
        pattern,
        match_type: Some(if regex { "regex" } else { "glob" }.to_owned()),
        name: name.to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        action: None,
        match_metric_type: None,
    }
}

/// The reference's built-in mapping, as rules: each per-descriptor statistic labelled by
/// domain and a one-level key path (a glob), or the first two levels of a deeper one (a
/// regex, not anchored at its end: a name that goes on past the statistic's counts under it);
/// the calls, their errors, and the config loads.
fn built_in_specs() -> Vec<MappingSpec> {
    let prefix = r"ratelimit\.service\.rate_limit\.";
    let mut specs = Vec::new();
    for stat in BUILT_IN_ORDER {
        let name = format!("ratelimit_service_rate_limit_{stat}");
        specs.push(spec(
            format!("ratelimit.service.rate_limit.*.*.{stat}"),
            false,
            &name,
            &[("domain", "$1"), ("key1", "$2")],
        ));
    }
    for stat in BUILT_IN_ORDER {
        let name = format!("ratelimit_service_rate_limit_{stat}");
        specs.push(spec(
            format!(r"{prefix}([^.]*)\.([^.]*)\.([^.]*)(\..*)?\.{stat}"),
            true,
            &name,
            &[("domain", "$1"), ("key1", "$2"), ("key2", "$3")],
        ));
    }
    specs.extend(service_specs());
    specs
}

/// The built-in rules for the service itself: calls, their errors and response times, and
/// config loads.
fn service_specs() -> Vec<MappingSpec> {
    let mut specs = Vec::new();
    let counters = [
        (
            "ratelimit.service.call.should_rate_limit.*",
            "ratelimit_service_should_rate_limit_error",
            Some(("err_type", "$1")),
        ),
        (
            "ratelimit_server.*.total_requests",
            "ratelimit_service_total_requests",
            Some(("grpc_method", "$1")),
        ),
        (
            "ratelimit.service.config_load_success",
            "ratelimit_service_config_load_success",
            None,
        ),
        (
            "ratelimit.service.config_load_error",
            "ratelimit_service_config_load_error",
            None,
        ),
    ];
    for (pattern, name, label) in counters {
        let mut s = spec(pattern.to_owned(), false, name, label.as_slice());
        s.match_metric_type = Some("counter".to_owned());
        specs.push(s);
    }
    specs.push(spec(
        "ratelimit_server.*.response_time".to_owned(),
        false,
        "ratelimit_service_response_time_seconds",
        &[("grpc_method", "$1")],
    ));
    specs
}

/// Mapping `i` compiled into a rule, and whether it is a glob (globs are tried before
/// regexes); `Err` names the mapping and what is wrong with it.
fn mapping_rule(i: usize, spec: MappingSpec, default_type: &str) -> Result<(Rule, bool), String> {
    let at = |what: &str| format!("mappings[{i}] ({}): {what}", spec.pattern);
    if spec.name.is_empty() {
        return Err(at("no name"));
    }
    if let Some(bad) = spec.labels.keys().find(|k| !is_label_name(k)) {
        return Err(at(&format!("invalid label name '{bad}'")));
    }
    let kind = match spec.match_metric_type.as_deref() {
        None | Some("") => None,
        Some("counter") => Some(StatKind::Counter),
        Some("gauge") => Some(StatKind::Gauge),
        Some("observer" | "timer" | "histogram" | "summary" | "distribution") => {
            Some(StatKind::Timer)
        }
        Some(other) => return Err(at(&format!("unknown match_metric_type '{other}'"))),
    };
    let drop = match spec.action.as_deref() {
        None | Some("" | "map") => false,
        Some("drop") => true,
        Some(other) => return Err(at(&format!("unknown action '{other}'"))),
    };
    let (pattern, glob) = match spec.match_type.as_deref().unwrap_or(default_type) {
        "glob" => (
            glob_regex(&spec.pattern).ok_or_else(|| at("invalid glob"))?,
            true,
        ),
        "regex" => (
            Regex::new(&spec.pattern).map_err(|e| at(&format!("invalid regex: {e}")))?,
            false,
        ),
        other => return Err(at(&format!("unknown match_type '{other}'"))),
    };
    let rule = Rule {
        pattern,
        name: spec.name,
        labels: spec.labels.into_iter().collect(),
        kind,
        drop,
    };
    Ok((rule, glob))
}

impl StatMapper {
    /// The reference's built-in mapping (what it uses without PROMETHEUS_MAPPER_YAML).
    pub fn built_in() -> StatMapper {
        StatMapper::from_specs(built_in_specs(), "glob", "the built-in mapping")
            .unwrap_or_else(|e| unreachable!("the built-in mapping is valid: {e}"))
    }

    /// The mapping file at `path`.
    pub fn from_file(path: &Path) -> Result<StatMapper, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|source| MappingError::Read {
            path: path.display().to_string(),
            source,
        })?;
        StatMapper::from_yaml(&text, &path.display().to_string())
    }

    /// A mapping file's text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<StatMapper, MappingError> {
        let invalid = |reason: String| MappingError::Invalid {
            origin: origin.to_owned(),
            reason,
        };
        let file: MappingFile =
            serde_yaml::from_str(text).map_err(|e| invalid(format!("not a mapping file: {e}")))?;
        let default_type = file.defaults.match_type.unwrap_or_else(|| "glob".into());
        StatMapper::from_specs(file.mappings, &default_type, origin)
    }

    fn from_specs(
        specs: Vec<MappingSpec>,
        default_type: &str,
        origin: &str,
    ) -> Result<StatMapper, MappingError> {
        let invalid = |reason: String| MappingError::Invalid {
            origin: origin.to_owned(),
            reason,
        };
        let (mut globs, mut regexes) = (Vec::new(), Vec::new());
        for (i, spec) in specs.into_iter().enumerate() {
            let (rule, glob) = mapping_rule(i, spec, default_type).map_err(invalid)?;
            if glob {
                globs.push(rule);
            } else {
                regexes.push(rule);
            }
        }
        globs.append(&mut regexes);
        Ok(StatMapper { rules: globs })
    }

    /// The series a statistic counts under, or `None` when a rule drops it.
    pub fn map(&self, stat: &str, kind: StatKind) -> Option<Series> {
        for rule in &self.rules {
            if rule.kind.is_some_and(|k| k != kind) {
                continue;
            }
            let Some(captures) = rule.pattern.captures(stat) else {
                continue;
            };
            if rule.drop {
                return None;
            }
            let expand = |template: &str| {
                let mut out = String::new();
                captures.expand(template, &mut out);
                out
            };
            return Some(Series {
                name: expand(&rule.name),
                labels: rule
                    .labels
                    .iter()
                    .map(|(label, template)| (label.clone(), expand(template)))
                    .collect(),
            });
        }
        Some(Series {
            name: escape_name(stat),
            labels: Vec::new(),
        })
    }
}

/// A glob of dot-separated parts, each `*` (one part, captured) or a statsd name, as an
/// anchored regex; `None` when it is not one.
fn glob_regex(glob: &str) -> Option<Regex> {
    let parts: Vec<&str> = glob.split('.').collect();
    let name_part = |p: &str| {
        let mut chars = p.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && !p.contains("--")
            && !p.ends_with('-')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if parts.len() < 2 || !parts.iter().all(|p| *p == "*" || name_part(p)) {
        return None;
    }
    let body: Vec<String> = parts
        .iter()
        .map(|p| {
            if *p == "*" {
                "([^.]*)".to_owned()
            } else {
                regex::escape(p)
            }
        })
        .collect();
    Regex::new(&format!("^{}$", body.join(r"\."))).ok()
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() >= 2
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// statsd_exporter's name for an unmapped statistic: characters outside `[A-Za-z0-9_]` become
/// `_` (a `-` right after a `-` is left out), and a leading digit gets a `_` before it.
fn escape_name(stat: &str) -> String {
    let mut out = String::with_capacity(stat.len() + 1);
    if stat.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    let mut previous = '\0';
    for c in stat.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else if !(c == '-' && previous == '-') {
            out.push('_');
        }
        previous = c;
    }
    out
}

/// A counter under a reference name, registered on first use (as Floodgate's own are).
#[derive(Debug)]
pub(super) struct LazyCounter {
    /// `None` when the mapping drops the statistic.
    series: Option<Series>,
    cell: OnceLock<Counter>,
}

impl LazyCounter {
    fn new(series: Option<Series>) -> LazyCounter {
        LazyCounter {
            series,
            cell: OnceLock::new(),
        }
    }

    pub(super) fn add(&self, n: u64) {
        if let Some(series) = &self.series {
            self.cell
                .get_or_init(|| metrics::counter!(series.name.clone(), &series.labels))
                .increment(n);
        }
    }
}

/// The reference's metrics of the process, once [`install`]ed.
#[derive(Debug)]
pub struct ReferenceMetrics {
    mapper: StatMapper,
    total_requests: LazyCounter,
    response_time: Option<Arc<LatencyHistogram>>,
    redis_error: LazyCounter,
    service_error: LazyCounter,
    config_load_success: LazyCounter,
    config_load_error: LazyCounter,
}

static INSTALLED: OnceLock<ReferenceMetrics> = OnceLock::new();

/// Turns the reference's names on for this process, mapped by `mapper` (the first call wins).
/// Call it before the server's metrics are made.
pub fn install(mapper: StatMapper) {
    super::prometheus();
    INSTALLED.get_or_init(|| {
        let counter = |stat: &str| LazyCounter::new(mapper.map(stat, StatKind::Counter));
        // A histogram of the process lives as long as the process: its name is kept for good.
        let response_time = mapper
            .map(
                "ratelimit_server.ShouldRateLimit.response_time",
                StatKind::Timer,
            )
            .map(|series| {
                let (key, value) = series
                    .labels
                    .first()
                    .cloned()
                    .unwrap_or_else(|| ("grpc_method".into(), "ShouldRateLimit".into()));
                let name: &'static str = Box::leak(series.name.into_boxed_str());
                LatencyHistogram::get(name, &key, &value)
            });
        ReferenceMetrics {
            total_requests: counter("ratelimit_server.ShouldRateLimit.total_requests"),
            response_time,
            redis_error: counter("ratelimit.service.call.should_rate_limit.redis_error"),
            service_error: counter("ratelimit.service.call.should_rate_limit.service_error"),
            config_load_success: counter("ratelimit.service.config_load_success"),
            config_load_error: counter("ratelimit.service.config_load_error"),
            mapper,
        }
    });
}

/// The reference's metrics, when installed.
pub fn installed() -> Option<&'static ReferenceMetrics> {
    INSTALLED.get()
}

impl ReferenceMetrics {
    /// The counters of one descriptor's statistics (`domain`, key path `key`), in
    /// [`DESCRIPTOR_STATS`] order.
    pub(super) fn descriptor_counters(&self, domain: &str, key: &str) -> [LazyCounter; 5] {
        DESCRIPTOR_STATS.map(|stat| {
            LazyCounter::new(self.mapper.map(
                &format!("ratelimit.service.rate_limit.{domain}.{key}.{stat}"),
                StatKind::Counter,
            ))
        })
    }

    /// Counts one ShouldRateLimit call that took `elapsed`, refused as malformed or not.
    pub(super) fn record_call(&self, elapsed: std::time::Duration, refused: bool) {
        self.total_requests.add(1);
        if let Some(histogram) = &self.response_time {
            histogram.record(elapsed);
        }
        if refused {
            self.service_error.add(1);
        }
    }

    /// Counts a store failure.
    pub fn record_store_error(&self) {
        self.redis_error.add(1);
    }

    /// Counts a config load (at start-up or a reload).
    pub fn record_config_load(&self, loaded: bool) {
        if loaded {
            self.config_load_success.add(1);
        } else {
            self.config_load_error.add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, labels: &[(&str, &str)]) -> Option<Series> {
        Some(Series {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
    }

    // The expected values are those of the reference's own sink tests
    // (src/stats/prom/prometheus_sink_test.go).
    #[test]
    fn the_built_in_mapping_labels_domain_and_two_key_levels() {
        let m = StatMapper::built_in();
        let c = StatKind::Counter;
        assert_eq!(
            m.map(
                "ratelimit.service.rate_limit.domain1.key1_val1.over_limit",
                c
            ),
            series(
                "ratelimit_service_rate_limit_over_limit",
                &[("domain", "domain1"), ("key1", "key1_val1")]
            )
        );
        assert_eq!(
            m.map(
                "ratelimit.service.rate_limit.domain1.key1_val1.key2_val2.over_limit",
                c
            ),
            series(
                "ratelimit_service_rate_limit_over_limit",
                &[
                    ("domain", "domain1"),
                    ("key1", "key1_val1"),
                    ("key2", "key2_val2")
                ]
            )
        );
        // A third level is not a label: it counts with the first two.
        assert_eq!(
            m.map(
                "ratelimit.service.rate_limit.domain1.key3_val3.key4_val4.key5_val5.over_limit",
                c
            ),
            m.map(
                "ratelimit.service.rate_limit.domain1.key3_val3.key4_val4.over_limit",
                c
            )
        );
        assert_eq!(
            m.map(
                "ratelimit.service.rate_limit.mongo_cps.database_users.total_hits",
                StatKind::Timer
            ),
            series(
                "ratelimit_service_rate_limit_total_hits",
                &[("domain", "mongo_cps"), ("key1", "database_users")]
            )
        );
        assert_eq!(
            m.map("ratelimit_server.ShouldRateLimit.total_requests", c),
            series(
                "ratelimit_service_total_requests",
                &[("grpc_method", "ShouldRateLimit")]
            )
        );
        assert_eq!(
            m.map(
                "ratelimit_server.ShouldRateLimit.response_time",
                StatKind::Timer
            ),
            series(
                "ratelimit_service_response_time_seconds",
                &[("grpc_method", "ShouldRateLimit")]
            )
        );
        assert_eq!(
            m.map("ratelimit.service.call.should_rate_limit.redis_error", c),
            series(
                "ratelimit_service_should_rate_limit_error",
                &[("err_type", "redis_error")]
            )
        );
        assert_eq!(
            m.map("ratelimit.service.config_load_success", c),
            series("ratelimit_service_config_load_success", &[])
        );
        // Gauges have no mapping: the name, escaped.
        assert_eq!(
            m.map(
                "ratelimit.service.rate_limit.domain1.key1.test_gauge",
                StatKind::Gauge
            ),
            series("ratelimit_service_rate_limit_domain1_key1_test_gauge", &[])
        );
    }

    #[test]
    fn deeper_paths_match_unanchored_as_the_reference_does() {
        // The reference's deeper-path patterns are not anchored at the end, so a statistic
        // whose name continues past one of the five counts under it.
        let m = StatMapper::built_in();
        assert_eq!(
            m.map(
                "ratelimit.service.rate_limit.d.a.b.over_limit_with_local_cache",
                StatKind::Counter
            ),
            series(
                "ratelimit_service_rate_limit_over_limit",
                &[("domain", "d"), ("key1", "a"), ("key2", "b")]
            )
        );
        // A one-level path is anchored (a glob there): the name stays unmapped.
        assert_eq!(
            m.map(
                "ratelimit.service.rate_limit.d.a.over_limit_with_local_cache",
                StatKind::Counter
            ),
            series(
                "ratelimit_service_rate_limit_d_a_over_limit_with_local_cache",
                &[]
            )
        );
    }

    #[test]
    fn a_mapping_file_takes_globs_first_then_regexes_and_can_drop() {
        let m = StatMapper::from_yaml(
            r#"
mappings:
  - match: 'ratelimit\.service\.rate_limit\.(.*)\.total_hits'
    match_type: regex
    name: "regex_$1"
  - match: "ratelimit.service.rate_limit.*.*.total_hits"
    name: "hits"
    labels: { domain: "$1", key: "$2" }
  - match: "ratelimit.service.rate_limit.*.*.near_limit"
    action: drop
    name: "dropped"
  - match: "ratelimit_server.*.total_requests"
    match_metric_type: gauge
    name: "only_gauges"
"#,
            "test.yaml",
        )
        .unwrap();
        let c = StatKind::Counter;
        assert_eq!(
            m.map("ratelimit.service.rate_limit.d.k.total_hits", c),
            series("hits", &[("domain", "d"), ("key", "k")])
        );
        assert_eq!(
            m.map("ratelimit.service.rate_limit.d.k.j.total_hits", c),
            series("regex_d.k.j", &[])
        );
        assert_eq!(
            m.map("ratelimit.service.rate_limit.d.k.near_limit", c),
            None
        );
        assert_eq!(
            m.map("ratelimit_server.ShouldRateLimit.total_requests", c),
            series("ratelimit_server_ShouldRateLimit_total_requests", &[])
        );
    }

    #[test]
    fn a_bad_mapping_file_is_refused_naming_the_mapping() {
        for (text, expected) in [
            ("mappings:\n  - match: a.b\n", "mappings[0] (a.b): no name"),
            (
                "mappings:\n  - match: 'a.b*'\n    name: x\n",
                "mappings[0] (a.b*): invalid glob",
            ),
            (
                "mappings:\n  - match: '(a'\n    match_type: regex\n    name: x\n",
                "invalid regex",
            ),
            (
                "mappings:\n  - match: a.b\n    name: x\n    labels: { 'bad-label': v }\n",
                "invalid label name 'bad-label'",
            ),
            (
                "mappings:\n  - match: a.b\n    name: x\n    action: keep\n",
                "unknown action 'keep'",
            ),
            ("mappings: 3\n", "not a mapping file"),
        ] {
            let error = StatMapper::from_yaml(text, "conf.yaml")
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("conf.yaml: "), "{error}");
            assert!(error.contains(expected), "{error} should say {expected}");
        }
    }

    #[test]
    fn unmapped_names_are_escaped_as_statsd_exporter_does() {
        assert_eq!(escape_name("a.b-c"), "a_b_c");
        assert_eq!(escape_name("a--b"), "a_b");
        assert_eq!(escape_name("9lives"), "_9lives");
        assert_eq!(escape_name("ok_name"), "ok_name");
    }
}
