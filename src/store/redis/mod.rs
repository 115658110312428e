//! The Redis store: every request decided inside one Lua script call (EVALSHA, loading the
//! script on NOSCRIPT) whatever the number of descriptors, over a pool of connections to one
//! master (standalone or found through Sentinels) or a Redis Cluster.
//!
//! Concurrent requests share script calls and round trips (see `batch`); other calls (tier
//! state, registry, flags) go straight over a pooled connection. Every call has a deadline.

mod batch;
pub mod connect;
mod connections;
mod switch;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Script, Value};
use smallvec::SmallVec;

use self::batch::Batcher;
pub use self::connect::{TlsFiles, Topology};
use self::connections::{Conn, Connections};
use super::key::{registry_prefix, slot};
use super::{
    Check, Counted, Counter, CounterStore, Identity, RegistryError, SharedState, StoreError,
    TierModeRecord, UserRecord, UserRegistry, admits,
};
use crate::algorithm::Algorithm;
use crate::clock::Clock;
use crate::config::mask_secret;

/// The Lua source of the decision script, with its KEYS/ARGV contract at the top.
pub const DECIDE_SCRIPT: &str = include_str!("decide.lua");
/// The Lua source of the flag script (flags read by gate checks).
pub const FLAG_SCRIPT: &str = include_str!("flag.lua");
/// The Lua source of the heartbeat script (the local fallback's replica count).
pub const REPLICAS_SCRIPT: &str = include_str!("replicas.lua");
/// The Lua source of the user/API-key registry script.
pub const REGISTRY_SCRIPT: &str = include_str!("registry.lua");

/// What the pipeline dispatchers of a [`RedisStore`] did (none with a Cluster).
#[derive(Debug, Clone, Default)]
pub struct PipelineStats(Option<std::sync::Arc<batch::BatchStats>>);

impl PipelineStats {
    /// Round trips the dispatchers made, and script calls they carried.
    pub fn counts(&self) -> (u64, u64) {
        self.0.as_ref().map_or((0, 0), |stats| {
            (
                stats.round_trips.load(Ordering::Relaxed),
                stats.script_calls.load(Ordering::Relaxed),
            )
        })
    }
}

/// Counters in Redis, shared by every Floodgate replica that points at it.
pub struct RedisStore {
    backend: Connections,
    /// Queues decision calls for pipelining (not used with a cluster, whose connection routes
    /// each call to its slot's node).
    batcher: Option<Batcher>,
    script: Arc<Script>,
    flag: Script,
    replicas: Script,
    registry: Script,
    timeout: Duration,
    key_prefix: String,
    /// Time for the decision script; `None` (production) uses the Redis server's clock.
    clock: Option<Arc<dyn Clock>>,
    /// A second Redis for the counters of per-second limits (the reference's
    /// REDIS_PERSECOND), when there is one.
    per_second: Option<Box<RedisStore>>,
}

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisOptions {
    /// A redis:// or rediss:// URL (with optional user, password and database). With Sentinels
    /// its credentials, database and scheme are used for the master; its host is not.
    pub url: String,
    /// The password, overriding the URL's; one from a file is read again when it changes, and
    /// connections made from then on use it.
    pub password: Option<crate::secrets::Secret>,
    /// Standalone, Sentinel or Cluster.
    pub topology: Topology,
    /// Certificates for rediss://.
    pub tls: TlsFiles,
    /// Connections in the pool (and pipeline dispatchers); each is multiplexed.
    pub pool_size: u32,
    /// Deadline of one call, connection checkout included.
    pub timeout: Duration,
    /// Prefix of every key Floodgate writes (registry and tier mode included).
    pub key_prefix: String,
    /// Time for the decision script instead of the Redis server's clock: for tests that
    /// inject time. Production leaves it `None`.
    pub clock: Option<Arc<dyn Clock>>,
    /// Replicas that must acknowledge a decision's hits (Redis `WAIT`) before it is answered,
    /// so that a failover cannot lose them; 0 (the default) answers without waiting.
    pub wait_replicas: u32,
}

