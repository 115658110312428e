//! Test fixtures: a Floodgate server on loopback ports chosen by the OS, and real redis-server
//! processes that are killed when dropped, even when the test fails.
#![allow(dead_code, unreachable_pub)]

pub mod certs;
pub mod envoy;
pub mod gateway;
pub mod http;
pub mod process;
pub mod reference;
pub mod tls;
pub mod topology;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate::clock::SystemClock;
use floodgate::config::Config;
use floodgate::decision::PlanOptions;
use floodgate::limiter::{Limiter, LimiterOptions};
use floodgate::pb::rate_limit_service_client::RateLimitServiceClient;
use floodgate::pb::{
    RateLimitDescriptor, RateLimitRequest, RateLimitResponse, rate_limit_descriptor,
};
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

/// The overall code of a response, as the enum.
pub fn overall(response: &RateLimitResponse) -> floodgate::pb::rate_limit_response::Code {
    response.overall_code()
}

/// A port that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `ready` every 20 ms until it holds or `limit` passes.
pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long the async tests wait for a condition before failing (a guard, not a speed check).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `ready` every 20 ms until it holds (returning how long that took), or fails the test
/// once `limit` has passed.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut ready: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !ready().await {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// A child process killed (and reaped) when dropped, so a failing test leaves nothing behind.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Takes the child out (e.g. to wait for it), disarming the guard.
    pub fn take(&mut self) -> Child {
        self.0.take().expect("child still guarded")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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

/// A redis-server process on a free loopback port; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts redis-server, or returns `None` (with a message) when it is not installed and
    /// this is not CI; under CI=true a missing redis-server fails the test.
    pub fn start() -> Option<RedisServer> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "redis-server is required under CI (apt-get install redis-server)"
            );
            eprintln!("SKIPPED: redis-server not found; install it to run the Redis tests");
            return None;
        }
        for _ in 0..5 {
            let port = free_port();
            if let Some(server) = RedisServer::start_on(port) {
                return Some(server);
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Starts redis-server on `port`; `None` if it did not come up (e.g. the port was taken).
    pub fn start_on(port: u16) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let mut server = RedisServer { port, child };
        server.wait_ready().then_some(server)
    }

    /// Kills the server (as a crash would) and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(mut again) = RedisServer::start_on(self.port) {
                std::mem::swap(self, &mut again);
                // `again` now holds the dead child; dropping it is harmless.
                return;
            }
            assert!(
                Instant::now() < deadline,
                "could not restart redis-server on its port"
            );
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's process id (to pause it with SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A plain client connection, for inspecting keys.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false; // exited: port taken meanwhile
            }
            if let Ok(mut conn) = redis::Client::open(self.url()).and_then(|c| c.get_connection())
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
