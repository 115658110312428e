//! The reference's (envoyproxy/ratelimit's) service behaviour, black-box against the real
//! `floodgate` binary, on the memory store and on Redis: quota mode, dynamic metadata, the
//! integration test's counting (`testBasicBaseConfig`) with the local over-limit cache on and
//! off, the README's examples, and the service tests' edge cases (unlimited, unknown domains,
//! invalid requests, global shadow mode, RateLimit-* headers).
//!
//! The reference's service tests mock the cache; here real limits give the same statuses: a
//! limit of 0 is always OVER_LIMIT, a limit of 1000 a minute is always OK. The rules match any
//! value of their key, and every case sends fresh values, so each case has fresh counters.
//!
//! Floodgate's default counting rule is that a denied request consumes nothing (the reference
//! with STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT); `--count-denied-hits` restores the
//! reference's default, where every descriptor of a denied request still counts its hits.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use floodgate::pb::rate_limit_descriptor::RateLimitOverride;
use floodgate::pb::rate_limit_response::rate_limit::Unit;
use floodgate::pb::rate_limit_response::{Code, DescriptorStatus, RateLimit};
use floodgate::pb::rate_limit_service_client::RateLimitServiceClient;
use floodgate::pb::{RateLimitDescriptor, RateLimitRequest, RateLimitResponse, RateLimitUnit};
use serde_json::{Map, Value, json};
use support::process::Floodgate;
use support::{RedisServer, descriptor};
use tonic::transport::Channel;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/reference_service"
);

type Client = RateLimitServiceClient<Channel>;

/// Numbers that make descriptor values and Redis key prefixes unique within this test binary.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A descriptor value no earlier request of this binary used: fresh counters.
fn fresh(label: &str) -> String {
    format!("{label}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------------
// Stores: every scenario runs once per store, through the same code.

/// The stores of one test: memory always, Redis when redis-server is installed (it must be
/// under CI: `RedisServer::start` fails the test there instead of skipping).
struct Stores {
    redis: Option<RedisServer>,
}

/// How to start Floodgate on one store.
struct Store {
    name: &'static str,
    redis_url: Option<String>,
}

impl Stores {
    fn start() -> Stores {
        // Without redis-server (outside CI) this says so and the Redis half is skipped.
        Stores {
            redis: RedisServer::start(),
        }
    }

    fn each(&self) -> Vec<Store> {
        let mut stores = vec![Store {
            name: "memory",
            redis_url: None,
        }];
        if let Some(redis) = &self.redis {
            stores.push(Store {
                name: "redis",
                redis_url: Some(redis.url()),
            });
        }
        stores
    }
}

impl Store {
    /// `floodgate serve` on this store with the fixture `config` (a file or a directory under
    /// tests/fixtures/reference_service) and `extra` flags. Each Redis run gets its own key
    /// prefix, so no run sees another's counters.
    async fn start(&self, config: &str, extra: &[&str]) -> Floodgate {
        let mut args: Vec<String> = Vec::new();
        match &self.redis_url {
            None => args.extend(["--store".into(), "memory".into()]),
            Some(url) => args.extend([
                "--store".into(),
                "redis".into(),
                "--redis-url".into(),
                url.clone(),
                // A guard against a busy machine, not a speed requirement.
                "--redis-timeout".into(),
                "2s".into(),
                "--key-prefix".into(),
                format!("refsvc{}:", NEXT.fetch_add(1, Ordering::Relaxed)),
            ]),
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Floodgate::start(&format!("{FIXTURES}/{config}"), &args).await
    }
}

// ---------------------------------------------------------------------------------------------
// Requests.

fn desc(key: &str, value: &str) -> RateLimitDescriptor {
    descriptor(&[(key, value)])
}

fn req(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    }
}

/// `descriptor` with its own hits_addend (which, unlike the request's, may be 0).
fn with_hits(mut descriptor: RateLimitDescriptor, hits: u64) -> RateLimitDescriptor {
    descriptor.hits_addend = Some(pbjson_types::UInt64Value { value: hits });
    descriptor
}

async fn ask(client: &mut Client, request: RateLimitRequest) -> RateLimitResponse {
    client
        .should_rate_limit(request)
        .await
        .expect("ShouldRateLimit answers")
        .into_inner()
}

// ---------------------------------------------------------------------------------------------
// Expected statuses.

/// What one descriptor's status must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// No rule matched: OK, no current_limit, remaining 0, no reset.
    NoLimit,
    /// An unlimited rule: OK, no current_limit, remaining u32::MAX, no reset.
    Unlimited,
    /// A limited status.
    Limited {
        code: Code,
        per_unit: u32,
        unit: Unit,
        remaining: u32,
    },
}

const fn ok(per_unit: u32, unit: Unit, remaining: u32) -> Want {
    Want::Limited {
        code: Code::Ok,
        per_unit,
        unit,
        remaining,
    }
}

const fn over(per_unit: u32, unit: Unit) -> Want {
    Want::Limited {
        code: Code::OverLimit,
        per_unit,
        unit,
        remaining: 0,
    }
}

fn unit_secs(unit: Unit) -> i64 {
    match unit {
        Unit::Second => 1,
        Unit::Minute => 60,
        Unit::Hour => 3_600,
        Unit::Day => 86_400,
        other => panic!("no test here uses {other:?}"),
    }
}

/// How strictly duration_until_reset is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reset {
    /// More than zero and at most the unit's length.
    InUnit,
    /// As the reference reports it: whole seconds (nanos 0), at least 1, at most the unit.
    WholeSeconds,
}

