//! The pushed resources (`RateLimitConfig`) as config: each is written out as the domain file
//! it stands for and compiled with the files' rules, so that a pushed config is held to exactly
//! what a file is, with errors naming the resource.

use std::path::PathBuf;

use prost::Message;
use serde_json::{Map, Value, json};

use crate::config::{Config, ConfigError, LoadOptions};
use crate::pb::xds::{RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitUnit};

/// The resource type Floodgate subscribes to.
pub const RATE_LIMIT_CONFIG_TYPE: &str =
    "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig";

/// Why a pushed set of resources was refused (NACKed).
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// A resource of another type.
    #[error("resource {index}: type {type_url}, expected {RATE_LIMIT_CONFIG_TYPE}")]
    WrongType {
        /// Its place in the response.
        index: usize,
        /// Its type.
        type_url: String,
    },
    /// A resource that does not decode.
    #[error("resource {index}: not a RateLimitConfig: {reason}")]
    Undecodable {
        /// Its place in the response.
        index: usize,
        /// The decoder's complaint.
        reason: String,
    },
    /// A config that does not validate, as a file would not.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// The config made of one response's resources: every one decoded and compiled together (the
/// whole set replaces the config, as files do).
pub fn config_from_resources(
    resources: &[pbjson_types::Any],
    options: &LoadOptions,
) -> Result<Config, ResourceError> {
    let mut sources = Vec::with_capacity(resources.len());
    for (index, any) in resources.iter().enumerate() {
        if any.type_url != RATE_LIMIT_CONFIG_TYPE {
            return Err(ResourceError::WrongType {
                index,
                type_url: any.type_url.clone(),
            });
        }
        let config = RateLimitConfig::decode(any.value.as_ref()).map_err(|e| {
            ResourceError::Undecodable {
                index,
                reason: e.to_string(),
            }
        })?;
        sources.push((source_name(&config, index), domain_file(&config)));
    }
    Ok(Config::from_sources_with(
        sources
            .iter()
            .map(|(name, text)| (name.as_path(), text.as_str())),
        options,
    )?)
}

/// How errors name a resource: by its name (or place, if it has none).
fn source_name(config: &RateLimitConfig, index: usize) -> PathBuf {
    if config.name.is_empty() {
        PathBuf::from(format!("xDS resource {index}"))
    } else {
        PathBuf::from(format!("xDS resource '{}'", config.name))
    }
}

/// The domain file a resource stands for, as YAML text.
pub fn domain_file(config: &RateLimitConfig) -> String {
    let file = json!({
        "domain": config.domain,
        "descriptors": config.descriptors.iter().map(descriptor).collect::<Vec<_>>(),
    });
    // A JSON value always writes as YAML.
    serde_yaml::to_string(&file).unwrap_or_default()
}

fn descriptor(d: &RateLimitDescriptor) -> Value {
    let mut out = Map::new();
    out.insert("key".into(), d.key.clone().into());
    if !d.value.is_empty() {
        out.insert("value".into(), d.value.clone().into());
    }
    if let Some(policy) = &d.rate_limit {
        out.insert("rate_limit".into(), rate_limit(policy));
    }
    for (flag, on) in [
        ("shadow_mode", d.shadow_mode),
        ("detailed_metric", d.detailed_metric),
        ("quota_mode", d.quota_mode),
    ] {
        if on {
            out.insert(flag.into(), true.into());
        }
    }
    if let Some(metadata) = &d.metadata {
        out.insert("metadata".into(), struct_value(metadata));
    }
    if !d.descriptors.is_empty() {
        out.insert(
            "descriptors".into(),
            d.descriptors.iter().map(descriptor).collect(),
        );
    }
    Value::Object(out)
}

fn rate_limit(policy: &RateLimitPolicy) -> Value {
    let mut out = Map::new();
    // UNKNOWN (unset) is no unit: right for an unlimited limit, refused for any other, as in a
    // file without one.
    let unit = RateLimitUnit::try_from(policy.unit).unwrap_or(RateLimitUnit::Unknown);
    if unit != RateLimitUnit::Unknown {
        out.insert("unit".into(), unit.as_str_name().into());
    }
    out.insert("requests_per_unit".into(), policy.requests_per_unit.into());
    if policy.unlimited {
        out.insert("unlimited".into(), true.into());
    }
    if !policy.name.is_empty() {
        out.insert("name".into(), policy.name.clone().into());
    }
    if !policy.replaces.is_empty() {
        out.insert(
            "replaces".into(),
            policy
                .replaces
                .iter()
                .map(|r| json!({ "name": r.name }))
                .collect(),
        );
    }
    Value::Object(out)
}

fn struct_value(s: &pbjson_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), proto_value(v)))
            .collect(),
    )
}

