//! Load shedding for the gRPC server: at most a fixed number of calls in flight over all
//! connections; a call beyond that is refused at once with RESOURCE_EXHAUSTED, never queued.
//!
//! One atomic counter, so admitting a call takes no lock (tower's concurrency limit releases
//! each permit under a mutex that every worker thread shares).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tower::{BoxError, Layer, Service};

/// Limits the calls in flight of the services it wraps, all of them together.
#[derive(Debug, Clone)]
pub(crate) struct InFlightLimitLayer {
    gauge: Arc<InFlight>,
}

impl InFlightLimitLayer {
    /// At most `max` calls in flight (at least one).
    pub(crate) fn new(max: usize) -> InFlightLimitLayer {
        InFlightLimitLayer {
            gauge: Arc::new(InFlight {
                max: max.max(1),
                current: AtomicUsize::new(0),
            }),
        }
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> InFlightLimit<S> {
        InFlightLimit {
            inner,
            gauge: self.gauge.clone(),
        }
    }
}

#[derive(Debug)]
struct InFlight {
    max: usize,
    current: AtomicUsize,
}

/// A service whose calls count against a shared in-flight limit.
#[derive(Debug, Clone)]
pub(crate) struct InFlightLimit<S> {
    inner: S,
    gauge: Arc<InFlight>,
}

impl<S, R> Service<R> for InFlightLimit<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = InFlightCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> InFlightCall<S::Future> {
        if self.gauge.current.fetch_add(1, Ordering::AcqRel) >= self.gauge.max {
            self.gauge.current.fetch_sub(1, Ordering::AcqRel);
            return InFlightCall {
                state: CallState::Refused,
            };
        }
        InFlightCall {
            state: CallState::Admitted {
                future: self.inner.call(request),
                _place: PlaceHeld(self.gauge.clone()),
            },
        }
    }
}

/// Gives its place back when the call ends (or is dropped).
#[derive(Debug)]
struct PlaceHeld(Arc<InFlight>);

impl Drop for PlaceHeld {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A call through [`InFlightLimit`]: the inner call, or a refusal.
    pub struct InFlightCall<F> {
        #[pin]
        state: CallState<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = CallStateProjection]
    enum CallState<F> {
        Refused,
        Admitted {
            #[pin]
            future: F,
            _place: PlaceHeld,
        },
    }
}

impl<F, T, E> Future for InFlightCall<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            // tonic answers a Status error as a gRPC status.
            CallStateProjection::Refused => Poll::Ready(Err(Box::new(
                tonic::Status::resource_exhausted("too many calls in flight"),
            ))),
            CallStateProjection::Admitted { future, .. } => future.poll(cx).map_err(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::future::{Ready, ready};

    /// Answers at once; the test holds its calls' futures to keep them in flight.
    #[derive(Clone)]
    struct Echo;

    impl Service<u32> for Echo {
        type Response = u32;
        type Error = Infallible;
        type Future = Ready<Result<u32, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: u32) -> Self::Future {
            ready(Ok(request))
        }
    }

    fn outcome<F: Future<Output = Result<u32, BoxError>>>(call: F) -> Result<u32, tonic::Code> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match std::pin::pin!(call).poll(&mut cx) {
            Poll::Ready(Ok(v)) => Ok(v),
            Poll::Ready(Err(e)) => Err(e.downcast::<tonic::Status>().unwrap().code()),
            Poll::Pending => panic!("the echo service answers at once"),
        }
    }

    #[test]
    fn calls_beyond_the_limit_are_refused_until_one_ends() {
        let layer = InFlightLimitLayer::new(2);
        // Two services share the limit, as the server's services do.
        let mut a = layer.layer(Echo);
        let mut b = layer.layer(Echo);
        let first = a.call(1);
        let second = b.call(2);
        assert_eq!(outcome(a.call(3)), Err(tonic::Code::ResourceExhausted));
        assert_eq!(outcome(b.call(4)), Err(tonic::Code::ResourceExhausted));
        assert_eq!(outcome(first), Ok(1));
        // The finished call's place is free again; a refused call took none.
        let third = b.call(5);
        assert_eq!(outcome(a.call(6)), Err(tonic::Code::ResourceExhausted));
        drop(second);
        assert_eq!(outcome(a.call(7)), Ok(7));
        assert_eq!(outcome(third), Ok(5));
    }

    #[test]
    fn a_zero_limit_still_admits_one_call() {
        let mut service = InFlightLimitLayer::new(0).layer(Echo);
        let held = service.call(1);
        assert_eq!(
            outcome(service.call(2)),
            Err(tonic::Code::ResourceExhausted)
        );
        assert_eq!(outcome(held), Ok(1));
    }
}
