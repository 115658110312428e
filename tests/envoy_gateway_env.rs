//! Floodgate started as Envoy Gateway starts envoyproxy/ratelimit (its ratelimit Deployment in
//! internal/infrastructure/kubernetes/ratelimit/resource.go), with the config source made FILE:
//! `/bin/ratelimit` with that environment only, its `envoy-rate-limit` Secret mounted as the
//! kubelet mounts Secrets (certificates in the shape internal/crypto makes them: RSA 2048 keys in
//! PKCS#1 PEM, CN `*`, SAN `*.envoy-gateway-system`, one self-made CA), the domain file in a
//! ConfigMap-style volume under RUNTIME_ROOT/ratelimit/config, a real Redis by host:port, and
//! a real Envoy in front, connecting over TLS as Envoy Gateway's proxies do.
//!
//! Asserted: decisions (429 after the limit) through Envoy; which clients the TLS port accepts
//! with Envoy Gateway's variables (no client certificate needed: GRPC_SERVER_TLS_CA_CERT is not
//! read, as by the reference) and with GRPC_CLIENT_TLS_CACERT and GRPC_CLIENT_TLS_SAN added;
//! the certificate rotated by a Secret update reaching new connections; unusable files stopping
//! start-up with the file named.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use floodgate::pb::rate_limit_response::Code;
use floodgate::pb::rate_limit_service_client::RateLimitServiceClient;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use support::certs::{GatewayCa, Secret};
use support::envoy::{Envoy, Upstream, envoy_binary};
use support::http::http_full;
use support::reference::{Ratelimit, sample, write_volume};
use support::{ChildGuard, PATIENCE, RedisServer, free_port, poll, request, temp_dir, wait_for};

/// The Gateway's listener, which Envoy Gateway makes the domain.
const DOMAIN: &str = "default/eg/http";
/// The HTTPRoute rule's name, the first descriptor entry (a generic_key).
const ROUTE: &str = "httproute/default/backend/rule/0/match/0/www_example_com";

/// The domain file as Envoy Gateway's translator would write it for a rule limiting each
/// `x-user-id` to `per_hour` requests.
fn limits(per_hour: u32) -> String {
    format!(
        "domain: {DOMAIN}\ndescriptors:\n  - key: {ROUTE}\n    value: {ROUTE}\n    descriptors:\n      - key: rule-0-match-0\n        rate_limit:\n          unit: HOUR\n          requests_per_unit: {per_hour}\n"
    )
}

/// A request as Envoy sends it for `user`.
fn for_user(user: &str) -> floodgate::pb::RateLimitRequest {
    request(DOMAIN, &[&[(ROUTE, ROUTE), ("rule-0-match-0", user)]])
}

/// The kubelet's mount of a `kubernetes.io/tls` Secret: tls.crt, tls.key and ca.crt.
fn write_secret(dir: &Path, version: u32, secret: &Secret, ca: &GatewayCa) {
    write_volume(
        dir,
        version,
        &[
            ("ca.crt", ca.pem.as_str()),
            ("tls.crt", secret.cert.as_str()),
            ("tls.key", secret.key.as_str()),
        ],
    );
}

/// Everything of one deployment: the files, Redis, and Floodgate as `/bin/ratelimit`.
struct Deployment {
    root: tempfile::TempDir,
    ca: GatewayCa,
    /// The `envoy` Secret: Envoy's client certificate.
    envoy: Secret,
    certs: PathBuf,
    _redis: RedisServer,
    ratelimit: Ratelimit,
}

impl Deployment {
    /// The Secret and ConfigMap written and Floodgate started with Envoy Gateway's
    /// environment plus `extra` (`CERTS` in a value stands for the Secret's mount).
    async fn start(
        name: &str,
        per_hour: u32,
        extra: &[(&'static str, &str)],
    ) -> Option<Deployment> {
        let redis = RedisServer::start()?;
        let root = temp_dir(name);
        let ca = GatewayCa::new();
        let certs = root.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        write_secret(&certs, 1, &ca.gateway_leaf(), &ca);
        let envoy = ca.gateway_leaf();
        let config = root.path().join("data").join("ratelimit").join("config");
        std::fs::create_dir_all(&config).unwrap();
        write_volume(&config, 1, &[("default-eg-http.yaml", &limits(per_hour))]);
        let mapping = root.path().join("statsd-exporter");
        std::fs::create_dir_all(&mapping).unwrap();
        write_volume(
            &mapping,
            1,
            &[(
                "conf.yaml",
                include_str!("fixtures/envoy_gateway/statsd-exporter-conf.yaml"),
            )],
        );
        let mut env = gateway_env(root.path(), &certs, redis.port);
        let certs_text = certs.to_string_lossy().into_owned();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| (*k, v.replace("CERTS", &certs_text))),
        );
        let ratelimit = Ratelimit::start(root.path(), &env).await;
        Some(Deployment {
            root,
            ca,
            envoy,
            certs,
            _redis: redis,
            ratelimit,
        })
    }

