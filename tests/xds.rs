//! Floodgate taking its limits from an xDS control plane: an ADS server written here (tonic)
//! pushes configs to the real binary, which is asked for decisions over gRPC after each step:
//! a first config, a replacement, a set that does not validate (NACKed, the old config still
//! deciding), a dropped stream (reconnected, the config kept meanwhile), and a node the
//! control plane does not know (given nothing).

mod support;

use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};

use floodgate::pb::RateLimitRequest;
use floodgate::pb::rate_limit_response::Code;
use floodgate::pb::rate_limit_service_client::RateLimitServiceClient;
use floodgate::pb::xds::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use floodgate::pb::xds::{
    DiscoveryRequest, DiscoveryResponse, RateLimitConfig, RateLimitDescriptor, RateLimitPolicy,
    RateLimitUnit,
};
use prost::Message;
use support::certs::{GatewayCa, NAMESPACE, Secret};
use support::process::{Ports, start_healthy};
use support::reference::{Ratelimit, write_volume};
use support::{ChildGuard, PATIENCE, RedisServer, request, temp_dir, wait_for};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};

const TYPE_URL: &str = "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig";

/// What the control plane serves: a version and its resources.
#[derive(Clone, Default)]
struct Snapshot {
    version: String,
    resources: Vec<RateLimitConfig>,
}

/// The test's control plane: one snapshot for one node id, every request it receives kept.
#[derive(Clone)]
struct ControlPlane {
    snapshot: watch::Sender<Snapshot>,
    /// Bumped to end every open stream.
    cut: watch::Sender<u64>,
    requests: Arc<Mutex<Vec<DiscoveryRequest>>>,
    streams: Arc<Mutex<u32>>,
    node_id: String,
}

impl ControlPlane {
    fn new(node_id: &str) -> ControlPlane {
        ControlPlane {
            snapshot: watch::channel(Snapshot::default()).0,
            cut: watch::channel(0).0,
            requests: Arc::default(),
            streams: Arc::default(),
            node_id: node_id.to_owned(),
        }
    }

    /// Serves on a free loopback port; returns the port.
    async fn start(&self) -> u16 {
        self.serve(None).await
    }

