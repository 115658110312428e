//! The faults, injected one at a time on a schedule while the load runs, each recorded as a
//! [`FaultEvent`]: when it was injected (the instant the signal was sent), what it did, what
//! was checked on the way, and, around a Redis master's death, snapshots of the counters that
//! measure what a failover lost.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::Signal;
use tokio::task::JoinSet;

use super::client::Failure;
use super::client::{Endpoint, Outcome, RESOURCE_EXHAUSTED};
use super::cluster::{Cluster, wait_for_replica};
use super::ledger::{Class, Ledger, wall_us};
use super::load::{Call, Traffic};
use super::procs::{RedisRole, http_get, query_pipe};

/// How long the Sentinels may take to promote a replica before the fault counts as failed.
const PROMOTION_LIMIT: Duration = Duration::from_secs(30);
/// How long a restarted node may take to link to its new master.
const REJOIN_LIMIT: Duration = Duration::from_secs(30);
/// The comment the config-reload fault adds to the good config it writes back.
const RESTORED: &str = "# written back by the soak's config-reload fault";
/// How often the Sentinels are asked during a failover.
const POLL: Duration = Duration::from_millis(20);

/// What can be done to the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FaultKind {
    /// SIGKILL to the Redis master: the Sentinels fail over; the node is restarted later as a
    /// replica of the new master.
    MasterKill,
    /// SIGSTOP to the Redis master, SIGCONT after `--freeze` (longer than the Sentinels'
    /// down-after: they fail over, and the woken node is demoted).
    MasterFreeze,
    /// SIGKILL to a Floodgate replica (each in turn), restarted after a pause.
    FloodgateKill,
    /// A broken config written over the domain file and SIGHUP to every replica, then the good
    /// one back and SIGHUP again.
    ConfigReload,
    /// Many calls at once to one replica, past its `--max-concurrent-requests`.
    OverloadBurst,
}

impl FaultKind {
    /// Whether it takes the Redis master away (a failover may lose writes).
    pub(crate) fn fails_over(self) -> bool {
        matches!(self, FaultKind::MasterKill | FaultKind::MasterFreeze)
    }
}

/// One thing checked while injecting a fault.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct FaultCheck {
    /// What was expected.
    pub(crate) what: String,
    /// Whether it held.
    pub(crate) passed: bool,
}

/// The counters of every limited key's per-minute window, read from one Redis node.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// `before` the fault (on the old master: checks the measurement itself), `promoted` (on
    /// the new master as soon as the Sentinels name it) or `settled` (on the new master once
    /// the old one is back as its replica: what survived, writes to the old master after the
    /// promotion included).
    pub(crate) label: &'static str,
    /// The node read.
    pub(crate) port: u16,
    /// When the read began and ended (µs, wall clock).
    pub(crate) start: u64,
    /// See `start`.
    pub(crate) end: u64,
    /// The window read (ms since the epoch).
    pub(crate) window_start_ms: u64,
    /// Per limited key, its count in that window (0 when absent).
    pub(crate) counts: Vec<u64>,
}

/// One injected fault.
#[derive(Debug, Clone)]
pub(crate) struct FaultEvent {
    /// What.
    pub(crate) kind: FaultKind,
    /// When it was injected (µs, wall clock): the instant its signal was sent.
    pub(crate) at: u64,
    /// When the injection ended (restarts included).
    pub(crate) done: u64,
    /// What was done, in words.
    pub(crate) detail: String,
    /// When every Sentinel named a new master that answered as one (master faults).
    pub(crate) promoted: Option<u64>,
    /// Counter snapshots around a master's loss.
    pub(crate) snapshots: Vec<Snapshot>,
    /// What was checked on the way.
    pub(crate) checks: Vec<FaultCheck>,
}

impl FaultEvent {
    fn new(kind: FaultKind) -> FaultEvent {
        FaultEvent::injected_at(kind, wall_us())
    }

    /// A fault of `kind` injected (and done) at `at`, with nothing recorded yet.
    pub(crate) fn injected_at(kind: FaultKind, at: u64) -> FaultEvent {
        FaultEvent {
            kind,
            at,
            done: at,
            detail: String::new(),
            promoted: None,
            snapshots: Vec::new(),
            checks: Vec::new(),
        }
    }

    fn check(&mut self, what: impl Into<String>, passed: bool) {
        self.checks.push(FaultCheck {
            what: what.into(),
            passed,
        });
    }
}

