//! Limits as the service applies them: units, limits and the rules that carry them.

use std::fmt;

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

/// A number of requests allowed per window of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests allowed in one window; 0 blocks everything.
    pub requests_per_unit: u32,
    /// The window length.
    pub unit: Unit,
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
    /// Names of limits this rule removes from the same request.
    pub replaces: Vec<String>,
    /// Report metrics per full descriptor value rather than per key path.
    pub detailed_metric: bool,
    /// Put the matched value into the metric name.
    pub value_to_metric: bool,
    /// Human-readable key path of the node ("key.value" pairs joined with '.'), for metrics.
    pub metric_key: String,
}
