//! Test fixtures: a Floodgate server on loopback ports chosen by the OS, real redis-server
//! processes killed when dropped (even when the test fails), certificates, and the one bounded
//! wait every test polls with.
#![allow(dead_code, unreachable_pub)]

pub mod certs;
pub mod envoy;
pub mod http;
pub mod process;
pub mod reference;
pub mod tls;
pub mod topology;

pub use topology::RedisServer;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate::clock::SystemClock;
use floodgate::config::Config;
use floodgate::decision::PlanOptions;
use floodgate::limiter::{Limiter, LimiterOptions};
use floodgate::pb::rate_limit_service_client::RateLimitServiceClient;
use floodgate::pb::{RateLimitDescriptor, RateLimitRequest, rate_limit_descriptor};
use floodgate::server::{Listeners, ServerOptions, run};
use floodgate::store::redis::RedisOptions;
use floodgate::store::{Backend, MemoryStore, RedisStore};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Sends the signal `name` (e.g. "STOP", "CONT", "HUP") to the process `pid`.
pub fn signal(pid: impl std::fmt::Display, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// A running in-process Floodgate; stops when dropped.
pub struct TestServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Floodgate on the memory store with `config` (YAML of one domain).
    pub async fn memory(config: &str, options: ServerOptions) -> TestServer {
        let store = MemoryStore::new(Arc::new(SystemClock), 100_000);
        TestServer::start(config, store, PlanOptions::default(), options).await
    }

    /// Floodgate on the Redis store at `redis`.
    pub async fn redis(
        config: &str,
        redis: &RedisServer,
        prefix: &str,
        options: ServerOptions,
    ) -> TestServer {
        let store = RedisStore::new(&RedisOptions {
            pool_size: 4,
            timeout: Duration::from_secs(2),
            clock: None,
            ..RedisOptions::standalone(&redis.url(), prefix)
        })
        .unwrap();
        let plan = PlanOptions {
            key_prefix: prefix.to_owned(),
            global_shadow: false,
            ..Default::default()
        };
        TestServer::start(config, store, plan, options).await
    }

    pub async fn start(
        config: &str,
        store: impl Into<Backend>,
        plan: PlanOptions,
        options: ServerOptions,
    ) -> TestServer {
        let limiter_options = LimiterOptions {
            plan,
            ..LimiterOptions::default()
        };
        TestServer::with_limiter(config, store, limiter_options, options)
            .await
            .0
    }

    /// A server on `store` with `limiter_options`; also returns its limiter, for inspection.
    pub async fn with_limiter(
        config: &str,
        store: impl Into<Backend>,
        limiter_options: LimiterOptions,
        options: ServerOptions,
    ) -> (TestServer, Arc<Limiter>) {
        let config = Config::from_yaml(config).expect("test config is valid");
        let limiter = Arc::new(Limiter::new(
            config,
            store,
            limiter_options,
            Arc::new(SystemClock),
        ));
        let inspect = limiter.clone();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            let listeners = Listeners {
                grpc: grpc.into(),
                http,
                admin: None,
                debug: None,
                metrics: None,
            };
            run(limiter, options, listeners, shutdown)
                .await
                .expect("server runs");
        });
        let server = TestServer {
            grpc_addr,
            http_addr,
            stop: Some(stop),
            task: Some(task),
        };
        (server, inspect)
    }

    /// A gRPC client connected to the server.
    pub async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("connect to test server")
    }

    /// Stops the server and waits until it has finished.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A request for `domain` with one descriptor per entry list.
pub fn request(domain: &str, descriptors: &[&[(&str, &str)]]) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: descriptors
            .iter()
            .map(|entries| descriptor(entries))
            .collect(),
        hits_addend: 0,
    }
}

pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| rate_limit_descriptor::Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

/// A port that was free a moment ago (the OS picks it); a child that loses it to another test
/// exits, and its starter tries another.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory removed on drop, named after the test for whoever reads a leftover.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("floodgate-{name}-"))
        .tempdir()
        .expect("create a temp dir")
}

/// How long a wait may take before the test fails: a guard against hangs, not a speed check.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The pause between two looks at a condition.
const STEP: Duration = Duration::from_millis(20);

/// What a wait's probe answers: `true`, or `Ok` with a value, when the wait is over; otherwise
/// what it saw (`Err`), for the failure message.
pub trait Probe {
    /// What the wait returns once over.
    type Value;
    /// The value, or what was seen instead.
    fn outcome(self) -> Result<Self::Value, String>;
}

impl Probe for bool {
    type Value = ();
    fn outcome(self) -> Result<(), String> {
        self.then_some(()).ok_or_else(|| "not yet".into())
    }
}

impl<T> Probe for Result<T, String> {
    type Value = T;
    fn outcome(self) -> Result<T, String> {
        self
    }
}

/// Calls `probe` every 20 ms until it says the wait is over, and returns its value; after
/// `limit`, fails the test naming `what` and what the probe saw last. For plain threads
/// (process start-up, topologies).
pub fn poll<P: Probe>(what: &str, limit: Duration, mut probe: impl FnMut() -> P) -> P::Value {
    let started = Instant::now();
    loop {
        match probe().outcome() {
            Ok(value) => return value,
            Err(last) => check_deadline(what, started, limit, &last),
        }
        std::thread::sleep(STEP);
    }
}

/// [`poll`] for async tests (it never blocks the runtime the server runs on); returns how long
/// the wait took.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output: Probe>,
{
    let started = Instant::now();
    while let Err(last) = probe().await.outcome() {
        check_deadline(what, started, limit, &last);
        tokio::time::sleep(STEP).await;
    }
    started.elapsed()
}

/// The one rule every wait follows: past `limit`, fail naming what was awaited and last seen.
fn check_deadline(what: &str, started: Instant, limit: Duration, last: &str) {
    assert!(
        started.elapsed() < limit,
        "timed out after {limit:?} waiting for {what}; last seen: {last}"
    );
}

/// A child process killed (and reaped) when dropped, so a failing test leaves nothing behind.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Spawns `command` with stdin closed.
    pub fn spawn(command: &mut Command) -> ChildGuard {
        let child = command.stdin(Stdio::null()).spawn();
        ChildGuard(Some(
            child.unwrap_or_else(|e| panic!("spawn {command:?}: {e}")),
        ))
    }

    /// Takes the child out (e.g. to wait for it), disarming the guard.
    pub fn take(&mut self) -> Child {
        self.0.take().expect("child still guarded")
    }

    /// How the process ended, if it has (`None` while it runs, or once taken out).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL (as a crash would), then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether every program in `programs` runs; if not, the test is skipped (`SKIPPED` printed),
/// except under CI, where a missing program fails it.
pub fn installed(programs: &[&str]) -> bool {
    for program in programs {
        let found = Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            assert!(!is_ci(), "{program} is required under CI (see .ci/run)");
            eprintln!("SKIPPED: {program} not found; install it to run this test");
            return false;
        }
    }
    true
}

/// The Python interpreter for the tests that drive real clients: `FLOODGATE_TEST_PYTHON`, else
/// the repository's `.venv` (which .ci/run fills), else `python3`.
pub fn python() -> String {
    if let Ok(python) = std::env::var("FLOODGATE_TEST_PYTHON") {
        return python;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    if std::path::Path::new(venv).exists() {
        venv.into()
    } else {
        "python3".into()
    }
}

/// Whether this run is CI, where a missing dependency fails the test instead of skipping it.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
