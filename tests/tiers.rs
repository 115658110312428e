//! Tiers, health states, API keys and the admin API, against the real `floodgate` binary, in
//! memory and Redis modes (each test starts its own processes).

mod support;

use std::time::Duration;

use floodgate::pb::rate_limit_response::Code;
use floodgate::pb::{RateLimitResponse, rate_limit_service_client::RateLimitServiceClient};
use serde_json::{Value, json};
use support::http::http_with;
use support::process::Floodgate;
use support::{RedisServer, request, wait_for};
use tonic::transport::Channel;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiers.yaml");
const ADMIN_KEY: &str = "test-admin-key-0123456789";

/// The store a test runs against; Redis ones keep their server alive for the test, SQLite
/// ones their directory (every server of a test shares its file).
enum Mode {
    Memory,
    Redis(RedisServer),
    Sqlite(tempfile::TempDir),
}

impl Mode {
    fn redis() -> Option<Mode> {
        RedisServer::start().map(Mode::Redis)
    }

    fn sqlite() -> Mode {
        Mode::Sqlite(support::temp_dir("tiers-sqlite"))
    }

    async fn floodgate(&self, extra: &[&str]) -> Floodgate {
        let mut args = vec!["--admin-key", ADMIN_KEY, "--state-cache-ttl", "500ms"];
        let url;
        if let Mode::Redis(redis) = self {
            url = redis.url();
            args.extend([
                "--store",
                "redis",
                "--redis-url",
                &url,
                "--redis-timeout",
                "2s",
            ]);
        }
        let path;
        if let Mode::Sqlite(dir) = self {
            path = dir.path().join("tiers.sqlite").display().to_string();
            args.extend(["--store", "sqlite", "--sqlite-path", &path]);
        }
        args.extend(extra);
        let floodgate = Floodgate::start(CONFIG, &args).await;
        // Seeding runs in the background: wait until the config's users exist.
        wait_for("seeded users", Duration::from_secs(10), || async {
            admin(&floodgate, "GET", "/admin/users/demo_pro_user", "")
                .await
                .0
                == 200
        })
        .await;
        floodgate
    }
}

async fn admin(floodgate: &Floodgate, method: &str, path: &str, body: &str) -> (u16, Value) {
    support::http::admin(floodgate.http_addr, ADMIN_KEY, method, path, body).await
}

async fn call(
    client: &mut RateLimitServiceClient<Channel>,
    api_key: &str,
    address: &str,
) -> RateLimitResponse {
    let req = request(
        "api",
        &[&[("api_key", api_key)], &[("remote_address", address)]],
    );
    client.should_rate_limit(req).await.unwrap().into_inner()
}

fn header<'a>(response: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    response
        .response_headers_to_add
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

/// Sends requests with `api_key` until the first OVER_LIMIT; returns how many were OK.
async fn admitted(
    client: &mut RateLimitServiceClient<Channel>,
    api_key: &str,
    address: &str,
    most: usize,
) -> usize {
    for n in 0..most {
        let response = call(client, api_key, address).await;
        if response.overall_code() == Code::OverLimit {
            let retry: u64 = header(&response, "retry-after")
                .expect("retry-after on OVER_LIMIT")
                .parse()
                .unwrap();
            assert!((1..=86_400).contains(&retry), "retry-after {retry}");
            return n;
        }
    }
    most
}

async fn set_health(floodgate: &Floodgate, body: Value) -> Value {
    let (status, reply) = admin(floodgate, "POST", "/admin/health", &body.to_string()).await;
    assert_eq!(status, 200, "{reply}");
    reply
}

async fn create_user(floodgate: &Floodgate, user: &str, tier: &str, key: &str) {
    let body = json!({ "user_id": user, "tier": tier, "api_keys": [key] }).to_string();
    let (status, reply) = admin(floodgate, "POST", "/admin/users", &body).await;
    assert_eq!(status, 201, "{reply}");
}

/// Waits, if needed, until the day's window has more than a minute left, so that counting runs
/// never straddle a window edge.
async fn away_from_window_edge() {
    wait_for(
        "a day window with a minute left",
        Duration::from_secs(70),
        || async {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            now % 86_400 < 86_400 - 60
        },
    )
    .await;
}