impl RedisOptions {
    /// Options for a standalone server at `url`, with defaults for the rest.
    pub fn standalone(url: &str, key_prefix: &str) -> RedisOptions {
        RedisOptions {
            url: url.to_owned(),
            password: None,
            topology: Topology::Standalone,
            tls: TlsFiles::default(),
            pool_size: 4,
            timeout: Duration::from_secs(2),
            key_prefix: key_prefix.to_owned(),
            clock: None,
            wait_replicas: 0,
        }
    }
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
            .field("topology", &self.topology.kind())
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `options`. Does not connect yet: Floodgate starts while Redis is down and
    /// connects when it appears. Must be called within a Tokio runtime (it starts the
    /// pipeline dispatchers).
    pub fn new(options: &RedisOptions) -> Result<RedisStore, StoreError> {
        // rustls needs one process-wide crypto provider for rediss://; a second install is a
        // harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let script = Arc::new(Script::new(DECIDE_SCRIPT));
        let (backend, batcher) = match &options.topology {
            Topology::Cluster { .. } if options.wait_replicas > 0 => {
                return Err(StoreError::Settings(
                    "Redis settings: --redis-wait-replicas needs a standalone or Sentinel Redis \
                     (a Cluster's WAIT would cover one shard's replicas per call)"
                        .into(),
                ));
            }
            Topology::Cluster { nodes } => (
                Connections::cluster(
                    nodes,
                    &options.url,
                    &options.tls,
                    options.timeout,
                    options.password.clone(),
                )?,
                None,
            ),
            topology => {
                let connector = connect::Connector::new(
                    &options.url,
                    topology,
                    &options.tls,
                    options.password.clone(),
                )?;
                let backend = Connections::pooled(connector, options.pool_size, options.timeout);
                let batcher = Batcher::start(
                    backend.clone(),
                    script.clone(),
                    options.pool_size,
                    options.timeout,
                    options.wait_replicas,
                );
                (backend, Some(batcher))
            }
        };
        Ok(RedisStore {
            backend,
            batcher,
            script,
            flag: Script::new(FLAG_SCRIPT),
            replicas: Script::new(REPLICAS_SCRIPT),
            registry: Script::new(REGISTRY_SCRIPT),
            timeout: options.timeout,
            key_prefix: options.key_prefix.clone(),
            clock: options.clock.clone(),
            per_second: None,
        })
    }

    /// This store, with the counters of per-second limits in `per_second` instead (the
    /// reference's REDIS_PERSECOND: a second Redis takes the busiest, shortest-lived keys).
    /// Everything else (other counters, flags, tier mode, registry) stays here. A request
    /// with counters in both is decided as a request across cluster slots is: both evaluated,
    /// then, if admitted, both counted.
    pub fn with_per_second(mut self, per_second: RedisStore) -> RedisStore {
        self.per_second = Some(Box::new(per_second));
        self
    }

    /// The pipeline dispatchers' counts, as a handle that stays valid once the store is
    /// handed to a limiter.
    pub fn pipeline_stats(&self) -> PipelineStats {
        PipelineStats(self.batcher.as_ref().map(|b| b.stats.clone()))
    }

    /// Runs `work` on a connection within the store's timeout (see [`Connections::within`]).
    async fn call<T, F>(&self, work: impl FnOnce(Conn) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        self.backend.within(deadline, self.timeout, work).await
    }

