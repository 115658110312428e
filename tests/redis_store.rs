//! The Redis store against a real redis-server started by each test on a free loopback port.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use floodgate::pb::rate_limit_response::Code;
use floodgate::server::ServerOptions;
use floodgate::store::redis::RedisOptions;
use floodgate::store::{Check, CounterStore, RedisStore};
use redis::Commands;
use support::http::http;
use support::{RedisServer, TestServer, free_port, request};

const CONFIG: &str = r#"
domain: shared
descriptors:
  - key: user
    rate_limit: { unit: day, requests_per_unit: 5 }
  - key: blocked
    rate_limit: { unit: day, requests_per_unit: 0 }
  - key: value
    rate_limit: { unit: day, requests_per_unit: 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_admit_exactly_n_of_3n() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    const N: usize = 5;
    let a = TestServer::redis(CONFIG, &redis, "fg:", ServerOptions::default()).await;
    let b = TestServer::redis(CONFIG, &redis, "fg:", ServerOptions::default()).await;
    let clients = [a.client().await, b.client().await];
    let mut calls = Vec::new();
    for i in 0..3 * N {
        let mut client = clients[i % 2].clone();
        calls.push(tokio::spawn(async move {
            let req = request("shared", &[&[("user", "alice")]]);
            client
                .should_rate_limit(req)
                .await
                .unwrap()
                .into_inner()
                .overall_code()
        }));
    }
    let mut ok = 0;
    for call in calls {
        if call.await.unwrap() == Code::Ok {
            ok += 1;
        }
    }
    assert_eq!(ok, N, "exactly N of 3N admitted across both instances");
}

#[tokio::test]
async fn a_denied_request_leaves_other_counters_untouched() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let server = TestServer::redis(CONFIG, &redis, "fg:", ServerOptions::default()).await;
    let mut client = server.client().await;
    let denied = request("shared", &[&[("user", "bob")], &[("blocked", "x")]]);
    for _ in 0..3 {
        let response = client
            .should_rate_limit(denied.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.overall_code(), Code::OverLimit);
        assert_eq!(response.statuses[0].code(), Code::Ok);
        assert_eq!(response.statuses[0].limit_remaining, 5);
    }
    let mut conn = redis.connection();
    let keys: Vec<String> = conn.keys("fg:*").unwrap();
    assert!(
        keys.is_empty(),
        "nothing written for denied requests: {keys:?}"
    );
    let alone = client
        .should_rate_limit(request("shared", &[&[("user", "bob")]]))
        .await
        .unwrap();
    assert_eq!(alone.into_inner().statuses[0].limit_remaining, 4);
    // the key expires with its window
    let keys: Vec<String> = conn.keys("fg:*").unwrap();
    assert_eq!(keys.len(), 1);
    let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query(&mut conn).unwrap();
    assert!((1..=86_401_000).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn tricky_values_never_share_a_counter() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let server = TestServer::redis(CONFIG, &redis, "fg:", ServerOptions::default()).await;
    let mut client = server.client().await;
    let values = [
        "a_b", "a", "b", "a:b", "a|b", "*", "a*", "a b", "a  b", "ü", "u\u{308}", "日本", "1:a",
        "", "a_b_c",
    ];
    for value in values {
        let req = request("shared", &[&[("value", value)]]);
        let response = client.should_rate_limit(req).await.unwrap().into_inner();
        assert_eq!(
            response.overall_code(),
            Code::Ok,
            "first request for {value:?}"
        );
    }
    for value in values {
        let req = request("shared", &[&[("value", value)]]);
        let response = client.should_rate_limit(req).await.unwrap().into_inner();
        assert_eq!(
            response.overall_code(),
            Code::OverLimit,
            "second request for {value:?}"
        );
    }
    let keys: Vec<String> = redis.connection().keys("fg:*").unwrap();
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), values.len());
}