    /// Serves over mutual TLS, as Envoy Gateway's xDS server: its certificate, and client
    /// certificates required, signed by `ca`.
    async fn start_tls(&self, cert: &Secret, ca: &GatewayCa) -> u16 {
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&cert.cert, &cert.key))
            .client_ca_root(tonic::transport::Certificate::from_pem(&ca.pem));
        self.serve(Some(tls)).await
    }

    async fn serve(&self, tls: Option<tonic::transport::ServerTlsConfig>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let service = AggregatedDiscoveryServiceServer::new(self.clone());
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).unwrap();
        }
        tokio::spawn(async move {
            builder
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        port
    }

    fn push(&self, version: &str, resources: Vec<RateLimitConfig>) {
        self.snapshot.send_replace(Snapshot {
            version: version.to_owned(),
            resources,
        });
    }

    fn requests(&self) -> Vec<DiscoveryRequest> {
        self.requests.lock().unwrap().clone()
    }

    fn streams(&self) -> u32 {
        *self.streams.lock().unwrap()
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for ControlPlane {
    type StreamAggregatedResourcesStream = Responses;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Responses>, tonic::Status> {
        *self.streams.lock().unwrap() += 1;
        let mut inbound = request.into_inner();
        let (out, responses) = mpsc::channel(8);
        let plane = self.clone();
        tokio::spawn(async move {
            let mut snapshots = plane.snapshot.subscribe();
            let mut cut = plane.cut.subscribe();
            let mut known = false;
            let mut nonce = 0u32;
            let send = |snapshot: &Snapshot, nonce: u32| {
                let response = DiscoveryResponse {
                    version_info: snapshot.version.clone(),
                    resources: snapshot
                        .resources
                        .iter()
                        .map(|r| pbjson_types::Any {
                            type_url: TYPE_URL.into(),
                            value: r.encode_to_vec().into(),
                        })
                        .collect(),
                    canary: false,
                    type_url: TYPE_URL.into(),
                    nonce: format!("nonce-{nonce}"),
                };
                let out = out.clone();
                async move { out.send(Ok(response)).await.is_ok() }
            };
            loop {
                tokio::select! {
                    request = inbound.next() => {
                        let Some(Ok(request)) = request else { return };
                        let first = request.response_nonce.is_empty();
                        let node = request.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
                        plane.requests.lock().unwrap().push(request);
                        // A subscription from the node served: the current snapshot.
                        if first && node == plane.node_id {
                            known = true;
                            let snapshot = snapshots.borrow_and_update().clone();
                            if !snapshot.version.is_empty() {
                                nonce += 1;
                                if !send(&snapshot, nonce).await { return; }
                            }
                        }
                    }
                    changed = snapshots.changed() => {
                        if changed.is_err() { return; }
                        let snapshot = snapshots.borrow_and_update().clone();
                        if known {
                            nonce += 1;
                            if !send(&snapshot, nonce).await { return; }
                        }
                    }
                    _ = cut.changed() => return,
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(responses),
        )))
    }
}

/// A domain "edge" with `per_minute` requests per minute for each `user`.
fn edge(per_minute: u32) -> RateLimitConfig {
    RateLimitConfig {
        name: "edge-config".into(),
        domain: "edge".into(),
        descriptors: vec![RateLimitDescriptor {
            key: "user".into(),
            rate_limit: Some(RateLimitPolicy {
                unit: RateLimitUnit::Minute as i32,
                requests_per_unit: per_minute,
                ..RateLimitPolicy::default()
            }),
            ..RateLimitDescriptor::default()
        }],
    }
}

/// Floodgate following the control plane at `server` as `node`, memory store.
async fn floodgate(server: &str, node: &str, extra: &[String]) -> (ChildGuard, Ports) {
    start_healthy(|ports| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_floodgate"));
        command
            .arg("serve")
            .args(["--config-source", "xds"])
            .args(["--xds-server", server])
            .args(["--xds-node-id", node])
            .args([
                "--xds-backoff-initial",
                "50ms",
                "--xds-backoff-max",
                "200ms",
            ])
            .args(["--grpc-addr", &format!("127.0.0.1:{}", ports.grpc)])
            .args(["--http-addr", &format!("127.0.0.1:{}", ports.http)])
            .args(extra)
            .env_remove("FLOODGATE_CONFIG");
        command
    })
    .await
}

fn ask(user: &str) -> RateLimitRequest {
    request("edge", &[&[("user", user)]])
}

async fn client(ports: &Ports) -> RateLimitServiceClient<tonic::transport::Channel> {
    RateLimitServiceClient::connect(format!("http://127.0.0.1:{}", ports.grpc))
        .await
        .unwrap()
}

/// The limit Floodgate applies to `user` now.
async fn limit_for(ports: &Ports, user: &str) -> Option<u32> {
    let mut client = client(ports).await;
    let answer = client.should_rate_limit(ask(user)).await.ok()?.into_inner();
    answer.statuses[0]
        .current_limit
        .as_ref()
        .map(|l| l.requests_per_unit)
}

#[tokio::test]
async fn configs_pushed_replaced_refused_and_kept_across_reconnects() {
    let plane = ControlPlane::new("test-node");
    plane.push("1", vec![edge(2)]);
    let port = plane.start().await;
    // Healthy only once the first config is in.
    let (_child, ports) = floodgate(&format!("127.0.0.1:{port}"), "test-node", &[]).await;

    // The first config decides: two a minute.
    let mut grpc = client(&ports).await;
    for expected in [Code::Ok, Code::Ok, Code::OverLimit] {
        let answer = grpc
            .should_rate_limit(ask("ann"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.overall_code(), expected);
    }
    // Subscribed as a wildcard, for the resource type, with the node; then ACKed.
    let requests = plane.requests();
    let subscribe = &requests[0];
    assert_eq!(subscribe.type_url, TYPE_URL);
    assert!(
        subscribe.resource_names.is_empty(),
        "a wildcard subscription"
    );
    assert_eq!(subscribe.node.as_ref().unwrap().id, "test-node");
    wait_for("the ACK of version 1", PATIENCE, || async {
        plane.requests().iter().any(|r| {
            r.version_info == "1" && r.response_nonce == "nonce-1" && r.error_detail.is_none()
        })
    })
    .await;

    // Replaced: five a minute.
    plane.push("2", vec![edge(5)]);
    wait_for("the replacement", PATIENCE, || async {
        limit_for(&ports, "bob").await == Some(5)
    })
    .await;

    // A set that does not validate: NACKed with the reason, version 2 still in force.
    let mut broken = edge(7);
    broken.name = "broken-config".into();
    broken.descriptors[0].rate_limit.as_mut().unwrap().unit = RateLimitUnit::Unknown as i32;
    plane.push("3", vec![broken]);
    wait_for("the NACK of version 3", PATIENCE, || async {
        plane.requests().iter().any(|r| {
            r.response_nonce == "nonce-3"
                && r.version_info == "2"
                && r.error_detail
                    .as_ref()
                    .is_some_and(|e| e.message.contains("xDS resource 'broken-config'"))
        })
    })
    .await;
    assert_eq!(
        limit_for(&ports, "bob").await,
        Some(5),
        "the running config stays"
    );

    // The stream drops: the config keeps deciding, and the client comes back, subscribing
    // from the version it holds.
    let streams = plane.streams();
    plane.cut.send_modify(|n| *n += 1);
    assert_eq!(limit_for(&ports, "cy").await, Some(5));
    wait_for("a new stream", PATIENCE, || async {
        plane.streams() > streams
    })
    .await;
    wait_for("the resubscription from version 2", PATIENCE, || async {
        let requests = plane.requests();
        requests
            .iter()
            .filter(|r| r.response_nonce.is_empty())
            .any(|r| r.version_info == "2")
    })
    .await;
    // On the new stream the control plane sends its snapshot again (still the broken one):
    // refused again, and version 2 serves on. A good one then lands.
    plane.push("4", vec![edge(9)]);
    wait_for("version 4 after the reconnect", PATIENCE, || async {
        limit_for(&ports, "dee").await == Some(9)
    })
    .await;
}

#[tokio::test]
async fn a_node_the_control_plane_does_not_know_gets_nothing() {
    let plane = ControlPlane::new("known-node");
    plane.push("1", vec![edge(2)]);
    let port = plane.start().await;
    // Started without a config, as Envoy Gateway starts the reference.
    let server = format!("127.0.0.1:{port}");
    let (_child, ports) = floodgate(&server, "stranger", &["--start-without-config".into()]).await;
    wait_for("the stranger's subscription", PATIENCE, || async {
        plane
            .requests()
            .iter()
            .any(|r| r.node.as_ref().is_some_and(|n| n.id == "stranger"))
    })
    .await;
    let mut grpc = client(&ports).await;
    let refused = grpc.should_rate_limit(ask("ann")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused
            .message()
            .contains("no rate limit configuration loaded"),
        "{refused:?}"
    );
    assert!(
        plane.requests().iter().all(|r| r.response_nonce.is_empty()),
        "nothing was sent, so nothing was ACKed"
    );
}

/// Envoy Gateway's xDS server certificate: its Service's names.
fn xds_server_cert(ca: &GatewayCa) -> Secret {
    let names = [
        "envoy-gateway".to_owned(),
        format!("envoy-gateway.{NAMESPACE}"),
        format!("envoy-gateway.{NAMESPACE}.svc"),
        format!("envoy-gateway.{NAMESPACE}.svc.cluster.local"),
    ];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    ca.leaf("envoy-gateway", &names)
}

#[tokio::test]
async fn envoy_gateway_s_deployment_follows_its_control_plane_over_mutual_tls() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let root = temp_dir("xds-envoy-gateway");
    let ca = GatewayCa::new();
    // The envoy-rate-limit Secret: the service's certificate, also its xDS client certificate
    // (no extended key usage, PKCS#1 key).
    let certs = root.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let secret = ca.gateway_leaf();
    write_volume(
        &certs,
        1,
        &[
            ("ca.crt", ca.pem.as_str()),
            ("tls.crt", secret.cert.as_str()),
            ("tls.key", secret.key.as_str()),
        ],
    );
    let plane = ControlPlane::new("envoy-ratelimit");
    let port = plane.start_tls(&xds_server_cert(&ca), &ca).await;
    let file = |name: &str| certs.join(name).to_string_lossy().into_owned();
    // The environment of Envoy Gateway's ratelimit Deployment (its golden test file
    // testdata/deployments/default.yaml), with the control plane and Redis on loopback: the
    // URL's host there is the Service name envoy-gateway, which the certificate is checked
    // for; here the same name is given as CONFIG_GRPC_XDS_SERVER_TLS_SAN.
    let env: Vec<(&str, String)> = vec![
        (
            "RUNTIME_ROOT",
            root.path().join("data").to_string_lossy().into_owned(),
        ),
        ("RUNTIME_SUBDIRECTORY", "ratelimit".into()),
        ("RUNTIME_IGNOREDOTFILES", "true".into()),
        ("RUNTIME_WATCH_ROOT", "false".into()),
        ("LOG_LEVEL", "info".into()),
        ("USE_STATSD", "false".into()),
        ("CONFIG_TYPE", "GRPC_XDS_SOTW".into()),
        ("CONFIG_GRPC_XDS_SERVER_URL", format!("127.0.0.1:{port}")),
        ("CONFIG_GRPC_XDS_SERVER_TLS_SAN", "envoy-gateway".into()),
        ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit".into()),
        ("GRPC_SERVER_USE_TLS", "true".into()),
        ("GRPC_SERVER_TLS_CERT", file("tls.crt")),
        ("GRPC_SERVER_TLS_KEY", file("tls.key")),
        ("GRPC_SERVER_TLS_CA_CERT", file("ca.crt")),
        ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true".into()),
        ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", file("tls.crt")),
        ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", file("tls.key")),
        ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", file("ca.crt")),
        ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true".into()),
        ("REDIS_SOCKET_TYPE", "tcp".into()),
        ("REDIS_URL", format!("127.0.0.1:{}", redis.port)),
        ("USE_PROMETHEUS", "true".into()),
        ("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "100ms".into()),
    ];
    // Started before any config (FORCE_START_WITHOUT_INITIAL_CONFIG).
    let ratelimit = Ratelimit::start(root.path(), &env).await;
    let grpc = format!("127.0.0.1:{}", ratelimit.grpc).parse().unwrap();
    let client = ca.client(None);
    let refused = client.should_rate_limit(grpc, ask("ann")).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("no rate limit configuration loaded")),
        "{refused:?}"
    );
    // The control plane pushes Envoy Gateway's shape of config; decisions follow it.
    plane.push("1", vec![edge(2)]);
    wait_for("the pushed config deciding", PATIENCE, || async {
        client.should_rate_limit(grpc, ask("ann")).await == Ok(Code::Ok)
    })
    .await;
    assert_eq!(
        client.should_rate_limit(grpc, ask("ann")).await,
        Ok(Code::Ok)
    );
    assert_eq!(
        client.should_rate_limit(grpc, ask("ann")).await,
        Ok(Code::OverLimit)
    );
    assert!(
        plane
            .requests()
            .iter()
            .any(|r| r.version_info == "1" && r.error_detail.is_none()),
        "ACKed over mutual TLS"
    );
    // The reference's metric names count the pushed config's loads.
    let (_, text) = ratelimit.metrics("/metrics").await;
    assert!(
        text.contains("ratelimit_service_config_load_success"),
        "{text}"
    );
}

#[tokio::test]
async fn the_server_is_verified_for_the_url_s_host_and_a_wrong_ca_gets_nothing() {
    let dir = temp_dir("xds-tls-host");
    let ca = GatewayCa::new();
    // Envoy Gateway's certificate for a control plane outside Kubernetes: DNS localhost, a
    // single-label name.
    let server = ca.leaf("envoy-gateway", &["localhost"]);
    let client_cert = ca.gateway_leaf();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let (ca_file, cert, key) = (
        write("ca.crt", &ca.pem),
        write("tls.crt", &client_cert.cert),
        write("tls.key", &client_cert.key),
    );
    let plane = ControlPlane::new("host-check");
    plane.push("1", vec![edge(4)]);
    let port = plane.start_tls(&server, &ca).await;
    let tls = |ca: String| {
        vec![
            "--xds-tls-ca".to_owned(),
            ca,
            "--xds-tls-cert".to_owned(),
            cert.clone(),
            "--xds-tls-key".to_owned(),
            key.clone(),
        ]
    };
    // localhost:port: the certificate is checked for localhost, and passes.
    let server = format!("localhost:{port}");
    let (_child, ports) = floodgate(&server, "host-check", &tls(ca_file.clone())).await;
    assert_eq!(limit_for(&ports, "ann").await, Some(4));

    // A CA that did not sign the server's certificate: no connection, so no config.
    let other = GatewayCa::new();
    let other_ca = write("other-ca.crt", &other.pem);
    let mut extra = tls(other_ca);
    extra.push("--start-without-config".to_owned());
    let (_other, ports) = floodgate(&server, "host-check", &extra).await;
    let mut grpc = client(&ports).await;
    let refused = grpc.should_rate_limit(ask("ann")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
}
