//! `floodgate-bench`: a load generator for any Envoy RLS v3 server (Floodgate or another), and
//! micro-benchmarks of Floodgate's stores.
//!
//! - `grpc`: ShouldRateLimit over gRPC. Closed loop (N concurrent streams over M connections) or
//!   open loop (`--rate`: requests are sent on a fixed schedule and latency is measured from the
//!   intended send time, so a stall cannot hide behind unsent requests).
//! - `store`: the Redis store's decision calls straight from this process (no gRPC), with the
//!   same script and pipelining as the server: the ceiling Floodgate-on-Redis is measured against.
//! - `memory`: bytes per active key in the memory store.
//! - `body`: one encoded request, for a second opinion from another generator (h2load).
//! - `soak`: a chaos soak (Linux): Floodgate replicas on a Redis Sentinel set under open-loop
//!   load while faults are injected, every answer checked against the limits in a ledger
//!   (`bench/soak.sh`).
//!
//! The gRPC client is lean on purpose (HTTP/2 straight over `h2`, bodies encoded by hand, one
//! runtime thread): on a shared machine every cycle the generator spends is taken from the
//! server it measures.
//!
//! Results print as a table line, and as JSON with `--json FILE`.
//!
//! A package of its own in the workspace, so its client's dependencies stay out of the
//! service's. Of Floodgate's library it uses the protobuf types (`wire`, to read answers) and,
//! for `store` and `memory`, the stores, all through `stores`.

mod pace;
#[cfg(target_os = "linux")]
mod soak;
mod stores;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

use wire::{Connection, RequestShape, Value};

#[derive(Debug, Parser)]
#[command(
    name = "floodgate-bench",
    about = "Load generator for Envoy RLS v3 servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// ShouldRateLimit over gRPC.
    Grpc(GrpcArgs),
    /// Floodgate's Redis store without gRPC: the Redis ceiling.
    Store(StoreArgs),
    /// Memory store bytes per active key.
    Memory(MemoryArgs),
    /// Writes one request as a gRPC frame to stdout, for other generators (h2load -d).
    Body(BodyArgs),
    /// A chaos soak: replicas on a Redis Sentinel set, faults on a schedule, a ledger of
    /// every answer; exits with 2 when the ledger fails the run.
    #[cfg(target_os = "linux")]
    Soak(Box<soak::SoakArgs>),
}

#[derive(Debug, clap::Args)]
struct BodyArgs {
    /// Rate limit domain.
    #[arg(long, default_value = "bench")]
    domain: String,
    /// Descriptors in the request.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    descriptors: u8,
    /// The descriptors' value, `v{N}`.
    #[arg(long, default_value_t = 1)]
    value: u64,
}

#[derive(Debug, Clone, clap::Args)]
struct Load {
    /// Name printed with the results.
    #[arg(long, default_value = "run")]
    name: String,
    /// Concurrent requests in flight (closed loop), or at most in flight (open loop).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Descriptors per request.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    descriptors: u8,
    /// Distinct values per descriptor key (1, 1000, 1000000...).
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Share of requests sent to one hot key that is over its limit (attack traffic).
    #[arg(long, default_value_t = 0.0)]
    hot_share: f64,
    /// Measured duration.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before it.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Report the CPU time a process spent per measured request, as NAME=PID (repeatable; Linux,
    /// from /proc/PID/task/*/schedstat; `grpc` adds its own as `generator`). CPU per request
    /// does not depend on how fast the generator is, as throughput on a shared machine does.
    #[arg(long = "cpu-of", value_parser = named_pid)]
    cpu_of: Vec<(String, u32)>,
}

fn named_pid(text: &str) -> Result<(String, u32), String> {
    let (name, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PID, got {text:?}"))?;
    let pid = pid.parse().map_err(|e| format!("{pid:?}: {e}"))?;
    Ok((name.to_owned(), pid))
}

/// The scheduler times of all threads of `pid` so far (None when /proc cannot tell).
fn sched_ns(pid: u32) -> Option<Sched> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = Sched::default();
    for task in tasks.flatten() {
        // A thread may end between the listing and the read: it counts for nothing.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().ok());
        total.run += fields.next()??;
        total.wait += fields.next()??;
    }
    Some(total)
}

/// A process's scheduler times, summed over its threads (nanoseconds).
#[derive(Debug, Default, Clone, Copy)]
struct Sched {
    /// On a core.
    run: u64,
    /// Runnable but waiting for a core: on a shared machine, latency no code path explains.
    wait: u64,
}

