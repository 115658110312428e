//! envoyproxy/ratelimit's environment (its `src/settings/settings.go`), for Floodgate started as
//! `/bin/ratelimit` by deployments written for the reference (Istio's sample, Envoy Gateway).
//!
//! Every variable of the reference is in [`VARIABLES`]: either honoured with the reference's
//! meaning, by turning it into the Floodgate flag that means the same, or accepted and, when
//! set, reported once at start-up as not applicable. None makes start-up fail, except values
//! that cannot be read and settings whose absence would change what is enforced (another
//! backend, an xDS config source): those are refused with the reason. Pure: the environment is
//! read through a lookup function.

use thiserror::Error;

/// What Floodgate does with one of the reference's variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Honoured with the reference's meaning, through these Floodgate flags.
    Honoured(&'static str),
    /// Accepted; when set, reported at start-up with this reason.
    NotApplicable(&'static str),
}

/// One variable of the reference's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    /// Its name.
    pub name: &'static str,
    /// The reference's default ("" for none).
    pub default: &'static str,
    /// What Floodgate does with it.
    pub treatment: Treatment,
}

const fn honoured(name: &'static str, default: &'static str, flags: &'static str) -> Variable {
    Variable {
        name,
        default,
        treatment: Treatment::Honoured(flags),
    }
}

const fn not_applicable(name: &'static str, default: &'static str, why: &'static str) -> Variable {
    Variable {
        name,
        default,
        treatment: Treatment::NotApplicable(why),
    }
}

const NO_STATSD: &str = "nothing is sent to statsd: metrics are served for Prometheus, at /metrics \
     on the HTTP port (and under the reference's names with USE_PROMETHEUS=true)";
const NO_MEMCACHE: &str =
    "the memcache backend is not supported (BACKEND_TYPE=memcache is refused)";
const BATCHED: &str =
    "Floodgate batches Redis calls by itself (one script call per request at most)";

