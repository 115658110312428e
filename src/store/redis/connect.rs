//! Connections to Redis: where the master is (a URL, or asked of Sentinels) and a bb8 pool of
//! multiplexed connections that replaces a connection as soon as it is seen broken.
//!
//! (bb8-redis' manager never reports a connection broken, so after a Redis restart or a
//! failover its pool would hand out dead connections forever; ours marks a connection broken
//! on a connection error or a READONLY reply, and bb8 then drops it and connects again, asking
//! the Sentinels for the current master.)

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, ConnectionInfo, IntoConnectionInfo, RedisError, TlsCertificates, TlsMode};

use super::switch::{self, SwitchWatch};
use crate::secrets::Secret;
use crate::store::StoreError;

/// Where the Redis master is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server at `--redis-url`.
    Standalone,
    /// The master named `master_name`, found through these Sentinels (`host:port`).
    Sentinel {
        /// Sentinel addresses.
        sentinels: Vec<String>,
        /// The monitored master's name.
        master_name: String,
        /// Password of the Sentinels themselves, if they require one (from a file: read
        /// again when it changes, for new connections).
        sentinel_password: Option<Secret>,
    },
    /// A Redis Cluster reached through these nodes (`host:port`).
    Cluster {
        /// Seed nodes.
        nodes: Vec<String>,
    },
}

impl Topology {
    /// A short name for logs.
    pub const fn kind(&self) -> &'static str {
        match self {
            Topology::Standalone => "standalone",
            Topology::Sentinel { .. } => "sentinel",
            Topology::Cluster { .. } => "cluster",
        }
    }
}

/// Certificates for `rediss://` connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate (PEM) to verify the server with, instead of the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require one.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    pub client_key: Option<PathBuf>,
    /// Verify the server's certificate chain but not that it names the host connected to (the
    /// reference's REDIS_TLS_SKIP_HOSTNAME_VERIFICATION, for servers reached by an address
    /// their certificate does not list). Not applied to Sentinel-found masters.
    pub accept_any_hostname: bool,
}

impl TlsFiles {
    /// The certificates, read from their files.
    pub fn load(&self) -> Result<TlsCertificates, StoreError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| settings(format!("{}: {e}", path.display())))
        };
        let client_tls = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(settings(
                    "a Redis client certificate needs both --redis-tls-cert and --redis-tls-key",
                ));
            }
        };
        Ok(TlsCertificates {
            client_tls,
            root_cert: self.ca_cert.as_ref().map(read).transpose()?,
        })
    }

    pub(crate) fn is_set(&self) -> bool {
        self.ca_cert.is_some() || self.client_cert.is_some()
    }
}

/// A pooled connection and the flags that retire it.
#[derive(Clone)]
pub(crate) struct Tracked {
    pub(crate) conn: MultiplexedConnection,
    pub(crate) broken: Arc<AtomicBool>,
    /// The pool's generation when this connection was made.
    made_in: u64,
    /// The pool's generation, advanced when the Sentinels switch the master: connections made
    /// in an earlier one are retired.
    generation: Arc<AtomicU64>,
}

impl Tracked {
    /// Retires the connection if `error` shows it is unusable.
    pub(crate) fn check(&self, error: &RedisError) {
        let unusable = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            // A master demoted by a failover answers writes with READONLY: go find the new one.
            || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if unusable {
            self.retire();
        }
    }

    /// Marks the connection broken: the pool drops it on return and connects anew.
    pub(crate) fn retire(&self) {
        self.broken.store(true, Ordering::Release);
    }

    /// Whether it must not be used: retired, or made before the Sentinels last switched the
    /// master (see `switch`).
    pub(crate) fn is_retired(&self) -> bool {
        self.broken.load(Ordering::Acquire)
            || self.made_in < self.generation.load(Ordering::Acquire)
    }
}

/// Makes connections to the master, for bb8, and remembers why the last attempt failed.
pub(crate) struct Connector {
    spec: Spec,
    /// The client, and the credentials' generation it was made with: remade when a password
    /// file changed, so that the next connection uses the new password. A tokio mutex: a
    /// Sentinel client is held across the connection it makes.
    target: tokio::sync::Mutex<(u64, Target)>,
    /// Why the last connection attempt failed, cleared by a success. bb8 only says that a
    /// checkout timed out, which would hide a refused password or an unreachable host.
    pub(crate) last_error: LastError,
    /// The generation of the connections made now ([`Tracked::is_retired`]).
    generation: Arc<AtomicU64>,
    /// The subscriptions to the Sentinels' switches (with Sentinels), started by the first
    /// connection (on the runtime).
    watch: std::sync::OnceLock<SwitchWatch>,
}

/// What a client is made from.
struct Spec {
    url: String,
    topology: Topology,
    tls: TlsFiles,
    /// The master's password, overriding the URL's.
    password: Option<Secret>,
}

