//! Runs the gRPC and HTTP servers (and the admin API's, when it has a listener of its own) on
//! given listeners until a shutdown future resolves: overload protection on gRPC, TLS on both,
//! the standard health service, a background task that keeps shared state and gauges fresh,
//! config hot reload, and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError, LoadOptions};
use crate::health::ConfigHealth;
use crate::http::{self, HttpState};
use crate::limiter::Limiter;
use crate::overload::InFlightLimitLayer;
use crate::pb::rate_limit_service_server::RateLimitServiceServer;
use crate::rls::{InputLimits, ResponseOptions, RlsService};
use crate::secrets::{Secret, SecretError};
use crate::store::StoreError;
use crate::telemetry;
pub use crate::tls::{GrpcTls, ListenerTls};
use crate::tls::{Protocol, ServerTls, TlsError};

/// The gRPC service name health checks ask about.
pub const RLS_SERVICE_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// The name envoyproxy/ratelimit reports its health under, which probes written for it ask.
pub const REFERENCE_HEALTH_NAME: &str = "ratelimit";

/// Why the server stopped or could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The initial config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be set up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound, a file read, or a server failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: io::Error,
    },
    /// gRPC over a Unix socket is served in plaintext only.
    #[error("gRPC TLS is served on TCP only: drop --grpc-uds or the TLS certificate")]
    UnixWithTls,
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// Settings that do not go together.
    #[error("{0}")]
    Settings(String),
    /// A TLS file cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A secret file cannot be used.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// The bound sockets the servers accept on.
#[derive(Debug)]
pub struct Listeners {
    /// For ShouldRateLimit and gRPC health.
    pub grpc: GrpcListener,
    /// For /healthcheck, /json, /metrics, and /admin unless [`Listeners::admin`] is given.
    pub http: TcpListener,
    /// For /admin alone, when the admin API has a listener of its own (`--admin-addr`).
    pub admin: Option<TcpListener>,
    /// For the debug endpoints (`/rlconfig`), when asked for.
    pub debug: Option<TcpListener>,
    /// A second metrics listener (the reference's PROMETHEUS_ADDR), when asked for.
    pub metrics: Option<TcpListener>,
}

/// Where gRPC is served: a TCP address, or a Unix socket (the reference's GRPC_UDS).
#[derive(Debug)]
pub enum GrpcListener {
    /// TCP, plaintext or TLS.
    Tcp(TcpListener),
    /// A Unix socket, plaintext.
    Unix(tokio::net::UnixListener),
}

impl From<TcpListener> for GrpcListener {
    fn from(listener: TcpListener) -> GrpcListener {
        GrpcListener::Tcp(listener)
    }
}

/// Where configs come from once the server runs. Either way the source validates each config
/// and hands the valid ones to the server, which installs them all alike.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// Domain files, polled for changes (and reloaded on SIGHUP).
    Files(FileSource),
    /// An xDS control plane, state of the world.
    Xds(Box<crate::xds::XdsOptions>),
}

/// Domain files, for hot reload.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// The file or directory.
    pub path: PathBuf,
    /// How often to look for changes; zero disables watching (SIGHUP still reloads).
    pub poll_interval: Duration,
    /// Notified to reload now (SIGHUP).
    pub reload: Arc<Notify>,
    /// How its files become a config.
    pub load: LoadOptions,
}

/// How the gRPC server protects itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protection {
    /// Deadline of one call; past it the call fails with CANCELLED.
    pub request_timeout: Duration,
    /// Calls in flight at once, over all connections; more are refused at once
    /// (RESOURCE_EXHAUSTED) instead of queueing.
    pub max_concurrent: usize,
    /// HTTP/2 keepalive ping interval (`None`: no pings).
    pub keepalive_interval: Option<Duration>,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Connections are closed (GOAWAY) after this age, so clients reconnect and spread over
    /// new replicas after a scale-up.
    pub max_connection_age: Option<Duration>,
    /// After that age, how long calls in flight may take (`None`: the request timeout).
    pub max_connection_age_grace: Option<Duration>,
}