async fn normal_and_degraded_limits(mode: Mode) {
    away_from_window_edge().await;
    let floodgate = mode.floodgate(&[]).await;
    let mut client = floodgate.client().await;
    // NORMAL: burst limits.
    assert_eq!(
        admitted(&mut client, "demo_free_key_123", "10.0.0.1", 100).await,
        20
    );
    assert_eq!(
        admitted(&mut client, "demo_pro_key_789", "10.0.0.1", 200).await,
        150
    );
    assert_eq!(
        admitted(&mut client, "demo_enterprise_key_abc", "10.0.0.1", 1100).await,
        1000
    );

    // DEGRADED: degraded limits, for fresh users.
    let reply = set_health(
        &floodgate,
        json!({ "status": "DEGRADED", "updated_by": "oncall", "reason": "db slow" }),
    )
    .await;
    assert_eq!(
        (reply["status"].as_str(), reply["updated_by"].as_str()),
        (Some("DEGRADED"), Some("oncall"))
    );
    assert_eq!(reply["reason"], "db slow");
    for (user, tier, key) in [
        ("f2", "free", "k-free-2"),
        ("p2", "pro", "k-pro-2"),
        ("e2", "enterprise", "k-ent-2"),
    ] {
        create_user(&floodgate, user, tier, key).await;
    }
    assert_eq!(admitted(&mut client, "k-free-2", "10.0.0.2", 100).await, 2);
    assert_eq!(admitted(&mut client, "k-pro-2", "10.0.0.2", 200).await, 100);
    assert_eq!(
        admitted(&mut client, "k-ent-2", "10.0.0.2", 1100).await,
        1000
    );

    // Back to NORMAL: counters were kept, so f2 has 20 - 2 left.
    set_health(&floodgate, json!({ "status": "NORMAL" })).await;
    let response = call(&mut client, "k-free-2", "10.0.0.2").await;
    assert_eq!(response.overall_code(), Code::Ok);
    let status = &response.statuses[0];
    assert_eq!(status.current_limit.as_ref().unwrap().requests_per_unit, 20);
    assert_eq!(status.current_limit.as_ref().unwrap().name, "free");
    assert_eq!(status.limit_remaining, 17);
}

async fn keys_of_one_user_share_a_counter(mode: Mode) {
    away_from_window_edge().await;
    let floodgate = mode.floodgate(&[]).await;
    let mut client = floodgate.client().await;
    for _ in 0..10 {
        assert_eq!(
            call(&mut client, "demo_free_key_123", "10.0.1.1")
                .await
                .overall_code(),
            Code::Ok
        );
        assert_eq!(
            call(&mut client, "demo_free_key_456", "10.0.1.1")
                .await
                .overall_code(),
            Code::Ok
        );
    }
    assert_eq!(
        call(&mut client, "demo_free_key_123", "10.0.1.1")
            .await
            .overall_code(),
        Code::OverLimit
    );
    assert_eq!(
        call(&mut client, "demo_free_key_456", "10.0.1.1")
            .await
            .overall_code(),
        Code::OverLimit
    );
    let (status, user) = admin(&floodgate, "GET", "/admin/users/demo_free_user", "").await;
    assert_eq!(status, 200);
    assert_eq!(user["tier"], "free");
    assert_eq!(
        user["api_keys"],
        json!(["demo_free_key_123", "demo_free_key_456"])
    );
    assert_eq!(user["usage"]["api_key"]["used"], 20);
    assert_eq!(user["usage"]["api_key"]["remaining"], 0);
}

