//! Sentinel failover under load, Cluster across slots, and TLS with ACL users, against real
//! redis-server and redis-sentinel processes.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodgate::breaker::BreakerSettings;
use floodgate::decision::PlanOptions;
use floodgate::limiter::LimiterOptions;
use floodgate::pb::rate_limit_response::Code;
use floodgate::server::ServerOptions;
use floodgate::store::key::slot;
use floodgate::store::redis::{RedisOptions, TlsFiles, Topology};
use floodgate::store::{CounterStore, RedisStore};
use support::topology::{ClusterTopology, SENTINEL_MASTER_NAME, SentinelTopology, TlsRedis};
use support::{TestServer, request, wait_for};

const CONFIG: &str = r#"
domain: topo
descriptors:
  - key: client
    rate_limit: { unit: day, requests_per_unit: 5 }
  - key: a
    rate_limit: { unit: day, requests_per_unit: 2 }
  - key: b
    rate_limit: { unit: day, requests_per_unit: 5 }
  - key: c
    rate_limit: { unit: day, requests_per_unit: 5 }
"#;

/// Longest any call may take: only to catch a hang (the Redis deadline is 300 ms).
const HANG_GUARD: Duration = Duration::from_secs(10);

fn limiter_options() -> LimiterOptions {
    LimiterOptions {
        plan: PlanOptions {
            key_prefix: "topo:".into(),
            global_shadow: false,
            ..Default::default()
        },
        breaker: BreakerSettings {
            threshold: 5,
            cooldown_ms: 200,
        },
        ..LimiterOptions::default()
    }
}

/// A store on `cluster`, prefix `topo:`.
fn cluster_store(cluster: &ClusterTopology) -> RedisStore {
    RedisStore::new(&RedisOptions {
        topology: Topology::Cluster {
            nodes: cluster.node_addrs(),
        },
        ..RedisOptions::standalone("redis://127.0.0.1:1/0", "topo:")
    })
    .unwrap()
}

/// A store on the master of `set`, found through its Sentinels, with a deadline of `timeout`.
fn sentinel_store(set: &SentinelTopology, timeout: Duration) -> RedisStore {
    RedisStore::new(&RedisOptions {
        topology: Topology::Sentinel {
            sentinels: set.sentinel_addrs(),
            master_name: SENTINEL_MASTER_NAME.into(),
            sentinel_password: None,
        },
        timeout,
        ..RedisOptions::standalone("redis://ignored:6379/0", "topo:")
    })
    .unwrap()
}

