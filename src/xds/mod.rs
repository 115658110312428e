//! Config from an xDS control plane (Envoy Gateway): a state-of-the-world ADS client that
//! subscribes to every `RateLimitConfig` resource for its node, validates each pushed set as a
//! whole with the files' rules, hands the valid ones on, and ACKs or NACKs each response.
//!
//! The stream is reconnected with jittered exponential backoff; the last config handed on keeps
//! serving meanwhile. TLS files are read again at every connection attempt, so renewed
//! certificates are used from the next connection on.

pub mod resource;

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::{Config, LoadOptions};
use crate::pb::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::pb::xds::{DiscoveryRequest, DiscoveryResponse, Node, Status};
use crate::telemetry;

pub use resource::{RATE_LIMIT_CONFIG_TYPE, ResourceError, config_from_resources};

/// How long a stream may stay silent before its first response without a warning.
const QUIET_WARNING: Duration = Duration::from_secs(15);

/// Where the trust roots are when no CA file is given: Debian's (and the image's) bundle.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How to reach the control plane, and who to say we are.
#[derive(Debug, Clone)]
pub struct XdsOptions {
    /// `host:port` (the reference's CONFIG_GRPC_XDS_SERVER_URL), or an `http://` / `https://`
    /// URL.
    pub server: String,
    /// The node id the control plane picks resources by.
    pub node_id: String,
    /// Node metadata, as string values.
    pub node_metadata: Vec<(String, String)>,
    /// gRPC metadata sent with the stream (e.g. an authorization header).
    pub headers: Vec<(String, String)>,
    /// TLS to the control plane, if any.
    pub tls: Option<XdsTls>,
    /// Reconnection delays.
    pub backoff: Backoff,
    /// The largest response accepted, in bytes (`None`: tonic's 4 MiB).
    pub max_message_size: Option<usize>,
    /// How the pushed resources become a config (domain merging).
    pub load: LoadOptions,
}

/// TLS to the control plane: the server verified against `ca` (or the system roots) for the
/// URL's host (or `server_name`), and our certificate presented when given (mutual TLS).
#[derive(Debug, Clone, Default)]
pub struct XdsTls {
    /// CA certificate (PEM).
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Its key (PEM: PKCS#1, PKCS#8 or SEC1).
    pub key: Option<PathBuf>,
    /// The name to verify the server's certificate for, instead of the URL's host.
    pub server_name: Option<String>,
}

/// Jittered exponential backoff between connection attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Each delay is the previous one times this.
    pub factor: f64,
    /// Each delay is drawn between half and all of itself.
    pub jitter: bool,
}

impl Default for Backoff {
    /// A second, doubling to a minute, jittered: a restarted control plane is reached again
    /// within seconds, one that stays down is not hammered, and replicas do not retry in step.
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            factor: 2.0,
            jitter: true,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0: the first retry), with `unit` in [0, 1) as the
    /// random draw.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let grown = self.initial.as_secs_f64() * self.factor.max(1.0).powi(attempt.min(64) as i32);
        let capped = grown.min(self.max.as_secs_f64()).max(0.0);
        let drawn = if self.jitter {
            capped * (0.5 + 0.5 * unit.clamp(0.0, 1.0))
        } else {
            capped
        };
        Duration::from_secs_f64(drawn)
    }
}

