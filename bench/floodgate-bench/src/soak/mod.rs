//! `floodgate-bench soak`: a chaos soak with a ledger. Floodgate replicas on a Redis Sentinel
//! set (1 master, 2 replicas, 3 Sentinels), all started here on 127.0.0.1, take an open-loop
//! load with known limits while faults are injected on a schedule (a Redis master killed, a
//! master frozen, a replica killed, a broken config reloaded, a burst past the overload limit).
//! Every call goes into a ledger; the report says, from it, whether any window admitted more
//! than its limit beyond what a failover measurably lost, whether any call outlived its
//! deadline, how long each fault took to recover from, and how the replicas' memory went.
//!
//! - [`cluster`] and [`procs`]: the processes; [`faults`]: the faults and their schedule.
//! - [`load`] and [`client`]: the open loop and its calls; [`ledger`]: their records.
//! - [`admission`], [`recovery`], [`figures`]: what the records say; [`report`]: JSON,
//!   Markdown and the verdict. [`memory`]: the replicas' RSS.

mod admission;
mod client;
mod cluster;
mod faults;
mod figures;
mod ledger;
mod load;
mod memory;
mod procs;
mod recovery;
mod report;
mod switches;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, ensure};
use floodgate::algorithm::Algorithm;
use floodgate::query::Entry;

use admission::WindowLimit;
use client::Endpoint;
use cluster::{Cluster, ClusterSettings};
use faults::{FaultEvent, FaultKind, FaultSettings, Injector};
use ledger::{Ledger, Record, wall_us};
use load::{Load, Sent, Traffic};
use memory::{Sample, Sampler};
use report::{FaultReport, Report, Setup};
use switches::{Switch, SwitchLog};

/// The prefix of the replicas' Redis keys (`--key-prefix`), so the soak can read them.
const KEY_PREFIX: &str = "soak:";

/// `floodgate-bench soak`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SoakArgs {
    /// The floodgate binary.
    #[arg(long, default_value = "target/release/floodgate")]
    floodgate: PathBuf,
    /// The limits: a domain file with fixed-window limits on the descriptors `sec` and `min`
    /// and a `free` descriptor (its limit never reached).
    #[arg(long, default_value = "bench/config/soak/soak.yaml")]
    config: PathBuf,
    /// The domain in that file.
    #[arg(long, default_value = "soak")]
    domain: String,
    /// How long the load runs.
    #[arg(long, default_value = "200s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The first fault comes at least this long after the load starts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    first_fault: Duration,
    /// Between faults (each gets this long to recover before the next).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    fault_interval: Duration,
    /// Faults come when the wall clock is this far past a multiple of --fault-interval (with
    /// 30 s, at :05 and :35 of every minute): a failover then settles within the minute it
    /// began, so the per-minute counters it lost can still be read.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    fault_offset: Duration,
    /// The faults, injected in this order, round and round.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "master-kill,floodgate-kill,master-freeze,config-reload,overload-burst"
    )]
    faults: Vec<FaultKind>,
    /// Requests a second (open loop), spread over the replicas in turn.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Limited keys (values `v0`...).
    #[arg(long, default_value_t = 100)]
    limited_keys: u32,
    /// Free keys.
    #[arg(long, default_value_t = 50)]
    free_keys: u32,
    /// Share of the requests on free keys (their OKs show each replica deciding again).
    #[arg(long, default_value_t = 0.3)]
    free_share: f64,
    /// Every call's deadline (also sent as grpc-timeout).
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// Floodgate replicas.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// HTTP/2 connections to each replica.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Sentinel's down-after-milliseconds.
    #[arg(long, default_value_t = 1000)]
    down_after_ms: u64,
    /// Sentinel's failover-timeout (ms).
    #[arg(long, default_value_t = 3000)]
    failover_timeout_ms: u64,
    /// How long a frozen master stays stopped.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    freeze: Duration,
    /// From a master's kill to its restart as a replica.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    master_down: Duration,
    /// From a replica's kill to its restart.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    replica_down: Duration,
    /// How long the broken config stays.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    broken_config_for: Duration,
    /// Calls in one overload burst.
    #[arg(long, default_value_t = 2000)]
    burst_calls: usize,
    /// Connections a burst is spread over.
    #[arg(long, default_value_t = 16)]
    burst_connections: usize,
    /// The replicas' --max-concurrent-requests.
    #[arg(long, default_value_t = 100)]
    max_concurrent_requests: usize,
    /// The replicas' --circuit-cooldown: how soon after an outage began a replica tries Redis
    /// again (Floodgate's default, 1 s, adds up to a second to every recovery).
    #[arg(long, default_value = "250ms")]
    circuit_cooldown: String,
    /// The replicas' --failure-mode: deny or error, so that an outage never admits.
    #[arg(long, default_value = "deny")]
    failure_mode: String,
    /// One more flag for every replica (repeat it), e.g. --floodgate-arg=--redis-timeout=100ms.
    #[arg(long = "floodgate-arg", allow_hyphen_values = true)]
    floodgate_args: Vec<String>,
    /// The longest a master kill may take to recover from.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    max_master_kill_recovery: Duration,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the summary as Markdown here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write every call of the ledger here (CSV), to look into a failed run.
    #[arg(long)]
    records: Option<PathBuf>,
    /// Where the processes' configs and logs go (default: a new directory in the system's temp
    /// directory, removed after a passing run).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// Runs the soak; `Ok(false)` when it ran and its verdict is a failure.
