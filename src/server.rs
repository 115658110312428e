//! Runs the gRPC and HTTP servers on given listeners until a shutdown future resolves.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::clock::SystemClock;
use crate::config::{Config, ConfigError};
use crate::decision::PlanOptions;
use crate::http::{self, HttpState};
use crate::limiter::Limiter;
use crate::pb::rate_limit_service_server::RateLimitServiceServer;
use crate::rls::{InputLimits, ResponseOptions, RlsService};
use crate::settings::{ServeSettings, StoreKind};
use crate::store::redis::RedisOptions;
use crate::store::{MemoryStore, RedisStore, Store, StoreError};

/// Why the server stopped or could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The initial config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be set up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound or failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// The bound sockets the servers accept on.
#[derive(Debug)]
pub struct Listeners {
    /// For ShouldRateLimit.
    pub grpc: TcpListener,
    /// For /healthcheck and /json.
    pub http: TcpListener,
}

/// Request handling options.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Request caps.
    pub input_limits: InputLimits,
    /// Response decorations.
    pub response_options: ResponseOptions,
}

/// Serves `limiter` on `listeners` until `shutdown` resolves, then stops accepting, lets
/// in-flight calls finish and returns.
pub async fn run<S: Store>(
    limiter: Arc<Limiter<S>>,
    options: ServerOptions,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let serving = Arc::new(AtomicBool::new(true));
    let stop = CancellationToken::new();
    let rls = RlsService::new(
        limiter.clone(),
        options.input_limits,
        options.response_options,
    );

    let grpc = tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(rls.clone()))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listeners.grpc),
            stop.clone().cancelled_owned(),
        );
    let state = Arc::new(HttpState {
        rls,
        limiter,
        serving: serving.clone(),
    });
    let http = axum::serve(listeners.http, http::router(state))
        .with_graceful_shutdown(stop.clone().cancelled_owned());

    let trigger = tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight calls");
        serving.store(false, Ordering::Release);
        stop.cancel();
    });
    let (grpc, http) = tokio::join!(grpc, async {
        http.await.map_err(|source| ServerError::Io {
            what: "HTTP server".into(),
            source,
        })
    });
    trigger.abort();
    grpc?;
    http
}

/// `floodgate serve`: loads the config, builds the store, binds the addresses and runs until
/// `shutdown` resolves.
pub async fn serve(
    settings: &ServeSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let config = Config::load(&settings.config)?;
    tracing::info!(domains = ?config.domain_names(), path = %settings.config.display(), "config loaded");
    let listeners = Listeners {
        grpc: bind(settings.grpc_addr, "gRPC").await?,
        http: bind(settings.http_addr, "HTTP").await?,
    };
    let plan_options = PlanOptions {
        key_prefix: settings.key_prefix.clone(),
        global_shadow: settings.shadow_mode,
    };
    let options = ServerOptions {
        input_limits: settings.input_limits(),
        response_options: ResponseOptions {
            limit_headers: settings.response_headers,
        },
    };
    tracing::info!(grpc = %settings.grpc_addr, http = %settings.http_addr, store = ?settings.store, "serving");
    match settings.store {
        StoreKind::Memory => {
            let store = MemoryStore::new(Arc::new(SystemClock), settings.memory_max_keys);
            let limiter = Arc::new(Limiter::new(config, store, plan_options));
            run(limiter, options, listeners, shutdown).await
        }
        StoreKind::Redis => {
            let store = RedisStore::new(&RedisOptions {
                url: settings.redis_url.clone(),
                pool_size: settings.redis_pool_size,
                timeout: settings.redis_timeout,
            })?;
            let limiter = Arc::new(Limiter::new(config, store, plan_options));
            run(limiter, options, listeners, shutdown).await
        }
    }
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Io {
            what: format!("binding the {what} address {addr}"),
            source,
        })
}