impl Default for Protection {
    /// A rate limit call that takes a second has failed already; Envoy's own default timeout
    /// is 20 ms. 10,000 calls in flight is far above what a replica can serve well.
    fn default() -> Protection {
        Protection {
            request_timeout: Duration::from_secs(1),
            max_concurrent: 10_000,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(10),
            max_connection_age: None,
            max_connection_age_grace: None,
        }
    }
}

/// Request handling options.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Request caps.
    pub input_limits: InputLimits,
    /// Response decorations.
    pub response_options: ResponseOptions,
    /// The admin key; `None` keeps the admin API closed.
    pub admin_key: Option<Secret>,
    /// Overload protection and connection management.
    pub protection: Protection,
    /// TLS for gRPC; `None` serves plaintext (h2c).
    pub grpc_tls: Option<GrpcTls>,
    /// TLS for HTTP and the admin listener; `None` serves plaintext.
    pub http_tls: Option<ListenerTls>,
    /// Where to reload the config from; `None` disables reloading.
    pub config_source: Option<ConfigSource>,
    /// After shutdown begins, how long in-flight calls may take before the server stops anyway.
    pub shutdown_grace: Duration,
    /// The path of the metrics on [`Listeners::metrics`] (`/metrics` when empty).
    pub metrics_path: String,
    /// What config health waits for.
    pub config_health: ConfigHealth,
}

/// Serves `limiter` on `listeners` until `shutdown` resolves; then reports NOT_SERVING, stops
/// accepting, lets in-flight calls finish (within the grace period) and returns.
pub async fn run(
    limiter: Arc<Limiter>,
    options: ServerOptions,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let shared = Shared {
        limiter,
        metrics: telemetry::prometheus(),
        serving: Arc::new(AtomicBool::new(true)),
        stop: CancellationToken::new(),
    };
    let rls = RlsService::new(
        shared.limiter.clone(),
        options.input_limits,
        options.response_options.clone(),
    );
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, ServingStatus::NotServing).await;
    let router = grpc_router(options.protection)
        .add_service(health_service)
        .add_service(RateLimitServiceServer::new(rls.clone()));
    let (grpc, tls_watcher) = serve_grpc(router, listeners.grpc, &options, &shared.stop)?;
    let http_listeners = (listeners.http, listeners.admin);
    let (http, http_tls_watcher) = serve_http(http_listeners, rls, &shared, &options)
        // Stops what the gRPC side started (its TLS accept loop and watcher).
        .inspect_err(|_| shared.stop.cancel())?;
    let mut tasks = side_tasks(&shared, &options, listeners.debug, listeners.metrics);
    tasks.extend([tls_watcher, http_tls_watcher]);
    tasks.push(Some(tokio::spawn(keep_fresh(
        shared.limiter.clone(),
        health_reporter.clone(),
        shared.serving.clone(),
        options.config_health,
        shared.stop.clone(),
    ))));
    tasks.push(Some(tokio::spawn(begin_shutdown(
        shutdown,
        shared.serving.clone(),
        health_reporter,
        shared.stop.clone(),
    ))));
    let result = serve_until_done(grpc, http, &shared.stop, options.shutdown_grace).await;
    for task in tasks.into_iter().flatten() {
        task.abort();
    }
    result
}

/// What the servers and their tasks share.
struct Shared {
    limiter: Arc<Limiter>,
    metrics: PrometheusHandle,
    /// False once shutdown has begun.
    serving: Arc<AtomicBool>,
    stop: CancellationToken,
}