pub(crate) fn main(args: SoakArgs) -> anyhow::Result<bool> {
    // Two threads: the load is light, and the replicas and Redis need the cores.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: SoakArgs) -> anyhow::Result<bool> {
    let limits = Limits::read(&args.config, &args.domain)?;
    let (work, temporary) = match &args.work_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("floodgate-soak-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&work)?;
    eprintln!(
        "soak: starting Redis, 3 Sentinels and {} replicas in {}",
        args.replicas,
        work.display()
    );
    let started = Cluster::start(&cluster_settings(&args), &work).await;
    let report = match started {
        Ok(mut cluster) => {
            let report = drive(&args, &limits, &mut cluster).await;
            cluster.stop().await;
            report
        }
        Err(e) => Err(e),
    };
    let report = report.with_context(|| format!("the soak failed; logs in {}", work.display()))?;
    let markdown = report.markdown();
    print!("{markdown}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown)?;
    }
    if report.verdict.passed && temporary {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("soak: the processes' logs are in {}", work.display());
    }
    Ok(report.verdict.passed)
}

fn cluster_settings(args: &SoakArgs) -> ClusterSettings {
    let mut floodgate_args: Vec<String> = vec![
        "--key-prefix".into(),
        KEY_PREFIX.into(),
        "--failure-mode".into(),
        args.failure_mode.clone(),
        "--max-concurrent-requests".into(),
        args.max_concurrent_requests.to_string(),
        "--circuit-cooldown".into(),
        args.circuit_cooldown.clone(),
    ];
    floodgate_args.extend(args.floodgate_args.iter().cloned());
    ClusterSettings {
        floodgate: args.floodgate.clone(),
        config: args.config.clone(),
        replicas: args.replicas,
        floodgate_args,
        down_after_ms: args.down_after_ms,
        failover_timeout_ms: args.failover_timeout_ms,
    }
}

/// The limits the ledger checks, read from the config the replicas serve.
struct Limits {
    sec: WindowLimit,
    min: WindowLimit,
}

impl Limits {
    fn read(path: &Path, domain: &str) -> anyhow::Result<Limits> {
        let config = floodgate::config::Config::load(path)
            .with_context(|| format!("read {}", path.display()))?;
        let domain = config
            .domain(domain)
            .with_context(|| format!("{}: no domain {domain}", path.display()))?;
        let limit = |name: &'static str| -> anyhow::Result<WindowLimit> {
            let entry = Entry {
                key: name.into(),
                value: "v0".into(),
            };
            let rule = floodgate::matcher::find_rule(domain, &[entry])
                .with_context(|| format!("{}: no rule for descriptor {name}", path.display()))?;
            let limit = rule.rule.limit.context("an unlimited rule")?;
            ensure!(
                limit.algorithm == Algorithm::FixedWindow && !rule.rule.shadow_mode,
                "{}: the {name} limit must be an enforced fixed window",
                path.display()
            );
            Ok(WindowLimit {
                name,
                limit: limit.requests_per_unit,
                window_us: limit.window_secs() * 1_000_000,
            })
        };
        limit("free")?;
        Ok(Limits {
            sec: limit("sec")?,
            min: limit("min")?,
        })
    }
}