fn check_status(ctx: &str, status: &DescriptorStatus, want: Want, reset: Reset) {
    match want {
        Want::NoLimit | Want::Unlimited => {
            assert_eq!(status.code(), Code::Ok, "{ctx}: code of {status:?}");
            assert_eq!(status.current_limit, None, "{ctx}: current_limit");
            let remaining = if want == Want::Unlimited { u32::MAX } else { 0 };
            assert_eq!(status.limit_remaining, remaining, "{ctx}: limit_remaining");
            assert_eq!(
                status.duration_until_reset, None,
                "{ctx}: no duration_until_reset without a limit"
            );
        }
        Want::Limited {
            code,
            per_unit,
            unit,
            remaining,
        } => {
            assert_eq!(status.code(), code, "{ctx}: code of {status:?}");
            assert_eq!(
                status.current_limit,
                Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: per_unit,
                    unit: unit as i32,
                }),
                "{ctx}: current_limit"
            );
            assert_eq!(status.limit_remaining, remaining, "{ctx}: limit_remaining");
            let until = status
                .duration_until_reset
                .as_ref()
                .unwrap_or_else(|| panic!("{ctx}: a limited status has duration_until_reset"));
            let length = unit_secs(unit);
            match reset {
                Reset::WholeSeconds => {
                    assert_eq!(
                        until.nanos, 0,
                        "{ctx}: duration_until_reset in whole seconds, got {until:?}"
                    );
                    assert!(
                        (1..=length).contains(&until.seconds),
                        "{ctx}: duration_until_reset {until:?} within 1..={length}s"
                    );
                }
                Reset::InUnit => {
                    let nanos = i128::from(until.seconds) * 1_000_000_000 + i128::from(until.nanos);
                    assert!(
                        until.nanos >= 0
                            && nanos > 0
                            && nanos <= i128::from(length) * 1_000_000_000,
                        "{ctx}: duration_until_reset {until:?} within (0, {length}s]"
                    );
                }
            }
        }
    }
}

fn check(ctx: &str, response: &RateLimitResponse, overall: Code, wants: &[Want], reset: Reset) {
    assert_eq!(
        response.overall_code(),
        overall,
        "{ctx}: overall code of {response:?}"
    );
    assert_eq!(
        response.statuses.len(),
        wants.len(),
        "{ctx}: one status per descriptor in {response:?}"
    );
    for (i, (status, want)) in response.statuses.iter().zip(wants).enumerate() {
        check_status(&format!("{ctx}, status {i}"), status, *want, reset);
    }
}

/// What a rule does to a fresh counter, for [`case`].
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// A limit no request fits in (0 per unit).
    Over(Unit),
    /// A limit of `per_unit` far from full: OK, its remaining counting the admitted requests.
    Under(u32, Unit),
    /// A quota of `per_unit` far from full: OK, its remaining counting every request, admitted
    /// or not (a quota's hits always count, as the reference counts every descriptor's).
    QuotaUnder(u32, Unit),
    /// No rule matches.
    NoLimit,
    /// An unlimited rule.
    Unlimited,
}

const OVER: Rule = Rule::Over(Unit::Minute);
const UNDER: Rule = Rule::Under(1000, Unit::Minute);
const QUOTA_UNDER: Rule = Rule::QuotaUnder(1000, Unit::Minute);

/// Sends one request of `descriptors` (keys, each with a fresh value) twice, and checks both
/// answers: `overall`, and each status as its rule says. The second time, on Redis, Floodgate's
/// local over-limit cache may answer for the over-limit counters; the answer must not change.
/// An admitted request (overall OK) counts one hit on every counter; a denied one none but on
/// its quotas.
async fn case(
    client: &mut Client,
    ctx: &str,
    domain: &str,
    descriptors: &[(&str, Rule)],
    overall: Code,
) {
    let values: Vec<String> = descriptors.iter().map(|(key, _)| fresh(key)).collect();
    for round in 1..=2u32 {
        let request = req(
            domain,
            descriptors
                .iter()
                .zip(&values)
                .map(|((key, _), value)| desc(key, value))
                .collect(),
        );
        let response = ask(client, request).await;
        let admitted = if overall == Code::Ok { round } else { 0 };
        let wants: Vec<Want> = descriptors
            .iter()
            .map(|(_, rule)| match *rule {
                Rule::Over(unit) => over(0, unit),
                Rule::Under(per_unit, unit) => ok(per_unit, unit, per_unit - admitted),
                Rule::QuotaUnder(per_unit, unit) => ok(per_unit, unit, per_unit - round),
                Rule::NoLimit => Want::NoLimit,
                Rule::Unlimited => Want::Unlimited,
            })
            .collect();
        check(
            &format!("{ctx} (round {round})"),
            &response,
            overall,
            &wants,
            Reset::InUnit,
        );
    }
}

