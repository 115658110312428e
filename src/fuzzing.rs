//! Entry points for the fuzz targets (`tests/fuzz`) and their regression tests: each takes
//! arbitrary bytes and runs them down one path where bytes from outside are read, as far as
//! they go. An error answer is fine; a panic (or a broken invariant asserted here) is a bug.
//!
//! Not part of Floodgate's API (hidden from its docs): it reaches the crate's private parsers
//! so that the fuzz crate, built apart with the nightly toolchain, needs nothing else. Each
//! call builds its own limiter on a fresh memory store at a fixed time, so a crash found
//! replays alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use prost::Message;

use crate::admin::{self, AdminState};
use crate::clock::ManualClock;
use crate::config::{Config, Domain, LoadOptions, Node};
use crate::decision::PlanOptions;
use crate::http::{self, HttpState};
use crate::limiter::{Limiter, LimiterOptions};
use crate::pb::RateLimitRequest;
use crate::pb::xds::DiscoveryResponse;
use crate::query::{DescriptorQuery, Entry, RateLimitQuery};
use crate::rls::{InputLimits, ResponseOptions, RlsService};
use crate::store::{MemoryStore, TierModeRecord, redis};

/// The config requests are decided against: every kind of rule (nested, wildcard, shared,
/// unlimited, shadow, quota, replaced, metered, every algorithm) and a tiered domain.
pub const DOMAINS: [&str; 2] = [
    r#"
domain: fuzz
descriptors:
  - key: remote_address
    rate_limit: { unit: minute, requests_per_unit: 3, name: per_address }
  - key: path
    value: "/api/*"
    share_threshold: true
    rate_limit: { unit: second, requests_per_unit: 2, algorithm: sliding_window }
  - key: path
    value: /free
    rate_limit: { unlimited: true }
  - key: path
    value: /shadow
    shadow_mode: true
    rate_limit: { unit: hour, requests_per_unit: 1 }
  - key: plan
    quota_mode: true
    rate_limit: { unit: day, requests_per_unit: 2 }
  - key: bucket
    rate_limit: { unit: second, requests_per_unit: 5, algorithm: token_bucket, burst: 2 }
  - key: metered
    rate_limit: { unit: minute, requests_per_unit: 2, unit_multiplier: 5, count_denied_hits: true }
  - key: header_match
    value: login
    detailed_metric: true
    metadata: { team: auth, owner: [a, b] }
    descriptors:
      - key: remote_address
        rate_limit:
          unit: minute
          requests_per_unit: 1
          name: login
          replaces: [{ name: per_address }]
"#,
    r#"
domain: api
tiers:
  free: { unit: minute, base: 2, burst: 3, degraded: 1 }
  pro:  { unit: hour, base: 100, burst: 150, degraded: 10 }
api_keys:
  free_key: { user: free_user, tier: free }
  pro_key:  { user: pro_user, tier: pro }
invalid_keys: { max_attempts: 2, window: 1m, block_for: 5s }
descriptors:
  - key: api_key
    tiered: true
  - key: remote_address
    value_to_metric: true
    rate_limit: { unit: hour, requests_per_unit: 5 }
"#,
];

/// Some whole minute far from the epoch, where every call starts.
const T0: u64 = 29_000_000 * 60_000;
/// Files one `config` input may hold (NUL-separated).
const MAX_FILES: usize = 8;
/// Descriptors made from one config's tree, at most.
const MAX_TREE_DESCRIPTORS: usize = 64;
/// The admin key the admin target sends.
const ADMIN_KEY: &str = "fuzz-admin-key";

/// A limiter on a fresh memory store, its clock at [`T0`].
struct Env {
    clock: Arc<ManualClock>,
    limiter: Arc<Limiter>,
}

impl Env {
    /// `config`, its seeded API keys written, under `options`.
    fn new(config: Config, options: LimiterOptions) -> Env {
        let clock = Arc::new(ManualClock::new(T0));
        let store = MemoryStore::new(clock.clone(), 1_000);
        let limiter = Arc::new(Limiter::new(config, store, options, clock.clone()));
        let seeded = block_on(limiter.tiers().seed(&limiter.config()));
        assert!(seeded.is_ok(), "the memory store cannot fail: {seeded:?}");
        Env { clock, limiter }
    }

    /// The [`DOMAINS`], under the plan options `variant` picks.
    fn domains(variant: usize) -> Env {
        let sources = DOMAINS
            .iter()
            .enumerate()
            .map(|(i, text)| (PathBuf::from(format!("domain{i}.yaml")), *text))
            .collect::<Vec<_>>();
        let config = Config::from_sources(sources.iter().map(|(p, t)| (p.as_path(), *t)))
            .expect("the fuzz domains are valid");
        let plan = PlanOptions {
            key_prefix: "fuzz:".into(),
            global_shadow: variant % 4 == 1,
            global_quota: variant % 4 == 2,
            count_denied_hits: variant % 4 == 3,
        };
        Env::new(
            config,
            LimiterOptions {
                plan,
                ..LimiterOptions::default()
            },
        )
    }

