//! Real Redis processes, all started by one builder, [`RedisProcess`]: a plain server
//! ([`RedisServer::start`]), the Sentinel set ([`SentinelTopology`]: 1 master, 2 replicas,
//! 3 sentinels), the Cluster ([`ClusterTopology`]: 3 masters) and a TLS-only server
//! ([`TlsRedis`]) compose it.
//!
//! Every process binds 127.0.0.1 on a port from the OS and reads a config file in a temp dir of
//! its own (its log and data go there too); it is killed and reaped on drop, also when the test
//! panics. A process counts as started only once it answers `INFO` with its own process id, so
//! a port taken meanwhile by another test means a retry on another port, never a mix-up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use redis::{Cmd, FromRedisValue};
use tempfile::TempDir;

use super::certs::Certs;
use super::{ChildGuard, free_port, installed, poll, temp_dir};

/// The name the sentinels monitor the master under.
pub const SENTINEL_MASTER_NAME: &str = "floodgate-test";
/// How long one process may take to answer once spawned.
const START_LIMIT: Duration = Duration::from_secs(15);
/// How long a topology may take to settle once its processes run.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// How many free ports to try before giving up on a process.
const PORT_ATTEMPTS: usize = 8;
/// Everything but RFC 3986's unreserved characters is escaped in a URL's user and password.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What to start: redis-server or redis-sentinel, and its config beyond port, bind and dir.
#[derive(Clone, Default)]
pub struct RedisProcess {
    sentinel: bool,
    cluster: bool,
    password: Option<String>,
    /// The CA, client certificate and key the harness connects with to a TLS-only server.
    tls: Option<[PathBuf; 3]>,
    lines: Vec<String>,
}

impl RedisProcess {
    /// A data node: no persistence, and no delay before a replica's full sync.
    pub fn server() -> RedisProcess {
        RedisProcess::default()
            .line("save \"\"")
            .line("appendonly no")
            .line("repl-diskless-sync-delay 0")
    }

    /// A sentinel; its `sentinel monitor` lines are the caller's.
    pub fn sentinel() -> RedisProcess {
        RedisProcess {
            sentinel: true,
            ..RedisProcess::default()
        }
    }

    /// One more line of the config file.
    pub fn line(mut self, line: impl Into<String>) -> RedisProcess {
        self.lines.push(line.into());
        self
    }

    /// `requirepass` and `masterauth`: clients and replicas alike need `password`.
    pub fn password(mut self, password: Option<&str>) -> RedisProcess {
        self.password = password.map(str::to_owned);
        self
    }

    /// A replica of the node on `master`.
    pub fn replica_of(self, master: u16) -> RedisProcess {
        self.line(format!("replicaof 127.0.0.1 {master}"))
    }

    /// Cluster mode, with a node timeout of 2 s.
    pub fn cluster(mut self) -> RedisProcess {
        self.cluster = true;
        self
    }

    /// TLS only, serving `certs`' certificate `server`; client certificates are required or
    /// merely asked for (`tls-auth-clients yes` or `optional`).
    pub fn tls(mut self, certs: &Certs, server: &str, require_client_cert: bool) -> RedisProcess {
        let auth = if require_client_cert {
            "yes"
        } else {
            "optional"
        };
        let file = |name: &str| certs.path(name).display().to_string();
        self.tls = Some(["ca.pem", "client.pem", "client-key.pem"].map(|n| certs.path(n)));
        self.line(format!("tls-cert-file {}", file(&format!("{server}.pem"))))
            .line(format!(
                "tls-key-file {}",
                file(&format!("{server}-key.pem"))
            ))
            .line(format!("tls-ca-cert-file {}", file("ca.pem")))
            .line(format!("tls-auth-clients {auth}"))
    }

