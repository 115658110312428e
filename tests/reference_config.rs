//! envoyproxy/ratelimit's configuration tests (test/config/config_test.go and its YAML files)
//! and its README's configuration examples, made Floodgate's own and run black-box against the
//! real binary.
//!
//! The fixtures in tests/fixtures/reference/ are Floodgate's renderings of the reference's test
//! files (same names, same domains, keys, values and limits, so the reference's expected values
//! apply); tests/fixtures/reference/readme/ holds the README's Examples 1-11.
//!
//! - `check-config` accepts the files the reference loads and refuses the ones it panics on,
//!   naming the file and the problem, alone and in the two-file cases (duplicate domain, domain
//!   merging).
//! - `serve`, on the memory store and on a real redis-server, gives each descriptor the limit
//!   the reference's `GetLimit` gives it: `requests_per_unit` and `unit` in `current_limit`, no
//!   `current_limit` when nothing matches, `limit_remaining` 2³²−1 for unlimited rules. Where the
//!   reference's tests imply counting (separate or shared counters, overrides, shadow mode), the
//!   counts are checked on limits per minute, hour or day, after waiting (by polling the clock)
//!   until the window has some time left; second limits are only checked for their
//!   `current_limit`, or with a single request whose hits exceed the limit, which is over in any
//!   window.

mod support;

use std::ffi::OsStr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floodgate::pb::rate_limit_response::rate_limit::Unit;
use floodgate::pb::rate_limit_response::{Code, DescriptorStatus};
use floodgate::pb::rate_limit_service_client::RateLimitServiceClient;
use floodgate::pb::{
    RateLimitDescriptor, RateLimitRequest, RateLimitResponse, RateLimitUnit, rate_limit_descriptor,
};
use serde_json::{Value, json};
use support::process::Floodgate;
use support::{RedisServer, descriptor, temp_dir, wait_for};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_floodgate");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reference");

/// The path of the fixture `name` (relative to tests/fixtures/reference/).
fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

/// One descriptor's entries.
type Entries<'a> = &'a [(&'a str, &'a str)];

// ---------------------------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------------------------

/// Files the reference loads without complaint and Floodgate's snapshot already reads.
const ACCEPTED: &[&str] = &[
    "basic_config.yaml",
    "duplicate_domain.yaml",
    "merge_domain_key1.yaml",
    "merge_domain_key2.yaml",
    "shadowmode_config.yaml",
    "share_threshold.yaml",
    "wildcard.yaml",
    "readme/example1.yaml",
    "readme/example2.yaml",
    "readme/example3.yaml",
    "readme/example4_flat.yaml",
    "readme/example4_nested.yaml",
    "readme/example5.yaml",
    "readme/example6.yaml",
    "readme/example8.yaml",
    "readme/example9.yaml",
    "readme/example10.yaml",
    "readme/example10_wildcard.yaml",
    "readme/example11.yaml",
    "readme/example11_metrics.yaml",
];

/// Files the reference loads that use descriptor `metadata` or `replaces` inside `rate_limit`.
const ACCEPTED_WITH_METADATA_OR_REPLACES: &[&str] = &["metadata.yaml", "readme/example7.yaml"];

/// A refused file and what its message must say: every group must match, each group by any one
/// of its fragments (Floodgate's wording or the reference's).
type Refusal = (&'static str, &'static [&'static [&'static str]]);

/// The files the reference refuses (its `expectConfigPanic` tests), but for `replaces`.
const REFUSED: &[Refusal] = &[
    // TestBadLimitUnit: "invalid rate limit unit 'foo'"
    (
        "bad_limit_unit.yaml",
        &[&["unknown unit 'foo'", "invalid rate limit unit 'foo'"]],
    ),
    // TestBadYaml: "error loading config file: yaml: line 2: found unexpected end of stream"
    ("bad_yaml.yaml", &[&["unexpected end of stream"]]),
    // TestDuplicateKey: "duplicate descriptor composite key 'test-domain.key1_value1'"
    (
        "duplicate_key.yaml",
        &[&["duplicate descriptor"], &["key1"], &["value1"]],
    ),
    // TestEmptyDomain: "config file cannot have empty domain"
    ("empty_domain.yaml", &[&["empty 'domain'", "empty domain"]]),
    // TestEmptyKey: "descriptor has empty key"
    ("empty_key.yaml", &[&["empty 'key'", "empty key"]]),
    // TestMisspelledKey: "config error, unknown key 'ratelimit'"
    (
        "misspelled_key.yaml",
        &[&["unknown field `ratelimit`", "unknown key 'ratelimit'"]],
    ),
    // TestMisspelledKey: "config error, unknown key 'requestsperunit'"
    (
        "misspelled_key2.yaml",
        &[&[
            "unknown field `requestsperunit`",
            "unknown key 'requestsperunit'",
        ]],
    ),
    // TestNonMapList: "config error, yaml file contains list of type other than map: a"
    (
        "non_map_list.yaml",
        &[&[
            "invalid type: string \"a\", expected struct",
            "list of type other than map: a",
        ]],
    ),
    // TestNonStringKey: "config error, key is not of type string: 0.25"
    (
        "non_string_key.yaml",
        &[&["unknown field `0.25`", "key is not of type string: 0.25"]],
    ),
    // TestUnlimitedWithRateLimitUnit: "should not specify rate limit unit when unlimited"
    (
        "unlimited_with_unit.yaml",
        &[&["unlimited"], &["cannot", "should not"], &["unit"]],
    ),
];

/// The reference's `replaces` refusals (with `replaces` inside `rate_limit`).
const REFUSED_REPLACES: &[Refusal] = &[
    // TestReplacesSelf: "replaces should not contain name of same descriptor"
    (
        "replaces_self.yaml",
        &[&["replaces"], &["self"], &["itself", "its own", "same"]],
    ),
    // TestReplacesEmpty: "should not have an empty replaces entry"
    ("replaces_empty.yaml", &[&["replaces"], &["empty"]]),
];