/// The RateLimit-* headers of `response`, in order.
fn limit_headers(response: &RateLimitResponse) -> Vec<(String, String)> {
    response
        .response_headers_to_add
        .iter()
        .filter(|h| h.key.to_ascii_lowercase().starts_with("ratelimit-"))
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

/// The headers the reference adds for `status`: its limit, its remaining, and its reset in
/// whole seconds (rounded up).
fn headers_of(status: &DescriptorStatus) -> Vec<(String, String)> {
    let limit = status.current_limit.as_ref().expect("a limited status");
    let until = status.duration_until_reset.as_ref().expect("a reset");
    let reset = until.seconds + i64::from(until.nanos > 0);
    vec![
        (
            "RateLimit-Limit".into(),
            limit.requests_per_unit.to_string(),
        ),
        (
            "RateLimit-Remaining".into(),
            status.limit_remaining.to_string(),
        ),
        ("RateLimit-Reset".into(), reset.to_string()),
    ]
}

/// Holds when no boundary of `secs`-long (epoch-aligned) windows has passed since it was made:
/// a run that counts down a limit is redone with fresh values when its window rolled over
/// in the middle (rare; the reference's integration test simply fails then).
struct Window {
    secs: u64,
    start: u64,
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Window {
    fn new(secs: u64) -> Window {
        Window {
            secs,
            start: unix_secs() / secs,
        }
    }

    fn held(&self) -> bool {
        unix_secs() / self.secs == self.start
    }
}

/// The dynamic metadata as JSON (every number an f64, as in a protobuf Struct).
fn metadata_json(response: &RateLimitResponse) -> Value {
    fn value(v: &pbjson_types::Value) -> Value {
        use pbjson_types::value::Kind;
        match &v.kind {
            None | Some(Kind::NullValue(_)) => Value::Null,
            Some(Kind::NumberValue(n)) => json!(n),
            Some(Kind::StringValue(s)) => json!(s),
            Some(Kind::BoolValue(b)) => json!(b),
            Some(Kind::StructValue(s)) => object(s),
            Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
        }
    }
    fn object(s: &pbjson_types::Struct) -> Value {
        Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), value(v)))
                .collect::<Map<String, Value>>(),
        )
    }
    object(
        response
            .dynamic_metadata
            .as_ref()
            .unwrap_or_else(|| panic!("dynamic_metadata in {response:?}")),
    )
}

/// The "descriptors" entry the reference lists for descriptors of plain `entries`.
fn listed(entries: &[(&str, &str)]) -> Value {
    json!({ "entries": entries.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>() })
}

// ---------------------------------------------------------------------------------------------
// 1. Quota mode (the reference's TestService*QuotaMode* tests).

#[tokio::test]
async fn quota_mode_per_descriptor() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store.start("quota.yaml", &[]).await;
        let mut client = floodgate.client().await;
        let c = &mut client;
        let ctx = |name: &str| format!("{}: {name}", store.name);
        let domain = "quota-domain";

        // TestServicePerDescriptorQuotaMode: a plain limit over denies, whatever the quota says.
        let name = ctx("regular over, quota under");
        let descriptors = [("over", OVER), ("quota_under", QUOTA_UNDER)];
        case(c, &name, domain, &descriptors, Code::OverLimit).await;
        // TestServiceMixedPerDescriptorModes: the only quota descriptor is over: denied, the
        // quota descriptor's own status reading OVER_LIMIT.
        let name = ctx("regular under, quota over");
        let descriptors = [("under", UNDER), ("quota_over", OVER)];
        case(c, &name, domain, &descriptors, Code::OverLimit).await;
        // TestServiceMixedPerDescriptorModesUnderLimit.
        let name = ctx("regular under, quota under");
        let descriptors = [("under", UNDER), ("quota_under", QUOTA_UNDER)];
        case(c, &name, domain, &descriptors, Code::Ok).await;
        // TestServiceQuotaModeOnlyAllOverTheLimit.
        let name = ctx("both quotas over");
        let descriptors = [("quota_over", OVER), ("quota_over", OVER)];
        case(c, &name, domain, &descriptors, Code::OverLimit).await;
        // TestServiceQuotaModeOnlySomeOverTheLimit: OK overall, yet the quota descriptor over
        // its limit still reads OVER_LIMIT.
        let name = ctx("one quota over, one under");
        let descriptors = [("quota_over", OVER), ("quota_under", QUOTA_UNDER)];
        case(c, &name, domain, &descriptors, Code::Ok).await;
        let name = ctx("regular under, one quota over, one under");
        let descriptors = [
            ("under", UNDER),
            ("quota_over", OVER),
            ("quota_under", QUOTA_UNDER),
        ];
        case(c, &name, domain, &descriptors, Code::Ok).await;
        // A descriptor no rule matches is no quota descriptor: the one quota there is, is over.
        let name = ctx("quota over beside an unmatched descriptor");
        let descriptors = [("quota_over", OVER), ("unmatched", Rule::NoLimit)];
        case(c, &name, domain, &descriptors, Code::OverLimit).await;
    }
}

#[tokio::test]
async fn quota_mode_global() {
    let stores = Stores::start();
    for store in stores.each() {
        // The rules of service.yaml have no quota_mode of their own: --quota-mode makes every
        // descriptor a quota descriptor.
        let floodgate = store.start("service.yaml", &["--quota-mode"]).await;
        let mut client = floodgate.client().await;
        let c = &mut client;
        let ctx = |name: &str| format!("{}: --quota-mode, {name}", store.name);
        let domain = "service-domain";

        // TestServiceGlobalQuotaMode: all over, so denied.
        let descriptors = [("over", OVER), ("over", OVER)];
        case(c, &ctx("all over"), domain, &descriptors, Code::OverLimit).await;
        let descriptors = [("over", OVER), ("under", UNDER)];
        case(
            c,
            &ctx("one over, one under"),
            domain,
            &descriptors,
            Code::Ok,
        )
        .await;
        // In the reference's shouldRateLimitWorker global quota mode makes every descriptor that
        // is not unlimited a quota descriptor, one without a rule too (it reads OK, so not every
        // quota descriptor is over); an unlimited one is left out of the count.
        let descriptors = [("over", OVER), ("unmatched", Rule::NoLimit)];
        case(
            c,
            &ctx("over beside unmatched"),
            domain,
            &descriptors,
            Code::Ok,
        )
        .await;
        let descriptors = [("over", OVER), ("free", Rule::Unlimited)];
        case(
            c,
            &ctx("over beside unlimited"),
            domain,
            &descriptors,
            Code::OverLimit,
        )
        .await;
    }
}

