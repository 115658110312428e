//! The soak's processes: redis-server, redis-sentinel and Floodgate replicas, each on
//! 127.0.0.1 and a port the OS gave, logging into the run's work directory, and killed when
//! dropped (and, should this process die first, by `bench/soak.sh`, which kills the whole
//! process group).
//!
//! A process counts as started only once it answers as itself: a Redis process `INFO` with its
//! own process id (so that a port taken meanwhile by another program means a retry on another
//! port, not a mix-up), a Floodgate replica `/healthcheck` with 200 (its store answers).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redis::FromRedisValue;
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long a process may take to answer once spawned.
const START_LIMIT: Duration = Duration::from_secs(20);
/// How long one query to a Redis process, or one HTTP request to a replica, may take.
const QUERY_LIMIT: Duration = Duration::from_secs(1);
/// Free ports tried before giving up on a process.
const PORT_ATTEMPTS: usize = 5;

/// A port that was free a moment ago (the OS's pick for 127.0.0.1:0).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process, killed when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
    pid: u32,
}

impl Proc {
    /// Spawns `command` with its output going to `log` (appended: a restart keeps the history).
    fn spawn(command: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {command:?}"))?;
        let pid = child.id().context("no pid for a child just spawned")?;
        Ok(Proc { child, pid })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGHUP...).
    pub(crate) fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = Pid::from_raw(self.pid as i32).context("pid 0")?;
        rustix::process::kill_process(pid, signal)
            .with_context(|| format!("signal {signal:?} to {}", self.pid))
    }

    /// SIGKILL, then reaps it.
    pub(crate) async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Whether it has exited (reaped if so).
    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

/// What a Redis process is: a data node (perhaps a replica of another) or a Sentinel.
#[derive(Debug, Clone)]
pub(crate) enum RedisRole {
    /// redis-server; `Some(port)`: a replica of the node on that port.
    Node(Option<u16>),
    /// redis-sentinel, with these lines after port, bind and dir.
    Sentinel(Vec<String>),
}