impl Spec {
    /// The passwords now (files read again when due), and a generation that moves whenever
    /// one of them changed.
    fn credentials(&self) -> (Option<Arc<str>>, Option<Arc<str>>, u64) {
        let read = |secret: Option<&Secret>| match secret {
            Some(secret) => {
                let (value, generation) = secret.current_with_generation();
                (Some(value), generation)
            }
            None => (None, 0),
        };
        let (password, a) = read(self.password.as_ref());
        let sentinel = match &self.topology {
            Topology::Sentinel {
                sentinel_password, ..
            } => sentinel_password.as_ref(),
            _ => None,
        };
        let (sentinel, b) = read(sentinel);
        // Each generation only grows, so their sum moves whenever either does.
        (password, sentinel, a + b)
    }

    /// The client for the passwords `password` (the master's) and `sentinel`.
    fn target(&self, password: Option<&str>, sentinel: Option<&str>) -> Result<Target, StoreError> {
        Ok(match &self.topology {
            Topology::Standalone | Topology::Cluster { .. } => {
                Target::Single(single_client(&self.url, password, &self.tls)?)
            }
            Topology::Sentinel {
                sentinels,
                master_name,
                ..
            } => Target::Sentinel(sentinel_client(
                &self.url,
                password,
                sentinels,
                master_name,
                sentinel,
                &self.tls,
            )?),
        })
    }
}

/// The shared record of why connecting last failed.
pub(crate) type LastError = Arc<std::sync::Mutex<Option<String>>>;

enum Target {
    Single(Client),
    Sentinel(SentinelClient),
}

impl Connector {
    /// A connector for a standalone server or a Sentinel-managed master; `password`, when
    /// given, overrides the URL's.
    pub(crate) fn new(
        url: &str,
        topology: &Topology,
        tls: &TlsFiles,
        password: Option<Secret>,
    ) -> Result<Connector, StoreError> {
        let spec = Spec {
            url: url.to_owned(),
            topology: topology.clone(),
            tls: tls.clone(),
            password,
        };
        let (password, sentinel, generation) = spec.credentials();
        let target = spec.target(password.as_deref(), sentinel.as_deref())?;
        Ok(Connector {
            spec,
            target: tokio::sync::Mutex::new((generation, target)),
            last_error: LastError::default(),
            generation: Arc::default(),
            watch: std::sync::OnceLock::new(),
        })
    }

    /// With Sentinels: subscribes to their master switches, once (see `switch`). The
    /// subscriptions use the Sentinel password of their start; a rotated one applies to them
    /// after a restart.
    fn follow_switches(&self, sentinel_password: Option<&str>) {
        let Topology::Sentinel {
            sentinels,
            master_name,
            ..
        } = &self.spec.topology
        else {
            return;
        };
        self.watch.get_or_init(|| {
            let infos =
                sentinel_infos(&self.spec.url, sentinels, sentinel_password).unwrap_or_default();
            switch::watch(infos, master_name, &self.generation)
        });
    }

    /// Remakes the client in `built` when a password changed since it was made; a client
    /// that cannot be made is logged and the old one kept.
    fn follow_credentials(&self, built: &mut (u64, Target)) {
        let (password, sentinel, generation) = self.spec.credentials();
        if generation == built.0 {
            return;
        }
        match self.spec.target(password.as_deref(), sentinel.as_deref()) {
            Ok(target) => {
                tracing::info!("Redis password changed: new connections use it");
                *built = (generation, target);
            }
            Err(e) => {
                tracing::error!(error = %e, "Redis password changed, but no client can be made with it");
                built.0 = generation;
            }
        }
    }
}

/// A Redis URL or client setting refused, as a settings error.
fn bad(e: RedisError) -> StoreError {
    settings(e)
}

/// A Redis setting that cannot be used, said as such.
pub(super) fn settings(problem: impl std::fmt::Display) -> StoreError {
    StoreError::Settings(format!("Redis settings: {problem}"))
}

/// `info` with the password `password`, when given (else the URL's).
pub(super) fn with_password(info: ConnectionInfo, password: Option<&str>) -> ConnectionInfo {
    match password {
        Some(password) => {
            let settings = info.redis_settings().clone().set_password(password);
            info.set_redis_settings(settings)
        }
        None => info,
    }
}

/// The client of a server at a known address (standalone, or a cluster's seed).
fn single_client(url: &str, password: Option<&str>, tls: &TlsFiles) -> Result<Client, StoreError> {
    let info = url
        .into_connection_info()
        .map_err(bad)?
        .set_tcp_settings(tcp_settings());
    let info = with_password(info, password);
    let mut client = if tls.is_set() {
        Client::build_with_tls(info, tls.load()?).map_err(bad)?
    } else {
        Client::open(info).map_err(bad)?
    };
    if tls.accept_any_hostname {
        let info = client.get_connection_info().clone();
        let mut addr = info.addr().clone();
        addr.set_danger_accept_invalid_hostnames(true);
        client = Client::open(info.set_addr(addr)).map_err(bad)?;
    }
    Ok(client)
}

