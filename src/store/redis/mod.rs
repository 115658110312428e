//! The Redis store: a bb8 pool of multiplexed connections, and one Lua script call (EVALSHA,
//! loading the script on NOSCRIPT) per request, whatever the number of descriptors.
//!
//! Multiplexed connections pipeline concurrent requests on their own: calls from many requests
//! share a connection's round trips while a write is in flight.

use std::sync::Arc;
use std::time::Duration;

use bb8::Pool;
use bb8_redis::RedisConnectionManager;
use redis::Script;
use redis::aio::MultiplexedConnection;

use super::key::registry_prefix;
use super::{Applied, Check, Counter, Identity, RegistryError, Store, StoreError, UserRecord};
use crate::algorithm::Algorithm;
use crate::clock::Clock;
use crate::config::mask_secret;
use crate::health::HealthRecord;

/// The Lua source of the decision script, with its KEYS/ARGV contract at the top.
pub const DECIDE_SCRIPT: &str = include_str!("decide.lua");
/// The Lua source of the flag script (flags read by gate checks).
pub const FLAG_SCRIPT: &str = include_str!("flag.lua");
/// The Lua source of the user/API-key registry script.
pub const REGISTRY_SCRIPT: &str = include_str!("registry.lua");

/// Counters in Redis, shared by every Floodgate replica that points at it.
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool<RedisConnectionManager>,
    script: Script,
    flag: Script,
    registry: Script,
    timeout: Duration,
    key_prefix: String,
    /// Time for the decision script; `None` (production) uses the Redis server's clock.
    clock: Option<Arc<dyn Clock>>,
}

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisOptions {
    /// A redis:// URL (with optional user, password and database).
    pub url: String,
    /// Connections in the pool; each is multiplexed, so a few suffice.
    pub pool_size: u32,
    /// Deadline of one call, connection checkout included.
    pub timeout: Duration,
    /// Prefix of every key Floodgate writes (registry and health state included).
    pub key_prefix: String,
    /// Time for the decision script instead of the Redis server's clock: for tests that
    /// inject time. Production leaves it `None`.
    pub clock: Option<Arc<dyn Clock>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("RedisOptions")
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
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
            script: Script::new(DECIDE_SCRIPT),
            flag: Script::new(FLAG_SCRIPT),
            registry: Script::new(REGISTRY_SCRIPT),
            timeout: options.timeout,
            key_prefix: options.key_prefix.clone(),
            clock: options.clock.clone(),
        })
    }

    /// The script's "now" argument: the injected time, or "" for the server's clock.
    fn now_arg(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        match &self.clock {
            Some(clock) => invocation.arg(clock.now_ms()),
            None => invocation.arg(""),
        };
    }

    fn health_key(&self) -> String {
        format!("{}health", self.key_prefix)
    }

    /// Runs one registry operation for `domain` and returns its reply.
    async fn registry<T: redis::FromRedisValue>(
        &self,
        domain: &str,
        op: &str,
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut invocation = self.registry.prepare_invoke();
        invocation
            .arg(op)
            .arg(registry_prefix(&self.key_prefix, domain));
        for arg in args {
            invocation.arg(*arg);
        }
        self.call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    /// Runs a registry change and maps its status reply; `keys` are the API keys it names, so
    /// that "TAKEN n" can say which one (masked).
    async fn change(
        &self,
        domain: &str,
        op: &str,
        args: &[&str],
        user_id: &str,
        keys: &[&str],
    ) -> Result<(), RegistryError> {
        let reply: String = self.registry(domain, op, args).await?;
        match reply.as_str() {
            "OK" => Ok(()),
            "EXISTS" => Err(RegistryError::UserExists(user_id.to_owned())),
            "NO_USER" => Err(RegistryError::UnknownUser(user_id.to_owned())),
            "NO_KEY" => Err(RegistryError::UnknownKey(mask_secret(
                keys.first().copied().unwrap_or_default(),
            ))),
            taken if taken.starts_with("TAKEN ") => {
                let index: usize = taken[6..].parse().unwrap_or(1);
                let key = keys
                    .get(index.saturating_sub(1))
                    .copied()
                    .unwrap_or_default();
                Err(RegistryError::KeyTaken(mask_secret(key)))
            }
            other => Err(StoreError::Protocol(format!("registry replied {other:?}")).into()),
        }
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
        self.now_arg(&mut invocation);
        for check in checks {
            let (algorithm, burst) = match check.algorithm {
                _ if check.gate => ("g", 0),
                Algorithm::TokenBucket { burst } => ("t", burst),
                other => (other.code(), 0),
            };
            invocation
                .key(&check.key)
                .arg(algorithm)
                .arg(check.limit)
                .arg(check.window_secs.saturating_mul(1000))
                .arg(check.hits)
                .arg(u8::from(check.shadow))
                .arg(burst);
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

    async fn set_flag(&self, key: &str, ttl_ms: u64) -> Result<(), StoreError> {
        let mut invocation = self.flag.prepare_invoke();
        invocation.key(key);
        self.now_arg(&mut invocation);
        invocation.arg(ttl_ms);
        self.call(|mut conn| async move { invocation.invoke_async::<i64>(&mut conn).await })
            .await
            .map(drop)
    }

    async fn health(&self) -> Result<Option<HealthRecord>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.health_key());
        let stored: Option<String> = self
            .call(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await?;
        stored
            .map(|json| {
                serde_json::from_str(&json)
                    .map_err(|e| StoreError::Protocol(format!("health record: {e}")))
            })
            .transpose()
    }

    async fn set_health(&self, record: &HealthRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record)
            .map_err(|e| StoreError::Protocol(format!("health record: {e}")))?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.health_key()).arg(json);
        if let Some(expires_ms) = record.expires_ms {
            // Redis drops the record when its TTL ends: the state reverts to NORMAL everywhere.
            cmd.arg("PXAT").arg(expires_ms);
        }
        self.call(|mut conn| async move { cmd.query_async::<()>(&mut conn).await })
            .await
    }

    async fn identity(&self, domain: &str, api_key: &str) -> Result<Option<Identity>, StoreError> {
        let reply: Vec<String> = self.registry(domain, "identity", &[api_key]).await?;
        Ok(match <[String; 2]>::try_from(reply) {
            Ok([user_id, tier]) => Some(Identity { user_id, tier }),
            Err(_) => None,
        })
    }

    async fn user(&self, domain: &str, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        let reply: Vec<String> = self.registry(domain, "user", &[user_id]).await?;
        let mut parts = reply.into_iter();
        Ok(parts.next().map(|tier| UserRecord {
            user_id: user_id.to_owned(),
            tier,
            api_keys: parts.collect(),
        }))
    }

    async fn users(
        &self,
        domain: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let limit = limit.to_string();
        let reply: Vec<Vec<String>> = self.registry(domain, "users", &[after, &limit]).await?;
        reply
            .into_iter()
            .map(|user| {
                let mut parts = user.into_iter();
                match (parts.next(), parts.next()) {
                    (Some(user_id), Some(tier)) => Ok(UserRecord {
                        user_id,
                        tier,
                        api_keys: parts.collect(),
                    }),
                    _ => Err(StoreError::Protocol("short user record".into())),
                }
            })
            .collect()
    }

    async fn create_user(&self, domain: &str, user: &UserRecord) -> Result<(), RegistryError> {
        let keys: Vec<&str> = user.api_keys.iter().map(String::as_str).collect();
        let mut args = vec![user.user_id.as_str(), user.tier.as_str()];
        args.extend(&keys);
        self.change(domain, "create", &args, &user.user_id, &keys)
            .await
    }

    async fn add_key(
        &self,
        domain: &str,
        user_id: &str,
        api_key: &str,
    ) -> Result<(), RegistryError> {
        self.change(domain, "add_key", &[user_id, api_key], user_id, &[api_key])
            .await
    }

    async fn revoke_key(
        &self,
        domain: &str,
        user_id: &str,
        api_key: &str,
    ) -> Result<(), RegistryError> {
        self.change(domain, "revoke", &[user_id, api_key], user_id, &[api_key])
            .await
    }

    async fn set_tier(&self, domain: &str, user_id: &str, tier: &str) -> Result<(), RegistryError> {
        self.change(domain, "tier", &[user_id, tier], user_id, &[])
            .await
    }
}

/// Reads the script's reply: { admitted, over_1, remaining_1, reset_ms_1, ... }.
fn decode(reply: &[i64], checks: usize) -> Result<Applied, StoreError> {
    let [admitted, triples @ ..] = reply else {
        return Err(StoreError::Protocol("empty script reply".into()));
    };
    if triples.len() != 3 * checks {
        return Err(StoreError::Protocol(format!(
            "script replied {} values for {checks} checks",
            reply.len()
        )));
    }
    let counters = triples
        .chunks_exact(3)
        .map(|t| Counter {
            over: t[0] == 1,
            remaining: t[1].max(0) as u64,
            reset_ms: t[2].max(0) as u64,
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
