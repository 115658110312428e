//! The admin side against the real binary: the admin API on a listener of its own, HTTP over
//! TLS (with and without client certificates, its certificate renewed without a restart),
//! secrets from files followed when they change (the admin key, the Redis password), the
//! lockout of a source that keeps failing to authenticate, and the start-up refusals.

mod support;

use std::path::Path;
use std::process::Command;

use support::certs::{Certs, GatewayCa, Secret};
use support::http::{admin, http, http_full, status_of};
use support::process::{Floodgate, Ports};
use support::topology::RedisProcess;
use support::{PATIENCE, installed, temp_dir, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_floodgate");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config");
/// A request of the example config's `edge` domain.
const EDGE: &str = r#"{"domain":"edge","descriptors":[{"entries":[{"key":"remote_address","value":"192.0.2.1"}]}]}"#;

/// Writes `contents` to `path` as a Secret volume or an editor does: whole, at once (a new file
/// renamed over the old one), so that no reader sees half of it.
fn replace(path: &Path, contents: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// Floodgate with the admin API on `ports.admin`, and the extra `args`; ready when both
/// listeners answer (the admin one on a path outside the API, so that no failed
/// authentication is counted).
async fn with_admin_listener(args: &[&str]) -> (Floodgate, Ports) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    Floodgate::start_with(
        EXAMPLES,
        move |ports| {
            let admin = format!("127.0.0.1:{}", ports.admin);
            [vec!["--admin-addr".to_owned(), admin], args.clone()].concat()
        },
        |ports| async move {
            status_of(Ports::addr(ports.http), "/healthcheck").await == Some(200)
                && status_of(Ports::addr(ports.admin), "/").await == Some(404)
        },
    )
    .await
}

#[tokio::test]
async fn the_admin_api_on_its_own_listener_and_not_on_the_http_one() {
    let (floodgate, ports) = with_admin_listener(&["--admin-key", "own-listener-key"]).await;
    let admin_addr = Ports::addr(ports.admin);
    let (status, body) = admin(admin_addr, "own-listener-key", "GET", "/admin/health", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "NORMAL");
    assert_eq!(
        admin(admin_addr, "wrong", "GET", "/admin/health", "")
            .await
            .0,
        401
    );

    // The HTTP listener knows nothing of /admin, with the key or without.
    let http_addr = floodgate.http_addr;
    let (status, _) = admin(http_addr, "own-listener-key", "GET", "/admin/health", "").await;
    assert_eq!(status, 404);
    assert_eq!(status_of(http_addr, "/healthcheck").await, Some(200));
    assert_eq!(http(http_addr, "POST", "/json", EDGE).await.0, 200);
    // ... and the admin listener nothing of the rest.
    assert_eq!(status_of(admin_addr, "/healthcheck").await, Some(404));
    assert_eq!(status_of(admin_addr, "/metrics").await, Some(404));
    assert_eq!(http(admin_addr, "POST", "/json", EDGE).await.0, 404);
}

/// The server's TLS files in a directory of their own (so that they can be replaced): a leaf
/// for localhost signed by `ca`, as `server.pem` and `server-key.pem`.
fn served_by(ca: &GatewayCa, dir: &Path) -> Secret {
    let leaf = ca.leaf("localhost", &["localhost"]);
    replace(&dir.join("server.pem"), &leaf.cert);
    replace(&dir.join("server-key.pem"), &leaf.key);
    leaf
}

