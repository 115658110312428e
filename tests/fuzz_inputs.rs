//! The fuzz targets' inputs, replayed on the stable toolchain: every seed of
//! `tests/fuzz/seeds/<target>/` and every crash the fuzzer found (`tests/fuzz/regressions/
//! <target>/`, each one fixed) goes through its target's entry point, so that a fixed crash
//! stays fixed without nightly or cargo-fuzz. The seeds themselves are written by
//! `write_seeds` (ignored; run it after changing them, see docs/fuzzing.md).

use std::fs;
use std::path::{Path, PathBuf};

use floodgate::fuzzing;
use floodgate::pb::xds::{
    DiscoveryResponse, RateLimitConfig, RateLimitDescriptor as XdsDescriptor, RateLimitPolicy,
    RateLimitUnit as XdsUnit,
};
use floodgate::pb::{RateLimitDescriptor, RateLimitRequest, RateLimitUnit, rate_limit_descriptor};
use prost::Message;

/// A fuzz target's entry point.
type Target = fn(&[u8]);

/// Each fuzz target by its name, with its entry point.
const TARGETS: [(&str, Target); 5] = [
    ("config", fuzzing::config),
    ("rls_request", fuzzing::rls_request),
    ("json_body", fuzzing::json_body),
    ("admin_body", fuzzing::admin_body),
    ("replies", fuzzing::replies),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

/// The files of `dir` (none when it does not exist), sorted.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_every_crash_found_replays_without_a_panic() {
    let mut replayed = 0;
    for (target, run) in TARGETS {
        let seeds = inputs(&fuzz_dir().join("seeds").join(target));
        assert!(seeds.len() >= 3, "{target}: only {} seeds", seeds.len());
        for file in seeds
            .iter()
            .chain(&inputs(&fuzz_dir().join("regressions").join(target)))
        {
            let data = fs::read(file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} panics", file.display());
            replayed += 1;
        }
    }
    assert!(replayed > 50, "only {replayed} inputs");
}

/// The seeds are inputs the targets take a long way: requests that decode and decide.
#[test]
fn the_request_seeds_are_requests() {
    for file in inputs(&fuzz_dir().join("seeds/rls_request")) {
        let request = RateLimitRequest::decode(fs::read(&file).unwrap().as_slice());
        let request = request.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!request.descriptors.is_empty(), "{}", file.display());
    }
    for file in inputs(&fuzz_dir().join("seeds/json_body")) {
        let text = fs::read_to_string(&file).unwrap();
        let request: Result<RateLimitRequest, _> = serde_json::from_str(&text);
        assert!(request.is_ok(), "{}: {request:?}", file.display());
    }
}

