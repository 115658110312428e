//! Service health as load balancers and Kubernetes probes see it (gRPC health, /healthcheck):
//! serving, the store answering, and a config as the settings ask.

use crate::limiter::Limiter;

/// What the health checks need of the config, besides the store answering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConfigHealth {
    /// Nothing: healthy with or without a config.
    #[default]
    Any,
    /// A config loaded (from xDS: the first one pushed).
    Loaded,
    /// A config with at least one domain loaded (the reference's
    /// HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED).
    WithDomains,
}

impl ConfigHealth {
    /// Whether `limiter`'s config is as this asks.
    pub fn holds(self, limiter: &Limiter) -> bool {
        match self {
            ConfigHealth::Any => true,
            ConfigHealth::Loaded => limiter.config_loaded(),
            ConfigHealth::WithDomains => limiter.config_loaded() && limiter.config().has_domains(),
        }
    }
}