    /// Runs one script invocation on a connection, retiring the connection on a fatal error.
    async fn invoke<T: redis::FromRedisValue + Send>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.call(|mut conn| async move {
            let result = invocation.invoke_async(&mut conn).await;
            result.map_err(|e| {
                conn.check(&e);
                StoreError::from(e)
            })
        })
        .await
    }

    /// Runs one command on a connection.
    async fn command<T: redis::FromRedisValue + Send>(&self, cmd: Cmd) -> Result<T, StoreError> {
        self.call(|mut conn| async move {
            let result = cmd.query_async(&mut conn).await;
            result.map_err(|e| {
                conn.check(&e);
                StoreError::from(e)
            })
        })
        .await
    }

    /// One decision script call for checks that share a slot (or any checks off-cluster).
    async fn decide_call(&self, checks: &[Check], dry_run: bool) -> Result<Counted, StoreError> {
        let part = ScriptPart::new(checks);
        let now = self.clock.as_ref().map(|clock| clock.now_ms());
        match &self.batcher {
            Some(batcher) => batcher.call(part, now, dry_run).await,
            // Boxed: a cluster call's future is large and the batched one is the hot path.
            None => {
                let cmd = script_call(self.script.get_hash(), now, dry_run, [&part]);
                let value = Box::pin(self.cluster_eval(cmd)).await?;
                decision_reply(&value, checks.len())
            }
        }
    }

    /// EVALSHA on the cluster, loading the script on the slot's node on NOSCRIPT.
    async fn cluster_eval(&self, cmd: Cmd) -> Result<Value, StoreError> {
        self.call(|mut conn| async move {
            let first = conn.req_packed_command(&cmd).await;
            // The cluster client may hand NOSCRIPT back as an error or as an error value.
            let missing = match &first {
                Err(e) => e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript),
                Ok(Value::ServerError(e)) => e.code() == "NOSCRIPT",
                Ok(_) => false,
            };
            if !missing {
                return first.map_err(StoreError::from);
            }
            // The cluster client sends SCRIPT LOAD to every master.
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(DECIDE_SCRIPT);
            let _: Value = load.query_async(&mut conn).await?;
            conn.req_packed_command(&cmd)
                .await
                .map_err(StoreError::from)
        })
        .await
    }

    /// The checks at `members` as groups that one script call each can decide: one group, or
    /// one per slot on a cluster.
    fn groups<'a>(
        &'a self,
        checks: &[Check],
        members: &[usize],
    ) -> impl Iterator<Item = (&'a RedisStore, Vec<usize>)> + 'a {
        let groups: Vec<Vec<usize>> = if self.batcher.is_some() {
            vec![members.to_vec()]
        } else {
            let part: Vec<Check> = members.iter().map(|&i| checks[i].clone()).collect();
            slot_groups(&part)
                .into_iter()
                .map(|(_, group)| group.into_iter().map(|j| members[j]).collect())
                .collect()
        };
        groups.into_iter().map(move |group| (self, group))
    }

    /// Checks spread over several script calls (cluster slots, or the per-second Redis): all
    /// groups evaluated without writing, then, only if the request is admitted (the admission
    /// rule over every group's counters), counted (each group atomically); a denied request
    /// counts only its `count_denied` checks.
    async fn apply_across(
        checks: &[Check],
        groups: &[(&RedisStore, Vec<usize>)],
    ) -> Result<Counted, StoreError> {
        let unknown = Counter {
            over: false,
            remaining: 0,
            reset_ms: 0,
        };
        let mut counters = vec![unknown; checks.len()];
        for (store, members) in groups {
            let part: Vec<Check> = members.iter().map(|&i| checks[i].clone()).collect();
            let applied = store.decide_call(&part, true).await?;
            for (&i, counter) in members.iter().zip(applied.counters) {
                counters[i] = counter;
            }
        }
        let mut admitted = admits(checks, |i| counters[i].over);
        let decided = admitted;
        for (store, members) in groups {
            let counted: Vec<usize> = members
                .iter()
                .copied()
                .filter(|&i| decided || checks[i].count_denied)
                .collect();
            if counted.is_empty() {
                continue;
            }
            let part: Vec<Check> = counted
                .iter()
                .map(|&i| {
                    let mut check = checks[i].clone();
                    // The request's quotas have room together, which no slot can see alone.
                    if decided && check.quota {
                        (check.quota, check.shadow) = (false, true);
                    }
                    check
                })
                .collect();
            let applied = store.decide_call(&part, false).await?;
            // A slot's limits are checked again as it counts: a race lost since the dry run
            // denies there (and the slots counted before keep their hits; see docs/redis.md).
            admitted &= !decided || applied.admitted;
            for (&i, counter) in counted.iter().zip(applied.counters) {
                counters[i] = counter;
            }
        }
        Ok(Counted {
            admitted,
            counters: counters.into_iter().collect(),
        })
    }

    /// Announces replica `id` as live for `ttl_ms` and answers how many replicas are live (the
    /// local fallback divides limits by it).
    pub async fn live_replicas(&self, id: &str, ttl_ms: u64) -> Result<u32, StoreError> {
        let mut invocation = self.replicas.prepare_invoke();
        invocation
            .key(format!("{}replicas", self.key_prefix))
            .arg(id)
            .arg(ttl_ms);
        match &self.clock {
            Some(clock) => invocation.arg(clock.now_ms()),
            None => invocation.arg(""),
        };
        self.invoke::<u32>(invocation).await
    }

    /// The tier mode's key; "health", the admin API's name for it (kept across versions).
    fn tier_mode_key(&self) -> String {
        format!("{}health", self.key_prefix)
    }

    /// Runs one registry operation for `domain` and returns its reply.
    async fn registry<T: redis::FromRedisValue + Send>(
        &self,
        domain: &str,
        op: &str,
        args: &[&str],
    ) -> Result<T, StoreError> {
        let base = registry_prefix(&self.key_prefix, domain);
        let mut invocation = self.registry.prepare_invoke();
        // The users index is declared so that a cluster routes the call to the registry's slot.
        invocation.key(format!("{base}users")).arg(op).arg(&base);
        for arg in args {
            invocation.arg(*arg);
        }
        self.invoke(invocation).await
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
        change_reply(&reply, user_id, keys)
    }
}

