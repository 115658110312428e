//! Real Redis topologies for the tests, on free loopback ports: a Sentinel set (1 master,
//! 2 replicas, 3 sentinels), a 3-master Cluster, and a TLS server. Every process is killed on
//! drop; readiness is polled, never slept for.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{ChildGuard, free_port, is_ci};

fn installed(program: &str) -> bool {
    let ok = Command::new(program).arg("--version").output().is_ok();
    if !ok {
        assert!(!is_ci(), "{program} is required under CI");
        eprintln!("SKIPPED: {program} not found");
    }
    ok
}

fn spawn(program: &str, args: &[String]) -> Child {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
}

/// Runs redis-cli with `args`; its trimmed output, or None if it failed.
pub fn cli(args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn poll(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "floodgate-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A redis-server started with `args` on `port`, waited for.
fn server(port: u16, extra: &[String]) -> ChildGuard {
    let mut args = vec![
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        "".into(),
        "--appendonly".into(),
        "no".into(),
    ];
    args.extend_from_slice(extra);
    let child = ChildGuard(Some(spawn("redis-server", &args)));
    let p = port.to_string();
    poll("redis-server", Duration::from_secs(10), || {
        cli(&["-p", &p, "PING"]).as_deref() == Some("PONG")
    });
    child
}

/// 1 master, 2 replicas, 3 sentinels watching master "floodgate-test".
pub struct SentinelSet {
    pub nodes: Vec<(u16, ChildGuard)>,
    pub sentinels: Vec<(u16, ChildGuard)>,
    dir: PathBuf,
}

pub const MASTER_NAME: &str = "floodgate-test";

impl SentinelSet {
    pub fn start(down_after_ms: u64) -> Option<SentinelSet> {
        if !installed("redis-server") || !installed("redis-sentinel") {
            return None;
        }
        let dir = temp_dir("sentinel");
        let master = free_port();
        let mut nodes = vec![(master, server(master, &[]))];
        for _ in 0..2 {
            let port = free_port();
            nodes.push((
                port,
                server(
                    port,
                    &["--replicaof".into(), "127.0.0.1".into(), master.to_string()],
                ),
            ));
        }
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel resolve-hostnames no\nsentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\nsentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\nsentinel failover-timeout {MASTER_NAME} 5000\nsentinel parallel-syncs {MASTER_NAME} 1\n"
                ),
            )
            .unwrap();
            sentinels.push((
                port,
                ChildGuard(Some(spawn(
                    "redis-sentinel",
                    &[conf.to_string_lossy().into_owned()],
                ))),
            ));
        }
        let set = SentinelSet {
            nodes,
            sentinels,
            dir,
        };
        for (port, _) in &set.nodes[1..] {
            let p = port.to_string();
            poll("replica link", Duration::from_secs(20), || {
                cli(&["-p", &p, "INFO", "replication"])
                    .is_some_and(|i| i.contains("master_link_status:up"))
            });
        }
        for (port, _) in &set.sentinels {
            let p = port.to_string();
            poll("sentinel view", Duration::from_secs(30), || {
                cli(&["-p", &p, "SENTINEL", "MASTER", MASTER_NAME]).is_some_and(|info| {
                    let lines: Vec<&str> = info.lines().collect();
                    let field = |name: &str| {
                        lines
                            .iter()
                            .position(|l| *l == name)
                            .and_then(|i| lines.get(i + 1))
                            .copied()
                    };
                    field("num-slaves") == Some("2") && field("num-other-sentinels") == Some("2")
                })
            });
        }
        Some(set)
    }

    pub fn sentinel_addrs(&self) -> String {
        self.sentinels
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master's port, as the first sentinel that answers says.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|(p, _)| {
            let out = cli(&[
                "-p",
                &p.to_string(),
                "SENTINEL",
                "GET-MASTER-ADDR-BY-NAME",
                MASTER_NAME,
            ])?;
            out.lines().nth(1)?.parse().ok()
        })
    }

    /// Kills the current master; returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master_port().expect("a master");
        let node = self
            .nodes
            .iter_mut()
            .find(|(p, _)| *p == port)
            .expect("master node");
        if let Some(child) = &mut node.1.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
        port
    }

    /// Waits until the sentinels name a master other than `old` that answers as master.
    pub fn wait_new_master(&self, old: u16, limit: Duration) -> u16 {
        let mut new = 0;
        poll("a new master", limit, || match self.master_port() {
            Some(port) if port != old => {
                new = port;
                cli(&["-p", &port.to_string(), "ROLE"]).is_some_and(|r| r.starts_with("master"))
            }
            _ => false,
        });
        new
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        self.sentinels.clear();
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three cluster masters owning all slots.
pub struct ClusterSet {
    pub nodes: Vec<(u16, ChildGuard)>,
    dir: PathBuf,
}

impl ClusterSet {
    pub fn start() -> Option<ClusterSet> {
        if !installed("redis-server") {
            return None;
        }
        let dir = temp_dir("cluster");
        let mut nodes = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("nodes-{i}.conf"));
            let args = [
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                conf.to_string_lossy().into_owned(),
                "--cluster-node-timeout".into(),
                "2000".into(),
            ];
            nodes.push((port, server(port, &args)));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        cli(&args).expect("redis-cli --cluster create");
        for (port, _) in &nodes {
            let p = port.to_string();
            poll("cluster_state:ok", Duration::from_secs(30), || {
                cli(&["-p", &p, "CLUSTER", "INFO"]).is_some_and(|i| {
                    i.contains("cluster_state:ok") && i.contains("cluster_slots_assigned:16384")
                })
            });
        }
        Some(ClusterSet { nodes, dir })
    }

    pub fn node_addrs(&self) -> String {
        self.nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Keys held by each node.
    pub fn keys_per_node(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|(p, _)| {
                cli(&["-p", &p.to_string(), "DBSIZE"])
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            })
            .collect()
    }
}

impl Drop for ClusterSet {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// redis-server speaking TLS only, with certificates from `certs`, a password and an ACL user.
pub struct TlsRedis {
    pub port: u16,
    _child: ChildGuard,
}

impl TlsRedis {
    pub fn start(certs: &super::certs::Certs, require_client_cert: bool) -> Option<TlsRedis> {
        if !installed("redis-server") {
            return None;
        }
        let port = free_port();
        let path = |n: &str| certs.path(n).to_string_lossy().into_owned();
        let args: Vec<String> = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server-key.pem"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            (if require_client_cert { "yes" } else { "no" }).into(),
            "--requirepass".into(),
            "s3cret".into(),
            "--user".into(),
            "floodgate".into(),
            "on".into(),
            ">app-pass".into(),
            "~*".into(),
            "+@all".into(),
        ];
        let child = ChildGuard(Some(spawn("redis-server", &args)));
        let p = port.to_string();
        let (ca, cert, key) = (path("ca.pem"), path("client.pem"), path("client-key.pem"));
        poll("TLS redis-server", Duration::from_secs(10), || {
            cli(&[
                "--tls",
                "--cacert",
                &ca,
                "--cert",
                &cert,
                "--key",
                &key,
                "-p",
                &p,
                "-a",
                "s3cret",
                "--no-auth-warning",
                "PING",
            ])
            .as_deref()
                == Some("PONG")
        });
        Some(TlsRedis {
            port,
            _child: child,
        })
    }
}