/// The tasks beside the two servers: config reloads, the debug and second metrics listeners.
fn side_tasks(
    shared: &Shared,
    options: &ServerOptions,
    debug: Option<TcpListener>,
    metrics: Option<TcpListener>,
) -> Vec<Option<JoinHandle<()>>> {
    let (limiter, stop) = (&shared.limiter, &shared.stop);
    vec![
        options
            .config_source
            .clone()
            .map(|source| tokio::spawn(follow_config(limiter.clone(), source, stop.clone()))),
        debug.map(|listener| {
            let app = http::debug_router(limiter.clone(), shared.metrics.clone());
            serve_side(listener, app, "debug", stop)
        }),
        metrics.map(|listener| {
            let app = http::metrics_router(shared.metrics.clone(), &options.metrics_path);
            serve_side(listener, app, "metrics", stop)
        }),
    ]
}

/// The HTTP server (/healthcheck, /json, /metrics, and /admin unless the admin API has a
/// listener of its own) and the admin server, until `stop`; with TLS, Floodgate does the
/// handshakes itself for both (and reloads the files: the second value is that task).
fn serve_http(
    (http, admin): (TcpListener, Option<TcpListener>),
    rls: RlsService,
    shared: &Shared,
    options: &ServerOptions,
) -> Result<(ServeFuture, Option<JoinHandle<()>>), ServerError> {
    let tls = match options.http_tls.clone() {
        Some(settings) => Some(Arc::new(ServerTls::load(settings, Protocol::Http)?)),
        None => None,
    };
    let admin_app = admin::router(Arc::new(AdminState::new(
        shared.limiter.clone(),
        options.admin_key.clone(),
    )));
    let app = http::router(Arc::new(HttpState {
        rls,
        limiter: shared.limiter.clone(),
        serving: shared.serving.clone(),
        metrics: shared.metrics.clone(),
        config_health: options.config_health,
    }));
    let stop = &shared.stop;
    let (http, admin) = match admin {
        Some(admin) => (
            serve_app(http, app, tls.clone(), "HTTP", stop),
            Some(serve_app(admin, admin_app, tls.clone(), "admin", stop)),
        ),
        None => (
            serve_app(http, app.merge(admin_app), tls.clone(), "HTTP", stop),
            None,
        ),
    };
    let watcher = tls.map(|tls| tokio::spawn(tls.watch(stop.clone())));
    let both = async move {
        let admin = async move {
            match admin {
                Some(admin) => admin.await,
                None => Ok(()),
            }
        };
        let (http, admin) = tokio::join!(http, admin);
        http.and(admin)
    };
    Ok((Box::pin(both), watcher))
}

/// A running HTTP server.
type ServeFuture = Pin<Box<dyn Future<Output = Result<(), ServerError>> + Send>>;

/// Serves `app` on `listener` (over TLS with `tls`) until `stop`; handlers learn the client's
/// address (`ConnectInfo<SocketAddr>`). `what` names the server in errors.
fn serve_app(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<ServerTls>>,
    what: &'static str,
    stop: &CancellationToken,
) -> ServeFuture {
    use axum::serve::ListenerExt;
    let stopped = stop.clone().cancelled_owned();
    let failed = move |source| ServerError::Io {
        what: format!("{what} server"),
        source,
    };
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => Box::pin(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stopped);
            serve.await.map_err(failed)
        }),
        Some(tls) => {
            // `tap_io` makes the listener's address the connection info axum knows.
            let listener = crate::tls::listener(listener, tls, stop.clone()).tap_io(|_| {});
            Box::pin(async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(stopped);
                serve.await.map_err(failed)
            })
        }
    }
}

/// The gRPC server with its overload protection and connection management.
fn grpc_router(protection: Protection) -> tonic::transport::Server<Protected> {
    let mut builder = tonic::transport::Server::builder()
        .timeout(protection.request_timeout)
        .http2_keepalive_interval(protection.keepalive_interval)
        .http2_keepalive_timeout(Some(protection.keepalive_timeout));
    if let Some(age) = protection.max_connection_age {
        builder = builder.max_connection_age(age).max_connection_age_grace(
            protection
                .max_connection_age_grace
                .unwrap_or(protection.request_timeout),
        );
    }
    builder.layer(InFlightLimitLayer::new(protection.max_concurrent))
}