/// Runs `floodgate check-config <args>`; returns whether it succeeded and its output.
fn check_config(args: &[&OsStr]) -> (bool, String) {
    let output = Command::new(BIN)
        .arg("check-config")
        .args(args)
        .output()
        .expect("run floodgate check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn assert_accepted(name: &str) {
    let path = fixture(name);
    let (ok, text) = check_config(&[OsStr::new(&path)]);
    assert!(ok, "check-config refused {name}:\n{text}");
}

fn assert_refused(args: &[&OsStr], file: &str, groups: &[&[&str]]) {
    let (ok, text) = check_config(args);
    assert!(
        !ok,
        "check-config accepted {args:?}, expected a refusal:\n{text}"
    );
    assert!(text.contains(file), "the message names {file}:\n{text}");
    for group in groups {
        assert!(
            group.iter().any(|fragment| text.contains(fragment)),
            "the message for {file} says one of {group:?}:\n{text}"
        );
    }
}

#[test]
fn check_config_accepts_what_the_reference_loads() {
    for name in ACCEPTED {
        assert_accepted(name);
    }
}

/// TestMetadata loads metadata.yaml; README Example 7 puts `replaces` inside `rate_limit`.
#[test]
fn check_config_accepts_metadata_and_replaces_inside_rate_limit() {
    for name in ACCEPTED_WITH_METADATA_OR_REPLACES {
        assert_accepted(name);
    }
}

#[test]
fn check_config_refuses_what_the_reference_refuses() {
    for (name, groups) in REFUSED {
        let path = fixture(name);
        assert_refused(&[OsStr::new(&path)], name, groups);
    }
}

#[test]
fn check_config_refuses_bad_replaces() {
    for (name, groups) in REFUSED_REPLACES {
        let path = fixture(name);
        assert_refused(&[OsStr::new(&path)], name, groups);
    }
}

/// Every fixture is checked by one of the tests above, so none is left untested.
#[test]
fn every_fixture_has_an_expectation() {
    let mut on_disk = Vec::new();
    for dir in ["", "readme/"] {
        for entry in std::fs::read_dir(fixture(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".yaml") {
                on_disk.push(format!("{dir}{name}"));
            }
        }
    }
    on_disk.sort();
    let mut expected: Vec<String> = ACCEPTED
        .iter()
        .chain(ACCEPTED_WITH_METADATA_OR_REPLACES)
        .copied()
        .chain(
            REFUSED
                .iter()
                .chain(REFUSED_REPLACES)
                .map(|(name, _)| *name),
        )
        .map(str::to_owned)
        .collect();
    expected.sort();
    assert_eq!(on_disk, expected);
}

/// A temporary directory holding copies of fixtures, under the given file names.
fn config_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = temp_dir("reference-config");
    for (fixture_name, as_name) in files {
        std::fs::copy(fixture(fixture_name), dir.path().join(as_name)).unwrap();
    }
    dir
}

/// TestDuplicateDomain (basic_config + duplicate_domain), and the merge files, without merging.
#[test]
fn check_config_refuses_a_domain_defined_in_two_files() {
    let dir = config_dir(&[
        ("basic_config.yaml", "basic_config.yaml"),
        ("duplicate_domain.yaml", "duplicate_domain.yaml"),
    ]);
    // "duplicate_domain.yaml: duplicate domain 'test-domain' in config file"
    assert_refused(
        &[dir.path().as_os_str()],
        "duplicate_domain.yaml",
        &[&["duplicate domain 'test-domain'"]],
    );

    let dir = config_dir(&[
        ("merge_domain_key1.yaml", "merge_domain_key1.yaml"),
        ("merge_domain_key2.yaml", "merge_domain_key2.yaml"),
    ]);
    assert_refused(
        &[dir.path().as_os_str()],
        "merge_domain_key2.yaml",
        &[&["duplicate domain 'test-domain'"]],
    );
}

/// TestDomainMerge and TestDuplicateKeyDomainMerge: with `--merge-domain-config` the two halves
/// of test-domain are one domain, and the same file loaded twice repeats key1=value1.
#[test]
fn check_config_merges_a_domain_across_files_when_asked() {
    let merge = OsStr::new("--merge-domain-config");
    let dir = config_dir(&[
        ("merge_domain_key1.yaml", "merge_domain_key1.yaml"),
        ("merge_domain_key2.yaml", "merge_domain_key2.yaml"),
    ]);
    let (ok, text) = check_config(&[merge, dir.path().as_os_str()]);
    assert!(ok, "the merge files are one domain when merging:\n{text}");
    assert!(text.contains("test-domain"), "{text}");

    // The second file of TestDuplicateDomain adds nothing, so it merges too.
    let dir = config_dir(&[
        ("basic_config.yaml", "basic_config.yaml"),
        ("duplicate_domain.yaml", "duplicate_domain.yaml"),
    ]);
    let (ok, text) = check_config(&[merge, dir.path().as_os_str()]);
    assert!(ok, "an empty second half merges:\n{text}");

    // "merge_domain_key1.yaml: duplicate descriptor composite key 'test-domain.key1_value1'"
    let dir = config_dir(&[
        ("merge_domain_key1.yaml", "merge_domain_key1.yaml"),
        ("merge_domain_key1.yaml", "merge_domain_key1_again.yaml"),
    ]);
    assert_refused(
        &[merge, dir.path().as_os_str()],
        "merge_domain_key1",
        &[&["duplicate descriptor"], &["key1"], &["value1"]],
    );
}

// ---------------------------------------------------------------------------------------------
// serve: the harness shared by the memory and Redis runs
// ---------------------------------------------------------------------------------------------

/// The counter store a matching test runs on.
#[derive(Debug, Clone, Copy)]
enum Store {
    Memory,
    Redis,
}

/// A running `floodgate serve` and a client; the Redis server (if any) outlives both.
struct Served {
    _floodgate: Floodgate,
    client: RateLimitServiceClient<Channel>,
    _redis: Option<RedisServer>,
}

impl Store {
    /// Serves `config` (a file or directory) with `extra` flags, or `None` when this is a Redis
    /// run and redis-server is not installed (skipped with a message; a failure under CI).
    async fn serve(self, config: &str, extra: &[&str]) -> Option<Served> {
        let redis = match self {
            Store::Memory => None,
            Store::Redis => Some(RedisServer::start()?),
        };
        let url = redis.as_ref().map(RedisServer::url);
        let mut args: Vec<&str> = Vec::new();
        if let Some(url) = &url {
            args.extend(["--store", "redis", "--redis-url", url]);
            // A busy test machine must not turn a slow answer into UNAVAILABLE.
            args.extend(["--redis-timeout", "2s"]);
        }
        args.extend_from_slice(extra);
        let floodgate = Floodgate::start(config, &args).await;
        let client = floodgate.client().await;
        Some(Served {
            _floodgate: floodgate,
            client,
            _redis: redis,
        })
    }
}

impl Served {
    async fn send(&mut self, request: RateLimitRequest) -> RateLimitResponse {
        let count = request.descriptors.len();
        let response = self
            .client
            .should_rate_limit(request)
            .await
            .unwrap_or_else(|status| panic!("ShouldRateLimit failed: {status}"))
            .into_inner();
        assert_eq!(response.statuses.len(), count, "one status per descriptor");
        response
    }

