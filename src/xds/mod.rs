//! Config from an xDS control plane (Envoy Gateway): the state-of-the-world ADS client that
//! subscribes to `RateLimitConfig` resources, and their translation into config.

pub mod resource;
