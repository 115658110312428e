//! The Redis store: a bb8 pool of multiplexed connections, and one Lua script call (EVALSHA,
//! loading the script on NOSCRIPT) per request, whatever the number of descriptors.
//!
//! Multiplexed connections pipeline concurrent requests on their own: calls from many requests
//! share a connection's round trips while a write is in flight.

use std::time::Duration;

use bb8::Pool;
use bb8_redis::RedisConnectionManager;
use redis::Script;
use redis::aio::MultiplexedConnection;

use super::{Applied, Check, Counter, Store, StoreError};

/// The Lua source of the fixed-window script, with its KEYS/ARGV contract at the top.
pub const FIXED_WINDOW_SCRIPT: &str = include_str!("fixed_window.lua");

/// Counters in Redis, shared by every Floodgate replica that points at it.
#[derive(Debug, Clone)]
pub struct RedisStore {
    pool: Pool<RedisConnectionManager>,
    script: Script,
    timeout: Duration,
}

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// A redis:// URL (with optional user, password and database).
    pub url: String,
    /// Connections in the pool; each is multiplexed, so a few suffice.
    pub pool_size: u32,
    /// Deadline of one call, connection checkout included.
    pub timeout: Duration,
}

impl RedisStore {
    /// A store for `options.url`. Does not connect yet: Floodgate starts while Redis is down
    /// and connects when it appears.
    pub fn new(options: &RedisOptions) -> Result<RedisStore, StoreError> {
        let manager = RedisConnectionManager::new(options.url.as_str())
            .map_err(|e| StoreError::Unavailable(format!("bad Redis URL: {e}")))?;
        let pool = Pool::builder()
            .max_size(options.pool_size.max(1))
            .connection_timeout(options.timeout)
            // A PING per checkout would double the round trips; failures surface on use.
            .test_on_check_out(false)
            .build_unchecked(manager);
        Ok(RedisStore {
            pool,
            script: Script::new(FIXED_WINDOW_SCRIPT),
            timeout: options.timeout,
        })
    }

    /// Runs `work` on a connection within the call deadline (checkout included).
    async fn call<T, F>(
        &self,
        work: impl FnOnce(MultiplexedConnection) -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, redis::RedisError>>,
    {
        let attempt = async {
            // A multiplexed connection is a cheap handle; cloning it out of the pool lets the
            // pooled slot go back at once while the call shares its socket.
            let conn = self
                .pool
                .get()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
                .clone();
            work(conn).await.map_err(StoreError::from)
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
    }
}

impl Store for RedisStore {
    async fn apply(&self, checks: &[Check]) -> Result<Applied, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        for check in checks {
            invocation
                .key(&check.key)
                .arg(check.limit)
                .arg(check.window_secs)
                .arg(check.hits)
                .arg(u8::from(check.shadow));
        }
        let reply: Vec<i64> = self
            .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        decode(&reply, checks.len())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(
            |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
        )
        .await
        .map(drop)
    }
}

/// Reads the script's reply: { admitted, count_1, reset_ms_1, ... }.
fn decode(reply: &[i64], checks: usize) -> Result<Applied, StoreError> {
    let [admitted, pairs @ ..] = reply else {
        return Err(StoreError::Protocol("empty script reply".into()));
    };
    if pairs.len() != 2 * checks {
        return Err(StoreError::Protocol(format!(
            "script replied {} values for {checks} checks",
            reply.len()
        )));
    }
    let counters = pairs
        .chunks_exact(2)
        .map(|pair| Counter {
            count: pair[0].max(0) as u64,
            reset_ms: pair[1].max(0) as u64,
        })
        .collect();
    Ok(Applied {
        admitted: *admitted == 1,
        counters,
    })
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> StoreError {
        StoreError::Unavailable(e.to_string())
    }
}