async fn admitted(
    client: &mut floodgate::pb::rate_limit_service_client::RateLimitServiceClient<
        tonic::transport::Channel,
    >,
    value: &str,
    tries: usize,
) -> usize {
    let mut ok = 0;
    for _ in 0..tries {
        let req = request("topo", &[&[("client", value)]]);
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
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load() {
    const DOWN_AFTER_MS: u64 = 1000;
    let Some(mut set) = SentinelTopology::start(DOWN_AFTER_MS) else {
        return;
    };
    let store = sentinel_store(&set, Duration::from_millis(300));
    let (server, _) =
        TestServer::with_limiter(CONFIG, store, limiter_options(), ServerOptions::default()).await;
    let mut client = server.client().await;
    assert_eq!(admitted(&mut client, "before", 8).await, 5);

    let stop = Arc::new(AtomicBool::new(false));
    let last_failure_ms = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (mut client, stop, last_failure_ms) =
            (client.clone(), stop.clone(), last_failure_ms.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                n += 1;
                let req = request("topo", &[&[("client", &format!("load-{worker}-{n}"))]]);
                let call = tokio::time::timeout(HANG_GUARD, client.should_rate_limit(req)).await;
                match call.expect("a call hung past the guard") {
                    Ok(_) => {}
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                        last_failure_ms
                            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let old = set.kill_master();
    let killed_at = started.elapsed();
    let new = tokio::task::spawn_blocking(move || {
        let new = set.wait_for_new_master(old, Duration::from_secs(60));
        (set, new)
    })
    .await
    .unwrap();
    let (set, new_master) = new;
    let promoted_at = started.elapsed();
    // Decisions resume from the new master.
    let resumed = || {
        let mut client = client.clone();
        let req = request("topo", &[&[("client", "probe")]]);
        async move {
            client
                .should_rate_limit(req)
                .await
                .map_err(|s| s.to_string())
        }
    };
    wait_for(
        "decisions to resume after the failover",
        Duration::from_secs(30),
        resumed,
    )
    .await;
    let recovered_at = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("no panic, no hang");
    }
    eprintln!(
        "sentinel failover: master {old} killed at {killed_at:?}, {new_master} promoted after {:?}, decisions back {:?} after the kill (down-after {DOWN_AFTER_MS} ms; last failed call at {} ms)",
        promoted_at - killed_at,
        recovered_at - killed_at,
        last_failure_ms.load(Ordering::Relaxed),
    );
    // Correct decisions on the new master: a fresh client gets exactly its 5.
    assert_eq!(admitted(&mut client, "after", 8).await, 5);
    drop(set);
}

/// The Sentinels promote another master while the old one still answers as master (as one
/// frozen through its failover does for seconds after it wakes, until the Sentinels demote it;
/// here they cannot demote it at all). The store follows the Sentinels' switch as it is
/// announced: the next decision is counted on the new master, not on the old one through a
/// connection made before the switch (two masters would count apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_follow_the_sentinels_switch_while_the_old_master_still_answers() {
    let Some(set) = SentinelTopology::start(1000) else {
        return;
    };
    let store = sentinel_store(&set, Duration::from_millis(300));
    let (server, _) =
        TestServer::with_limiter(CONFIG, store, limiter_options(), ServerOptions::default()).await;
    let mut client = server.client().await;
    // The first decision connects to the master and subscribes to every Sentinel's switches.
    assert_eq!(admitted(&mut client, "before", 1).await, 1);
    let subscribed = || {
        let subscribed = set.sentinel_ports().into_iter().all(|port| {
            let info: String = redis::cmd("INFO")
                .arg("stats")
                .query(&mut set.sentinel_connection(port))
                .unwrap();
            !info.contains("pubsub_channels:0")
        });
        async move { subscribed }
    };
    wait_for(
        "a subscriber on every Sentinel",
        Duration::from_secs(10),
        subscribed,
    )
    .await;
    let old = set.master_port();
    // The Sentinels' REPLICAOF (SLAVEOF) is refused on the old master: it stays one.
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "-slaveof", "-replicaof"][..])
        .query(&mut set.connection(old))
        .unwrap();
    let mut sentinel = set.sentinel_connection(set.sentinel_ports()[0]);
    let _: () = redis::cmd("SENTINEL")
        .arg(&["FAILOVER", SENTINEL_MASTER_NAME][..])
        .query(&mut sentinel)
        .unwrap();
    let (set, new) = tokio::task::spawn_blocking(move || {
        let new = set.wait_for_new_master(old, Duration::from_secs(60));
        (set, new)
    })
    .await
    .unwrap();
    // The leader of the failover lists the old master in SENTINEL MASTERS until its failover
    // ends (here: at its failover-timeout, since it cannot demote the old master), and
    // announces the switch then.
    let listed = || {
        let ports: Vec<String> = set
            .sentinel_ports()
            .into_iter()
            .map(|port| {
                let masters: Vec<Vec<String>> = redis::cmd("SENTINEL")
                    .arg("MASTERS")
                    .query(&mut set.sentinel_connection(port))
                    .unwrap();
                let fields = &masters[0];
                let at = fields.iter().position(|f| f == "port").unwrap();
                fields[at + 1].clone()
            })
            .collect();
        async move { ports.iter().all(|p| *p == new.to_string()) }
    };
    wait_for(
        "every Sentinel to list the new master",
        Duration::from_secs(30),
        listed,
    )
    .await;
    assert_eq!(
        set.role(old).as_deref(),
        Ok("master"),
        "the old master was demoted"
    );
    assert_eq!(admitted(&mut client, "after", 1).await, 1);
    let key = floodgate::store::key::counter_key(
        "topo:",
        "topo",
        &[floodgate::query::Entry {
            key: "client".into(),
            value: "after".into(),
        }],
        &[],
        86_400,
        floodgate::algorithm::Algorithm::FixedWindow,
    );
    let exists = |port| -> bool {
        redis::cmd("EXISTS")
            .arg(&key)
            .query(&mut set.connection(port))
            .unwrap()
    };
    assert!(
        exists(new),
        "the decision was not counted on the new master {new}"
    );
    assert!(
        !exists(old),
        "the decision was counted on the old master {old}"
    );
}