#[tokio::test]
async fn redis_down_answers_unavailable_within_the_timeout() {
    // Nothing listens on this port: connection refused.
    let redis_url = format!("redis://127.0.0.1:{}/0", free_port());
    let store = RedisStore::new(&RedisOptions {
        pool_size: 2,
        timeout: Duration::from_millis(300),
        ..RedisOptions::standalone(&redis_url, "fg:")
    })
    .unwrap();
    let server =
        TestServer::start(CONFIG, store, Default::default(), ServerOptions::default()).await;
    let mut client = server.client().await;
    // A guard against hanging, not a speed check: the store's own deadline is 300 ms.
    let call = client.should_rate_limit(request("shared", &[&[("user", "x")]]));
    let status = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("answered instead of hanging")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // requests that need no counter still pass
    let free = client
        .should_rate_limit(request("shared", &[&[("nothing", "x")]]))
        .await
        .unwrap();
    assert_eq!(free.into_inner().overall_code(), Code::Ok);
    let (status, _) = http(server.http_addr, "GET", "/healthcheck", "").await;
    assert_eq!(status, 500);
}

#[tokio::test]
async fn the_script_is_reloaded_after_script_flush() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let server = TestServer::redis(CONFIG, &redis, "fg:", ServerOptions::default()).await;
    let mut client = server.client().await;
    let req = request("shared", &[&[("user", "carol")]]);
    client.should_rate_limit(req.clone()).await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut redis.connection())
        .unwrap();
    let response = client.should_rate_limit(req).await.unwrap().into_inner();
    assert_eq!(response.statuses[0].limit_remaining, 3);
    let (status, _) = http(server.http_addr, "GET", "/healthcheck", "").await;
    assert_eq!(status, 200);
}

fn limiter_options(over_limit_cache: usize) -> floodgate::limiter::LimiterOptions {
    floodgate::limiter::LimiterOptions {
        plan: floodgate::decision::PlanOptions {
            key_prefix: "fg:".into(),
            global_shadow: false,
            ..Default::default()
        },
        over_limit_cache,
        ..Default::default()
    }
}

#[tokio::test]
async fn the_local_cache_keeps_redis_flat_under_attack() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    for (cache, attack_calls_reaching_redis) in [(1000, 0), (0, 50)] {
        let store = RedisStore::new(&RedisOptions::standalone(
            &redis.url(),
            &format!("fg{cache}:"),
        ))
        .unwrap();
        let pipeline = store.pipeline_stats();
        let (server, _limiter) = TestServer::with_limiter(
            CONFIG,
            store,
            limiter_options(cache),
            ServerOptions::default(),
        )
        .await;
        let mut client = server.client().await;
        let req = request("shared", &[&[("user", "mallory")]]);
        for _ in 0..5 {
            client.should_rate_limit(req.clone()).await.unwrap();
        }
        let (_, before) = pipeline.counts();
        for _ in 0..50 {
            let response = client
                .should_rate_limit(req.clone())
                .await
                .unwrap()
                .into_inner();
            assert_eq!(response.overall_code(), Code::OverLimit);
            assert_eq!(response.statuses[0].code(), Code::OverLimit);
            assert!(response.statuses[0].duration_until_reset.is_some());
        }
        let (_, after) = pipeline.counts();
        assert_eq!(
            after - before,
            attack_calls_reaching_redis,
            "cache size {cache}"
        );
        // Other keys are unaffected.
        let other = request("shared", &[&[("user", "trent")]]);
        assert_eq!(
            client
                .should_rate_limit(other)
                .await
                .unwrap()
                .into_inner()
                .overall_code(),
            Code::Ok
        );
    }
}

/// A store on `redis` whose keys start with `prefix`, shared by the tasks of a test.
fn shared_store(redis: &RedisServer, prefix: &str) -> Arc<RedisStore> {
    Arc::new(RedisStore::new(&RedisOptions::standalone(&redis.url(), prefix)).unwrap())
}

