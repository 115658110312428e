//! The system under test: a Redis master with two replicas watched by three Sentinels (quorum
//! 2), and the Floodgate replicas that find the master through the Sentinels; every process on
//! 127.0.0.1, started here and stopped here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::procs::{RedisProc, RedisRole, Replica, info_field, query};

/// The name the Sentinels know the master by.
pub(crate) const MASTER_NAME: &str = "soak";
/// How long the set may take to settle (replicas linked, Sentinels seeing each other).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct ClusterSettings {
    /// The `floodgate` binary.
    pub(crate) floodgate: PathBuf,
    /// The limits (one domain file), copied into the work directory, where the reload fault
    /// rewrites it.
    pub(crate) config: PathBuf,
    /// Floodgate replicas.
    pub(crate) replicas: usize,
    /// Flags of every replica beyond its addresses, the config and the Redis topology.
    pub(crate) floodgate_args: Vec<String>,
    /// Sentinel's `down-after-milliseconds`.
    pub(crate) down_after_ms: u64,
    /// Sentinel's `failover-timeout`.
    pub(crate) failover_timeout_ms: u64,
}

/// The running set.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// Redis data nodes, the first started as master; a killed node keeps its place and port.
    pub(crate) nodes: Vec<RedisProc>,
    /// The Sentinels.
    pub(crate) sentinels: Vec<RedisProc>,
    /// The Floodgate replicas.
    pub(crate) replicas: Vec<Replica>,
    /// The domain file the replicas read (in a directory of its own).
    pub(crate) config_file: PathBuf,
}

impl Cluster {
    /// Starts Redis, the Sentinels, then the replicas; returns once all are up and the
    /// replicas healthy.
    pub(crate) async fn start(settings: &ClusterSettings, work: &Path) -> anyhow::Result<Cluster> {
        let master = RedisProc::start(work.join("redis-0"), &RedisRole::Node(None)).await?;
        let master_port = master.port;
        let mut cluster = Cluster {
            nodes: vec![master],
            sentinels: Vec::new(),
            replicas: Vec::new(),
            config_file: work.join("config/soak.yaml"),
        };
        for n in 1..3 {
            let role = RedisRole::Node(Some(master_port));
            let node = RedisProc::start(work.join(format!("redis-{n}")), &role).await?;
            cluster.nodes.push(node);
        }
        for node in &cluster.nodes[1..] {
            wait_for_replica(node.port, SETTLE_LIMIT).await?;
        }
        let role = RedisRole::Sentinel(sentinel_lines(settings, master_port));
        for n in 0..3 {
            let sentinel = RedisProc::start(work.join(format!("sentinel-{n}")), &role).await?;
            cluster.sentinels.push(sentinel);
        }
        for sentinel in &cluster.sentinels {
            wait_for_sentinel(sentinel.port).await?;
        }
        std::fs::create_dir_all(work.join("config"))?;
        std::fs::copy(&settings.config, &cluster.config_file)
            .with_context(|| format!("copy {}", settings.config.display()))?;
        let args = cluster.floodgate_args(settings);
        for n in 0..settings.replicas {
            let log = work.join(format!("floodgate-{n}.log"));
            let replica = Replica::start(&settings.floodgate, args.clone(), log).await?;
            cluster.replicas.push(replica);
        }
        Ok(cluster)
    }

    /// Every replica's flags: the config, Redis through the Sentinels, then the caller's.
    fn floodgate_args(&self, settings: &ClusterSettings) -> Vec<String> {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let config_dir = self.config_file.parent().expect("in a directory");
        let mut args: Vec<String> = [
            "--config",
            &config_dir.display().to_string(),
            "--store",
            "redis",
            // With Sentinels the URL's host is not used (the Sentinels name the master).
            "--redis-url",
            "redis://127.0.0.1:6379/0",
            "--redis-sentinels",
            &sentinels.join(","),
            "--redis-master-name",
            MASTER_NAME,
        ]
        .map(String::from)
        .to_vec();
        args.extend(settings.floodgate_args.iter().cloned());
        args
    }

    /// The master, when every Sentinel names the same one and it answers `ROLE` as master.
    pub(crate) async fn agreed_master(&self) -> anyhow::Result<u16> {
        let port = self.named_by_all().await?;
        answers_as_master(port).await?;
        Ok(port)
    }

