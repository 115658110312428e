//! Why a configuration was refused: always the file, and where inside it.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// A configuration that cannot be used; the running config, if any, stays in place.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A file or directory could not be read.
    #[error("{path}: cannot read: {source}", path = path.display())]
    Read {
        /// What was being read.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A directory holds no domain files.
    #[error("{path}: no *.yaml or *.yml files in directory", path = path.display())]
    NoFiles {
        /// The directory.
        path: PathBuf,
    },
    /// A config directory nested deeper than the bound.
    #[error("{path}: config directories nested more than {max} deep", path = path.display())]
    TooDeep {
        /// The directory past the bound.
        path: PathBuf,
        /// The bound.
        max: usize,
    },
    /// A config directory with more files than the bound.
    #[error("{path}: more than {max} config files", path = path.display())]
    TooManyFiles {
        /// The directory.
        path: PathBuf,
        /// The bound.
        max: usize,
    },
    /// A file is not a valid domain.
    #[error("{path}: {problem}", path = path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        problem: Problem,
    },
    /// Two files define the same domain.
    #[error("{path}: duplicate domain '{domain}' (already defined in {first})",
        path = path.display(), first = first.display())]
    DuplicateDomain {
        /// The second file.
        path: PathBuf,
        /// The domain name.
        domain: String,
        /// The file that defined it first.
        first: PathBuf,
    },
}

/// What is wrong inside one domain file; `at` is a path like `descriptors[0].descriptors[2]`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Problem {
    /// Not YAML, or not the expected shape (unknown field, wrong type...).
    #[error("{0}")]
    Syntax(String),
    /// The file has no `domain`, or an empty one.
    #[error("missing or empty 'domain'")]
    MissingDomain,
    /// A descriptor without a key.
    #[error("{at}: missing or empty 'key'")]
    MissingKey {
        /// Location.
        at: String,
    },
    /// A unit name that is not second/minute/hour/day/week/month/year.
    #[error(
        "{at}: unknown unit '{unit}' (expected second, minute, hour, day, week, month or year)"
    )]
    UnknownUnit {
        /// Location.
        at: String,
        /// The unit as written.
        unit: String,
    },
    /// A limited rate_limit without a unit.
    #[error("{at}.rate_limit: missing 'unit'")]
    MissingUnit {
        /// Location.
        at: String,
    },
    /// A limited rate_limit without requests_per_unit.
    #[error("{at}.rate_limit: missing 'requests_per_unit' (write 0 to block everything)")]
    MissingRequestsPerUnit {
        /// Location.
        at: String,
    },
    /// `unlimited: true` together with a unit or a count.
    #[error("{at}.rate_limit: 'unlimited: true' cannot also set a unit or an algorithm")]
    UnlimitedWithLimit {
        /// Location.
        at: String,
    },
    /// Two siblings with the same key and value.
    #[error("{at}: duplicate descriptor key '{key}'{value} at the same level",
        value = value.as_deref().map(|v| format!(" value '{v}'")).unwrap_or_default())]
    DuplicateDescriptor {
        /// Location of the second one.
        at: String,
        /// The key.
        key: String,
        /// The value, if any.
        value: Option<String>,
    },
    /// `replaces` names a limit that no rule in the domain carries.
    #[error("{at}.replaces: no limit named '{name}' in this domain")]
    UnknownReplaces {
        /// Location.
        at: String,
        /// The name.
        name: String,
    },
    /// A `replaces` entry without a name.
    #[error("{at}.replaces: every entry needs a non-empty 'name'")]
    EmptyReplacesName {
        /// Location.
        at: String,
    },
    /// `replaces` on a node without a rate limit.
    #[error("{at}: 'replaces' needs a 'rate_limit' on the same descriptor")]
    ReplacesWithoutLimit {
        /// Location.
        at: String,
    },
    /// A limit that names itself in its `replaces`.
    #[error("{at}.replaces: the limit '{name}' cannot replace itself")]
    ReplacesSelf {
        /// Location.
        at: String,
        /// The limit's name.
        name: String,
    },
    /// `replaces` both inside `rate_limit` and beside it.
    #[error(
        "{at}: 'replaces' is given both inside 'rate_limit' and beside it; keep one (inside 'rate_limit' is the reference's place)"
    )]
    ReplacesTwice {
        /// Location.
        at: String,
    },
    /// `count_denied_hits` where nothing is counted.
    #[error(
        "{at}.rate_limit: 'count_denied_hits' needs a limit to count against, not 'unlimited: true'"
    )]
    CountDeniedUnlimited {
        /// Location.
        at: String,
    },
    /// `metadata` that the response's dynamic metadata cannot carry.
    #[error("{at}.metadata: {message}")]
    Metadata {
        /// Location.
        at: String,
        /// What is wrong.
        message: String,
    },
    /// A later file of a merged domain sets what only one file may.
    #[error(
        "'tiers', 'api_keys' and 'invalid_keys' of a merged domain belong in its first file ({first})",
        first = first.display()
    )]
    MergedDomainPlans {
        /// The file that defined the domain first.
        first: std::path::PathBuf,
    },
    /// `share_threshold` on a value without `*`.
    #[error("{at}: 'share_threshold' needs a value containing '*'")]
    ShareThresholdWithoutWildcard {
        /// Location.
        at: String,
    },
    /// A tier is incomplete or inconsistent.
    #[error("{at}: {message}")]
    Tier {
        /// Location, e.g. `tiers.free`.
        at: String,
        /// What is wrong.
        message: String,
    },
    /// A seeded API key is invalid (the key is shown masked).
    #[error("{at}: {message}")]
    ApiKey {
        /// Location, e.g. `api_keys.demo…`.
        at: String,
        /// What is wrong.
        message: String,
    },
    /// A `tiered` descriptor is misused.
    #[error("{at}: {message}")]
    Tiered {
        /// Location.
        at: String,
        /// What is wrong.
        message: String,
    },
    /// The `invalid_keys` block is invalid.
    #[error("invalid_keys: {message}")]
    InvalidKeys {
        /// What is wrong.
        message: String,
    },
    /// A rate_limit's algorithm settings are invalid.
    #[error("{at}: {message}")]
    RateLimit {
        /// Location.
        at: String,
        /// What is wrong.
        message: String,
    },
}