/// Runs the load and the faults on `cluster`, then reads the ledger.
async fn drive(args: &SoakArgs, limits: &Limits, cluster: &mut Cluster) -> anyhow::Result<Report> {
    let ledger = Ledger::default();
    let traffic = Traffic {
        domain: args.domain.as_str().into(),
        limited_keys: args.limited_keys,
        free_keys: args.free_keys,
        free_share: args.free_share,
    };
    let endpoints: Vec<Arc<Endpoint>> = cluster
        .replicas
        .iter()
        .map(|r| Endpoint::new(format!("127.0.0.1:{}", r.grpc), args.connections))
        .collect();
    let pids = Arc::new(Mutex::new(cluster.replica_pids()));
    let sampler = Sampler::start(pids.clone());
    let sentinels: Vec<u16> = cluster.sentinels.iter().map(|s| s.port).collect();
    let switch_log = SwitchLog::start(&sentinels);
    let (start, started) = (wall_us(), Instant::now());
    let load = Load::start(
        traffic.clone(),
        args.rate,
        endpoints,
        ledger.clone(),
        args.deadline,
    );
    let mut injector = Injector {
        cluster,
        settings: fault_settings(args, limits),
        ledger: ledger.clone(),
        counter_keys: counter_keys(args, limits),
        traffic,
        pids,
        count: 0,
    };
    let faults = schedule(&mut injector, args, started).await;
    tokio::time::sleep_until((started + args.duration).into()).await;
    let sent = load.stop(args.deadline).await?;
    let end = wall_us();
    let samples = sampler.stop().await;
    let run = Run {
        records: ledger.sorted(),
        faults,
        switches: switch_log.switches(),
        sent,
        samples,
        start,
        end,
    };
    if let Some(path) = &args.records {
        ledger::write_csv(&run.records, path)?;
    }
    Ok(run.report(args, limits))
}

fn fault_settings(args: &SoakArgs, limits: &Limits) -> FaultSettings {
    FaultSettings {
        freeze: args.freeze,
        master_down: args.master_down,
        replica_down: args.replica_down,
        broken_config_for: args.broken_config_for,
        burst_calls: args.burst_calls,
        burst_connections: args.burst_connections,
        deadline: args.deadline,
        window_ms: limits.min.window_us / 1000,
    }
}

/// The Redis key of every limited key's per-minute counter.
fn counter_keys(args: &SoakArgs, limits: &Limits) -> Vec<String> {
    (0..args.limited_keys)
        .map(|k| {
            let value = format!("v{k}");
            let window_secs = limits.min.window_us / 1_000_000;
            crate::stores::fixed_window_key(KEY_PREFIX, &args.domain, ("min", &value), window_secs)
        })
        .collect()
}

