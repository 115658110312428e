//! The replicas' memory over the run: resident set size (`VmRSS` of /proc/PID/status) of each
//! replica process, sampled every second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ledger::wall_us;

/// How often the replicas are sampled.
const EVERY: Duration = Duration::from_secs(1);

/// One sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// When (µs, wall clock).
    pub(crate) at: u64,
    /// The replica.
    pub(crate) replica: u8,
    /// Its process (a restart is a new one).
    pub(crate) pid: u32,
    /// Resident set size, KiB.
    pub(crate) rss_kib: u64,
}

/// The running sampler.
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Samples the processes in `pids` (one per replica; 0 or a dead one is skipped) until
    /// stopped.
    pub(crate) fn start(pids: Arc<Mutex<Vec<u32>>>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let now = pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for (replica, pid) in now.into_iter().enumerate() {
                    if let Some(rss_kib) = rss_kib(pid) {
                        samples.push(Sample {
                            at: wall_us(),
                            replica: replica as u8,
                            pid,
                            rss_kib,
                        });
                    }
                }
                tokio::time::sleep(EVERY).await;
            }
            samples
        });
        Sampler { stop, task }
    }

    /// Stops and returns the samples.
    pub(crate) async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// `VmRSS` of `pid` in KiB, if it runs.
fn rss_kib(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
