//! Operations: metrics, gRPC health, hot reload, graceful shutdown, overload protection, TLS.

mod support;

use std::process::Command;
use std::time::Duration;

use floodgate::limiter::LimiterOptions;
use floodgate::pb::rate_limit_response::Code;
use floodgate::pb::rate_limit_service_client::RateLimitServiceClient;
use floodgate::server::{GrpcTls, Protection, ServerOptions};
use floodgate::store::RedisStore;
use floodgate::store::redis::RedisOptions;
use support::certs::Certs;
use support::http::http;
use support::process::Floodgate;
use support::tls::TlsClient;
use support::{PATIENCE, RedisServer, TestServer, request, signal, wait_for};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const CONFIG: &str = r#"
domain: ops
descriptors:
  - key: client
    rate_limit: { unit: day, requests_per_unit: 3 }
  - key: user
    detailed_metric: true
    rate_limit: { unit: day, requests_per_unit: 100 }
"#;

/// The value of the first sample of `metric` whose labels contain every one of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_are_present_and_move_after_traffic() {
    // Its own domain: the metrics recorder is shared by every test of this binary.
    let config = CONFIG.replace("domain: ops", "domain: metered");
    let server = TestServer::memory(&config, ServerOptions::default()).await;
    let mut client = server.client().await;
    for _ in 0..5 {
        let req = request("metered", &[&[("client", "c1")]]);
        client.should_rate_limit(req).await.unwrap();
    }
    let req = request("metered", &[&[("user", "u1")]]);
    client.should_rate_limit(req).await.unwrap();
    let (status, text) = http(server.http_addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    let key = |k: &str| format!("key=\"{k}\"");
    let client_key = key("client");
    let labels = ["domain=\"metered\"", client_key.as_str()];
    assert_eq!(
        sample(&text, "floodgate_rate_limit_total_hits", &labels),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "floodgate_rate_limit_within_limit", &labels),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "floodgate_rate_limit_near_limit", &labels),
        Some(1.0),
        "3 of 3 is past 80%"
    );
    assert_eq!(
        sample(&text, "floodgate_rate_limit_over_limit", &labels),
        Some(2.0)
    );
    let detailed = key("user_u1");
    assert_eq!(
        sample(
            &text,
            "floodgate_rate_limit_total_hits",
            &[detailed.as_str()]
        ),
        Some(1.0),
        "detailed_metric puts the value in the key"
    );
    assert!(
        sample(
            &text,
            "floodgate_request_duration_seconds_bucket",
            &["result=\"over_limit\"", "le=\"0.001\""]
        )
        .is_some(),
        "latency is a histogram with buckets"
    );
    assert!(sample(&text, "floodgate_requests_total", &["result=\"ok\""]).unwrap() >= 4.0);
}

#[tokio::test]
async fn grpc_health_follows_the_store() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::new(&RedisOptions {
        timeout: Duration::from_millis(300),
        ..RedisOptions::standalone(&redis.url(), "ops:")
    })
    .unwrap();
    let limiter = LimiterOptions {
        cache_ttl: Duration::from_millis(200),
        ..LimiterOptions::default()
    };
    let (server, _) =
        TestServer::with_limiter(CONFIG, store, limiter, ServerOptions::default()).await;
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel);
    let status = |service: &'static str| {
        let mut health = health.clone();
        async move {
            let request = HealthCheckRequest {
                service: service.into(),
            };
            health.check(request).await.map(|r| r.into_inner().status())
        }
    };
    let serving = || async { status("").await.ok() == Some(ServingStatus::Serving) };
    wait_for("SERVING", PATIENCE, serving).await;
    for name in ["envoy.service.ratelimit.v3.RateLimitService", "ratelimit"] {
        assert_eq!(
            status(name).await.unwrap(),
            ServingStatus::Serving,
            "{name}"
        );
    }
    redis.kill();
    wait_for("NOT_SERVING while Redis is down", PATIENCE, || async {
        status("").await.ok() == Some(ServingStatus::NotServing)
    })
    .await;
    assert_eq!(
        status("ratelimit").await.unwrap(),
        ServingStatus::NotServing,
        "the reference's name follows too"
    );
    assert_eq!(http(server.http_addr, "GET", "/readyz", "").await.0, 500);
    assert_eq!(
        http(server.http_addr, "GET", "/livez", "").await.0,
        200,
        "alive, only not ready"
    );
    redis.restart();
    wait_for("SERVING again", PATIENCE, serving).await;
}

