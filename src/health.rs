//! The service-wide health state that tiered limits follow (pure data; stores keep it).

use serde::{Deserialize, Serialize};

/// NORMAL: tiers get their burst limits. DEGRADED: tiers fall back to their degraded limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HealthStatus {
    /// Healthy: burst limits.
    #[default]
    Normal,
    /// Under stress: degraded limits.
    Degraded,
}

impl HealthStatus {
    /// The name used in the admin API, logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            HealthStatus::Normal => "NORMAL",
            HealthStatus::Degraded => "DEGRADED",
        }
    }
}

/// The health state as recorded in the store, with who set it and why.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HealthRecord {
    /// The state.
    pub status: HealthStatus,
    /// Unix seconds when it was set (0 for the default state).
    pub since: u64,
    /// Unix milliseconds when it reverts to NORMAL, if it has a TTL.
    pub expires_ms: Option<u64>,
    /// Who set it.
    pub updated_by: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

impl HealthRecord {
    /// The state in force at `now_ms`: an expired record has reverted to NORMAL.
    pub fn at(&self, now_ms: u64) -> HealthStatus {
        match self.expires_ms {
            Some(expires) if now_ms >= expires => HealthStatus::Normal,
            _ => self.status,
        }
    }
}
