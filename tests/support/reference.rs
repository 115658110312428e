//! Floodgate started as envoyproxy/ratelimit (`/bin/ratelimit` with only the reference's
//! environment), and volumes laid out as the kubelet writes ConfigMaps and Secrets.

use std::path::Path;
use std::process::Command;

use floodgate::pb::RateLimitResponse;
use floodgate::pb::rate_limit_service_client::RateLimitServiceClient;

use super::http::http_full;
use super::process::start_answering;
use super::{ChildGuard, request};

/// A ConfigMap or Secret volume as the kubelet writes it into `dir`: the files in a hidden
/// directory of their own, `..data` a symlink to it (swapped atomically on an update), and a
/// symlink per file through `..data`.
pub fn write_volume(dir: &Path, version: u32, files: &[(&str, &str)]) {
    let data = format!("..2026_12_04_{version}");
    std::fs::create_dir_all(dir.join(&data)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(&data).join(name), text).unwrap();
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
        }
    }
    let next = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&next);
    std::os::unix::fs::symlink(&data, &next).unwrap();
    std::fs::rename(&next, dir.join("..data")).unwrap();
}

/// The value of the series `series` (name and labels, as rendered) in a metrics text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Floodgate as `/bin/ratelimit`: a symlink of that name to the binary, started with nothing
/// but the given environment and the listeners on free loopback ports.
pub struct Ratelimit {
    pub grpc: u16,
    pub http: u16,
    pub debug: u16,
    /// Given as PROMETHEUS_ADDR (served with USE_PROMETHEUS=true only, as in the reference).
    pub metrics: u16,
    _child: ChildGuard,
}

impl Ratelimit {
    /// Starts it under `dir`/bin with `env` and HOST/PORT, GRPC_HOST/GRPC_PORT,
    /// DEBUG_HOST/DEBUG_PORT and PROMETHEUS_ADDR on free ports; returns once /healthcheck says
    /// OK.
    pub async fn start(dir: &Path, env: &[(&str, String)]) -> Ratelimit {
        Ratelimit::start_answering(dir, env, 200).await
    }

    /// As [`Ratelimit::start`], but returns once /healthcheck answers `status`.
    pub async fn start_answering(dir: &Path, env: &[(&str, String)], status: u16) -> Ratelimit {
        let program = dir.join("bin").join("ratelimit");
        if !program.exists() {
            std::fs::create_dir_all(program.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_floodgate"), &program).unwrap();
        }
        let (child, ports) = start_answering(
            |ports| {
                let mut command = Command::new(&program);
                command
                    .env_clear()
                    .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                    .env("HOST", "127.0.0.1")
                    .env("PORT", ports.http.to_string())
                    .env("GRPC_HOST", "127.0.0.1")
                    .env("GRPC_PORT", ports.grpc.to_string())
                    .env("DEBUG_HOST", "127.0.0.1")
                    .env("DEBUG_PORT", ports.debug.to_string())
                    .env("PROMETHEUS_ADDR", format!("127.0.0.1:{}", ports.metrics));
                command
            },
            status,
        )
        .await;
        Ratelimit {
            grpc: ports.grpc,
            http: ports.http,
            debug: ports.debug,
            metrics: ports.metrics,
            _child: child,
        }
    }

    /// The metrics text on PROMETHEUS_ADDR at `path`, and its status.
    pub async fn metrics(&self, path: &str) -> (u16, String) {
        let addr = format!("127.0.0.1:{}", self.metrics).parse().unwrap();
        let (status, _, body) = http_full(addr, "GET", path, &[], "").await;
        (status, body)
    }

    /// A plaintext gRPC client.
    pub async fn client(&self) -> RateLimitServiceClient<tonic::transport::Channel> {
        RateLimitServiceClient::connect(format!("http://127.0.0.1:{}", self.grpc))
            .await
            .unwrap()
    }

    /// ShouldRateLimit for `domain` with one descriptor per entry list, in plaintext.
    pub async fn ask(&self, domain: &str, descriptors: &[&[(&str, &str)]]) -> RateLimitResponse {
        let mut client = self.client().await;
        client
            .should_rate_limit(request(domain, descriptors))
            .await
            .unwrap()
            .into_inner()
    }
}