#[tokio::test]
async fn quota_mode_with_global_shadow_mode() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store.start("quota.yaml", &["--shadow-mode"]).await;
        let mut client = floodgate.client().await;
        let c = &mut client;
        let ctx = |name: &str| format!("{}: --shadow-mode, {name}", store.name);
        let domain = "quota-domain";

        // TestServiceQuotaModeWithShadowMode: every quota over, yet OK overall.
        let descriptors = [("quota_over", OVER), ("quota_over", OVER)];
        case(c, &ctx("both quotas over"), domain, &descriptors, Code::Ok).await;
        // TestServiceMixedModeWithShadowMode.
        let descriptors = [("over", OVER), ("quota_over", OVER)];
        case(
            c,
            &ctx("regular and quota over"),
            domain,
            &descriptors,
            Code::Ok,
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Dynamic metadata (TestMetadataReturned*, TestOverlappingMetadataReturnsTheFirstValue).

#[tokio::test]
async fn metadata_of_passed_descriptors_in_quota_mode() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store
            .start(
                "metadata.yaml",
                &["--quota-mode", "--response-dynamic-metadata"],
            )
            .await;
        let mut client = floodgate.client().await;
        let ctx = |name: &str| format!("{}: {name}", store.name);
        let domain = "metadata-domain";

        // TestMetadataReturnedForPassedDescriptors: the quota descriptor over its limit gives
        // no metadata; the request's hits_addend (1) is reported.
        let (a, b) = (fresh("a"), fresh("b"));
        let mut request = req(domain, vec![desc("first", &a), desc("second_over", &b)]);
        request.hits_addend = 1;
        let response = ask(&mut client, request).await;
        let name = ctx("passed descriptors");
        let wants = [ok(1000, Unit::Minute, 999), over(0, Unit::Minute)];
        check(&name, &response, Code::Ok, &wants, Reset::InUnit);
        assert_eq!(
            metadata_json(&response),
            json!({
                "domain": domain,
                "descriptors": [listed(&[("first", &a)]), listed(&[("second_over", &b)])],
                "hitsAddend": 1.0,
                "metadata": { "name": "service_1" },
            }),
            "{name}"
        );

        // TestMetadataReturnedForAllPassedDescriptors: both merged; no hits_addend, none listed.
        let (a, b) = (fresh("a"), fresh("b"));
        let request = req(domain, vec![desc("first", &a), desc("other", &b)]);
        let response = ask(&mut client, request).await;
        let name = ctx("all passed");
        let wants = [ok(1000, Unit::Minute, 999), ok(1000, Unit::Minute, 999)];
        check(&name, &response, Code::Ok, &wants, Reset::InUnit);
        assert_eq!(
            metadata_json(&response),
            json!({
                "domain": domain,
                "descriptors": [listed(&[("first", &a)]), listed(&[("other", &b)])],
                "metadata": { "name": "service_1", "some_other_name": "service_2" },
            }),
            "{name}"
        );

        // TestOverlappingMetadataReturnsTheFirstValue, in both request orders: the first
        // descriptor of the request wins, whatever the config's order.
        for (keys, winner) in [
            (["first", "second"], "service_1"),
            (["second", "first"], "service_2"),
        ] {
            let (a, b) = (fresh("a"), fresh("b"));
            let request = req(domain, vec![desc(keys[0], &a), desc(keys[1], &b)]);
            let response = ask(&mut client, request).await;
            let name = ctx(&format!("overlapping, {keys:?}"));
            let wants = [ok(1000, Unit::Minute, 999), ok(1000, Unit::Minute, 999)];
            check(&name, &response, Code::Ok, &wants, Reset::InUnit);
            assert_eq!(
                metadata_json(&response)["metadata"],
                json!({ "name": winner }),
                "{name}"
            );
        }
    }
}

#[tokio::test]
async fn metadata_merges_any_yaml_map_first_value_winning() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store
            .start("metadata.yaml", &["--response-dynamic-metadata"])
            .await;
        let mut client = floodgate.client().await;
        let domain = "metadata-domain";
        // Nested maps merge key by key; elsewhere the first value stays, a map against a
        // scalar included (either way round).
        let a_first = json!({
            "labels": { "team": "payments", "region": "eu", "cost_center": 42.0 },
            "owner": "alice",
            "tier": "gold",
            "priority": 3.0,
            "enabled": true,
            "tags": ["blue", "green"],
            "extra": "from_b",
        });
        let b_first = json!({
            "labels": { "team": "search", "cost_center": 42.0, "region": "eu" },
            "owner": { "name": "bob" },
            "tier": "silver",
            "extra": "from_b",
            "priority": 3.0,
            "enabled": true,
            "tags": ["blue", "green"],
        });
        for (keys, merged) in [
            (["rich_a", "rich_b"], a_first),
            (["rich_b", "rich_a"], b_first),
        ] {
            let (a, b) = (fresh("a"), fresh("b"));
            let request = req(domain, vec![desc(keys[0], &a), desc(keys[1], &b)]);
            let response = ask(&mut client, request).await;
            let name = format!("{}: {keys:?}", store.name);
            let wants = [ok(1000, Unit::Minute, 999), ok(1000, Unit::Minute, 999)];
            check(&name, &response, Code::Ok, &wants, Reset::InUnit);
            assert_eq!(metadata_json(&response)["metadata"], merged, "{name}");
        }
    }
}