async fn invalid_keys_block_then_unblock(mode: Mode) {
    let floodgate = mode.floodgate(&[]).await;
    let mut client = floodgate.client().await;
    // max_attempts 3 per window: three refusals for the key, then the address is blocked.
    for attempt in 1..=4 {
        let response = call(&mut client, "stolen-or-made-up", "192.0.2.66").await;
        assert_eq!(
            response.overall_code(),
            Code::OverLimit,
            "attempt {attempt}"
        );
        assert_eq!(
            header(&response, "x-floodgate-reason"),
            Some("invalid-api-key")
        );
        assert!(String::from_utf8_lossy(&response.raw_body).contains("invalid API key"));
        assert!(header(&response, "retry-after").is_some());
    }
    // Blocked: even a valid key from that address is refused...
    let response = call(&mut client, "demo_pro_key_789", "192.0.2.66").await;
    assert_eq!(response.overall_code(), Code::OverLimit);
    assert_eq!(
        header(&response, "x-floodgate-reason"),
        Some("address-blocked")
    );
    let retry: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    // ...while other addresses pass, and the blocked request counted nothing.
    let response = call(&mut client, "demo_pro_key_789", "192.0.2.7").await;
    assert_eq!(response.overall_code(), Code::Ok);
    assert_eq!(response.statuses[0].limit_remaining, 149);
    // block_for is 2s: the address is let in again.
    wait_for("the block to end", Duration::from_secs(15), || {
        let mut client = client.clone();
        async move {
            call(&mut client, "demo_pro_key_789", "192.0.2.66")
                .await
                .overall_code()
                == Code::Ok
        }
    })
    .await;
}