    fn grpc(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.ratelimit.grpc)
            .parse()
            .unwrap()
    }

    /// Envoy, configured as Envoy Gateway configures its proxies, in front of `upstream`.
    async fn envoy(&self, binary: &str, upstream: &Upstream) -> Envoy {
        let envoy_certs = self.root.path().join("envoy-certs");
        std::fs::create_dir_all(&envoy_certs).unwrap();
        std::fs::write(envoy_certs.join("ca.crt"), &self.ca.pem).unwrap();
        std::fs::write(envoy_certs.join("tls.crt"), &self.envoy.cert).unwrap();
        std::fs::write(envoy_certs.join("tls.key"), &self.envoy.key).unwrap();
        let config = include_str!("fixtures/envoy_gateway/envoy.yaml")
            .replace("ENVOY_CERTS", &envoy_certs.to_string_lossy());
        Envoy::start(
            binary,
            &config,
            self.root.path(),
            upstream.addr,
            self.grpc(),
        )
        .await
    }
}

/// Envoy Gateway's environment for its ratelimit container, with CONFIG_TYPE=FILE in place of
/// its xDS config source (CONFIG_TYPE=GRPC_XDS_SOTW, CONFIG_GRPC_XDS_SERVER_URL,
/// CONFIG_GRPC_XDS_NODE_ID) and paths under the test's directory in place of /data and /certs.
/// The xDS client's TLS variables stay: they name the same Secret and are not read. Ratelimit
/// puts the listeners, PROMETHEUS_ADDR (:19001) included, on free loopback ports.
fn gateway_env(root: &Path, certs: &Path, redis_port: u16) -> Vec<(&'static str, String)> {
    let cert = |file: &str| certs.join(file).to_string_lossy().into_owned();
    vec![
        (
            "RUNTIME_ROOT",
            root.join("data").to_string_lossy().into_owned(),
        ),
        ("RUNTIME_SUBDIRECTORY", "ratelimit".into()),
        ("RUNTIME_IGNOREDOTFILES", "true".into()),
        ("RUNTIME_WATCH_ROOT", "false".into()),
        ("LOG_LEVEL", "info".into()),
        ("USE_STATSD", "false".into()),
        ("CONFIG_TYPE", "FILE".into()),
        ("GRPC_SERVER_USE_TLS", "true".into()),
        ("GRPC_SERVER_TLS_CERT", cert("tls.crt")),
        ("GRPC_SERVER_TLS_KEY", cert("tls.key")),
        ("GRPC_SERVER_TLS_CA_CERT", cert("ca.crt")),
        ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true".into()),
        ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", cert("tls.crt")),
        ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", cert("tls.key")),
        ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", cert("ca.crt")),
        ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true".into()),
        ("REDIS_SOCKET_TYPE", "tcp".into()),
        ("REDIS_URL", format!("127.0.0.1:{redis_port}")),
        ("USE_PROMETHEUS", "true".into()),
        (
            "PROMETHEUS_MAPPER_YAML",
            root.join("statsd-exporter/conf.yaml")
                .to_string_lossy()
                .into_owned(),
        ),
    ]
}

/// Sends `count` requests for `user` through Envoy; their statuses.
async fn through_envoy(envoy: &Envoy, user: &str, count: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..count {
        let (status, _, _) =
            http_full(envoy.ingress, "GET", "/get", &[("x-user-id", user)], "").await;
        statuses.push(status);
    }
    statuses
}

