//! Floodgate started as envoyproxy/ratelimit, `/bin/ratelimit` with no arguments and the
//! reference's environment, as Istio's sample starts it: the ConfigMap mounted as a directory
//! with Kubernetes' `..data` symlinks, Redis by `host:port` (and by a Unix socket), a config
//! change through the symlink swap, health under the reference's service name, the reference's
//! counting of a denied request's hits, and a real Envoy in front, wired as Istio wires it.

mod support;

use std::path::{Path, PathBuf};

use floodgate::pb::rate_limit_response::Code;
use support::envoy::{Envoy, Upstream, envoy_binary};
use support::http::{http_full, status_of};
use support::reference::{Ratelimit, sample, write_volume};
use support::topology::RedisProcess;
use support::{PATIENCE, RedisServer, request, temp_dir, wait_for};
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
    let root = temp_dir("reference-env");
    let config = configmap_dir(root.path());
    write_volume(&config, 1, &[("config.yaml", &limits(2))]);
    let env = istio_env(root.path(), "tcp", &format!("127.0.0.1:{}", redis.port));
    let ratelimit = Ratelimit::start(root.path(), &env).await;

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
    let (status, _, stats) = http_full(debug, "GET", "/stats", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        stats.contains("floodgate_rate_limit_total_hits{"),
        "{stats}"
    );
}

#[tokio::test]
async fn redis_by_a_unix_socket() {
    if !support::installed(&["redis-server"]) {
        return;
    }
    let root = temp_dir("reference-env-unix");
    let socket = root.path().join("redis.sock");
    let unixsocket = format!("unixsocket {}", socket.display());
    let _redis = RedisProcess::server().line(unixsocket).start();
    let config = configmap_dir(root.path());
    write_volume(&config, 1, &[("config.yaml", &limits(2))]);
    let env = istio_env(root.path(), "unix", &socket.to_string_lossy());
    let ratelimit = Ratelimit::start(root.path(), &env).await;
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
    let root = temp_dir("reference-env-envoy");
    let config = configmap_dir(root.path());
    write_volume(&config, 1, &[("config.yaml", &limits(2))]);
    let env = istio_env(root.path(), "tcp", &format!("127.0.0.1:{}", redis.port));
    let ratelimit = Ratelimit::start(root.path(), &env).await;
    let upstream = Upstream::start().await;
    let grpc = format!("127.0.0.1:{}", ratelimit.grpc).parse().unwrap();
    let envoy = Envoy::start(&envoy_bin, ISTIO_ENVOY, root.path(), upstream.addr, grpc).await;
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

/// Limits at one and at two key levels, for the reference's `key1` and `key2` labels.
const EDGE_LIMITS: &str = "domain: edge
descriptors:
  - key: PATH
    value: /api
    rate_limit: { unit: minute, requests_per_unit: 2 }
  - key: remote_address
    descriptors:
      - key: user
        rate_limit: { unit: minute, requests_per_unit: 100 }
";

#[tokio::test]
async fn metrics_under_the_reference_s_names_on_prometheus_addr() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let root = temp_dir("reference-metrics");
    write_volume(
        &configmap_dir(root.path()),
        1,
        &[("edge.yaml", EDGE_LIMITS)],
    );
    let mut env = istio_env(root.path(), "tcp", &format!("127.0.0.1:{}", redis.port));
    env.push(("USE_PROMETHEUS", "true".into()));
    let ratelimit = Ratelimit::start(root.path(), &env).await;

    let mut client = ratelimit.client().await;
    for _ in 0..3 {
        client
            .should_rate_limit(request("edge", &[&[("PATH", "/api")]]))
            .await
            .unwrap();
    }
    client
        .should_rate_limit(request(
            "edge",
            &[&[("remote_address", "10.0.0.1"), ("user", "ann")]],
        ))
        .await
        .unwrap();
    let refused = client.should_rate_limit(request("", &[])).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::InvalidArgument);

    let (status, text) = ratelimit.metrics("/metrics").await;
    assert_eq!(status, 200);
    let one = r#"{domain="edge",key1="PATH_/api"}"#;
    for (stat, want) in [
        ("total_hits", 3.0),
        ("within_limit", 2.0),
        ("near_limit", 1.0),
        ("over_limit", 1.0),
    ] {
        let series = format!("ratelimit_service_rate_limit_{stat}{one}");
        assert_eq!(sample(&text, &series), Some(want), "{series} in\n{text}");
    }
    let two = r#"{domain="edge",key1="remote_address",key2="user"}"#;
    assert_eq!(
        sample(
            &text,
            &format!("ratelimit_service_rate_limit_total_hits{two}")
        ),
        Some(1.0),
        "{text}"
    );
    let method = r#"{grpc_method="ShouldRateLimit"}"#;
    assert_eq!(
        sample(&text, &format!("ratelimit_service_total_requests{method}")),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("ratelimit_service_response_time_seconds_count{method}")
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"ratelimit_service_should_rate_limit_error{err_type="service_error"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ratelimit_service_config_load_success"),
        Some(1.0),
        "{text}"
    );
    // Only the configured path serves them.
    assert_eq!(ratelimit.metrics("/other").await.0, 404);
}

