//! Command line and environment: every flag also reads `FLOODGATE_<FLAG>`; [`reference`] reads
//! envoyproxy/ratelimit's environment into the same flags.

pub mod reference;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::breaker::BreakerSettings;
use crate::config::LoadOptions;
use crate::decision::FailureMode;
use crate::limiter::{DEFAULT_CACHE_TTL, LimiterOptions};
use crate::rls::InputLimits;
use crate::secrets::{Secret, SecretError};
use crate::server::{GrpcTls, ListenerTls, Protection};
use crate::store::memory::DEFAULT_MAX_KEYS;
use crate::store::redis::{RedisOptions, TlsFiles, Topology};
use crate::xds::Backoff;

/// `--local-cache-size`: enough counters to hold a wide attack's keys locally, at about 100
/// bytes an entry (10 MB); the library's own default is off.
pub const DEFAULT_LOCAL_CACHE_SIZE: usize = 100_000;

/// The log filter when RUST_LOG is unset: errors, warnings and lifecycle events, nothing per
/// request.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// A duration as the command line writes it (`60s`, `50ms`), for clap's `default_value`: each
/// default is then written once, as the `Duration` the code itself uses. Whole seconds stay in
/// seconds (humantime would write `1m`), as the README's table of defaults does.
fn duration_text(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// Floodgate: a rate limit service for Envoy and Istio (Envoy RLS v3).
#[derive(Debug, Parser)]
#[command(name = "floodgate", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve ShouldRateLimit over gRPC, and /healthcheck and /json over HTTP.
    Serve(Box<ServeSettings>),
    /// Validate a config file or directory; exits non-zero with the problem.
    CheckConfig {
        /// A domain YAML file, or a directory of them.
        path: PathBuf,
        /// Let a domain span several files, merging their descriptors.
        #[arg(long, env = "FLOODGATE_MERGE_DOMAIN_CONFIG")]
        merge_domain_config: bool,
        /// Read every file of the directory and its subdirectories (as `serve` does).
        #[arg(long, env = "FLOODGATE_CONFIG_ALL_FILES")]
        config_all_files: bool,
        /// Read hidden entries too (as `serve` does).
        #[arg(long, env = "FLOODGATE_CONFIG_HIDDEN_FILES")]
        config_hidden_files: bool,
    },
}

/// Where counters are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// In this process (the default; one replica only).
    Memory,
    /// In Redis, shared by all replicas.
    Redis,
    /// In a SQLite file, shared by the processes of one machine and kept across restarts.
    Sqlite,
}

/// A Redis topology from its settings: a cluster, Sentinels, or one server.
fn topology(
    cluster_nodes: &[String],
    sentinels: &[String],
    master_name: Option<&str>,
    sentinel_password: Option<Secret>,
) -> Topology {
    if !cluster_nodes.is_empty() {
        Topology::Cluster {
            nodes: cluster_nodes.to_vec(),
        }
    } else if !sentinels.is_empty() {
        Topology::Sentinel {
            sentinels: sentinels.to_vec(),
            master_name: master_name.unwrap_or_default().to_owned(),
            sentinel_password,
        }
    } else {
        Topology::Standalone
    }
}

/// `url` with the user name and password put in (percent-encoded), when given separately.
fn with_credentials(url: &str, username: Option<&str>, password: Option<&str>) -> String {
    if username.is_none() && password.is_none() {
        return url.to_owned();
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // Drop credentials already in the URL; the separate settings win.
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    // Everything but RFC 3986's unreserved characters.
    const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let encode = |s: &str| percent_encoding::utf8_percent_encode(s, USERINFO).to_string();
    let user = username.map(encode).unwrap_or_default();
    let pass = password
        .map(|p| format!(":{}", encode(p)))
        .unwrap_or_default();
    format!("{scheme}://{user}{pass}@{host}")
}

/// `--failure-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailureModeArg {
    /// gRPC UNAVAILABLE.
    Error,
    /// OK, marked degraded.
    Allow,
    /// OVER_LIMIT, marked degraded.
    Deny,
    /// This replica's own counters, each limit divided among the replicas (Redis store only).
    Local,
}