/// Every variable of the reference's settings, in its order.
pub const VARIABLES: &[Variable] = &[
    honoured("HOST", "0.0.0.0", "--http-addr"),
    honoured("PORT", "8080", "--http-addr"),
    honoured(
        "DEBUG_HOST",
        "0.0.0.0",
        "--debug-addr (/rlconfig, /stats; no pprof)",
    ),
    honoured(
        "DEBUG_PORT",
        "6070",
        "--debug-addr (/rlconfig, /stats; no pprof)",
    ),
    honoured(
        "GRPC_UDS",
        "",
        "--grpc-uds (instead of GRPC_HOST:GRPC_PORT)",
    ),
    honoured("GRPC_HOST", "0.0.0.0", "--grpc-addr"),
    honoured("GRPC_PORT", "8081", "--grpc-addr"),
    honoured("GRPC_MAX_CONNECTION_AGE", "24h", "--max-connection-age"),
    honoured(
        "GRPC_MAX_CONNECTION_AGE_GRACE",
        "1h",
        "--max-connection-age-grace",
    ),
    honoured(
        "GRPC_SERVER_USE_TLS",
        "false",
        "--grpc-tls-cert, --grpc-tls-key",
    ),
    honoured("GRPC_SERVER_TLS_CERT", "", "--grpc-tls-cert"),
    honoured("GRPC_SERVER_TLS_KEY", "", "--grpc-tls-key"),
    honoured("GRPC_CLIENT_TLS_CACERT", "", "--grpc-tls-client-ca"),
    honoured(
        "GRPC_CLIENT_TLS_SAN",
        "",
        "--grpc-tls-client-san (with GRPC_CLIENT_TLS_CACERT)",
    ),
    honoured("LOG_LEVEL", "WARN", "RUST_LOG"),
    honoured("LOG_FORMAT", "text", "--log-format"),
    honoured(
        "CONFIG_TYPE",
        "FILE",
        "--config (FILE), --config-source xds (GRPC_XDS_SOTW)",
    ),
    honoured(
        "FORCE_START_WITHOUT_INITIAL_CONFIG",
        "false",
        "--start-without-config",
    ),
    honoured("CONFIG_GRPC_XDS_NODE_ID", "default", "--xds-node-id"),
    honoured("CONFIG_GRPC_XDS_NODE_METADATA", "", "--xds-node-metadata"),
    honoured(
        "CONFIG_GRPC_XDS_SERVER_URL",
        "localhost:18000",
        "--xds-server",
    ),
    not_applicable(
        "CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL",
        "3s",
        "connection attempts are spaced as stream reconnections are (XDS_CLIENT_BACKOFF_*)",
    ),
    honoured(
        "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS",
        "",
        "--xds-headers",
    ),
    honoured("CONFIG_GRPC_XDS_SERVER_USE_TLS", "false", "--xds-tls"),
    honoured("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "", "--xds-tls-cert"),
    honoured("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "", "--xds-tls-key"),
    honoured("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "", "--xds-tls-ca"),
    honoured(
        "CONFIG_GRPC_XDS_SERVER_TLS_SAN",
        "",
        "--xds-tls-server-name",
    ),
    honoured(
        "XDS_CLIENT_BACKOFF_INITIAL_INTERVAL",
        "10s",
        "--xds-backoff-initial",
    ),
    honoured(
        "XDS_CLIENT_BACKOFF_MAX_INTERVAL",
        "60s",
        "--xds-backoff-max",
    ),
    honoured(
        "XDS_CLIENT_BACKOFF_RANDOM_FACTOR",
        "0.5",
        "--xds-backoff-factor (below 1: every delay is the initial one, as in the reference)",
    ),
    honoured("XDS_CLIENT_BACKOFF_JITTER", "true", "--xds-backoff-jitter"),
    honoured(
        "XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES",
        "",
        "--xds-max-message-size",
    ),
    not_applicable("USE_DOG_STATSD", "false", NO_STATSD),
    not_applicable("USE_DOG_STATSD_MOGRIFIERS", "", NO_STATSD),
    not_applicable("USE_STATSD", "true", NO_STATSD),
    not_applicable("STATSD_HOST", "localhost", NO_STATSD),
    not_applicable("STATSD_PORT", "8125", NO_STATSD),
    not_applicable("EXTRA_TAGS", "", NO_STATSD),
    not_applicable(
        "STATS_FLUSH_INTERVAL",
        "10s",
        "Prometheus pulls: there is nothing to flush",
    ),
    not_applicable("DISABLE_STATS", "false", "/metrics is always served"),
    honoured(
        "USE_PROMETHEUS",
        "false",
        "--reference-metrics-addr (the reference's metric names, on PROMETHEUS_ADDR)",
    ),
    honoured("PROMETHEUS_ADDR", ":9090", "--reference-metrics-addr"),
    honoured("PROMETHEUS_PATH", "/metrics", "--reference-metrics-path"),
    honoured("PROMETHEUS_MAPPER_YAML", "", "--reference-metrics-mapping"),
    not_applicable(
        "PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS",
        "false",
        "ratelimit_service_response_time_seconds is always in seconds",
    ),
    honoured("RUNTIME_ROOT", "/srv/runtime_data/current", "--config"),
    honoured("RUNTIME_SUBDIRECTORY", "", "--config"),
    honoured("RUNTIME_APPDIRECTORY", "config", "--config"),
    honoured("RUNTIME_IGNOREDOTFILES", "false", "--config-hidden-files"),
    not_applicable(
        "RUNTIME_WATCH_ROOT",
        "true",
        "the config files are polled (--config-poll-interval): symlink swaps and edits are both seen",
    ),
    not_applicable(
        "EXPIRATION_JITTER_MAX_SECONDS",
        "300",
        "counter keys expire when their window ends, without jitter",
    ),
    honoured(
        "LOCAL_CACHE_SIZE_IN_BYTES",
        "0",
        "--local-cache-size (entries: bytes / 100)",
    ),
    honoured("NEAR_LIMIT_RATIO", "0.8", "--near-limit-ratio"),
    honoured("CACHE_KEY_PREFIX", "", "--key-prefix"),
    honoured(
        "BACKEND_TYPE",
        "redis",
        "--store (redis; memcache is refused)",
    ),
    honoured(
        "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT",
        "false",
        "--count-denied-hits unless true; true gives Floodgate's rule (a denied request counts nothing)",
    ),
    honoured(
        "LIMIT_RESPONSE_HEADERS_ENABLED",
        "false",
        "--response-headers",
    ),
    honoured("LIMIT_LIMIT_HEADER", "RateLimit-Limit", "--limit-header"),
    honoured(
        "LIMIT_REMAINING_HEADER",
        "RateLimit-Remaining",
        "--remaining-header",
    ),
    honoured("LIMIT_RESET_HEADER", "RateLimit-Reset", "--reset-header"),
    honoured(
        "HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED",
        "false",
        "--healthy-only-with-config",
    ),
    honoured("REDIS_SOCKET_TYPE", "unix", "--redis-url"),
    honoured(
        "REDIS_TYPE",
        "SINGLE",
        "--redis-sentinels, --redis-cluster-nodes",
    ),
    honoured(
        "REDIS_URL",
        "/var/run/nutcracker/ratelimit.sock",
        "--redis-url, --redis-sentinels, --redis-master-name, --redis-cluster-nodes",
    ),
    honoured("REDIS_POOL_SIZE", "10", "--redis-pool-size (when set)"),
    honoured("REDIS_AUTH", "", "--redis-username, --redis-password"),
    honoured("REDIS_TLS", "false", "--redis-url (rediss://)"),
    honoured("REDIS_TLS_CLIENT_CERT", "", "--redis-tls-cert"),
    honoured("REDIS_TLS_CLIENT_KEY", "", "--redis-tls-key"),
    honoured("REDIS_TLS_CACERT", "", "--redis-tls-ca"),
    honoured(
        "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION",
        "false",
        "--redis-tls-skip-hostname-verification (not with Sentinels)",
    ),
    not_applicable("REDIS_PIPELINE_WINDOW", "0", BATCHED),
    not_applicable("REDIS_PIPELINE_LIMIT", "0", BATCHED),
    not_applicable("REDIS_CLUSTER_PIPELINE_PARALLELISM", "1", BATCHED),
    honoured(
        "REDIS_PERSECOND",
        "false",
        "--redis-per-second-url (a second Redis for per-second limits)",
    ),
    honoured(
        "REDIS_PERSECOND_SOCKET_TYPE",
        "unix",
        "--redis-per-second-url",
    ),
    honoured(
        "REDIS_PERSECOND_TYPE",
        "SINGLE",
        "--redis-per-second-sentinels, --redis-per-second-cluster-nodes",
    ),
    honoured(
        "REDIS_PERSECOND_URL",
        "/var/run/nutcracker/ratelimitpersecond.sock",
        "--redis-per-second-url, --redis-per-second-sentinels, --redis-per-second-master-name, --redis-per-second-cluster-nodes",
    ),
    honoured(
        "REDIS_PERSECOND_POOL_SIZE",
        "10",
        "--redis-per-second-pool-size (when set)",
    ),
    honoured(
        "REDIS_PERSECOND_AUTH",
        "",
        "--redis-per-second-username, --redis-per-second-password",
    ),
    honoured(
        "REDIS_PERSECOND_TLS",
        "false",
        "--redis-per-second-url (rediss://)",
    ),
    honoured("REDIS_SENTINEL_AUTH", "", "--redis-sentinel-password"),
    honoured(
        "REDIS_PERSECOND_SENTINEL_AUTH",
        "",
        "--redis-per-second-sentinel-password",
    ),
    not_applicable("REDIS_PERSECOND_PIPELINE_WINDOW", "0", BATCHED),
    not_applicable("REDIS_PERSECOND_PIPELINE_LIMIT", "0", BATCHED),
    not_applicable("REDIS_PERSECOND_CLUSTER_PIPELINE_PARALLELISM", "1", BATCHED),
    not_applicable(
        "REDIS_HEALTH_CHECK_ACTIVE_CONNECTION",
        "false",
        "health always follows the store (/healthcheck pings it)",
    ),
    not_applicable(
        "REDIS_TIMEOUT",
        "10s",
        "connections are made in the background; each decision has --redis-timeout (50ms)",
    ),
    not_applicable(
        "REDIS_PERSECOND_TIMEOUT",
        "10s",
        "each decision has --redis-timeout (50ms), in both Redis",
    ),
    not_applicable(
        "REDIS_POOL_ON_EMPTY_BEHAVIOR",
        "WAIT",
        "connections are multiplexed: a request never waits for a free one",
    ),
    not_applicable(
        "REDIS_PERSECOND_POOL_ON_EMPTY_BEHAVIOR",
        "WAIT",
        "connections are multiplexed: a request never waits for a free one",
    ),
    not_applicable(
        "REDIS_STARTUP_INITIAL_INTERVAL",
        "1s",
        "Floodgate starts while Redis is down and connects when it appears",
    ),
    not_applicable(
        "REDIS_STARTUP_MAX_INTERVAL",
        "30s",
        "Floodgate starts while Redis is down and connects when it appears",
    ),
    not_applicable(
        "REDIS_STARTUP_MAX_ELAPSED_TIME",
        "0",
        "Floodgate starts while Redis is down and connects when it appears",
    ),
    not_applicable("MEMCACHE_HOST_PORT", "", NO_MEMCACHE),
    not_applicable("MEMCACHE_MAX_IDLE_CONNS", "2", NO_MEMCACHE),
    not_applicable("MEMCACHE_SRV", "", NO_MEMCACHE),
    not_applicable("MEMCACHE_SRV_REFRESH", "0", NO_MEMCACHE),
    not_applicable("MEMCACHE_TLS", "false", NO_MEMCACHE),
    not_applicable("MEMCACHE_TLS_CLIENT_CERT", "", NO_MEMCACHE),
    not_applicable("MEMCACHE_TLS_CLIENT_KEY", "", NO_MEMCACHE),
    not_applicable("MEMCACHE_TLS_CACERT", "", NO_MEMCACHE),
    not_applicable(
        "MEMCACHE_TLS_SKIP_HOSTNAME_VERIFICATION",
        "false",
        NO_MEMCACHE,
    ),
    honoured("SHADOW_MODE", "false", "--shadow-mode"),
    honoured("QUOTA_MODE", "false", "--quota-mode"),
    honoured(
        "RESPONSE_DYNAMIC_METADATA",
        "false",
        "--response-dynamic-metadata",
    ),
    honoured("MERGE_DOMAIN_CONFIG", "false", "--merge-domain-config"),
    honoured(
        "TRACING_ENABLED",
        "false",
        "--otlp-endpoint (from OTEL_EXPORTER_OTLP_ENDPOINT; a build with --features otel)",
    ),
    not_applicable(
        "TRACING_SERVICE_NAME",
        "RateLimit",
        "spans name the service floodgate",
    ),
    not_applicable(
        "TRACING_SERVICE_NAMESPACE",
        "",
        "spans carry no service namespace",
    ),
    not_applicable(
        "TRACING_SERVICE_INSTANCE_ID",
        "",
        "spans carry no instance id",
    ),
    not_applicable(
        "TRACING_EXPORTER_PROTOCOL",
        "http",
        "spans are exported over OTLP/gRPC",
    ),
    not_applicable(
        "TRACING_SAMPLING_RATE",
        "1",
        "every span at the enabled level is exported",
    ),
];

/// Floodgate's command line for the reference's environment, and what to report about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    /// The arguments of `floodgate serve`.
    pub args: Vec<String>,
    /// The log filter (RUST_LOG syntax), from LOG_LEVEL.
    pub log_filter: String,
    /// One line per variable that is set but not applicable, to log once at start-up.
    pub notices: Vec<String>,
}

/// An environment that cannot be served as the reference would.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TranslationError {
    /// A value that cannot be read.
    #[error("{name}={value}: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A setting Floodgate cannot honour, where ignoring it would change what is enforced.
    #[error("{name}={value} is not supported: {reason}")]
    Unsupported {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why, and what to do instead.
        reason: &'static str,
    },
}

/// Variables outside the reference's settings that deployments written for it set, reported
/// when set because they look like settings: the name and what becomes of it.
pub const FOREIGN: &[(&str, &str)] = &[(
    "GRPC_SERVER_TLS_CA_CERT",
    "ignored, as the reference ignores it (set by Envoy Gateway, read by neither): client certificates are required only with GRPC_CLIENT_TLS_CACERT",
)];

/// Reads the reference's environment through `get` into Floodgate's command line.
pub fn translate(get: impl Fn(&str) -> Option<String>) -> Result<Translation, TranslationError> {
    let env = Env { get: &get };
    let mut out = Translation::default();
    config(&env, &mut out)?;
    listeners(&env, &mut out)?;
    redis(&env, &mut out)?;
    behaviour(&env, &mut out)?;
    telemetry(&env, &mut out)?;
    for variable in VARIABLES {
        if let (Treatment::NotApplicable(why), Some(value)) =
            (variable.treatment, env.raw(variable.name))
        {
            let shown = if is_secret(variable.name) {
                "(set)"
            } else {
                value.as_str()
            };
            out.notices
                .push(format!("{}={shown}: not applicable: {why}", variable.name));
        }
    }
    for (name, what) in FOREIGN {
        if let Some(value) = env.raw(name) {
            out.notices.push(format!("{name}={value}: {what}"));
        }
    }
    // USE_STATSD defaults to true: the reference would send statsd unless told not to.
    if env.raw("USE_STATSD").is_none() {
        out.notices.push(format!(
            "USE_STATSD (default true): not applicable: {NO_STATSD}"
        ));
    }
    Ok(out)
}

/// Whether the value of `name` may be a secret, never to be logged (passwords, extra headers).
fn is_secret(name: &str) -> bool {
    name.contains("AUTH") || name.contains("HEADERS")
}

/// The environment, with the reference's defaults and Go's parsing rules.
struct Env<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    /// The value as set (an empty value counts as unset, as envconfig reads it).
    fn raw(&self, name: &str) -> Option<String> {
        (self.get)(name).filter(|v| !v.is_empty())
    }

    /// The value, or the reference's default.
    fn value(&self, name: &'static str) -> String {
        self.raw(name)
            .unwrap_or_else(|| default_of(name).to_owned())
    }

    /// A boolean as Go's strconv.ParseBool reads it.
    fn flag(&self, name: &'static str) -> Result<bool, TranslationError> {
        let value = self.value(name);
        match value.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
            _ => Err(invalid(name, value, "expected true or false")),
        }
    }

    /// A number.
    fn number<T: std::str::FromStr>(&self, name: &'static str) -> Result<T, TranslationError> {
        let value = self.value(name);
        value
            .trim()
            .parse()
            .map_err(|_| invalid(name, value, "expected a number"))
    }

    /// A duration in Go's syntax (`24h`, `1h30m`, `500ms`), as humantime text.
    fn duration(&self, name: &'static str) -> Result<String, TranslationError> {
        let value = self.value(name);
        humantime::parse_duration(&value)
            .map(|d| humantime::format_duration(d).to_string().replace(' ', ""))
            .map_err(|_| invalid(name, value, "expected a duration such as 30s, 24h or 1h30m"))
    }
}

