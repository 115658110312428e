//! Protobuf types generated from proto/ (Envoy's RLS v3 API), re-exported under short paths.
//!
//! Generated code stays inside this module with its lint allowances; the rest of the crate uses
//! the re-exports below, and protobuf types go no deeper than `rls/` and `http/`.

#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms
)]
mod generated {
    pub mod envoy {
        pub mod config {
            pub mod core {
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
                    include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.serde.rs"));
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
                include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.serde.rs"));
            }
        }
        pub mod extensions {
            pub mod common {
                pub mod ratelimit {
                    pub mod v3 {
                        include!(concat!(
                            env!("OUT_DIR"),
                            "/envoy.extensions.common.ratelimit.v3.rs"
                        ));
                        include!(concat!(
                            env!("OUT_DIR"),
                            "/envoy.extensions.common.ratelimit.v3.serde.rs"
                        ));
                    }
                }
            }
        }
        pub mod service {
            pub mod discovery {
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
                }
            }
            pub mod ratelimit {
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/envoy.service.ratelimit.v3.rs"));
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/envoy.service.ratelimit.v3.serde.rs"
                    ));
                }
            }
        }
    }
    pub mod google {
        pub mod rpc {
            include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
        }
    }
    pub mod ratelimit {
        pub mod config {
            pub mod ratelimit {
                pub mod v3 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/ratelimit.config.ratelimit.v3.rs"
                    ));
                }
            }
        }
    }
}

/// The xDS messages and client of Floodgate's config source (`xds`), and the resource it
/// subscribes to.
pub mod xds {
    pub use super::generated::envoy::config::core::v3::{Node, node};
    pub use super::generated::envoy::service::discovery::v3::{
        DiscoveryRequest, DiscoveryResponse, aggregated_discovery_service_client,
        aggregated_discovery_service_server,
    };
    pub use super::generated::google::rpc::Status;
    pub use super::generated::ratelimit::config::ratelimit::v3::{
        RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitReplace, RateLimitUnit,
    };
}

pub use generated::envoy::config::core::v3::HeaderValue;
pub use generated::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor,
};
pub use generated::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse, rate_limit_response, rate_limit_service_client,
    rate_limit_service_server,
};
pub use generated::envoy::r#type::v3::RateLimitUnit;