impl From<FailureModeArg> for FailureMode {
    fn from(mode: FailureModeArg) -> FailureMode {
        match mode {
            FailureModeArg::Error => FailureMode::Error,
            FailureModeArg::Allow => FailureMode::Allow,
            FailureModeArg::Deny => FailureMode::Deny,
            FailureModeArg::Local => FailureMode::Local,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Where the limits come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfigSourceKind {
    /// Domain files (--config), polled for changes.
    Files,
    /// An xDS control plane (--xds-server), state of the world.
    Xds,
}

/// The secret given as `value`, or in the file `file` (clap refuses both at once).
fn secret(value: Option<&str>, file: Option<&PathBuf>) -> Result<Option<Secret>, SecretError> {
    match (value, file) {
        (_, Some(file)) => Secret::from_file(file).map(Some),
        (Some(value), None) => Ok(Some(Secret::given(value))),
        (None, None) => Ok(None),
    }
}

/// `key=value`.
fn key_value(pair: &str) -> Result<(String, String), String> {
    pair.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("'{pair}' is not key=value"))
}

/// A URL path for an HTTP route: starts with '/'.
fn metrics_path(path: &str) -> Result<String, String> {
    if path.starts_with('/') && !path.contains(['?', '#', ' ']) {
        Ok(path.to_owned())
    } else {
        Err(format!("'{path}' is not a URL path (such as /metrics)"))
    }
}

/// Everything `floodgate serve` takes.
#[derive(Debug, Clone, Parser)]
pub struct ServeSettings {
    /// A domain YAML file, or a directory of them (with --config-source files).
    #[arg(long, env = "FLOODGATE_CONFIG", required_unless_present = "xds_server")]
    pub config: Option<PathBuf>,
    /// Where the limits come from: files (--config) or an xDS control plane (--xds-server).
    #[arg(long, env = "FLOODGATE_CONFIG_SOURCE", value_enum, default_value_t = ConfigSourceKind::Files)]
    pub config_source: ConfigSourceKind,
    /// The xDS control plane (host:port, or an http:// or https:// URL), for
    /// --config-source xds.
    #[arg(long, env = "FLOODGATE_XDS_SERVER")]
    pub xds_server: Option<String>,
    /// The node id the control plane knows this service by.
    #[arg(long, env = "FLOODGATE_XDS_NODE_ID", default_value = "floodgate")]
    pub xds_node_id: String,
    /// Node metadata: key=value pairs, comma-separated.
    #[arg(long, env = "FLOODGATE_XDS_NODE_METADATA", value_delimiter = ',', value_parser = key_value)]
    pub xds_node_metadata: Vec<(String, String)>,
    /// gRPC metadata sent on the stream: key=value pairs, comma-separated.
    #[arg(long, env = "FLOODGATE_XDS_HEADERS", value_delimiter = ',', value_parser = key_value, hide_env_values = true)]
    pub xds_headers: Vec<(String, String)>,
    /// Connect to the control plane over TLS (implied by the other --xds-tls flags).
    #[arg(long, env = "FLOODGATE_XDS_TLS")]
    pub xds_tls: bool,
    /// CA certificate (PEM) the control plane's certificate must chain to (default: the
    /// system's roots).
    #[arg(long, env = "FLOODGATE_XDS_TLS_CA")]
    pub xds_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, env = "FLOODGATE_XDS_TLS_CERT", requires = "xds_tls_key")]
    pub xds_tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM: PKCS#1, PKCS#8 or SEC1).
    #[arg(long, env = "FLOODGATE_XDS_TLS_KEY", requires = "xds_tls_cert")]
    pub xds_tls_key: Option<PathBuf>,
    /// The name the control plane's certificate must carry (default: the server's host).
    #[arg(long, env = "FLOODGATE_XDS_TLS_SERVER_NAME")]
    pub xds_tls_server_name: Option<String>,
    /// First delay before reconnecting to the control plane.
    #[arg(long, env = "FLOODGATE_XDS_BACKOFF_INITIAL", default_value = duration_text(Backoff::default().initial), value_parser = humantime::parse_duration)]
    pub xds_backoff_initial: Duration,
    /// Longest delay before reconnecting.
    #[arg(long, env = "FLOODGATE_XDS_BACKOFF_MAX", default_value = duration_text(Backoff::default().max), value_parser = humantime::parse_duration)]
    pub xds_backoff_max: Duration,
    /// Each delay is the previous one times this.
    #[arg(long, env = "FLOODGATE_XDS_BACKOFF_FACTOR", default_value_t = Backoff::default().factor)]
    pub xds_backoff_factor: f64,
    /// Draw each delay between half and all of itself.
    #[arg(long, env = "FLOODGATE_XDS_BACKOFF_JITTER", default_value_t = Backoff::default().jitter, action = clap::ArgAction::Set)]
    pub xds_backoff_jitter: bool,
    /// The largest xDS response accepted, in bytes (default 4 MiB).
    #[arg(long, env = "FLOODGATE_XDS_MAX_MESSAGE_SIZE")]
    pub xds_max_message_size: Option<usize>,
    /// gRPC listen address (ShouldRateLimit).
    #[arg(long, env = "FLOODGATE_GRPC_ADDR", default_value = "0.0.0.0:8081")]
    pub grpc_addr: SocketAddr,
    /// Serve gRPC on this Unix socket instead of --grpc-addr (the reference's GRPC_UDS), in
    /// plaintext; a socket file left there by an earlier run is replaced.
    #[arg(long, env = "FLOODGATE_GRPC_UDS")]
    pub grpc_uds: Option<PathBuf>,
    /// Debug listen address (`/rlconfig`: the loaded limits as text); off unless given.
    #[arg(long, env = "FLOODGATE_DEBUG_ADDR")]
    pub debug_addr: Option<SocketAddr>,
    /// Start even when the config cannot be loaded: ShouldRateLimit answers UNAVAILABLE until
    /// a config loads (the reference's FORCE_START_WITHOUT_INITIAL_CONFIG).
    #[arg(long, env = "FLOODGATE_START_WITHOUT_CONFIG")]
    pub start_without_config: bool,
    /// Report healthy only once a config with at least one domain is loaded (the reference's
    /// HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED).
    #[arg(long, env = "FLOODGATE_HEALTHY_ONLY_WITH_CONFIG")]
    pub healthy_only_with_config: bool,
    /// Also count under envoyproxy/ratelimit's Prometheus metric names
    /// (`ratelimit_service_rate_limit_total_hits{domain,key1,key2}`, ...), for its dashboards.
    #[arg(long, env = "FLOODGATE_REFERENCE_METRICS")]
    pub reference_metrics: bool,
    /// A second metrics listener, as the reference's PROMETHEUS_ADDR (implies
    /// --reference-metrics); /metrics on the HTTP address serves the same.
    #[arg(long, env = "FLOODGATE_REFERENCE_METRICS_ADDR")]
    pub reference_metrics_addr: Option<SocketAddr>,
    /// The path of the metrics on --reference-metrics-addr.
    #[arg(
        long,
        env = "FLOODGATE_REFERENCE_METRICS_PATH",
        default_value = "/metrics",
        value_parser = metrics_path
    )]
    pub reference_metrics_path: String,
    /// A statsd_exporter mapping file for the reference's names (its PROMETHEUS_MAPPER_YAML);
    /// without it, the reference's built-in mapping.
    #[arg(long, env = "FLOODGATE_REFERENCE_METRICS_MAPPING")]
    pub reference_metrics_mapping: Option<PathBuf>,
    /// HTTP listen address (/healthcheck, /json).
    #[arg(long, env = "FLOODGATE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Serve the admin API (/admin) on this address of its own (e.g. 127.0.0.1:8082), and not
    /// on the HTTP address; without it, /admin is on the HTTP address.
    #[arg(long, env = "FLOODGATE_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// Counter store.
    #[arg(long, env = "FLOODGATE_STORE", value_enum, default_value_t = StoreKind::Memory)]
    pub store: StoreKind,
    /// Redis URL (redis://[user:password@]host:port/db), for --store redis.
    #[arg(
        long,
        env = "FLOODGATE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0",
        hide_env_values = true
    )]
    pub redis_url: String,
    /// Find the Redis master through these Sentinels (host:port,host:port,...).
    #[arg(
        long,
        env = "FLOODGATE_REDIS_SENTINELS",
        value_delimiter = ',',
        requires = "redis_master_name"
    )]
    pub redis_sentinels: Vec<String>,
    /// The master's name as the Sentinels know it.
    #[arg(long, env = "FLOODGATE_REDIS_MASTER_NAME")]
    pub redis_master_name: Option<String>,
    /// Password of the Sentinels themselves (the master's comes from --redis-url or
    /// --redis-password).
    #[arg(
        long,
        env = "FLOODGATE_REDIS_SENTINEL_PASSWORD",
        hide_env_values = true
    )]
    pub redis_sentinel_password: Option<String>,
    /// A file holding the Sentinels' password, read again when it changes (instead of
    /// --redis-sentinel-password, so that it is in neither the environment nor the process list).
    #[arg(
        long,
        env = "FLOODGATE_REDIS_SENTINEL_PASSWORD_FILE",
        conflicts_with = "redis_sentinel_password"
    )]
    pub redis_sentinel_password_file: Option<PathBuf>,
    /// Use a Redis Cluster reached through these nodes (host:port,host:port,...).
    #[arg(
        long,
        env = "FLOODGATE_REDIS_CLUSTER_NODES",
        value_delimiter = ',',
        conflicts_with = "redis_sentinels"
    )]
    pub redis_cluster_nodes: Vec<String>,
    /// Redis password (overrides one in --redis-url; keeps it out of the URL).
    #[arg(long, env = "FLOODGATE_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// A file holding the Redis password, read again when it changes (new connections use the
    /// new one); instead of --redis-password, so that it is in neither the environment nor the
    /// process list. Overrides a password in --redis-url.
    #[arg(
        long,
        env = "FLOODGATE_REDIS_PASSWORD_FILE",
        conflicts_with = "redis_password"
    )]
    pub redis_password_file: Option<PathBuf>,
    /// Redis ACL user name (overrides one in --redis-url).
    #[arg(long, env = "FLOODGATE_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// CA certificate (PEM) for rediss:// instead of the system roots.
    #[arg(long, env = "FLOODGATE_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for Redis servers that require one.
    #[arg(long, env = "FLOODGATE_REDIS_TLS_CERT", requires = "redis_tls_key")]
    pub redis_tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "FLOODGATE_REDIS_TLS_KEY", requires = "redis_tls_cert")]
    pub redis_tls_key: Option<PathBuf>,
    /// Verify Redis' certificate chain but not the host name in it (for servers reached by an
    /// address their certificate does not list). Not applied with Sentinels.
    #[arg(long, env = "FLOODGATE_REDIS_TLS_SKIP_HOSTNAME_VERIFICATION")]
    pub redis_tls_skip_hostname_verification: bool,
    /// Redis connections; each is multiplexed, so a few carry many requests.
    #[arg(long, env = "FLOODGATE_REDIS_POOL_SIZE", default_value_t = 4)]
    pub redis_pool_size: u32,
    /// Deadline of one Redis call, counted from when it is queued (a connection that misses
    /// it is replaced), e.g. 50ms or 1s.
    #[arg(long, env = "FLOODGATE_REDIS_TIMEOUT", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,
    /// Replicas that must acknowledge a decision's hits (Redis WAIT) before it is answered,
    /// so that a failover cannot lose them (0: answer at once). Standalone or Sentinel only.
    #[arg(long, env = "FLOODGATE_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// A second Redis for the counters of per-second limits (the reference's REDIS_PERSECOND),
    /// same URL syntax; TLS files, timeout and key prefix are shared with the first.
    #[arg(long, env = "FLOODGATE_REDIS_PER_SECOND_URL", hide_env_values = true)]
    pub redis_per_second_url: Option<String>,
    /// Find the per-second Redis' master through these Sentinels.
    #[arg(
        long,
        env = "FLOODGATE_REDIS_PER_SECOND_SENTINELS",
        value_delimiter = ',',
        requires_all = ["redis_per_second_master_name", "redis_per_second_url"]
    )]
    pub redis_per_second_sentinels: Vec<String>,
    /// The per-second master's name as its Sentinels know it.
    #[arg(long, env = "FLOODGATE_REDIS_PER_SECOND_MASTER_NAME")]
    pub redis_per_second_master_name: Option<String>,
    /// Password of the per-second Redis' Sentinels.
    #[arg(
        long,
        env = "FLOODGATE_REDIS_PER_SECOND_SENTINEL_PASSWORD",
        hide_env_values = true
    )]
    pub redis_per_second_sentinel_password: Option<String>,
    /// A file holding the per-second Sentinels' password, read again when it changes.
    #[arg(
        long,
        env = "FLOODGATE_REDIS_PER_SECOND_SENTINEL_PASSWORD_FILE",
        conflicts_with = "redis_per_second_sentinel_password"
    )]
    pub redis_per_second_sentinel_password_file: Option<PathBuf>,
    /// The per-second Redis is a Cluster reached through these nodes.
    #[arg(
        long,
        env = "FLOODGATE_REDIS_PER_SECOND_CLUSTER_NODES",
        value_delimiter = ',',
        conflicts_with = "redis_per_second_sentinels",
        requires = "redis_per_second_url"
    )]
    pub redis_per_second_cluster_nodes: Vec<String>,
    /// The per-second Redis' password (overrides one in its URL).
    #[arg(
        long,
        env = "FLOODGATE_REDIS_PER_SECOND_PASSWORD",
        hide_env_values = true
    )]
    pub redis_per_second_password: Option<String>,
    /// A file holding the per-second Redis' password, read again when it changes.
    #[arg(
        long,
        env = "FLOODGATE_REDIS_PER_SECOND_PASSWORD_FILE",
        conflicts_with = "redis_per_second_password"
    )]
    pub redis_per_second_password_file: Option<PathBuf>,
    /// The per-second Redis' ACL user name.
    #[arg(long, env = "FLOODGATE_REDIS_PER_SECOND_USERNAME")]
    pub redis_per_second_username: Option<String>,
    /// Connections to the per-second Redis (default: --redis-pool-size).
    #[arg(long, env = "FLOODGATE_REDIS_PER_SECOND_POOL_SIZE")]
    pub redis_per_second_pool_size: Option<u32>,
    /// Prefix of every counter key.
    #[arg(long, env = "FLOODGATE_KEY_PREFIX", default_value = "floodgate:")]
    pub key_prefix: String,
    /// Most counters the memory store holds; past it, the counters closest to their reset go.
    #[arg(long, env = "FLOODGATE_MEMORY_MAX_KEYS", default_value_t = DEFAULT_MAX_KEYS)]
    pub memory_max_keys: usize,
    /// The SQLite store's file (created with its schema if missing), for --store sqlite.
    #[arg(long, env = "FLOODGATE_SQLITE_PATH", default_value = crate::store::sqlite::DEFAULT_PATH)]
    pub sqlite_path: std::path::PathBuf,
    /// Most counters the SQLite store keeps; past it, expired ones go, then the closest to
    /// their reset.
    #[arg(long, env = "FLOODGATE_SQLITE_MAX_KEYS", default_value_t = DEFAULT_MAX_KEYS)]
    pub sqlite_max_keys: usize,
    /// Count everything but deny nothing (answers OK even when over a limit).
    #[arg(long, env = "FLOODGATE_SHADOW_MODE")]
    pub shadow_mode: bool,
    /// Add RateLimit-Limit/-Remaining/-Reset headers (the most constrained descriptor's).
    #[arg(long, env = "FLOODGATE_RESPONSE_HEADERS")]
    pub response_headers: bool,
    /// Name of the limit header (`--response-headers`).
    #[arg(long, env = "FLOODGATE_LIMIT_HEADER", default_value = crate::rls::response::LIMIT_HEADER)]
    pub limit_header: String,
    /// Name of the remaining-requests header (`--response-headers`).
    #[arg(long, env = "FLOODGATE_REMAINING_HEADER", default_value = crate::rls::response::REMAINING_HEADER)]
    pub remaining_header: String,
    /// Name of the seconds-until-reset header (`--response-headers`).
    #[arg(long, env = "FLOODGATE_RESET_HEADER", default_value = crate::rls::response::RESET_HEADER)]
    pub reset_header: String,
    /// Every descriptor is a quota: over some of them, a request is denied only when every
    /// quota it carries is over (the reference's QUOTA_MODE).
    #[arg(long, env = "FLOODGATE_QUOTA_MODE")]
    pub quota_mode: bool,
    /// Count the hits of denied requests on every descriptor, as the reference does (by
    /// default a denied request consumes nothing).
    #[arg(long, env = "FLOODGATE_COUNT_DENIED_HITS")]
    pub count_denied_hits: bool,
    /// Put the request and the passed descriptors' `metadata` in the response's dynamic
    /// metadata (the reference's RESPONSE_DYNAMIC_METADATA).
    #[arg(long, env = "FLOODGATE_RESPONSE_DYNAMIC_METADATA")]
    pub response_dynamic_metadata: bool,
    /// Let a domain span several files, merging their descriptors (the reference's
    /// MERGE_DOMAIN_CONFIG); otherwise a domain defined twice is refused.
    #[arg(long, env = "FLOODGATE_MERGE_DOMAIN_CONFIG")]
    pub merge_domain_config: bool,
    /// Read every file of the config directory and its subdirectories, whatever its name (the
    /// reference's runtime directory), not only its top-level *.yaml and *.yml files.
    #[arg(long, env = "FLOODGATE_CONFIG_ALL_FILES")]
    pub config_all_files: bool,
    /// Read hidden entries of the config directory too (skipped by default: a ConfigMap's
    /// `..data` twins).
    #[arg(long, env = "FLOODGATE_CONFIG_HIDDEN_FILES")]
    pub config_hidden_files: bool,
    /// Most descriptors in one request.
    #[arg(long, env = "FLOODGATE_MAX_DESCRIPTORS", default_value_t = InputLimits::default().max_descriptors)]
    pub max_descriptors: usize,
    /// Most entries in one descriptor.
    #[arg(long, env = "FLOODGATE_MAX_ENTRIES", default_value_t = InputLimits::default().max_entries)]
    pub max_entries: usize,
    /// Most bytes in a domain, entry key or entry value.
    #[arg(long, env = "FLOODGATE_MAX_VALUE_LEN", default_value_t = InputLimits::default().max_value_len)]
    pub max_value_len: usize,
    /// Key that opens the admin API (header X-Admin-Key); without it the admin API is closed.
    #[arg(long, env = "FLOODGATE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// A file holding the admin key, read again when it changes (instead of --admin-key, so that
    /// the key is in neither the environment nor the process list).
    #[arg(long, env = "FLOODGATE_ADMIN_KEY_FILE", conflicts_with = "admin_key")]
    pub admin_key_file: Option<PathBuf>,
    /// How stale a replica's view of shared state (health state, API key owners) may be.
    #[arg(long, env = "FLOODGATE_STATE_CACHE_TTL", default_value = duration_text(DEFAULT_CACHE_TTL), value_parser = humantime::parse_duration)]
    pub state_cache_ttl: Duration,
    /// What to answer when the store cannot: error (gRPC UNAVAILABLE, so Envoy's
    /// failure_mode_deny decides), allow (OK, marked x-floodgate-degraded), deny (OVER_LIMIT)
    /// or local (this replica's own counters, each limit divided among the replicas; Redis
    /// store only).
    #[arg(long, env = "FLOODGATE_FAILURE_MODE", value_enum, default_value_t = FailureModeArg::Error)]
    pub failure_mode: FailureModeArg,
    /// With --failure-mode local: the number of replicas to divide limits by, instead of the
    /// count learned from the replicas' heartbeats in Redis.
    #[arg(long, env = "FLOODGATE_FALLBACK_REPLICAS", value_parser = clap::value_parser!(u32).range(1..))]
    pub fallback_replicas: Option<u32>,
    /// Counters remembered as full (answered OVER_LIMIT without Redis until their window
    /// resets); 0 turns the local over-limit cache off. Redis store only.
    #[arg(long, env = "FLOODGATE_LOCAL_CACHE_SIZE", default_value_t = DEFAULT_LOCAL_CACHE_SIZE)]
    pub local_cache_size: usize,
    /// Consecutive store failures that open the circuit breaker (0: never open).
    #[arg(long, env = "FLOODGATE_CIRCUIT_FAILURES", default_value_t = BreakerSettings::default().threshold)]
    pub circuit_failures: u32,
    /// How long the open circuit waits before probing the store again.
    #[arg(long, env = "FLOODGATE_CIRCUIT_COOLDOWN", default_value = duration_text(Duration::from_millis(BreakerSettings::default().cooldown_ms)), value_parser = humantime::parse_duration)]
    pub circuit_cooldown: Duration,
    /// Share of a limit past which a descriptor counts as near its limit (metrics).
    #[arg(long, env = "FLOODGATE_NEAR_LIMIT_RATIO", default_value_t = LimiterOptions::default().near_limit_ratio)]
    pub near_limit_ratio: f64,
    /// gRPC server certificate chain (PEM); with --grpc-tls-key, gRPC is served over TLS.
    #[arg(long, env = "FLOODGATE_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// The gRPC server certificate's key (PEM).
    #[arg(long, env = "FLOODGATE_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    #[arg(long, env = "FLOODGATE_GRPC_TLS_CLIENT_CA", requires = "grpc_tls_cert")]
    pub grpc_tls_client_ca: Option<PathBuf>,
    /// Accept only client certificates with this DNS name or IP address among their SANs
    /// (envoyproxy/ratelimit's GRPC_CLIENT_TLS_SAN rule); needs --grpc-tls-client-ca.
    #[arg(
        long,
        env = "FLOODGATE_GRPC_TLS_CLIENT_SAN",
        requires = "grpc_tls_client_ca"
    )]
    pub grpc_tls_client_san: Option<String>,
    /// How often the gRPC TLS files are read again (0s: never); when they changed, new
    /// connections get the new certificate, key and client CA.
    #[arg(long, env = "FLOODGATE_GRPC_TLS_POLL_INTERVAL", default_value = duration_text(GrpcTls::DEFAULT_POLL_INTERVAL), value_parser = humantime::parse_duration)]
    pub grpc_tls_poll_interval: Duration,
    /// HTTP server certificate chain (PEM); with --http-tls-key, HTTP (and the admin listener)
    /// is served over TLS.
    #[arg(long, env = "FLOODGATE_HTTP_TLS_CERT", requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,
    /// The HTTP server certificate's key (PEM).
    #[arg(long, env = "FLOODGATE_HTTP_TLS_KEY", requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,
    /// Require HTTP clients (and admin clients) to present a certificate signed by this CA.
    #[arg(long, env = "FLOODGATE_HTTP_TLS_CLIENT_CA", requires = "http_tls_cert")]
    pub http_tls_client_ca: Option<PathBuf>,
    /// How often the HTTP TLS files are read again (0s: never); when they changed, new
    /// connections get the new certificate, key and client CA.
    #[arg(long, env = "FLOODGATE_HTTP_TLS_POLL_INTERVAL", default_value = duration_text(ListenerTls::DEFAULT_POLL_INTERVAL), value_parser = humantime::parse_duration)]
    pub http_tls_poll_interval: Duration,
    /// Deadline of one gRPC call.
    #[arg(long, env = "FLOODGATE_REQUEST_TIMEOUT", default_value = duration_text(Protection::default().request_timeout), value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// gRPC calls in flight at once; more are refused at once (RESOURCE_EXHAUSTED).
    #[arg(long, env = "FLOODGATE_MAX_CONCURRENT_REQUESTS", default_value_t = Protection::default().max_concurrent)]
    pub max_concurrent_requests: usize,
    /// HTTP/2 keepalive ping interval on gRPC connections (0s: none).
    #[arg(long, env = "FLOODGATE_GRPC_KEEPALIVE_INTERVAL", default_value = duration_text(Protection::default().keepalive_interval.unwrap_or_default()), value_parser = humantime::parse_duration)]
    pub grpc_keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    #[arg(long, env = "FLOODGATE_GRPC_KEEPALIVE_TIMEOUT", default_value = duration_text(Protection::default().keepalive_timeout), value_parser = humantime::parse_duration)]
    pub grpc_keepalive_timeout: Duration,
    /// Close gRPC connections after this age (0s: never) so clients rebalance over new replicas.
    #[arg(long, env = "FLOODGATE_MAX_CONNECTION_AGE", default_value = duration_text(Protection::default().max_connection_age.unwrap_or_default()), value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,
    /// After --max-connection-age, how long a connection's calls in flight may take before it
    /// is closed anyway (default: --request-timeout, past which no call is left).
    #[arg(long, env = "FLOODGATE_MAX_CONNECTION_AGE_GRACE", value_parser = humantime::parse_duration)]
    pub max_connection_age_grace: Option<Duration>,
    /// On SIGTERM/SIGINT, how long in-flight calls may take before Floodgate exits anyway.
    #[arg(long, env = "FLOODGATE_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// How often to look for config changes (0s: only on SIGHUP).
    #[arg(long, env = "FLOODGATE_CONFIG_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub config_poll_interval: Duration,
    /// Export tracing spans to this OpenTelemetry collector (OTLP/gRPC, e.g.
    /// http://otel-collector:4317); needs a build with `--features otel`. Per-request spans are
    /// at debug level: RUST_LOG=info,floodgate=debug.
    #[arg(long, env = "FLOODGATE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "FLOODGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

