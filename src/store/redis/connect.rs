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
use redis::{Client, IntoConnectionInfo, RedisError, TlsCertificates, TlsMode};

use super::switch::{self, SwitchWatch};
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
        /// Password of the Sentinels themselves, if they require one.
        sentinel_password: Option<String>,
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
    target: Target,
    /// Why the last connection attempt failed, cleared by a success. bb8 only says that a
    /// checkout timed out, which would hide a refused password or an unreachable host.
    pub(crate) last_error: LastError,
    /// The generation of the connections made now ([`Tracked::is_retired`]).
    generation: Arc<AtomicU64>,
    /// With Sentinels: their URLs and the master's name, to follow its switches.
    sentinels: Option<(Vec<String>, String)>,
    /// The subscriptions to the Sentinels' switches, started by the first connection (on the
    /// runtime).
    watch: std::sync::OnceLock<SwitchWatch>,
}

/// The shared record of why connecting last failed.
pub(crate) type LastError = Arc<std::sync::Mutex<Option<String>>>;

enum Target {
    Single(Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl Connector {
    fn to(target: Target) -> Connector {
        Connector {
            target,
            last_error: LastError::default(),
            generation: Arc::default(),
            sentinels: None,
            watch: std::sync::OnceLock::new(),
        }
    }

    /// A connector for a standalone server or a Sentinel-managed master.
    pub(crate) fn new(
        url: &str,
        topology: &Topology,
        tls: &TlsFiles,
    ) -> Result<Connector, StoreError> {
        let target = match topology {
            Topology::Standalone | Topology::Cluster { .. } => {
                Target::Single(single_client(url, tls)?)
            }
            Topology::Sentinel {
                sentinels,
                master_name,
                sentinel_password,
            } => {
                let urls = sentinel_urls(url, sentinels, sentinel_password.as_deref());
                let client = sentinel_client(url, &urls, master_name, tls)?;
                let mut connector =
                    Connector::to(Target::Sentinel(tokio::sync::Mutex::new(client)));
                connector.sentinels = Some((urls, master_name.clone()));
                return Ok(connector);
            }
        };
        Ok(Connector::to(target))
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

/// The client of a server at a known address (standalone, or a cluster's seed).
fn single_client(url: &str, tls: &TlsFiles) -> Result<Client, StoreError> {
    let info = url
        .into_connection_info()
        .map_err(bad)?
        .set_tcp_settings(tcp_settings());
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

/// The Sentinels' URLs: the scheme of `url` (the master's), and the Sentinels' own password.
fn sentinel_urls(url: &str, sentinels: &[String], sentinel_password: Option<&str>) -> Vec<String> {
    let scheme = if url.starts_with("rediss://") {
        "rediss"
    } else {
        "redis"
    };
    let auth = sentinel_password
        .map(|p| format!(":{p}@"))
        .unwrap_or_default();
    sentinels
        .iter()
        .map(|s| format!("{scheme}://{auth}{s}"))
        .collect()
}

/// The client that asks the Sentinels at `urls` where `master_name` is; `url` gives the
/// master's database, credentials and scheme.
fn sentinel_client(
    url: &str,
    urls: &[String],
    master_name: &str,
    tls: &TlsFiles,
) -> Result<SentinelClient, StoreError> {
    let info = url.into_connection_info().map_err(bad)?;
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
    SentinelClient::build(
        urls.to_vec(),
        master_name,
        Some(node),
        SentinelServerType::Master,
    )
    .map_err(bad)
}

impl bb8::ManageConnection for Connector {
    type Connection = Tracked;
    type Error = RedisError;

    async fn connect(&self) -> Result<Tracked, RedisError> {
        if let Some((urls, master_name)) = &self.sentinels {
            self.watch
                .get_or_init(|| switch::watch(urls, master_name, &self.generation));
        }
        let made_in = self.generation.load(Ordering::Acquire);
        // Calls are bounded by the store's own deadlines (--redis-timeout), which retire a
        // connection that misses one; redis-rs' default 500 ms response timeout would cut a
        // longer configured timeout short.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let conn = match &self.target {
            Target::Single(client) => {
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            }
            // Each new connection asks the Sentinels where the master is now.
            Target::Sentinel(client) => {
                let mut client = client.lock().await;
                client.get_async_connection_with_config(&config).await
            }
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
        let bad_url = Connector::new("redis://[::1", &Topology::Standalone, &TlsFiles::default());
        assert!(matches!(bad_url, Err(StoreError::Settings(_))));
    }
}