fn default_of(name: &str) -> &'static str {
    VARIABLES
        .iter()
        .find(|v| v.name == name)
        .map_or("", |v| v.default)
}

fn invalid(name: &'static str, value: String, reason: &str) -> TranslationError {
    TranslationError::Invalid {
        name,
        value,
        reason: reason.to_owned(),
    }
}

fn push(out: &mut Translation, flag: &str, value: impl Into<String>) {
    out.args.push(flag.to_owned());
    out.args.push(value.into());
}

/// The config directory: every file under RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY.
fn config(env: &Env<'_>, out: &mut Translation) -> Result<(), TranslationError> {
    let kind = env.value("CONFIG_TYPE");
    if kind.eq_ignore_ascii_case("GRPC_XDS_SOTW") {
        xds(env, out)?;
    } else if kind.eq_ignore_ascii_case("FILE") {
        files(env, out)?;
    } else {
        return Err(invalid(
            "CONFIG_TYPE",
            kind,
            "expected FILE or GRPC_XDS_SOTW",
        ));
    }
    for (name, flag) in [
        ("MERGE_DOMAIN_CONFIG", "--merge-domain-config"),
        (
            "FORCE_START_WITHOUT_INITIAL_CONFIG",
            "--start-without-config",
        ),
        (
            "HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED",
            "--healthy-only-with-config",
        ),
    ] {
        if env.flag(name)? {
            out.args.push(flag.to_owned());
        }
    }
    Ok(())
}