/// A registry change's status reply (see registry.lua) as its result; `keys` are the API keys
/// the change names, so that "TAKEN n" can say which one (masked).
pub(crate) fn change_reply(reply: &str, user_id: &str, keys: &[&str]) -> Result<(), RegistryError> {
    match reply {
        "OK" => Ok(()),
        "EXISTS" => Err(RegistryError::UserExists(user_id.to_owned())),
        "NO_USER" => Err(RegistryError::UnknownUser(user_id.to_owned())),
        "NO_KEY" => Err(RegistryError::UnknownKey(mask_secret(
            keys.first().copied().unwrap_or_default(),
        ))),
        taken if taken.starts_with("TAKEN ") => {
            let index: usize = taken["TAKEN ".len()..].parse().unwrap_or(1);
            let key = keys
                .get(index.saturating_sub(1))
                .copied()
                .unwrap_or_default();
            Err(RegistryError::KeyTaken(mask_secret(key)))
        }
        other => Err(StoreError::Protocol(format!("registry replied {other:?}")).into()),
    }
}

/// Whether a check's counter lives in the per-second Redis, as the reference routes them: a
/// one-second window (flags stay with the rest).
fn per_second(check: &Check) -> bool {
    check.window_secs == 1 && !check.gate
}

impl RedisStore {
    /// Checks and counts `checks`, all in this Redis.
    async fn apply_here(&self, checks: &[Check]) -> Result<Counted, StoreError> {
        if self.batcher.is_some() {
            return self.decide_call(checks, false).await;
        }
        // A cluster: one call per slot. With several slots, all are first evaluated without
        // writing; only if every one admits are they counted (each slot atomically, re-checking
        // its limits), so a request denied anywhere consumes nothing (see docs/redis.md).
        let groups = slot_groups(checks);
        if groups.len() == 1 {
            return self.decide_call(checks, false).await;
        }
        let groups: Vec<(&RedisStore, Vec<usize>)> =
            groups.into_iter().map(|(_, group)| (self, group)).collect();
        // Boxed: the hot path's future stays small (it is moved on every request).
        Box::pin(RedisStore::apply_across(checks, &groups)).await
    }