impl Sched {
    /// The times spent between `earlier` and `self`.
    fn since(self, earlier: Sched) -> Sched {
        Sched {
            run: self.run.saturating_sub(earlier.run),
            wait: self.wait.saturating_sub(earlier.wait),
        }
    }
}

#[derive(Debug, clap::Args)]
struct GrpcArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: String,
    /// Rate limit domain.
    #[arg(long, default_value = "bench")]
    domain: String,
    /// HTTP/2 connections to spread the load over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Open loop: send this many requests per second on a fixed schedule.
    #[arg(long)]
    rate: Option<u64>,
    #[command(flatten)]
    load: Load,
}

#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// Redis URL.
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    redis_url: String,
    /// Pooled connections (pipeline dispatchers).
    #[arg(long, default_value_t = 4)]
    pool_size: u32,
    #[command(flatten)]
    load: Load,
}

#[derive(Debug, clap::Args)]
struct MemoryArgs {
    /// Active keys to create.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
}

/// What one run measured.
#[derive(Debug, serde::Serialize)]
struct Report {
    name: String,
    mode: String,
    concurrency: usize,
    descriptors: u8,
    target_rate: Option<u64>,
    requests: u64,
    rps: f64,
    ok: u64,
    over_limit: u64,
    errors: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    /// Microseconds of CPU per measured request, by process (`--cpu-of`).
    cpu_us_per_request: std::collections::BTreeMap<String, f64>,
    /// Microseconds per measured request that the process's threads were runnable but waited
    /// for a core, by process.
    wait_us_per_request: std::collections::BTreeMap<String, f64>,
}

/// Per-run shared counters and latencies (merged histograms under a lock only at the end).
struct Tally {
    measuring: AtomicBool,
    stop: AtomicBool,
    ok: AtomicU64,
    over: AtomicU64,
    errors: AtomicU64,
    histograms: Mutex<Histogram<u64>>,
}

impl Tally {
    fn new() -> Arc<Tally> {
        Arc::new(Tally {
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ok: AtomicU64::new(0),
            over: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            histograms: Mutex::new(histogram()),
        })
    }

    fn count(&self, outcome: Outcome) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        let counter = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::OverLimit => &self.over,
            Outcome::Error => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How one call ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    /// OK.
    Ok,
    /// OVER_LIMIT.
    OverLimit,
    /// Failed (transport, status, or an unreadable answer).
    Error,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds")
}

/// The i-th request's descriptor value: the hot key for `hot_share` of them, else spread over
/// `keys` values (a cheap deterministic mix, so runs are repeatable).
fn value_for(i: u64, load: &Load) -> Value {
    let mixed = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if load.hot_share > 0.0 && (mixed % 10_000) < (load.hot_share * 10_000.0) as u64 {
        return Value::Hot;
    }
    Value::Key((mixed >> 16) % load.keys.max(1))
}

async fn grpc(args: GrpcArgs) -> anyhow::Result<Report> {
    let mut connections = Vec::new();
    for _ in 0..args.connections.max(1) {
        connections.push(Connection::open(&args.addr).await?);
    }
    let tally = Tally::new();
    let mut load = args.load.clone();
    // Its own share too: on a shared machine the generator's CPU is part of the budget.
    load.cpu_of
        .push(("generator".to_owned(), std::process::id()));
    let domain: Arc<str> = args.domain.into();
    let phase = match args.rate {
        None => closed_loop(connections, &tally, &load, domain).await?,
        Some(rate) => open_loop(connections, &tally, &load, domain, rate).await?,
    };
    Ok(report(&load, "grpc", args.rate, &tally, phase).await)
}

/// Closed loop: each worker sends its next request when the last one is answered.
async fn closed_loop(
    connections: Vec<Connection>,
    tally: &Arc<Tally>,
    load: &Load,
    domain: Arc<str>,
) -> anyhow::Result<Phase> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..load.concurrency.max(1) {
        let connection = connections[w % connections.len()].clone();
        let (tally, next, load, domain) =
            (tally.clone(), next.clone(), load.clone(), domain.clone());
        workers.push(tokio::spawn(async move {
            let mut local = histogram();
            let mut buf = BytesMut::new();
            let shape = RequestShape::new(&domain, load.descriptors);
            while !tally.stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let body = wire::encode_request(&mut buf, &shape, value_for(i, &load));
                let sent = Instant::now();
                let outcome = connection.call(body).await;
                if tally.measuring.load(Ordering::Relaxed) {
                    let _ = local.record(sent.elapsed().as_micros().max(1) as u64);
                }
                tally.count(outcome);
            }
            let _ = tally.histograms.lock().await.add(local);
        }));
    }
    let phase = run_phases(tally, load).await;
    for worker in workers {
        worker.await?;
    }
    Ok(phase)
}

