//! One handle for the two ways of reaching Redis: a pool of connections to one master
//! (standalone or found through Sentinels), or a cluster connection that routes by key.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::connect::{Connector, LastError, TlsFiles, Tracked, pool};
use crate::store::StoreError;

/// Where connections come from.
#[derive(Clone)]
pub(crate) enum Connections {
    /// The pool, and why its connector last failed to connect.
    Pool(bb8::Pool<Connector>, LastError),
    /// Connected on first use, so that Floodgate starts while the cluster is down.
    Cluster(Arc<LazyCluster>),
}

/// A cluster client and, once it has connected, its connection.
pub(crate) struct LazyCluster {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

/// A connection for one call.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(Tracked),
    Cluster(ClusterConnection),
}

impl Connections {
    pub(crate) fn pooled(connector: Connector, size: u32, timeout: Duration) -> Connections {
        let last_error = connector.last_error.clone();
        Connections::Pool(pool(connector, size, timeout), last_error)
    }

    /// A Redis Cluster reached through `nodes` (`host:port`), with the credentials and scheme
    /// of `url`.
    pub(crate) fn cluster(
        nodes: &[String],
        url: &str,
        tls: &TlsFiles,
        timeout: Duration,
    ) -> Result<Connections, StoreError> {
        let bad = |e: RedisError| super::connect::settings(format!("Redis Cluster: {e}"));
        let info = url.into_connection_info().map_err(bad)?;
        let settings = info.redis_settings();
        let scheme = if url.starts_with("rediss://") {
            "rediss"
        } else {
            "redis"
        };
        let urls: Vec<String> = nodes.iter().map(|n| format!("{scheme}://{n}")).collect();
        let mut builder = ClusterClient::builder(urls)
            .tcp_settings(super::connect::tcp_settings())
            .connection_timeout(timeout)
            .response_timeout(timeout);
        if let Some(user) = settings.username() {
            builder = builder.username(user);
        }
        if let Some(password) = settings.password() {
            builder = builder.password(password);
        }
        if tls.is_set() {
            builder = builder.certs(tls.load()?);
        }
        if tls.accept_any_hostname {
            builder = builder.danger_accept_invalid_hostnames(true);
        }
        let client = builder.build().map_err(bad)?;
        Ok(Connections::Cluster(Arc::new(LazyCluster {
            client,
            connection: OnceCell::new(),
        })))
    }

    /// (in use, idle) connections of the pool; `None` for a cluster.
    pub(crate) fn pool_state(&self) -> Option<(u32, u32)> {
        match self {
            Connections::Pool(pool, _) => {
                let state = pool.state();
                Some((
                    state.connections - state.idle_connections,
                    state.idle_connections,
                ))
            }
            Connections::Cluster(_) => None,
        }
    }

    /// A connection, skipping pooled ones already seen broken (bb8 drops those on return).
    pub(crate) async fn connection(&self) -> Result<Conn, StoreError> {
        match self {
            Connections::Cluster(lazy) => {
                let connection = lazy
                    .connection
                    .get_or_try_init(|| lazy.client.get_async_connection())
                    .await
                    .map_err(StoreError::from)?;
                Ok(Conn::Cluster(connection.clone()))
            }
            Connections::Pool(pool, _) => {
                for _ in 0..=pool.state().connections {
                    let pooled = pool
                        .get()
                        .await
                        .map_err(|e| self.no_connection(StoreError::Unavailable(e.to_string())))?;
                    let tracked = Tracked::clone(&pooled);
                    if !tracked.is_retired() {
                        // A multiplexed connection is a cheap handle: the pooled slot goes back
                        // at once while calls share its socket.
                        return Ok(Conn::Single(tracked));
                    }
                }
                Err(StoreError::Unavailable("no usable Redis connection".into()))
            }
        }
    }

    /// The error of a checkout that failed with `error`: rather why connecting last failed,
    /// if it did (a refused password, an unreachable host), since that is why no connection
    /// came.
    fn no_connection(&self, error: StoreError) -> StoreError {
        let why = match self {
            Connections::Pool(_, last_error) => last_error.lock().ok().and_then(|why| why.clone()),
            Connections::Cluster(_) => None,
        };
        match why {
            Some(why) => StoreError::Unavailable(format!("no Redis connection: {why}")),
            None => error,
        }
    }

    /// Runs `work` on a connection and has it done by `deadline`, checkout included (else
    /// [`StoreError::Timeout`] with `timeout`, the setting that made the deadline). A
    /// connection that lets the deadline pass is retired: a frozen or partitioned server
    /// never answers, and only a new connection finds where the master is.
    pub(crate) async fn within<T, F>(
        &self,
        deadline: Instant,
        timeout: Duration,
        work: impl FnOnce(Conn) -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let late = |_| StoreError::Timeout(timeout);
        let conn = tokio::time::timeout_at(deadline, self.connection())
            .await
            .map_err(|_| self.no_connection(StoreError::Timeout(timeout)))??;
        let held = conn.clone();
        let result = tokio::time::timeout_at(deadline, work(conn)).await;
        result.map_err(|elapsed| {
            if let Conn::Single(tracked) = held {
                tracked.retire();
            }
            late(elapsed)
        })?
    }
}

impl Conn {
    /// Retires the connection if `error` shows it unusable (the cluster client heals itself).
    pub(crate) fn check(&self, error: &RedisError) {
        if let Conn::Single(tracked) = self {
            tracked.check(error);
        }
    }

    /// Retires the connection (the cluster client heals itself).
    pub(crate) fn retire(&self) {
        if let Conn::Single(tracked) = self {
            tracked.retire();
        }
    }

    fn inner(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Single(tracked) => &mut tracked.conn as &mut MultiplexedConnection,
            Conn::Cluster(cluster) => cluster,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.inner().req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.inner().req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(tracked) => tracked.conn.get_db(),
            Conn::Cluster(cluster) => cluster.get_db(),
        }
    }
}