/// The gRPC server running on `listener` until `stop`; with TLS, Floodgate accepts and does
/// the handshakes itself (and reloads the files: the second value is that task).
fn serve_grpc(
    router: tonic::transport::server::Router<Protected>,
    listener: GrpcListener,
    options: &ServerOptions,
    stop: &CancellationToken,
) -> Result<(GrpcFuture, Option<JoinHandle<()>>), ServerError> {
    let tls = match options.grpc_tls.clone() {
        Some(settings) => Some(Arc::new(ServerTls::load(settings, Protocol::Grpc)?)),
        None => None,
    };
    let stopped = stop.clone().cancelled_owned();
    Ok(match (listener, tls) {
        (GrpcListener::Tcp(listener), Some(tls)) => (
            Box::pin(router.serve_with_incoming_shutdown(
                crate::tls::incoming(listener, tls.clone(), stop.clone()),
                stopped,
            )),
            Some(tokio::spawn(tls.watch(stop.clone()))),
        ),
        (GrpcListener::Tcp(listener), None) => {
            (
                Box::pin(router.serve_with_incoming_shutdown(
                    no_delay(TcpListenerStream::new(listener)),
                    stopped,
                )),
                None,
            )
        }
        (GrpcListener::Unix(listener), None) => (
            Box::pin(router.serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                stopped,
            )),
            None,
        ),
        (GrpcListener::Unix(_), Some(_)) => return Err(ServerError::UnixWithTls),
    })
}

/// The layers around every gRPC service: the limit on calls in flight.
type Protected = tower::layer::util::Stack<InFlightLimitLayer, tower::layer::util::Identity>;

/// The running gRPC server.
type GrpcFuture = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Serves `app` on a side listener (debug, metrics) until `stop`.
fn serve_side(
    listener: TcpListener,
    app: axum::Router,
    what: &'static str,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let stopped = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::warn!(error = %e, "the {what} listener stopped");
        }
    })
}

/// Once `shutdown` resolves: not serving, NOT_SERVING on gRPC health, then `stop`.
async fn begin_shutdown(
    shutdown: impl Future<Output = ()>,
    serving: Arc<AtomicBool>,
    reporter: HealthReporter,
    stop: CancellationToken,
) {
    shutdown.await;
    tracing::info!("shutting down: not serving, finishing in-flight calls");
    serving.store(false, Ordering::Release);
    set_health(&reporter, ServingStatus::NotServing).await;
    stop.cancel();
}

/// Runs both servers until they finish, or until the grace period after `stop` is over.
async fn serve_until_done(
    grpc: GrpcFuture,
    http: ServeFuture,
    stop: &CancellationToken,
    grace: Duration,
) -> Result<(), ServerError> {
    let servers = async { tokio::join!(grpc, http) };
    tokio::pin!(servers);
    let (grpc, http) = tokio::select! {
        results = &mut servers => results,
        () = async {
            // Once shutdown has begun, in-flight calls get the grace period and no more.
            stop.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "grace period over: stopping with calls still in flight");
            (Ok(()), Ok(()))
        }
    };
    grpc?;
    http
}

/// Accepted connections with TCP_NODELAY: answers are small writes that must leave at once
/// (with Nagle and delayed ACKs they can wait 40 ms).
fn no_delay(
    incoming: TcpListenerStream,
) -> impl tokio_stream::Stream<Item = io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    incoming.map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(RLS_SERVICE_NAME, status).await;
    reporter
        .set_service_status(REFERENCE_HEALTH_NAME, status)
        .await;
}

