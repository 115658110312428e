//! Command line and environment: every flag also reads `FLOODGATE_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::rls::InputLimits;
use crate::store::memory::DEFAULT_MAX_KEYS;

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
    },
}

/// Where counters are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// In this process (the default; one replica only).
    Memory,
    /// In Redis, shared by all replicas.
    Redis,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Everything `floodgate serve` takes.
#[derive(Debug, Clone, Parser)]
pub struct ServeSettings {
    /// A domain YAML file, or a directory of them.
    #[arg(long, env = "FLOODGATE_CONFIG")]
    pub config: PathBuf,
    /// gRPC listen address (ShouldRateLimit).
    #[arg(long, env = "FLOODGATE_GRPC_ADDR", default_value = "0.0.0.0:8081")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (/healthcheck, /json).
    #[arg(long, env = "FLOODGATE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
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
    /// Redis connections; each is multiplexed, so a few carry many requests.
    #[arg(long, env = "FLOODGATE_REDIS_POOL_SIZE", default_value_t = 4)]
    pub redis_pool_size: u32,
    /// Deadline of one Redis call, e.g. 50ms or 1s.
    #[arg(long, env = "FLOODGATE_REDIS_TIMEOUT", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,
    /// Prefix of every counter key.
    #[arg(long, env = "FLOODGATE_KEY_PREFIX", default_value = "floodgate:")]
    pub key_prefix: String,
    /// Most counters the memory store holds; past it, the counters closest to their reset go.
    #[arg(long, env = "FLOODGATE_MEMORY_MAX_KEYS", default_value_t = DEFAULT_MAX_KEYS)]
    pub memory_max_keys: usize,
    /// Count everything but deny nothing (answers OK even when over a limit).
    #[arg(long, env = "FLOODGATE_SHADOW_MODE")]
    pub shadow_mode: bool,
    /// Add RateLimit-Limit/-Remaining/-Reset headers (the most constrained descriptor's).
    #[arg(long, env = "FLOODGATE_RESPONSE_HEADERS")]
    pub response_headers: bool,
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
    /// How stale a replica's view of shared state (health state, API key owners) may be.
    #[arg(long, env = "FLOODGATE_STATE_CACHE_TTL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub state_cache_ttl: Duration,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "FLOODGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

impl ServeSettings {
    /// The request caps.
    pub fn input_limits(&self) -> InputLimits {
        InputLimits {
            max_descriptors: self.max_descriptors,
            max_entries: self.max_entries,
            max_value_len: self.max_value_len,
        }
    }
}
