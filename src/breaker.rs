//! A circuit breaker in front of the store: after `threshold` consecutive failures it opens and
//! calls fail at once (no connection attempt, no timeout), until a cool-down has passed; then
//! one probe call goes through (half-open): success closes it, failure opens it again. An
//! outage then costs microseconds per request instead of a timeout each.
//!
//! With the breaker off (threshold 0) it still notices when calls start and stop failing, so
//! an outage is reported all the same (at most once per cool-down, so a flapping store cannot
//! flood the log).
//!
//! Lock-free: a few atomics read on every call, written only on state changes.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Settings of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit; 0 disables the breaker.
    pub threshold: u32,
    /// How long the circuit stays open before a probe, in milliseconds.
    pub cooldown_ms: u64,
}

impl Default for BreakerSettings {
    /// Five failures in a row is past a blip. A quarter of a second between probes notices a
    /// recovered store (a Sentinel failover's new master) within 250 ms, for one call's risk per
    /// probe: with a second, a master kill took 3.2 s to recover from in the chaos soak.
    fn default() -> BreakerSettings {
        BreakerSettings {
            threshold: 5,
            cooldown_ms: 250,
        }
    }
}

/// The breaker's state, for metrics and health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail at once.
    Open,
    /// One probe call is deciding.
    HalfOpen,
}

impl BreakerState {
    /// The state as a number for the `floodgate_circuit_state` gauge.
    pub const fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// What the breaker says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Make the call.
    Call,
    /// Make the call: it is the probe that decides whether the circuit closes.
    Probe,
    /// Do not call: the circuit is open.
    Reject,
}

/// A change of the circuit that a call's outcome made, worth telling the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed (or the circuit stays open after a failed probe).
    None,
    /// The failures reached the threshold: calls now fail at once.
    Opened,
    /// A call succeeded on an open circuit: calls go through again.
    Closed,
    /// With the breaker off: a call failed where calls had succeeded (reported at most once
    /// per cool-down).
    Failing,
    /// With the breaker off: a call succeeded after a reported failure.
    Recovered,
}

