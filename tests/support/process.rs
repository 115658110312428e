//! The real `floodgate` binary as a child process on free loopback ports.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use floodgate::pb::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::Channel;

use super::http::status_of;
use super::{ChildGuard, free_port};

/// A running `floodgate serve`; killed when dropped.
pub struct Floodgate {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub child: ChildGuard,
}

impl Floodgate {
    /// Starts `floodgate serve --config <config> <args...>` and waits until /healthcheck says OK.
    ///
    /// Free ports are found by binding and releasing them, so another test's process may take
    /// one before Floodgate binds it: a Floodgate that exits while starting is started again on
    /// other ports, a few times.
    pub async fn start(config: &str, args: &[&str]) -> Floodgate {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let grpc_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_floodgate"))
                .args(["serve", "--config", config])
                .args(["--grpc-addr", &grpc_addr.to_string()])
                .args(["--http-addr", &http_addr.to_string()])
                .args(args)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn floodgate");
            let mut process = Floodgate {
                grpc_addr,
                http_addr,
                child: ChildGuard(Some(child)),
            };
            match process.wait_healthy().await {
                Ok(()) => return process,
                Err(status) if attempt < ATTEMPTS => {
                    eprintln!("floodgate exited while starting ({status}); trying other ports");
                }
                Err(status) => panic!("floodgate exited early: {status}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Waits until /healthcheck answers 200, or the process exits (its status).
    async fn wait_healthy(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = &mut self.child.0
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(status);
            }
            // Not ready while the port is closed or answers otherwise (it may even be another
            // process's, until Floodgate fails to bind it and exits).
            if status_of(self.http_addr, "/healthcheck").await == Some(200) {
                return Ok(());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "floodgate did not become healthy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A gRPC client.
    pub async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("connect to floodgate")
    }
}