/// A day-long fixed-window check (no window edge falls inside a test).
fn daily(key: String, limit: u64, hits: u64) -> Check {
    Check::fixed_window(key, limit, 86_400, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_share_round_trips() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = shared_store(&redis, "rt:");
    // Warm up: the first call loads the script (a NOSCRIPT round trip, then the real one).
    store
        .apply(&[daily("rt:warm".into(), 1000, 1)])
        .await
        .unwrap();
    let (trips_before, calls_before) = store.pipeline_stats().counts();
    let calls: Vec<_> = (0..256)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let check = daily(format!("rt:{}", i % 64), 1000, 1);
                store.apply(&[check]).await.unwrap().admitted
            })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap());
    }
    let (round_trips, script_calls) = store.pipeline_stats().counts();
    let (round_trips, script_calls) = (round_trips - trips_before, script_calls - calls_before);
    eprintln!("256 decisions in {script_calls} script calls and {round_trips} round trips");
    assert!(
        script_calls < 256,
        "concurrent decisions shared script calls"
    );
    assert!(round_trips <= script_calls);
    // Shared calls count exactly: every key was hit by four requests.
    for i in 0..64 {
        let look = daily(format!("rt:{i}"), 1000, 0);
        let applied = store.apply(&[look]).await.unwrap();
        assert_eq!(applied.counters[0].remaining, 996, "key rt:{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sharing_a_script_call_are_each_all_or_nothing() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = shared_store(&redis, "aon:");
    // 40 concurrent requests, each with a check on a shared key allowing 5 and one on its own
    // key: exactly 5 are admitted, and a denied request counts on neither key.
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let checks = [
                    daily("aon:shared".into(), 5, 1),
                    daily(format!("aon:own{i}"), 1000, 1),
                ];
                store.apply(&checks).await.unwrap().admitted
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for call in calls {
        admitted.push(call.await.unwrap());
    }
    assert_eq!(admitted.iter().filter(|a| **a).count(), 5, "{admitted:?}");
    for (i, admitted) in admitted.into_iter().enumerate() {
        let look = store
            .apply(&[daily(format!("aon:own{i}"), 1000, 0)])
            .await
            .unwrap();
        let expected = if admitted { 999 } else { 1000 };
        assert_eq!(look.counters[0].remaining, expected, "request {i}");
    }
}

#[tokio::test]
async fn every_written_key_expires_with_its_window() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    const MINUTE: u64 = 60_000;
    const T0: u64 = 29_000_000 * MINUTE;
    let clock = Arc::new(floodgate::clock::ManualClock::new(T0 + MINUTE - 1_000));
    let options = RedisOptions {
        clock: Some(clock.clone()),
        ..RedisOptions::standalone(&redis.url(), "ex:")
    };
    let store = RedisStore::new(&options).unwrap();
    let mut conn = redis.connection();
    let mut pttl = |key: &str| -> i64 { redis::cmd("PTTL").arg(key).query(&mut conn).unwrap() };
    let minute = |key: &str, hits| Check::fixed_window(key, 100, 60, hits);
    let sliding = |key: &str| Check {
        algorithm: floodgate::algorithm::Algorithm::SlidingWindow,
        ..minute(key, 1)
    };
    // A second before the window ends: written with what is left of it (plus a second's slack).
    for _ in 0..3 {
        let applied = store
            .apply(&[minute("ex:f", 1), sliding("ex:s")])
            .await
            .unwrap();
        assert!(applied.admitted);
    }
    assert!((1..=2_000).contains(&pttl("ex:f")), "{}", pttl("ex:f"));
    assert!((1..=62_000).contains(&pttl("ex:s")), "{}", pttl("ex:s"));
    // The same key twice in one request, first only looking: the write still sets an expiry.
    store
        .apply(&[minute("ex:twice", 0), minute("ex:twice", 1)])
        .await
        .unwrap();
    assert!((1..=2_000).contains(&pttl("ex:twice")));
    // The next window: the old state's expiry is replaced by the new window's.
    clock.set(T0 + MINUTE);
    for _ in 0..2 {
        store
            .apply(&[
                minute("ex:f", 1),
                minute("ex:twice", 0),
                minute("ex:twice", 1),
            ])
            .await
            .unwrap();
    }
    for key in ["ex:f", "ex:twice"] {
        assert!(
            (30_000..=61_000).contains(&pttl(key)),
            "{key}: {}",
            pttl(key)
        );
    }
    // A fixed window's key holds the current window's count only: the old one is dropped.
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg("ex:f")
        .query(&mut redis.connection())
        .unwrap();
    assert_eq!(fields, [format!("{}:", T0 + MINUTE)]);
    let look = store.apply(&[minute("ex:f", 0)]).await.unwrap();
    assert_eq!(
        look.counters[0].remaining, 98,
        "the new window counted twice"
    );
}

