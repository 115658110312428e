//! One handle for the two ways of reaching Redis: a pool of connections to one master
//! (standalone or found through Sentinels), or a cluster connection that routes by key.
//!
//! A password from a file reaches new connections: the pool's connector reads it at every
//! connection it makes; the cluster connection, which makes its node connections itself, is
//! remade when a call fails and the password changed meanwhile.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value};
use tokio::time::Instant;

use super::connect::{Connector, LastError, TlsFiles, Tracked, pool};
use crate::secrets::Secret;
use crate::store::StoreError;

/// Where connections come from.
#[derive(Clone)]
pub(crate) enum Connections {
    /// The pool, and why its connector last failed to connect.
    Pool(bb8::Pool<Connector>, LastError),
    /// Connected on first use, so that Floodgate starts while the cluster is down.
    Cluster(Arc<LazyCluster>),
}

/// How to make the cluster connection and, once made, the connection and the password's
/// generation it was made with.
pub(crate) struct LazyCluster {
    seeds: ClusterSeeds,
    password: Option<Secret>,
    /// Read on every call (a lock-free load); replaced when remade.
    connection: ArcSwapOption<(u64, ClusterConnection)>,
    /// Held while the connection is made, so that concurrent calls make it once.
    connecting: tokio::sync::Mutex<()>,
}

/// The cluster's seed nodes and the settings every node connection takes.
struct ClusterSeeds {
    urls: Vec<String>,
    url: String,
    tls: TlsFiles,
    timeout: Duration,
}

/// A connection for one call.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(Tracked),
    Cluster(ClusterConnection, Arc<LazyCluster>),
}

impl Connections {
    pub(crate) fn pooled(connector: Connector, size: u32, timeout: Duration) -> Connections {
        let last_error = connector.last_error.clone();
        Connections::Pool(pool(connector, size, timeout), last_error)
    }

    /// A Redis Cluster reached through `nodes` (`host:port`), with the credentials and scheme
    /// of `url`; `password`, when given, overrides the URL's. Nothing connects yet.
    pub(crate) fn cluster(
        nodes: &[String],
        url: &str,
        tls: &TlsFiles,
        timeout: Duration,
        password: Option<Secret>,
    ) -> Result<Connections, StoreError> {
        let scheme = if url.starts_with("rediss://") {
            "rediss"
        } else {
            "redis"
        };
        let seeds = ClusterSeeds {
            urls: nodes.iter().map(|n| format!("{scheme}://{n}")).collect(),
            url: url.to_owned(),
            tls: tls.clone(),
            timeout,
        };
        // Refuse unusable settings now rather than at the first call.
        seeds.client(password.as_ref().map(|p| p.current()).as_deref())?;
        Ok(Connections::Cluster(Arc::new(LazyCluster {
            seeds,
            password,
            connection: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
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
                let connection = lazy.connection().await?;
                Ok(Conn::Cluster(connection, lazy.clone()))
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

impl ClusterSeeds {
    /// The cluster client, with `password` instead of the URL's when given.
    fn client(&self, password: Option<&str>) -> Result<ClusterClient, StoreError> {
        let bad = |e: RedisError| super::connect::settings(format!("Redis Cluster: {e}"));
        let info = self.url.as_str().into_connection_info().map_err(bad)?;
        let info = super::connect::with_password(info, password);
        let settings = info.redis_settings();
        let mut builder = ClusterClient::builder(self.urls.clone())
            .tcp_settings(super::connect::tcp_settings())
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout);
        if let Some(user) = settings.username() {
            builder = builder.username(user);
        }
        if let Some(password) = settings.password() {
            builder = builder.password(password);
        }
        if self.tls.is_set() {
            builder = builder.certs(self.tls.load()?);
        }
        if self.tls.accept_any_hostname {
            builder = builder.danger_accept_invalid_hostnames(true);
        }
        builder.build().map_err(bad)
    }
}

impl LazyCluster {
    /// The password now (its file read again when due) and its generation.
    fn password(&self) -> (Option<Arc<str>>, u64) {
        match &self.password {
            Some(secret) => {
                let (value, generation) = secret.current_with_generation();
                (Some(value), generation)
            }
            None => (None, 0),
        }
    }

    /// The cluster connection, made on first use (so that Floodgate starts while the cluster
    /// is down) and again after [`LazyCluster::forget_if_password_changed`].
    async fn connection(&self) -> Result<ClusterConnection, StoreError> {
        if let Some(made) = self.connection.load_full() {
            return Ok(made.1.clone());
        }
        let _connecting = self.connecting.lock().await;
        if let Some(made) = self.connection.load_full() {
            return Ok(made.1.clone());
        }
        let (password, generation) = self.password();
        let client = self.seeds.client(password.as_deref())?;
        let connection = client.get_async_connection().await?;
        self.connection
            .store(Some(Arc::new((generation, connection.clone()))));
        Ok(connection)
    }

    /// After a failed call: when the password changed since the connection was made, drops
    /// the connection, so that the next call makes one with the new password.
    fn forget_if_password_changed(&self) {
        let Some(made) = self.connection.load_full() else {
            return;
        };
        if self.password().1 != made.0 {
            tracing::info!("Redis password changed: the cluster connection is made again with it");
            self.connection.store(None);
        }
    }
}

impl Conn {
    /// Retires the connection if `error` shows it unusable (the cluster client heals itself,
    /// but only a new one takes a changed password).
    pub(crate) fn check(&self, error: &RedisError) {
        match self {
            Conn::Single(tracked) => tracked.check(error),
            Conn::Cluster(_, lazy) => lazy.forget_if_password_changed(),
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
            Conn::Cluster(cluster, _) => cluster,
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
            Conn::Cluster(cluster, _) => cluster.get_db(),
        }
    }
}