    /// The gRPC service over this limiter, echoing requests in its dynamic metadata.
    fn rls(&self) -> RlsService {
        let response = ResponseOptions {
            limit_headers: true,
            dynamic_metadata: true,
            ..ResponseOptions::default()
        };
        RlsService::new(self.limiter.clone(), InputLimits::default(), response)
    }
}

/// Runs `future` to completion on this thread's runtime (the memory store never waits, but
/// the pipeline is async).
fn block_on<F: Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
    }
    RUNTIME.with(|runtime| runtime.block_on(future))
}

/// Config files (NUL-separated YAML texts) loaded as `serve` would, each way domains may
/// span files; a config that loads is dumped, and every rule of its tree is asked for.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files: Vec<(PathBuf, &str)> = text
        .split('\0')
        .take(MAX_FILES)
        .enumerate()
        .map(|(i, text)| (PathBuf::from(format!("file{i}.yaml")), text))
        .collect();
    let mut decided = false;
    for merge_domains in [false, true] {
        let options = LoadOptions {
            merge_domains,
            ..LoadOptions::default()
        };
        let sources = files.iter().map(|(path, text)| (path.as_path(), *text));
        let Ok(config) = Config::from_sources_with(sources, &options) else {
            continue;
        };
        let _ = config.dump();
        if !decided {
            decide_tree(config);
            decided = true;
        }
    }
}

/// Asks for every rule of `config` (a descriptor per path to a rule, a few to a request),
/// twice, a minute apart.
fn decide_tree(config: Config) {
    let mut queries = Vec::new();
    for name in config.domain_names() {
        let Some(domain) = config.domain(name) else {
            continue;
        };
        let mut descriptors = Vec::new();
        walk(domain, domain.root(), &mut Vec::new(), &mut descriptors);
        for chunk in descriptors.chunks(4) {
            queries.push(RateLimitQuery {
                domain: name.to_owned(),
                descriptors: chunk.to_vec(),
            });
        }
    }
    let env = Env::new(config, LimiterOptions::default());
    for advance in [0, 60_000] {
        env.clock.advance(advance);
        for query in &queries {
            let decision = block_on(env.limiter.decide(query)).expect("memory store decides");
            assert_eq!(decision.statuses.len(), query.descriptors.len());
        }
    }
}

/// Appends a descriptor for every rule under `node` reached by `path` (a value standing for
/// each wildcard and for any value), at most [`MAX_TREE_DESCRIPTORS`], in a fixed order.
fn walk(domain: &Domain, node: &Node, path: &mut Vec<Entry>, out: &mut Vec<DescriptorQuery>) {
    if node.rule.is_some() && !path.is_empty() {
        out.push(DescriptorQuery {
            entries: path.clone(),
            limit_override: None,
            hits: 1,
        });
    }
    let mut keys: Vec<&String> = node.children.keys().collect();
    keys.sort();
    for key in keys {
        let branch = &node.children[key];
        let mut exact: Vec<(String, usize)> = branch
            .exact
            .iter()
            .map(|(v, id)| (v.clone(), *id))
            .collect();
        exact.sort();
        let wildcards = branch
            .wildcards
            .iter()
            .map(|(p, id)| (p.replace('*', "x"), *id));
        let any = branch.any.map(|id| ("any value".to_owned(), id));
        for (value, id) in exact.into_iter().chain(wildcards).chain(any) {
            if out.len() >= MAX_TREE_DESCRIPTORS {
                return;
            }
            path.push(Entry {
                key: key.clone(),
                value,
            });
            walk(domain, domain.node(id), path, out);
            path.pop();
        }
    }
}

/// A gRPC request body (a protobuf `RateLimitRequest`) answered three times (now, a second
/// later, a minute later) against the [`DOMAINS`]; the input's length picks the plan options
/// (none, global shadow, global quota, denied hits counted).
pub fn rls_request(data: &[u8]) {
    let Ok(request) = RateLimitRequest::decode(data) else {
        return;
    };
    let env = Env::domains(data.len());
    let rls = env.rls();
    for advance in [0, 1_000, 60_000] {
        env.clock.advance(advance);
        if let Ok(response) = block_on(rls.answer(request.clone())) {
            assert_eq!(response.statuses.len(), request.descriptors.len());
        }
    }
}