    /// Starts it on a free port, trying others while a port turns out taken.
    pub fn start(self) -> RedisServer {
        let dir = temp_dir(if self.sentinel { "sentinel" } else { "redis" });
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match self.spawn(port, dir.path()) {
                Ok(child) => return RedisServer::new(port, self, child, dir),
                Err(log) => last = log,
            }
        }
        panic!("no redis process came up on {PORT_ATTEMPTS} free ports; last log:\n{last}");
    }

    /// The config file for `port`, working in `dir`.
    fn config(&self, port: u16, dir: &Path) -> String {
        let mut lines = vec![
            match self.tls {
                Some(_) => format!("port 0\ntls-port {port}"),
                None => format!("port {port}"),
            },
            "bind 127.0.0.1".into(),
            format!("dir {}\nlogfile {}/redis.log", dir.display(), dir.display()),
        ];
        if self.cluster {
            // The default bus port, port + 10000, may be anybody's: take one from the OS.
            lines.push(format!(
                "cluster-enabled yes\ncluster-config-file nodes.conf\n\
                 cluster-node-timeout 2000\ncluster-port {}",
                free_port()
            ));
        }
        if let Some(password) = &self.password {
            lines.push(format!("requirepass {password}\nmasterauth {password}"));
        }
        lines.extend(self.lines.iter().cloned());
        lines.join("\n") + "\n"
    }

    /// Spawns it on `port` and waits until it answers as itself; `Err` (its log) when it exited
    /// first, e.g. because the port was taken.
    fn spawn(&self, port: u16, dir: &Path) -> Result<ChildGuard, String> {
        let conf = dir.join("redis.conf");
        std::fs::write(&conf, self.config(port, dir)).unwrap();
        let program = if self.sentinel {
            "redis-sentinel"
        } else {
            "redis-server"
        };
        let mut child = ChildGuard::spawn(Command::new(program).arg(&conf).stdout(Stdio::null()));
        let pid = child.0.as_ref().map(|c| c.id().to_string());
        let what = format!("{program} on port {port} to answer");
        poll(&what, START_LIMIT, || match child.exited() {
            Some(status) => Ok(Err(format!("exited with {status}:\n{}", tail(dir)))),
            None => {
                let info: String = query(port, self, redis::cmd("INFO").arg("server"))?;
                let answered = info_field(&info, "process_id");
                (answered == pid).then_some(Ok(())).ok_or(info)
            }
        })?;
        Ok(child)
    }
}

/// The last lines of the process's log.
fn tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A running redis-server or redis-sentinel; killed on drop.
pub struct RedisServer {
    /// The port it listens on (the TLS port of a TLS-only server).
    pub port: u16,
    spec: RedisProcess,
    child: ChildGuard,
    /// Declared last, so it is removed only once the process is gone.
    dir: TempDir,
}

impl RedisServer {
    fn new(port: u16, spec: RedisProcess, child: ChildGuard, dir: TempDir) -> RedisServer {
        RedisServer {
            port,
            spec,
            child,
            dir,
        }
    }

    /// A plain redis-server, or `None` (skip) when it is not installed and this is not CI.
    pub fn start() -> Option<RedisServer> {
        installed(&["redis-server"]).then(|| RedisProcess::server().start())
    }

    /// A plain redis-server on `port`; `None` if it did not come up (e.g. the port was taken).
    pub fn start_on(port: u16) -> Option<RedisServer> {
        let (spec, dir) = (RedisProcess::server(), temp_dir("redis"));
        let child = spec.spawn(port, dir.path()).ok()?;
        Some(RedisServer::new(port, spec, child, dir))
    }

    /// Kills the process (as a crash would) and reaps it.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Whether it runs (it was not killed).
    pub fn is_running(&self) -> bool {
        self.child.0.is_some()
    }

    /// Starts it again on the same port, empty (nothing was persisted).
    pub fn restart(&mut self) {
        self.restart_as(self.spec.clone());
    }

    /// Starts it again on the same port as `spec` says (e.g. a replica of another master).
    pub fn restart_as(&mut self, spec: RedisProcess) {
        self.kill();
        let (port, dir) = (self.port, self.dir.path());
        let what = format!("a restart on port {port}");
        self.child = poll(&what, START_LIMIT, || spec.spawn(port, dir));
        self.spec = spec;
    }

    /// `redis://[:password@]127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        url("redis", self.port, None, self.spec.password.as_deref())
    }

    /// The process id (to pause it with SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child.0.as_ref().expect("running").id()
    }

    /// The temp dir with its config and log (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client connection (over TLS, with the password, as the server needs).
    pub fn connection(&self) -> redis::Connection {
        connect(self.port, &self.spec)
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{}: {e}", self.port))
    }

    /// Runs `cmd` on a new connection; errors as text, for [`poll`].
    pub fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, String> {
        query(self.port, &self.spec, cmd)
    }
}