/// How the faults are made.
#[derive(Debug, Clone)]
pub(crate) struct FaultSettings {
    /// How long a frozen master stays stopped.
    pub(crate) freeze: Duration,
    /// From a master's kill to its restart as a replica.
    pub(crate) master_down: Duration,
    /// From a replica's kill to its restart.
    pub(crate) replica_down: Duration,
    /// How long the broken config stays before the good one is written back.
    pub(crate) broken_config_for: Duration,
    /// Calls in one burst.
    pub(crate) burst_calls: usize,
    /// Connections the burst is spread over.
    pub(crate) burst_connections: usize,
    /// Every call's deadline.
    pub(crate) deadline: Duration,
    /// The per-minute limit's window (ms), whose counters the snapshots read.
    pub(crate) window_ms: u64,
}

/// Injects faults into `cluster`; burst calls go into `ledger` like the load's.
pub(crate) struct Injector<'a> {
    /// The system.
    pub(crate) cluster: &'a mut Cluster,
    /// How.
    pub(crate) settings: FaultSettings,
    /// Where burst calls are recorded.
    pub(crate) ledger: Ledger,
    /// The requests' shape (bursts send limited keys).
    pub(crate) traffic: Traffic,
    /// The Redis key of each limited key's per-minute counter.
    pub(crate) counter_keys: Vec<String>,
    /// The replicas' process ids, for the memory sampler (updated after restarts).
    pub(crate) pids: Arc<Mutex<Vec<u32>>>,
    /// Faults of each kind so far (which replica is next).
    pub(crate) count: usize,
}