    /// PING, answered.
    async fn ping_here(&self) -> Result<(), StoreError> {
        self.command::<String>(redis::cmd("PING")).await.map(drop)
    }

    /// A request with counters in both this Redis and the per-second one.
    async fn apply_split(
        &self,
        per_second_store: &RedisStore,
        checks: &[Check],
    ) -> Result<Counted, StoreError> {
        let (fast, rest): (Vec<usize>, Vec<usize>) =
            (0..checks.len()).partition(|&i| per_second(&checks[i]));
        if rest.is_empty() {
            return per_second_store.apply_here(checks).await;
        }
        let groups: Vec<(&RedisStore, Vec<usize>)> = self
            .groups(checks, &rest)
            .chain(per_second_store.groups(checks, &fast))
            .collect();
        RedisStore::apply_across(checks, &groups).await
    }
}

impl CounterStore for RedisStore {
    async fn apply(&self, checks: &[Check]) -> Result<Counted, StoreError> {
        if let Some(store) = &self.per_second
            && checks.iter().any(per_second)
        {
            // Boxed: the hot path's future stays small.
            return Box::pin(self.apply_split(store, checks)).await;
        }
        self.apply_here(checks).await
    }

    fn observe(&self) {
        if let Some((in_use, idle)) = self.backend.pool_state() {
            metrics::gauge!(crate::telemetry::REDIS_CONNECTIONS, "state" => "in_use")
                .set(f64::from(in_use));
            metrics::gauge!(crate::telemetry::REDIS_CONNECTIONS, "state" => "idle")
                .set(f64::from(idle));
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_here().await?;
        if let Some(store) = &self.per_second {
            store.ping_here().await?;
        }
        Ok(())
    }
}

impl SharedState for RedisStore {
    async fn set_flag(&self, key: &str, ttl_ms: u64) -> Result<(), StoreError> {
        let mut invocation = self.flag.prepare_invoke();
        invocation.key(key);
        match &self.clock {
            Some(clock) => invocation.arg(clock.now_ms()),
            None => invocation.arg(""),
        };
        invocation.arg(ttl_ms);
        self.invoke::<i64>(invocation).await.map(drop)
    }

    async fn tier_mode(&self) -> Result<Option<TierModeRecord>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.tier_mode_key());
        let stored: Option<String> = self.command(cmd).await?;
        stored.as_deref().map(TierModeRecord::from_json).transpose()
    }

    async fn set_tier_mode(&self, record: &TierModeRecord) -> Result<(), StoreError> {
        let json = record.to_json()?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.tier_mode_key()).arg(json);
        if let Some(expires_ms) = record.expires_ms {
            // Redis drops the record when its TTL ends: the state reverts to NORMAL everywhere.
            cmd.arg("PXAT").arg(expires_ms);
        }
        self.command::<()>(cmd).await
    }
}