#[tokio::test]
async fn a_mapping_file_names_the_metrics_and_a_missing_one_falls_back() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let root = temp_dir("reference-mapping");
    write_volume(
        &configmap_dir(root.path()),
        1,
        &[("edge.yaml", EDGE_LIMITS)],
    );
    let mapping = root.path().join("statsd-mapping.yaml");
    std::fs::write(
        &mapping,
        "mappings:\n  - match: \"ratelimit.service.rate_limit.*.*.total_hits\"\n    name: \"edge_hits\"\n    labels:\n      service: \"$1\"\n      rule: \"$2\"\n",
    )
    .unwrap();
    for (file, series) in [
        (
            mapping.clone(),
            r#"edge_hits{rule="PATH_/api",service="edge"}"#,
        ),
        // A mapping file that is not there is reported, and the built-in mapping used.
        (
            root.path().join("missing.yaml"),
            r#"ratelimit_service_rate_limit_total_hits{domain="edge",key1="PATH_/api"}"#,
        ),
    ] {
        let mut env = istio_env(root.path(), "tcp", &format!("127.0.0.1:{}", redis.port));
        env.push(("USE_PROMETHEUS", "true".into()));
        env.push(("PROMETHEUS_PATH", "/stats".into()));
        env.push((
            "PROMETHEUS_MAPPER_YAML",
            file.to_string_lossy().into_owned(),
        ));
        env.push(("CACHE_KEY_PREFIX", format!("{}:", file.display())));
        let ratelimit = Ratelimit::start(root.path(), &env).await;
        ratelimit.ask("edge", &[&[("PATH", "/api")]]).await;
        let (status, text) = ratelimit.metrics("/stats").await;
        assert_eq!(status, 200);
        assert_eq!(sample(&text, series), Some(1.0), "{series} in\n{text}");
    }
}

#[tokio::test]
async fn starting_without_a_config_as_force_start_allows() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let root = temp_dir("reference-force-start");
    let config = configmap_dir(root.path());
    write_volume(&config, 1, &[("config.yaml", "domain: [unclosed\n")]);
    let mut env = istio_env(root.path(), "tcp", &format!("127.0.0.1:{}", redis.port));
    env.push(("FORCE_START_WITHOUT_INITIAL_CONFIG", "true".into()));
    env.push(("USE_PROMETHEUS", "true".into()));
    // Healthy at once (the store answers); no decisions until a config loads.
    let ratelimit = Ratelimit::start(root.path(), &env).await;
    let mut client = ratelimit.client().await;
    let refused = client
        .should_rate_limit(request("ratelimit", &[&[("PATH", "/a")]]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused
            .message()
            .contains("no rate limit configuration loaded"),
        "{refused:?}"
    );
    let (_, text) = ratelimit.metrics("/metrics").await;
    assert_eq!(
        sample(&text, "ratelimit_service_config_load_error"),
        Some(1.0),
        "{text}"
    );
    // The ConfigMap is fixed: the config loads and decisions begin.
    write_volume(&config, 2, &[("config.yaml", &limits(1))]);
    wait_for("the first config", PATIENCE, || async {
        let mut client = ratelimit.client().await;
        client
            .should_rate_limit(request("ratelimit", &[&[("PATH", "/a")]]))
            .await
            .is_ok_and(|r| r.into_inner().overall_code() == Code::Ok)
    })
    .await;
    assert_eq!(
        ratelimit
            .ask("ratelimit", &[&[("PATH", "/a")]])
            .await
            .overall_code(),
        Code::OverLimit
    );
}