/// Injects the faults, one every `--fault-interval` from `--first-fault` (aligned to the wall
/// clock by `--fault-offset`), as long as each still has a whole interval to recover in before
/// the load ends.
async fn schedule(
    injector: &mut Injector<'_>,
    args: &SoakArgs,
    started: Instant,
) -> Vec<FaultEvent> {
    let mut events = Vec::new();
    let first =
        args.first_fault + aligned_wait(args, wall_us() + args.first_fault.as_micros() as u64);
    for n in 0u32.. {
        let at = first + args.fault_interval * n;
        if args.faults.is_empty() || at + args.fault_interval > args.duration {
            break;
        }
        tokio::time::sleep_until((started + at).into()).await;
        let kind = args.faults[n as usize % args.faults.len()];
        eprintln!("soak: {:6.1} s: {kind:?}", started.elapsed().as_secs_f64());
        let event = injector.inject(kind).await;
        for check in event.checks.iter().filter(|c| !c.passed) {
            eprintln!("soak: {kind:?}: not so: {}", check.what);
        }
        events.push(event);
    }
    events
}

/// From the wall-clock time `at` (µs) to the next one `--fault-offset` past a multiple of
/// `--fault-interval`.
fn aligned_wait(args: &SoakArgs, at: u64) -> Duration {
    let interval = args.fault_interval.as_micros().max(1) as u64;
    let offset = args.fault_offset.as_micros() as u64 % interval;
    let into = (at + interval - offset) % interval;
    Duration::from_micros((interval - into) % interval)
}

/// What a run left: its records, faults and samples.
struct Run {
    records: Vec<Record>,
    faults: Vec<FaultEvent>,
    switches: Vec<Switch>,
    sent: Sent,
    samples: Vec<Sample>,
    start: u64,
    end: u64,
}

impl Run {
    fn report(&self, args: &SoakArgs, limits: &Limits) -> Report {
        let snapshots = admission::losses(&self.records, &self.faults, limits.min.window_us);
        let admission = [limits.sec, limits.min]
            .map(|limit| admission::check_limit(&self.records, limit, &self.faults, &snapshots))
            .to_vec();
        let recoveries =
            recovery::recoveries(&self.records, &self.faults, args.replicas as u8, self.end);
        let faults = self
            .faults
            .iter()
            .zip(recoveries)
            .enumerate()
            .map(|(n, (fault, recovery))| {
                let until = self.faults.get(n + 1).map_or(self.end, |next| next.at);
                let failovers = self
                    .switches
                    .iter()
                    .filter(|s| s.at >= fault.at && s.at < until)
                    .count();
                FaultReport::new(n, fault, recovery, failovers, self.start)
            })
            .collect();
        let started_at = SystemTime::UNIX_EPOCH + Duration::from_micros(self.start);
        let mut report = Report {
            started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
            duration_s: self.end.saturating_sub(self.start) as f64 / 1e6,
            setup: setup(args),
            load: figures::load(&self.records, self.sent, args.rate),
            answers: figures::answers(&self.records),
            deadlines: figures::deadlines(&self.records, args.deadline.as_secs_f64() * 1000.0),
            admission,
            lost_writes: admission::lost_writes(&snapshots),
            snapshots,
            reset_mismatches: figures::reset_mismatches(&self.records, limits.min.window_us),
            faults,
            switches: self
                .switches
                .iter()
                .map(|s| (s.at.saturating_sub(self.start) as f64 / 1e6, s.to))
                .collect(),
            memory: figures::memory(&self.samples),
            verdict: Default::default(),
        };
        report.judge();
        report
    }
}

fn setup(args: &SoakArgs) -> Setup {
    Setup {
        replicas: args.replicas,
        down_after_ms: args.down_after_ms,
        failover_timeout_ms: args.failover_timeout_ms,
        limited_keys: args.limited_keys,
        free_keys: args.free_keys,
        free_share: args.free_share,
        deadline_ms: args.deadline.as_secs_f64() * 1000.0,
        first_fault_s: args.first_fault.as_secs_f64(),
        fault_offset_s: args.fault_offset.as_secs_f64(),
        fault_interval_s: args.fault_interval.as_secs_f64(),
        floodgate_args: cluster_settings(args).floodgate_args,
        max_master_kill_recovery_ms: args.max_master_kill_recovery.as_secs_f64() * 1000.0,
    }
}
