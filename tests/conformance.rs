//! Wire compatibility: a client generated from Envoy's own protos (PyPI xds-protos + grpcio)
//! talks to Floodgate over real gRPC. The interpreter is chosen by `support::python`; without those packages the test is skipped, except under CI=true.

mod support;

use std::process::Command;

use floodgate::server::ServerOptions;
use support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_generated_client_gets_correct_answers() {
    let python = support::python();
    let has_packages = Command::new(&python)
        .args(["-c", "import grpc, envoy.service.ratelimit.v3.rls_pb2_grpc"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_packages {
        assert!(
            !support::is_ci(),
            "{python} lacks grpcio/xds-protos; .ci/run installs them into a venv"
        );
        eprintln!("SKIPPED: {python} lacks grpcio and xds-protos (pip install grpcio xds-protos)");
        return;
    }
    let config = include_str!("conformance/config.yaml");
    let server = TestServer::memory(config, ServerOptions::default()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance/client.py");
    let addr = server.grpc_addr.to_string();
    let output =
        tokio::task::spawn_blocking(move || Command::new(python).arg(script).arg(addr).output())
            .await
            .unwrap()
            .expect("run the conformance client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "conformance client failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("conformance: all checks passed"),
        "{stdout}"
    );
}