#[tokio::test]
async fn metadata_leaves_out_over_limit_and_unlimited_descriptors() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store
            .start("metadata.yaml", &["--response-dynamic-metadata"])
            .await;
        let mut client = floodgate.client().await;
        let domain = "metadata-domain";

        // Without quota mode the plain limit over denies; its metadata, and the unlimited
        // rule's, stay out. A shadow rule over its limit reads OK, so its metadata is in.
        let values: Vec<String> = (0..5).map(|_| fresh("v")).collect();
        let keys = ["first", "second_over", "free", "shadow_over", "unmatched"];
        let request = req(
            domain,
            keys.iter().zip(&values).map(|(k, v)| desc(k, v)).collect(),
        );
        let response = ask(&mut client, request).await;
        let name = format!("{}: mixed", store.name);
        let wants = [
            ok(1000, Unit::Minute, 1000),
            over(0, Unit::Minute),
            Want::Unlimited,
            ok(0, Unit::Minute, 0),
            Want::NoLimit,
        ];
        check(&name, &response, Code::OverLimit, &wants, Reset::InUnit);
        let listing: Vec<Value> = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| listed(&[(k, v)]))
            .collect();
        assert_eq!(
            metadata_json(&response),
            json!({
                "domain": domain,
                "descriptors": listing,
                "metadata": { "name": "service_1", "shadow": "seen" },
            }),
            "{name}"
        );

        // Nothing passed: no "metadata" at all.
        let value = fresh("v");
        let response = ask(&mut client, req(domain, vec![desc("second_over", &value)])).await;
        let name = format!("{}: all over", store.name);
        check(
            &name,
            &response,
            Code::OverLimit,
            &[over(0, Unit::Minute)],
            Reset::InUnit,
        );
        assert_eq!(
            metadata_json(&response),
            json!({ "domain": domain, "descriptors": [listed(&[("second_over", &value)])] }),
            "{name}"
        );
    }
}

#[tokio::test]
async fn metadata_lists_descriptors_with_their_limit_and_hits() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store
            .start("metadata.yaml", &["--response-dynamic-metadata"])
            .await;
        let mut client = floodgate.client().await;
        let domain = "metadata-domain";
        let (a, b, c, d) = (fresh("a"), fresh("b"), fresh("c"), fresh("d"));
        let mut overridden = with_hits(desc("override_target", &b), 0);
        overridden.limit = Some(RateLimitOverride {
            requests_per_unit: 7,
            unit: RateLimitUnit::Minute as i32,
        });
        let mut request = req(
            domain,
            vec![
                with_hits(desc("first", &a), 2),
                overridden,
                // Two entries: the one-level rule "first" does not match.
                descriptor(&[("first", &c), ("extra", &d)]),
            ],
        );
        request.hits_addend = 3;
        let response = ask(&mut client, request).await;
        let name = format!("{}: limits and hits", store.name);
        let wants = [
            ok(1000, Unit::Minute, 998),
            // hits_addend 0 only looks.
            ok(7, Unit::Minute, 7),
            Want::NoLimit,
        ];
        check(&name, &response, Code::Ok, &wants, Reset::InUnit);

        let mut metadata = metadata_json(&response);
        // The reference writes the override with Go's protobuf String(), whose spacing is not
        // fixed: only its content is checked.
        let limit = metadata["descriptors"][1]
            .as_object_mut()
            .and_then(|d| d.remove("limit"))
            .unwrap_or_else(|| panic!("{name}: the overridden descriptor lists its limit"));
        let limit = limit.as_str().expect("the limit is a string");
        assert!(
            limit.contains('7') && limit.contains("MINUTE"),
            "{name}: limit {limit:?}"
        );
        // A limit override replaces the rule, so the rule's metadata ("from_rule") is not used.
        assert_eq!(
            metadata,
            json!({
                "domain": domain,
                "descriptors": [
                    { "entries": [format!("first={a}")], "hitsAddend": 2.0 },
                    { "entries": [format!("override_target={b}")], "hitsAddend": 0.0 },
                    listed(&[("first", &c), ("extra", &d)]),
                ],
                "hitsAddend": 3.0,
                "metadata": { "name": "service_1" },
            }),
            "{name}"
        );
    }
}