impl UserRegistry for RedisStore {
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
        users_reply(reply)
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

/// A `users` reply (see registry.lua): per user its id, its tier, then its keys.
pub(crate) fn users_reply(reply: Vec<Vec<String>>) -> Result<Vec<UserRecord>, StoreError> {
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

/// Check indices grouped by Redis Cluster slot, in first-seen order.
fn slot_groups(checks: &[Check]) -> Vec<(u16, Vec<usize>)> {
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for (i, check) in checks.iter().enumerate() {
        let s = slot(check.key.as_bytes());
        match groups.iter_mut().find(|(g, _)| *g == s) {
            Some((_, members)) => members.push(i),
            None => groups.push((s, vec![i])),
        }
    }
    groups
}

/// One request's share of a decision script call (see decide.lua): its keys, then its
/// number of checks and four values per check (five for a token bucket). Encoded by the
/// request, so the dispatcher only copies bytes into the call it sends; inline for the usual
/// few checks, since the request's thread makes it and the dispatcher's frees it.
struct ScriptPart {
    /// The arguments, one after the other.
    bytes: SmallVec<[u8; 256]>,
    /// Where each argument ends in `bytes`.
    ends: SmallVec<[u32; 24]>,
    checks: usize,
}

impl ScriptPart {
    fn new(checks: &[Check]) -> ScriptPart {
        let mut part = ScriptPart {
            bytes: SmallVec::new(),
            ends: SmallVec::new(),
            checks: checks.len(),
        };
        for check in checks {
            part.push(check.key.as_bytes());
        }
        part.push_number(checks.len() as u64);
        for check in checks {
            // The algorithm's code ("g" for a gate), in capitals for a shadow check, then "q"
            // for a quota and "c" for a check counting denied hits.
            let code = if check.gate {
                "g"
            } else {
                check.algorithm.code()
            };
            let letter = code.as_bytes()[0];
            let mut flags = [
                if check.shadow {
                    letter.to_ascii_uppercase()
                } else {
                    letter
                },
                0,
                0,
            ];
            let mut len = 1;
            for (set, flag) in [(check.quota, b'q'), (check.count_denied, b'c')] {
                if set {
                    flags[len] = flag;
                    len += 1;
                }
            }
            part.push(&flags[..len]);
            part.push_number(check.limit);
            part.push_number(check.window_secs.saturating_mul(1000));
            part.push_number(check.hits);
            if let (Algorithm::TokenBucket { burst }, false) = (check.algorithm, check.gate) {
                part.push_number(burst);
            }
        }
        part
    }

    fn push(&mut self, arg: &[u8]) {
        self.bytes.extend_from_slice(arg);
        self.ends.push(self.bytes.len() as u32);
    }

    /// A number in decimal, as Redis reads it (and as redis-rs writes one).
    fn push_number(&mut self, n: impl itoa::Integer) {
        self.push(itoa::Buffer::new().format(n).as_bytes());
    }

    /// The arguments, in order.
    fn args(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| &self.bytes[start as usize..end as usize])
    }

    /// The keys, then the script arguments.
    fn split(&self) -> (impl Iterator<Item = &[u8]>, impl Iterator<Item = &[u8]>) {
        (self.args().take(self.checks), self.args().skip(self.checks))
    }
}

/// The EVALSHA deciding `parts` one after the other, at `now` (`None`: the server's clock);
/// `dry_run` evaluates and never writes.
fn script_call<'a>(
    hash: &str,
    now: Option<u64>,
    dry_run: bool,
    parts: impl IntoIterator<Item = &'a ScriptPart> + Clone,
) -> Cmd {
    let (mut args, mut bytes, mut keys) = (5, 64, 0);
    for part in parts.clone() {
        args += part.ends.len();
        bytes += part.bytes.len();
        keys += part.checks;
    }
    let mut cmd = Cmd::with_capacity(args, bytes);
    cmd.arg("EVALSHA").arg(hash).arg(keys);
    for part in parts.clone() {
        for key in part.split().0 {
            cmd.arg(key);
        }
    }
    match now {
        Some(now) => cmd.arg(now),
        None => cmd.arg(""),
    };
    cmd.arg(u8::from(dry_run));
    for part in parts {
        for arg in part.split().1 {
            cmd.arg(arg);
        }
    }
    cmd
}

/// The list a decision script call answered (an error reply becomes that call's error).
fn reply_values(reply: &Value) -> Result<&[Value], StoreError> {
    match reply {
        Value::Array(values) => Ok(values),
        Value::ServerError(e) => Err(StoreError::Unavailable(match e.details() {
            Some(details) => format!("Redis replied: {} {details}", e.code()),
            None => format!("Redis replied: {}", e.code()),
        })),
        other => Err(StoreError::Protocol(format!(
            "decision reply: not an array: {other:?}"
        ))),
    }
}