impl Injector<'_> {
    /// Injects `kind`; a fault that could not be carried out is an event with a failed check.
    pub(crate) async fn inject(&mut self, kind: FaultKind) -> FaultEvent {
        let mut event = FaultEvent::new(kind);
        let result = match kind {
            FaultKind::MasterKill => self.master_kill(&mut event).await,
            FaultKind::MasterFreeze => self.master_freeze(&mut event).await,
            FaultKind::FloodgateKill => self.floodgate_kill(&mut event).await,
            FaultKind::ConfigReload => self.config_reload(&mut event).await,
            FaultKind::OverloadBurst => self.overload_burst(&mut event).await,
        };
        if let Err(e) = result {
            event.check(format!("the fault was carried out: {e:#}"), false);
        }
        self.count += 1;
        *self.pids.lock().unwrap_or_else(|e| e.into_inner()) = self.cluster.replica_pids();
        event.done = wall_us();
        event
    }

    async fn master_kill(&mut self, event: &mut FaultEvent) -> anyhow::Result<()> {
        let old = self.cluster.agreed_master().await?;
        event.snapshots.extend(self.snapshot("before", old).await);
        event.detail = format!("SIGKILL to the Redis master 127.0.0.1:{old}");
        event.at = wall_us();
        self.cluster.node_mut(old)?.kill().await;
        let new = self.wait_for_promotion(old, event, None).await?;
        let restart_at = Duration::from_micros(event.at) + self.settings.master_down;
        let wait = restart_at.saturating_sub(Duration::from_micros(wall_us()));
        tokio::time::sleep(wait).await;
        self.cluster
            .node_mut(old)?
            .restart(&RedisRole::Node(Some(new)))
            .await?;
        let rejoined = wait_for_replica(old, REJOIN_LIMIT).await;
        self.settle(new, event).await;
        event.detail += &format!(
            "; 127.0.0.1:{new} promoted; 127.0.0.1:{old} restarted {:?} after the kill as its replica",
            self.settings.master_down
        );
        event.check(
            format!("the old master rejoined as a replica of 127.0.0.1:{new}"),
            rejoined.is_ok_and(|m| m == new),
        );
        Ok(())
    }

    async fn master_freeze(&mut self, event: &mut FaultEvent) -> anyhow::Result<()> {
        let old = self.cluster.agreed_master().await?;
        event.snapshots.extend(self.snapshot("before", old).await);
        let frozen = self.settings.freeze;
        event.detail =
            format!("SIGSTOP to the Redis master 127.0.0.1:{old}, SIGCONT {frozen:?} later");
        event.at = wall_us();
        self.cluster.node_mut(old)?.proc()?.signal(Signal::STOP)?;
        let thaw = Instant::now() + frozen;
        // A failover while it is stopped is read at once, before the woken node can answer.
        let promoted = self.wait_for_promotion(old, event, Some(thaw)).await;
        tokio::time::sleep_until(thaw.into()).await;
        self.cluster.node_mut(old)?.proc()?.signal(Signal::CONT)?;
        let promoted = match promoted {
            Ok(new) => Some(new),
            // The election may end after the thaw; a node back in time may also keep its place.
            Err(_) => {
                let until = Instant::now() + Duration::from_secs(5);
                self.wait_for_promotion(old, event, Some(until)).await.ok()
            }
        };
        match promoted {
            Some(new) => {
                let rejoined = wait_for_replica(old, REJOIN_LIMIT).await;
                self.settle(new, event).await;
                event.detail += &format!("; 127.0.0.1:{new} promoted, the woken node demoted");
                event.check(
                    format!("the woken master was demoted to a replica of 127.0.0.1:{new}"),
                    rejoined.is_ok_and(|m| m == new),
                );
            }
            None => event.detail += "; no failover (the master kept its place)",
        }
        Ok(())
    }

    /// Polls the Sentinels until they agree on a master other than `old` that answers as one
    /// (until `until`, or [`PROMOTION_LIMIT`]); records the promotion and the counters of the
    /// new master at once.
    async fn wait_for_promotion(
        &self,
        old: u16,
        event: &mut FaultEvent,
        until: Option<Instant>,
    ) -> anyhow::Result<u16> {
        let until = until.unwrap_or_else(|| Instant::now() + PROMOTION_LIMIT);
        loop {
            if let Ok(Some(new)) = self.cluster.agreed_master_other_than(old).await {
                event.promoted = Some(wall_us());
                event.snapshots.extend(self.snapshot("promoted", new).await);
                return Ok(new);
            }
            if Instant::now() >= until {
                bail!("no new master within the wait (127.0.0.1:{old} was master)");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Once the Sentinels agree on a master, reads its counters (`settled`); says so when it is
    /// not `promoted` (the Sentinels failed over again meanwhile).
    async fn settle(&self, promoted: u16, event: &mut FaultEvent) {
        let until = Instant::now() + PROMOTION_LIMIT;
        let master = loop {
            match self.cluster.agreed_master().await {
                Ok(master) => break Some(master),
                Err(_) if Instant::now() < until => tokio::time::sleep(POLL).await,
                Err(_) => break None,
            }
        };
        let Some(master) = master else {
            event.check("the Sentinels agreed on a master again", false);
            return;
        };
        if master != promoted {
            event.detail += &format!("; the Sentinels failed over again, to 127.0.0.1:{master}");
        }
        event
            .snapshots
            .extend(self.snapshot("settled", master).await);
    }

    /// Every limited key's per-minute count on the node at `port`, in the window now; `None`
    /// when the node did not answer or the window changed during the read.
    async fn snapshot(&self, label: &'static str, port: u16) -> Option<Snapshot> {
        let window = self.settings.window_ms;
        let start = wall_us();
        let window_start_ms = start / 1000 / window * window;
        // A fixed window's counter is a hash field named after the window's start.
        let field = format!("{window_start_ms}:");
        let mut pipe = redis::pipe();
        for key in &self.counter_keys {
            pipe.cmd("HGET").arg(key).arg(&field);
        }
        let counts: Vec<Option<u64>> = query_pipe(port, &pipe).await.ok()?;
        let end = wall_us();
        (end / 1000 / window * window == window_start_ms).then(|| Snapshot {
            label,
            port,
            start,
            end,
            window_start_ms,
            counts: counts.into_iter().map(Option::unwrap_or_default).collect(),
        })
    }

    async fn floodgate_kill(&mut self, event: &mut FaultEvent) -> anyhow::Result<()> {
        let n = self.count % self.cluster.replicas.len();
        let down = self.settings.replica_down;
        event.detail = format!("SIGKILL to Floodgate replica {n}, restarted {down:?} later");
        event.at = wall_us();
        self.cluster.replicas[n].kill().await;
        tokio::time::sleep(down).await;
        let restarted = self.cluster.replicas[n].restart().await;
        event.check(
            format!("replica {n} restarted and healthy"),
            restarted.is_ok(),
        );
        restarted
    }

    async fn config_reload(&mut self, event: &mut FaultEvent) -> anyhow::Result<()> {
        let file = self.cluster.config_file.clone();
        let good = std::fs::read_to_string(&file)?;
        // Valid YAML that validation refuses: an operator's typo, a field that does not exist.
        let broken = format!("{good}\nrate_limits: {{ unit: second }}\n");
        let before = self.reload_counts().await?;
        write_atomically(&file, &broken)?;
        event.detail = format!(
            "a broken config (an unknown field) and SIGHUP to every replica, the good config and SIGHUP {:?} later",
            self.settings.broken_config_for
        );
        event.at = wall_us();
        self.hangup()?;
        tokio::time::sleep(self.settings.broken_config_for).await;
        let refused = self.reload_counts().await?;
        let all_refused = before.iter().zip(&refused).all(|(b, r)| r.1 > b.1);
        event.check("every replica refused the broken config", all_refused);
        // The good config again, with a comment that makes it a new version: a replica counts a
        // reload only when the files changed.
        let kept: Vec<&str> = good.lines().filter(|l| !l.starts_with(RESTORED)).collect();
        let restored = format!("{}\n{RESTORED} ({})\n", kept.join("\n"), self.count);
        write_atomically(&file, &restored)?;
        self.hangup()?;
        let reloaded = self.wait_for_reloads(&refused).await;
        event.check("every replica reloaded the good config", reloaded);
        Ok(())
    }

    /// SIGHUP to every replica.
    fn hangup(&self) -> anyhow::Result<()> {
        for replica in &self.cluster.replicas {
            replica.proc()?.signal(Signal::HUP)?;
        }
        Ok(())
    }

    /// Waits (5 s at most) until every replica has reloaded successfully more often than in
    /// `since`.
    async fn wait_for_reloads(&self, since: &[(u64, u64)]) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(now) = self.reload_counts().await
                && since.iter().zip(&now).all(|(s, n)| n.0 > s.0)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Per replica, its successful and refused config reloads so far (its /metrics).
    async fn reload_counts(&self) -> anyhow::Result<Vec<(u64, u64)>> {
        let mut counts = Vec::new();
        for replica in &self.cluster.replicas {
            let (_, metrics) = http_get(replica.http, "/metrics").await?;
            let count = |result: &str| {
                metrics
                    .lines()
                    .filter(|l| l.starts_with("floodgate_config_reloads_total{"))
                    .filter(|l| l.contains(&format!("result=\"{result}\"")))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as u64
            };
            counts.push((count("success"), count("failure")));
        }
        Ok(counts)
    }

    async fn overload_burst(&mut self, event: &mut FaultEvent) -> anyhow::Result<()> {
        let n = self.count % self.cluster.replicas.len();
        let replica = &self.cluster.replicas[n];
        let calls = self.settings.burst_calls;
        let endpoint = Endpoint::new(
            format!("127.0.0.1:{}", replica.grpc),
            self.settings.burst_connections,
        );
        endpoint.open_all().await;
        event.detail = format!(
            "{calls} calls at once to replica {n} over {} connections",
            self.settings.burst_connections
        );
        event.at = wall_us();
        let mut burst = JoinSet::new();
        for i in 0..calls {
            let key = i as u32 % self.traffic.limited_keys.max(1);
            let call = Call {
                endpoint: endpoint.clone(),
                replica: n as u8,
                connection: i,
                class: Class::Burst,
                key,
                due: Instant::now(),
            };
            let (body, ledger) = (self.traffic.body(Class::Burst, key), self.ledger.clone());
            let deadline = self.settings.deadline;
            burst.spawn(async move { call.send(body, deadline, &ledger).await });
        }
        let mut refused = 0;
        while let Some(outcome) = burst.join_next().await {
            let refusal = Outcome::Failed(Failure::Grpc(RESOURCE_EXHAUSTED));
            refused += usize::from(outcome.context("a burst call panicked")? == refusal);
        }
        event.detail += &format!("; {refused} refused with RESOURCE_EXHAUSTED");
        event.check(
            "the burst went past --max-concurrent-requests (some calls refused)",
            refused > 0,
        );
        Ok(())
    }
}

/// Replaces `file` with `text` in one rename, so a replica never reads half of it (the
/// temporary name is hidden: the replicas skip hidden files).
fn write_atomically(file: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let dir = file.parent().context("a file in a directory")?;
    let temporary = dir.join(".soak-config.tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, file)?;
    Ok(())
}