#[tokio::test]
async fn no_dynamic_metadata_without_the_flag() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store.start("metadata.yaml", &[]).await;
        let mut client = floodgate.client().await;
        let response = ask(
            &mut client,
            req("metadata-domain", vec![desc("first", &fresh("a"))]),
        )
        .await;
        let name = format!("{}: metadata without the flag", store.name);
        check(
            &name,
            &response,
            Code::Ok,
            &[ok(1000, Unit::Minute, 999)],
            Reset::InUnit,
        );
        assert_eq!(response.dynamic_metadata, None, "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The integration test's scenario (testBasicBaseConfig, configs another.yaml / basic.yaml).

/// What the cache on/off runs must agree on: the codes, limits and remaining counts.
type Summary = Vec<(i32, Vec<(i32, Option<RateLimit>, u32)>)>;

fn summary(responses: &[RateLimitResponse]) -> Summary {
    responses
        .iter()
        .map(|r| {
            (
                r.overall_code,
                r.statuses
                    .iter()
                    .map(|s| (s.code, s.current_limit.clone(), s.limit_remaining))
                    .collect(),
            )
        })
        .collect()
}

/// testBasicBaseConfig on `store` with `--local-cache-size cache_size`; with `count_denied`
/// (`--count-denied-hits`, the reference's default) a denied request still counts its hits on
/// every descriptor. Returns the answers, for comparison between runs.
async fn basic_base_config(store: &Store, cache_size: &str, count_denied: bool) -> Summary {
    let mut flags = vec!["--local-cache-size", cache_size];
    if count_denied {
        flags.push("--count-denied-hits");
    }
    let run = format!(
        "{}, cache {cache_size}, count denied {count_denied}",
        store.name
    );
    let floodgate = store.start("integration", &flags).await;
    let mut client = floodgate.client().await;
    let mut seen = Vec::new();

    // A domain without config: OK, no limit.
    let response = ask(&mut client, req("foo", vec![desc("hello", "world")])).await;
    let ctx = format!("{run}: unknown domain");
    check(
        &ctx,
        &response,
        Code::Ok,
        &[Want::NoLimit],
        Reset::WholeSeconds,
    );
    seen.push(response);

    let response = ask(&mut client, req("basic", vec![desc("key1", "foo")])).await;
    let ctx = format!("{run}: key1");
    let wants = [ok(50, Unit::Second, 49)];
    check(&ctx, &response, Code::Ok, &wants, Reset::WholeSeconds);
    seen.push(response);

    // Both phases count within one minute (key2's window; an hour's end is a minute's too).
    let mut attempt = 0;
    let (phase_one, phase_two) = loop {
        attempt += 1;
        let window = Window::new(60);
        let value = fresh("key2");
        let mut phase_one = Vec::new();
        for _ in 0..25 {
            let request = req("another", vec![desc("key2", &value)]);
            phase_one.push(ask(&mut client, request).await);
        }
        let value = fresh("both");
        let mut phase_two = Vec::new();
        for _ in 0..15 {
            let request = req("another", vec![desc("key2", &value), desc("key3", &value)]);
            phase_two.push(ask(&mut client, request).await);
        }
        if window.held() {
            break (phase_one, phase_two);
        }
        assert!(attempt < 3, "{run}: three runs each crossed a minute");
    };

    for (i, response) in phase_one.iter().enumerate() {
        let ctx = format!("{run}: key2 alone, request {}", i + 1);
        let (overall, want) = if i < 20 {
            (Code::Ok, ok(20, Unit::Minute, 20 - (i as u32 + 1)))
        } else {
            (Code::OverLimit, over(20, Unit::Minute))
        };
        check(&ctx, response, overall, &[want], Reset::WholeSeconds);
    }
    for (i, response) in phase_two.iter().enumerate() {
        let ctx = format!("{run}: key2 and key3, request {}", i + 1);
        let n = i as u32 + 1;
        if i < 10 {
            let wants = [ok(20, Unit::Minute, 20 - n), ok(10, Unit::Hour, 10 - n)];
            check(&ctx, response, Code::Ok, &wants, Reset::WholeSeconds);
        } else {
            // key3 is over: the request is denied. key2 reads what the store holds for it,
            // also when the local cache answered for key3.
            let key2 = if count_denied { 20 - n } else { 10 };
            let wants = [ok(20, Unit::Minute, key2), over(10, Unit::Hour)];
            check(&ctx, response, Code::OverLimit, &wants, Reset::WholeSeconds);
        }
    }
    seen.extend(phase_one);
    seen.extend(phase_two);
    summary(&seen)
}

/// Runs testBasicBaseConfig with the local over-limit cache on and off: the same answers.
async fn basic_base_config_with_and_without_cache(count_denied: bool) {
    let stores = Stores::start();
    for store in stores.each() {
        let cached = basic_base_config(&store, "1000", count_denied).await;
        let uncached = basic_base_config(&store, "0", count_denied).await;
        assert_eq!(
            cached, uncached,
            "{}: the local cache changed an answer",
            store.name
        );
    }
}

#[tokio::test]
async fn basic_base_config_denied_requests_count_nothing() {
    basic_base_config_with_and_without_cache(false).await;
}

#[tokio::test]
async fn basic_base_config_with_count_denied_hits() {
    basic_base_config_with_and_without_cache(true).await;
}

// ---------------------------------------------------------------------------------------------
// 4. The reference README's examples.

#[tokio::test]
async fn readme_example_2_nested_descriptors_and_two_rules_in_one_request() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store.start("readme", &[]).await;
        let mut client = floodgate.client().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let window = Window::new(86_400);
            let number = fresh("206");
            let both = || {
                req(
                    "messaging",
                    vec![
                        descriptor(&[("message_type", "marketing"), ("to_number", &number)]),
                        desc("to_number", &number),
                    ],
                )
            };
            let mut responses = Vec::new();
            for _ in 0..6 {
                responses.push(ask(&mut client, both()).await);
            }
            // The plain rule alone, and the marketing rule for another number: own counters.
            let alone = ask(
                &mut client,
                req("messaging", vec![desc("to_number", &number)]),
            )
            .await;
            let other = fresh("206");
            let request = req(
                "messaging",
                vec![descriptor(&[
                    ("message_type", "marketing"),
                    ("to_number", &other),
                ])],
            );
            let elsewhere = ask(&mut client, request).await;
            if !window.held() {
                assert!(attempt < 3, "three runs each crossed a day");
                continue;
            }
            for (i, response) in responses.iter().enumerate() {
                let ctx = format!("{}: marketing message {}", store.name, i + 1);
                let n = i as u32 + 1;
                if n <= 5 {
                    let wants = [ok(5, Unit::Day, 5 - n), ok(100, Unit::Day, 100 - n)];
                    check(&ctx, response, Code::Ok, &wants, Reset::InUnit);
                } else {
                    // The OR of both: denied, which counts nothing on the other rule.
                    let wants = [over(5, Unit::Day), ok(100, Unit::Day, 95)];
                    check(&ctx, response, Code::OverLimit, &wants, Reset::InUnit);
                }
            }
            let ctx = format!("{}: a plain message", store.name);
            let wants = [ok(100, Unit::Day, 94)];
            check(&ctx, &alone, Code::Ok, &wants, Reset::InUnit);
            let ctx = format!("{}: marketing to another number", store.name);
            let wants = [ok(5, Unit::Day, 4)];
            check(&ctx, &elsewhere, Code::Ok, &wants, Reset::InUnit);
            break;
        }
    }
}