/// The answer of a decision script call deciding one request of `checks` checks.
pub(crate) fn decision_reply(reply: &Value, checks: usize) -> Result<Counted, StoreError> {
    decode(reply_values(reply)?, checks)
}

/// One request's answers (admitted, then three values per check) from a decision reply.
fn decode(values: &[Value], checks: usize) -> Result<Counted, StoreError> {
    let number = |v: &Value| match v {
        Value::Int(n) => Ok(*n),
        other => Err(StoreError::Protocol(format!(
            "decision reply: not an integer: {other:?}"
        ))),
    };
    let [admitted, triples @ ..] = values else {
        return Err(StoreError::Protocol("empty script reply".into()));
    };
    if triples.len() != 3 * checks {
        return Err(StoreError::Protocol(format!(
            "script replied {} values for {checks} checks",
            values.len()
        )));
    }
    let counters = triples
        .chunks_exact(3)
        .map(|t| {
            Ok(Counter {
                over: number(&t[0])? == 1,
                remaining: number(&t[1])?.max(0) as u64,
                reset_ms: number(&t[2])?.max(0) as u64,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Counted {
        admitted: number(admitted)? == 1,
        counters,
    })
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> StoreError {
        StoreError::Unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(reply: &[u8]) -> String {
        let value = redis::parse_redis_value(reply).unwrap();
        reply_values(&value).unwrap_err().to_string()
    }

    #[test]
    fn error_replies_read_as_code_and_details() {
        assert!(
            error_of(b"-READONLY You can't write against a read only replica.\r\n")
                .ends_with("Redis replied: READONLY You can't write against a read only replica."),
        );
        assert!(error_of(b"-ERR\r\n").ends_with("Redis replied: ERR"));
        assert!(error_of(b":1\r\n").contains("not an array"));
    }

    #[test]
    fn decision_replies_of_another_shape_are_protocol_errors() {
        let reply = |bytes: &[u8]| redis::parse_redis_value(bytes).unwrap();
        let counted = decision_reply(&reply(b"*4\r\n:1\r\n:0\r\n:4\r\n:-5\r\n"), 1).unwrap();
        assert!(counted.admitted);
        assert_eq!(
            (counted.counters[0].remaining, counted.counters[0].reset_ms),
            (4, 0)
        );
        for (bytes, checks) in [
            (&b"*0\r\n"[..], 0),
            (b"*4\r\n:1\r\n:0\r\n:4\r\n:5\r\n", 2),
            (b"*4\r\n:1\r\n+x\r\n:4\r\n:5\r\n", 1),
        ] {
            let error = decision_reply(&reply(bytes), checks).unwrap_err();
            assert!(matches!(error, StoreError::Protocol(_)), "{error}");
        }
    }

    #[test]
    fn registry_replies_map_to_their_refusals() {
        let keys = ["first-key-1234", "second-key-5678"];
        assert!(change_reply("OK", "u", &keys).is_ok());
        let refusal = |reply| change_reply(reply, "u", &keys).unwrap_err().to_string();
        assert_eq!(refusal("EXISTS"), "user 'u' already exists");
        assert_eq!(refusal("NO_USER"), "unknown user 'u'");
        assert!(refusal("TAKEN 2").contains(&mask_secret("second-key-5678")));
        // A count the script never sends still names a key, and says nothing else.
        assert!(refusal("TAKEN 99").starts_with("API key"));
        assert!(refusal("TAKEN é").contains(&mask_secret("first-key-1234")));
        assert!(refusal("WHAT").contains("registry replied"));
        let users = users_reply(vec![vec!["u".into(), "free".into(), "k".into()]]).unwrap();
        assert_eq!(users[0].api_keys, vec!["k".to_owned()]);
        assert!(users_reply(vec![vec!["u".into()]]).is_err());
    }
}