/// Every half cache TTL: re-reads the shared health state (so no replica's view is older than
/// the TTL), seeds the config's API keys until that has worked once, reports gRPC health
/// (SERVING only while the store answers) and publishes the gauges.
async fn keep_fresh(
    limiter: Arc<Limiter>,
    reporter: HealthReporter,
    serving: Arc<AtomicBool>,
    config_health: ConfigHealth,
    stop: CancellationToken,
) {
    let period = (limiter.options().cache_ttl / 2).max(Duration::from_millis(50));
    let mut seeded = false;
    let mut last = None;
    loop {
        let store_ok = limiter.ping().await.is_ok();
        if store_ok {
            limiter.heartbeat().await;
            if let Err(e) = limiter.tiers().refresh_mode().await {
                tracing::debug!(error = %e, "could not refresh the tier mode");
            }
            if !seeded {
                match limiter.seed_registry().await {
                    Ok(()) => seeded = true,
                    Err(e) => tracing::warn!(error = %e, "could not seed API keys yet; retrying"),
                }
            }
        }
        let config_ok = config_health.holds(&limiter);
        let status = if store_ok && config_ok && serving.load(Ordering::Acquire) {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            tracing::info!(?status, "gRPC health");
            set_health(&reporter, status).await;
            last = Some(status);
        }
        limiter.observe();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// Installs every config `source` hands on, until `stop`.
async fn follow_config(limiter: Arc<Limiter>, source: ConfigSource, stop: CancellationToken) {
    let (configs, mut incoming) = tokio::sync::mpsc::channel::<Config>(1);
    let producer = match source {
        ConfigSource::Files(files) => tokio::spawn(watch_files(
            files,
            limiter.config().version().to_owned(),
            configs,
            stop.clone(),
        )),
        ConfigSource::Xds(options) => {
            tokio::spawn(crate::xds::run(*options, configs, stop.clone()))
        }
    };
    while let Some(config) = incoming.recv().await {
        install(&limiter, config).await;
    }
    producer.abort();
}

/// Loads the config files when they change (polled, which also sees Kubernetes ConfigMap
/// symlink swaps) or when asked (SIGHUP), and hands on each new valid config; an invalid one
/// is logged and counted, and the old one keeps serving.
async fn watch_files(
    source: FileSource,
    mut version: String,
    configs: tokio::sync::mpsc::Sender<Config>,
    stop: CancellationToken,
) {
    let mut seen = fingerprint(&source.path, &source.load);
    loop {
        let poll = async {
            if source.poll_interval.is_zero() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(source.poll_interval).await;
        };
        let asked = tokio::select! {
            () = stop.cancelled() => return,
            () = source.reload.notified() => true,
            () = poll => false,
        };
        let now = fingerprint(&source.path, &source.load);
        if !asked && now == seen {
            continue;
        }
        seen = now;
        match Config::load_with(&source.path, &source.load) {
            Ok(config) if config.version() == version => {}
            Ok(config) => {
                version = config.version().to_owned();
                if configs.send(config).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; still serving the previous config");
                metrics::counter!(telemetry::CONFIG_RELOADS, "result" => "failure").increment(1);
                record_config_load(false);
            }
        }
    }
}

/// Puts a new valid config in force for every request from now on.
async fn install(limiter: &Limiter, config: Config) {
    tracing::info!(domains = ?config.domain_names(), version = config.version(), "config reloaded");
    limiter.replace_config(config);
    metrics::counter!(telemetry::CONFIG_RELOADS, "result" => "success").increment(1);
    record_config_load(true);
    if let Err(e) = limiter.seed_registry().await {
        tracing::warn!(error = %e, "could not seed the reloaded config's API keys");
    }
}

/// Counts a config load under the reference's names, when those are served.
pub(crate) fn record_config_load(loaded: bool) {
    if let Some(reference) = telemetry::reference::installed() {
        reference.record_config_load(loaded);
    }
}

/// A cheap summary of the config files' contents: changes when any file changes (or one is
/// added or removed).
fn fingerprint(path: &std::path::Path, load: &LoadOptions) -> u64 {
    let mut bytes = Vec::new();
    for file in crate::config::source_files(path, load).unwrap_or_default() {
        bytes.extend_from_slice(file.as_os_str().as_encoded_bytes());
        if let Ok(content) = std::fs::read(&file) {
            bytes.extend_from_slice(&content);
        }
    }
    crate::hash::fnv1a(&bytes)
}
