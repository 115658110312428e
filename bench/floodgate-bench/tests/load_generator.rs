//! `floodgate-bench grpc` against a real server: the requests it reports are the ones the server
//! decided, split into OK and OVER_LIMIT as the server answered them, in both loop modes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use floodgate::clock::SystemClock;
use floodgate::config::Config;
use floodgate::limiter::{Limiter, LimiterOptions};
use floodgate::server::{Listeners, ServerOptions};
use floodgate::store::MemoryStore;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every request goes to one counter (`--keys 1`) that admits 40, then the hot key admits 1.
const CONFIG: &str = "
domain: bench
descriptors:
  - key: k0
    rate_limit: { unit: hour, requests_per_unit: 40 }
  - key: hot
    rate_limit: { unit: hour, requests_per_unit: 1 }
";

/// Floodgate in this process, on the memory store, its gRPC port chosen by the OS. The only use
/// of the server's library in these tests: when its API moves, this is what follows.
struct Server {
    grpc_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(config: &str) -> Server {
        let config = Config::from_yaml(config).expect("test config is valid");
        let clock = Arc::new(SystemClock);
        let store = MemoryStore::new(clock.clone(), 100_000);
        let limiter = Limiter::new(config, store, LimiterOptions::default(), clock);
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let listeners = Listeners {
            grpc: grpc.into(),
            http,
            admin: None,
            debug: None,
            metrics: None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(async move {
            let limiter = Arc::new(limiter);
            floodgate::server::run(limiter, ServerOptions::default(), listeners, shutdown)
                .await
                .expect("server runs");
        });
        Server {
            grpc_addr,
            stop,
            task,
        }
    }

    /// Stops the server and waits until it has finished.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// A file for one report, removed when dropped (a failed test included).
struct ReportFile(PathBuf);

impl ReportFile {
    fn new(name: &str) -> ReportFile {
        let file = format!("floodgate-bench-{}-{name}.json", std::process::id());
        ReportFile(std::env::temp_dir().join(file))
    }
}

impl Drop for ReportFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the generator with `args` against the server at `addr` and reads its JSON report
/// (blocking: run it off the server's runtime threads).
async fn generate(addr: SocketAddr, name: &'static str, args: &'static [&'static str]) -> Value {
    tokio::task::spawn_blocking(move || run(addr, name, args))
        .await
        .unwrap()
}

fn run(addr: SocketAddr, name: &str, args: &[&str]) -> Value {
    let report = ReportFile::new(name);
    let output = Command::new(env!("CARGO_BIN_EXE_floodgate-bench"))
        .arg("grpc")
        .args(["--name", name, "--addr", &addr.to_string()])
        .args(["--keys", "1", "--warmup", "0s", "--duration", "1s"])
        .arg("--json")
        .arg(&report.0)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "floodgate-bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&std::fs::read(&report.0).unwrap()).unwrap()
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {report}"))
}

/// The report's counts add up, the split is the server's, and the percentiles are ordered.
fn check(report: &Value, admitted: u64) {
    let requests = count(report, "requests");
    assert_eq!(count(report, "errors"), 0, "{report}");
    assert!(
        requests > admitted,
        "too few requests to exhaust the limit: {report}"
    );
    assert_eq!(count(report, "ok"), admitted, "{report}");
    assert_eq!(count(report, "over_limit"), requests - admitted, "{report}");
    let quantiles: Vec<u64> = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"]
        .iter()
        .map(|q| count(report, q))
        .collect();
    assert!(quantiles[0] > 0, "{report}");
    assert!(quantiles.windows(2).all(|w| w[0] <= w[1]), "{report}");
    // The generator counts its own CPU: on a shared machine it is part of the budget.
    let generator = report["cpu_us_per_request"]["generator"].as_f64();
    assert!(generator.is_some_and(|us| us > 0.0), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_loop_reports_what_the_server_decided() {
    let server = Server::start(CONFIG).await;
    let report = generate(server.grpc_addr, "open", &["--rate", "400"]).await;
    assert_eq!(report["mode"], "grpc");
    assert_eq!(report["target_rate"], 400);
    check(&report, 40);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_closed_loop_reports_what_the_server_decided() {
    let server = Server::start(CONFIG).await;
    let report = generate(server.grpc_addr, "closed", &["--concurrency", "8"]).await;
    assert_eq!(report["target_rate"], Value::Null);
    check(&report, 40);

    // Attack traffic: every request on the hot key, which admits one.
    let hot = &["--concurrency", "8", "--hot-share", "1"];
    let report = generate(server.grpc_addr, "hot", hot).await;
    check(&report, 1);
    server.stop().await;
}
