//! The HTTP side: `GET /healthcheck` for load balancers and `POST /json`, the RLS call as
//! JSON, so anyone can try a config with curl.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::decision::FailureMode;
use crate::limiter::Limiter;
use crate::pb::{RateLimitRequest, rate_limit_response};
use crate::rls::RlsService;

/// Largest `/json` body accepted; far above any request the input caps allow through.
pub(crate) const MAX_JSON_BODY: usize = 1 << 20;

/// What the HTTP handlers share.
#[derive(Debug)]
pub(crate) struct HttpState {
    /// The RLS service, for `/json`.
    pub rls: RlsService,
    /// The limiter, for health checks of its store.
    pub limiter: Arc<Limiter>,
    /// False once shutdown has begun.
    pub serving: Arc<AtomicBool>,
    /// Renders /metrics.
    pub metrics: PrometheusHandle,
    /// What health needs of the config.
    pub config_health: crate::health::ConfigHealth,
}

/// The HTTP routes.
pub(crate) fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthcheck", get(healthcheck))
        .route("/readyz", get(readyz))
        .route("/livez", get(livez))
        .route("/metrics", get(metrics))
        .route("/json", post(json))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .with_state(state)
}

/// Why a replica is not healthy.
enum Unhealthy {
    ShuttingDown,
    NoConfig,
    /// The store does not answer.
    Store(crate::store::StoreError),
}

/// Whether this replica is serving, has the config health asks for, and reaches its store.
async fn health(state: &HttpState) -> Result<(), Unhealthy> {
    if !state.serving.load(Ordering::Acquire) {
        return Err(Unhealthy::ShuttingDown);
    }
    if !state.config_health.holds(&state.limiter) {
        return Err(Unhealthy::NoConfig);
    }
    state.limiter.ping().await.map_err(Unhealthy::Store)
}

/// 200 `OK` while serving and the store answers (and, when asked, a config with a domain is
/// loaded); 500 otherwise, with the reason.
async fn healthcheck(State(state): State<Arc<HttpState>>) -> Response {
    health_response(health(&state).await)
}

/// The HTTP answer to a health check's outcome.
fn health_response(health: Result<(), Unhealthy>) -> Response {
    let error = |reason: String| (StatusCode::INTERNAL_SERVER_ERROR, reason).into_response();
    match health {
        Ok(()) => (StatusCode::OK, "OK\n").into_response(),
        Err(Unhealthy::ShuttingDown) => error("shutting down\n".into()),
        Err(Unhealthy::NoConfig) => error("no config loaded\n".into()),
        Err(Unhealthy::Store(e)) => error(format!("{e}\n")),
    }
}

/// As /healthcheck, except that a store that does not answer leaves the replica ready when
/// its failure mode answers without the store (allow, deny, local): taking every replica out
/// of the Service during a Redis outage would leave Envoy nobody to ask, whatever the failure
/// mode says. For Kubernetes readiness probes.
async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let answers_without_store = state.limiter.options().failure_mode != FailureMode::Error;
    match health(&state).await {
        Err(Unhealthy::Store(e)) if answers_without_store => (
            StatusCode::OK,
            format!("OK (the store does not answer; the failure mode decides: {e})\n"),
        )
            .into_response(),
        other => health_response(other),
    }
}

/// 200 while the process runs its event loop: restarts help only when this fails.
async fn livez() -> &'static str {
    "OK\n"
}

/// The Prometheus text exposition of every metric.
async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    metrics_text(&state.metrics)
}

fn metrics_text(handle: &PrometheusHandle) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(handle),
    )
        .into_response()
}

/// A RateLimitRequest as proto3 JSON in; the response as JSON out, with 200 for OK, 429 for
/// OVER_LIMIT, 400 for a bad request and 503 when the store cannot answer.
async fn json(State(state): State<Arc<HttpState>>, body: Bytes) -> Response {
    let request: RateLimitRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid JSON request: {e}"),
            );
        }
    };
    match state.rls.answer(request).await {
        Ok(response) => {
            let status = if response.overall_code == rate_limit_response::Code::OverLimit as i32 {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::OK
            };
            match serde_json::to_string(&response) {
                Ok(body) => {
                    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        Err(e) => error(e.http_status(), &e.to_string()),
    }
}

/// The metrics alone at `path` (`--reference-metrics-addr`, the reference's PROMETHEUS_ADDR).
pub(crate) fn metrics_router(handle: PrometheusHandle, path: &str) -> Router {
    let path = if path.is_empty() { "/metrics" } else { path };
    Router::new().route(
        path,
        get(move || {
            let handle = handle.clone();
            async move { metrics_text(&handle) }
        }),
    )
}

/// The debug endpoints (`--debug-addr`, the reference's DEBUG_PORT): `/rlconfig`, the loaded
/// limits as text; `/stats`, the metrics (where the reference prints its counters); and `/`
/// listing them.
pub(crate) fn debug_router(limiter: Arc<Limiter>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async {
                "/rlconfig: the loaded rate limit configuration\n\
                 /stats: the metrics, in the Prometheus text format\n"
            }),
        )
        .route(
            "/stats",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics_text(&metrics) }
            }),
        )
        .route(
            "/rlconfig",
            get(move || {
                let limiter = limiter.clone();
                async move { limiter.config().dump() }
            }),
        )
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