#[tokio::test]
async fn cluster_decides_across_slots() {
    let Some(cluster) = ClusterTopology::start() else {
        return;
    };
    let store = cluster_store(&cluster);
    let (server, limiter) =
        TestServer::with_limiter(CONFIG, store, limiter_options(), ServerOptions::default()).await;
    let mut client = server.client().await;
    let req = request("topo", &[&[("a", "1")], &[("b", "1")], &[("c", "1")]]);
    for round in 1..=2 {
        let r = client
            .should_rate_limit(req.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.overall_code(), Code::Ok, "round {round}");
        assert_eq!(r.statuses[1].limit_remaining, 5 - round);
    }
    // "a" is exhausted: denied, and the other slots' counters are left as they were.
    for _ in 0..3 {
        let r = client
            .should_rate_limit(req.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.overall_code(), Code::OverLimit);
        assert_eq!(r.statuses[0].code(), Code::OverLimit);
        assert_eq!(
            (r.statuses[1].limit_remaining, r.statuses[2].limit_remaining),
            (3, 3)
        );
    }
    let alone = client
        .should_rate_limit(request("topo", &[&[("b", "1")]]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alone.statuses[0].limit_remaining, 2, "b counted only twice");
    // The same key twice beside another slot's: the slots' dry runs count the first hit before
    // the second, and a denied request still consumes nothing.
    let twice = request("topo", &[&[("c", "1")], &[("c", "1")], &[("b", "1")]]);
    let r = client
        .should_rate_limit(twice.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code(), Code::Ok);
    let remaining: Vec<u32> = r.statuses.iter().map(|s| s.limit_remaining).collect();
    assert_eq!(remaining, [2, 1, 1]);
    let r = client.should_rate_limit(twice).await.unwrap().into_inner();
    assert_eq!(r.overall_code(), Code::OverLimit);
    assert_eq!(r.statuses[1].code(), Code::OverLimit);
    let alone = client
        .should_rate_limit(request("topo", &[&[("c", "1")], &[("b", "1")]]))
        .await
        .unwrap()
        .into_inner();
    let remaining: Vec<u32> = alone.statuses.iter().map(|s| s.limit_remaining).collect();
    assert_eq!(remaining, [0, 0], "the denied request counted nothing");
    // The keys really are spread over the cluster.
    let keys: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|k| {
            floodgate::store::counter_key(
                "topo:",
                "topo",
                &[floodgate::query::Entry {
                    key: (*k).into(),
                    value: "1".into(),
                }],
                &[],
                86_400,
                floodgate::algorithm::Algorithm::FixedWindow,
            )
        })
        .collect();
    let slots: std::collections::HashSet<u16> = keys.iter().map(|k| slot(k.as_bytes())).collect();
    assert!(slots.len() > 1, "the test needs keys in different slots");
    assert_ne!(
        slot(keys[1].as_bytes()),
        slot(keys[2].as_bytes()),
        "the test needs b and c in different slots"
    );
    assert!(
        keys_per_node(&cluster).iter().filter(|&&n| n > 0).count() > 1,
        "{:?}",
        keys_per_node(&cluster)
    );
    // Registry and health state work on a cluster too.
    limiter.ping().await.unwrap();
}