/// The config files: every file under RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY.
fn files(env: &Env<'_>, out: &mut Translation) -> Result<(), TranslationError> {
    let mut dir = std::path::PathBuf::from(env.value("RUNTIME_ROOT"));
    if let Some(sub) = env.raw("RUNTIME_SUBDIRECTORY") {
        dir.push(sub);
    }
    dir.push(env.value("RUNTIME_APPDIRECTORY"));
    push(out, "--config", dir.to_string_lossy());
    // The reference reads every file of the directory tree, whatever its name.
    out.args.push("--config-all-files".to_owned());
    if !env.flag("RUNTIME_IGNOREDOTFILES")? {
        out.args.push("--config-hidden-files".to_owned());
    }
    Ok(())
}

/// The xDS config source (CONFIG_TYPE=GRPC_XDS_SOTW) and its client's settings.
fn xds(env: &Env<'_>, out: &mut Translation) -> Result<(), TranslationError> {
    push(out, "--config-source", "xds");
    push(out, "--xds-server", env.value("CONFIG_GRPC_XDS_SERVER_URL"));
    push(out, "--xds-node-id", env.value("CONFIG_GRPC_XDS_NODE_ID"));
    xds_node_metadata(env, out);
    xds_headers(env, out)?;
    if env.flag("CONFIG_GRPC_XDS_SERVER_USE_TLS")? {
        out.args.push("--xds-tls".to_owned());
        for (name, flag) in [
            ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "--xds-tls-ca"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "--xds-tls-cert"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "--xds-tls-key"),
            ("CONFIG_GRPC_XDS_SERVER_TLS_SAN", "--xds-tls-server-name"),
        ] {
            if let Some(value) = env.raw(name) {
                push(out, flag, value);
            }
        }
    }
    xds_backoff(env, out)?;
    if env.raw("XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES").is_some() {
        let size: usize = env.number("XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES")?;
        push(out, "--xds-max-message-size", size.to_string());
    }
    Ok(())
}

/// CONFIG_GRPC_XDS_NODE_METADATA, "key=value,key=value" (entries without '=' are skipped, as
/// the reference skips them).
fn xds_node_metadata(env: &Env<'_>, out: &mut Translation) {
    if let Some(metadata) = env.raw("CONFIG_GRPC_XDS_NODE_METADATA") {
        let pairs: Vec<&str> = metadata
            .split(',')
            .filter(|entry| entry.contains('='))
            .collect();
        if !pairs.is_empty() {
            push(out, "--xds-node-metadata", pairs.join(","));
        }
    }
}

/// CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS, a Go map in envconfig's syntax:
/// "key:value,key:value".
fn xds_headers(env: &Env<'_>, out: &mut Translation) -> Result<(), TranslationError> {
    let Some(headers) = env.raw("CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS") else {
        return Ok(());
    };
    let mut pairs = Vec::new();
    for entry in headers.split(',').filter(|e| !e.is_empty()) {
        let Some((key, value)) = entry.split_once(':') else {
            return Err(invalid(
                "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS",
                "(set)".to_owned(),
                "expected key:value pairs separated by commas",
            ));
        };
        pairs.push(format!("{key}={value}"));
    }
    push(out, "--xds-headers", pairs.join(","));
    Ok(())
}

/// The xDS client's reconnection backoff (XDS_CLIENT_BACKOFF_*).
fn xds_backoff(env: &Env<'_>, out: &mut Translation) -> Result<(), TranslationError> {
    push(
        out,
        "--xds-backoff-initial",
        env.duration("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL")?,
    );
    push(
        out,
        "--xds-backoff-max",
        env.duration("XDS_CLIENT_BACKOFF_MAX_INTERVAL")?,
    );
    let factor: f64 = env.number("XDS_CLIENT_BACKOFF_RANDOM_FACTOR")?;
    push(out, "--xds-backoff-factor", factor.to_string());
    push(
        out,
        "--xds-backoff-jitter",
        env.flag("XDS_CLIENT_BACKOFF_JITTER")?.to_string(),
    );
    Ok(())
}

/// HOST:PORT and GRPC_HOST:GRPC_PORT, with the reference's gRPC options.
fn listeners(env: &Env<'_>, out: &mut Translation) -> Result<(), TranslationError> {
    let address = |host: &'static str, port: &'static str| -> Result<String, TranslationError> {
        let port: u16 = env.number(port)?;
        let host = env.value(host);
        Ok(if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        })
    };
    push(out, "--http-addr", address("HOST", "PORT")?);
    push(out, "--debug-addr", address("DEBUG_HOST", "DEBUG_PORT")?);
    push(out, "--grpc-addr", address("GRPC_HOST", "GRPC_PORT")?);
    if let Some(path) = env.raw("GRPC_UDS") {
        push(out, "--grpc-uds", path);
    }
    push(
        out,
        "--max-connection-age",
        env.duration("GRPC_MAX_CONNECTION_AGE")?,
    );
    push(
        out,
        "--max-connection-age-grace",
        env.duration("GRPC_MAX_CONNECTION_AGE_GRACE")?,
    );
    if env.flag("GRPC_SERVER_USE_TLS")? {
        grpc_tls(env, out)?;
    }
    Ok(())
}

/// The gRPC listener's certificate and, with a CA, the client certificates it asks for
/// (GRPC_SERVER_USE_TLS=true).
fn grpc_tls(env: &Env<'_>, out: &mut Translation) -> Result<(), TranslationError> {
    for name in ["GRPC_SERVER_TLS_CERT", "GRPC_SERVER_TLS_KEY"] {
        if env.raw(name).is_none() {
            return Err(invalid(
                name,
                String::new(),
                "GRPC_SERVER_USE_TLS=true needs a certificate and its key",
            ));
        }
    }
    push(out, "--grpc-tls-cert", env.value("GRPC_SERVER_TLS_CERT"));
    push(out, "--grpc-tls-key", env.value("GRPC_SERVER_TLS_KEY"));
    let san = env.raw("GRPC_CLIENT_TLS_SAN");
    match (env.raw("GRPC_CLIENT_TLS_CACERT"), san) {
        (Some(ca), san) => {
            push(out, "--grpc-tls-client-ca", ca);
            if let Some(san) = san {
                push(out, "--grpc-tls-client-san", san);
            }
        }
        // The reference then asks for no client certificate, so it checks no SAN either.
        (None, Some(san)) => out.notices.push(format!(
            "GRPC_CLIENT_TLS_SAN={san}: not applicable without GRPC_CLIENT_TLS_CACERT: no client certificate is asked for (as in the reference)"
        )),
        (None, None) => {}
    }
    Ok(())
}

/// The variables of one Redis connection (the main one, or the per-second one), and the prefix
/// of the Floodgate flags they become.
struct RedisVariables {
    kind: &'static str,
    socket: &'static str,
    url: &'static str,
    tls: &'static str,
    auth: &'static str,
    sentinel_auth: &'static str,
    pool_size: &'static str,
    flags: &'static str,
}