/// Open loop: requests leave on schedule whatever the server does; latency counts from the
/// scheduled time, and a full in-flight budget counts as an error.
async fn open_loop(
    connections: Vec<Connection>,
    tally: &Arc<Tally>,
    load: &Load,
    domain: Arc<str>,
    rate: u64,
) -> anyhow::Result<Phase> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let budget = load.concurrency.max(1) as u64 * 64;
    let in_flight = Arc::new(AtomicU64::new(0));
    let origin = Instant::now();
    let due_at = move |i: u64| origin + interval.mul_f64(i as f64);
    let pacer = pace::Pacer::new()?;
    let scheduler = {
        let (tally, load) = (tally.clone(), load.clone());
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let shape = RequestShape::new(&domain, load.descriptors);
            let mut next: u64 = 0;
            while !tally.stop.load(Ordering::Relaxed) {
                pacer.until(due_at(next)).await?;
                let now = Instant::now();
                while due_at(next) <= now {
                    let i = next;
                    next += 1;
                    if in_flight.load(Ordering::Relaxed) >= budget {
                        tally.count(Outcome::Error);
                        continue;
                    }
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let connection = connections[(i as usize) % connections.len()].clone();
                    let body = wire::encode_request(&mut buf, &shape, value_for(i, &load));
                    send_scheduled(connection, body, &tally, &in_flight, due_at(i));
                }
            }
            std::io::Result::Ok(())
        })
    };
    let phase = run_phases(tally, load).await;
    scheduler.await??;
    // Let the last answers land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(phase)
}

/// Sends one open-loop request due at `due`, counting its answer and latency from `due`.
fn send_scheduled(
    connection: Connection,
    body: Bytes,
    tally: &Arc<Tally>,
    in_flight: &Arc<AtomicU64>,
    due: Instant,
) {
    let (tally, in_flight) = (tally.clone(), in_flight.clone());
    tokio::spawn(async move {
        let outcome = connection.call(body).await;
        if tally.measuring.load(Ordering::Relaxed) {
            let micros = due.elapsed().as_micros().max(1) as u64;
            let _ = tally.histograms.lock().await.record(micros);
        }
        tally.count(outcome);
        in_flight.fetch_sub(1, Ordering::Relaxed);
    });
}

/// What the measured phase took: its length, and the scheduler times of each `--cpu-of`
/// process in it.
struct Phase {
    elapsed: Duration,
    sched: Vec<(String, Sched)>,
}