#[tokio::test]
async fn http_and_admin_over_tls_and_a_renewed_certificate_served_without_a_restart() {
    let (ca, dir) = (GatewayCa::new(), temp_dir("http-tls"));
    let first = served_by(&ca, dir.path());
    let (cert, key) = (
        dir.path().join("server.pem"),
        dir.path().join("server-key.pem"),
    );
    let client = ca.client(None);
    let tls_args = [
        "--http-tls-cert",
        cert.to_str().unwrap(),
        "--http-tls-key",
        key.to_str().unwrap(),
        "--http-tls-poll-interval",
        "100ms",
        "--admin-key",
        "tls-key",
    ];
    let args: Vec<String> = tls_args.iter().map(|a| (*a).to_owned()).collect();
    let ready_client = client.clone();
    let (floodgate, ports) = Floodgate::start_with(
        EXAMPLES,
        move |ports| {
            let admin = format!("127.0.0.1:{}", ports.admin);
            [vec!["--admin-addr".to_owned(), admin], args.clone()].concat()
        },
        move |ports| {
            let client = ready_client.clone();
            async move {
                let answer = client.http(Ports::addr(ports.http), "GET", "/healthcheck", &[], "");
                answer.await.is_ok_and(|(status, _, _)| status == 200)
            }
        },
    )
    .await;
    let (http_addr, admin_addr) = (floodgate.http_addr, Ports::addr(ports.admin));

    // Both listeners speak TLS, and only TLS.
    let (status, _, body) = client
        .http(http_addr, "POST", "/json", &[], EDGE)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let key = [("X-Admin-Key", "tls-key")];
    let (status, _, body) = client
        .http(admin_addr, "GET", "/admin/health", &key, "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        status_of(http_addr, "/healthcheck").await,
        None,
        "plaintext HTTP"
    );
    assert_eq!(
        status_of(admin_addr, "/admin/health").await,
        None,
        "plaintext admin"
    );
    assert_eq!(client.presented(admin_addr).await, Ok(first.der()));

    // The files are replaced (a renewal): new connections get the new certificate, on both.
    let renewed = served_by(&ca, dir.path());
    assert_ne!(renewed.der(), first.der());
    for addr in [http_addr, admin_addr] {
        wait_for("the renewed certificate", PATIENCE, || async {
            client.presented(addr).await.as_ref() == Ok(&renewed.der())
        })
        .await;
    }
    let (status, _, _) = client
        .http(http_addr, "GET", "/healthcheck", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn with_a_client_ca_http_refuses_clients_without_a_certificate_from_it() {
    let certs = Certs::generate();
    let path = |name: &str| certs.path(name).display().to_string();
    let with_cert = support::tls::TlsClient::new(
        &certs.read("ca.pem"),
        Some((&certs.read("client.pem"), &certs.read("client-key.pem"))),
    );
    let args = vec![
        "--http-tls-cert".to_owned(),
        path("server.pem"),
        "--http-tls-key".to_owned(),
        path("server-key.pem"),
        "--http-tls-client-ca".to_owned(),
        path("ca.pem"),
    ];
    let ready_client = with_cert.clone();
    let (floodgate, _) = Floodgate::start_with(
        EXAMPLES,
        move |_| args.clone(),
        move |ports| {
            let client = ready_client.clone();
            async move {
                let answer = client.http(Ports::addr(ports.http), "GET", "/healthcheck", &[], "");
                answer.await.is_ok_and(|(status, _, _)| status == 200)
            }
        },
    )
    .await;
    let addr = floodgate.http_addr;

    let (status, _, body) = with_cert
        .http(addr, "POST", "/json", &[], EDGE)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let without = support::tls::TlsClient::new(&certs.read("ca.pem"), None);
    let refused = without.http(addr, "POST", "/json", &[], EDGE).await;
    assert!(
        refused.is_err(),
        "a client without a certificate: {refused:?}"
    );
    let stranger = support::tls::TlsClient::new(
        &certs.read("ca.pem"),
        Some((
            &certs.read("wrong-client.pem"),
            &certs.read("wrong-client-key.pem"),
        )),
    );
    let refused = stranger.http(addr, "POST", "/json", &[], EDGE).await;
    assert!(
        refused.is_err(),
        "a certificate from another CA: {refused:?}"
    );
    assert_eq!(status_of(addr, "/healthcheck").await, None, "plaintext");
}

#[tokio::test]
async fn a_changed_admin_key_file_refuses_the_old_key_and_takes_the_new_one() {
    let dir = temp_dir("admin-key-file");
    let file = dir.path().join("admin-key");
    replace(&file, "the-first-key\n");
    let floodgate = Floodgate::start(EXAMPLES, &["--admin-key-file", file.to_str().unwrap()]).await;
    let addr = floodgate.http_addr;
    let call =
        |key: &'static str| async move { admin(addr, key, "GET", "/admin/health", "").await.0 };
    assert_eq!(call("the-first-key").await, 200);
    assert_eq!(call("the-second-key").await, 401);

    replace(&file, "the-second-key\n");
    // Polled with the old key, which succeeds until the file is read again: a refusal is the
    // only failure the wait counts, far below the lockout's.
    wait_for("the old key refused", PATIENCE, || async {
        call("the-first-key").await == 401
    })
    .await;
    assert_eq!(call("the-second-key").await, 200);
    assert_eq!(call("the-first-key").await, 401);
    assert_eq!(call("the-second-key").await, 200);
}

#[tokio::test]
async fn a_changed_redis_password_file_is_used_by_new_connections() {
    if !installed(&["redis-server"]) {
        return;
    }
    let mut redis = RedisProcess::server()
        .password(Some("first-password"))
        .start();
    let dir = temp_dir("redis-password-file");
    let file = dir.path().join("redis-password");
    replace(&file, "first-password");
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let args = [
        "--store",
        "redis",
        "--redis-url",
        &url,
        "--redis-password-file",
        file.to_str().unwrap(),
        "--local-cache-size",
        "0",
    ];
    let floodgate = Floodgate::start(EXAMPLES, &args).await;
    let addr = floodgate.http_addr;
    assert_eq!(http(addr, "POST", "/json", EDGE).await.0, 200);

    // The password is rotated: in the file, then in Redis (restarted with it, so that every
    // connection Floodgate had is gone and must be made again).
    replace(&file, "second-password");
    redis.restart_as(RedisProcess::server().password(Some("second-password")));
    wait_for("decisions on the restarted Redis", PATIENCE, || async {
        http(addr, "POST", "/json", EDGE).await.0 == 200
    })
    .await;
    let written: Vec<String> = redis
        .query(redis::cmd("KEYS").arg("floodgate:*"))
        .expect("Redis takes the new password");
    assert!(
        !written.is_empty(),
        "Floodgate counted on the restarted Redis"
    );
    assert_eq!(status_of(addr, "/healthcheck").await, Some(200));
}

#[tokio::test]
async fn a_source_that_keeps_failing_is_locked_out_with_the_right_key_too() {
    let floodgate = Floodgate::start(EXAMPLES, &["--admin-key", "lockout-key"]).await;
    let addr = floodgate.http_addr;
    assert_eq!(
        admin(addr, "lockout-key", "GET", "/admin/health", "")
            .await
            .0,
        200
    );
    for attempt in 1..5 {
        let (status, _) = admin(addr, "guess", "GET", "/admin/health", "").await;
        assert_eq!(status, 401, "attempt {attempt}");
    }
    // The fifth failure within the minute locks the address out: 429 with Retry-After, for
    // every call, the right key's included.
    for key in ["guess", "lockout-key"] {
        let headers = [("X-Admin-Key", key)];
        let (status, headers, body) = http_full(addr, "GET", "/admin/health", &headers, "").await;
        assert_eq!(status, 429, "{key}: {body}");
        let retry_after = headers.iter().find(|(name, _)| name == "retry-after");
        let seconds: u64 = retry_after
            .expect("a Retry-After header")
            .1
            .parse()
            .unwrap();
        assert!((1..=60).contains(&seconds), "{seconds}");
        assert!(
            body.contains("too many failed admin authentications"),
            "{body}"
        );
    }
    // The rest of the HTTP side is not locked; the lockout is audited and counted.
    assert_eq!(http(addr, "POST", "/json", EDGE).await.0, 200);
    let (_, metrics) = http(addr, "GET", "/metrics", "").await;
    let count = |event: &str| {
        let series = format!("floodgate_security_events_total{{event=\"{event}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map(str::to_owned)
    };
    assert_eq!(
        count("admin_auth_locked_out").as_deref(),
        Some("1"),
        "{metrics}"
    );
    assert_eq!(
        count("admin_auth_failed").as_deref(),
        Some("5"),
        "{metrics}"
    );
}

/// `floodgate serve` with `args` (and `env`): it must refuse to start; its error output.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(BIN)
        .args(["serve", "--config", EXAMPLES, "--grpc-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!output.status.success(), "started with {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_secret_and_its_file_together_or_an_unusable_file_stop_the_start_clearly() {
    let dir = temp_dir("secret-refusals");
    let file = dir.path().join("secret");
    std::fs::write(&file, "from-the-file").unwrap();
    let file = file.to_str().unwrap();
    for (flag, file_flag) in [
        ("--admin-key", "--admin-key-file"),
        ("--redis-password", "--redis-password-file"),
        (
            "--redis-sentinel-password",
            "--redis-sentinel-password-file",
        ),
    ] {
        let stderr = refused(&[flag, "given-secret-value", file_flag, file], &[]);
        assert!(
            stderr.contains(&format!("'{flag} <"))
                && stderr.contains(&format!("'{file_flag} <"))
                && stderr.contains("cannot be used with"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("given-secret-value"),
            "the secret is not shown: {stderr}"
        );
    }
    // The same from the environment.
    let stderr = refused(
        &["--admin-key-file", file],
        &[("FLOODGATE_ADMIN_KEY", "env-secret")],
    );
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    assert!(!stderr.contains("env-secret"), "{stderr}");

    // A file that cannot be used is named.
    let missing = dir.path().join("missing");
    let stderr = refused(&["--admin-key-file", missing.to_str().unwrap()], &[]);
    assert!(
        stderr.contains(&format!("reading the secret file {}", missing.display())),
        "{stderr}"
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let stderr = refused(&["--admin-key-file", empty.to_str().unwrap()], &[]);
    assert!(
        stderr.contains(&format!("the secret file {}: empty", empty.display())),
        "{stderr}"
    );
}

#[test]
fn an_unusable_http_tls_file_stops_the_start_naming_it() {
    let certs = Certs::generate();
    let missing = certs.path("missing.pem");
    let (cert, missing) = (
        certs.path("server.pem"),
        missing.to_str().unwrap().to_owned(),
    );
    let args = [
        "--http-tls-cert",
        cert.to_str().unwrap(),
        "--http-tls-key",
        &missing,
    ];
    let stderr = refused(&args, &[]);
    assert!(stderr.contains(&format!("reading {missing}")), "{stderr}");
    // A key that is no key.
    let args = [
        "--http-tls-cert",
        cert.to_str().unwrap(),
        "--http-tls-key",
        cert.to_str().unwrap(),
    ];
    let stderr = refused(&args, &[]);
    assert!(stderr.contains("no private key in it"), "{stderr}");
}
