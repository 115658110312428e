//! `floodgate serve`: what the command line asks for, assembled: the config and where updates
//! come from, the store, the limiter, the listeners, then [`crate::server::run`]. The one
//! place that reads [`ServeSettings`] into running parts, so the server itself knows nothing of
//! the command line.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::decision::PlanOptions;
use crate::fallback::FallbackOptions;
use crate::health::ConfigHealth;
use crate::limiter::{Limiter, LimiterOptions};
use crate::rls::response::{LimitHeaderNames, ResponseOptions};
use crate::server::{
    ConfigSource, FileSource, GrpcListener, Listeners, ServerError, ServerOptions,
    record_config_load, run,
};
use crate::settings::{ConfigSourceKind, FailureModeArg, ServeSettings, StoreKind};
use crate::store::sqlite::SqliteOptions;
use crate::store::{Backend, MemoryStore, RedisStore, SqliteStore};
use crate::telemetry;

/// Loads the config, builds the store, binds the addresses and runs until `shutdown` resolves;
/// `reload` is notified on SIGHUP.
pub async fn serve(
    settings: &ServeSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: Arc<Notify>,
) -> Result<(), ServerError> {
    if settings.failure_mode == FailureModeArg::Local && settings.store != StoreKind::Redis {
        return Err(ServerError::Settings(
            "--failure-mode local needs --store redis: only a shared store can fail while this \
             process runs on"
                .into(),
        ));
    }
    let (config, config_source) = initial_config(settings, reload)?;
    let listeners = bind_all(settings).await?;
    if settings.reference_metrics || settings.reference_metrics_addr.is_some() {
        install_reference_metrics(settings.reference_metrics_mapping.as_deref());
        record_config_load(config.is_some());
    }
    let options = server_options(settings, config_source)?;
    let limiter_options = limiter_options(settings);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    tracing::info!(grpc = %settings.grpc_addr, http = %settings.http_addr, admin = ?settings.admin_addr, store = ?settings.store, tls = options.grpc_tls.is_some(), http_tls = options.http_tls.is_some(), "serving");
    warn_of_exposed_admin(settings, &options);
    let store = match settings.store {
        StoreKind::Memory => {
            Backend::Memory(MemoryStore::new(clock.clone(), settings.memory_max_keys))
        }
        StoreKind::Redis => Backend::Redis(redis_store(settings)?),
        StoreKind::Sqlite => Backend::Sqlite(SqliteStore::open(
            &SqliteOptions {
                path: settings.sqlite_path.clone(),
                max_keys: settings.sqlite_max_keys,
            },
            clock.clone(),
        )?),
    };
    let limiter = Arc::new(limiter(config, store, limiter_options, clock));
    run(limiter, options, listeners, shutdown).await
}

/// The config to start with (none: from xDS, or files that do not load and
/// --start-without-config), and the source of later ones.
fn initial_config(
    settings: &ServeSettings,
    reload: Arc<Notify>,
) -> Result<(Option<Config>, ConfigSource), ServerError> {
    match settings.config_source {
        ConfigSourceKind::Files => {
            let path = settings.config.clone().ok_or_else(|| {
                ServerError::Settings("--config is needed with --config-source files".into())
            })?;
            let config = match Config::load_with(&path, &settings.load_options()) {
                Ok(config) => {
                    tracing::info!(domains = ?config.domain_names(), path = %path.display(), version = config.version(), "config loaded");
                    Some(config)
                }
                Err(e) if settings.start_without_config => {
                    tracing::error!(error = %e, "no config loaded: starting without one (--start-without-config); ShouldRateLimit answers UNAVAILABLE until a config loads");
                    None
                }
                Err(e) => return Err(e.into()),
            };
            let files = FileSource {
                path,
                poll_interval: settings.config_poll_interval,
                reload,
                load: settings.load_options(),
            };
            Ok((config, ConfigSource::Files(files)))
        }
        ConfigSourceKind::Xds => {
            let xds = settings.xds_options().ok_or_else(|| {
                ServerError::Settings("--xds-server is needed with --config-source xds".into())
            })?;
            tracing::info!(server = %xds.server, node = %xds.node_id, tls = xds.tls.is_some(), "config from xDS");
            Ok((None, ConfigSource::Xds(Box::new(xds))))
        }
    }
}

/// What health waits for: the store answering; with xDS, the first config too (unless told to
/// start without one), as the reference serves only after it.
fn config_health(settings: &ServeSettings) -> ConfigHealth {
    if settings.healthy_only_with_config {
        ConfigHealth::WithDomains
    } else if settings.config_source == ConfigSourceKind::Xds && !settings.start_without_config {
        ConfigHealth::Loaded
    } else {
        ConfigHealth::Any
    }
}