/// A `POST /json` body through the HTTP router, twice: any answer but a 500 is fine, and a
/// decision's body is JSON. A body that is no request is refused by its parse alone (the
/// limiter is never reached), so it stops there: a limiter per input is the cost of a run.
pub fn json_body(data: &[u8]) {
    if serde_json::from_slice::<RateLimitRequest>(data).is_err() {
        return;
    }
    let env = Env::domains(0);
    let router = http::router(Arc::new(HttpState {
        rls: env.rls(),
        limiter: env.limiter.clone(),
        serving: Arc::new(AtomicBool::new(true)),
        metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle(),
        config_health: crate::health::ConfigHealth::Any,
    }));
    for _ in 0..2 {
        let (status, body) = call(&router, Method::POST, "/json", data.to_vec());
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        if matches!(status, StatusCode::OK | StatusCode::TOO_MANY_REQUESTS) {
            let answer = serde_json::from_str::<serde_json::Value>(&body);
            assert!(answer.is_ok(), "{body}");
        }
    }
}

/// An admin API body: the first byte picks the call (health, new user, new key, new tier),
/// the rest is its body; then the state is read back (health, the user with its usage, the
/// users). No answer may be a 500. A body that is no JSON object is refused before anything
/// else, so it stops there (a limiter per input is the cost of a run).
pub fn admin_body(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let object = serde_json::from_slice::<serde_json::Value>(body);
    if !object.is_ok_and(|value| value.is_object()) {
        return;
    }
    let env = Env::domains(0);
    let router = admin::router(Arc::new(AdminState::new(
        env.limiter.clone(),
        Some(crate::secrets::Secret::given(ADMIN_KEY)),
    )));
    let (method, path) = match which % 4 {
        0 => (Method::POST, "/admin/health"),
        1 => (Method::POST, "/admin/users"),
        2 => (Method::POST, "/admin/users/free_user/keys"),
        _ => (Method::PUT, "/admin/users/free_user/tier"),
    };
    let reads = [
        "/admin/health",
        "/admin/users/free_user",
        "/admin/users?limit=2",
    ];
    let (status, answer) = call(&router, method, path, body.to_vec());
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    for read in reads {
        let (status, answer) = call(&router, Method::GET, read, Vec::new());
        assert!(status.is_success(), "{read}: {status} {answer}");
    }
}

/// One call to `router` from a loopback peer with the admin key; its status and body.
fn call(router: &axum::Router, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, String) {
    use tower::ServiceExt as _;
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(admin::ADMIN_KEY_HEADER, ADMIN_KEY)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("a well-formed request");
    let peer = SocketAddr::from(([127, 0, 0, 1], 4000));
    request.extensions_mut().insert(ConnectInfo(peer));
    block_on(async {
        let response = router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await;
        let text = bytes.map(|b| String::from_utf8_lossy(&b).into_owned());
        (status, text.unwrap_or_default())
    })
}

/// What Floodgate reads back from its peers: the first byte picks a Redis decision reply
/// (RESP), a Redis registry reply, a stored tier-mode record (JSON) or an xDS response
/// (protobuf); the rest is the reply.
pub fn replies(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => decision_reply(rest),
        1 => registry_reply(rest),
        2 => tier_mode_record(rest),
        _ => xds_response(rest),
    }
}

/// A decision script's reply, for as many checks as the first byte says (up to 7).
fn decision_reply(data: &[u8]) {
    let Some((&checks, reply)) = data.split_first() else {
        return;
    };
    let checks = usize::from(checks % 8);
    let Ok(value) = ::redis::parse_redis_value(reply) else {
        return;
    };
    if let Ok(counted) = redis::decision_reply(&value, checks) {
        assert_eq!(counted.counters.len(), checks);
    }
}

/// A registry script's reply, read as each registry call reads it.
fn registry_reply(data: &[u8]) {
    let Ok(value) = ::redis::parse_redis_value(data) else {
        return;
    };
    if let Ok(status) = ::redis::from_redis_value_ref::<String>(&value) {
        let _ = redis::change_reply(&status, "user", &["key-1", "key-2"]);
    }
    if let Ok(users) = ::redis::from_redis_value_ref::<Vec<Vec<String>>>(&value) {
        let _ = redis::users_reply(users);
    }
    let _ = ::redis::from_redis_value_ref::<Vec<String>>(&value);
}

/// A stored tier-mode record: one that reads writes back as itself.
fn tier_mode_record(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(record) = TierModeRecord::from_json(text) else {
        return;
    };
    let _ = record.at(T0);
    let json = record.to_json().expect("a record writes as JSON");
    let again = TierModeRecord::from_json(&json).expect("a written record reads");
    assert_eq!(again, record);
}

/// An xDS response's resources made into a config, each way domains may span resources.
fn xds_response(data: &[u8]) {
    let Ok(response) = DiscoveryResponse::decode(data) else {
        return;
    };
    for merge_domains in [false, true] {
        let options = LoadOptions {
            merge_domains,
            ..LoadOptions::default()
        };
        if let Ok(config) = crate::xds::config_from_resources(&response.resources, &options) {
            let _ = config.dump();
        }
    }
}