/// `<scheme>://[user:password@]127.0.0.1:<port>/0`, user and password percent-encoded.
fn url(scheme: &str, port: u16, user: Option<&str>, password: Option<&str>) -> String {
    let encode = |s: &str| utf8_percent_encode(s, USERINFO).to_string();
    let userinfo = match (user, password) {
        (None, None) => String::new(),
        (Some(user), None) => format!("{}@", encode(user)),
        (user, Some(password)) => format!("{}:{}@", encode(user.unwrap_or("")), encode(password)),
    };
    format!("{scheme}://{userinfo}127.0.0.1:{port}/0")
}

/// A connection to the process `spec` describes on `port`, with short timeouts. Over TLS the
/// harness only checks who answers, so it skips verifying the server (whose name may be wrong
/// on purpose).
fn connect(port: u16, spec: &RedisProcess) -> redis::RedisResult<redis::Connection> {
    let password = spec.password.as_deref();
    let client = match &spec.tls {
        None => redis::Client::open(url("redis", port, None, password))?,
        Some([ca, cert, key]) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let read = |path: &PathBuf| std::fs::read(path).unwrap();
            let files = redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: read(cert),
                    client_key: read(key),
                }),
                root_cert: Some(read(ca)),
            };
            let url = url("rediss", port, None, password) + "#insecure";
            redis::Client::build_with_tls(url, files)?
        }
    };
    let connection = client.get_connection_with_timeout(Duration::from_secs(2))?;
    connection.set_read_timeout(Some(Duration::from_secs(5)))?;
    connection.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(connection)
}

/// Runs `cmd` on a new connection to `port`; errors as text.
fn query<T: FromRedisValue>(port: u16, spec: &RedisProcess, cmd: &Cmd) -> Result<T, String> {
    connect(port, spec)
        .and_then(|mut c| cmd.query(&mut c))
        .map_err(|e| e.to_string())
}

/// `field` from `INFO` text (`field:value` lines).
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim().to_owned())
    })
}