fn proto_value(v: &pbjson_types::Value) -> Value {
    use pbjson_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::StructValue(s)) => struct_value(s),
        Some(Kind::ListValue(l)) => l.values.iter().map(proto_value).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::xds::RateLimitReplace;

    fn any(config: &RateLimitConfig) -> pbjson_types::Any {
        pbjson_types::Any {
            type_url: RATE_LIMIT_CONFIG_TYPE.into(),
            value: config.encode_to_vec().into(),
        }
    }

    fn limit(unit: RateLimitUnit, n: u32) -> Option<RateLimitPolicy> {
        Some(RateLimitPolicy {
            unit: unit as i32,
            requests_per_unit: n,
            ..RateLimitPolicy::default()
        })
    }

    fn leaf(key: &str, value: &str, rate_limit: Option<RateLimitPolicy>) -> RateLimitDescriptor {
        RateLimitDescriptor {
            key: key.into(),
            value: value.into(),
            rate_limit,
            ..RateLimitDescriptor::default()
        }
    }

    /// Envoy Gateway's shape: a route's generic key, a nested per-user limit.
    fn gateway_config(name: &str, domain: &str, per_hour: u32) -> RateLimitConfig {
        RateLimitConfig {
            name: name.into(),
            domain: domain.into(),
            descriptors: vec![RateLimitDescriptor {
                descriptors: vec![leaf(
                    "rule-0-match-0",
                    "",
                    limit(RateLimitUnit::Hour, per_hour),
                )],
                ..leaf(
                    "httproute/default/backend/rule/0",
                    "httproute/default/backend/rule/0",
                    None,
                )
            }],
        }
    }

    #[test]
    fn a_pushed_config_compiles_as_its_file_would() {
        let mut metadata = pbjson_types::Struct::default();
        metadata.fields.insert(
            "team".into(),
            pbjson_types::Value {
                kind: Some(pbjson_types::value::Kind::StringValue("edge".into())),
            },
        );
        let config = RateLimitConfig {
            name: "edge".into(),
            domain: "edge".into(),
            descriptors: vec![
                RateLimitDescriptor {
                    shadow_mode: true,
                    metadata: Some(metadata),
                    ..leaf("path", "/api", limit(RateLimitUnit::Minute, 5))
                },
                leaf(
                    "path",
                    "/free",
                    Some(RateLimitPolicy {
                        unlimited: true,
                        ..RateLimitPolicy::default()
                    }),
                ),
                leaf(
                    "path",
                    "/narrow",
                    Some(RateLimitPolicy {
                        name: "narrow".into(),
                        ..limit(RateLimitUnit::Day, 100).unwrap()
                    }),
                ),
                leaf(
                    "path",
                    "/replacing",
                    Some(RateLimitPolicy {
                        name: "wide".into(),
                        replaces: vec![RateLimitReplace {
                            name: "narrow".into(),
                        }],
                        ..limit(RateLimitUnit::Second, 0).unwrap()
                    }),
                ),
            ],
        };
        let text = domain_file(&config);
        let from_file = Config::from_yaml(&text).unwrap();
        let pushed = config_from_resources(&[any(&config)], &LoadOptions::default()).unwrap();
        assert_eq!(pushed.dump(), from_file.dump());
        let dump = pushed.dump();
        assert!(
            dump.contains("edge.path_/api: unit=MINUTE requests_per_unit=5, shadow_mode: true"),
            "{dump}"
        );
        assert!(
            dump.contains("edge.path_/replacing: unit=SECOND requests_per_unit=0"),
            "{dump}"
        );
    }

    #[test]
    fn the_whole_set_is_one_config_and_an_empty_set_is_none() {
        let set = [
            any(&gateway_config("a", "default/eg/http", 3)),
            any(&gateway_config("b", "default/eg/grpc", 7)),
        ];
        let config = config_from_resources(&set, &LoadOptions::default()).unwrap();
        assert_eq!(
            config.domain_names(),
            ["default/eg/grpc", "default/eg/http"]
        );
        let empty = config_from_resources(&[], &LoadOptions::default()).unwrap();
        assert!(empty.domain_names().is_empty());
    }

    #[test]
    fn a_set_that_would_not_load_from_files_is_refused_naming_the_resource() {
        let options = LoadOptions::default();
        // The same domain twice, without merging: as two files would be.
        let twice = [
            any(&gateway_config("first", "d", 3)),
            any(&gateway_config("second", "d", 3)),
        ];
        let error = config_from_resources(&twice, &options)
            .unwrap_err()
            .to_string();
        assert!(error.contains("xDS resource 'second'"), "{error}");
        assert!(error.contains("xDS resource 'first'"), "{error}");
        // With merging, one domain from both (their descriptors differing).
        let mut other = gateway_config("second", "d", 3);
        other.descriptors[0].key = "another-route".into();
        let merged = LoadOptions {
            merge_domains: true,
            ..LoadOptions::default()
        };
        let config = config_from_resources(&[twice[0].clone(), any(&other)], &merged).unwrap();
        assert_eq!(config.domain_names(), ["d"]);
        // A limit without a unit.
        let no_unit = RateLimitConfig {
            name: "broken".into(),
            domain: "d".into(),
            descriptors: vec![leaf("k", "", limit(RateLimitUnit::Unknown, 3))],
        };
        let error = config_from_resources(&[any(&no_unit)], &options)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("xDS resource 'broken'"), "{error}");
        // No domain.
        let error = config_from_resources(&[any(&gateway_config("nameless", "", 1))], &options)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("xDS resource 'nameless'"), "{error}");
        // Not a RateLimitConfig.
        let wrong = pbjson_types::Any {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            value: Vec::new().into(),
        };
        let error = config_from_resources(&[wrong], &options)
            .unwrap_err()
            .to_string();
        assert!(error.contains("envoy.config.cluster.v3.Cluster"), "{error}");
        let garbage = pbjson_types::Any {
            type_url: RATE_LIMIT_CONFIG_TYPE.into(),
            value: vec![0xff, 0xff, 0xff].into(),
        };
        let error = config_from_resources(&[garbage], &options)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("resource 0: not a RateLimitConfig"),
            "{error}"
        );
    }
}
