//! [`Guarded`]: a store behind the circuit breaker. Counter calls and API key look-ups (the
//! calls on a request's path) are refused at once while the circuit is open, timed, and
//! reported to the breaker; an outage is logged when it starts and when it ends, not per call.
//! Everything else (admin writes, flags, the tier mode) is asked of the store itself through
//! [`Guarded::unguarded`]: an operator sees the store's own error.

use std::future::Future;
use std::sync::Arc;

use super::{Check, Counted, CounterStore, Identity, StoreError, UserRegistry};
use crate::breaker::{BreakerSettings, BreakerState, CircuitBreaker, Permit, Transition};
use crate::clock::Clock;
use crate::telemetry::{self, LatencyHistogram};

/// A store whose request-path calls go through a circuit breaker.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    breaker: CircuitBreaker,
    clock: Arc<dyn Clock>,
    /// Counter call latency, refusals included (they are what the request waited for).
    latency: Arc<LatencyHistogram>,
}

impl<S> Guarded<S> {
    /// `inner` behind a breaker with `settings`, timing failures by `clock`.
    pub fn new(inner: S, settings: BreakerSettings, clock: Arc<dyn Clock>) -> Guarded<S> {
        Guarded {
            inner,
            breaker: CircuitBreaker::new(settings),
            clock,
            latency: LatencyHistogram::get(telemetry::STORE_DURATION, "op", "decide"),
        }
    }

    /// The store itself, for calls that must not wait on the breaker or count toward it.
    pub fn unguarded(&self) -> &S {
        &self.inner
    }

    /// The circuit's state now.
    pub fn state(&self) -> BreakerState {
        self.breaker.state(self.clock.now_ms())
    }

    /// Runs `call` unless the circuit is open, and tells the breaker how it went.
    async fn guard<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let permit = self.breaker.permit_with(|| self.clock.now_ms());
        if permit == Permit::Reject {
            return Err(StoreError::CircuitOpen);
        }
        let result = call.await;
        // Protocol errors are our bug, not the store's health.
        let healthy = !matches!(
            result,
            Err(StoreError::Timeout(_) | StoreError::Unavailable(_))
        );
        // A failure is timed when it is known (it may have taken the whole timeout); a success
        // needs no time.
        let finished = if healthy { 0 } else { self.clock.now_ms() };
        report(self.breaker.record(permit, healthy, finished), &result);
        result
    }
}

/// Logs a change of the circuit: once per outage, with its cause (single failures are logged
/// at debug only, by the limiter).
fn report<T>(transition: Transition, result: &Result<T, StoreError>) {
    match (transition, result) {
        (Transition::Opened, Err(e)) => tracing::warn!(
            error = %e,
            "store failing: circuit opened; requests get the failure mode until a probe succeeds"
        ),
        (Transition::Closed, _) => tracing::info!("store answering again: circuit closed"),
        (Transition::Failing, Err(e)) => tracing::warn!(
            error = %e,
            "store failing (circuit breaker off): requests get the failure mode"
        ),
        (Transition::Recovered, _) => tracing::info!("store answering again"),
        _ => {}
    }
}

impl<S: CounterStore> CounterStore for Guarded<S> {
    async fn apply(&self, checks: &[Check]) -> Result<Counted, StoreError> {
        let started = std::time::Instant::now();
        let counted = self.guard(self.inner.apply(checks)).await;
        self.latency.record(started.elapsed());
        let counted = counted?;
        if counted.counters.len() != checks.len() {
            return Err(StoreError::Protocol(format!(
                "{} counters for {} checks",
                counted.counters.len(),
                checks.len()
            )));
        }
        Ok(counted)
    }

    /// Health checks ask the store itself: a probe must not wait for the circuit.
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn observe(&self) {
        metrics::gauge!(telemetry::CIRCUIT_STATE).set(self.state().gauge());
        self.inner.observe();
    }
}

impl<S: UserRegistry> Guarded<S> {
    /// The owner of `api_key` in `domain`: on a request's path (an owner-cache miss), so
    /// guarded like the counters.
    pub async fn identity(
        &self,
        domain: &str,
        api_key: &str,
    ) -> Result<Option<Identity>, StoreError> {
        // Boxed: a cache miss is rare, and the store call would grow every request's future.
        self.guard(Box::pin(self.inner.identity(domain, api_key)))
            .await
    }
}
