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
use support::process::{Ports, start_healthy};
use support::{ChildGuard, PATIENCE, request, wait_for};
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let service = AggregatedDiscoveryServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
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

/// Floodgate following the control plane at `port` as `node`, memory store.
async fn floodgate(port: u16, node: &str, extra: &[&str]) -> (ChildGuard, Ports) {
    start_healthy(|ports| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_floodgate"));
        command
            .arg("serve")
            .args(["--config-source", "xds"])
            .args(["--xds-server", &format!("127.0.0.1:{port}")])
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
    let (_child, ports) = floodgate(port, "test-node", &[]).await;

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
    let (_child, ports) = floodgate(port, "stranger", &["--start-without-config"]).await;
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