#[tokio::test]
async fn unhealthy_until_a_config_loads_when_asked() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let root = temp_dir("reference-healthy-with-config");
    let config = configmap_dir(root.path());
    write_volume(&config, 1, &[("config.yaml", "domain: [unclosed\n")]);
    let mut env = istio_env(root.path(), "tcp", &format!("127.0.0.1:{}", redis.port));
    env.push(("FORCE_START_WITHOUT_INITIAL_CONFIG", "true".into()));
    env.push(("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "true".into()));
    let ratelimit = Ratelimit::start_answering(root.path(), &env, 500).await;
    let http = format!("127.0.0.1:{}", ratelimit.http).parse().unwrap();
    let (_, _, body) = http_full(http, "GET", "/healthcheck", &[], "").await;
    assert_eq!(body, "no config loaded\n");
    let health = || async {
        let channel =
            tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", ratelimit.grpc))
                .unwrap()
                .connect()
                .await
                .unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "ratelimit".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
    };
    wait_for("gRPC health NOT_SERVING", PATIENCE, || async {
        health().await == ServingStatus::NotServing
    })
    .await;
    write_volume(&config, 2, &[("config.yaml", &limits(5))]);
    wait_for("healthy once the config loads", PATIENCE, || async {
        status_of(http, "/healthcheck").await == Some(200)
    })
    .await;
    wait_for("gRPC health SERVING", PATIENCE, || async {
        health().await == ServingStatus::Serving
    })
    .await;
}

/// Keys in the Redis at `port`.
fn keys_at(port: u16) -> Vec<String> {
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection()
        .unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    keys.sort();
    keys
}

#[tokio::test]
async fn per_second_limits_in_a_second_redis() {
    let (Some(main), Some(fast)) = (RedisServer::start(), RedisServer::start()) else {
        return;
    };
    let root = temp_dir("reference-per-second");
    let limits = "domain: api
descriptors:
  - key: user
    rate_limit: { unit: second, requests_per_unit: 1 }
  - key: plan
    rate_limit: { unit: minute, requests_per_unit: 10 }
";
    write_volume(&configmap_dir(root.path()), 1, &[("api.yaml", limits)]);
    let mut env = istio_env(root.path(), "tcp", &format!("127.0.0.1:{}", main.port));
    env.extend([
        ("REDIS_PERSECOND", "true".into()),
        ("REDIS_PERSECOND_SOCKET_TYPE", "tcp".into()),
        ("REDIS_PERSECOND_URL", format!("127.0.0.1:{}", fast.port)),
        // Floodgate's rule, so that a request denied by one Redis counts nothing in the other.
        ("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "true".into()),
    ]);
    let ratelimit = Ratelimit::start(root.path(), &env).await;
    let both: &[&[(&str, &str)]] = &[&[("user", "ann")], &[("plan", "free")]];
    let first = ratelimit.ask("api", both).await;
    assert_eq!(first.overall_code(), Code::Ok);
    // Each counter is in its own Redis.
    let (slow_keys, fast_keys) = (keys_at(main.port), keys_at(fast.port));
    assert_eq!(slow_keys.len(), 1, "{slow_keys:?}");
    assert!(slow_keys[0].contains("plan"), "{slow_keys:?}");
    assert_eq!(fast_keys.len(), 1, "{fast_keys:?}");
    assert!(fast_keys[0].contains("user"), "{fast_keys:?}");
    // Denied by the per-second limit (unless the second turned: then the first call of the
    // new second is admitted and the next is denied): the minute counter takes nothing.
    let mut admitted = 1;
    let mut denied = false;
    for _ in 0..3 {
        let r = ratelimit.ask("api", both).await;
        if r.overall_code() == Code::OverLimit {
            assert_eq!(
                r.statuses[0].code(),
                Code::OverLimit,
                "the per-second limit"
            );
            denied = true;
            break;
        }
        admitted += 1;
    }
    assert!(denied, "the per-second limit denies within two calls");
    let minute = ratelimit.ask("api", &[&[("plan", "free")]]).await;
    assert_eq!(
        minute.statuses[0].limit_remaining,
        10 - admitted - 1,
        "only admitted requests took from the minute counter"
    );
    // Health follows both Redis.
    let http = format!("127.0.0.1:{}", ratelimit.http).parse().unwrap();
    drop(fast);
    wait_for(
        "unhealthy without the per-second Redis",
        PATIENCE,
        || async { status_of(http, "/healthcheck").await == Some(500) },
    )
    .await;
}

#[tokio::test]
async fn grpc_on_a_unix_socket_as_grpc_uds_asks() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let root = temp_dir("reference-grpc-uds");
    write_volume(
        &configmap_dir(root.path()),
        1,
        &[("config.yaml", &limits(1))],
    );
    let socket = root.path().join("ratelimit.sock");
    // A socket file left by an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let mut env = istio_env(root.path(), "tcp", &format!("127.0.0.1:{}", redis.port));
    env.push(("GRPC_UDS", socket.to_string_lossy().into_owned()));
    let ratelimit = Ratelimit::start(root.path(), &env).await;

    let path = socket.clone();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    let mut client = floodgate::pb::rate_limit_service_client::RateLimitServiceClient::new(channel);
    let ask = || request("ratelimit", &[&[("PATH", "/uds")]]);
    let first = client.should_rate_limit(ask()).await.unwrap().into_inner();
    assert_eq!(first.overall_code(), Code::Ok);
    let second = client.should_rate_limit(ask()).await.unwrap().into_inner();
    assert_eq!(second.overall_code(), Code::OverLimit);
    // Not on TCP as well: the socket replaces GRPC_HOST:GRPC_PORT, as in the reference.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", ratelimit.grpc)).await;
    assert!(tcp.is_err(), "gRPC also listening on TCP");
}
