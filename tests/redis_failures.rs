//! Redis failing: killed and restarted under load, down at start-up, and each failure mode.
//! Every call is guarded against hanging; none may.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use floodgate::breaker::{BreakerSettings, BreakerState};
use floodgate::decision::{FailureMode, PlanOptions};
use floodgate::limiter::LimiterOptions;
use floodgate::pb::rate_limit_response::Code;
use floodgate::server::ServerOptions;
use floodgate::store::redis::RedisOptions;
use floodgate::store::{CounterStore, RedisStore};
use support::http::http;
use support::{PATIENCE, RedisServer, TestServer, free_port, request, signal, wait_for};

const CONFIG: &str = r#"
domain: chaos
descriptors:
  - key: client
    rate_limit: { unit: day, requests_per_unit: 5 }
"#;

/// Longest any call may take: far above the 200 ms Redis deadline, only to catch a hang.
const HANG_GUARD: Duration = Duration::from_secs(10);

fn options(mode: FailureMode) -> LimiterOptions {
    LimiterOptions {
        plan: PlanOptions {
            key_prefix: "chaos:".into(),
            global_shadow: false,
            ..Default::default()
        },
        failure_mode: mode,
        breaker: BreakerSettings {
            threshold: 3,
            cooldown_ms: 300,
        },
        ..LimiterOptions::default()
    }
}