/// What `redis-cli` printed, trimmed.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// Exited with status 0 (redis-cli does on error replies too: check `stdout`).
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `redis-cli args`, killed after 30 s (coreutils `timeout`) should it hang.
pub fn redis_cli(args: &[&str]) -> CliOutput {
    let out = Command::new("timeout")
        .args(["30", "redis-cli"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
    CliOutput {
        success: out.status.success(),
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
    }
}

/// 1 master and 2 replicas (redis-server) watched by 3 sentinels (redis-sentinel, quorum 2).
pub struct SentinelTopology {
    password: Option<String>,
    /// Data nodes, the first started as master; a killed node keeps its place and port.
    nodes: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl SentinelTopology {
    /// Starts the set without passwords; see [`SentinelTopology::start_with`].
    pub fn start(down_after_ms: u64) -> Option<SentinelTopology> {
        SentinelTopology::start_with(down_after_ms, None)
    }

    /// Starts the set: sentinels take the master for down after `down_after_ms` of silence
    /// (failover-timeout 5 s, parallel-syncs 1); `password` goes to the data nodes and the
    /// sentinels' `auth-pass` (sentinels take none). Returns once the replicas are linked and
    /// every sentinel sees the master, both replicas and the two other sentinels.
    pub fn start_with(down_after_ms: u64, password: Option<&str>) -> Option<SentinelTopology> {
        if !installed(&["redis-server", "redis-sentinel"]) {
            return None;
        }
        let node = RedisProcess::server().password(password);
        let master = node.clone().start();
        let master_port = master.port;
        let mut set = SentinelTopology {
            password: password.map(str::to_owned),
            nodes: vec![master],
            sentinels: Vec::new(),
        };
        for _ in 0..2 {
            let replica = node.clone().replica_of(master_port).start();
            set.nodes.push(replica);
        }
        for port in set.node_ports().into_iter().skip(1) {
            set.wait_for_replica(port, SETTLE_LIMIT);
        }
        let name = SENTINEL_MASTER_NAME;
        let mut sentinel = RedisProcess::sentinel()
            .line(format!("sentinel monitor {name} 127.0.0.1 {master_port} 2"))
            .line(format!(
                "sentinel down-after-milliseconds {name} {down_after_ms}"
            ))
            .line(format!("sentinel failover-timeout {name} 5000"))
            .line(format!("sentinel parallel-syncs {name} 1"));
        if let Some(password) = password {
            sentinel = sentinel.line(format!("sentinel auth-pass {name} {password}"));
        }
        set.sentinels = (0..3).map(|_| sentinel.clone().start()).collect();
        for sentinel in &set.sentinels {
            let what = format!("sentinel {} to see the whole set", sentinel.port);
            poll(&what, SETTLE_LIMIT, || sentinel_sees_all(sentinel));
        }
        Some(set)
    }

    /// The sentinels' addresses, `127.0.0.1:<port>`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        addrs(&self.sentinels)
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The data nodes' ports (killed ones included), in start order.
    pub fn node_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The master name the sentinels use, [`SENTINEL_MASTER_NAME`].
    pub fn master_name(&self) -> &'static str {
        SENTINEL_MASTER_NAME
    }

    /// The data nodes' password, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The master's port as the first answering sentinel reports it.
    pub fn master_port(&self) -> u16 {
        self.sentinels
            .iter()
            .find_map(|s| reported_master(s).ok())
            .expect("no sentinel answered SENTINEL GET-MASTER-ADDR-BY-NAME")
    }

    /// SIGKILLs the master the sentinels report; returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master_port();
        self.kill_node(port);
        port
    }

    /// SIGKILLs the data node on `port`.
    pub fn kill_node(&mut self, port: u16) {
        let node = self.node_mut(port);
        assert!(node.is_running(), "node 127.0.0.1:{port} is not running");
        node.kill();
    }

    /// Polls until every sentinel reports one master other than `old_port`, and that node
    /// answers `ROLE` as master; returns its port.
    pub fn wait_for_new_master(&self, old_port: u16, limit: Duration) -> u16 {
        let what = format!("the sentinels to agree on a master other than {old_port}");
        poll(&what, limit, || {
            let reported: Vec<u16> = self
                .sentinels
                .iter()
                .map(reported_master)
                .collect::<Result<_, _>>()?;
            let new = reported[0];
            if reported.iter().any(|&p| p != new) || new == old_port {
                return Err(format!("sentinels report masters {reported:?}"));
            }
            let role = self.role(new)?;
            (role == "master").then_some(new).ok_or(role)
        })
    }

    /// Starts the killed node on `port` again: as a replica of the master the sentinels report,
    /// or as a master if they still report this very node. Waits until it answers, not until
    /// it has synced (see [`SentinelTopology::wait_for_replica`]).
    pub fn restart_node(&mut self, port: u16) {
        let master = self.master_port();
        let password = self.password.clone();
        let node = self.node_mut(port);
        assert!(!node.is_running(), "node 127.0.0.1:{port} still runs");
        let mut spec = RedisProcess::server().password(password.as_deref());
        if master != port {
            spec = spec.replica_of(master);
        }
        node.restart_as(spec);
    }

    /// Polls until the node on `port` is a replica with its link up; returns its master's port.
    pub fn wait_for_replica(&self, port: u16, limit: Duration) -> u16 {
        let what = format!("127.0.0.1:{port} to be a replica linked to its master");
        poll(&what, limit, || {
            let info: String = self
                .node(port)
                .query(redis::cmd("INFO").arg("replication"))?;
            let linked = info_field(&info, "role").as_deref() == Some("slave")
                && info_field(&info, "master_link_status").as_deref() == Some("up");
            let master = info_field(&info, "master_port").and_then(|p| p.parse().ok());
            master.filter(|_| linked).ok_or(info)
        })
    }

    /// The data node's answer to `ROLE`: `master` or `slave`.
    pub fn role(&self, port: u16) -> Result<String, String> {
        let reply: Vec<redis::Value> = self.node(port).query(&redis::cmd("ROLE"))?;
        let first = reply.into_iter().next().unwrap_or(redis::Value::Nil);
        redis::from_redis_value(first).map_err(|e| e.to_string())
    }

    /// `redis://[:password@]127.0.0.1:<port>/0` for a data node.
    pub fn url_of(&self, port: u16) -> String {
        self.node(port).url()
    }

    /// A connection to the data node on `port` (authenticated when needed).
    pub fn connection(&self, port: u16) -> redis::Connection {
        self.node(port).connection()
    }

    /// A connection to the sentinel on `port`.
    pub fn sentinel_connection(&self, port: u16) -> redis::Connection {
        let sentinel = self.sentinels.iter().find(|s| s.port == port);
        sentinel.expect("a sentinel of this set").connection()
    }

    fn node(&self, port: u16) -> &RedisServer {
        let node = self.nodes.iter().find(|n| n.port == port);
        node.unwrap_or_else(|| panic!("127.0.0.1:{port} is no data node of this set"))
    }

    fn node_mut(&mut self, port: u16) -> &mut RedisServer {
        let node = self.nodes.iter_mut().find(|n| n.port == port);
        node.unwrap_or_else(|| panic!("127.0.0.1:{port} is no data node of this set"))
    }
}

/// `127.0.0.1:<port>` of each process.
fn addrs(processes: &[RedisServer]) -> Vec<String> {
    processes
        .iter()
        .map(|p| format!("127.0.0.1:{}", p.port))
        .collect()
}

/// Whether `sentinel` sees the master up, 2 linked replicas and 2 other sentinels.
fn sentinel_sees_all(sentinel: &RedisServer) -> Result<(), String> {
    let ask = |what: &str| {
        redis::cmd("SENTINEL")
            .arg(what)
            .arg(SENTINEL_MASTER_NAME)
            .clone()
    };
    let master: HashMap<String, String> = sentinel.query(&ask("MASTER"))?;
    let replicas: Vec<HashMap<String, String>> = sentinel.query(&ask("REPLICAS"))?;
    let is = |map: &HashMap<String, String>, field: &str, want: &str| {
        map.get(field).is_some_and(|v| v == want)
    };
    let complete = is(&master, "flags", "master")
        && is(&master, "num-slaves", "2")
        && is(&master, "num-other-sentinels", "2")
        && replicas
            .iter()
            .all(|r| is(r, "flags", "slave") && is(r, "master-link-status", "ok"));
    complete
        .then_some(())
        .ok_or(format!("master {master:?}, replicas {replicas:?}"))
}

/// The master port `sentinel` reports.
fn reported_master(sentinel: &RedisServer) -> Result<u16, String> {
    let ask = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(SENTINEL_MASTER_NAME)
        .clone();
    let reply: Option<(String, u16)> = sentinel.query(&ask)?;
    reply.map(|(_, port)| port).ok_or("no master".into())
}

/// 3 Redis Cluster masters without replicas, joined by `redis-cli --cluster create`.
pub struct ClusterTopology {
    nodes: Vec<RedisServer>,
}

impl ClusterTopology {
    /// Starts 3 cluster nodes, creates the cluster, and returns once every node says
    /// `cluster_state:ok` with 3 known nodes and all 16384 slots, and all agree on who owns them.
    pub fn start() -> Option<ClusterTopology> {
        if !installed(&["redis-server", "redis-cli"]) {
            return None;
        }
        let nodes = (0..3).map(|_| RedisProcess::server().cluster().start());
        let cluster = ClusterTopology {
            nodes: nodes.collect(),
        };
        let addrs = cluster.node_addrs();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let created = redis_cli(&args);
        assert!(
            created.success && created.stdout.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed: {created:?}"
        );
        poll("the cluster to settle", SETTLE_LIMIT, || {
            for node in &cluster.nodes {
                let info: String = node.query(redis::cmd("CLUSTER").arg("INFO"))?;
                let has = |field, want: &str| info_field(&info, field).as_deref() == Some(want);
                if !(has("cluster_state", "ok")
                    && has("cluster_slots_assigned", "16384")
                    && has("cluster_known_nodes", "3"))
                {
                    return Err(info);
                }
            }
            let maps: Vec<_> = cluster
                .nodes
                .iter()
                .map(slot_map)
                .collect::<Result<_, _>>()?;
            let agree = maps.iter().all(|m| *m == maps[0]);
            agree
                .then_some(())
                .ok_or(format!("slot maps differ: {maps:?}"))
        });
        Some(cluster)
    }

    /// The nodes' addresses, `127.0.0.1:<port>`.
    pub fn node_addrs(&self) -> Vec<String> {
        addrs(&self.nodes)
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The port of the node owning `key`'s slot (`CLUSTER KEYSLOT`, `CLUSTER NODES`).
    pub fn slot_owner_port(&self, key: &str) -> u16 {
        let first = &self.nodes[0];
        let slot: u16 = first
            .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .unwrap();
        let map = slot_map(first).unwrap();
        let owner = map
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot));
        owner
            .unwrap_or_else(|| panic!("no node owns slot {slot}"))
            .2
    }

    /// How many keys the node on `port` holds.
    pub fn dbsize(&self, port: u16) -> u64 {
        self.node(port).query(&redis::cmd("DBSIZE")).unwrap()
    }

    /// A plain (not cluster-aware) connection to one node.
    pub fn connection(&self, port: u16) -> redis::Connection {
        self.node(port).connection()
    }

    fn node(&self, port: u16) -> &RedisServer {
        let node = self.nodes.iter().find(|n| n.port == port);
        node.unwrap_or_else(|| panic!("127.0.0.1:{port} is no node of this cluster"))
    }
}