async fn admin_input_is_checked_and_refusals_change_nothing(mode: Mode) {
    let floodgate = mode.floodgate(&[]).await;
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "POST",
            "/admin/health",
            r#"{"status":"BROKEN"}"#,
            400,
            "status",
        ),
        (
            "POST",
            "/admin/health",
            r#"{"status":"DEGRADED","ttl_seconds":-5}"#,
            400,
            "ttl_seconds",
        ),
        (
            "POST",
            "/admin/health",
            r#"{"status":"DEGRADED","ttl_seconds":0}"#,
            400,
            "ttl_seconds",
        ),
        (
            "POST",
            "/admin/health",
            r#"{"status":"DEGRADED","colour":"red"}"#,
            400,
            "body",
        ),
        (
            "POST",
            "/admin/health",
            r#"{"status":"DEGRADED""#,
            400,
            "body",
        ),
        ("POST", "/admin/health", r#"{}"#, 400, "status"),
        (
            "POST",
            "/admin/users",
            r#"{"user_id":"new","tier":"gold"}"#,
            400,
            "tier",
        ),
        ("POST", "/admin/users", r#"{"tier":"free"}"#, 400, "user_id"),
        (
            "POST",
            "/admin/users",
            r#"{"user_id":"new","tier":"free","api_keys":[""]}"#,
            400,
            "api_keys",
        ),
        (
            "POST",
            "/admin/users",
            r#"{"user_id":"new","tier":"free","api_keys":["demo_pro_key_789"]}"#,
            409,
            "",
        ),
        (
            "POST",
            "/admin/users",
            r#"{"user_id":"demo_pro_user","tier":"free"}"#,
            409,
            "",
        ),
        (
            "POST",
            "/admin/users/nobody/keys",
            r#"{"api_key":"k-x"}"#,
            404,
            "",
        ),
        (
            "POST",
            "/admin/users/demo_free_user/keys",
            r#"{"api_key":"demo_pro_key_789"}"#,
            409,
            "",
        ),
        (
            "PUT",
            "/admin/users/demo_free_user/tier",
            r#"{"tier":"platinum"}"#,
            400,
            "tier",
        ),
        (
            "PUT",
            "/admin/users/nobody/tier",
            r#"{"tier":"pro"}"#,
            404,
            "",
        ),
        (
            "DELETE",
            "/admin/users/demo_free_user/keys/not-its-key",
            "",
            404,
            "",
        ),
        ("GET", "/admin/users/nobody", "", 404, ""),
        ("GET", "/admin/users?limit=0", "", 400, "limit"),
        ("GET", "/admin/users?domain=other", "", 400, "domain"),
    ];
    for (method, path, body, want_status, want_field) in cases {
        let (status, reply) = admin(&floodgate, method, path, body).await;
        assert_eq!(status, *want_status, "{method} {path} {body}: {reply}");
        assert!(reply["error"].is_string(), "{reply}");
        if !want_field.is_empty() {
            assert_eq!(
                reply["field"], *want_field,
                "{method} {path} {body}: {reply}"
            );
        }
    }
    // Nothing changed.
    let (_, health) = admin(&floodgate, "GET", "/admin/health", "").await;
    assert_eq!(health["status"], "NORMAL");
    assert_eq!(
        admin(&floodgate, "GET", "/admin/users/new", "").await.0,
        404
    );
    let (_, user) = admin(&floodgate, "GET", "/admin/users/demo_free_user", "").await;
    assert_eq!(user["tier"], "free");
    assert_eq!(
        user["api_keys"],
        json!(["demo_free_key_123", "demo_free_key_456"])
    );
    let (_, page) = admin(&floodgate, "GET", "/admin/users?limit=500", "").await;
    let ids: Vec<&str> = page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["demo_enterprise_user", "demo_free_user", "demo_pro_user"]
    );

    // Accepted changes do take effect: a new key, a tier change, a revocation, paging.
    create_user(&floodgate, "zed", "free", "k-zed-1").await;
    let (status, _) = admin(
        &floodgate,
        "POST",
        "/admin/users/zed/keys",
        r#"{"api_key":"k-zed-2"}"#,
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = admin(
        &floodgate,
        "PUT",
        "/admin/users/zed/tier",
        r#"{"tier":"pro"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let mut client = floodgate.client().await;
    let response = call(&mut client, "k-zed-2", "10.0.2.1").await;
    assert_eq!(
        response.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        150
    );
    let (status, _) = admin(&floodgate, "DELETE", "/admin/users/zed/keys/k-zed-1", "").await;
    assert_eq!(status, 200);
    let response = call(&mut client, "k-zed-1", "10.0.2.1").await;
    assert_eq!(
        header(&response, "x-floodgate-reason"),
        Some("invalid-api-key")
    );
    let (_, page) = admin(&floodgate, "GET", "/admin/users?limit=2", "").await;
    assert_eq!(page["users"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, page) = admin(
        &floodgate,
        "GET",
        &format!("/admin/users?limit=2&after={next}"),
        "",
    )
    .await;
    let ids: Vec<&str> = page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["demo_pro_user", "zed"]);
}

async fn health_ttl_reverts_to_normal(mode: Mode) {
    let floodgate = mode.floodgate(&[]).await;
    let reply = set_health(
        &floodgate,
        json!({ "status": "DEGRADED", "ttl_seconds": 1 }),
    )
    .await;
    assert_eq!(reply["status"], "DEGRADED");
    assert_eq!(reply["ttl_seconds"], 1);
    let mut client = floodgate.client().await;
    let limit = |r: RateLimitResponse| {
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit
    };
    assert_eq!(
        limit(call(&mut client, "demo_pro_key_789", "10.0.3.1").await),
        100
    );
    wait_for("the TTL to end", Duration::from_secs(15), || async {
        admin(&floodgate, "GET", "/admin/health", "").await.1["status"] == "NORMAL"
    })
    .await;
    wait_for("NORMAL limits", Duration::from_secs(15), || {
        let mut client = client.clone();
        async move { limit(call(&mut client, "demo_pro_key_789", "10.0.3.1").await) == 150 }
    })
    .await;
}

#[tokio::test]
async fn normal_and_degraded_limits_memory() {
    normal_and_degraded_limits(Mode::Memory).await;
}

#[tokio::test]
async fn normal_and_degraded_limits_sqlite() {
    normal_and_degraded_limits(Mode::sqlite()).await;
}

#[tokio::test]
async fn normal_and_degraded_limits_redis() {
    let Some(mode) = Mode::redis() else { return };
    normal_and_degraded_limits(mode).await;
}

#[tokio::test]
async fn keys_of_one_user_share_a_counter_memory() {
    keys_of_one_user_share_a_counter(Mode::Memory).await;
}

#[tokio::test]
async fn keys_of_one_user_share_a_counter_sqlite() {
    keys_of_one_user_share_a_counter(Mode::sqlite()).await;
}

#[tokio::test]
async fn keys_of_one_user_share_a_counter_redis() {
    let Some(mode) = Mode::redis() else { return };
    keys_of_one_user_share_a_counter(mode).await;
}

#[tokio::test]
async fn invalid_keys_block_then_unblock_memory() {
    invalid_keys_block_then_unblock(Mode::Memory).await;
}

#[tokio::test]
async fn invalid_keys_block_then_unblock_sqlite() {
    invalid_keys_block_then_unblock(Mode::sqlite()).await;
}

#[tokio::test]
async fn invalid_keys_block_then_unblock_redis() {
    let Some(mode) = Mode::redis() else { return };
    invalid_keys_block_then_unblock(mode).await;
}

#[tokio::test]
async fn admin_input_is_checked_memory() {
    admin_input_is_checked_and_refusals_change_nothing(Mode::Memory).await;
}

#[tokio::test]
async fn admin_input_is_checked_sqlite() {
    admin_input_is_checked_and_refusals_change_nothing(Mode::sqlite()).await;
}

#[tokio::test]
async fn admin_input_is_checked_redis() {
    let Some(mode) = Mode::redis() else { return };
    admin_input_is_checked_and_refusals_change_nothing(mode).await;
}

#[tokio::test]
async fn health_ttl_reverts_to_normal_memory() {
    health_ttl_reverts_to_normal(Mode::Memory).await;
}

#[tokio::test]
async fn health_ttl_reverts_to_normal_sqlite() {
    health_ttl_reverts_to_normal(Mode::sqlite()).await;
}

#[tokio::test]
async fn health_ttl_reverts_to_normal_redis() {
    let Some(mode) = Mode::redis() else { return };
    health_ttl_reverts_to_normal(mode).await;
}

#[tokio::test]
async fn admin_api_is_closed_without_a_key_and_refuses_wrong_keys() {
    let closed = Floodgate::start(CONFIG, &[]).await;
    let (status, body) = http_with(closed.http_addr, "GET", "/admin/health", &[], "").await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = http_with(
        closed.http_addr,
        "GET",
        "/admin/health",
        &[("X-Admin-Key", "")],
        "",
    )
    .await;
    assert_eq!(status, 403);

    let open = Floodgate::start(CONFIG, &["--admin-key", ADMIN_KEY]).await;
    for headers in [
        &[][..],
        &[("X-Admin-Key", "wrong")][..],
        &[("X-Admin-Key", "test-admin-key-012345678")][..],
    ] {
        let (status, body) = http_with(
            open.http_addr,
            "POST",
            "/admin/health",
            headers,
            r#"{"status":"DEGRADED"}"#,
        )
        .await;
        assert_eq!(status, 401, "{headers:?}: {body}");
    }
    let (_, health) = admin(&open, "GET", "/admin/health", "").await;
    assert_eq!(health["status"], "NORMAL", "refused calls changed nothing");
}

#[tokio::test]
async fn a_switch_on_one_replica_reaches_another_within_the_cache_bound() {
    let Some(mode) = Mode::redis() else { return };
    a_switch_reaches_another_replica(mode).await;
}

#[tokio::test]
async fn a_switch_on_one_process_reaches_another_on_the_same_sqlite_file() {
    a_switch_reaches_another_replica(Mode::sqlite()).await;
}

async fn a_switch_reaches_another_replica(mode: Mode) {
    let a = mode.floodgate(&[]).await;
    let b = mode.floodgate(&[]).await;
    let mut client_b = b.client().await;
    let limit = |r: RateLimitResponse| {
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit
    };
    assert_eq!(
        limit(call(&mut client_b, "demo_free_key_123", "10.0.4.1").await),
        20
    );
    for (state, want) in [("DEGRADED", 2), ("NORMAL", 20)] {
        set_health(&a, json!({ "status": state })).await;
        // The bound is the 500 ms cache TTL; the deadline only guards against hanging.
        let took = wait_for("replica B to follow", Duration::from_secs(10), || {
            let mut client = client_b.clone();
            async move { limit(call(&mut client, "demo_free_key_123", "10.0.4.1").await) == want }
        })
        .await;
        eprintln!("replica B followed {state} after {took:?} (cache TTL 500ms)");
        let (_, health) = admin(&b, "GET", "/admin/health", "").await;
        assert_eq!(health["status"], state);
    }
    // Users created through one replica live in the store: another replica, and a restart,
    // see them.
    create_user(&a, "shared-user", "pro", "k-shared").await;
    drop(a);
    let c = mode.floodgate(&[]).await;
    let (status, user) = admin(&c, "GET", "/admin/users/shared-user", "").await;
    assert_eq!((status, user["tier"].as_str()), (200, Some("pro")));
    let mut client_c = c.client().await;
    assert_eq!(
        limit(call(&mut client_c, "k-shared", "10.0.4.2").await),
        150
    );
}