#[tokio::test]
async fn readme_example_3_key_and_value_match_before_key_alone() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store.start("readme", &[]).await;
        let mut client = floodgate.client().await;
        let domain = "edge_proxy_per_ip";
        let response = ask(
            &mut client,
            req(domain, vec![desc("remote_address", "50.0.0.1")]),
        )
        .await;
        let ctx = format!("{}: 50.0.0.1", store.name);
        let wants = [ok(10, Unit::Second, 9)];
        check(&ctx, &response, Code::Ok, &wants, Reset::InUnit);
        for round in 1..=2 {
            let request = req(domain, vec![desc("remote_address", "50.0.0.5")]);
            let response = ask(&mut client, request).await;
            let ctx = format!("{}: 50.0.0.5, round {round}", store.name);
            let wants = [over(0, Unit::Second)];
            check(&ctx, &response, Code::OverLimit, &wants, Reset::InUnit);
        }
    }
}

#[tokio::test]
async fn readme_example_4_depth_must_match() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store.start("readme", &[]).await;
        let mut client = floodgate.client().await;
        let deep = || descriptor(&[("key", "value"), ("subkey", "subvalue")]);
        let shallow = || desc("key", "value");
        let ctx = |name: &str| format!("{}: {name}", store.name);

        let response = ask(&mut client, req("example4", vec![deep()])).await;
        let name = ctx("two entries, one-level config");
        check(&name, &response, Code::Ok, &[Want::NoLimit], Reset::InUnit);
        let response = ask(&mut client, req("example4", vec![shallow()])).await;
        let name = ctx("one entry, one-level config");
        let wants = [ok(300, Unit::Second, 299)];
        check(&name, &response, Code::Ok, &wants, Reset::InUnit);

        let response = ask(&mut client, req("example4_nested", vec![deep()])).await;
        let name = ctx("two entries, two-level config");
        check(&name, &response, Code::Ok, &wants, Reset::InUnit);
        let response = ask(&mut client, req("example4_nested", vec![shallow()])).await;
        let name = ctx("one entry, two-level config");
        check(&name, &response, Code::Ok, &[Want::NoLimit], Reset::InUnit);
    }
}

#[tokio::test]
async fn readme_example_5_unlimited() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store.start("readme", &[]).await;
        let mut client = floodgate.client().await;
        // Twice, each time with a fresh azure counter: the unlimited one is never counted.
        for round in 1..=2 {
            let request = req(
                "internal",
                vec![desc("ldap", "cn=admin"), desc("azure", &fresh("tenant"))],
            );
            let response = ask(&mut client, request).await;
            let ctx = format!("{}: ldap and azure, round {round}", store.name);
            let wants = [Want::Unlimited, ok(100, Unit::Minute, 99)];
            check(&ctx, &response, Code::Ok, &wants, Reset::InUnit);
        }
    }
}

#[tokio::test]
async fn readme_example_6_shadow_mode_rule() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store.start("readme", &[]).await;
        let mut client = floodgate.client().await;
        // Hits in one request, so that no second ends between them: user-a's rule is over
        // its 10 a second yet answers OK; user-b's 20 a second is enforced.
        let cases = [
            ("user-a", 11, Code::Ok, ok(10, Unit::Second, 0)),
            ("user-b", 21, Code::OverLimit, over(20, Unit::Second)),
            ("user-b", 20, Code::Ok, ok(20, Unit::Second, 0)),
            ("user-a", 10, Code::Ok, ok(10, Unit::Second, 0)),
        ];
        for (user, hits, overall, want) in cases {
            let service = fresh("auth-service");
            let mut request = req(
                "example6",
                vec![descriptor(&[("service", &service), ("user", user)])],
            );
            request.hits_addend = hits;
            let response = ask(&mut client, request).await;
            let ctx = format!("{}: {user} with {hits} hits", store.name);
            check(&ctx, &response, overall, &[want], Reset::InUnit);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. The service tests' edge cases.

#[tokio::test]
async fn unknown_domain_and_unmatched_descriptors() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store.start("service.yaml", &[]).await;
        let mut client = floodgate.client().await;
        let c = &mut client;
        let ctx = |name: &str| format!("{}: {name}", store.name);

        // TestService: a domain without config, then a limit over beside an unmatched
        // descriptor, in both orders.
        let name = ctx("unknown domain");
        case(
            c,
            &name,
            "test-domain",
            &[("hello", Rule::NoLimit)],
            Code::Ok,
        )
        .await;
        let descriptors = [("over", OVER), ("hello", Rule::NoLimit)];
        let name = ctx("over, unmatched");
        case(c, &name, "service-domain", &descriptors, Code::OverLimit).await;
        let descriptors = [("hello", Rule::NoLimit), ("over", OVER)];
        let name = ctx("unmatched, over");
        case(c, &name, "service-domain", &descriptors, Code::OverLimit).await;

        // Without --response-headers or --response-dynamic-metadata, neither is added.
        let request = req("service-domain", vec![desc("ten", &fresh("t"))]);
        let response = ask(c, request).await;
        let name = ctx("no decorations");
        assert_eq!(limit_headers(&response), Vec::new(), "{name}");
        assert_eq!(response.dynamic_metadata, None, "{name}");
    }
}