/// Why a connection to the control plane ended.
#[derive(Debug, Error)]
pub enum XdsError {
    /// A TLS file cannot be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server address or TLS settings cannot be used.
    #[error("xDS server {0}")]
    Settings(String),
    /// The connection or the stream failed.
    #[error("xDS stream: {0}")]
    Stream(#[from] tonic::Status),
    /// The connection could not be made.
    #[error("connecting to the xDS server: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server closed the stream.
    #[error("the xDS server closed the stream")]
    Closed,
}

/// Follows the control plane until `stop`: every valid pushed config is sent to `configs`
/// (the receiver installs it); a set that does not validate is NACKed and the running config
/// stays.
pub async fn run(options: XdsOptions, configs: mpsc::Sender<Config>, stop: CancellationToken) {
    let mut attempt = 0u32;
    let mut accepted = String::new();
    loop {
        let session = follow(&options, &configs, &mut accepted);
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = session => outcome,
        };
        metrics::gauge!(telemetry::XDS_CONNECTED).set(0.0);
        let (error, received) = outcome;
        if received {
            attempt = 0;
        }
        let delay = options.backoff.delay(attempt, random_unit());
        attempt = attempt.saturating_add(1);
        tracing::warn!(server = %options.server, error = %error, retry_in = ?delay, version = %accepted, "xDS stream ended; the last accepted config keeps serving");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection: subscribes and handles responses until the stream ends. Returns why, and
/// whether any response came (which resets the backoff).
async fn follow(
    options: &XdsOptions,
    configs: &mpsc::Sender<Config>,
    accepted: &mut String,
) -> (XdsError, bool) {
    let mut received = false;
    let error = match stream(options, configs, accepted, &mut received).await {
        Ok(()) => XdsError::Closed,
        Err(e) => e,
    };
    (error, received)
}

async fn stream(
    options: &XdsOptions,
    configs: &mpsc::Sender<Config>,
    accepted: &mut String,
    received: &mut bool,
) -> Result<(), XdsError> {
    let channel = connect(options).await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    if let Some(size) = options.max_message_size {
        client = client.max_decoding_message_size(size);
    }
    let node = node(options);
    let (requests, outgoing) = mpsc::channel::<DiscoveryRequest>(4);
    // The subscription, from the version already accepted.
    let _ = requests.send(discovery_request(&node, accepted, "")).await;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    for (name, value) in &options.headers {
        let name = tonic::metadata::MetadataKey::from_bytes(name.as_bytes())
            .map_err(|_| XdsError::Settings(format!("header name '{name}' is not valid")))?;
        let value = value.parse().map_err(|_| {
            XdsError::Settings(format!("the value of header '{name}' is not valid"))
        })?;
        request.metadata_mut().insert(name, value);
    }
    let mut responses = client
        .stream_aggregated_resources(request)
        .await?
        .into_inner();
    metrics::gauge!(telemetry::XDS_CONNECTED).set(1.0);
    tracing::info!(server = %options.server, node = %options.node_id, "xDS stream open; waiting for rate limit configs");
    loop {
        // Before the first response, say now and then that nothing came: a control plane
        // sends nothing to a node id it does not serve.
        let next = if *received {
            responses.next().await
        } else {
            match tokio::time::timeout(QUIET_WARNING, responses.next()).await {
                Ok(next) => next,
                Err(_) => {
                    tracing::warn!(server = %options.server, node = %options.node_id, "no rate limit config from the xDS server yet: does it serve this node id?");
                    continue;
                }
            }
        };
        let Some(response) = next else { break };
        let response = response?;
        *received = true;
        let reply = handle(options, &node, response, configs, accepted).await;
        if requests.send(reply).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Validates one response and says what to answer: an ACK with its version, or a NACK with the
/// version still in force and the reason.
async fn handle(
    options: &XdsOptions,
    node: &Node,
    response: DiscoveryResponse,
    configs: &mpsc::Sender<Config>,
    accepted: &mut String,
) -> DiscoveryRequest {
    let mut reply = discovery_request(node, accepted, &response.nonce);
    if response.type_url != RATE_LIMIT_CONFIG_TYPE {
        tracing::debug!(type_url = %response.type_url, "xDS response of another type ignored");
        return reply;
    }
    match config_from_resources(&response.resources, &options.load) {
        Ok(config) => {
            tracing::info!(version = %response.version_info, domains = ?config.domain_names(), resources = response.resources.len(), "xDS config accepted");
            metrics::counter!(telemetry::XDS_UPDATES, "result" => "accepted").increment(1);
            metrics::gauge!(telemetry::XDS_LAST_ACCEPTED).set(unix_seconds());
            let _ = configs.send(config).await;
            accepted.clone_from(&response.version_info);
            reply.version_info.clone_from(&response.version_info);
        }
        Err(e) => {
            tracing::error!(version = %response.version_info, error = %e, still_serving = %accepted, "xDS config refused (NACK); the running config stays");
            metrics::counter!(telemetry::XDS_UPDATES, "result" => "rejected").increment(1);
            // A refused load, as a refused file reload counts.
            metrics::counter!(telemetry::CONFIG_RELOADS, "result" => "failure").increment(1);
            if let Some(reference) = telemetry::reference::installed() {
                reference.record_config_load(false);
            }
            reply.error_detail = Some(Status {
                // INVALID_ARGUMENT
                code: 3,
                message: e.to_string(),
                details: Vec::new(),
            });
        }
    }
    reply
}

/// A request for every RateLimitConfig (a wildcard: no names), saying the version held and the
/// nonce answered (none for a subscription).
fn discovery_request(node: &Node, version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        node: Some(node.clone()),
        resource_names: Vec::new(),
        type_url: RATE_LIMIT_CONFIG_TYPE.to_owned(),
        response_nonce: nonce.to_owned(),
        error_detail: None,
    }
}

/// The node we present: the id, the metadata as string values, and who we are.
fn node(options: &XdsOptions) -> Node {
    let mut metadata = pbjson_types::Struct::default();
    for (key, value) in &options.node_metadata {
        metadata.fields.insert(
            key.clone(),
            pbjson_types::Value {
                kind: Some(pbjson_types::value::Kind::StringValue(value.clone())),
            },
        );
    }
    Node {
        id: options.node_id.clone(),
        cluster: String::new(),
        metadata: (!options.node_metadata.is_empty()).then_some(metadata),
        user_agent_name: "floodgate".to_owned(),
        user_agent_version_type: Some(
            crate::pb::xds::node::UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
        ),
    }
}

/// A channel to the control plane, TLS files read now.
async fn connect(options: &XdsOptions) -> Result<Channel, XdsError> {
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = if options.server.contains("://") {
        options.server.clone()
    } else {
        format!("{scheme}://{}", options.server)
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| XdsError::Settings(format!("address '{}': {e}", options.server)))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(tls) = &options.tls {
        endpoint = endpoint.tls_config(client_tls(tls, &url)?)?;
    }
    Ok(endpoint.connect().await?)
}

/// The client TLS settings, from the files as they are now.
fn client_tls(tls: &XdsTls, url: &str) -> Result<ClientTlsConfig, XdsError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| XdsError::File {
            path: path.display().to_string(),
            source,
        })
    };
    let ca = match &tls.ca {
        Some(path) => read(path)?,
        None => read(&PathBuf::from(SYSTEM_ROOTS))?,
    };
    let host = tls.server_name.clone().unwrap_or_else(|| {
        url.split("://")
            .nth(1)
            .unwrap_or(url)
            .rsplit_once(':')
            .map_or(url, |(host, _)| host)
            .trim_matches(['[', ']'])
            .to_owned()
    });
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(host);
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(XdsError::Settings(
                "a client certificate needs both its certificate and its key".into(),
            ));
        }
    }
    Ok(config)
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A draw in [0, 1) for the backoff's jitter: good enough, and no dependency.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let bits = RandomState::new().hash_one(std::time::Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_jitters_within_half() {
        let backoff = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
            factor: 2.0,
            jitter: false,
        };
        let delays: Vec<u64> = (0..6).map(|a| backoff.delay(a, 0.3).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        let jittered = Backoff {
            jitter: true,
            ..backoff
        };
        assert_eq!(jittered.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(jittered.delay(3, 1.0), Duration::from_secs(8));
        assert_eq!(jittered.delay(100, 1.0), Duration::from_secs(10));
        let draw = random_unit();
        assert!((0.0..1.0).contains(&draw), "{draw}");
    }

    #[test]
    fn the_node_carries_id_metadata_and_agent() {
        let options = XdsOptions {
            server: "envoy-gateway:18001".into(),
            node_id: "envoy-ratelimit".into(),
            node_metadata: vec![("zone".into(), "a".into())],
            headers: Vec::new(),
            tls: None,
            backoff: Backoff::default(),
            max_message_size: None,
            load: LoadOptions::default(),
        };
        let node = node(&options);
        assert_eq!(node.id, "envoy-ratelimit");
        assert_eq!(node.user_agent_name, "floodgate");
        let metadata = node.metadata.unwrap();
        assert!(matches!(
            metadata.fields["zone"].kind,
            Some(pbjson_types::value::Kind::StringValue(ref v)) if v == "a"
        ));
    }
}