/// The client that asks these Sentinels where `master_name` is; `url` gives the master's
/// database, credentials and scheme, `password` overrides its password.
fn sentinel_client(
    url: &str,
    password: Option<&str>,
    sentinels: &[String],
    master_name: &str,
    sentinel_password: Option<&str>,
    tls: &TlsFiles,
) -> Result<SentinelClient, StoreError> {
    let info = with_password(url.into_connection_info().map_err(bad)?, password);
    let secure = url.starts_with("rediss://");
    if secure && tls.accept_any_hostname {
        tracing::warn!(
            "skipping TLS host name verification is not applied to a master found through Sentinels: its certificate must name the address the Sentinels give"
        );
    }
    let mut node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(info.redis_settings().clone())
        .set_tcp_settings(tcp_settings());
    if secure {
        node = node.set_tls_mode(TlsMode::Secure);
    }
    let sentinels = sentinel_infos(url, sentinels, sentinel_password)?;
    SentinelClient::build(
        sentinels,
        master_name,
        Some(node),
        SentinelServerType::Master,
    )
    .map_err(bad)
}

/// How to reach each Sentinel: the scheme of `url` (the master's), and the Sentinels' own
/// password.
fn sentinel_infos(
    url: &str,
    sentinels: &[String],
    sentinel_password: Option<&str>,
) -> Result<Vec<ConnectionInfo>, StoreError> {
    let scheme = if url.starts_with("rediss://") {
        "rediss"
    } else {
        "redis"
    };
    sentinels
        .iter()
        .map(|s| {
            let info = format!("{scheme}://{s}")
                .into_connection_info()
                .map_err(bad)?;
            Ok(with_password(info, sentinel_password))
        })
        .collect()
}

impl bb8::ManageConnection for Connector {
    type Connection = Tracked;
    type Error = RedisError;

    async fn connect(&self) -> Result<Tracked, RedisError> {
        // Calls are bounded by the store's own deadlines (--redis-timeout), which retire a
        // connection that misses one; redis-rs' default 500 ms response timeout would cut a
        // longer configured timeout short.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let mut built = self.target.lock().await;
        self.follow_credentials(&mut built);
        if self.watch.get().is_none() {
            let (_, sentinel_password, _) = self.spec.credentials();
            self.follow_switches(sentinel_password.as_deref());
        }
        let made_in = self.generation.load(Ordering::Acquire);
        let conn = match &mut built.1 {
            Target::Single(client) => {
                let client = client.clone();
                drop(built);
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            }
            // Each new connection asks the Sentinels where the master is now.
            Target::Sentinel(client) => client.get_async_connection_with_config(&config).await,
        };
        let result = if conn.is_ok() { "ok" } else { "error" };
        metrics::counter!(crate::telemetry::REDIS_CONNECTS, "result" => result).increment(1);
        // Redis' refusals (WRONGPASS, NOAUTH) and redis-rs' errors never hold the password.
        let why = conn.as_ref().err().map(RedisError::to_string);
        if let Ok(mut last) = self.last_error.lock() {
            *last = why;
        }
        Ok(Tracked {
            conn: conn?,
            broken: Arc::new(AtomicBool::new(false)),
            made_in,
            generation: self.generation.clone(),
        })
    }

    async fn is_valid(&self, tracked: &mut Tracked) -> Result<(), RedisError> {
        redis::cmd("PING")
            .query_async::<()>(&mut tracked.conn)
            .await
    }

    fn has_broken(&self, tracked: &mut Tracked) -> bool {
        tracked.is_retired()
    }
}

/// TCP options of every Redis connection: no Nagle delay, since pipelined writes must leave at
/// once (with Nagle and delayed ACKs a small write can wait 40 ms).
pub(crate) fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// The pool: lazily connected (Floodgate starts while Redis is down), no PING per checkout
/// (it would double the round trips), connection attempts bounded by `timeout`.
pub(crate) fn pool(connector: Connector, size: u32, timeout: Duration) -> bb8::Pool<Connector> {
    bb8::Pool::builder()
        .max_size(size.max(1))
        .connection_timeout(timeout)
        .test_on_check_out(false)
        .retry_connection(false)
        .build_unchecked(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_settings_are_settings_errors_not_outages() {
        let half = TlsFiles {
            client_cert: Some(PathBuf::from("/etc/floodgate/cert.pem")),
            ..TlsFiles::default()
        };
        let error = half.load().unwrap_err();
        assert!(matches!(error, StoreError::Settings(_)), "{error:?}");
        assert_eq!(error.kind(), "settings");
        let missing = TlsFiles {
            ca_cert: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..TlsFiles::default()
        };
        let error = missing.load().unwrap_err().to_string();
        assert!(
            error.starts_with("Redis settings: /nonexistent/ca.pem:"),
            "{error}"
        );
        let bad_url = Connector::new(
            "redis://[::1",
            &Topology::Standalone,
            &TlsFiles::default(),
            None,
        );
        assert!(matches!(bad_url, Err(StoreError::Settings(_))));
    }
}