#[tokio::test]
async fn a_password_an_acl_user_and_a_database_are_used_over_plain_tcp() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // This connection logged in before the password was set, and stays logged in.
    let mut observer = redis.connection();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "floodgate", "on", ">app-pass", "~*", "+@all"])
        .query(&mut observer)
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "s3cret"])
        .query(&mut observer)
        .unwrap();
    let store = |credentials: &str, db: u32| {
        let url = format!("redis://{credentials}@127.0.0.1:{}/{db}", redis.port);
        RedisStore::new(&RedisOptions {
            timeout: Duration::from_millis(500),
            ..RedisOptions::standalone(&url, "pw:")
        })
        .unwrap()
    };
    let check = [daily("pw:k".into(), 5, 1)];
    // The default user's password, and an ACL user on database 3: decisions are made, and
    // written to the database the URL names.
    let applied = store(":s3cret", 0).apply(&check).await.unwrap();
    assert_eq!(applied.counters[0].remaining, 4);
    let applied = store("floodgate:app-pass", 3).apply(&check).await.unwrap();
    assert_eq!(
        applied.counters[0].remaining, 4,
        "database 3 has its own counter"
    );
    let _: () = redis::cmd("SELECT").arg(3).query(&mut observer).unwrap();
    let in_3: bool = observer.exists("pw:k").unwrap();
    assert!(in_3);
    // A wrong password or none: a decision fails with why (not only that a connection
    // checkout timed out), and the message never repeats the password. (Without a password,
    // Redis refuses a command of over ten arguments before it can say NOAUTH.)
    let refusals = [
        ("floodgate:wrong-pass", "authentication failed"),
        ("", "ERR Protocol error: unauthenticated"),
    ];
    for (credentials, refusal) in refusals {
        let error = store(credentials, 0).apply(&check).await.unwrap_err();
        let message = error.to_string();
        assert!(message.contains(refusal), "{credentials}: {message}");
        assert!(!message.contains("wrong-pass"), "{message}");
    }
}

/// A flag's key outlives the end it holds by the counters' second of slack, while gates still
/// end at that end: with an injected clock (or Redis' expiry clock a hair ahead of TIME) a short
/// flag's key vanished before its end (found by tests/properties.rs).
#[tokio::test]
async fn a_flag_key_outlives_the_end_it_holds() {
    use floodgate::store::SharedState;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let clock = Arc::new(floodgate::clock::ManualClock::new(29_000_000 * 60_000));
    let options = RedisOptions {
        clock: Some(clock.clone()),
        ..RedisOptions::standalone(&redis.url(), "fl:")
    };
    let store = RedisStore::new(&options).unwrap();
    store.set_flag("fl:flag", 5).await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg("fl:flag")
        .query(&mut redis.connection())
        .unwrap();
    assert!((900..=1_005).contains(&pttl), "{pttl}");
    let gate = || [Check::gate("fl:flag".into())];
    assert!(!store.apply(&gate()).await.unwrap().admitted, "set");
    clock.advance(5);
    assert!(
        store.apply(&gate()).await.unwrap().admitted,
        "ended, though its key is still there"
    );
}