fn store(url: &str) -> RedisStore {
    RedisStore::new(&RedisOptions {
        timeout: Duration::from_millis(200),
        pool_size: 2,
        ..RedisOptions::standalone(url, "chaos:")
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (server, limiter) = TestServer::with_limiter(
        CONFIG,
        store(&redis.url()),
        options(FailureMode::Error),
        ServerOptions::default(),
    )
    .await;
    let client = server.client().await;

    // Steady load from 8 clients, each call guarded against hanging.
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, unavailable) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for worker in 0..8 {
        let (mut client, stop) = (client.clone(), stop.clone());
        let (answered, unavailable) = (answered.clone(), unavailable.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            // Bounded in count as well as by the stop flag.
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                n += 1;
                let req = request("chaos", &[&[("client", &format!("w{worker}-{n}"))]]);
                let call = tokio::time::timeout(HANG_GUARD, client.should_rate_limit(req)).await;
                match call.expect("a call hung past the guard") {
                    Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                        unavailable.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    wait_for("answers before the crash", PATIENCE, || async {
        answered.load(Ordering::Relaxed) > 50
    })
    .await;

    redis.kill();
    wait_for("the circuit to open", PATIENCE, || async {
        limiter.breaker_state() != BreakerState::Closed
    })
    .await;
    let failed_before = unavailable.load(Ordering::Relaxed);
    wait_for("more refusals while Redis is down", PATIENCE, || async {
        unavailable.load(Ordering::Relaxed) > failed_before + 100
    })
    .await;
    let (http_status, _) = http(server.http_addr, "GET", "/healthcheck", "").await;
    assert_eq!(http_status, 500, "not healthy while Redis is down");

    redis.restart();
    let answered_at_restart = answered.load(Ordering::Relaxed);
    wait_for("answers after the restart", PATIENCE, || async {
        answered.load(Ordering::Relaxed) > answered_at_restart + 50
    })
    .await;
    assert_eq!(limiter.breaker_state(), BreakerState::Closed);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("no panic in a worker");
    }
    eprintln!(
        "answered {}, unavailable {}",
        answered.load(Ordering::Relaxed),
        unavailable.load(Ordering::Relaxed)
    );

    // Decisions are exact again: a fresh client gets exactly its 5.
    let mut client = client.clone();
    let mut ok = 0;
    for _ in 0..8 {
        let req = request("chaos", &[&[("client", "after-recovery")]]);
        if client
            .should_rate_limit(req)
            .await
            .unwrap()
            .into_inner()
            .overall_code()
            == Code::Ok
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 5);
    let (http_status, _) = http(server.http_addr, "GET", "/healthcheck", "").await;
    assert_eq!(http_status, 200);
}

#[tokio::test]
async fn redis_down_at_start_then_recovers_by_itself() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let (server, _) = TestServer::with_limiter(
        CONFIG,
        store(&url),
        options(FailureMode::Error),
        ServerOptions::default(),
    )
    .await;
    let (status, body) = http(server.http_addr, "GET", "/healthcheck", "").await;
    assert_eq!(status, 500, "{body}");
    let mut client = server.client().await;
    let status = client
        .should_rate_limit(request("chaos", &[&[("client", "x")]]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);

    let Some(_redis) = RedisServer::start_on(port) else {
        if support::is_ci() {
            panic!("could not start redis-server on port {port}");
        }
        return;
    };
    wait_for("healthy once Redis is up", PATIENCE, || async {
        http(server.http_addr, "GET", "/healthcheck", "").await.0 == 200
    })
    .await;
    wait_for("decisions once Redis is up", PATIENCE, || {
        let mut client = client.clone();
        async move {
            client
                .should_rate_limit(request("chaos", &[&[("client", "y")]]))
                .await
                .is_ok()
        }
    })
    .await;
}

#[tokio::test]
async fn failure_modes_answer_without_redis() {
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let header = |r: &floodgate::pb::RateLimitResponse, name: &str| {
        r.response_headers_to_add
            .iter()
            .find(|h| h.key == name)
            .map(|h| h.value.clone())
    };
    for (mode, code) in [
        (FailureMode::Allow, Code::Ok),
        (FailureMode::Deny, Code::OverLimit),
    ] {
        let (server, limiter) =
            TestServer::with_limiter(CONFIG, store(&url), options(mode), ServerOptions::default())
                .await;
        let mut client = server.client().await;
        for _ in 0..10 {
            let req = request("chaos", &[&[("client", "x")], &[("unknown", "y")]]);
            let call = tokio::time::timeout(HANG_GUARD, client.should_rate_limit(req)).await;
            let response = call.expect("answered").unwrap().into_inner();
            assert_eq!(response.overall_code(), code, "{mode:?}");
            assert_eq!(response.statuses.len(), 2);
            assert_eq!(
                header(&response, "x-floodgate-degraded").as_deref(),
                Some("store-unavailable")
            );
            assert_eq!(
                header(&response, "retry-after").is_some(),
                code == Code::OverLimit
            );
        }
        // After 3 failures the breaker stopped calling Redis at all.
        assert_ne!(limiter.breaker_state(), BreakerState::Closed, "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_times_out_every_queued_request() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = Arc::new(store(&redis.url()));
    let check = || floodgate::store::Check::fixed_window("chaos:frozen", 1_000, 86_400, 1);
    assert!(store.apply(&[check()]).await.unwrap().admitted);
    let mut observer = redis.connection();
    let before_freeze = store_clients(&mut observer);
    assert!(!before_freeze.is_empty());
    // Frozen, Redis accepts bytes and never answers: both dispatchers wait out their round
    // trip while far more requests queue behind them. Every one is answered with a timeout.
    signal(redis.pid(), "STOP");
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(
                async move { tokio::time::timeout(HANG_GUARD, store.apply(&[check()])).await },
            )
        })
        .collect();
    let mut timeouts = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(Err(floodgate::store::StoreError::Timeout(_))) => timeouts += 1,
            Ok(other) => panic!("a frozen Redis answered {other:?}"),
            Err(_) => {
                signal(redis.pid(), "CONT");
                panic!("a request hung");
            }
        }
    }
    signal(redis.pid(), "CONT");
    assert_eq!(timeouts, 200);
    // Thawed, the store decides again (on a fresh connection if the old one was retired), and
    // connections that let a deadline pass were retired (a partitioned master would never
    // answer on them): those from before the freeze close.
    decides_on_fresh_connections(&store, check(), &mut observer, &before_freeze).await;
}

#[tokio::test]
async fn a_demoted_master_s_connections_are_replaced() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = store(&redis.url());
    let check = || floodgate::store::Check::fixed_window("chaos:demoted", 1_000, 86_400, 1);
    assert!(store.apply(&[check()]).await.unwrap().admitted);
    let mut observer = redis.connection();
    let before = store_clients(&mut observer);
    assert!(!before.is_empty());
    // Demoted by hand (as a failover does, but without Sentinel's CLIENT KILL): writes are
    // refused with READONLY on the connections Floodgate already holds.
    let nowhere = free_port().to_string();
    let _: () = redis::cmd("REPLICAOF")
        .arg(&["127.0.0.1", &nowhere])
        .query(&mut observer)
        .unwrap();
    let refused = store.apply(&[check()]).await.unwrap_err();
    assert!(refused.to_string().contains("READONLY"), "{refused}");
    let _: () = redis::cmd("REPLICAOF")
        .arg(&["NO", "ONE"])
        .query(&mut observer)
        .unwrap();
    // A READONLY reply retires its connection: the next call connects anew (through the
    // Sentinels, with them), and the connections from before are closed.
    decides_on_fresh_connections(&store, check(), &mut observer, &before).await;
}