#[tokio::test]
async fn envoy_gateway_deployment_behind_its_envoy() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let Some(deployment) = Deployment::start("envoy-gateway-env", 3, &[]).await else {
        return;
    };
    let grpc = deployment.grpc();

    // The TLS port serves the Secret's certificate and, with Envoy Gateway's variables, needs
    // no client certificate: GRPC_SERVER_TLS_CA_CERT is not read (as by the reference).
    let anonymous = deployment.ca.client(None);
    let presented = anonymous.presented(grpc).await.unwrap();
    let served = std::fs::read(deployment.certs.join("tls.crt")).unwrap();
    assert_eq!(presented, CertificateDer::from_pem_slice(&served).unwrap());
    assert_eq!(
        anonymous.should_rate_limit(grpc, for_user("direct")).await,
        Ok(Code::Ok)
    );
    assert_eq!(
        deployment
            .ca
            .client(Some(&deployment.envoy))
            .should_rate_limit(grpc, for_user("direct"))
            .await,
        Ok(Code::Ok),
        "a client certificate is not asked for, and presenting one is fine"
    );
    // No plaintext.
    let plaintext = async {
        let mut client = RateLimitServiceClient::connect(format!("http://{grpc}"))
            .await
            .map_err(|e| e.to_string())?;
        client
            .should_rate_limit(for_user("plain"))
            .await
            .map_err(|e| e.to_string())
    };
    assert!(plaintext.await.is_err(), "h2c on the TLS port");

    // Envoy in front, as Envoy Gateway wires it: the fourth request of the hour is refused.
    let upstream = Upstream::start().await;
    let envoy = deployment.envoy(&envoy_bin, &upstream).await;
    assert_eq!(
        through_envoy(&envoy, "alice", 4).await,
        [200, 200, 200, 429]
    );
    let (status, headers, _) =
        http_full(envoy.ingress, "GET", "/get", &[("x-user-id", "bob")], "").await;
    assert_eq!(status, 200, "another user has a counter of its own");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "x-ratelimit-limit" && v.starts_with('3')),
        "draft 03 headers from Floodgate's answer: {headers:?}"
    );
    assert_eq!(
        upstream.served(),
        4,
        "the denied request never reached the upstream"
    );

    // The Secret is renewed (the kubelet swaps `..data`): new connections get the new
    // certificate, without a restart; Envoy's decisions go on.
    let renewed = deployment.ca.gateway_leaf();
    write_secret(&deployment.certs, 2, &renewed, &deployment.ca);
    wait_for(
        "the renewed certificate on new connections",
        PATIENCE,
        || async { anonymous.presented(grpc).await.as_ref() == Ok(&renewed.der()) },
    )
    .await;
    assert_eq!(
        anonymous
            .should_rate_limit(grpc, for_user("after-renewal"))
            .await,
        Ok(Code::Ok)
    );
    assert_eq!(
        through_envoy(&envoy, "carol", 4).await,
        [200, 200, 200, 429]
    );

    // The reference's metrics on PROMETHEUS_ADDR (:19001 in Envoy Gateway), named by its
    // mapping file, as its Global Ratelimit dashboard reads them: 12 hits on the rule, the
    // two fourth requests over.
    let (status, text) = deployment.ratelimit.metrics("/metrics").await;
    assert_eq!(status, 200);
    let labels = format!(r#"{{domain="{DOMAIN}",key1="{ROUTE}_{ROUTE}",key2="rule-0-match-0"}}"#);
    for (stat, want) in [
        ("total_hits", 12.0),
        ("over_limit", 2.0),
        ("within_limit", 10.0),
    ] {
        let series = format!("ratelimit_service_rate_limit_{stat}{labels}");
        assert_eq!(sample(&text, &series), Some(want), "{series} in\n{text}");
    }
}

#[tokio::test]
async fn client_certificates_are_required_with_grpc_client_tls_cacert() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let extra = [("GRPC_CLIENT_TLS_CACERT", "CERTS/ca.crt")];
    let Some(deployment) = Deployment::start("envoy-gateway-mtls", 3, &extra).await else {
        return;
    };
    let grpc = deployment.grpc();
    let ca = &deployment.ca;
    let refused = ca
        .client(None)
        .should_rate_limit(grpc, for_user("anonymous"))
        .await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    let other = GatewayCa::new();
    let stranger = other.gateway_leaf();
    let refused = ca
        .client(Some(&stranger))
        .should_rate_limit(grpc, for_user("stranger"))
        .await;
    assert!(refused.is_err(), "a certificate of another CA: {refused:?}");
    assert_eq!(
        ca.client(Some(&deployment.envoy))
            .should_rate_limit(grpc, for_user("direct"))
            .await,
        Ok(Code::Ok),
        "Envoy's certificate (no extended key usage, CN *) is signed by the CA"
    );

    // A real Envoy presenting that certificate gets its decisions.
    let upstream = Upstream::start().await;
    let envoy = deployment.envoy(&envoy_bin, &upstream).await;
    assert_eq!(
        through_envoy(&envoy, "alice", 4).await,
        [200, 200, 200, 429]
    );
}

