//! A no-op Envoy RLS v3 server: answers OK to every ShouldRateLimit, doing nothing else. It
//! measures the ceiling of the gRPC stack itself (tonic, HTTP/2, protobuf) for the benchmarks:
//!   cargo run --release --example noop_rls -- 127.0.0.1:18081

use floodgate::pb::rate_limit_response::{Code, DescriptorStatus};
use floodgate::pb::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use floodgate::pb::{RateLimitRequest, RateLimitResponse};
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
struct Noop;

#[tonic::async_trait]
impl RateLimitService for Noop {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let statuses = request
            .get_ref()
            .descriptors
            .iter()
            .map(|_| DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses,
            ..Default::default()
        }))
    }
}

/// The same allocator as Floodgate's, so that the ceiling is that of the same stack.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".into())
        .parse()?;
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(Noop))
        .serve(addr)
        .await?;
    Ok(())
}
