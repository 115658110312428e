//! The Envoy RLS v3 adapter: wire request in, decision through the [`Limiter`], wire response
//! out. Protobuf types stop here (and in `http`, which reuses [`RlsService::answer`]).

pub mod error;
pub mod request;
pub mod response;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::limiter::Limiter;
use crate::pb::rate_limit_service_server::RateLimitService;
use crate::pb::{RateLimitRequest, RateLimitResponse};
use crate::telemetry::{RequestMetrics, RequestResult};

pub use error::ServiceError;
pub use request::InputLimits;
pub use response::ResponseOptions;

/// `envoy.service.ratelimit.v3.RateLimitService` over a [`Limiter`].
#[derive(Debug, Clone)]
pub struct RlsService {
    limiter: Arc<Limiter>,
    input_limits: InputLimits,
    response_options: ResponseOptions,
    metrics: RequestMetrics,
}

impl RlsService {
    /// A service deciding with `limiter`. Its metrics go to the recorder installed by then
    /// ([`crate::telemetry::prometheus`]).
    pub fn new(
        limiter: Arc<Limiter>,
        input_limits: InputLimits,
        response_options: ResponseOptions,
    ) -> RlsService {
        RlsService {
            limiter,
            input_limits,
            response_options,
            metrics: RequestMetrics::new(),
        }
    }

    /// Validates, decides and answers one request: the whole of ShouldRateLimit.
    pub async fn answer(
        &self,
        request: RateLimitRequest,
    ) -> Result<RateLimitResponse, ServiceError> {
        let started = std::time::Instant::now();
        // A debug span: free unless RUST_LOG enables it (e.g. to export traces).
        let span = tracing::debug_span!(
            "should_rate_limit",
            domain = %request.domain,
            descriptors = request.descriptors.len()
        );
        let answer = if span.is_disabled() {
            self.decide(request).await
        } else {
            tracing::Instrument::instrument(self.decide(request), span).await
        };
        let result = match &answer {
            Ok(r) if r.overall_code == crate::pb::rate_limit_response::Code::OverLimit as i32 => {
                RequestResult::OverLimit
            }
            Ok(_) => RequestResult::Ok,
            Err(e) => e.request_result(),
        };
        self.metrics.record(result, started.elapsed());
        answer
    }

    async fn decide(&self, request: RateLimitRequest) -> Result<RateLimitResponse, ServiceError> {
        // The dynamic metadata repeats the request, which the query consumes.
        let echo = self
            .response_options
            .dynamic_metadata
            .then(|| response::request_metadata(&request));
        let query = request::to_query(request, &self.input_limits)?;
        if !self.limiter.config_loaded() {
            return Err(ServiceError::NoConfig);
        }
        let decision = self.limiter.decide(&query).await?;
        Ok(response::build(decision, &self.response_options, echo))
    }
}

#[tonic::async_trait]
impl RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let response = self.answer(request.into_inner()).await?;
        Ok(Response::new(response))
    }
}