    /// As [`Cluster::agreed_master`], but `None` while the Sentinels still name `old` (which
    /// is not asked: it may be stopped).
    pub(crate) async fn agreed_master_other_than(&self, old: u16) -> anyhow::Result<Option<u16>> {
        let port = self.named_by_all().await?;
        if port == old {
            return Ok(None);
        }
        answers_as_master(port).await?;
        Ok(Some(port))
    }

    /// The master every Sentinel names.
    async fn named_by_all(&self) -> anyhow::Result<u16> {
        let mut ports = Vec::new();
        for sentinel in &self.sentinels {
            ports.push(reported_master(sentinel.port).await?);
        }
        let first = ports[0];
        if ports.iter().any(|&p| p != first) {
            bail!("the Sentinels name different masters: {ports:?}");
        }
        Ok(first)
    }

    /// The data node on `port`.
    pub(crate) fn node_mut(&mut self, port: u16) -> anyhow::Result<&mut RedisProc> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .with_context(|| format!("no node on port {port}"))
    }

    /// The process ids of the replicas now (0 for one that is down).
    pub(crate) fn replica_pids(&self) -> Vec<u32> {
        self.replicas
            .iter()
            .map(|r| r.proc().map_or(0, |p| p.pid()))
            .collect()
    }

    /// Stops everything: the replicas first, so that none logs the Redis shutdown.
    pub(crate) async fn stop(mut self) {
        for replica in &mut self.replicas {
            replica.kill().await;
        }
        for process in self.sentinels.iter_mut().chain(self.nodes.iter_mut()) {
            process.kill().await;
        }
    }
}

/// The Sentinels' config: watch the master, take it for down after `down_after_ms` of
/// silence, two Sentinels agreeing.
fn sentinel_lines(settings: &ClusterSettings, master_port: u16) -> Vec<String> {
    vec![
        format!("sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2"),
        format!(
            "sentinel down-after-milliseconds {MASTER_NAME} {}",
            settings.down_after_ms
        ),
        format!(
            "sentinel failover-timeout {MASTER_NAME} {}",
            settings.failover_timeout_ms
        ),
        format!("sentinel parallel-syncs {MASTER_NAME} 1"),
    ]
}

/// Whether the node on `port` answers `ROLE` as a master.
async fn answers_as_master(port: u16) -> anyhow::Result<()> {
    let role: Vec<redis::Value> = query(port, &redis::cmd("ROLE")).await?;
    let role: String = redis::from_redis_value(role.into_iter().next().context("empty ROLE")?)?;
    if role != "master" {
        bail!("127.0.0.1:{port} answers ROLE {role}");
    }
    Ok(())
}

/// The master's port as the Sentinel on `port` names it.
async fn reported_master(port: u16) -> anyhow::Result<u16> {
    let addr: Vec<String> = query(
        port,
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER_NAME),
    )
    .await?;
    addr.get(1)
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("Sentinel {port} answered {addr:?}"))
}

/// Waits until the Sentinel on `port` sees the master, both replicas and the two other
/// Sentinels.
async fn wait_for_sentinel(port: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let fields: anyhow::Result<Vec<String>> =
            query(port, redis::cmd("SENTINEL").arg("master").arg(MASTER_NAME)).await;
        let field = |fields: &[String], name: &str| {
            fields
                .chunks(2)
                .find(|pair| pair[0] == name)
                .map(|pair| pair[1].clone())
        };
        if let Ok(fields) = &fields {
            let slaves = field(fields, "num-slaves");
            let others = field(fields, "num-other-sentinels");
            if slaves.as_deref() == Some("2") && others.as_deref() == Some("2") {
                return Ok(());
            }
        }
        if started.elapsed() > SETTLE_LIMIT {
            bail!("Sentinel {port} did not see the whole set within {SETTLE_LIMIT:?}: {fields:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the node on `port` is a replica whose link to its master is up; returns the
/// master's port.
pub(crate) async fn wait_for_replica(port: u16, limit: Duration) -> anyhow::Result<u16> {
    let started = Instant::now();
    loop {
        let info: anyhow::Result<String> = query(port, redis::cmd("INFO").arg("replication")).await;
        if let Ok(info) = &info {
            let linked = info_field(info, "role").as_deref() == Some("slave")
                && info_field(info, "master_link_status").as_deref() == Some("up");
            let master = info_field(info, "master_port").and_then(|p| p.parse().ok());
            if let Some(master) = master.filter(|_| linked) {
                return Ok(master);
            }
        }
        if started.elapsed() > limit {
            bail!("127.0.0.1:{port} was not a linked replica within {limit:?}: {info:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
