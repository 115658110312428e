//! The real `floodgate` binary: check-config, and serve on the example config until SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::http::http;
use support::{ChildGuard, free_port, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_floodgate");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config");

#[test]
fn check_config_accepts_the_examples() {
    let output = Command::new(BIN)
        .args(["check-config", EXAMPLES])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("edge") && stdout.contains("messaging"),
        "{stdout}"
    );
}

#[test]
fn check_config_names_the_file_and_the_problem() {
    let dir = std::env::temp_dir().join(format!("floodgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.yaml");
    std::fs::write(&file, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: lightyear, requests_per_unit: 1 }\n").unwrap();
    let output = Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("broken.yaml") && stderr.contains("unknown unit 'lightyear'"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn serve_answers_then_exits_cleanly_on_sigterm() {
    let (grpc, http_port) = (free_port(), free_port());
    let mut child = ChildGuard(Some(
        Command::new(BIN)
            .args(["serve", "--config", EXAMPLES])
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let addr = format!("127.0.0.1:{http_port}").parse().unwrap();
    wait_for(
        "floodgate /healthcheck",
        Duration::from_secs(20),
        || async { tokio::net::TcpStream::connect(addr).await.is_ok() },
    )
    .await;
    let (status, body) = http(addr, "GET", "/healthcheck", "").await;
    assert_eq!((status, body.as_str()), (200, "OK\n"));
    let body = r#"{"domain":"edge","descriptors":[{"entries":[{"key":"remote_address","value":"192.0.2.1"}]}]}"#;
    let (status, text) = http(addr, "POST", "/json", body).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""limitRemaining":99"#), "{text}");
    let mut child = child.take();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn otlp_export_needs_the_otel_build() {
    // The tests build floodgate without the `otel` feature: asking for export must say so.
    let output = Command::new(BIN)
        .args([
            "serve",
            "--config",
            EXAMPLES,
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .args(["--otlp-endpoint", "http://127.0.0.1:4317"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--features otel"), "{stderr}");
}
