//! Runs the gRPC and HTTP servers on given listeners until a shutdown future resolves.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::clock::SystemClock;
use crate::config::{Config, ConfigError};
use crate::decision::PlanOptions;
use crate::http::{self, HttpState};
use crate::limiter::{Limiter, LimiterOptions};
use crate::pb::rate_limit_service_server::RateLimitServiceServer;
use crate::rls::{InputLimits, ResponseOptions, RlsService};
use crate::settings::{ServeSettings, StoreKind};
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
    /// The admin key; `None` keeps the admin API closed.
    pub admin_key: Option<String>,
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
    let admin = admin::router(Arc::new(AdminState {
        limiter: limiter.clone(),
        admin_key: options.admin_key.clone(),
    }));
    let refresher = tokio::spawn(keep_shared_state_fresh(limiter.clone(), stop.clone()));
    let state = Arc::new(HttpState {
        rls,
        limiter,
        serving: serving.clone(),
    });
    let app = http::router(state).merge(admin);
    let http = axum::serve(
        listeners.http,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
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
    refresher.abort();
    grpc?;
    http
}

/// Re-reads the shared health state every half cache TTL (so no replica's view is older than
/// the TTL), and seeds the config's API keys once the store answers.
async fn keep_shared_state_fresh<S: Store>(limiter: Arc<Limiter<S>>, stop: CancellationToken) {
    let period = (limiter.options().cache_ttl / 2).max(std::time::Duration::from_millis(50));
    let mut seeded = false;
    loop {
        if let Err(e) = limiter.refresh_health().await {
            tracing::debug!(error = %e, "could not refresh the health state");
        }
        if !seeded {
            match limiter.seed_registry().await {
                Ok(()) => seeded = true,
                Err(e) => tracing::warn!(error = %e, "could not seed API keys yet; retrying"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
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
    let limiter_options = LimiterOptions {
        plan: PlanOptions {
            key_prefix: settings.key_prefix.clone(),
            global_shadow: settings.shadow_mode,
        },
        cache_ttl: settings.state_cache_ttl,
        failure_mode: settings.failure_mode.into(),
        breaker: settings.breaker(),
        // The memory store answers as fast as the cache would.
        near_limit_ratio: settings.near_limit_ratio,
        over_limit_cache: match settings.store {
            StoreKind::Memory => 0,
            StoreKind::Redis => settings.local_cache_size,
        },
    };
    let clock = Arc::new(SystemClock);
    let options = ServerOptions {
        input_limits: settings.input_limits(),
        response_options: ResponseOptions {
            limit_headers: settings.response_headers,
        },
        admin_key: settings.admin_key.clone().filter(|k| !k.is_empty()),
    };
    tracing::info!(grpc = %settings.grpc_addr, http = %settings.http_addr, store = ?settings.store, "serving");
    match settings.store {
        StoreKind::Memory => {
            let store = MemoryStore::new(clock.clone(), settings.memory_max_keys);
            let limiter = Arc::new(Limiter::new(config, store, limiter_options, clock));
            run(limiter, options, listeners, shutdown).await
        }
        StoreKind::Redis => {
            let options_redis = settings.redis_options();
            tracing::info!(topology = options_redis.topology.kind(), "Redis store");
            let store = RedisStore::new(&options_redis)?;
            let limiter = Arc::new(Limiter::new(config, store, limiter_options, clock));
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
