//! Floodgate started as envoyproxy/ratelimit, `/bin/ratelimit` with no arguments and the
//! reference's environment, as Istio's sample starts it: the ConfigMap mounted as a directory
//! with Kubernetes' `..data` symlinks, Redis by `host:port` (and by a Unix socket), a config
//! change through the symlink swap, health under the reference's service name, the reference's
//! counting of a denied request's hits, and a real Envoy in front, wired as Istio wires it.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use floodgate::pb::rate_limit_response::Code;
use support::envoy::{Envoy, Upstream, envoy_binary};
use support::http::{http_full, status_of};
use support::reference::{Ratelimit, write_volume};
use support::topology::TempDir;
use support::{ChildGuard, PATIENCE, RedisServer, wait_for};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The domain Istio's docs use, with a limit per path.
fn limits(per_day: u32) -> String {
    format!(
        "domain: ratelimit\ndescriptors:\n  - key: PATH\n    rate_limit: {{ unit: day, requests_per_unit: {per_day} }}\n  - key: PATH\n    value: /blocked\n    rate_limit: {{ unit: day, requests_per_unit: 0 }}\n"
    )
}

/// Istio's sample environment for a ConfigMap under `root`/ratelimit/config and Redis at
/// `redis_url` (the reference's syntax), plus a variable Kubernetes injects for a Service named
/// redis, which must not be read.
fn istio_env(root: &Path, socket: &str, redis_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LOG_LEVEL", "warn".into()),
        ("REDIS_SOCKET_TYPE", socket.into()),
        ("REDIS_URL", redis_url.into()),
        ("USE_STATSD", "false".into()),
        ("RUNTIME_ROOT", root.to_string_lossy().into_owned()),
        ("RUNTIME_SUBDIRECTORY", "ratelimit".into()),
        ("RUNTIME_WATCH_ROOT", "false".into()),
        ("RUNTIME_IGNOREDOTFILES", "true".into()),
        ("REDIS_PORT", "tcp://10.96.0.12:6379".into()),
    ]
}

fn configmap_dir(root: &Path) -> PathBuf {
    let dir = root.join("ratelimit").join("config");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn istio_sample_environment_with_a_configmap_swap() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let root = TempDir::new("reference-env");
    let config = configmap_dir(&root.path);
    write_volume(&config, 1, &[("config.yaml", &limits(2))]);
    let env = istio_env(&root.path, "tcp", &format!("127.0.0.1:{}", redis.port));
    let ratelimit = Ratelimit::start(&root.path, &env).await;

    // Health under the reference's gRPC service name.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", ratelimit.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "ratelimit".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);

    // The reference counts a denied request's hits (STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT is
    // unset): /a takes the hit although /blocked denies the request.
    let denied = ratelimit
        .ask("ratelimit", &[&[("PATH", "/a")], &[("PATH", "/blocked")]])
        .await;
    assert_eq!(denied.overall_code(), Code::OverLimit);
    assert_eq!(denied.statuses[0].limit_remaining, 1);
    let alone = ratelimit.ask("ratelimit", &[&[("PATH", "/a")]]).await;
    assert_eq!(alone.overall_code(), Code::Ok);
    assert_eq!(alone.statuses[0].limit_remaining, 0, "both hits counted");
    assert_eq!(
        ratelimit
            .ask("ratelimit", &[&[("PATH", "/a")]])
            .await
            .overall_code(),
        Code::OverLimit
    );

    // A ConfigMap update: the kubelet swaps `..data`; the new limit takes effect.
    write_volume(&config, 2, &[("config.yaml", &limits(10))]);
    wait_for("the swapped config", PATIENCE, || async {
        let r = ratelimit.ask("ratelimit", &[&[("PATH", "/fresh")]]).await;
        r.statuses[0]
            .current_limit
            .as_ref()
            .is_some_and(|l| l.requests_per_unit == 10)
    })
    .await;
    let addr = format!("127.0.0.1:{}", ratelimit.http).parse().unwrap();
    assert_eq!(status_of(addr, "/healthcheck").await, Some(200));
    // The reference's debug port lists the loaded limits.
    let debug = format!("127.0.0.1:{}", ratelimit.debug).parse().unwrap();
    let (status, _, dump) = http_full(debug, "GET", "/rlconfig", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        dump.contains("ratelimit.PATH: unit=DAY requests_per_unit=10, shadow_mode: false"),
        "{dump}"
    );
}

#[tokio::test]
async fn redis_by_a_unix_socket() {
    if RedisServer::start().is_none() {
        return;
    }
    let root = TempDir::new("reference-env-unix");
    let socket = root.path.join("redis.sock");
    let redis = Command::new("redis-server")
        .args(["--port", "0", "--save", "", "--appendonly", "no"])
        .arg("--unixsocket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    let _redis = ChildGuard(Some(redis));
    wait_for("the Redis socket", PATIENCE, || async { socket.exists() }).await;
    let config = configmap_dir(&root.path);
    write_volume(&config, 1, &[("config.yaml", &limits(2))]);
    let env = istio_env(&root.path, "unix", &socket.to_string_lossy());
    let ratelimit = Ratelimit::start(&root.path, &env).await;
    let first = ratelimit.ask("ratelimit", &[&[("PATH", "/u")]]).await;
    assert_eq!(
        (first.overall_code(), first.statuses[0].limit_remaining),
        (Code::Ok, 1)
    );
    // The counter is in that Redis.
    let mut conn = redis::Client::open(format!("unix://{}", socket.display()))
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
}

/// Istio's wiring: Envoy's ratelimit filter, domain "ratelimit", a ("PATH", :path) descriptor.
const ISTIO_ENVOY: &str = include_str!("fixtures/istio_sample/envoy.yaml");

#[tokio::test]
async fn envoy_in_front_as_istio_wires_it() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let root = TempDir::new("reference-env-envoy");
    let config = configmap_dir(&root.path);
    write_volume(&config, 1, &[("config.yaml", &limits(2))]);
    let env = istio_env(&root.path, "tcp", &format!("127.0.0.1:{}", redis.port));
    let ratelimit = Ratelimit::start(&root.path, &env).await;
    let upstream = Upstream::start().await;
    let grpc = format!("127.0.0.1:{}", ratelimit.grpc).parse().unwrap();
    let envoy = Envoy::start(&envoy_bin, ISTIO_ENVOY, &root, upstream.addr, grpc).await;
    let get = |path: &'static str| http_full(envoy.ingress, "GET", path, &[], "");
    assert_eq!(get("/productpage").await.0, 200);
    assert_eq!(get("/productpage").await.0, 200);
    assert_eq!(
        get("/productpage").await.0,
        429,
        "the third request of the day"
    );
    assert_eq!(get("/blocked").await.0, 429);
    assert_eq!(
        upstream.served(),
        2,
        "denied requests never reach the upstream"
    );
    // The ConfigMap raises the limit: a path's third request passes (each try a fresh path,
    // since the reference's counting keeps every denied try).
    write_volume(&config, 2, &[("config.yaml", &limits(10))]);
    let tries = std::sync::atomic::AtomicUsize::new(0);
    wait_for("the raised limit through Envoy", PATIENCE, || async {
        let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!("/ratings/{n}");
        let mut last = 0;
        for _ in 0..3 {
            last = http_full(envoy.ingress, "GET", &path, &[], "").await.0;
        }
        last == 200
    })
    .await;
}