#[tokio::test]
async fn config_changes_apply_without_restart_and_broken_ones_are_refused() {
    let dir = std::env::temp_dir().join(format!("floodgate-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ops.yaml");
    let limit = |n: u32| {
        format!(
            "domain: ops\ndescriptors:\n  - key: client\n    rate_limit: {{ unit: day, requests_per_unit: {n} }}\n"
        )
    };
    std::fs::write(&file, limit(10)).unwrap();
    let floodgate =
        Floodgate::start(dir.to_str().unwrap(), &["--config-poll-interval", "100ms"]).await;
    let mut client = floodgate.client().await;
    let current = |client: &mut RateLimitServiceClient<Channel>| {
        let mut client = client.clone();
        async move {
            let r = client
                .should_rate_limit(request("ops", &[&[("client", "x")]]))
                .await
                .unwrap()
                .into_inner();
            r.statuses[0]
                .current_limit
                .as_ref()
                .map(|l| l.requests_per_unit)
        }
    };
    assert_eq!(current(&mut client).await, Some(10));

    // A valid change is picked up while serving.
    std::fs::write(&file, limit(20)).unwrap();
    wait_for("the new limit", PATIENCE, || {
        let c = current(&mut client);
        async move { c.await == Some(20) }
    })
    .await;

    // A broken one is refused and counted; the previous config keeps serving.
    std::fs::write(
        &file,
        "domain: ops\ndescriptors:\n  - key: client\n    rate_limit: { unit: fortnight }\n",
    )
    .unwrap();
    wait_for("the refusal to be counted", PATIENCE, || async {
        let text = http(floodgate.http_addr, "GET", "/metrics", "").await.1;
        sample(
            &text,
            "floodgate_config_reloads_total",
            &["result=\"failure\""],
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(current(&mut client).await, Some(20));

    // A Kubernetes-style swap: the directory gets a new file through a renamed temp file.
    let tmp = dir.join(".tmp.yaml");
    std::fs::write(&tmp, limit(30)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    wait_for("the swapped file", PATIENCE, || {
        let c = current(&mut client);
        async move { c.await == Some(30) }
    })
    .await;

    // SIGHUP reloads at once even with polling off.
    let quiet = Floodgate::start(dir.to_str().unwrap(), &["--config-poll-interval", "0s"]).await;
    let mut quiet_client = quiet.client().await;
    std::fs::write(&file, limit(40)).unwrap();
    let pid = quiet.child.0.as_ref().unwrap().id().to_string();
    signal(&pid, "HUP");
    wait_for("the SIGHUP reload", PATIENCE, || {
        let c = current(&mut quiet_client);
        async move { c.await == Some(40) }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_finishes_in_flight_calls() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config");
    let mut floodgate = Floodgate::start(
        config,
        &[
            "--store",
            "redis",
            "--redis-url",
            &url,
            "--redis-timeout",
            "3s",
            "--failure-mode",
            "allow",
            "--shutdown-grace",
            "20s",
        ],
    )
    .await;
    let client = floodgate.client().await;
    // Freeze Redis so that calls stay in flight, send them, then SIGTERM.
    let redis_pid = redis.pid().to_string();
    signal(&redis_pid, "STOP");
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let req = request("edge", &[&[("remote_address", &format!("198.51.100.{i}"))]]);
                client.should_rate_limit(req).await
            })
        })
        .collect();
    // Let the calls reach Floodgate (its first pipeline to the frozen Redis) before the signal.
    wait_for("calls in flight", PATIENCE, || async {
        let text = http(floodgate.http_addr, "GET", "/metrics", "").await.1;
        sample(&text, "floodgate_redis_round_trips_total", &[]).is_some()
    })
    .await;
    let mut child = floodgate.child.take();
    signal(child.id(), "TERM");
    // Redis wakes up later; the frozen calls then finish on the store or its timeout.
    signal(&redis_pid, "CONT");
    for call in calls {
        let response = call
            .await
            .unwrap()
            .expect("an in-flight call got its answer, not a reset");
        assert_eq!(response.into_inner().overall_code(), Code::Ok);
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_fast_not_queued() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::new(&RedisOptions {
        // Below the 1 s request timeout, so the admitted calls end on the store deadline
        // (UNAVAILABLE) rather than racing the server's own timeout (CANCELLED).
        timeout: Duration::from_millis(500),
        ..RedisOptions::standalone(&redis.url(), "ops:")
    })
    .unwrap();
    let options = ServerOptions {
        protection: Protection {
            max_concurrent: 2,
            ..Protection::default()
        },
        ..ServerOptions::default()
    };
    let (server, _) =
        TestServer::with_limiter(CONFIG, store, LimiterOptions::default(), options).await;
    let client = server.client().await;
    let redis_pid = redis.pid().to_string();
    signal(&redis_pid, "STOP");
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .should_rate_limit(request("ops", &[&[("client", &format!("o{i}"))]]))
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap().map(|r| r.into_inner().overall_code()));
    }
    let _ = Command::new("kill").args(["-CONT", &redis_pid]).status();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == tonic::Code::ResourceExhausted))
        .count();
    assert!(
        refused >= 18,
        "at most 2 in flight, the rest refused at once: {results:?}"
    );
    // The two admitted calls waited on the frozen store and got UNAVAILABLE at its deadline:
    // every call was answered, none queued.
    for result in &results {
        if let Err(status) = result {
            let code = status.code();
            assert!(
                matches!(
                    code,
                    tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                ),
                "{status:?}"
            );
        }
    }
}