    /// One request for `domain` with one descriptor per entry list, each taking `hits` hits.
    async fn ask(
        &mut self,
        domain: &str,
        descriptors: &[Entries<'_>],
        hits: u32,
    ) -> RateLimitResponse {
        let mut request = support::request(domain, descriptors);
        request.hits_addend = hits;
        self.send(request).await
    }

    /// The status of a one-descriptor request taking `hits` hits.
    async fn status(&mut self, domain: &str, entries: Entries<'_>, hits: u32) -> DescriptorStatus {
        self.ask(domain, &[entries], hits).await.statuses.remove(0)
    }

    /// The status of a one-descriptor request whose descriptor carries a limit override.
    async fn status_with_override(
        &mut self,
        domain: &str,
        entries: Entries<'_>,
        requests_per_unit: u32,
        unit: RateLimitUnit,
    ) -> DescriptorStatus {
        let with_override = RateLimitDescriptor {
            limit: Some(rate_limit_descriptor::RateLimitOverride {
                requests_per_unit,
                unit: unit as i32,
            }),
            ..descriptor(entries)
        };
        let request = RateLimitRequest {
            domain: domain.to_owned(),
            descriptors: vec![with_override],
            hits_addend: 0,
        };
        self.send(request).await.statuses.remove(0)
    }

    /// Sends each case as its own one-hit request and checks the limit it gets.
    async fn expect(&mut self, domain: &str, cases: &[(Entries<'_>, Want)]) {
        for (entries, want) in cases {
            let status = self.status(domain, entries, 1).await;
            want.check(&status, &format!("{domain} {entries:?}"));
        }
    }

    /// Sends one request of `hits` hits and checks its code and remaining count.
    async fn expect_count(
        &mut self,
        domain: &str,
        entries: Entries<'_>,
        hits: u32,
        code: Code,
        remaining: u32,
    ) {
        let response = self.ask(domain, &[entries], hits).await;
        let status = &response.statuses[0];
        let what = format!("{domain} {entries:?} (+{hits})");
        assert_eq!(response.overall_code(), code, "overall code for {what}");
        assert_eq!(status.code(), code, "code for {what}");
        assert_eq!(status.limit_remaining, remaining, "remaining for {what}");
        assert!(status.current_limit.is_some(), "a limit for {what}");
    }
}

/// The limit the reference's `GetLimit` gives a descriptor.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// This many per unit, without a name.
    Limit(u32, Unit),
    /// This many per unit, with this name.
    Named(u32, Unit, &'static str),
    /// No rule: OK, no `current_limit`, nothing remaining.
    NoLimit,
    /// An unlimited rule: OK, no `current_limit`, 2³²−1 remaining.
    Unlimited,
}

impl Want {
    #[track_caller]
    fn check(self, status: &DescriptorStatus, what: &str) {
        match self {
            Want::Limit(requests_per_unit, unit) => {
                assert_limit(status, requests_per_unit, unit, "", what);
                assert_eq!(status.code(), Code::Ok, "{what}");
            }
            Want::Named(requests_per_unit, unit, name) => {
                assert_limit(status, requests_per_unit, unit, name, what);
                assert_eq!(status.code(), Code::Ok, "{what}");
            }
            Want::NoLimit => {
                assert_eq!(status.code(), Code::Ok, "{what}");
                assert_eq!(status.current_limit, None, "no limit for {what}");
                assert_eq!(status.limit_remaining, 0, "{what}");
            }
            Want::Unlimited => {
                assert_eq!(status.code(), Code::Ok, "{what}");
                assert_eq!(status.current_limit, None, "unlimited: no limit for {what}");
                assert_eq!(status.limit_remaining, u32::MAX, "unlimited {what}");
            }
        }
    }
}

#[track_caller]
fn assert_limit(
    status: &DescriptorStatus,
    requests_per_unit: u32,
    unit: Unit,
    name: &str,
    what: &str,
) {
    let limit = status
        .current_limit
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: expected a limit of {requests_per_unit} per {unit:?}"));
    assert_eq!(
        (limit.requests_per_unit, limit.unit(), limit.name.as_str()),
        (requests_per_unit, unit, name),
        "limit of {what}"
    );
}

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits (polling the clock) until the current window of `window_secs` has at least 15 seconds
/// left, so that a counting sequence does not straddle a window edge.
async fn away_from_window_edge(window_secs: u64) {
    wait_for(
        "a window with time left",
        Duration::from_secs(30),
        || async { now_secs() % window_secs < window_secs - 15 },
    )
    .await;
}

const MINUTE: u64 = 60;
const HOUR: u64 = 3_600;

/// Generates, for each scenario `name(store)`, the tests `memory::name` and `redis::name`.
macro_rules! on_each_store {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Store::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Store::Redis).await;
                }
            )*
        }
    };
}

on_each_store!(
    basic_config_limits,
    basic_config_counts,
    limit_override,
    shadow_mode,
    wildcards,
    share_threshold_limits,
    share_threshold_counters,
    domain_merge,
    metadata_loads_and_limits,
    metadata_in_dynamic_metadata,
    duration_until_reset_in_whole_seconds,
    readme_example_1,
    readme_example_2,
    readme_example_3,
    readme_example_4,
    readme_example_5,
    readme_example_6,
    readme_example_7_replaces,
    readme_example_8,
    readme_example_9,
    readme_example_10,
    readme_example_11,
);

// ---------------------------------------------------------------------------------------------
// The reference's GetLimit tests
// ---------------------------------------------------------------------------------------------

/// TestBasicConfig: which descriptor gets which limit.
async fn basic_config_limits(store: Store) {
    let Some(mut fg) = store.serve(&fixture("basic_config.yaml"), &[]).await else {
        return;
    };
    // An unknown domain limits nothing.
    fg.expect("foo_domain", &[(&[("key1", "value1")], Want::NoLimit)])
        .await;
    fg.expect(
        "test-domain",
        &[
            // key1 has only key1=value1, which has no limit of its own.
            (&[("key1", "something")], Want::NoLimit),
            (&[("key1", "value1")], Want::NoLimit),
            // key2=value2 has no children; key5=value5's only child is subkey5=subvalue5.
            (&[("key2", "value2"), ("subkey", "subvalue")], Want::NoLimit),
            (
                &[("key5", "value5"), ("subkey5", "subvalue")],
                Want::NoLimit,
            ),
            (
                &[("key1", "value1"), ("subkey1", "something")],
                Want::Limit(5, Unit::Second),
            ),
            (
                &[("key1", "value1"), ("subkey1", "subvalue1")],
                Want::Limit(10, Unit::Second),
            ),
            (&[("key2", "something")], Want::Limit(20, Unit::Minute)),
            (&[("key2", "value2")], Want::Limit(30, Unit::Minute)),
            // Listed without a limit: exempt, and the key-only rule does not step in.
            (&[("key2", "value3")], Want::NoLimit),
            (&[("key3", "foo")], Want::Limit(1, Unit::Hour)),
            (
                &[("key4", "foo")],
                Want::Named(1, Unit::Day, "key4_rate_limit"),
            ),
            (&[("key5", "value5")], Want::Limit(15, Unit::Day)),
            (
                &[("key5", "value5"), ("subkey5", "subvalue5")],
                Want::Limit(25, Unit::Day),
            ),
            (&[("key6", "foo")], Want::Unlimited),
            (
                &[("key7", "unspecified_value")],
                Want::Limit(70, Unit::Minute),
            ),
            (&[("key7", "another_value")], Want::Limit(70, Unit::Minute)),
        ],
    )
    .await;
    // Several descriptors in one request: one status each, in request order.
    let response = fg
        .ask(
            "test-domain",
            &[
                &[("key2", "value3")],
                &[("key4", "bar")],
                &[("key6", "bar")],
            ],
            1,
        )
        .await;
    Want::NoLimit.check(&response.statuses[0], "key2=value3 first");
    Want::Named(1, Unit::Day, "key4_rate_limit").check(&response.statuses[1], "key4 second");
    Want::Unlimited.check(&response.statuses[2], "key6 third");
}