impl ServeSettings {
    /// The xDS client's settings, for --config-source xds.
    pub fn xds_options(&self) -> Option<crate::xds::XdsOptions> {
        let server = self.xds_server.clone()?;
        let tls = self.xds_tls
            || self.xds_tls_ca.is_some()
            || self.xds_tls_cert.is_some()
            || self.xds_tls_server_name.is_some()
            || server.starts_with("https://");
        Some(crate::xds::XdsOptions {
            server,
            node_id: self.xds_node_id.clone(),
            node_metadata: self.xds_node_metadata.clone(),
            headers: self.xds_headers.clone(),
            tls: tls.then(|| crate::xds::XdsTls {
                ca: self.xds_tls_ca.clone(),
                cert: self.xds_tls_cert.clone(),
                key: self.xds_tls_key.clone(),
                server_name: self.xds_tls_server_name.clone(),
            }),
            backoff: crate::xds::Backoff {
                initial: self.xds_backoff_initial,
                max: self.xds_backoff_max,
                factor: self.xds_backoff_factor,
                jitter: self.xds_backoff_jitter,
            },
            max_message_size: self.xds_max_message_size,
            load: self.load_options(),
        })
    }

    /// How the config files are read.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            merge_domains: self.merge_domain_config,
            all_files: self.config_all_files,
            hidden_files: self.config_hidden_files,
        }
    }

    /// The Redis settings; an error names a password file that cannot be read.
    pub fn redis_options(&self) -> Result<RedisOptions, SecretError> {
        let topology = topology(
            &self.redis_cluster_nodes,
            &self.redis_sentinels,
            self.redis_master_name.as_deref(),
            secret(
                self.redis_sentinel_password.as_deref(),
                self.redis_sentinel_password_file.as_ref(),
            )?,
        );
        Ok(RedisOptions {
            url: with_credentials(
                &self.redis_url,
                self.redis_username.as_deref(),
                self.redis_password.as_deref(),
            ),
            password: secret(None, self.redis_password_file.as_ref())?,
            topology,
            tls: TlsFiles {
                ca_cert: self.redis_tls_ca.clone(),
                client_cert: self.redis_tls_cert.clone(),
                client_key: self.redis_tls_key.clone(),
                accept_any_hostname: self.redis_tls_skip_hostname_verification,
            },
            pool_size: self.redis_pool_size,
            timeout: self.redis_timeout,
            key_prefix: self.key_prefix.clone(),
            clock: None,
            wait_replicas: self.redis_wait_replicas,
        })
    }

    /// The per-second Redis, if one is configured: the first's options but for where it is
    /// and its credentials.
    pub fn redis_per_second_options(&self) -> Result<Option<RedisOptions>, SecretError> {
        let Some(url) = self.redis_per_second_url.as_deref() else {
            return Ok(None);
        };
        let sentinel_password = secret(
            self.redis_per_second_sentinel_password.as_deref(),
            self.redis_per_second_sentinel_password_file.as_ref(),
        )?;
        Ok(Some(RedisOptions {
            url: with_credentials(
                url,
                self.redis_per_second_username.as_deref(),
                self.redis_per_second_password.as_deref(),
            ),
            password: secret(None, self.redis_per_second_password_file.as_ref())?,
            topology: topology(
                &self.redis_per_second_cluster_nodes,
                &self.redis_per_second_sentinels,
                self.redis_per_second_master_name.as_deref(),
                sentinel_password,
            ),
            pool_size: self
                .redis_per_second_pool_size
                .unwrap_or(self.redis_pool_size),
            ..self.redis_options()?
        }))
    }

    /// The admin key, given or from its file (`None`, the API closed, when neither is set or
    /// the given key is empty); an error names a file that cannot be read.
    pub fn admin_key(&self) -> Result<Option<Secret>, SecretError> {
        let given = self.admin_key.as_deref().filter(|k| !k.is_empty());
        secret(given, self.admin_key_file.as_ref())
    }

    /// HTTP TLS (also the admin listener's), if configured.
    pub fn http_tls(&self) -> Option<ListenerTls> {
        Some(ListenerTls {
            client_ca: self.http_tls_client_ca.clone(),
            poll_interval: self.http_tls_poll_interval,
            ..ListenerTls::new(self.http_tls_cert.clone()?, self.http_tls_key.clone()?)
        })
    }

    /// Overload protection.
    pub fn protection(&self) -> Protection {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        Protection {
            request_timeout: self.request_timeout,
            max_concurrent: self.max_concurrent_requests,
            keepalive_interval: nonzero(self.grpc_keepalive_interval),
            keepalive_timeout: self.grpc_keepalive_timeout,
            max_connection_age: nonzero(self.max_connection_age),
            max_connection_age_grace: self.max_connection_age_grace,
        }
    }

    /// gRPC TLS, if configured.
    pub fn grpc_tls(&self) -> Option<GrpcTls> {
        Some(GrpcTls {
            client_ca: self.grpc_tls_client_ca.clone(),
            client_san: self.grpc_tls_client_san.clone().filter(|s| !s.is_empty()),
            poll_interval: self.grpc_tls_poll_interval,
            ..GrpcTls::new(self.grpc_tls_cert.clone()?, self.grpc_tls_key.clone()?)
        })
    }

    /// The circuit breaker settings.
    pub fn breaker(&self) -> BreakerSettings {
        BreakerSettings {
            threshold: self.circuit_failures,
            cooldown_ms: self.circuit_cooldown.as_millis() as u64,
        }
    }

    /// The request caps.
    pub fn input_limits(&self) -> InputLimits {
        InputLimits {
            max_descriptors: self.max_descriptors,
            max_entries: self.max_entries,
            max_value_len: self.max_value_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::{Cli, Command, duration_text, with_credentials};

    #[test]
    fn secrets_come_from_their_flag_or_their_file_and_an_empty_key_closes_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "from-the-file\n").unwrap();
        let file = file.to_str().unwrap();
        let serve = |args: &[&str]| {
            let base = ["floodgate", "serve", "--config", "c"];
            match Cli::try_parse_from(base.iter().chain(args))
                .unwrap()
                .command
            {
                Command::Serve(settings) => settings,
                Command::CheckConfig { .. } => unreachable!(),
            }
        };
        let key = |args: &[&str]| serve(args).admin_key().unwrap().map(|k| k.current());
        assert_eq!(key(&[]), None);
        assert_eq!(key(&["--admin-key", ""]), None);
        assert_eq!(key(&["--admin-key", "given"]).as_deref(), Some("given"));
        assert_eq!(
            key(&["--admin-key-file", file]).as_deref(),
            Some("from-the-file")
        );

        let redis = serve(&[
            "--redis-password-file",
            file,
            "--redis-sentinel-password-file",
            file,
            "--redis-sentinels",
            "s:1",
            "--redis-master-name",
            "m",
        ])
        .redis_options()
        .unwrap();
        let password = redis.password.expect("the password file");
        assert_eq!(&*password.current(), "from-the-file");
        assert!(!redis.url.contains("from-the-file"), "not in the URL");
        let crate::store::redis::Topology::Sentinel {
            sentinel_password, ..
        } = redis.topology
        else {
            panic!("a Sentinel topology");
        };
        assert_eq!(
            sentinel_password.map(|p| p.current()).as_deref(),
            Some("from-the-file")
        );
    }

    #[test]
    fn duration_defaults_read_as_written_on_the_command_line() {
        for (duration, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(50), "50ms"),
            (Duration::from_secs(60), "60s"),
            (Duration::from_millis(1500), "1500ms"),
        ] {
            assert_eq!(duration_text(duration), text);
            assert_eq!(humantime::parse_duration(text), Ok(duration));
        }
    }

    #[test]
    fn credentials_go_into_the_url_encoded() {
        assert_eq!(
            with_credentials("redis://h:1/0", None, None),
            "redis://h:1/0"
        );
        assert_eq!(
            with_credentials("redis://h:1/0", None, Some("p@ss:/w")),
            "redis://:p%40ss%3A%2Fw@h:1/0"
        );
        assert_eq!(
            with_credentials("rediss://old:x@h:1", Some("app"), Some("pw")),
            "rediss://app:pw@h:1"
        );
    }
}