impl RedisVariables {
    /// This connection's Floodgate flag `name` (e.g. `--redis-per-second-url`).
    fn flag(&self, name: &str) -> String {
        format!("{}-{name}", self.flags)
    }
}

const MAIN_REDIS: RedisVariables = RedisVariables {
    kind: "REDIS_TYPE",
    socket: "REDIS_SOCKET_TYPE",
    url: "REDIS_URL",
    tls: "REDIS_TLS",
    auth: "REDIS_AUTH",
    sentinel_auth: "REDIS_SENTINEL_AUTH",
    pool_size: "REDIS_POOL_SIZE",
    flags: "--redis",
};

const PER_SECOND_REDIS: RedisVariables = RedisVariables {
    kind: "REDIS_PERSECOND_TYPE",
    socket: "REDIS_PERSECOND_SOCKET_TYPE",
    url: "REDIS_PERSECOND_URL",
    tls: "REDIS_PERSECOND_TLS",
    auth: "REDIS_PERSECOND_AUTH",
    sentinel_auth: "REDIS_PERSECOND_SENTINEL_AUTH",
    pool_size: "REDIS_PERSECOND_POOL_SIZE",
    flags: "--redis-per-second",
};

/// BACKEND_TYPE and the REDIS_* connections in the reference's syntax.
fn redis(env: &Env<'_>, out: &mut Translation) -> Result<(), TranslationError> {
    let backend = env.value("BACKEND_TYPE");
    if !backend.eq_ignore_ascii_case("redis") {
        return Err(TranslationError::Unsupported {
            name: "BACKEND_TYPE",
            value: backend,
            reason: "Floodgate's stores are Redis (BACKEND_TYPE=redis) and its own memory store",
        });
    }
    push(out, "--store", "redis");
    redis_connection(env, &MAIN_REDIS, out)?;
    if env.flag("REDIS_PERSECOND")? {
        redis_connection(env, &PER_SECOND_REDIS, out)?;
    }
    // TLS files are the same for both connections, as in the reference.
    if env.flag("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION")? {
        out.args
            .push("--redis-tls-skip-hostname-verification".to_owned());
    }
    for (name, flag) in [
        ("REDIS_TLS_CACERT", "--redis-tls-ca"),
        ("REDIS_TLS_CLIENT_CERT", "--redis-tls-cert"),
        ("REDIS_TLS_CLIENT_KEY", "--redis-tls-key"),
    ] {
        if let Some(path) = env.raw(name) {
            push(out, flag, path);
        }
    }
    if let Some(prefix) = env.raw("CACHE_KEY_PREFIX") {
        push(out, "--key-prefix", prefix);
    }
    // The reference's cache is sized in bytes; Floodgate's in entries of about 100 bytes.
    let bytes: u64 = env.number("LOCAL_CACHE_SIZE_IN_BYTES")?;
    push(out, "--local-cache-size", (bytes / 100).to_string());
    Ok(())
}

/// One Redis connection: its topology, URL and credentials.
fn redis_connection(
    env: &Env<'_>,
    vars: &RedisVariables,
    out: &mut Translation,
) -> Result<(), TranslationError> {
    let scheme = if env.flag(vars.tls)? {
        "rediss"
    } else {
        "redis"
    };
    let socket = env.value(vars.socket);
    let url = env.value(vars.url);
    let kind = env.value(vars.kind).to_ascii_lowercase();
    match kind.as_str() {
        "single" if socket.eq_ignore_ascii_case("unix") => {
            push(out, &vars.flag("url"), format!("unix://{url}"));
        }
        "single" if socket.eq_ignore_ascii_case("tcp") => {
            push(out, &vars.flag("url"), format!("{scheme}://{url}"));
        }
        "single" => {
            return Err(invalid(vars.socket, socket, "expected tcp or unix"));
        }
        "sentinel" => redis_sentinel(vars, &url, scheme, out)?,
        "cluster" => {
            push(out, &vars.flag("cluster-nodes"), url.replace(' ', ""));
            push(out, &vars.flag("url"), format!("{scheme}://cluster"));
        }
        _ => {
            return Err(invalid(
                vars.kind,
                env.value(vars.kind),
                "expected single, sentinel or cluster",
            ));
        }
    }
    redis_credentials(env, vars, out);
    if env.raw(vars.pool_size).is_some() {
        let size: u32 = env.number(vars.pool_size)?;
        push(out, &vars.flag("pool-size"), size.max(1).to_string());
    }
    Ok(())
}

/// A sentinel connection's URL: "master name,sentinel,sentinel,...".
fn redis_sentinel(
    vars: &RedisVariables,
    url: &str,
    scheme: &str,
    out: &mut Translation,
) -> Result<(), TranslationError> {
    let mut parts = url.split(',').map(str::trim);
    let master = parts.next().unwrap_or_default().to_owned();
    let sentinels: Vec<&str> = parts.filter(|s| !s.is_empty()).collect();
    if master.is_empty() || sentinels.is_empty() {
        return Err(invalid(
            vars.url,
            url.to_owned(),
            "a sentinel URL is the master's name, then host:port of each sentinel",
        ));
    }
    push(out, &vars.flag("master-name"), master);
    push(out, &vars.flag("sentinels"), sentinels.join(","));
    push(
        out,
        &vars.flag("url"),
        format!("{scheme}://sentinel-master"),
    );
    Ok(())
}

/// A connection's credentials: "password" or "user:password" (the sentinels' takes only the
/// password).
fn redis_credentials(env: &Env<'_>, vars: &RedisVariables, out: &mut Translation) {
    if let Some(auth) = env.raw(vars.auth) {
        match auth.split_once(':') {
            Some((user, password)) => {
                push(out, &vars.flag("username"), user);
                push(out, &vars.flag("password"), password);
            }
            None => push(out, &vars.flag("password"), auth),
        }
    }
    if let Some(auth) = env.raw(vars.sentinel_auth) {
        let password = auth.split_once(':').map_or(auth.as_str(), |(_, p)| p);
        push(out, &vars.flag("sentinel-password"), password);
    }
}

/// What is enforced and answered.
fn behaviour(env: &Env<'_>, out: &mut Translation) -> Result<(), TranslationError> {
    for (name, flag) in [
        ("SHADOW_MODE", "--shadow-mode"),
        ("QUOTA_MODE", "--quota-mode"),
        ("RESPONSE_DYNAMIC_METADATA", "--response-dynamic-metadata"),
        ("LIMIT_RESPONSE_HEADERS_ENABLED", "--response-headers"),
    ] {
        if env.flag(name)? {
            out.args.push(flag.to_owned());
        }
    }
    // The reference counts a denied request's hits unless told to stop.
    if !env.flag("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT")? {
        out.args.push("--count-denied-hits".to_owned());
    }
    push(out, "--limit-header", env.value("LIMIT_LIMIT_HEADER"));
    push(
        out,
        "--remaining-header",
        env.value("LIMIT_REMAINING_HEADER"),
    );
    push(out, "--reset-header", env.value("LIMIT_RESET_HEADER"));
    let ratio: f64 = env.number("NEAR_LIMIT_RATIO")?;
    push(out, "--near-limit-ratio", ratio.to_string());
    Ok(())
}