fn entries(pairs: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: pairs
            .iter()
            .map(|(key, value)| rate_limit_descriptor::Entry {
                key: (*key).into(),
                value: (*value).into(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

/// Requests for the rules of `fuzzing::DOMAINS`, one or several descriptors each.
fn seed_requests() -> Vec<(&'static str, RateLimitRequest)> {
    let request = |domain: &str, descriptors| RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    };
    let with_hits = |d: RateLimitDescriptor, hits| RateLimitDescriptor {
        hits_addend: Some(pbjson_types::UInt64Value { value: hits }),
        ..d
    };
    let overridden = RateLimitDescriptor {
        limit: Some(rate_limit_descriptor::RateLimitOverride {
            requests_per_unit: 2,
            unit: RateLimitUnit::Second as i32,
        }),
        ..entries(&[("anything", "x")])
    };
    let address = entries(&[("remote_address", "192.0.2.1")]);
    vec![
        ("address", request("fuzz", vec![address.clone()])),
        (
            "login",
            request(
                "fuzz",
                vec![
                    entries(&[("header_match", "login"), ("remote_address", "192.0.2.1")]),
                    address.clone(),
                ],
            ),
        ),
        (
            "paths",
            request(
                "fuzz",
                vec![
                    entries(&[("path", "/api/users")]),
                    entries(&[("path", "/free")]),
                    entries(&[("path", "/shadow")]),
                ],
            ),
        ),
        (
            "quota_bucket_metered",
            RateLimitRequest {
                hits_addend: 2,
                ..request(
                    "fuzz",
                    vec![
                        entries(&[("plan", "gold")]),
                        with_hits(entries(&[("bucket", "b")]), 3),
                        with_hits(entries(&[("metered", "m")]), 0),
                    ],
                )
            },
        ),
        ("override", request("fuzz", vec![overridden])),
        (
            "tiered",
            request(
                "api",
                vec![
                    entries(&[("api_key", "free_key")]),
                    entries(&[("remote_address", "192.0.2.9")]),
                ],
            ),
        ),
        (
            "unknown_key",
            request(
                "api",
                vec![
                    entries(&[("api_key", "nobody's")]),
                    entries(&[("remote_address", "192.0.2.9")]),
                ],
            ),
        ),
        ("unknown_domain", request("elsewhere", vec![address])),
    ]
}

/// Bodies of each admin call (the first byte picks it, as `fuzzing::admin_body` reads).
fn admin_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let bodies: [(&str, u8, &str); 6] = [
        (
            "health",
            0,
            r#"{"status":"DEGRADED","ttl_seconds":600,"updated_by":"oncall","reason":"db"}"#,
        ),
        ("health_normal", 0, r#"{"status":"NORMAL"}"#),
        (
            "new_user",
            1,
            r#"{"user_id":"acme","tier":"pro","api_keys":["acme-key-1","acme-key-2"]}"#,
        ),
        (
            "new_user_in",
            1,
            r#"{"user_id":"b","tier":"free","domain":"api"}"#,
        ),
        ("new_key", 2, r#"{"api_key":"free-key-2"}"#),
        ("new_tier", 3, r#"{"tier":"pro"}"#),
    ];
    bodies
        .into_iter()
        .map(|(name, which, body)| (name, [&[which], body.as_bytes()].concat()))
        .collect()
}

/// A Redis reply to `replies`: selector 0 (a decision, with its number of checks) or 1 (the
/// registry).
fn replies_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let tagged = |tag: &[u8], body: &str| [tag, body.as_bytes()].concat();
    let mut seeds = vec![
        (
            "decision_one",
            tagged(&[0, 1], "*4\r\n:1\r\n:0\r\n:4\r\n:60000\r\n"),
        ),
        (
            "decision_two",
            tagged(
                &[0, 2],
                "*7\r\n:0\r\n:1\r\n:0\r\n:999\r\n:0\r\n:5\r\n:1000\r\n",
            ),
        ),
        (
            "decision_error",
            tagged(&[0, 1], "-NOSCRIPT No matching script\r\n"),
        ),
        ("registry_ok", tagged(&[1], "+OK\r\n")),
        ("registry_taken", tagged(&[1], "$7\r\nTAKEN 2\r\n")),
        (
            "registry_users",
            tagged(&[1], "*1\r\n*3\r\n$1\r\nu\r\n$4\r\nfree\r\n$1\r\nk\r\n"),
        ),
        (
            "tier_mode",
            tagged(
                &[2],
                r#"{"status":"DEGRADED","since":1700000000,"expires_ms":1700000600000,"updated_by":"oncall","reason":"db"}"#,
            ),
        ),
        (
            "tier_mode_default",
            tagged(&[2], r#"{"status":"NORMAL","since":0,"expires_ms":null}"#),
        ),
    ];
    seeds.push(("xds", [&[3u8][..], &xds_response()].concat()));
    seeds
}

/// An xDS response with one RateLimitConfig resource of nested, shadow and quota rules.
fn xds_response() -> Vec<u8> {
    let limit = |unit: XdsUnit, requests_per_unit| RateLimitPolicy {
        unit: unit as i32,
        requests_per_unit,
        ..RateLimitPolicy::default()
    };
    let config = RateLimitConfig {
        name: "edge-config".into(),
        domain: "edge".into(),
        descriptors: vec![
            XdsDescriptor {
                key: "user".into(),
                rate_limit: Some(limit(XdsUnit::Minute, 5)),
                ..XdsDescriptor::default()
            },
            XdsDescriptor {
                key: "path".into(),
                value: "/a".into(),
                shadow_mode: true,
                descriptors: vec![XdsDescriptor {
                    key: "user".into(),
                    quota_mode: true,
                    rate_limit: Some(limit(XdsUnit::Hour, 1)),
                    ..XdsDescriptor::default()
                }],
                ..XdsDescriptor::default()
            },
        ],
    };
    DiscoveryResponse {
        version_info: "1".into(),
        type_url: floodgate::xds::RATE_LIMIT_CONFIG_TYPE.into(),
        nonce: "n".into(),
        resources: vec![pbjson_types::Any {
            type_url: floodgate::xds::RATE_LIMIT_CONFIG_TYPE.into(),
            value: config.encode_to_vec().into(),
        }],
        ..DiscoveryResponse::default()
    }
    .encode_to_vec()
}

/// Writes the generated seeds (requests, JSON bodies, admin bodies, replies) and the config
/// seeds (the YAML fixtures and examples) under tests/fuzz/seeds.
#[test]
#[ignore = "writes the seed corpus; run by hand after changing it"]
fn write_seeds() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = fuzz_dir().join("seeds").join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), data).unwrap();
    };
    for (name, request) in seed_requests() {
        write("rls_request", name, &request.encode_to_vec());
        let json = serde_json::to_string(&request).unwrap();
        write("json_body", &format!("{name}.json"), json.as_bytes());
    }
    for (name, data) in admin_seeds() {
        write("admin_body", name, &data);
    }
    for (name, data) in replies_seeds() {
        write("replies", name, &data);
    }
    write_config_seeds(&write);
}

/// The YAML files of the repository (fixtures, examples, the fuzz domains) as config seeds,
/// and two files of one domain (NUL-separated) to merge.
fn write_config_seeds(write: &dyn Fn(&str, &str, &[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = [
        "tests/fixtures",
        "tests/fixtures/reference",
        "tests/fixtures/reference/readme",
        "tests/fixtures/reference_service",
        "tests/fixtures/reference_service/readme",
        "examples/config",
        "examples/tiers",
    ];
    for dir in dirs {
        for file in inputs(&root.join(dir)) {
            if file.extension().is_some_and(|e| e == "yaml") {
                let parent = dir.strip_prefix("tests/").unwrap_or(dir).replace('/', "_");
                let file_name = file.file_name().unwrap().to_string_lossy();
                write(
                    "config",
                    &format!("{parent}_{file_name}"),
                    &fs::read(&file).unwrap(),
                );
            }
        }
    }
    for (i, domain) in fuzzing::DOMAINS.iter().enumerate() {
        write("config", &format!("fuzz_domain{i}.yaml"), domain.as_bytes());
    }
    let merged = [
        fs::read(root.join("tests/fixtures/reference/merge_domain_key1.yaml")).unwrap(),
        fs::read(root.join("tests/fixtures/reference/merge_domain_key2.yaml")).unwrap(),
    ]
    .join(&b'\0');
    write("config", "merge_two_files", &merged);
}