/// Warm-up, then the measured phase.
async fn run_phases(tally: &Tally, load: &Load) -> Phase {
    let sched = || {
        load.cpu_of
            .iter()
            .map(|(name, pid)| (name.clone(), sched_ns(*pid).unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    // Without a warm-up every request counts: the workers have not run yet (one runtime
    // thread), and even a zero-length sleep would let them send, and hear back, unmeasured.
    if !load.warmup.is_zero() {
        tokio::time::sleep(load.warmup).await;
    }
    tally.measuring.store(true, Ordering::Relaxed);
    let before = sched();
    let started = Instant::now();
    tokio::time::sleep(load.duration).await;
    tally.measuring.store(false, Ordering::Relaxed);
    let after = sched();
    tally.stop.store(true, Ordering::Relaxed);
    Phase {
        elapsed: started.elapsed(),
        sched: before
            .into_iter()
            .zip(after)
            .map(|((name, a), (_, b))| (name, b.since(a)))
            .collect(),
    }
}

async fn report(load: &Load, mode: &str, rate: Option<u64>, tally: &Tally, phase: Phase) -> Report {
    let h = tally.histograms.lock().await;
    let (ok, over, errors) = (
        tally.ok.load(Ordering::Relaxed),
        tally.over.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    let requests = ok + over + errors;
    Report {
        name: load.name.clone(),
        mode: mode.to_owned(),
        concurrency: load.concurrency,
        descriptors: load.descriptors,
        target_rate: rate,
        requests,
        rps: requests as f64 / phase.elapsed.as_secs_f64(),
        ok,
        over_limit: over,
        errors,
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        cpu_us_per_request: per_request(&phase, requests, |sched| sched.run),
        wait_us_per_request: per_request(&phase, requests, |sched| sched.wait),
    }
}

/// One of each process's scheduler times, in microseconds per request.
fn per_request(
    phase: &Phase,
    requests: u64,
    time: impl Fn(&Sched) -> u64,
) -> std::collections::BTreeMap<String, f64> {
    let per = |ns: u64| ns as f64 / 1000.0 / requests.max(1) as f64;
    phase
        .sched
        .iter()
        .map(|(name, sched)| (name.clone(), per(time(sched))))
        .collect()
}

async fn store(args: StoreArgs) -> anyhow::Result<Report> {
    let store = Arc::new(stores::redis(&args.redis_url, args.pool_size)?);
    let load = args.load.clone();
    let tally = Tally::new();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..load.concurrency.max(1) {
        let (store, tally, next, load) = (store.clone(), tally.clone(), next.clone(), load.clone());
        workers.push(tokio::spawn(async move {
            let mut local = histogram();
            while !tally.stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let value = value_for(i, &load);
                let checks: Vec<stores::Check> = (0..load.descriptors)
                    .map(|d| match value {
                        Value::Hot => stores::check("bench-ceiling:hot".to_owned(), 1),
                        Value::Key(n) => {
                            stores::check(format!("bench-ceiling:k{d}:v{n}"), u64::from(u32::MAX))
                        }
                    })
                    .collect();
                let sent = Instant::now();
                let outcome = match stores::admitted(store.as_ref(), &checks).await {
                    Ok(true) => Outcome::Ok,
                    Ok(false) => Outcome::OverLimit,
                    Err(_) => Outcome::Error,
                };
                if tally.measuring.load(Ordering::Relaxed) {
                    let _ = local.record(sent.elapsed().as_micros().max(1) as u64);
                }
                tally.count(outcome);
            }
            let _ = tally.histograms.lock().await.add(local);
        }));
    }
    let phase = run_phases(&tally, &load).await;
    for worker in workers {
        worker.await?;
    }
    let mut report = report(&load, "store", None, &tally, phase).await;
    let (round_trips, calls) = store.pipeline_stats().counts();
    eprintln!(
        "{calls} script calls in {round_trips} round trips ({:.3} per call)",
        round_trips as f64 / calls.max(1) as f64
    );
    report.name = load.name;
    Ok(report)
}

fn memory(args: MemoryArgs) -> anyhow::Result<()> {
    let rss = || -> u64 {
        // Resident pages × page size, from /proc (Linux).
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse::<u64>().ok())
            })
            .map_or(0, |pages| pages * 4096)
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let store = stores::memory(args.keys as usize + 1024);
    let before = rss();
    runtime.block_on(async {
        for i in 0..args.keys {
            let address = format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255);
            let check = stores::check(stores::address_key(address), 100);
            let _ = stores::admitted(&store, std::slice::from_ref(&check)).await;
        }
    });
    let after = rss();
    let per_key = (after.saturating_sub(before)) as f64 / args.keys as f64;
    println!(
        "memory store: {} keys held, {:.0} bytes per active key (RSS {} -> {} MiB)",
        store.len(),
        per_key,
        before >> 20,
        after >> 20
    );
    Ok(())
}

fn print(report: &Report, json: Option<&std::path::Path>) -> anyhow::Result<()> {
    println!(
        "{:<28} {:>10.0} rps  p50 {:>6} µs  p90 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  max {:>7} µs  ok {} over {} errors {}",
        report.name,
        report.rps,
        report.p50_us,
        report.p90_us,
        report.p99_us,
        report.p999_us,
        report.max_us,
        report.ok,
        report.over_limit,
        report.errors
    );
    for (name, micros) in &report.cpu_us_per_request {
        let waited = report.wait_us_per_request.get(name).copied().unwrap_or(0.0);
        println!(
            "{:<28} {name} CPU {micros:.1} µs per request, {waited:.1} µs waiting for a core",
            ""
        );
    }
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")?;
    }
    Ok(())
}

/// The same allocator as the service's, so that `memory` measures bytes per key as the service
/// holds them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Mode::Memory(args) => memory(args),
        Mode::Body(args) => {
            use std::io::Write;
            let shape = RequestShape::new(&args.domain, args.descriptors);
            let frame = wire::encode_request(&mut BytesMut::new(), &shape, Value::Key(args.value));
            std::io::stdout().write_all(&frame)?;
            Ok(())
        }
        Mode::Grpc(args) => {
            let json = args.load.json.clone();
            // One thread: the generator shares the machine with the server it measures, and
            // every thread it adds competes with the server's for the cores.
            let report = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(grpc(args))?;
            print(&report, json.as_deref())
        }
        #[cfg(target_os = "linux")]
        Mode::Soak(args) => {
            if !soak::main(*args)? {
                std::process::exit(2);
            }
            Ok(())
        }
        Mode::Store(args) => {
            let json = args.load.json.clone();
            let report = tokio::runtime::Runtime::new()?.block_on(store(args))?;
            print(&report, json.as_deref())
        }
    }
}