/// Logs and traces.
fn telemetry(env: &Env<'_>, out: &mut Translation) -> Result<(), TranslationError> {
    out.log_filter = log_filter(env.value("LOG_LEVEL"))?.to_owned();
    if env.flag("USE_PROMETHEUS")? {
        prometheus(env, out)?;
    }
    let format = env.value("LOG_FORMAT");
    match format.to_ascii_lowercase().as_str() {
        "json" => push(out, "--log-format", "json"),
        "text" => push(out, "--log-format", "human"),
        _ => return Err(invalid("LOG_FORMAT", format, "expected text or json")),
    }
    if env.flag("TRACING_ENABLED")? {
        match env.raw("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(endpoint) if cfg!(feature = "otel") => push(out, "--otlp-endpoint", endpoint),
            Some(_) => out.notices.push(
                "TRACING_ENABLED=true: not applicable: this build exports no traces (build with --features otel)"
                    .to_owned(),
            ),
            None => out.notices.push(
                "TRACING_ENABLED=true: not applicable without OTEL_EXPORTER_OTLP_ENDPOINT (Floodgate exports over OTLP/gRPC)"
                    .to_owned(),
            ),
        }
    }
    Ok(())
}

/// LOG_LEVEL (any case) as a tracing filter.
fn log_filter(level: String) -> Result<&'static str, TranslationError> {
    Ok(match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "fatal" | "panic" => "error",
        _ => {
            return Err(invalid(
                "LOG_LEVEL",
                level,
                "expected debug, info, warn or error",
            ));
        }
    })
}

