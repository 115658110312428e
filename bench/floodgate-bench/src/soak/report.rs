//! The soak's report: every figure as JSON, the same as a human-readable summary (Markdown),
//! and the verdict CI acts on.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::admission::{LimitCheck, Loss};
use super::faults::{FaultCheck, FaultEvent, FaultKind};
use super::figures::{DeadlineFigures, LoadFigures, ProcessMemory};
use super::recovery::Recovery;

/// What was run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Setup {
    /// Floodgate replicas.
    pub(crate) replicas: usize,
    /// Redis: 1 master, 2 replicas, 3 Sentinels with these settings.
    pub(crate) down_after_ms: u64,
    /// Sentinel's failover-timeout.
    pub(crate) failover_timeout_ms: u64,
    /// Limited keys.
    pub(crate) limited_keys: u32,
    /// Free keys.
    pub(crate) free_keys: u32,
    /// Share of the load on free keys.
    pub(crate) free_share: f64,
    /// Every call's deadline (ms).
    pub(crate) deadline_ms: f64,
    /// The first fault, at least this long after the load started (s).
    pub(crate) first_fault_s: f64,
    /// Faults come this long past a multiple of the interval on the wall clock (s).
    pub(crate) fault_offset_s: f64,
    /// Between faults (s).
    pub(crate) fault_interval_s: f64,
    /// The replicas' flags beyond addresses, config and Redis topology.
    pub(crate) floodgate_args: Vec<String>,
    /// The longest recovery a master kill may take.
    pub(crate) max_master_kill_recovery_ms: f64,
}

/// One fault as reported.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct FaultReport {
    /// Its number, from 0.
    pub(crate) n: usize,
    /// What.
    pub(crate) kind: FaultKind,
    /// When, from the start of the load (s).
    pub(crate) at_s: f64,
    /// What was done.
    pub(crate) detail: String,
    /// From the injection until every Sentinel named the new master (ms).
    pub(crate) promoted_after_ms: Option<f64>,
    /// Changes of master the Sentinels announced between this fault and the next.
    pub(crate) failovers: usize,
    /// Of which beyond the one the fault caused: failovers the Sentinels started by themselves.
    pub(crate) spontaneous_failovers: usize,
    /// Its effect on the answers.
    pub(crate) recovery: Recovery,
    /// What was checked while injecting it.
    pub(crate) checks: Vec<FaultCheck>,
}

impl FaultReport {
    /// `fault` (number `n`) with its recovery and the `failovers` announced in its interval,
    /// times from `start`.
    pub(crate) fn new(
        n: usize,
        fault: &FaultEvent,
        recovery: Recovery,
        failovers: usize,
        start: u64,
    ) -> FaultReport {
        let caused = usize::from(fault.kind.fails_over() && fault.promoted.is_some());
        FaultReport {
            n,
            kind: fault.kind,
            at_s: fault.at.saturating_sub(start) as f64 / 1e6,
            detail: fault.detail.clone(),
            promoted_after_ms: fault
                .promoted
                .map(|p| p.saturating_sub(fault.at) as f64 / 1000.0),
            failovers,
            spontaneous_failovers: failovers.saturating_sub(caused),
            recovery,
            checks: fault.checks.clone(),
        }
    }
}

/// Everything the soak measured.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Report {
    /// When the load started (RFC 3339).
    pub(crate) started_at: String,
    /// How long the load ran (s).
    pub(crate) duration_s: f64,
    /// What was run.
    pub(crate) setup: Setup,
    /// The load held.
    pub(crate) load: LoadFigures,
    /// Calls by class and by how they ended.
    pub(crate) answers: BTreeMap<&'static str, BTreeMap<String, u64>>,
    /// Calls past their deadline.
    pub(crate) deadlines: DeadlineFigures,
    /// Admissions against each limit.
    pub(crate) admission: Vec<LimitCheck>,
    /// Counter snapshots against the ledger, around every master fault.
    pub(crate) snapshots: Vec<Loss>,
    /// Writes lost by failovers in all (per fault, the highest high bound of its snapshots
    /// after the promotion).
    pub(crate) lost_writes: u64,
    /// Decisions whose duration_until_reset disagrees with the ledger's windows.
    pub(crate) reset_mismatches: u64,
    /// The faults.
    pub(crate) faults: Vec<FaultReport>,
    /// Every change of master the Sentinels announced: (s from the start, new master's port).
    pub(crate) switches: Vec<(f64, u16)>,
    /// Memory per replica process.
    pub(crate) memory: Vec<ProcessMemory>,
    /// Whether CI passes, and why not.
    pub(crate) verdict: Verdict,
}