/// `CLUSTER NODES` on `node` as sorted `(first slot, last slot, owner's port)`.
fn slot_map(node: &RedisServer) -> Result<Vec<(u16, u16, u16)>, String> {
    let text: String = node.query(redis::cmd("CLUSTER").arg("NODES"))?;
    let mut map = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let port = fields.get(1).and_then(|a| a.split([':', '@']).nth(1));
        let port: u16 = port.and_then(|p| p.parse().ok()).ok_or(line.to_owned())?;
        for range in fields.iter().skip(8) {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            match (start.parse(), end.parse()) {
                (Ok(start), Ok(end)) => map.push((start, end, port)),
                _ => return Err(format!("slot range {range} in {line}")),
            }
        }
    }
    map.sort_unstable();
    Ok(map)
}

/// A redis-server listening on a TLS port only, with [`Certs`] made for it (the file names are
/// [`Certs::generate`]'s).
pub struct TlsRedis {
    server: RedisServer,
    /// The CA, server and client certificates, and the unrelated CA.
    pub certs: Certs,
    require_client_cert: bool,
}

impl TlsRedis {
    /// Asks for client certificates but does not require them; no password.
    pub fn start() -> Option<TlsRedis> {
        TlsRedis::start_with(false, None)
    }

    /// `require_client_cert` sets `tls-auth-clients yes` (else `optional`), `password`
    /// `requirepass`.
    pub fn start_with(require_client_cert: bool, password: Option<&str>) -> Option<TlsRedis> {
        TlsRedis::start_as("server", require_client_cert, password)
    }