/// TestBasicConfig's rules counting: a key-only rule counts each value apart; a limit of one
/// admits one request; unlimited never runs out.
async fn basic_config_counts(store: Store) {
    let Some(mut fg) = store.serve(&fixture("basic_config.yaml"), &[]).await else {
        return;
    };
    away_from_window_edge(MINUTE).await;
    let d = "test-domain";
    fg.expect_count(d, &[("key2", "a")], 1, Code::Ok, 19).await;
    fg.expect_count(d, &[("key2", "a")], 1, Code::Ok, 18).await;
    fg.expect_count(d, &[("key2", "a")], 1, Code::Ok, 17).await;
    fg.expect_count(d, &[("key2", "b")], 1, Code::Ok, 19).await;
    fg.expect_count(d, &[("key2", "value2")], 1, Code::Ok, 29)
        .await;
    fg.expect_count(d, &[("key2", "value2")], 29, Code::Ok, 0)
        .await;
    fg.expect_count(d, &[("key2", "value2")], 1, Code::OverLimit, 0)
        .await;
    fg.expect_count(d, &[("key7", "x")], 1, Code::Ok, 69).await;
    fg.expect_count(d, &[("key7", "x")], 1, Code::Ok, 68).await;
    fg.expect_count(d, &[("key7", "y")], 1, Code::Ok, 69).await;

    fg.expect_count(d, &[("key3", "foo")], 1, Code::Ok, 0).await;
    let over = fg.status(d, &[("key3", "foo")], 1).await;
    assert_eq!(over.code(), Code::OverLimit);
    assert_limit(&over, 1, Unit::Hour, "", "key3 over its limit");
    assert_eq!(over.limit_remaining, 0);
    fg.expect_count(d, &[("key3", "bar")], 1, Code::Ok, 0).await;

    fg.expect_count(d, &[("key4", "foo")], 1, Code::Ok, 0).await;
    let over = fg.status(d, &[("key4", "foo")], 1).await;
    assert_eq!(over.code(), Code::OverLimit);
    assert_limit(
        &over,
        1,
        Unit::Day,
        "key4_rate_limit",
        "key4 over its limit",
    );

    for _ in 0..3 {
        let status = fg.status(d, &[("key6", "foo")], 1_000).await;
        Want::Unlimited.check(&status, "key6, however many hits");
    }
}

/// TestConfigLimitOverride: a descriptor's `limit` (from Envoy's route) replaces the configured
/// limit, in a known domain only; each override value counts on its own.
async fn limit_override(store: Store) {
    let Some(mut fg) = store.serve(&fixture("basic_config.yaml"), &[]).await else {
        return;
    };
    away_from_window_edge(HOUR).await;
    let something: Entries<'_> = &[("key1", "value1"), ("subkey1", "something")];
    let status = fg
        .status_with_override("foo_domain", something, 10, RateLimitUnit::Day)
        .await;
    Want::NoLimit.check(&status, "override in an unknown domain");

    for remaining in [9, 8, 7] {
        let status = fg
            .status_with_override("test-domain", something, 10, RateLimitUnit::Day)
            .await;
        assert_limit(&status, 10, Unit::Day, "", "overridden to 10 a day");
        assert_eq!(status.code(), Code::Ok);
        assert_eq!(status.limit_remaining, remaining, "10 a day");
    }
    let status = fg
        .status_with_override("test-domain", something, 42, RateLimitUnit::Hour)
        .await;
    assert_limit(&status, 42, Unit::Hour, "", "overridden to 42 an hour");
    assert_eq!(status.code(), Code::Ok);

    // "Different value creates a different counter".
    let something_else: Entries<'_> = &[("key1", "value1"), ("subkey1", "something_else")];
    let status = fg
        .status_with_override("test-domain", something_else, 42, RateLimitUnit::Hour)
        .await;
    assert_limit(&status, 42, Unit::Hour, "", "another value, 42 an hour");
    assert_eq!(status.limit_remaining, 41);

    // The override comes before matching (config_impl.go's GetLimit): it also limits
    // descriptors that match nothing, are exempt or unlimited.
    let unmatched: [Entries<'_>; 3] = [
        &[("nothing", "here")],
        &[("key2", "value3")],
        &[("key6", "foo")],
    ];
    for entries in unmatched {
        let status = fg
            .status_with_override("test-domain", entries, 10, RateLimitUnit::Day)
            .await;
        assert_limit(
            &status,
            10,
            Unit::Day,
            "",
            &format!("override of {entries:?}"),
        );
        assert_eq!(status.limit_remaining, 9, "{entries:?}");
    }
}