#[tokio::test]
async fn unlimited_descriptors() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store.start("service.yaml", &[]).await;
        let mut client = floodgate.client().await;
        // TestUnlimited: a limited, an unmatched and an unlimited descriptor.
        let descriptors = [
            ("under", UNDER),
            ("hello", Rule::NoLimit),
            ("free", Rule::Unlimited),
        ];
        let name = format!("{}: unlimited", store.name);
        case(&mut client, &name, "service-domain", &descriptors, Code::Ok).await;
    }
}

#[tokio::test]
async fn empty_domain_and_no_descriptors_are_invalid_arguments() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store.start("service.yaml", &[]).await;
        let mut client = floodgate.client().await;
        // TestEmptyDomain, TestEmptyDescriptors.
        let cases = [
            (req("", vec![desc("hello", "world")]), "domain"),
            (req("service-domain", Vec::new()), "descriptor"),
        ];
        for (request, about) in cases {
            let status = client
                .should_rate_limit(request)
                .await
                .expect_err("an invalid request is refused");
            let name = format!("{}: {about}", store.name);
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{name}: {status:?}"
            );
            assert!(status.message().contains(about), "{name}: {status:?}");
        }
        // The service still answers afterwards.
        let response = ask(&mut client, req("service-domain", vec![desc("hello", "w")])).await;
        assert_eq!(response.overall_code(), Code::Ok, "{}", store.name);
    }
}

#[tokio::test]
async fn global_shadow_mode() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store.start("service.yaml", &["--shadow-mode"]).await;
        let mut client = floodgate.client().await;
        let c = &mut client;
        let ctx = |name: &str| format!("{}: --shadow-mode, {name}", store.name);
        // TestServiceGlobalShadowMode: the status stays OVER_LIMIT, the overall code is OK (and
        // the request is admitted, so the limits under count it).
        let descriptors = [("over", OVER), ("hello", Rule::NoLimit)];
        case(
            c,
            &ctx("over, unmatched"),
            "service-domain",
            &descriptors,
            Code::Ok,
        )
        .await;
        let descriptors = [("under", UNDER), ("over", OVER)];
        case(
            c,
            &ctx("under, over"),
            "service-domain",
            &descriptors,
            Code::Ok,
        )
        .await;
    }
}

#[tokio::test]
async fn ratelimit_headers() {
    let stores = Stores::start();
    for store in stores.each() {
        let floodgate = store.start("service.yaml", &["--response-headers"]).await;
        let mut client = floodgate.client().await;
        let domain = "service-domain";
        let ctx = |name: &str| format!("{}: --response-headers, {name}", store.name);

        // TestServiceWithDefaultRatelimitHeaders: a limit of 10 a minute used up, beside an
        // unmatched descriptor: the headers are the over-limit descriptor's.
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let window = Window::new(60);
            let value = fresh("ten");
            for _ in 0..10 {
                ask(&mut client, req(domain, vec![desc("ten", &value)])).await;
            }
            let request = req(domain, vec![desc("ten", &value), desc("hello", "world")]);
            let response = ask(&mut client, request).await;
            if window.held() {
                break response;
            }
            assert!(attempt < 3, "three runs each crossed a minute");
        };
        let name = ctx("over limit");
        let wants = [over(10, Unit::Minute), Want::NoLimit];
        check(&name, &response, Code::OverLimit, &wants, Reset::InUnit);
        let headers = limit_headers(&response);
        assert_eq!(headers, headers_of(&response.statuses[0]), "{name}");
        assert_eq!(headers[0].1, "10", "{name}");
        assert_eq!(headers[1].1, "0", "{name}");
        let reset: i64 = headers[2].1.parse().unwrap();
        assert!((1..=60).contains(&reset), "{name}: reset {reset}");

        // All under: the descriptor closest to its limit (fewest remaining) gives the headers.
        let request = req(
            domain,
            vec![
                desc("hourly", &fresh("h")),
                desc("ten", &fresh("t")),
                desc("hello", "world"),
            ],
        );
        let response = ask(&mut client, request).await;
        let name = ctx("closest to its limit");
        let wants = [
            ok(100, Unit::Hour, 99),
            ok(10, Unit::Minute, 9),
            Want::NoLimit,
        ];
        check(&name, &response, Code::Ok, &wants, Reset::InUnit);
        assert_eq!(
            limit_headers(&response),
            headers_of(&response.statuses[1]),
            "{name}"
        );

        // A shadow rule over its limit reads OK with 0 remaining; a real over-limit descriptor
        // after it still gives the headers (the reference makes any over-limit descriptor the
        // headers' one).
        let request = req(
            domain,
            vec![
                with_hits(desc("shadow_one", &fresh("s")), 2),
                desc("over", &fresh("o")),
            ],
        );
        let response = ask(&mut client, request).await;
        let name = ctx("shadow over, then over");
        let wants = [ok(1, Unit::Minute, 0), over(0, Unit::Minute)];
        check(&name, &response, Code::OverLimit, &wants, Reset::InUnit);
        assert_eq!(
            limit_headers(&response),
            headers_of(&response.statuses[1]),
            "{name}"
        );

        // No limited descriptor, no headers: unmatched and unlimited ones have no limit.
        let request = req(domain, vec![desc("hello", "world"), desc("free", "x")]);
        let response = ask(&mut client, request).await;
        let name = ctx("no limited descriptor");
        check(
            &name,
            &response,
            Code::Ok,
            &[Want::NoLimit, Want::Unlimited],
            Reset::InUnit,
        );
        assert_eq!(limit_headers(&response), Vec::new(), "{name}");
    }
}