    /// A server whose certificate names another host (`redis.elsewhere.test`) than the one
    /// clients connect to: verifiable against the CA, but not for 127.0.0.1.
    pub fn start_misnamed() -> Option<TlsRedis> {
        TlsRedis::start_as("elsewhere-server", false, None)
    }

    fn start_as(cert: &str, require_client_cert: bool, password: Option<&str>) -> Option<TlsRedis> {
        if !installed(&["redis-server"]) {
            return None;
        }
        let certs = Certs::generate();
        let spec = RedisProcess::server().password(password);
        let server = spec.tls(&certs, cert, require_client_cert).start();
        Some(TlsRedis {
            server,
            certs,
            require_client_cert,
        })
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// Whether the server refuses clients without a certificate signed by the CA.
    pub fn requires_client_cert(&self) -> bool {
        self.require_client_cert
    }

    /// The server's temp dir (removed on drop).
    pub fn dir(&self) -> &Path {
        self.server.dir()
    }

    /// `rediss://[user:password@]127.0.0.1:<port>/0`; a password alone gives `:password@`.
    pub fn url(&self, user: Option<&str>, password: Option<&str>) -> String {
        url("rediss", self.port(), user, password)
    }

    /// Adds an ACL user with every key, channel and command; panics unless the server says OK.
    pub fn add_acl_user(&self, name: &str, password: &str) {
        let secret = format!(">{password}");
        let args = ["SETUSER", name, "on", &secret, "~*", "&*", "+@all"];
        let reply: String = self.server.query(redis::cmd("ACL").arg(&args[..])).unwrap();
        assert_eq!(reply, "OK", "ACL SETUSER {name}");
    }
}
