//! Limits as the service applies them: units, limits and the rules that carry them.

use std::fmt;
use std::sync::Arc;

use crate::algorithm::Algorithm;
use crate::telemetry::MetricKey;

/// A time unit of a limit. Windows are aligned to whole multiples of the unit since the Unix
/// epoch, and a month and a year are fixed lengths (30 and 365 days), as in envoyproxy/ratelimit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// One second.
    Second,
    /// 60 seconds.
    Minute,
    /// 3,600 seconds.
    Hour,
    /// 86,400 seconds.
    Day,
    /// 7 days.
    Week,
    /// 30 days.
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    /// Every unit, shortest first.
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// Length of one window of this unit, in seconds.
    pub const fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    /// The lowercase name used in configuration files.
    pub const fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// Parses a unit name, in any letter case (the reference accepts `second` and `SECOND`).
    pub fn parse(name: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|unit| unit.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A number of requests allowed per window, and how they are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests allowed in one window; 0 blocks everything.
    pub requests_per_unit: u32,
    /// The unit of the window length.
    pub unit: Unit,
    /// Windows last this many units (`unit_multiplier: 5` with minutes: 5-minute windows).
    pub unit_multiplier: u32,
    /// How requests are counted.
    pub algorithm: Algorithm,
}

impl Limit {
    /// A fixed-window limit of `requests_per_unit` per one `unit` (the reference's kind).
    pub const fn per(requests_per_unit: u32, unit: Unit) -> Limit {
        Limit {
            requests_per_unit,
            unit,
            unit_multiplier: 1,
            algorithm: Algorithm::FixedWindow,
        }
    }

    /// The window length in seconds.
    pub const fn window_secs(&self) -> u64 {
        self.unit.seconds() * self.unit_multiplier as u64
    }
}

/// What a matched descriptor node says about requests that end on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The limit, or `None` for `unlimited: true`.
    pub limit: Option<Limit>,
    /// The limit's `name`, which other rules may replace.
    pub name: Option<String>,
    /// Count and report, but never deny.
    pub shadow_mode: bool,
    /// A quota: over it, the request is denied only when every quota of the request is over.
    pub quota_mode: bool,
    /// Usage-metered: hits are counted even when the request is denied.
    pub count_denied_hits: bool,
    /// Returned in the response's dynamic metadata when the descriptor passes.
    pub metadata: Option<Arc<Metadata>>,
    /// Names of limits this rule removes from the same request.
    pub replaces: Vec<String>,
    /// Report metrics per full descriptor value rather than per key path.
    pub detailed_metric: bool,
    /// Put the matched value into the metric name.
    pub value_to_metric: bool,
    /// Key path of the node ("key_value" levels joined with '.'), the label of its metrics.
    pub metric_key: Arc<MetricKey>,
    /// The matched entry's value is an API key: its user's tier gives the limit.
    pub tiered: bool,
}

/// A descriptor's `metadata`: a JSON-like map, as the response's dynamic metadata carries it.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// A plan (free, pro, ...): its limits per window of `unit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// The tier's name.
    pub name: String,
    /// Window length.
    pub unit: Unit,
    /// The plan's nominal limit (informational; degraded ≤ base ≤ burst).
    pub base: u32,
    /// The limit while the service is NORMAL.
    pub burst: u32,
    /// The limit while the service is DEGRADED.
    pub degraded: u32,
}

impl Tier {
    /// The limit that applies in `mode`.
    pub fn limit(&self, mode: TierMode) -> Limit {
        let requests_per_unit = match mode {
            TierMode::Normal => self.burst,
            TierMode::Degraded => self.degraded,
        };
        Limit::per(requests_per_unit, self.unit)
    }
}

/// Which of its limits every tier applies: set service-wide through the admin API (which
/// calls it the health state), so operators can shed load from all plans at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TierMode {
    /// The service copes: tiers get their burst limits.
    #[default]
    Normal,
    /// The service is under stress: tiers fall back to their degraded limits.
    Degraded,
}

impl TierMode {
    /// The name used in the admin API, logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            TierMode::Normal => "NORMAL",
            TierMode::Degraded => "DEGRADED",
        }
    }
}

/// An API key seeded by the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedKey {
    /// The key itself (a secret: never logged whole).
    pub api_key: String,
    /// Its user.
    pub user: String,
    /// The user's tier.
    pub tier: String,
}

/// What happens to addresses that keep sending unknown API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidKeys {
    /// Invalid attempts allowed per window before the address is blocked.
    pub max_attempts: u32,
    /// The attempt-counting window, in seconds.
    pub window_secs: u64,
    /// How long a blocked address stays blocked, in seconds.
    pub block_for_secs: u64,
}

impl Default for InvalidKeys {
    /// 10 bad keys a minute is more than typos; 5 minutes stops a scan without locking out a
    /// misconfigured client for long.
    fn default() -> InvalidKeys {
        InvalidKeys {
            max_attempts: 10,
            window_secs: 60,
            block_for_secs: 300,
        }
    }
}

/// A secret shortened for messages and logs: enough to recognise, not to use.
pub fn mask_secret(secret: &str) -> String {
    let prefix: String = secret.chars().take(4).collect();
    if secret.chars().count() <= 8 {
        "****".to_owned()
    } else {
        format!("{prefix}…")
    }
}