/// Counts failures and opens the circuit; see the module doc.
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    consecutive_failures: AtomicU32,
    /// When the circuit opened (Unix ms); 0 while closed.
    opened_at: AtomicU64,
    probing: AtomicBool,
    /// With the breaker off: a failure was reported and no success has followed it yet.
    failing: AtomicBool,
    /// With the breaker off: when a failure was last reported (Unix ms); 0: never.
    failing_reported_at: AtomicU64,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> CircuitBreaker {
        CircuitBreaker {
            settings,
            consecutive_failures: AtomicU32::new(0),
            opened_at: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            failing_reported_at: AtomicU64::new(0),
        }
    }

    /// May a call be made at `now_ms`?
    pub fn permit(&self, now_ms: u64) -> Permit {
        self.permit_with(|| now_ms)
    }

    /// May a call be made now? `now_ms` is asked only while the circuit is open: a closed
    /// circuit, every call's case, reads no clock.
    pub fn permit_with(&self, now_ms: impl FnOnce() -> u64) -> Permit {
        let opened_at = self.opened_at.load(Ordering::Acquire);
        if opened_at == 0 {
            return Permit::Call;
        }
        if now_ms() < opened_at.saturating_add(self.settings.cooldown_ms) {
            return Permit::Reject;
        }
        // Cool-down over: exactly one caller gets to probe.
        if self.probing.swap(true, Ordering::AcqRel) {
            Permit::Reject
        } else {
            Permit::Probe
        }
    }

    /// Records the outcome of a call made under `permit`; says whether that opened or closed
    /// the circuit, or with the breaker off, began or ended a failing spell (each change is
    /// reported to one caller only).
    pub fn record(&self, permit: Permit, success: bool, now_ms: u64) -> Transition {
        if success {
            // Read first: a store on every call would bounce the line between cores.
            if self.consecutive_failures.load(Ordering::Acquire) != 0 {
                self.consecutive_failures.store(0, Ordering::Release);
            }
            // Only the breaker off ever sets `failing`: with it on, no atomic is read for it.
            if self.settings.threshold == 0
                && self.failing.load(Ordering::Acquire)
                && self.failing.swap(false, Ordering::AcqRel)
            {
                return Transition::Recovered;
            }
            if permit == Permit::Probe || self.opened_at.load(Ordering::Acquire) != 0 {
                let was_open = self.opened_at.swap(0, Ordering::AcqRel) != 0;
                self.probing.store(false, Ordering::Release);
                if was_open {
                    return Transition::Closed;
                }
            }
            return Transition::None;
        }
        if permit == Permit::Probe {
            // The probe failed: open again for another cool-down.
            self.opened_at.store(now_ms.max(1), Ordering::Release);
            self.probing.store(false, Ordering::Release);
            return Transition::None;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if self.settings.threshold == 0 {
            let last = self.failing_reported_at.load(Ordering::Acquire);
            let due = last == 0 || now_ms >= last.saturating_add(self.settings.cooldown_ms);
            if due && !self.failing.swap(true, Ordering::AcqRel) {
                self.failing_reported_at
                    .store(now_ms.max(1), Ordering::Release);
                return Transition::Failing;
            }
        } else if failures >= self.settings.threshold {
            // Only the first caller to see the threshold opens it (and dates it).
            let opened = self.opened_at.compare_exchange(
                0,
                now_ms.max(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if opened.is_ok() {
                return Transition::Opened;
            }
        }
        Transition::None
    }

    /// The state at `now_ms`.
    pub fn state(&self, now_ms: u64) -> BreakerState {
        let opened_at = self.opened_at.load(Ordering::Acquire);
        if opened_at == 0 {
            BreakerState::Closed
        } else if self.probing.load(Ordering::Acquire)
            || now_ms >= opened_at.saturating_add(self.settings.cooldown_ms)
        {
            BreakerState::HalfOpen
        } else {
            BreakerState::Open
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_after_cooldown() {
        let breaker = CircuitBreaker::new(BreakerSettings {
            threshold: 3,
            cooldown_ms: 100,
        });
        for _ in 0..2 {
            assert_eq!(breaker.permit(0), Permit::Call);
            assert_eq!(breaker.record(Permit::Call, false, 10), Transition::None);
        }
        // a success resets the count
        assert_eq!(breaker.record(Permit::Call, true, 10), Transition::None);
        let opening: Vec<Transition> = (0..4)
            .map(|_| breaker.record(Permit::Call, false, 10))
            .collect();
        // the third failure in a row opens it, and only that one says so
        use Transition::{Closed, Opened};
        let none = Transition::None;
        assert_eq!(opening, [none, none, Opened, none]);
        assert_eq!(breaker.state(10), BreakerState::Open);
        assert_eq!(breaker.permit(109), Permit::Reject);
        // after the cool-down, one probe; everyone else is still refused
        assert_eq!(breaker.permit(110), Permit::Probe);
        assert_eq!(breaker.permit(110), Permit::Reject);
        assert_eq!(breaker.state(110), BreakerState::HalfOpen);
        // the probe fails: open again, counted from now (not news: it was open)
        assert_eq!(breaker.record(Permit::Probe, false, 120), none);
        assert_eq!(breaker.permit(200), Permit::Reject);
        assert_eq!(breaker.permit(220), Permit::Probe);
        assert_eq!(breaker.record(Permit::Probe, true, 221), Closed);
        assert_eq!(breaker.state(221), BreakerState::Closed);
        // a late success of a call let through before it opened closes it too, once
        for _ in 0..3 {
            breaker.record(Permit::Call, false, 230);
        }
        assert_eq!(breaker.record(Permit::Call, true, 231), Closed);
        assert_eq!(breaker.record(Permit::Call, true, 231), none);
        assert_eq!(breaker.permit(221), Permit::Call);
    }

    #[test]
    fn threshold_zero_never_opens() {
        let breaker = CircuitBreaker::new(BreakerSettings {
            threshold: 0,
            cooldown_ms: 100,
        });
        assert_eq!(breaker.record(Permit::Call, false, 1), Transition::Failing);
        for _ in 0..100 {
            assert_eq!(breaker.record(Permit::Call, false, 1), Transition::None);
        }
        assert_eq!(breaker.permit(2), Permit::Call);
    }

    #[test]
    fn threshold_zero_reports_failing_spells_once_per_cooldown() {
        let breaker = CircuitBreaker::new(BreakerSettings {
            threshold: 0,
            cooldown_ms: 100,
        });
        let record = |success, now| breaker.record(Permit::Call, success, now);
        assert_eq!(
            record(true, 10),
            Transition::None,
            "nothing to recover from"
        );
        assert_eq!(record(false, 20), Transition::Failing);
        assert_eq!(record(false, 30), Transition::None, "the same spell");
        assert_eq!(record(true, 40), Transition::Recovered);
        assert_eq!(record(true, 50), Transition::None);
        // Flapping within the cool-down: neither the failure nor the recovery is reported.
        assert_eq!(record(false, 60), Transition::None);
        assert_eq!(record(true, 70), Transition::None);
        assert_eq!(record(false, 120), Transition::Failing, "a cool-down later");
        assert_eq!(record(true, 130), Transition::Recovered);
    }
}
