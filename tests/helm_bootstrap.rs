//! The Helm chart's Redis/Sentinel bootstrap scripts, run for real: three Redis nodes and three
//! Sentinels started by helm/floodgate/scripts/*.sh on loopback addresses 127.0.0.2-4 (standing
//! in for the pods' host names), forming the topology and surviving a master kill.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{ChildGuard, free_port, is_ci};

/// Runs redis-cli with `args`; its trimmed output, or None if it failed.
fn cli(args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/floodgate/scripts");
const HOSTS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const MASTER: &str = "floodgate";

struct Topology {
    redis_port: u16,
    sentinel_port: u16,
    dir: std::path::PathBuf,
}

impl Topology {
    fn run(&self, script: &str, host: &str) -> Child {
        let node_dir = self.dir.join(host);
        Command::new("sh")
            .arg(format!("{SCRIPTS}/{script}"))
            .env("REDIS_NODES", HOSTS.join(" "))
            .env("MY_HOST", host)
            .env("BIND_ADDRESS", host)
            .env("REDIS_PORT", self.redis_port.to_string())
            .env("SENTINEL_PORT", self.sentinel_port.to_string())
            .env("MASTER_NAME", MASTER)
            .env("REDIS_PASSWORD", "bootstrap-secret")
            .env("DATA_DIR", node_dir.join("data"))
            .env("CONF_DIR", node_dir.join(script.trim_end_matches(".sh")))
            .env("DOWN_AFTER_MS", "1000")
            .env("FAILOVER_TIMEOUT_MS", "3000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run a bootstrap script")
    }

    fn redis(&self, host: &str, args: &[&str]) -> Option<String> {
        let port = self.redis_port.to_string();
        let mut all = vec![
            "-h",
            host,
            "-p",
            &port,
            "-a",
            "bootstrap-secret",
            "--no-auth-warning",
        ];
        all.extend_from_slice(args);
        cli(&all)
    }

    fn sentinel(&self, host: &str, args: &[&str]) -> Option<String> {
        let port = self.sentinel_port.to_string();
        let mut all = vec!["-h", host, "-p", &port];
        all.extend_from_slice(args);
        cli(&all)
    }

    fn role(&self, host: &str) -> Option<String> {
        self.redis(host, &["ROLE"])
            .and_then(|r| r.lines().next().map(str::to_owned))
    }

    fn master_by_sentinels(&self) -> Option<String> {
        HOSTS.iter().find_map(|h| {
            self.sentinel(h, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER])?
                .lines()
                .next()
                .map(str::to_owned)
        })
    }
}

fn poll(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

#[test]
fn bootstrap_scripts_form_the_topology_and_survive_a_master_kill() {
    if Command::new("redis-sentinel")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!is_ci(), "redis-sentinel is required under CI");
        eprintln!("SKIPPED: redis-sentinel not found");
        return;
    }
    let topology = Topology {
        redis_port: free_port(),
        sentinel_port: free_port(),
        dir: std::env::temp_dir().join(format!("floodgate-bootstrap-{}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&topology.dir);

    // Pods start in order, as a StatefulSet starts them: each Redis, then its Sentinel.
    let mut redis: Vec<ChildGuard> = Vec::new();
    let mut sentinels: Vec<ChildGuard> = Vec::new();
    for host in HOSTS {
        redis.push(ChildGuard(Some(topology.run("redis-start.sh", host))));
        poll("redis up", Duration::from_secs(10), || {
            topology.redis(host, &["PING"]).as_deref() == Some("PONG")
        });
        sentinels.push(ChildGuard(Some(topology.run("sentinel-start.sh", host))));
    }
    // The first node is master, the others replicate it, all Sentinels agree.
    assert_eq!(topology.role("127.0.0.2").as_deref(), Some("master"));
    for host in &HOSTS[1..] {
        poll("replica link", Duration::from_secs(20), || {
            topology
                .redis(host, &["INFO", "replication"])
                .is_some_and(|i| i.contains("master_link_status:up"))
        });
        assert_eq!(topology.role(host).as_deref(), Some("slave"));
    }
    poll("sentinels agreeing", Duration::from_secs(30), || {
        HOSTS.iter().all(|h| {
            topology
                .sentinel(h, &["SENTINEL", "MASTER", MASTER])
                .is_some_and(|info| {
                    let lines: Vec<&str> = info.lines().collect();
                    let field = |name: &str| {
                        lines
                            .iter()
                            .position(|l| *l == name)
                            .and_then(|i| lines.get(i + 1))
                            .copied()
                    };
                    field("ip") == Some("127.0.0.2")
                        && field("num-slaves") == Some("2")
                        && field("num-other-sentinels") == Some("2")
                })
        })
    });
    topology
        .redis(
            "127.0.0.2",
            &["SET", "bootstrap", "written-before-the-kill"],
        )
        .unwrap();
    topology.redis("127.0.0.2", &["WAIT", "2", "2000"]).unwrap();

    // Kill the master: the Sentinels promote a replica.
    if let Some(child) = &mut redis[0].0 {
        let _ = child.kill();
        let _ = child.wait();
    }
    let took = poll("a new master", Duration::from_secs(60), || {
        topology
            .master_by_sentinels()
            .is_some_and(|m| m != "127.0.0.2")
            && {
                let m = topology.master_by_sentinels().unwrap();
                topology.role(&m).as_deref() == Some("master")
            }
    });
    let new_master = topology.master_by_sentinels().unwrap();
    eprintln!("failover to {new_master} took {took:?}");
    assert_eq!(
        topology
            .redis(&new_master, &["GET", "bootstrap"])
            .as_deref(),
        Some("written-before-the-kill")
    );

    // The old master's pod restarts with the same script: it rejoins as a replica.
    redis[0] = ChildGuard(Some(topology.run("redis-start.sh", "127.0.0.2")));
    poll(
        "the old master back as a replica",
        Duration::from_secs(30),
        || {
            topology.role("127.0.0.2").as_deref() == Some("slave")
                && topology
                    .redis("127.0.0.2", &["INFO", "replication"])
                    .is_some_and(|i| i.contains("master_link_status:up"))
        },
    );
    assert_eq!(
        topology
            .redis("127.0.0.2", &["GET", "bootstrap"])
            .as_deref(),
        Some("written-before-the-kill")
    );
    drop(sentinels);
    drop(redis);
    let _ = std::fs::remove_dir_all(&topology.dir);
}