/// Pass or fail, with every reason to fail.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Verdict {
    /// No reason to fail.
    pub(crate) passed: bool,
    /// The reasons.
    pub(crate) failures: Vec<String>,
}

impl Report {
    /// Fills in the verdict from the figures.
    pub(crate) fn judge(&mut self) {
        let mut failures = Vec::new();
        let unexplained: u64 = self.admission.iter().map(|c| c.unexplained).sum();
        if unexplained > 0 {
            failures.push(format!(
                "{unexplained} admissions over a limit not explained by a failover's lost writes"
            ));
        }
        let d = &self.deadlines;
        if d.past_deadline + d.deadline_exceeded > 0 {
            failures.push(format!(
                "{} calls past their {} ms deadline ({} unanswered, {} DEADLINE_EXCEEDED)",
                d.past_deadline + d.deadline_exceeded,
                d.deadline_ms,
                d.past_deadline,
                d.deadline_exceeded
            ));
        }
        for check in self.admission.iter().filter(|c| c.windows_full == 0) {
            failures.push(format!(
                "the {} limit was never reached: the ledger tested nothing",
                check.limit.name
            ));
        }
        if self.load.not_sent > 0 {
            failures.push(format!(
                "the generator fell behind: {} calls not sent",
                self.load.not_sent
            ));
        }
        if self.reset_mismatches > 0 {
            failures.push(format!(
                "{} decisions whose duration_until_reset disagrees with the ledger's window",
                self.reset_mismatches
            ));
        }
        self.judge_faults(&mut failures);
        self.verdict = Verdict {
            passed: failures.is_empty(),
            failures,
        };
    }

    fn judge_faults(&self, failures: &mut Vec<String>) {
        let limit = self.setup.max_master_kill_recovery_ms;
        for fault in &self.faults {
            let name = format!("fault {} ({:?})", fault.n, fault.kind);
            match fault.recovery.recovery_ms {
                None => failures.push(format!("{name}: a replica never recovered")),
                // A second failover the Sentinels started themselves is theirs to answer for,
                // not the replicas' (it is reported beside the fault).
                Some(ms)
                    if fault.kind == FaultKind::MasterKill
                        && ms > limit
                        && fault.spontaneous_failovers == 0 =>
                {
                    failures.push(format!(
                        "{name}: recovered in {ms:.0} ms, over {limit:.0} ms"
                    ))
                }
                Some(_) => {}
            }
            for check in fault.checks.iter().filter(|c| !c.passed) {
                failures.push(format!("{name}: not so: {}", check.what));
            }
        }
    }

