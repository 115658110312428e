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

use super::key::registry_prefix;
use super::{Applied, Check, Counter, Identity, RegistryError, Store, StoreError, UserRecord};
use crate::config::mask_secret;
use crate::health::HealthRecord;

/// The Lua source of the fixed-window script, with its KEYS/ARGV contract at the top.
pub const FIXED_WINDOW_SCRIPT: &str = include_str!("fixed_window.lua");
/// The Lua source of the user/API-key registry script.
pub const REGISTRY_SCRIPT: &str = include_str!("registry.lua");

/// Counters in Redis, shared by every Floodgate replica that points at it.
#[derive(Debug, Clone)]
pub struct RedisStore {
    pool: Pool<RedisConnectionManager>,
    script: Script,
    registry: Script,
    timeout: Duration,
    key_prefix: String,
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
    /// Prefix of every key Floodgate writes (registry and health state included).
    pub key_prefix: String,
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
            registry: Script::new(REGISTRY_SCRIPT),
            timeout: options.timeout,
            key_prefix: options.key_prefix.clone(),
        })
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
        for check in checks {
            invocation
                .key(&check.key)
                .arg(check.limit)
                .arg(check.window_secs)
                .arg(check.hits)
                .arg(u8::from(check.shadow))
                .arg(u8::from(check.gate));
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
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(1).arg("PX").arg(ttl_ms.max(1));
        self.call(|mut conn| async move { cmd.query_async::<()>(&mut conn).await })
            .await
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