/// Every listener the settings ask for, bound.
async fn bind_all(settings: &ServeSettings) -> Result<Listeners, ServerError> {
    Ok(Listeners {
        grpc: match &settings.grpc_uds {
            Some(path) => GrpcListener::Unix(bind_unix(path)?),
            None => bind(settings.grpc_addr, "gRPC").await?.into(),
        },
        http: bind(settings.http_addr, "HTTP").await?,
        admin: match settings.admin_addr {
            Some(addr) => Some(bind(addr, "admin").await?),
            None => None,
        },
        debug: match settings.debug_addr {
            Some(addr) => Some(bind(addr, "debug").await?),
            None => None,
        },
        metrics: match settings.reference_metrics_addr {
            Some(addr) => Some(bind(addr, "metrics").await?),
            None => None,
        },
    })
}

fn server_options(
    settings: &ServeSettings,
    config_source: ConfigSource,
) -> Result<ServerOptions, ServerError> {
    Ok(ServerOptions {
        input_limits: settings.input_limits(),
        response_options: ResponseOptions {
            limit_headers: settings.response_headers,
            header_names: LimitHeaderNames {
                limit: settings.limit_header.clone(),
                remaining: settings.remaining_header.clone(),
                reset: settings.reset_header.clone(),
            },
            dynamic_metadata: settings.response_dynamic_metadata,
        },
        admin_key: settings.admin_key()?,
        protection: settings.protection(),
        grpc_tls: settings.grpc_tls(),
        http_tls: settings.http_tls(),
        config_source: Some(config_source),
        shutdown_grace: settings.shutdown_grace,
        metrics_path: settings.reference_metrics_path.clone(),
        config_health: config_health(settings),
    })
}

/// Warns when the admin key would cross the network in plaintext on the port everyone who
/// may ask for decisions or scrape metrics reaches: an admin key, /admin on the HTTP address,
/// that address not loopback, and no TLS.
fn warn_of_exposed_admin(settings: &ServeSettings, options: &ServerOptions) {
    let shared = settings.admin_addr.is_none() && !settings.http_addr.ip().is_loopback();
    if options.admin_key.is_some() && shared && options.http_tls.is_none() {
        tracing::warn!(
            http = %settings.http_addr,
            "the admin API shares the HTTP address, in plaintext: its key crosses the network readable; give it a listener of its own (--admin-addr 127.0.0.1:8082) or TLS (--http-tls-cert); see docs/security.md"
        );
    }
}

fn limiter_options(settings: &ServeSettings) -> LimiterOptions {
    LimiterOptions {
        plan: PlanOptions {
            key_prefix: settings.key_prefix.clone(),
            global_shadow: settings.shadow_mode,
            global_quota: settings.quota_mode,
            count_denied_hits: settings.count_denied_hits,
        },
        cache_ttl: settings.state_cache_ttl,
        failure_mode: settings.failure_mode.into(),
        fallback: FallbackOptions {
            replicas: settings.fallback_replicas,
        },
        breaker: settings.breaker(),
        near_limit_ratio: settings.near_limit_ratio,
        // The memory store answers as fast as the cache would.
        over_limit_cache: match settings.store {
            // Local: a store call costs about what the cache would save.
            StoreKind::Memory | StoreKind::Sqlite => 0,
            StoreKind::Redis => settings.local_cache_size,
        },
    }
}

/// The Redis store, with its per-second Redis if one is configured.
fn redis_store(settings: &ServeSettings) -> Result<RedisStore, ServerError> {
    let options = settings.redis_options()?;
    tracing::info!(topology = options.topology.kind(), "Redis store");
    let mut store = RedisStore::new(&options)?;
    if let Some(per_second) = settings.redis_per_second_options()? {
        tracing::info!(
            topology = per_second.topology.kind(),
            "Redis store for per-second limits"
        );
        store = store.with_per_second(RedisStore::new(&per_second)?);
    }
    Ok(store)
}

/// A limiter with `config`, or awaiting one.
fn limiter(
    config: Option<Config>,
    store: Backend,
    options: LimiterOptions,
    clock: Arc<dyn Clock>,
) -> Limiter {
    match config {
        Some(config) => Limiter::new(config, store, options, clock),
        None => Limiter::awaiting_config(store, options, clock),
    }
}

/// Binds the gRPC Unix socket at `path`, replacing a socket file left by an earlier run (any
/// other kind of file there is an error).
fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener, ServerError> {
    use std::os::unix::fs::FileTypeExt;
    let failed = |source| ServerError::Io {
        what: format!("binding the gRPC socket {}", path.display()),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path).map_err(failed)?;
    }
    tokio::net::UnixListener::bind(path).map_err(failed)
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Io {
            what: format!("binding the {what} address {addr}"),
            source,
        })
}

/// Turns on the reference's metric names, mapped by the file at `mapping` or by the built-in
/// mapping. A mapping file that cannot be used is reported and the built-in one used instead
/// (the reference would silently map nothing), so a typo costs no metrics.
fn install_reference_metrics(mapping: Option<&std::path::Path>) {
    use telemetry::reference::StatMapper;
    let mapper = match mapping.map(StatMapper::from_file) {
        None => StatMapper::built_in(),
        Some(Ok(mapper)) => mapper,
        Some(Err(e)) => {
            tracing::error!(error = %e, "the metrics mapping file cannot be used; using the built-in mapping");
            StatMapper::built_in()
        }
    };
    telemetry::reference::install(mapper);
}