#[tokio::test]
async fn the_client_san_is_checked_as_the_reference_checks_it() {
    // The reference's rule (Go's VerifyHostname): Envoy's `*.envoy-gateway-system` covers
    // `envoy.envoy-gateway-system`.
    let extra = [
        ("GRPC_CLIENT_TLS_CACERT", "CERTS/ca.crt"),
        ("GRPC_CLIENT_TLS_SAN", "envoy.envoy-gateway-system"),
    ];
    let Some(deployment) = Deployment::start("envoy-gateway-san", 100, &extra).await else {
        return;
    };
    let grpc = deployment.grpc();
    let ca = &deployment.ca;
    let ask = |secret: &Secret, user: &'static str| {
        let client = ca.client(Some(secret));
        async move { client.should_rate_limit(grpc, for_user(user)).await }
    };
    assert_eq!(ask(&deployment.envoy, "envoy").await, Ok(Code::Ok));
    let exact = ca.leaf("client", &["envoy.envoy-gateway-system"]);
    assert_eq!(ask(&exact, "exact").await, Ok(Code::Ok));
    // Signed by the CA, but without the SAN: refused.
    for (name, common_name, sans) in [
        ("elsewhere", "*", &["*.other-namespace"][..]),
        ("deeper", "*", &["*.envoy.envoy-gateway-system"][..]),
        ("cn-only", "envoy.envoy-gateway-system", &[][..]),
        ("ip", "*", &["127.0.0.1"][..]),
    ] {
        let secret = ca.leaf(common_name, sans);
        let refused = ask(&secret, "refused").await;
        assert!(refused.is_err(), "{name} {sans:?}: {refused:?}");
    }
    assert!(
        ca.client(None)
            .should_rate_limit(grpc, for_user("none"))
            .await
            .is_err()
    );
}

/// Floodgate started with Envoy Gateway's TLS variables whose files in `certs` are as the test
/// wrote them; waits (bounded) for it to exit and returns its status and log.
fn start_up_with(root: &Path, certs: &Path) -> (std::process::ExitStatus, String) {
    let program = root.join("bin").join("ratelimit");
    std::fs::create_dir_all(program.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_floodgate"), &program).unwrap();
    let config = root.join("data").join("ratelimit").join("config");
    std::fs::create_dir_all(&config).unwrap();
    write_volume(&config, 1, &[("default-eg-http.yaml", &limits(3))]);
    let log = root.join("stderr.log");
    let child = Command::new(&program)
        .env_clear()
        .envs(gateway_env(root, certs, free_port()))
        .envs([
            ("HOST", "127.0.0.1".to_owned()),
            ("PORT", free_port().to_string()),
            ("GRPC_HOST", "127.0.0.1".to_owned()),
            ("GRPC_PORT", free_port().to_string()),
            ("DEBUG_HOST", "127.0.0.1".to_owned()),
            ("DEBUG_PORT", free_port().to_string()),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(Some(child));
    let status = poll("floodgate to exit", PATIENCE, || {
        child.exited().ok_or("running".to_owned())
    });
    (status, std::fs::read_to_string(log).unwrap())
}

#[test]
fn unusable_tls_files_stop_start_up_naming_the_file() {
    if !support::installed(&["openssl"]) {
        return;
    }
    let ca = GatewayCa::new();
    let good = ca.gateway_leaf();
    let cases = [
        (
            "tls.key",
            "-----BEGIN RSA PRIVATE KEY-----\nnot base64!\n-----END RSA PRIVATE KEY-----\n",
            "tls.key: not PEM",
        ),
        ("tls.key", "", "tls.key: no private key in it"),
        ("tls.crt", "", "tls.crt: no certificate in it"),
    ];
    for (i, (file, contents, want)) in cases.into_iter().enumerate() {
        let dir = temp_dir("envoy-gateway-bad-tls-case");
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let mut secret = Secret {
            cert: good.cert.clone(),
            key: good.key.clone(),
        };
        match file {
            "tls.key" => secret.key = contents.to_owned(),
            _ => secret.cert = contents.to_owned(),
        }
        write_secret(&certs, 1, &secret, &ca);
        let (status, log) = start_up_with(dir.path(), &certs);
        assert!(!status.success(), "case {i}: {log}");
        let named = format!("{}: ", certs.join(file).display());
        assert!(
            log.contains(&named) && log.contains(want),
            "case {i}: {want:?} not in {log}"
        );
    }
}
