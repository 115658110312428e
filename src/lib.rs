//! Floodgate: a distributed rate limit decision service for Envoy and Istio.
//!
//! # Layout
//! Pure logic, no I/O:
//! - [`config`]: the YAML domains (envoyproxy/ratelimit's format), validated and compiled, and
//!   the tiers' plans with the [`config::TierMode`] that picks their limits.
//! - [`matcher`]: a request descriptor's entries → the configured rule.
//! - [`query`]: a request in the service's own terms.
//! - [`algorithm`]: window arithmetic and the over-limit rule.
//! - [`decision`]: a query → the checks it needs (`plan`) → a decision per descriptor
//!   (`decide`).
//! - [`store::key`]: collision-free counter keys; [`hash`]: the stable hash they and config
//!   versions use; [`breaker`]: the circuit breaker's state machine.
//!
//! I/O at the edges:
//! - [`store`]: three traits by job (counters, shared state, the user registry), the memory,
//!   SQLite and Redis stores, [`store::Backend`] (the one the process runs on), and the
//!   wrappers around the counters ([`store::Guarded`]: the circuit breaker;
//!   [`store::OverLimitCache`]); [`fallback`]: this replica's own counters for when the
//!   shared store cannot answer (`--failure-mode local`).
//! - [`tiers`]: API keys → users → tier limits, the tier mode, invalid-key strikes and blocks,
//!   and every write to the user registry.
//! - [`limiter`]: the decision pipeline (match → resolve keys → plan → apply → decide) over the
//!   live config; gRPC and HTTP share it.
//! - [`rls`]: the gRPC service (wire request → query, decision → wire response, errors → Status).
//! - [`http`]: /healthcheck and /json; [`admin`]: the admin API under /admin, with its lockout
//!   of sources that fail to authenticate; [`health`]: what both health checks ask of the config.
//! - [`audit`]: one log line and one metric per admin change or security event;
//!   [`cache`]: the bounded TTL cache for shared state read on the hot path; [`secrets`]: the
//!   admin key and the Redis passwords, given or read from files that are followed.
//! - [`service`]: `floodgate serve` assembled from the settings (config source, store, limiter,
//!   listeners), the only reader of the command line besides [`settings`] itself.
//! - [`server`]: runs both servers on given listeners until a shutdown future resolves;
//!   [`overload`]: its lock-free limit on calls in flight; [`tls`]: TLS for gRPC and HTTP, its
//!   files reloaded when they change.
//! - [`xds`]: config from an xDS control plane (the ADS client; pushed resources → config).
//! - [`telemetry`]: metric names, the Prometheus recorder, per-descriptor statistics.
//! - [`settings`]: the command line; [`clock`]: the one place that reads time; [`pb`]: the
//!   generated protobuf code.
//! - `fuzzing` (hidden, not API): the entry points of the fuzz targets in `tests/fuzz`.
//!
//! Modules depend downward only: no import cycles (`tests/layout.rs` keeps it so).

pub(crate) mod admin;
pub mod algorithm;
pub(crate) mod audit;
pub mod breaker;
pub(crate) mod cache;
pub mod clock;
pub mod config;
pub mod decision;
pub mod fallback;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod hash;
pub mod health;
pub(crate) mod http;
pub mod limiter;
pub mod matcher;
pub(crate) mod overload;
pub mod pb;
pub mod query;
pub mod rls;
pub mod secrets;
pub mod server;
pub mod service;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod tiers;
pub mod tls;
pub mod xds;