    /// The human-readable summary.
    pub(crate) fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = self.write_markdown(&mut md);
        md
    }

    fn write_markdown(&self, md: &mut String) -> std::fmt::Result {
        let verdict = if self.verdict.passed {
            "PASSED"
        } else {
            "FAILED"
        };
        writeln!(md, "# Chaos soak, {} — {verdict}\n", self.started_at)?;
        for failure in &self.verdict.failures {
            writeln!(md, "- **{failure}**")?;
        }
        let s = &self.setup;
        writeln!(
            md,
            "\n{:.0} s of open-loop load, {} requests/s over {} Floodgate replicas on Redis \
             (1 master, 2 replicas, 3 Sentinels; down-after {} ms, failover-timeout {} ms); \
             deadline {} ms per call; flags `{}`.\n",
            self.duration_s,
            self.load.target_rps,
            s.replicas,
            s.down_after_ms,
            s.failover_timeout_ms,
            s.deadline_ms,
            s.floodgate_args.join(" ")
        )?;
        self.write_load(md)?;
        self.write_admission(md)?;
        self.write_faults(md)?;
        self.write_memory(md)
    }

    fn write_load(&self, md: &mut String) -> std::fmt::Result {
        let l = &self.load;
        writeln!(md, "## Load and answers\n")?;
        writeln!(
            md,
            "Sent {} calls ({:.0}/s; {} not sent). Decisions from the intended send time: \
             p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms.\n",
            l.sent, l.sent_rps, l.not_sent, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
        )?;
        writeln!(md, "| class | answer | calls |\n| --- | --- | ---: |")?;
        for (class, outcomes) in &self.answers {
            for (outcome, n) in outcomes {
                writeln!(md, "| {class} | {outcome} | {n} |")?;
            }
        }
        let d = &self.deadlines;
        writeln!(
            md,
            "\nPast the {} ms deadline: {} unanswered, {} DEADLINE_EXCEEDED; slowest answer {:.1} ms.\n",
            d.deadline_ms, d.past_deadline, d.deadline_exceeded, d.slowest_answer_ms
        )
    }

    fn write_admission(&self, md: &mut String) -> std::fmt::Result {
        writeln!(md, "## Admissions against the limits\n")?;
        writeln!(
            md,
            "| limit | windows | reached | admitted | ambiguous | over-admitted | unexplained |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for c in &self.admission {
            writeln!(
                md,
                "| {} ({} per {} s) | {} | {} | {} | {} | {} | {} |",
                c.limit.name,
                c.limit.limit,
                c.limit.window_us / 1_000_000,
                c.windows,
                c.windows_full,
                c.admitted,
                c.ambiguous,
                c.over_admitted,
                c.unexplained
            )?;
        }
        writeln!(
            md,
            "\nWrites lost by failovers: {} (high bound). Duration-until-reset mismatches: {}.\n",
            self.lost_writes, self.reset_mismatches
        )?;
        writeln!(
            md,
            "| fault | snapshot | node | lost (low–high) | keys | hits without an OK |\n\
             | ---: | --- | ---: | ---: | ---: | ---: |"
        )?;
        for l in &self.snapshots {
            writeln!(
                md,
                "| {} | {} | {} | {}–{} | {} | {} |",
                l.fault,
                l.label,
                l.port,
                l.lost_low,
                l.lost_high,
                l.keys_with_loss,
                l.unanswered_hits
            )?;
        }
        writeln!(md)
    }

    fn write_faults(&self, md: &mut String) -> std::fmt::Result {
        writeln!(md, "## Faults\n")?;
        writeln!(
            md,
            "| # | at (s) | fault | promoted (ms) | failovers | disturbed calls | recovery (ms) | checks |\n\
             | ---: | ---: | --- | ---: | ---: | --- | ---: | --- |"
        )?;
        for f in &self.faults {
            let disturbed: Vec<String> = f
                .recovery
                .disturbed
                .iter()
                .map(|(kind, n)| format!("{n} {kind}"))
                .collect();
            let checks: Vec<String> = f
                .checks
                .iter()
                .map(|c| format!("{} {}", if c.passed { "✓" } else { "✗" }, c.what))
                .collect();
            let failovers = match f.spontaneous_failovers {
                0 => f.failovers.to_string(),
                n => format!("{} ({n} by the Sentinels themselves)", f.failovers),
            };
            writeln!(
                md,
                "| {} | {:.1} | {} | {} | {failovers} | {} | {} | {} |",
                f.n,
                f.at_s,
                f.detail,
                f.promoted_after_ms
                    .map_or("–".into(), |ms| format!("{ms:.0}")),
                if disturbed.is_empty() {
                    "none".into()
                } else {
                    disturbed.join(", ")
                },
                f.recovery
                    .recovery_ms
                    .map_or("never".into(), |ms| format!("{ms:.0}")),
                checks.join("; ")
            )?;
        }
        writeln!(md)
    }

    fn write_memory(&self, md: &mut String) -> std::fmt::Result {
        writeln!(md, "## Memory (RSS of each replica process)\n")?;
        writeln!(
            md,
            "| replica | pid | sampled (s) | first (MiB) | max (MiB) | last (MiB) |\n| ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for m in &self.memory {
            writeln!(
                md,
                "| {} | {} | {:.0} | {} | {} | {} |",
                m.replica, m.pid, m.sampled_s, m.first_mib, m.max_mib, m.last_mib
            )?;
        }
        Ok(())
    }
}