#[tokio::test]
async fn grpc_tls_and_mtls_handshakes() {
    let certs = Certs::generate();
    let client_for = |tls: Option<ClientTlsConfig>, addr: std::net::SocketAddr| async move {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Channel::from_shared(format!("{scheme}://{addr}")).unwrap();
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).unwrap();
        }
        let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
        let mut client = RateLimitServiceClient::new(channel);
        client
            .should_rate_limit(request("ops", &[&[("client", "tls")]]))
            .await
            .map(|r| r.into_inner().overall_code())
            .map_err(|s| s.to_string())
    };
    let tls = |ca: &str| {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(certs.read(ca)))
            .domain_name("localhost")
    };

    // TLS: a client trusting the CA gets answers; plaintext and a wrong CA do not.
    let options = ServerOptions {
        grpc_tls: Some(GrpcTls::new(
            certs.path("server.pem"),
            certs.path("server-key.pem"),
        )),
        ..ServerOptions::default()
    };
    let server = TestServer::memory(CONFIG, options).await;
    assert_eq!(
        client_for(Some(tls("ca.pem")), server.grpc_addr)
            .await
            .unwrap(),
        Code::Ok
    );
    assert!(
        client_for(Some(tls("wrong-ca.pem")), server.grpc_addr)
            .await
            .is_err()
    );
    assert!(client_for(None, server.grpc_addr).await.is_err());

    // mTLS: a client certificate signed by the CA is required.
    let options = ServerOptions {
        grpc_tls: Some(GrpcTls {
            client_ca: Some(certs.path("ca.pem")),
            ..GrpcTls::new(certs.path("server.pem"), certs.path("server-key.pem"))
        }),
        ..ServerOptions::default()
    };
    let server = TestServer::memory(CONFIG, options).await;
    assert!(
        client_for(Some(tls("ca.pem")), server.grpc_addr)
            .await
            .is_err(),
        "no client certificate"
    );
    let with_identity = tls("ca.pem").identity(Identity::from_pem(
        certs.read("client.pem"),
        certs.read("client-key.pem"),
    ));
    assert_eq!(
        client_for(Some(with_identity), server.grpc_addr)
            .await
            .unwrap(),
        Code::Ok
    );
}