#[tokio::test]
async fn tls_with_password_acl_user_and_client_certificates() {
    let Some(redis) = TlsRedis::start_with(false, Some("s3cret")) else {
        return;
    };
    redis.add_acl_user("floodgate", "app-pass");
    let tls = |server: &TlsRedis, right_ca: bool, client: bool| TlsFiles {
        ca_cert: Some(if right_ca {
            server.certs.path("ca.pem")
        } else {
            server.certs.path("wrong-ca.pem")
        }),
        client_cert: client.then(|| server.certs.path("client.pem")),
        client_key: client.then(|| server.certs.path("client-key.pem")),
        accept_any_hostname: false,
    };
    let store = |url: String, tls: TlsFiles| {
        RedisStore::new(&RedisOptions {
            tls,
            timeout: Duration::from_secs(2),
            ..RedisOptions::standalone(&url, "tls:")
        })
        .unwrap()
    };
    let check = floodgate::store::Check {
        key: "tls:k".into(),
        limit: 5,
        window_secs: 86_400,
        hits: 1,
        shadow: false,
        gate: false,
        quota: false,
        count_denied: false,
        algorithm: floodgate::algorithm::Algorithm::FixedWindow,
    };
    // The right CA and the password: decisions work.
    let good = store(redis.url(None, Some("s3cret")), tls(&redis, true, false));
    let applied = good.apply(std::slice::from_ref(&check)).await.unwrap();
    assert!(applied.admitted);
    // An ACL user.
    let acl = store(
        redis.url(Some("floodgate"), Some("app-pass")),
        tls(&redis, true, false),
    );
    acl.ping().await.unwrap();
    // A server certificate the given CA did not sign is refused.
    let wrong_ca = store(redis.url(None, Some("s3cret")), tls(&redis, false, false));
    assert!(wrong_ca.ping().await.is_err(), "wrong CA accepted");
    // A wrong password is refused.
    let wrong_password = store(
        redis.url(Some("floodgate"), Some("nope")),
        tls(&redis, true, false),
    );
    assert!(wrong_password.ping().await.is_err());
    // Plain redis:// to a TLS port does not work.
    let plain = store(
        format!("redis://:s3cret@127.0.0.1:{}/0", redis.port()),
        TlsFiles::default(),
    );
    assert!(plain.ping().await.is_err());

    // A server that requires client certificates.
    let Some(strict) = TlsRedis::start_with(true, Some("s3cret")) else {
        return;
    };
    let without = store(strict.url(None, Some("s3cret")), tls(&strict, true, false));
    assert!(
        without.ping().await.is_err(),
        "no client certificate accepted"
    );
    let with = store(strict.url(None, Some("s3cret")), tls(&strict, true, true));
    with.ping().await.unwrap();
}

/// Keys held by each cluster node.
fn keys_per_node(cluster: &ClusterTopology) -> Vec<u64> {
    cluster
        .ports()
        .into_iter()
        .map(|port| cluster.dbsize(port))
        .collect()
}

/// A plain daily check of `key`.
fn daily(key: &str, limit: u64, hits: u64) -> floodgate::store::Check {
    floodgate::store::Check::fixed_window(key, limit, 86_400, hits)
}