/// Waits until `store` admits `check` again and none of the connections in `before` is open.
async fn decides_on_fresh_connections(
    store: &RedisStore,
    check: floodgate::store::Check,
    observer: &mut redis::Connection,
    before: &[u64],
) {
    wait_for("decisions after the failure", PATIENCE, || {
        let check = check.clone();
        async move { matches!(store.apply(&[check]).await, Ok(a) if a.admitted) }
    })
    .await;
    wait_for("the connections from before closed", PATIENCE, || {
        let open = store_clients(observer);
        let closed = before.iter().all(|id| !open.contains(id));
        async move { closed }
    })
    .await;
}

/// Ids of the clients connected to the server, except `observer` itself.
fn store_clients(observer: &mut redis::Connection) -> Vec<u64> {
    let me: u64 = redis::cmd("CLIENT").arg("ID").query(observer).unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(observer).unwrap();
    list.lines()
        .filter_map(|line| line.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .filter(|&id| id != me)
        .collect()
}

/// The hits a fixed-window counter at `key` holds on `node` (the sum of its window fields).
fn counted_on(node: &RedisServer, key: &str) -> Result<u64, String> {
    let fields: Vec<u64> = node.query(redis::cmd("HVALS").arg(key))?;
    Ok(fields.iter().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_every_answered_hit_is_on_the_replica_first() {
    use support::topology::RedisProcess;
    let Some(master) = RedisServer::start() else {
        return;
    };
    let mut replica = RedisProcess::server().replica_of(master.port).start();
    // Synced and streaming: a write on a plain connection is acknowledged (right after a
    // diskless sync the master streams to the replica only after its first periodic ack).
    support::poll("the replica to acknowledge writes", PATIENCE, || {
        let mut conn = master.connection();
        let acked: Result<(String, i64), _> = redis::pipe()
            .cmd("SET")
            .arg("wait:probe")
            .arg(1)
            .cmd("WAIT")
            .arg(1)
            .arg(100)
            .query(&mut conn);
        match acked {
            Ok((_, 1)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let store = RedisStore::new(&RedisOptions {
        wait_replicas: 1,
        timeout: Duration::from_millis(1000),
        ..RedisOptions::standalone(&master.url(), "wait:")
    })
    .unwrap();
    let check = [floodgate::store::Check::fixed_window(
        "wait:k", 1_000, 86_400, 1,
    )];
    for n in 1..=20 {
        let counted = store.apply(&check).await;
        assert!(counted.unwrap_or_else(|e| panic!("hit {n}: {e}")).admitted);
        // WAIT answered only once the replica had the hit: it is there the moment we look.
        assert_eq!(counted_on(&replica, "wait:k"), Ok(n), "after hit {n}");
    }
    // Without a replica to acknowledge, the call fails (the failure mode answers) by its
    // deadline, rather than answering for hits a failover could lose.
    replica.kill();
    let refused = tokio::time::timeout(HANG_GUARD, store.apply(&check)).await;
    match refused.expect("answered by the deadline") {
        Err(floodgate::store::StoreError::Unavailable(why)) => {
            assert!(why.contains("0 of 1 Redis replicas acknowledged"), "{why}");
        }
        other => panic!("expected the missing acknowledgement, got {other:?}"),
    }
}

#[test]
fn wait_replicas_is_refused_on_a_cluster() {
    let options = RedisOptions {
        wait_replicas: 1,
        topology: floodgate::store::redis::Topology::Cluster {
            nodes: vec!["127.0.0.1:1".into()],
        },
        ..RedisOptions::standalone("redis://127.0.0.1:1/0", "wait:")
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let error = RedisStore::new(&options).unwrap_err().to_string();
    assert!(
        error.contains("--redis-wait-replicas needs a standalone or Sentinel"),
        "{error}"
    );
}