#[tokio::test]
async fn a_failed_or_stalled_tls_handshake_holds_up_no_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let certs = Certs::generate();
    let server_with = |handshake_timeout: Duration| {
        let options = ServerOptions {
            grpc_tls: Some(GrpcTls {
                handshake_timeout,
                ..GrpcTls::new(certs.path("server.pem"), certs.path("server-key.pem"))
            }),
            ..ServerOptions::default()
        };
        TestServer::memory(CONFIG, options)
    };
    let client = TlsClient::new(&certs.read("ca.pem"), None);
    let call = |server: &TestServer, n: &'static str| {
        let call = client.should_rate_limit(server.grpc_addr, request("ops", &[&[("client", n)]]));
        async move {
            tokio::time::timeout(PATIENCE, call)
                .await
                .unwrap_or_else(|_| Err("no answer".into()))
        }
    };
    let closed = |mut conn: TcpStream| async move {
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, conn.read_to_end(&mut rest))
            .await
            .is_ok()
    };

    // Clients that will not finish their handshake for an hour: one sends nothing, one stops
    // halfway through a ClientHello. Meanwhile a TLS client is served.
    let patient = server_with(Duration::from_secs(3600)).await;
    let _silent = TcpStream::connect(patient.grpc_addr).await.unwrap();
    let mut halfway = TcpStream::connect(patient.grpc_addr).await.unwrap();
    halfway
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0xff, 0x01])
        .await
        .unwrap();
    assert_eq!(call(&patient, "during").await, Ok(Code::Ok));

    // A client that sends no TLS and one that speaks h2c are closed at their failed handshake;
    // a silent one once its handshake time is up. The server serves on.
    let server = server_with(Duration::from_millis(300)).await;
    let mut garbage = TcpStream::connect(server.grpc_addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut h2c = TcpStream::connect(server.grpc_addr).await.unwrap();
    h2c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let silent = TcpStream::connect(server.grpc_addr).await.unwrap();
    assert!(closed(garbage).await, "the no-TLS connection is closed");
    assert!(closed(h2c).await, "the h2c connection is closed");
    assert!(closed(silent).await, "the silent connection is closed");
    assert_eq!(call(&server, "after").await, Ok(Code::Ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_redis_connection_is_replaced_and_counted() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config");
    let args = [
        "--store",
        "redis",
        "--redis-url",
        &url,
        "--redis-pool-size",
        "1",
    ];
    let floodgate = Floodgate::start(config, &args).await;
    let mut client = floodgate.client().await;
    let connects = |text: &str| sample(text, "floodgate_redis_connects_total", &["result=\"ok\""]);
    let req = || request("edge", &[&[("remote_address", "198.51.100.7")]]);
    client.should_rate_limit(req()).await.unwrap();
    let text = http(floodgate.http_addr, "GET", "/metrics", "").await.1;
    let before = connects(&text).expect("the first connection is counted");

    // The server drops every client connection; Floodgate's next calls must open a new one.
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal"][..])
        .query(&mut redis.connection())
        .unwrap();
    assert!(killed >= 1, "Floodgate's connection was open");
    wait_for("a new connection", PATIENCE, || {
        let mut client = client.clone();
        async move {
            let _ = client.should_rate_limit(req()).await;
            let text = http(floodgate.http_addr, "GET", "/metrics", "").await.1;
            connects(&text).is_some_and(|n| n > before)
        }
    })
    .await;
    let response = client.should_rate_limit(req()).await.unwrap().into_inner();
    assert_eq!(response.overall_code(), Code::Ok);
}

#[tokio::test]
async fn a_refused_redis_password_is_logged_with_its_cause_and_never_the_password() {
    refused_password_is_logged(&[], "circuit opened").await;
}

#[tokio::test]
async fn a_redis_outage_is_logged_with_the_circuit_breaker_off() {
    refused_password_is_logged(&["--circuit-failures", "0"], "circuit breaker off").await;
}

/// Runs the binary (with `args`) against a Redis that refuses its password, until its log has
/// a line with `warning`: that line must give the cause, and no line the password.
async fn refused_password_is_logged(args: &[&str], warning: &str) {
    use std::io::{BufRead, BufReader};
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "right-secret"][..])
        .query(&mut redis.connection())
        .unwrap();
    let grpc_addr = format!("127.0.0.1:{}", support::free_port());
    let http_addr = format!("127.0.0.1:{}", support::free_port());
    let url = redis.url();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(["serve", "--config", config, "--grpc-addr", &grpc_addr])
        .args(["--http-addr", &http_addr, "--store", "redis"])
        .args(["--redis-url", &url, "--redis-password", "wrong-secret-4821"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped()) // the log
        .spawn()
        .expect("spawn floodgate");
    let stdout = child.stdout.take().unwrap();
    let _guard = support::ChildGuard(Some(child));
    let (lines, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let endpoint = format!("http://{grpc_addr}");
    wait_for("the gRPC port", PATIENCE, || {
        let endpoint = endpoint.clone();
        async move { RateLimitServiceClient::connect(endpoint).await.is_ok() }
    })
    .await;
    let client = RateLimitServiceClient::connect(endpoint).await.unwrap();
    // Every request fails (UNAVAILABLE, the default failure mode) until the warning that says
    // why is logged.
    let mut seen = Vec::new();
    wait_for("the warning", PATIENCE, || {
        let mut client = client.clone();
        let req = request("edge", &[&[("remote_address", "198.51.100.7")]]);
        seen.extend(log.try_iter());
        let opened = seen.iter().any(|line| line.contains(warning));
        async move {
            if !opened {
                let status = client.should_rate_limit(req).await.unwrap_err();
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            }
            opened
        }
    })
    .await;
    let line = seen.iter().find(|line| line.contains(warning)).unwrap();
    assert!(line.contains("authentication failed"), "{line}");
    assert!(
        seen.iter().all(|line| !line.contains("wrong-secret-4821")),
        "the password was logged: {seen:?}"
    );
}
