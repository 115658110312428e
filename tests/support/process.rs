//! The real `floodgate` binary as a child process on free loopback ports.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use floodgate::pb::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::Channel;

use super::http::status_of;
use super::{ChildGuard, free_port, wait_for};

/// How long a server may take to start.
const START_LIMIT: Duration = Duration::from_secs(30);

/// A running `floodgate serve`; killed when dropped.
pub struct Floodgate {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub child: ChildGuard,
}

/// The free loopback ports a child process is started on.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub grpc: u16,
    pub http: u16,
    pub debug: u16,
    pub metrics: u16,
    pub admin: u16,
}

impl Ports {
    /// `127.0.0.1:<port>`.
    pub fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

/// Starts the command `command` makes for fresh free ports and waits until its /healthcheck
/// (on `ports.http`) says OK; returns the child and its ports.
///
/// Free ports are found by binding and releasing them, so another test's process may take one
/// before the child binds it: a child that exits while starting is started again on other
/// ports, a few times.
pub async fn start_healthy(command: impl FnMut(&Ports) -> Command) -> (ChildGuard, Ports) {
    start_answering(command, 200).await
}

/// As [`start_healthy`], but waits until /healthcheck answers `status` (500: started, and
/// reporting itself unhealthy).
pub async fn start_answering(
    command: impl FnMut(&Ports) -> Command,
    status: u16,
) -> (ChildGuard, Ports) {
    start_ready(command, move |ports| async move {
        status_of(Ports::addr(ports.http), "/healthcheck").await == Some(status)
    })
    .await
}

/// As [`start_healthy`], but waits until `ready` says the child on those ports is (e.g. over
/// TLS).
pub async fn start_ready<F>(
    mut command: impl FnMut(&Ports) -> Command,
    mut ready: impl FnMut(Ports) -> F,
) -> (ChildGuard, Ports)
where
    F: Future<Output = bool>,
{
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        let ports = Ports {
            grpc: free_port(),
            http: free_port(),
            debug: free_port(),
            metrics: free_port(),
            admin: free_port(),
        };
        let mut child = ChildGuard::spawn(command(&ports).stdout(Stdio::null()));
        let pid = child.0.as_ref().map_or(0, Child::id);
        // The port may even answer for another process, until the server fails to bind it
        // and exits: so an exit ends the wait too, and only an answer while this child holds
        // the HTTP port counts.
        let mut exited = None;
        wait_for("the server to start", START_LIMIT, || {
            exited = child.exited();
            let answer = ready(ports);
            async move { exited.is_some() || (answer.await && listens_on(pid, ports.http)) }
        })
        .await;
        match exited {
            None => return (child, ports),
            Some(status) if attempt < ATTEMPTS => {
                eprintln!("the server exited while starting ({status}); trying other ports");
            }
            Some(status) => panic!("the server exited early: {status}"),
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// Whether process `pid` holds a socket listening on TCP `port` (IPv4, as the servers bind
/// 127.0.0.1): its inode in /proc/net/tcp is among the process's open files.
fn listens_on(pid: u32, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true; // no procfs: cannot tell, trust the answer
    };
    let local = format!(":{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[1].ends_with(&local) && f[3] == LISTEN)
        .map(|f| format!("socket:[{}]", f[9]))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            inodes
                .iter()
                .any(|inode| target.as_os_str() == inode.as_str())
        })
    })
}

impl Floodgate {
    /// Starts `floodgate serve --config <config> <args...>` and waits until /healthcheck says OK
    /// (see [`start_healthy`]).
    pub async fn start(config: &str, args: &[&str]) -> Floodgate {
        let (child, ports) = start_healthy(|ports| Floodgate::command(config, ports, args)).await;
        Floodgate::on(child, ports)
    }

    /// As [`Floodgate::start`], with arguments made for its ports (`args`, e.g. `--admin-addr`
    /// on `ports.admin`), ready when `ready` says so; also returns the ports.
    pub async fn start_with<F>(
        config: &str,
        args: impl Fn(&Ports) -> Vec<String>,
        ready: impl FnMut(Ports) -> F,
    ) -> (Floodgate, Ports)
    where
        F: Future<Output = bool>,
    {
        let command = |ports: &Ports| {
            let args = args(ports);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Floodgate::command(config, ports, &args)
        };
        let (child, ports) = start_ready(command, ready).await;
        (Floodgate::on(child, ports), ports)
    }

    /// `floodgate serve --config <config>` on `ports` with `args`.
    fn command(config: &str, ports: &Ports, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_floodgate"));
        command
            .args(["serve", "--config", config])
            .args(["--grpc-addr", &format!("127.0.0.1:{}", ports.grpc)])
            .args(["--http-addr", &format!("127.0.0.1:{}", ports.http)])
            .args(args)
            .env("RUST_LOG", "warn");
        command
    }

    fn on(child: ChildGuard, ports: Ports) -> Floodgate {
        Floodgate {
            grpc_addr: Ports::addr(ports.grpc),
            http_addr: Ports::addr(ports.http),
            child,
        }
    }

    /// A gRPC client.
    pub async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("connect to floodgate")
    }
}