/// The reference's Prometheus endpoint (USE_PROMETHEUS=true).
fn prometheus(env: &Env<'_>, out: &mut Translation) -> Result<(), TranslationError> {
    // Go's ":9090" listens on every address, IPv6 and IPv4.
    let addr = env.value("PROMETHEUS_ADDR");
    let addr = match addr.strip_prefix(':') {
        Some(port) => format!("[::]:{port}"),
        None => addr,
    };
    if addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid(
            "PROMETHEUS_ADDR",
            env.value("PROMETHEUS_ADDR"),
            "expected host:port or :port",
        ));
    }
    push(out, "--reference-metrics-addr", addr);
    push(
        out,
        "--reference-metrics-path",
        env.value("PROMETHEUS_PATH"),
    );
    if let Some(mapping) = env.raw("PROMETHEUS_MAPPER_YAML") {
        push(out, "--reference-metrics-mapping", mapping);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn translate_with(vars: &[(&str, &str)]) -> Result<Translation, TranslationError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        translate(|name| vars.get(name).cloned())
    }

    /// The value following `flag` in `args`.
    fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    }

    #[test]
    fn every_variable_is_listed_once() {
        let mut names: Vec<&str> = VARIABLES.iter().map(|v| v.name).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a variable is listed twice");
        assert_eq!(count, 114, "settings.go at f2fb157 has 114 variables");
    }

    #[test]
    fn defaults_are_the_reference_s() {
        let t = translate_with(&[]).unwrap();
        let a = &t.args;
        assert_eq!(arg(a, "--config"), Some("/srv/runtime_data/current/config"));
        assert_eq!(arg(a, "--http-addr"), Some("0.0.0.0:8080"));
        assert_eq!(arg(a, "--grpc-addr"), Some("0.0.0.0:8081"));
        assert_eq!(arg(a, "--debug-addr"), Some("0.0.0.0:6070"));
        assert_eq!(arg(a, "--max-connection-age"), Some("1day"));
        assert_eq!(arg(a, "--max-connection-age-grace"), Some("1h"));
        assert_eq!(arg(a, "--store"), Some("redis"));
        assert_eq!(
            arg(a, "--redis-url"),
            Some("unix:///var/run/nutcracker/ratelimit.sock")
        );
        assert_eq!(arg(a, "--local-cache-size"), Some("0"));
        assert_eq!(arg(a, "--limit-header"), Some("RateLimit-Limit"));
        assert!(a.contains(&"--count-denied-hits".to_owned()));
        assert!(a.contains(&"--config-hidden-files".to_owned()));
        for flag in [
            "--shadow-mode",
            "--start-without-config",
            "--healthy-only-with-config",
        ] {
            assert!(!a.contains(&flag.to_owned()), "{flag}");
        }
        assert_eq!(t.log_filter, "warn");
        assert_eq!(
            t.notices,
            vec![format!(
                "USE_STATSD (default true): not applicable: {NO_STATSD}"
            )]
        );
    }

    #[test]
    fn istio_and_envoy_gateway_environments() {
        // Istio's sample: Redis by host:port, the ConfigMap in /data/ratelimit/config.
        let t = translate_with(&[
            ("LOG_LEVEL", "debug"),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "redis:6379"),
            ("USE_STATSD", "false"),
            ("RUNTIME_ROOT", "/data"),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
            ("RUNTIME_WATCH_ROOT", "false"),
            ("RUNTIME_IGNOREDOTFILES", "true"),
        ])
        .unwrap();
        assert_eq!(arg(&t.args, "--config"), Some("/data/ratelimit/config"));
        assert_eq!(arg(&t.args, "--redis-url"), Some("redis://redis:6379"));
        assert!(!t.args.contains(&"--config-hidden-files".to_owned()));
        assert_eq!(t.log_filter, "debug");
        assert_eq!(t.notices.len(), 2, "{:?}", t.notices);
        assert_eq!(
            t.notices[0],
            format!("USE_STATSD=false: not applicable: {NO_STATSD}")
        );
        assert!(t.notices[1].starts_with("RUNTIME_WATCH_ROOT=false: not applicable"));
        // TLS towards Envoy, a sentinel-backed Redis with a user, quota and shadow modes.
        let t = translate_with(&[
            ("GRPC_SERVER_USE_TLS", "true"),
            ("GRPC_SERVER_TLS_CERT", "/certs/tls.crt"),
            ("GRPC_SERVER_TLS_KEY", "/certs/tls.key"),
            ("GRPC_CLIENT_TLS_CACERT", "/certs/ca.crt"),
            ("REDIS_TYPE", "sentinel"),
            ("REDIS_URL", "mymaster, s1:26379, s2:26379"),
            ("REDIS_AUTH", "app:s3cret"),
            ("REDIS_TLS", "true"),
            ("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "true"),
            ("SHADOW_MODE", "1"),
            ("QUOTA_MODE", "true"),
            ("GRPC_HOST", "::"),
            ("LOG_FORMAT", "json"),
            ("LOCAL_CACHE_SIZE_IN_BYTES", "1048576"),
            ("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", "true"),
            ("GRPC_UDS", "/run/ratelimit.sock"),
            ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
            ("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "true"),
        ])
        .unwrap();
        let a = &t.args;
        assert_eq!(arg(a, "--grpc-tls-cert"), Some("/certs/tls.crt"));
        assert_eq!(arg(a, "--grpc-tls-client-ca"), Some("/certs/ca.crt"));
        assert_eq!(arg(a, "--redis-master-name"), Some("mymaster"));
        assert_eq!(arg(a, "--redis-sentinels"), Some("s1:26379,s2:26379"));
        assert_eq!(arg(a, "--redis-url"), Some("rediss://sentinel-master"));
        assert_eq!(arg(a, "--redis-username"), Some("app"));
        assert_eq!(arg(a, "--redis-password"), Some("s3cret"));
        assert_eq!(arg(a, "--grpc-addr"), Some("[::]:8081"));
        assert_eq!(arg(a, "--grpc-uds"), Some("/run/ratelimit.sock"));
        assert_eq!(arg(a, "--log-format"), Some("json"));
        assert_eq!(arg(a, "--local-cache-size"), Some("10485"));
        for flag in [
            "--shadow-mode",
            "--quota-mode",
            "--start-without-config",
            "--healthy-only-with-config",
            "--redis-tls-skip-hostname-verification",
        ] {
            assert!(a.contains(&flag.to_owned()), "{flag}");
        }
        assert!(!a.contains(&"--count-denied-hits".to_owned()));
        // Envoy Gateway's Deployment, its config source made FILE: TLS with its Secret at /certs,
        // whose ca.crt it names in a variable the reference does not read.
        let t = translate_with(&[
            ("RUNTIME_ROOT", "/data"),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
            ("RUNTIME_IGNOREDOTFILES", "true"),
            ("RUNTIME_WATCH_ROOT", "false"),
            ("LOG_LEVEL", "info"),
            ("USE_STATSD", "false"),
            ("CONFIG_TYPE", "FILE"),
            ("GRPC_SERVER_USE_TLS", "true"),
            ("GRPC_SERVER_TLS_CERT", "/certs/tls.crt"),
            ("GRPC_SERVER_TLS_KEY", "/certs/tls.key"),
            ("GRPC_SERVER_TLS_CA_CERT", "/certs/ca.crt"),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "redis.redis-system.svc.cluster.local:6379"),
        ])
        .unwrap();
        let a = &t.args;
        assert_eq!(arg(a, "--config"), Some("/data/ratelimit/config"));
        assert_eq!(arg(a, "--grpc-tls-cert"), Some("/certs/tls.crt"));
        assert_eq!(arg(a, "--grpc-tls-key"), Some("/certs/tls.key"));
        assert_eq!(
            arg(a, "--grpc-tls-client-ca"),
            None,
            "no client certificates"
        );
        assert_eq!(t.log_filter, "info");
        assert!(
            t.notices.contains(&format!(
                "GRPC_SERVER_TLS_CA_CERT=/certs/ca.crt: {}",
                FOREIGN[0].1
            )),
            "{:?}",
            t.notices
        );
        // a cluster
        let t =
            translate_with(&[("REDIS_TYPE", "CLUSTER"), ("REDIS_URL", "n1:7000,n2:7001")]).unwrap();
        assert_eq!(
            arg(&t.args, "--redis-cluster-nodes"),
            Some("n1:7000,n2:7001")
        );
    }

    #[test]
    fn prometheus_as_envoy_gateway_sets_it() {
        let t = translate_with(&[
            ("USE_PROMETHEUS", "true"),
            ("PROMETHEUS_ADDR", ":19001"),
            ("PROMETHEUS_MAPPER_YAML", "/etc/statsd-exporter/conf.yaml"),
        ])
        .unwrap();
        let a = &t.args;
        assert_eq!(arg(a, "--reference-metrics-addr"), Some("[::]:19001"));
        assert_eq!(arg(a, "--reference-metrics-path"), Some("/metrics"));
        assert_eq!(
            arg(a, "--reference-metrics-mapping"),
            Some("/etc/statsd-exporter/conf.yaml")
        );
        let t = translate_with(&[
            ("USE_PROMETHEUS", "true"),
            ("PROMETHEUS_ADDR", "127.0.0.1:9102"),
            ("PROMETHEUS_PATH", "/stats"),
        ])
        .unwrap();
        assert_eq!(
            arg(&t.args, "--reference-metrics-addr"),
            Some("127.0.0.1:9102")
        );
        assert_eq!(arg(&t.args, "--reference-metrics-path"), Some("/stats"));
        // Off unless asked for, as in the reference.
        let t = translate_with(&[("PROMETHEUS_ADDR", ":19001")]).unwrap();
        assert_eq!(arg(&t.args, "--reference-metrics-addr"), None);
        let err = translate_with(&[("USE_PROMETHEUS", "true"), ("PROMETHEUS_ADDR", "metrics")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("PROMETHEUS_ADDR=metrics"), "{err}");
    }

    #[test]
    fn the_client_san_needs_the_client_ca_as_in_the_reference() {
        let tls = [
            ("GRPC_SERVER_USE_TLS", "true"),
            ("GRPC_SERVER_TLS_CERT", "/certs/tls.crt"),
            ("GRPC_SERVER_TLS_KEY", "/certs/tls.key"),
            ("GRPC_CLIENT_TLS_SAN", "envoy.envoy-gateway-system"),
        ];
        let with_ca = [&tls[..], &[("GRPC_CLIENT_TLS_CACERT", "/certs/ca.crt")]].concat();
        let t = translate_with(&with_ca).unwrap();
        assert_eq!(arg(&t.args, "--grpc-tls-client-ca"), Some("/certs/ca.crt"));
        assert_eq!(
            arg(&t.args, "--grpc-tls-client-san"),
            Some("envoy.envoy-gateway-system")
        );
        // Without the CA the reference asks for no client certificate, so checks no SAN.
        let t = translate_with(&tls).unwrap();
        assert_eq!(arg(&t.args, "--grpc-tls-client-san"), None);
        assert!(
            t.notices.iter().any(|n| n.starts_with(
                "GRPC_CLIENT_TLS_SAN=envoy.envoy-gateway-system: not applicable without GRPC_CLIENT_TLS_CACERT"
            )),
            "{:?}",
            t.notices
        );
        // Without TLS, none of it is read.
        let t = translate_with(&with_ca[3..]).unwrap();
        assert!(
            !t.args.iter().any(|a| a.starts_with("--grpc-tls")),
            "{:?}",
            t.args
        );
        assert!(
            !t.notices.iter().any(|n| n.contains("GRPC_CLIENT_TLS")),
            "{:?}",
            t.notices
        );
    }

    #[test]
    fn refuses_what_cannot_be_read_or_honoured() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("PORT", "http")], "PORT=http: expected a number"),
            (
                &[("SHADOW_MODE", "yes")],
                "SHADOW_MODE=yes: expected true or false",
            ),
            (
                &[("GRPC_MAX_CONNECTION_AGE", "soon")],
                "GRPC_MAX_CONNECTION_AGE=soon",
            ),
            (
                &[("BACKEND_TYPE", "memcache")],
                "BACKEND_TYPE=memcache is not supported",
            ),
            (
                &[("CONFIG_TYPE", "CONSUL")],
                "CONFIG_TYPE=CONSUL: expected FILE or GRPC_XDS_SOTW",
            ),
            (
                &[
                    ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
                    ("CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS", "token"),
                ],
                "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS=(set): expected key:value",
            ),
            (
                &[("REDIS_TYPE", "sentinel"), ("REDIS_URL", "mymaster")],
                "REDIS_URL=mymaster",
            ),
            (&[("REDIS_TYPE", "ring")], "REDIS_TYPE=ring"),
            (&[("LOG_LEVEL", "loud")], "LOG_LEVEL=loud"),
            (
                &[("GRPC_SERVER_USE_TLS", "true")],
                "GRPC_SERVER_TLS_CERT=: GRPC_SERVER_USE_TLS",
            ),
        ];
        for (vars, want) in cases {
            let err = translate_with(vars).unwrap_err().to_string();
            assert!(err.starts_with(want), "{vars:?}: {err}");
        }
    }

    #[test]
    fn not_applicable_settings_are_reported_and_secrets_are_not() {
        let t = translate_with(&[
            ("USE_STATSD", "true"),
            ("REDIS_PERSECOND_TIMEOUT", "1s"),
            ("REDIS_AUTH", "topsecret"),
            (
                "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS",
                "authorization=secret",
            ),
        ])
        .unwrap();
        assert_eq!(t.notices.len(), 2, "{:?}", t.notices);
        assert!(
            t.notices
                .iter()
                .any(|n| n.starts_with("REDIS_PERSECOND_TIMEOUT=1s"))
        );
        assert!(
            t.notices.iter().all(|n| !n.contains("secret")),
            "{:?}",
            t.notices
        );
        assert!(is_secret("CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS"));
        assert!(is_secret("REDIS_PERSECOND_AUTH"));
    }

    #[test]
    fn xds_as_envoy_gateway_configures_it() {
        let t = translate_with(&[
            ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
            ("CONFIG_GRPC_XDS_SERVER_URL", "envoy-gateway:18001"),
            ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit"),
            ("CONFIG_GRPC_XDS_NODE_METADATA", "zone=a,bogus,team=edge"),
            (
                "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS",
                "x-token:abc,x-env:prod",
            ),
            ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "/certs/tls.crt"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "/certs/tls.key"),
            ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "/certs/ca.crt"),
            ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
            ("XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES", "8388608"),
        ])
        .unwrap();
        let a = &t.args;
        assert_eq!(arg(a, "--config-source"), Some("xds"));
        assert_eq!(arg(a, "--config"), None, "no config directory with xDS");
        assert_eq!(arg(a, "--xds-server"), Some("envoy-gateway:18001"));
        assert_eq!(arg(a, "--xds-node-id"), Some("envoy-ratelimit"));
        assert_eq!(arg(a, "--xds-node-metadata"), Some("zone=a,team=edge"));
        assert_eq!(arg(a, "--xds-headers"), Some("x-token=abc,x-env=prod"));
        assert!(a.contains(&"--xds-tls".to_owned()));
        assert_eq!(arg(a, "--xds-tls-ca"), Some("/certs/ca.crt"));
        assert_eq!(arg(a, "--xds-tls-cert"), Some("/certs/tls.crt"));
        assert_eq!(arg(a, "--xds-tls-key"), Some("/certs/tls.key"));
        assert_eq!(arg(a, "--xds-backoff-initial"), Some("10s"));
        assert_eq!(arg(a, "--xds-backoff-max"), Some("1m"));
        assert_eq!(arg(a, "--xds-backoff-factor"), Some("0.5"));
        assert_eq!(arg(a, "--xds-max-message-size"), Some("8388608"));
        assert!(a.contains(&"--start-without-config".to_owned()));
        // Without TLS asked for, the TLS files are not read (as in the reference).
        let t = translate_with(&[
            ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
            ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "/certs/ca.crt"),
        ])
        .unwrap();
        assert_eq!(arg(&t.args, "--xds-tls-ca"), None);
        assert_eq!(arg(&t.args, "--xds-server"), Some("localhost:18000"));
    }

    #[test]
    fn a_second_redis_for_per_second_limits() {
        let t = translate_with(&[
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "redis:6379"),
            ("REDIS_PERSECOND", "true"),
            ("REDIS_PERSECOND_SOCKET_TYPE", "tcp"),
            ("REDIS_PERSECOND_URL", "redis-fast:6379"),
            ("REDIS_PERSECOND_AUTH", "fast:pw"),
            ("REDIS_PERSECOND_POOL_SIZE", "20"),
        ])
        .unwrap();
        let a = &t.args;
        assert_eq!(arg(a, "--redis-url"), Some("redis://redis:6379"));
        assert_eq!(
            arg(a, "--redis-per-second-url"),
            Some("redis://redis-fast:6379")
        );
        assert_eq!(arg(a, "--redis-per-second-username"), Some("fast"));
        assert_eq!(arg(a, "--redis-per-second-password"), Some("pw"));
        assert_eq!(arg(a, "--redis-per-second-pool-size"), Some("20"));
        assert_eq!(arg(a, "--redis-password"), None);
        // Its defaults are the reference's: the nutcracker socket for per-second limits.
        let t = translate_with(&[("REDIS_PERSECOND", "true")]).unwrap();
        assert_eq!(
            arg(&t.args, "--redis-per-second-url"),
            Some("unix:///var/run/nutcracker/ratelimitpersecond.sock")
        );
        let t = translate_with(&[
            ("REDIS_PERSECOND", "true"),
            ("REDIS_PERSECOND_TYPE", "sentinel"),
            ("REDIS_PERSECOND_URL", "fast,s1:26379"),
        ])
        .unwrap();
        assert_eq!(arg(&t.args, "--redis-per-second-master-name"), Some("fast"));
        assert_eq!(
            arg(&t.args, "--redis-per-second-sentinels"),
            Some("s1:26379")
        );
        // Set up without REDIS_PERSECOND=true, as in the reference, it is not used.
        let t = translate_with(&[("REDIS_PERSECOND_URL", "redis-fast:6379")]).unwrap();
        assert_eq!(arg(&t.args, "--redis-per-second-url"), None);
        let err = translate_with(&[
            ("REDIS_PERSECOND", "true"),
            ("REDIS_PERSECOND_TYPE", "ring"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("REDIS_PERSECOND_TYPE=ring"), "{err}");
    }
}