/// TestShadowModeConfig: shadow rules report OK even when over; the others deny. One request
/// with more hits than the limit is over in any window, so second limits are safe here.
async fn shadow_mode(store: Store) {
    let Some(mut fg) = store.serve(&fixture("shadowmode_config.yaml"), &[]).await else {
        return;
    };
    // The override at the end counts two requests against one day window.
    away_from_window_edge(MINUTE).await;
    let d = "test-domain";
    let cases: &[(Entries<'_>, u32, Unit, u32, Code)] = &[
        (
            &[("key1", "value1"), ("subkey1", "something")],
            5,
            Unit::Second,
            6,
            Code::OverLimit,
        ),
        (
            &[("key1", "value1"), ("subkey1", "subvalue1")],
            10,
            Unit::Second,
            11,
            Code::Ok,
        ),
        (&[("key2", "something")], 20, Unit::Minute, 21, Code::Ok),
        (&[("key2", "value2")], 30, Unit::Minute, 31, Code::OverLimit),
    ];
    for (entries, requests_per_unit, unit, hits, code) in cases {
        let what = format!("{entries:?} +{hits}");
        let response = fg.ask(d, &[entries], *hits).await;
        assert_eq!(response.overall_code(), *code, "overall for {what}");
        let status = &response.statuses[0];
        assert_eq!(status.code(), *code, "{what}");
        assert_limit(status, *requests_per_unit, *unit, "", &what);
        assert_eq!(
            status.limit_remaining, 0,
            "over the limit: nothing left, {what}"
        );
    }
    // A limit override is never in shadow mode (config_impl.go), even on a shadow rule.
    let status = fg
        .status_with_override(d, &[("key2", "other")], 1, RateLimitUnit::Day)
        .await;
    assert_eq!(status.code(), Code::Ok);
    let status = fg
        .status_with_override(d, &[("key2", "other")], 1, RateLimitUnit::Day)
        .await;
    assert_eq!(
        status.code(),
        Code::OverLimit,
        "an override is not shadowed"
    );
}

/// TestWildcardConfig: trailing, middle and repeated `*`; plain values match only exactly; and
/// (the reference's cache keys) a wildcard without share_threshold counts each value apart.
async fn wildcards(store: Store) {
    let Some(mut fg) = store.serve(&fixture("wildcard.yaml"), &[]).await else {
        return;
    };
    let d = "test-domain";
    let twenty = Want::Limit(20, Unit::Minute);
    let ten = Want::Limit(10, Unit::Minute);
    fg.expect(
        d,
        &[
            (&[("noVal", "foo1")], twenty),
            (&[("noVal", "foo2")], twenty),
            (&[("wild", "foo1")], twenty),
            (&[("wild", "foo2")], twenty),
            (&[("wild", "foo")], twenty),
            (&[("nestedWild", "val1"), ("wild", "goo2")], twenty),
            (&[("wild", "bar")], Want::NoLimit),
            (&[("nestedWild", "val1"), ("wild", "foo1")], Want::NoLimit),
            (&[("noWild", "foo1")], Want::NoLimit),
            (&[("noWild", "foo")], twenty),
            (&[("midWild", "barab")], twenty),
            (&[("midWild", "bar123b")], twenty),
            (&[("midWild", "barb")], twenty),
            (&[("midWild", "bara")], Want::NoLimit),
            (&[("midWild", "xbarb")], Want::NoLimit),
            (&[("multiWild", "foo123bar456baz")], ten),
            (&[("multiWild", "foobarbaz")], ten),
            (&[("multiWild", "foo123baz")], Want::NoLimit),
            (&[("multiWild", "bar456baz")], Want::NoLimit),
        ],
    )
    .await;

    away_from_window_edge(MINUTE).await;
    fg.expect_count(d, &[("wild", "fooA")], 20, Code::Ok, 0)
        .await;
    fg.expect_count(d, &[("wild", "fooA")], 1, Code::OverLimit, 0)
        .await;
    fg.expect_count(d, &[("wild", "fooB")], 1, Code::Ok, 19)
        .await;
    fg.expect_count(d, &[("midWild", "barAb")], 20, Code::Ok, 0)
        .await;
    fg.expect_count(d, &[("midWild", "barBb")], 1, Code::Ok, 19)
        .await;
    fg.expect_count(d, &[("noVal", "x")], 2, Code::Ok, 18).await;
    fg.expect_count(d, &[("noVal", "y")], 1, Code::Ok, 19).await;
}

/// TestShareThreshold: which descriptor gets which limit.
async fn share_threshold_limits(store: Store) {
    let Some(mut fg) = store.serve(&fixture("share_threshold.yaml"), &[]).await else {
        return;
    };
    let m = |n| Want::Limit(n, Unit::Minute);
    fg.expect(
        "test-domain",
        &[
            (&[("files", "files/a.pdf")], m(100)),
            (&[("files", "files/b.csv")], m(100)),
            (&[("files", "files/c.txt")], m(100)),
            (&[("route", "api/v1"), ("method", "GET")], m(60)),
            (&[("service", "svc/user"), ("endpoint", "get")], m(80)),
            (
                &[("nested", "parent"), ("files", "nested/file1.txt")],
                m(200),
            ),
            (
                &[("files", "top/file1.txt"), ("files", "nested/file1.txt")],
                m(300),
            ),
            (
                &[("path", "path/foo"), ("file", "file/doc1"), ("type", "pdf")],
                m(120),
            ),
            (
                &[
                    ("user", "user/alice"),
                    ("resource", "res/file1"),
                    ("action", "read"),
                ],
                m(150),
            ),
            (&[("file", "test1")], m(50)),
            (&[("file", "test2")], m(100)),
            (&[("file", "test23")], m(100)),
            (&[("file", "test123")], m(100)),
            (&[("midpath", "/api/v1")], m(100)),
            (&[("midpath", "/api-beta-v1")], m(100)),
            (&[("midpath", "/apiXYZv1")], m(100)),
            (&[("midpath", "/api/v2")], Want::NoLimit),
            (&[("multiroute", "svcAepBrpc")], m(50)),
            (&[("multiroute", "svcXXXepYYYrpc")], m(50)),
            (&[("multiroute", "svceprpc")], m(50)),
            (&[("multiroute", "svcABCrpc")], Want::NoLimit),
            (&[("midroute", "/api/v2")], m(80)),
            (&[("midroute", "/api-beta-v2")], m(80)),
            (&[("tenant", "t1prod"), ("resource", "resAv2")], m(60)),
            (&[("tenant", "t99prod"), ("resource", "resBBBv2")], m(60)),
        ],
    )
    .await;
}

/// TestShareThreshold's counters: the values matching one share_threshold wildcard share one
/// counter (exhaust it with one value and another is over); an explicit value beside it and a
/// wildcard without share_threshold count on their own.
async fn share_threshold_counters(store: Store) {
    let Some(mut fg) = store.serve(&fixture("share_threshold.yaml"), &[]).await else {
        return;
    };
    away_from_window_edge(MINUTE).await;
    let d = "test-domain";
    fg.expect_count(d, &[("files", "files/a.pdf")], 99, Code::Ok, 1)
        .await;
    fg.expect_count(d, &[("files", "files/b.csv")], 1, Code::Ok, 0)
        .await;
    fg.expect_count(d, &[("files", "files/c.txt")], 1, Code::OverLimit, 0)
        .await;

    fg.expect_count(d, &[("file", "test2")], 100, Code::Ok, 0)
        .await;
    fg.expect_count(d, &[("file", "test23")], 1, Code::OverLimit, 0)
        .await;
    fg.expect_count(d, &[("file", "test1")], 1, Code::Ok, 49)
        .await;

    fg.expect_count(d, &[("midpath", "/api/v1")], 100, Code::Ok, 0)
        .await;
    fg.expect_count(d, &[("midpath", "/apiXYZv1")], 1, Code::OverLimit, 0)
        .await;
    fg.expect_count(d, &[("multiroute", "svcAepBrpc")], 50, Code::Ok, 0)
        .await;
    fg.expect_count(d, &[("multiroute", "svceprpc")], 1, Code::OverLimit, 0)
        .await;

    let nested = |tenant, resource| [("tenant", tenant), ("resource", resource)];
    fg.expect_count(d, &nested("t1prod", "resAv2"), 60, Code::Ok, 0)
        .await;
    fg.expect_count(d, &nested("t99prod", "resBBBv2"), 1, Code::OverLimit, 0)
        .await;

    // path/* shares, its child file/* does not.
    let mixed = |path, file| [("path", path), ("file", file), ("type", "pdf")];
    fg.expect_count(d, &mixed("path/foo", "file/doc1"), 120, Code::Ok, 0)
        .await;
    fg.expect_count(d, &mixed("path/bar", "file/doc1"), 1, Code::OverLimit, 0)
        .await;
    fg.expect_count(d, &mixed("path/foo", "file/doc2"), 1, Code::Ok, 119)
        .await;

    // Both levels share; the key-only leaf still counts each of its values apart.
    let both =
        |user, resource, action| [("user", user), ("resource", resource), ("action", action)];
    fg.expect_count(
        d,
        &both("user/alice", "res/file1", "read"),
        150,
        Code::Ok,
        0,
    )
    .await;
    fg.expect_count(
        d,
        &both("user/bob", "res/file2", "read"),
        1,
        Code::OverLimit,
        0,
    )
    .await;
    fg.expect_count(d, &both("user/bob", "res/file2", "write"), 1, Code::Ok, 149)
        .await;
}

/// TestDomainMerge: with `--merge-domain-config`, a directory holding both halves of
/// test-domain limits both keys.
async fn domain_merge(store: Store) {
    let dir = config_dir(&[
        ("merge_domain_key1.yaml", "merge_domain_key1.yaml"),
        ("merge_domain_key2.yaml", "merge_domain_key2.yaml"),
    ]);
    let config = dir.path().to_str().unwrap();
    let Some(mut fg) = store.serve(config, &["--merge-domain-config"]).await else {
        return;
    };
    // The checks below count from the first request on.
    away_from_window_edge(MINUTE).await;
    fg.expect("foo_domain", &[(&[("key1", "value1")], Want::NoLimit)])
        .await;
    fg.expect(
        "test-domain",
        &[
            (&[("key1", "value1")], Want::Limit(10, Unit::Minute)),
            (&[("key2", "value2")], Want::Limit(20, Unit::Minute)),
            (&[("key1", "other")], Want::NoLimit),
        ],
    )
    .await;
    fg.expect_count("test-domain", &[("key1", "value1")], 9, Code::Ok, 0)
        .await;
    fg.expect_count("test-domain", &[("key2", "value2")], 1, Code::Ok, 18)
        .await;
}

/// TestMetadata, without `--response-dynamic-metadata`: the file loads and limits as
/// basic_config does, and responses carry no dynamic metadata.
async fn metadata_loads_and_limits(store: Store) {
    let Some(mut fg) = store.serve(&fixture("metadata.yaml"), &[]).await else {
        return;
    };
    fg.expect(
        "test-domain",
        &[
            (
                &[("key1", "value1"), ("subkey1", "something")],
                Want::Limit(5, Unit::Second),
            ),
            (
                &[("key1", "value1"), ("subkey1", "subvalue1")],
                Want::Limit(10, Unit::Second),
            ),
            (&[("key2", "something")], Want::Limit(20, Unit::Minute)),
            (&[("key1", "value1")], Want::NoLimit),
        ],
    )
    .await;
    let response = fg.ask("test-domain", &[&[("key2", "something")]], 1).await;
    assert_eq!(response.dynamic_metadata, None, "off unless asked for");
}

/// The dynamic metadata of `response` as JSON.
fn dynamic_metadata(response: &RateLimitResponse) -> Value {
    let metadata = response
        .dynamic_metadata
        .as_ref()
        .expect("--response-dynamic-metadata sets dynamic_metadata");
    serde_json::to_value(metadata).unwrap()
}

/// TestMetadata with `--response-dynamic-metadata`: the response's dynamic metadata carries the
/// matched descriptors' metadata under "metadata" (merged across descriptors; only descriptors
/// that passed contribute, as in the reference's service).
async fn metadata_in_dynamic_metadata(store: Store) {
    let Some(mut fg) = store
        .serve(&fixture("metadata.yaml"), &["--response-dynamic-metadata"])
        .await
    else {
        return;
    };
    let d = "test-domain";
    let key1: Entries<'_> = &[("key1", "value1"), ("subkey1", "something")];
    let response = fg.ask(d, &[key1], 1).await;
    assert_limit(&response.statuses[0], 5, Unit::Second, "", "key1 subkey1");
    let metadata = dynamic_metadata(&response);
    assert_eq!(metadata["domain"], json!("test-domain"), "{metadata}");
    assert_eq!(
        metadata["metadata"],
        json!({ "name": "service_1" }),
        "{metadata}"
    );

    let response = fg.ask(d, &[&[("key2", "something")]], 1).await;
    assert_limit(&response.statuses[0], 20, Unit::Minute, "", "key2");
    let metadata = dynamic_metadata(&response);
    assert_eq!(
        metadata["metadata"],
        json!({ "service_with_quota": { "name": "service_2" } }),
        "{metadata}"
    );

    // Both in one request: merged.
    let response = fg.ask(d, &[key1, &[("key2", "another")]], 1).await;
    let metadata = dynamic_metadata(&response);
    assert_eq!(
        metadata["metadata"],
        json!({ "name": "service_1", "service_with_quota": { "name": "service_2" } }),
        "{metadata}"
    );

    // A rule without metadata adds none.
    let response = fg
        .ask(d, &[&[("key1", "value1"), ("subkey1", "subvalue1")]], 1)
        .await;
    let metadata = dynamic_metadata(&response);
    assert_eq!(metadata.get("metadata"), None, "{metadata}");

    // A descriptor over its limit does not pass, so its metadata is left out.
    let response = fg.ask(d, &[&[("key2", "over")]], 21).await;
    assert_eq!(response.overall_code(), Code::OverLimit);
    let metadata = dynamic_metadata(&response);
    assert_eq!(metadata.get("metadata"), None, "{metadata}");
}

/// The reference answers `duration_until_reset` in whole seconds: the window's length minus the
/// seconds already gone, so between 1 and the window's length (also when over the limit).
async fn duration_until_reset_in_whole_seconds(store: Store) {
    let Some(mut fg) = store.serve(&fixture("basic_config.yaml"), &[]).await else {
        return;
    };
    // key3's second request must land in the first one's hour.
    away_from_window_edge(MINUTE).await;
    let d = "test-domain";
    let statuses = vec![
        (fg.status(d, &[("key2", "reset")], 1).await, MINUTE),
        (fg.status(d, &[("key3", "reset")], 1).await, HOUR),
        (fg.status(d, &[("key3", "reset")], 1).await, HOUR),
        (fg.status(d, &[("key4", "reset")], 1).await, 86_400),
    ];
    assert_eq!(statuses[2].0.code(), Code::OverLimit);
    for (status, window) in statuses {
        let reset = status
            .duration_until_reset
            .unwrap_or_else(|| panic!("a limited status has duration_until_reset: {status:?}"));
        assert_eq!(reset.nanos, 0, "whole seconds: {reset:?}");
        let window = i64::try_from(window).unwrap();
        assert!(
            (1..=window).contains(&reset.seconds),
            "between 1 and {window} seconds: {reset:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The README's configuration examples
// ---------------------------------------------------------------------------------------------

/// Example 1: two values of one key, 500 a second each; other values are not limited.
async fn readme_example_1(store: Store) {
    let Some(mut fg) = store.serve(&fixture("readme/example1.yaml"), &[]).await else {
        return;
    };
    fg.expect(
        "mongo_cps",
        &[
            (&[("database", "users")], Want::Limit(500, Unit::Second)),
            (&[("database", "default")], Want::Limit(500, Unit::Second)),
            (&[("database", "other")], Want::NoLimit),
        ],
    )
    .await;
}

/// Example 2: one request with two descriptors is limited by both rules; each phone number has
/// its own 5 marketing messages a day.
async fn readme_example_2(store: Store) {
    let Some(mut fg) = store.serve(&fixture("readme/example2.yaml"), &[]).await else {
        return;
    };
    away_from_window_edge(86_400).await;
    let marketing = |number| [("message_type", "marketing"), ("to_number", number)];
    let first = marketing("2061111111");
    for sent in 1..=5 {
        let response = fg
            .ask("messaging", &[&first, &[("to_number", "2061111111")]], 1)
            .await;
        assert_eq!(response.overall_code(), Code::Ok, "message {sent}");
        assert_limit(&response.statuses[0], 5, Unit::Day, "", "marketing");
        assert_limit(&response.statuses[1], 100, Unit::Day, "", "to_number");
        assert_eq!(response.statuses[0].limit_remaining, 5 - sent);
        assert_eq!(response.statuses[1].limit_remaining, 100 - sent);
    }
    let response = fg
        .ask("messaging", &[&first, &[("to_number", "2061111111")]], 1)
        .await;
    assert_eq!(
        response.overall_code(),
        Code::OverLimit,
        "a sixth marketing message"
    );
    assert_eq!(response.statuses[0].code(), Code::OverLimit);
    // Another number has its own counters.
    let response = fg
        .ask(
            "messaging",
            &[&marketing("2062222222"), &[("to_number", "2062222222")]],
            1,
        )
        .await;
    assert_eq!(response.overall_code(), Code::Ok);
    assert_eq!(response.statuses[0].limit_remaining, 4);
    assert_eq!(response.statuses[1].limit_remaining, 99);
}

/// Example 3: the key-and-value rule is the more specific match, and 0 a second blocks.
async fn readme_example_3(store: Store) {
    let Some(mut fg) = store.serve(&fixture("readme/example3.yaml"), &[]).await else {
        return;
    };
    let d = "edge_proxy_per_ip";
    fg.expect(
        d,
        &[(
            &[("remote_address", "50.0.0.1")],
            Want::Limit(10, Unit::Second),
        )],
    )
    .await;
    let response = fg.ask(d, &[&[("remote_address", "50.0.0.5")]], 1).await;
    assert_eq!(response.overall_code(), Code::OverLimit, "blocked address");
    assert_limit(&response.statuses[0], 0, Unit::Second, "", "50.0.0.5");
}

/// Example 4: a two-entry descriptor matches only a rule nested two levels deep.
async fn readme_example_4(store: Store) {
    let two_entries: Entries<'_> = &[("key", "value"), ("subkey", "subvalue")];
    let Some(mut fg) = store
        .serve(&fixture("readme/example4_flat.yaml"), &[])
        .await
    else {
        return;
    };
    fg.expect(
        "example4",
        &[
            (two_entries, Want::NoLimit),
            (&[("key", "value")], Want::Limit(300, Unit::Second)),
        ],
    )
    .await;
    drop(fg);
    let Some(mut fg) = store
        .serve(&fixture("readme/example4_nested.yaml"), &[])
        .await
    else {
        return;
    };
    fg.expect(
        "example4",
        &[
            (two_entries, Want::Limit(300, Unit::Second)),
            (&[("key", "value")], Want::NoLimit),
        ],
    )
    .await;
}

/// Example 5: unlimited answers OK with 2³²−1 remaining; the other key counts.
async fn readme_example_5(store: Store) {
    let Some(mut fg) = store.serve(&fixture("readme/example5.yaml"), &[]).await else {
        return;
    };
    fg.expect("internal", &[(&[("ldap", "x")], Want::Unlimited)])
        .await;
    away_from_window_edge(MINUTE).await;
    fg.expect_count("internal", &[("azure", "x")], 1, Code::Ok, 99)
        .await;
    fg.expect_count("internal", &[("azure", "x")], 99, Code::Ok, 0)
        .await;
    fg.expect_count("internal", &[("azure", "x")], 1, Code::OverLimit, 0)
        .await;
    fg.expect("internal", &[(&[("ldap", "x")], Want::Unlimited)])
        .await;
}

/// Example 6: user-a is in shadow mode and never denied; user-b is. (More hits in one request
/// than the limit are over in any window.)
async fn readme_example_6(store: Store) {
    let Some(mut fg) = store.serve(&fixture("readme/example6.yaml"), &[]).await else {
        return;
    };
    let d = "example6";
    let user = |name| [("service", "auth-service"), ("user", name)];
    let response = fg.ask(d, &[&user("user-a")], 11).await;
    assert_eq!(
        response.overall_code(),
        Code::Ok,
        "shadow mode never denies"
    );
    assert_limit(&response.statuses[0], 10, Unit::Second, "", "user-a");
    let response = fg.ask(d, &[&user("user-b")], 21).await;
    assert_eq!(response.overall_code(), Code::OverLimit);
    assert_limit(&response.statuses[0], 20, Unit::Second, "", "user-b");
    fg.expect(d, &[(&user("user-c"), Want::NoLimit)]).await;
}

/// Example 7 (`replaces`): alone, each rule applies; together, only the 10-a-second rule does,
/// and the replaced 5-a-second counter is not touched.
async fn readme_example_7_replaces(store: Store) {
    let Some(mut fg) = store.serve(&fixture("readme/example7.yaml"), &[]).await else {
        return;
    };
    let d = "example7";
    let specific: Entries<'_> = &[("key_1", "value_1"), ("user", "bkthomps")];
    let replacing: Entries<'_> = &[("key_2", "value_2"), ("user", "bkthomps")];
    // 6 hits: over 5, within 10. Only the 10 applies, so the request passes.
    let response = fg.ask(d, &[specific, replacing], 6).await;
    assert_eq!(
        response.overall_code(),
        Code::Ok,
        "the 5-a-second limit is replaced"
    );
    Want::NoLimit.check(&response.statuses[0], "the replaced descriptor");
    assert_limit(
        &response.statuses[1],
        10,
        Unit::Second,
        "",
        "the replacing rule",
    );
    assert_eq!(response.statuses[1].code(), Code::Ok);
    // Had the replaced counter taken those 6 hits, 5 more in the same second would be over; in
    // a later second the counter is new either way.
    let status = fg.status(d, specific, 5).await;
    assert_eq!(status.code(), Code::Ok, "the replaced counter took no hits");
    assert_limit(&status, 5, Unit::Second, "specific_limit", "alone");
    let status = fg.status(d, replacing, 1).await;
    assert_limit(&status, 10, Unit::Second, "", "alone");
}

/// Example 8: detailed_metric changes metrics only; limits apply as usual, each value apart.
async fn readme_example_8(store: Store) {
    let Some(mut fg) = store.serve(&fixture("readme/example8.yaml"), &[]).await else {
        return;
    };
    fg.expect(
        "example8",
        &[
            (
                &[("key1", "unspecified_value")],
                Want::Limit(10, Unit::Minute),
            ),
            (
                &[("key1", "unspecified_value2")],
                Want::Limit(10, Unit::Minute),
            ),
            (&[("key1", "value1")], Want::Limit(20, Unit::Minute)),
        ],
    )
    .await;
}

/// Example 9: `*` at the end, in the middle, several times.
async fn readme_example_9(store: Store) {
    let Some(mut fg) = store.serve(&fixture("readme/example9.yaml"), &[]).await else {
        return;
    };
    let twenty = Want::Limit(20, Unit::Minute);
    fg.expect(
        "example9",
        &[
            (&[("key1", "value1")], twenty),
            (&[("key1", "value2")], twenty),
            (&[("key1", "valueXYZ")], twenty),
            (&[("key1", "other")], Want::NoLimit),
            (&[("path", "/api/123/action")], twenty),
            (&[("path", "/api/user-id/action")], twenty),
            (&[("path", "/api/123/other")], Want::NoLimit),
            (&[("route", "/api/v1/resource/123/action")], twenty),
            (&[("route", "/api/v2/resource/456/action")], twenty),
            (&[("route", "/api/v1/resource/123/other")], Want::NoLimit),
        ],
    )
    .await;
}

/// Example 10: value_to_metric changes metrics only; limits apply as usual.
async fn readme_example_10(store: Store) {
    let Some(mut fg) = store.serve(&fixture("readme/example10.yaml"), &[]).await else {
        return;
    };
    fg.expect(
        "example10",
        &[
            (
                &[
                    ("route", "api"),
                    ("http_method", "GET"),
                    ("subject_id", "123"),
                ],
                Want::Limit(60, Unit::Minute),
            ),
            (
                &[
                    ("route", "web"),
                    ("http_method", "POST"),
                    ("subject_id", "456"),
                ],
                Want::Limit(60, Unit::Minute),
            ),
            (&[("route", "api"), ("http_method", "GET")], Want::NoLimit),
        ],
    )
    .await;
    drop(fg);
    let Some(mut fg) = store
        .serve(&fixture("readme/example10_wildcard.yaml"), &[])
        .await
    else {
        return;
    };
    fg.expect(
        "example10_wildcard",
        &[
            (
                &[
                    ("user", "alice"),
                    ("action", "readfile"),
                    ("resource", "documents"),
                ],
                Want::Limit(100, Unit::Minute),
            ),
            (
                &[
                    ("user", "bob"),
                    ("action", "readdata"),
                    ("resource", "database"),
                ],
                Want::Limit(100, Unit::Minute),
            ),
            (
                &[
                    ("user", "bob"),
                    ("action", "writefile"),
                    ("resource", "database"),
                ],
                Want::NoLimit,
            ),
        ],
    )
    .await;
}

/// Example 11: five requests each for files/a.pdf and files/b.csv exhaust the shared 10 an
/// hour, so files/c.txt is over; files_no_share/a.pdf exhausting its 10 leaves b.csv its own.
async fn readme_example_11(store: Store) {
    let Some(mut fg) = store.serve(&fixture("readme/example11.yaml"), &[]).await else {
        return;
    };
    away_from_window_edge(HOUR).await;
    let d = "example11";
    fg.expect_count(d, &[("files", "files/a.pdf")], 5, Code::Ok, 5)
        .await;
    fg.expect_count(d, &[("files", "files/b.csv")], 5, Code::Ok, 0)
        .await;
    fg.expect_count(d, &[("files", "files/c.txt")], 1, Code::OverLimit, 0)
        .await;
    let no_share = |file| [("files_no_share", file)];
    for remaining in (0..10).rev() {
        fg.expect_count(d, &no_share("files_no_share/a.pdf"), 1, Code::Ok, remaining)
            .await;
    }
    fg.expect_count(d, &no_share("files_no_share/a.pdf"), 1, Code::OverLimit, 0)
        .await;
    fg.expect_count(d, &no_share("files_no_share/b.csv"), 1, Code::Ok, 9)
        .await;
    drop(fg);

    let Some(mut fg) = store
        .serve(&fixture("readme/example11_metrics.yaml"), &[])
        .await
    else {
        return;
    };
    away_from_window_edge(MINUTE).await;
    let d = "example11_metrics";
    let route = |route, method| [("route", route), ("method", method)];
    fg.expect_count(d, &route("api/v1", "GET"), 60, Code::Ok, 0)
        .await;
    fg.expect_count(d, &route("api/v2", "GET"), 1, Code::OverLimit, 0)
        .await;
    fg.expect_count(d, &route("api/v2", "POST"), 1, Code::Ok, 59)
        .await;
}