/// Usage reports and quotas on `store`, with `keys` (six, in different cluster slots when the
/// store is a cluster): a denied request counts its usage-metered check and nothing else, and
/// quotas deny only together.
async fn reports_and_quotas_hold(store: &RedisStore, keys: [&str; 6]) {
    let metered = |key: &str, limit, hits| floodgate::store::Check {
        count_denied: true,
        ..daily(key, limit, hits)
    };
    let quota = |key: &str, limit, hits| floodgate::store::Check {
        quota: true,
        ..daily(key, limit, hits)
    };
    let remaining = |applied: &floodgate::store::Counted| -> Vec<u64> {
        applied.counters.iter().map(|c| c.remaining).collect()
    };
    let denied = [
        daily(keys[0], 0, 1),
        metered(keys[1], 5, 2),
        daily(keys[2], 5, 1),
    ];
    let applied = store.apply(&denied).await.unwrap();
    assert!(!applied.admitted);
    assert_eq!(remaining(&applied), [0, 3, 5], "only the report counted");
    let looked = store
        .apply(&[metered(keys[1], 5, 0), daily(keys[2], 5, 0)])
        .await
        .unwrap();
    assert_eq!(remaining(&looked), [3, 5]);
    // A report past the limit is counted: every later check is over.
    let applied = store.apply(&[metered(keys[1], 5, 4)]).await.unwrap();
    assert!(!applied.admitted && applied.counters[0].over);
    let looked = store.apply(&[metered(keys[1], 5, 0)]).await.unwrap();
    assert!(looked.counters[0].over, "counted past its limit");
    // Quotas: one with room admits (and both count); all over denies.
    let applied = store
        .apply(&[quota(keys[3], 0, 1), quota(keys[4], 5, 1)])
        .await
        .unwrap();
    assert!(applied.admitted);
    assert_eq!(remaining(&applied)[1], 4);
    let applied = store
        .apply(&[
            quota(keys[3], 0, 1),
            quota(keys[5], 0, 1),
            quota(keys[4], 5, 0),
        ])
        .await
        .unwrap();
    assert!(
        applied.admitted,
        "a look at a quota with room still has room"
    );
    let applied = store
        .apply(&[quota(keys[3], 0, 1), quota(keys[5], 0, 1)])
        .await
        .unwrap();
    assert!(!applied.admitted, "every quota over");
    let looked = store.apply(&[quota(keys[4], 5, 0)]).await.unwrap();
    assert_eq!(
        remaining(&looked),
        [4],
        "the denied requests counted nothing"
    );
}

#[tokio::test]
async fn cluster_counts_reports_and_quotas_across_slots() {
    let Some(cluster) = ClusterTopology::start() else {
        return;
    };
    let store = cluster_store(&cluster);
    let keys = ["{r0}k", "{r1}k", "{r2}k", "{r3}k", "{r4}k", "{r5}k"];
    let slots: std::collections::HashSet<u16> = keys.iter().map(|k| slot(k.as_bytes())).collect();
    assert_eq!(slots.len(), keys.len(), "the test needs six slots");
    reports_and_quotas_hold(&store, keys).await;
}

#[tokio::test]
async fn sentinel_counts_reports_and_quotas() {
    let Some(set) = SentinelTopology::start(1000) else {
        return;
    };
    let store = sentinel_store(&set, Duration::from_secs(2));
    reports_and_quotas_hold(&store, ["s0", "s1", "s2", "s3", "s4", "s5"]).await;
}

#[tokio::test]
async fn tls_hostname_verification_can_be_skipped_but_not_the_chain() {
    let Some(redis) = TlsRedis::start_misnamed() else {
        return;
    };
    let store = |ca: std::path::PathBuf, accept_any_hostname: bool| {
        RedisStore::new(&RedisOptions {
            tls: TlsFiles {
                ca_cert: Some(ca),
                accept_any_hostname,
                ..TlsFiles::default()
            },
            timeout: Duration::from_secs(2),
            ..RedisOptions::standalone(&redis.url(None, None), "tls-name:")
        })
        .unwrap()
    };
    // The certificate names redis.elsewhere.test, not 127.0.0.1: refused by default.
    let strict = store(redis.certs.path("ca.pem"), false);
    assert!(
        strict.ping().await.is_err(),
        "a misnamed certificate accepted"
    );
    // Skipping the host name: accepted, and decisions work.
    let lenient = store(redis.certs.path("ca.pem"), true);
    lenient.ping().await.unwrap();
    let check = floodgate::store::Check::fixed_window("tls-name:k", 5, 60, 1);
    assert!(lenient.apply(&[check]).await.unwrap().admitted);
    // The chain is still verified: a CA that did not sign it is refused.
    let wrong_ca = store(redis.certs.path("wrong-ca.pem"), true);
    assert!(
        wrong_ca.ping().await.is_err(),
        "an unverified chain accepted"
    );
}