/// A redis-server or redis-sentinel process on its own port and directory.
#[derive(Debug)]
pub(crate) struct RedisProc {
    /// Its port (kept across restarts).
    pub(crate) port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl RedisProc {
    /// Starts one in a new directory `dir`, on a free port.
    pub(crate) async fn start(dir: PathBuf, role: &RedisRole) -> anyhow::Result<RedisProc> {
        std::fs::create_dir_all(&dir)?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let mut node = RedisProc {
                port: free_port()?,
                dir: dir.clone(),
                proc: None,
            };
            match node.spawn(role).await {
                Ok(()) => return Ok(node),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt")).context(format!("start {}", dir.display()))
    }

    /// Starts it again on its port, as `role` says (after [`RedisProc::kill`]).
    pub(crate) async fn restart(&mut self, role: &RedisRole) -> anyhow::Result<()> {
        self.kill().await;
        self.spawn(role).await
    }

    /// SIGKILL (as a crash would), and reaps it.
    pub(crate) async fn kill(&mut self) {
        if let Some(proc) = self.proc.take() {
            proc.kill().await;
        }
    }

    /// The running process.
    pub(crate) fn proc(&self) -> anyhow::Result<&Proc> {
        self.proc
            .as_ref()
            .with_context(|| format!("127.0.0.1:{} is not running", self.port))
    }

    fn config(&self, role: &RedisRole) -> String {
        let dir = self.dir.display();
        let mut lines = vec![
            format!("port {}", self.port),
            "bind 127.0.0.1".into(),
            format!("dir {dir}"),
            format!("logfile {dir}/redis.log"),
        ];
        match role {
            RedisRole::Node(master) => {
                lines.extend(
                    ["save \"\"", "appendonly no", "repl-diskless-sync-delay 0"].map(String::from),
                );
                lines.extend(master.map(|port| format!("replicaof 127.0.0.1 {port}")));
            }
            RedisRole::Sentinel(extra) => lines.extend(extra.iter().cloned()),
        }
        lines.join("\n") + "\n"
    }

    /// Writes its config, spawns it and waits until it answers `INFO` as itself.
    async fn spawn(&mut self, role: &RedisRole) -> anyhow::Result<()> {
        let conf = self.dir.join("redis.conf");
        std::fs::write(&conf, self.config(role))?;
        let program = match role {
            RedisRole::Node(_) => "redis-server",
            RedisRole::Sentinel(_) => "redis-sentinel",
        };
        let mut proc = Proc::spawn(
            Command::new(program).arg(&conf),
            &self.dir.join("stdout.log"),
        )?;
        let started = Instant::now();
        loop {
            if proc.exited() {
                bail!("{program} on port {} exited at start", self.port);
            }
            let info: anyhow::Result<String> =
                query(self.port, redis::cmd("INFO").arg("server")).await;
            if info.is_ok_and(|info| info_field(&info, "process_id") == Some(proc.pid.to_string()))
            {
                self.proc = Some(proc);
                return Ok(());
            }
            if started.elapsed() > START_LIMIT {
                bail!(
                    "{program} on port {} did not answer within {START_LIMIT:?}",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs `cmd` on a new connection to 127.0.0.1:`port`, within [`QUERY_LIMIT`] (a frozen
/// process never answers).
pub(crate) async fn query<T: FromRedisValue>(port: u16, cmd: &redis::Cmd) -> anyhow::Result<T> {
    let call = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        anyhow::Ok(cmd.query_async(&mut connection).await?)
    };
    tokio::time::timeout(QUERY_LIMIT, call)
        .await
        .with_context(|| format!("127.0.0.1:{port} did not answer within {QUERY_LIMIT:?}"))?
}

/// Runs `pipe` on a new connection to 127.0.0.1:`port`, within [`QUERY_LIMIT`].
pub(crate) async fn query_pipe<T: FromRedisValue>(
    port: u16,
    pipe: &redis::Pipeline,
) -> anyhow::Result<T> {
    let call = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        anyhow::Ok(pipe.query_async(&mut connection).await?)
    };
    tokio::time::timeout(QUERY_LIMIT, call)
        .await
        .with_context(|| format!("127.0.0.1:{port} did not answer within {QUERY_LIMIT:?}"))?
}

/// `field` of `INFO` text (`field:value` lines).
pub(crate) fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim().to_owned())
    })
}

/// A Floodgate replica: `floodgate serve` with its gRPC and HTTP ports.
#[derive(Debug)]
pub(crate) struct Replica {
    /// gRPC port (ShouldRateLimit).
    pub(crate) grpc: u16,
    /// HTTP port (/healthcheck, /metrics).
    pub(crate) http: u16,
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Replica {
    /// Starts `binary serve args... --grpc-addr --http-addr` on free ports and waits until it is
    /// healthy.
    pub(crate) async fn start(
        binary: &Path,
        args: Vec<String>,
        log: PathBuf,
    ) -> anyhow::Result<Replica> {
        let mut replica = Replica {
            grpc: free_port()?,
            http: free_port()?,
            binary: binary.to_owned(),
            args,
            log,
            proc: None,
        };
        replica.spawn().await?;
        Ok(replica)
    }

    /// The running process.
    pub(crate) fn proc(&self) -> anyhow::Result<&Proc> {
        self.proc
            .as_ref()
            .with_context(|| format!("the replica on {} is not running", self.grpc))
    }

    /// SIGKILL, and reaps it.
    pub(crate) async fn kill(&mut self) {
        if let Some(proc) = self.proc.take() {
            proc.kill().await;
        }
    }

    /// Starts it again on its ports and waits until it is healthy.
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .args(&self.args)
            .arg("--grpc-addr")
            .arg(format!("127.0.0.1:{}", self.grpc))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.http))
            .env("RUST_LOG", "info");
        let mut proc = Proc::spawn(&mut command, &self.log)?;
        let started = Instant::now();
        loop {
            if proc.exited() {
                bail!("floodgate exited at start; see {}", self.log.display());
            }
            if http_get(self.http, "/healthcheck")
                .await
                .is_ok_and(|(status, _)| status == 200)
            {
                self.proc = Some(proc);
                return Ok(());
            }
            if started.elapsed() > START_LIMIT {
                bail!(
                    "floodgate was not healthy within {START_LIMIT:?}; see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0, so the body is not chunked): the status and body.
pub(crate) async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let call = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(QUERY_LIMIT, call).await??;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("no HTTP status line")?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}
