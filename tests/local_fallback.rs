//! `--failure-mode local` through the real binary: two replicas on one Redis learn that they
//! are two; with Redis killed, each decides from its own counters with half of every limit,
//! marked `x-floodgate-degraded: local-fallback`, and stays ready; with Redis back, the shared
//! counters decide again.

mod support;

use std::net::SocketAddr;

use floodgate::pb::RateLimitResponse;
use floodgate::pb::rate_limit_response::Code;
use support::http::http;
use support::process::Floodgate;
use support::{PATIENCE, RedisServer, request, temp_dir, wait_for};

/// 10 a day: a window no test run crosses but at midnight.
const CONFIG: &str = "
domain: fallback
descriptors:
  - key: client
    rate_limit: { unit: day, requests_per_unit: 10 }
";
/// A tiered domain: its API key's owner is read from Redis (and cached for 1 ms).
const TIERED: &str = "
domain: api
tiers:
  free: { unit: day, base: 4, burst: 8, degraded: 2 }
api_keys:
  known_key_0123456789: { user: known_user, tier: free }
descriptors:
  - key: api_key
    tiered: true
";

/// The value of the response header `name`.
fn header(response: &RateLimitResponse, name: &str) -> Option<String> {
    response
        .response_headers_to_add
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.clone())
}

/// The value of the unlabelled metric `name` on `http`'s /metrics.
async fn metric(http_addr: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http(http_addr, "GET", "/metrics", "").await;
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Asks `server` `count` times for `domain`'s descriptor `key`=`value`; returns the answers.
async fn ask_in(
    server: &Floodgate,
    domain: &str,
    (key, value): (&str, &str),
    count: usize,
) -> Vec<RateLimitResponse> {
    let mut grpc = server.client().await;
    let mut answers = Vec::new();
    for _ in 0..count {
        let req = request(domain, &[&[(key, value)]]);
        answers.push(grpc.should_rate_limit(req).await.unwrap().into_inner());
    }
    answers
}

/// Asks `server` `count` times for `client`.
async fn ask(server: &Floodgate, client: &str, count: usize) -> Vec<RateLimitResponse> {
    ask_in(server, "fallback", ("client", client), count).await
}

/// Asks `server` `count` times for the tiered domain's `api_key`.
async fn ask_key(server: &Floodgate, api_key: &str, count: usize) -> Vec<RateLimitResponse> {
    ask_in(server, "api", ("api_key", api_key), count).await
}

fn admitted(answers: &[RateLimitResponse]) -> usize {
    answers
        .iter()
        .filter(|r| r.overall_code() == Code::Ok)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_each_limit_while_redis_is_down() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let dir = temp_dir("local-fallback");
    std::fs::write(dir.path().join("fallback.yaml"), CONFIG).unwrap();
    std::fs::write(dir.path().join("api.yaml"), TIERED).unwrap();
    let config = dir.path().display().to_string();
    let url = redis.url();
    let args = [
        "--state-cache-ttl",
        "1ms",
        "--store",
        "redis",
        "--redis-url",
        url.as_str(),
        "--failure-mode",
        "local",
        "--redis-timeout",
        "200ms",
    ];
    let replicas = [
        Floodgate::start(&config, &args).await,
        Floodgate::start(&config, &args).await,
    ];
    // Each replica hears of the other within a heartbeat or two.
    for replica in &replicas {
        wait_for("both replicas to count two", PATIENCE, || async {
            metric(replica.http_addr, "floodgate_local_fallback_replicas").await == Some(2.0)
        })
        .await;
    }
    // While Redis answers, the counter is shared: 10 in all.
    let first = ask(&replicas[0], "shared", 6).await;
    let second = ask(&replicas[1], "shared", 6).await;
    assert_eq!((admitted(&first), admitted(&second)), (6, 4));
    assert!(
        first
            .iter()
            .all(|r| header(r, "x-floodgate-degraded").is_none())
    );

    // Each replica reads the key's owner once (the config's keys are seeded into Redis first).
    for replica in &replicas {
        wait_for("the API key to be seeded", PATIENCE, || async {
            admitted(&ask_key(replica, "known_key_0123456789", 1).await) == 1
        })
        .await;
    }

    redis.kill();
    // Without Redis, each replica admits its half of the limit, from its own counters.
    for replica in &replicas {
        let answers = ask(replica, "outage", 10).await;
        assert_eq!(admitted(&answers), 5, "half of 10 on each replica");
        for answer in &answers {
            assert_eq!(
                header(answer, "x-floodgate-degraded").as_deref(),
                Some("local-fallback")
            );
        }
        let (status, body) = http(replica.http_addr, "GET", "/readyz", "").await;
        assert_eq!(status, 200, "ready while the fallback decides: {body}");
        let (status, _) = http(replica.http_addr, "GET", "/healthcheck", "").await;
        assert_eq!(
            status, 500,
            "the reference's health check still says the store is down"
        );
        let decisions = metric(
            replica.http_addr,
            "floodgate_local_fallback_decisions_total",
        );
        assert!(decisions.await >= Some(10.0));
        // A known key's owner, read before the outage and long stale, still counts against its
        // tier (8 a day, so 4 here); a key never resolved here is denied, not let through.
        let known = ask_key(replica, "known_key_0123456789", 6).await;
        assert_eq!(admitted(&known), 4, "half of the tier's 8");
        let unknown = ask_key(replica, "never_seen_key_987654", 1).await;
        assert_eq!(unknown[0].overall_code(), Code::OverLimit);
        assert_eq!(
            header(&unknown[0], "x-floodgate-degraded").as_deref(),
            Some("local-fallback")
        );
    }

    redis.restart();
    // Back: the shared counters decide again (the first answers may still be the fallback's
    // while the circuit waits to probe).
    for replica in &replicas {
        wait_for("Redis to decide again", PATIENCE, || async {
            let answers = ask(replica, "probe", 1).await;
            header(&answers[0], "x-floodgate-degraded").is_none()
        })
        .await;
    }
    let first = ask(&replicas[0], "after", 7).await;
    let second = ask(&replicas[1], "after", 7).await;
    assert_eq!(
        (admitted(&first), admitted(&second)),
        (7, 3),
        "one shared limit of 10 again"
    );
    assert!(
        second
            .iter()
            .all(|r| header(r, "x-floodgate-degraded").is_none())
    );
}

#[tokio::test]
async fn a_fixed_replica_count_needs_no_heartbeat_and_local_needs_redis() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let dir = temp_dir("local-fallback-fixed");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let config = config.display().to_string();
    let url = redis.url();
    let replica = Floodgate::start(
        &config,
        &[
            "--store",
            "redis",
            "--redis-url",
            url.as_str(),
            "--failure-mode",
            "local",
            "--fallback-replicas",
            "5",
        ],
    )
    .await;
    redis.kill();
    assert_eq!(admitted(&ask(&replica, "fixed", 5).await), 2, "10 / 5");

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(["serve", "--config", &config, "--failure-mode", "local"])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--failure-mode local needs --store redis"),
        "{stderr}"
    );
}
