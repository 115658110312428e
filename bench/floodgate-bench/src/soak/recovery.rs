//! How long each fault disturbed the answers, from the ledger.
//!
//! A call is *disturbed* when it got no decision from the store: an error of any kind, the
//! failure mode's answer, or no answer before its deadline. Over the fault's interval (the
//! calls sent after its injection and answered before the next fault's, or the end of the
//! run), a replica *recovered* at the
//! answer of the first call sent after its last disturbed call that got an OK from the store.
//! The fault's **recovery time** is from its injection to the latest replica's recovery;
//! replicas it did not disturb count as recovered at once, and a fault that disturbed none
//! recovers in 0. Only the steady load counts (not a burst's own calls).

use std::collections::BTreeMap;

use super::faults::FaultEvent;
use super::ledger::{Class, Record};

/// One replica through one fault.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ReplicaRecovery {
    /// The replica.
    pub(crate) replica: u8,
    /// Disturbed calls.
    pub(crate) disturbed: u64,
    /// From the injection to its first disturbed call's send (ms).
    pub(crate) first_disturbed_ms: Option<f64>,
    /// From the injection to its recovery (ms); `None`: not recovered within the interval.
    pub(crate) recovered_ms: Option<f64>,
}

/// One fault's effect on the answers.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Recovery {
    /// Calls sent in the interval (steady load).
    pub(crate) calls: u64,
    /// Of which disturbed, by how they ended.
    pub(crate) disturbed: BTreeMap<String, u64>,
    /// From the injection to the latest replica's recovery (ms); `None` if one never did.
    pub(crate) recovery_ms: Option<f64>,
    /// Per replica.
    pub(crate) replicas: Vec<ReplicaRecovery>,
}

/// The recovery of every fault, in order.
pub(crate) fn recoveries(
    records: &[Record],
    faults: &[FaultEvent],
    replicas: u8,
    end: u64,
) -> Vec<Recovery> {
    faults
        .iter()
        .enumerate()
        .map(|(n, fault)| {
            let until = faults.get(n + 1).map_or(end, |next| next.at);
            let interval: Vec<&Record> = records
                .iter()
                .filter(|r| r.class != Class::Burst && r.sent >= fault.at && r.answered < until)
                .collect();
            recovery(&interval, fault.at, replicas)
        })
        .collect()
}

fn recovery(interval: &[&Record], at: u64, replicas: u8) -> Recovery {
    let ms = |t: u64| t.saturating_sub(at) as f64 / 1000.0;
    let mut disturbed = BTreeMap::new();
    for r in interval.iter().filter(|r| !r.answer.outcome.decided()) {
        *disturbed.entry(r.answer.outcome.name()).or_insert(0) += 1;
    }
    let per_replica: Vec<ReplicaRecovery> = (0..replicas)
        .map(|replica| {
            let mine: Vec<&&Record> = interval.iter().filter(|r| r.replica == replica).collect();
            let bad: Vec<&&&Record> = mine
                .iter()
                .filter(|r| !r.answer.outcome.decided())
                .collect();
            let last_bad = bad.iter().map(|r| r.sent).max();
            let recovered = match last_bad {
                None => Some(at),
                Some(last) => mine
                    .iter()
                    .filter(|r| r.sent > last && r.answer.outcome == super::client::Outcome::Ok)
                    .map(|r| r.answered)
                    .min(),
            };
            ReplicaRecovery {
                replica,
                disturbed: bad.len() as u64,
                first_disturbed_ms: bad.iter().map(|r| r.sent).min().map(ms),
                recovered_ms: recovered.map(ms),
            }
        })
        .collect();
    let recovery_ms = per_replica
        .iter()
        .map(|r| r.recovered_ms)
        .try_fold(0.0f64, |worst, r| r.map(|r| worst.max(r)));
    Recovery {
        calls: interval.len() as u64,
        disturbed,
        recovery_ms,
        replicas: per_replica,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::client::{Answer, Failure, Outcome};
    use crate::soak::faults::FaultKind;

    fn call(replica: u8, sent: u64, outcome: Outcome) -> Record {
        Record {
            sent,
            answered: sent + 1_000,
            latency: 0,
            replica,
            class: Class::Free,
            key: 0,
            answer: Answer {
                outcome,
                reset_secs: 60,
            },
        }
    }

    fn fault(at: u64) -> FaultEvent {
        FaultEvent::injected_at(FaultKind::MasterKill, at)
    }

    #[test]
    fn recovery_is_the_first_ok_after_the_last_disturbed_call_on_the_slowest_replica() {
        let refused = Outcome::Failed(Failure::ConnectionRefused);
        let records = [
            call(0, 100_000, Outcome::DegradedOverLimit),
            call(0, 200_000, Outcome::Ok),
            call(0, 300_000, Outcome::DegradedOverLimit),
            // An OVER_LIMIT is the store's decision, but not the OK that shows recovery.
            call(0, 400_000, Outcome::OverLimit),
            call(0, 500_000, Outcome::Ok),
            call(1, 150_000, refused),
            call(1, 250_000, Outcome::Ok),
            call(2, 120_000, Outcome::Ok),
        ];
        let recovery = &recoveries(&records, &[fault(100_000)], 3, 1_000_000)[0];
        assert_eq!(recovery.recovery_ms, Some(401.0));
        let per_replica: Vec<Option<f64>> =
            recovery.replicas.iter().map(|r| r.recovered_ms).collect();
        assert_eq!(per_replica, [Some(401.0), Some(151.0), Some(0.0)]);
        assert_eq!(recovery.disturbed.values().sum::<u64>(), 3);
    }

    #[test]
    fn a_replica_without_an_ok_after_its_last_disturbed_call_never_recovered() {
        let records = [
            call(0, 100_000, Outcome::Ok),
            call(0, 200_000, Outcome::PastDeadline),
        ];
        let recovery = &recoveries(&records, &[fault(50_000)], 1, 1_000_000)[0];
        assert_eq!(recovery.recovery_ms, None);
    }

    #[test]
    fn a_call_still_unanswered_at_the_next_fault_belongs_to_neither() {
        let late = Record {
            answered: 2_100_000,
            ..call(0, 1_999_000, Outcome::DegradedOverLimit)
        };
        let records = [call(0, 100_000, Outcome::Ok), late];
        let faults = [fault(50_000), fault(2_000_000)];
        let recoveries = recoveries(&records, &faults, 1, 3_000_000);
        assert_eq!(recoveries[0].recovery_ms, Some(0.0));
        assert_eq!(recoveries[1].calls, 0);
    }
}
