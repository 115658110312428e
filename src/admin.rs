//! The admin API under `/admin` (on the HTTP listener, or on its own with `--admin-addr`):
//! health state, users and API keys.
//!
//! Closed unless an admin key is set (403 for every call); with a key, each call must carry it
//! in `X-Admin-Key` (compared in constant time) or gets 401, and a source address that fails
//! too often is locked out for a while ([`lockout`]: 429 with `Retry-After`). The key may come
//! from a file, read again when it changes ([`Secret`]). Bodies are JSON; a refused call
//! answers 400/404/409 with `{"error": ..., "field": ...}` and changes nothing. Every change,
//! every refused key and every lockout is audited.

mod lockout;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::audit;
use crate::config::{Domain, TierMode, mask_secret};
use crate::limiter::Limiter;
use crate::secrets::Secret;
use crate::store::{RegistryError, TierModeRecord, UserRecord};

pub(crate) use lockout::{Lockout, Policy as LockoutPolicy};

/// Header carrying the admin key.
pub(crate) const ADMIN_KEY_HEADER: &str = "x-admin-key";
/// Optional header naming who makes a change, for the audit trail.
pub(crate) const ACTOR_HEADER: &str = "x-admin-actor";
/// Longest id, API key, tier name, actor or reason accepted.
pub(crate) const MAX_FIELD_LEN: usize = 256;
/// Longest health-state TTL: 30 days.
pub(crate) const MAX_TTL_SECONDS: u64 = 30 * 86_400;
/// Users per page, by default and at most.
pub(crate) const PAGE_SIZE: (usize, usize) = (50, 500);

/// What the admin handlers share.
#[derive(Debug)]
pub(crate) struct AdminState {
    /// The limiter whose tiers (users, keys, the tier mode) the API reads and changes.
    pub limiter: Arc<Limiter>,
    /// The admin key; `None` closes the API.
    pub admin_key: Option<Secret>,
    /// Failed authentications per source address.
    pub lockout: Lockout,
}

impl AdminState {
    /// The state of an API on `limiter` opened by `admin_key`, with the default lockout policy.
    pub(crate) fn new(limiter: Arc<Limiter>, admin_key: Option<Secret>) -> AdminState {
        AdminState {
            limiter,
            admin_key,
            lockout: Lockout::new(LockoutPolicy::default()),
        }
    }
}

/// The `/admin` routes.
pub(crate) fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/admin/health", get(get_health).post(post_health))
        .route("/admin/users", get(list_users).post(create_user))
        .route("/admin/users/{user_id}", get(get_user))
        .route("/admin/users/{user_id}/keys", post(add_key))
        .route("/admin/users/{user_id}/keys/{api_key}", delete(revoke_key))
        .route("/admin/users/{user_id}/tier", put(set_tier))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// A refused call: status, message and the field at fault.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
    field: Option<&'static str>,
}

impl Refusal {
    fn bad(field: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field),
        }
    }

    fn status(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            field: None,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = match self.field {
            Some(field) => json!({ "error": self.message, "field": field }),
            None => json!({ "error": self.message }),
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<RegistryError> for Refusal {
    fn from(e: RegistryError) -> Refusal {
        let status = match &e {
            RegistryError::UserExists(_) | RegistryError::KeyTaken(_) => StatusCode::CONFLICT,
            RegistryError::UnknownUser(_) | RegistryError::UnknownKey(_) => StatusCode::NOT_FOUND,
            RegistryError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refusal::status(status, e.to_string())
    }
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Refusal {
        Refusal::status(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

type Reply = Result<Response, Refusal>;

/// Byte-for-byte equality whose time does not depend on where the inputs differ. Kept rather
/// than `subtle`'s slice `ct_eq`, which returns at once when the lengths differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// Lets a call through when it carries the admin key and its source is not locked out.
async fn authenticate(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.admin_key else {
        return Refusal::status(
            StatusCode::FORBIDDEN,
            "the admin API is disabled: start Floodgate with --admin-key-file (or --admin-key)",
        )
        .into_response();
    };
    let (ip, now) = (peer.ip(), state.limiter.tiers().now_ms());
    if let Err(seconds) = state.lockout.check(ip, now) {
        return locked_out(seconds);
    }
    let given = request
        .headers()
        .get(ADMIN_KEY_HEADER)
        .map(|v| v.as_bytes());
    if given.is_some_and(|given| constant_time_eq(given, expected.current().as_bytes())) {
        state.lockout.succeeded(ip);
        return next.run(request).await;
    }
    let (path, source) = (request.uri().path(), ip.to_string());
    audit::security_event("admin_auth_failed", "-", path, Some(&source));
    match state.lockout.failed(ip, now) {
        Some(seconds) => {
            audit::security_event("admin_auth_locked_out", "-", path, Some(&source));
            locked_out(seconds)
        }
        None => Refusal::status(StatusCode::UNAUTHORIZED, "missing or wrong X-Admin-Key")
            .into_response(),
    }
}

/// 429 for a source locked out after too many failed authentications, for `seconds` more.
fn locked_out(seconds: u64) -> Response {
    let refusal = Refusal::status(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed admin authentications from this address: retry in {seconds} s"),
    );
    let retry_after = [(axum::http::header::RETRY_AFTER, seconds.to_string())];
    (retry_after, refusal).into_response()
}

/// Who made a change and from where, for the audit trail.
fn actor(headers: &HeaderMap, peer: SocketAddr) -> (String, String) {
    let actor = headers
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_FIELD_LEN)
        .unwrap_or("admin")
        .to_owned();
    (actor, peer.ip().to_string())
}

/// After a registry change: writes the audit record.
fn record_change(headers: &HeaderMap, peer: SocketAddr, action: &'static str, target: &str) {
    let (actor, source) = actor(headers, peer);
    audit::admin_change(action, &actor, target, &source);
}

/// Reads a JSON object body into `T`; a refusal names the field at fault, or "body" for the
/// body as a whole (not JSON, not an object, a field not among `T`'s).
fn parse_body<T: DeserializeOwned>(bytes: &Bytes, fields: &[&'static str]) -> Result<T, Refusal> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Refusal::bad("body", format!("invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(Refusal::bad("body", "expected a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let segment = e.path().iter().next().map(ToString::to_string);
        match fields.iter().find(|f| segment.as_deref() == Some(**f)) {
            Some(field) => Refusal::bad(field, format!("'{field}': {}", e.inner())),
            None => Refusal::bad("body", e.inner().to_string()),
        }
    })
}

/// A text field: absent (or null), or 1 to [`MAX_FIELD_LEN`] bytes.
fn text(field: &'static str, value: Option<String>) -> Result<Option<String>, Refusal> {
    match value {
        Some(s) if s.is_empty() => Err(Refusal::bad(field, format!("'{field}' must not be empty"))),
        Some(s) if s.len() > MAX_FIELD_LEN => Err(Refusal::bad(
            field,
            format!("'{field}' is longer than {MAX_FIELD_LEN} bytes"),
        )),
        value => Ok(value),
    }
}

/// A text field that must be there.
fn required(field: &'static str, value: Option<String>) -> Result<String, Refusal> {
    text(field, value)?.ok_or_else(|| Refusal::bad(field, format!("missing '{field}'")))
}

/// `POST /admin/health`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthChange {
    status: Option<String>,
    ttl_seconds: Option<u64>,
    updated_by: Option<String>,
    reason: Option<String>,
}

impl HealthChange {
    const FIELDS: &[&str] = &["status", "ttl_seconds", "updated_by", "reason"];
}

/// `POST /admin/users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    user_id: Option<String>,
    tier: Option<String>,
    api_keys: Option<Vec<String>>,
    domain: Option<String>,
}

impl NewUser {
    const FIELDS: &[&str] = &["user_id", "tier", "api_keys", "domain"];
}

/// `POST /admin/users/{id}/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    api_key: Option<String>,
}

/// `PUT /admin/users/{id}/tier`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTier {
    tier: Option<String>,
}

fn check_path_part(field: &'static str, value: &str) -> Result<(), Refusal> {
    if value.is_empty() || value.len() > MAX_FIELD_LEN {
        return Err(Refusal::bad(
            field,
            format!("'{field}' must be 1 to {MAX_FIELD_LEN} bytes"),
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct DomainParam {
    domain: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PageParams {
    domain: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// The tiered domain a call is about: `?domain=`, or the only domain that has tiers.
fn tiered_domain<'c>(
    config: &'c crate::config::Config,
    wanted: Option<&str>,
) -> Result<&'c Domain, Refusal> {
    let tiered: Vec<&Domain> = config
        .domain_names()
        .into_iter()
        .filter_map(|name| config.domain(name))
        .filter(|d| !d.tiers().is_empty())
        .collect();
    match wanted {
        Some(name) => tiered
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| Refusal::bad("domain", format!("no domain '{name}' with tiers"))),
        None => match tiered.as_slice() {
            [only] => Ok(only),
            [] => Err(Refusal::bad("domain", "no domain defines tiers")),
            many => Err(Refusal::bad(
                "domain",
                format!(
                    "several domains have tiers, add ?domain= (one of: {})",
                    many.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
                ),
            )),
        },
    }
}

fn check_tier(domain: &Domain, tier: &str) -> Result<(), Refusal> {
    if domain.tier(tier).is_none() {
        let known: Vec<&str> = domain.tiers().iter().map(|t| t.name.as_str()).collect();
        return Err(Refusal::bad(
            "tier",
            format!("unknown tier '{tier}' (tiers: {})", known.join(", ")),
        ));
    }
    Ok(())
}

async fn get_health(State(state): State<Arc<AdminState>>) -> Reply {
    let limiter = &state.limiter;
    let tiers = limiter.tiers();
    let (record, store_status) = match tiers.stored_mode().await {
        Ok(record) => (record.unwrap_or_default(), json!({ "reachable": true })),
        Err(e) => (
            tiers.mode_record(),
            json!({ "reachable": false, "error": e.to_string() }),
        ),
    };
    let now = tiers.now_ms();
    let status = record.at(now);
    let ttl_seconds = record
        .expires_ms
        .filter(|_| status == record.mode)
        .map(|expires| expires.saturating_sub(now).div_ceil(1000));
    let config = limiter.config();
    Ok(axum::Json(json!({
        "status": status.name(),
        "since": record.since,
        "ttl_seconds": ttl_seconds,
        "updated_by": record.updated_by,
        "reason": record.reason,
        "components": {
            "store": store_status,
            "config_version": config.version(),
            "domains": config.domain_names(),
        },
    }))
    .into_response())
}

async fn post_health(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Reply {
    let body: HealthChange = parse_body(&bytes, HealthChange::FIELDS)?;
    let status = match required("status", body.status)?
        .to_ascii_uppercase()
        .as_str()
    {
        "NORMAL" => TierMode::Normal,
        "DEGRADED" => TierMode::Degraded,
        other => {
            return Err(Refusal::bad(
                "status",
                format!("'status' must be NORMAL or DEGRADED, not '{other}'"),
            ));
        }
    };
    let ttl_seconds = body.ttl_seconds;
    if let Some(ttl) = ttl_seconds
        && !(1..=MAX_TTL_SECONDS).contains(&ttl)
    {
        return Err(Refusal::bad(
            "ttl_seconds",
            format!("'ttl_seconds' must be 1 to {MAX_TTL_SECONDS}"),
        ));
    }
    let (actor, source) = actor(&headers, peer);
    let updated_by = text("updated_by", body.updated_by)?.unwrap_or_else(|| actor.clone());
    let reason = text("reason", body.reason)?;
    let tiers = state.limiter.tiers();
    let now = tiers.now_ms();
    let record = TierModeRecord {
        mode: status,
        since: now / 1000,
        expires_ms: ttl_seconds.map(|ttl| now + ttl * 1000),
        updated_by: Some(updated_by.clone()),
        reason,
    };
    tiers.set_mode(record).await?;
    audit::admin_change("set_health", &updated_by, status.name(), &source);
    get_health(State(state)).await
}

async fn list_users(
    State(state): State<Arc<AdminState>>,
    Query(params): Query<PageParams>,
) -> Reply {
    let config = state.limiter.config();
    let domain = tiered_domain(&config, params.domain.as_deref())?;
    let limit = params.limit.unwrap_or(PAGE_SIZE.0);
    if !(1..=PAGE_SIZE.1).contains(&limit) {
        return Err(Refusal::bad(
            "limit",
            format!("'limit' must be 1 to {}", PAGE_SIZE.1),
        ));
    }
    let after = params.after.unwrap_or_default();
    let users = state
        .limiter
        .tiers()
        .users(domain.name(), &after, limit)
        .await?;
    let next = (users.len() == limit)
        .then(|| users.last().map(|u| u.user_id.clone()))
        .flatten();
    Ok(
        axum::Json(json!({ "domain": domain.name(), "users": users, "next": next }))
            .into_response(),
    )
}

async fn get_user(
    State(state): State<Arc<AdminState>>,
    Path(user_id): Path<String>,
    Query(params): Query<DomainParam>,
) -> Reply {
    let config = state.limiter.config();
    let domain = tiered_domain(&config, params.domain.as_deref())?;
    let user = state
        .limiter
        .tiers()
        .user(domain.name(), &user_id)
        .await?
        .ok_or_else(|| {
            Refusal::status(StatusCode::NOT_FOUND, format!("unknown user '{user_id}'"))
        })?;
    let usage = usage(&state.limiter, domain, &user).await?;
    Ok(axum::Json(json!({
        "domain": domain.name(),
        "user_id": user.user_id,
        "tier": user.tier,
        "api_keys": user.api_keys,
        "usage": usage,
    }))
    .into_response())
}

/// The user's counter under each top-level tiered descriptor, read without counting.
async fn usage(limiter: &Limiter, domain: &Domain, user: &UserRecord) -> Result<Value, Refusal> {
    if domain.tier(&user.tier).is_none() {
        return Ok(Value::Null);
    }
    let mut usage = Map::new();
    for counter in limiter.tiers().usage(domain, user).await? {
        usage.insert(
            counter.key,
            json!({
                "used": counter.used,
                "limit": counter.limit,
                "remaining": counter.remaining,
                "unit": counter.unit.name(),
                "reset_seconds": counter.reset_seconds,
                "health": counter.mode.name(),
            }),
        );
    }
    Ok(Value::Object(usage))
}

async fn create_user(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<DomainParam>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Reply {
    let body: NewUser = parse_body(&bytes, NewUser::FIELDS)?;
    let wanted = text("domain", body.domain)?.or(params.domain);
    let config = state.limiter.config();
    let domain = tiered_domain(&config, wanted.as_deref())?;
    let user_id = required("user_id", body.user_id)?;
    let tier = required("tier", body.tier)?;
    check_tier(domain, &tier)?;
    let mut api_keys = body.api_keys.unwrap_or_default();
    if api_keys
        .iter()
        .any(|k| k.is_empty() || k.len() > MAX_FIELD_LEN)
    {
        return Err(Refusal::bad(
            "api_keys",
            format!("'api_keys' must hold non-empty strings of at most {MAX_FIELD_LEN} bytes"),
        ));
    }
    api_keys.sort();
    if api_keys.windows(2).any(|w| w[0] == w[1]) {
        return Err(Refusal::bad("api_keys", "'api_keys' lists a key twice"));
    }
    let user = UserRecord {
        user_id,
        tier,
        api_keys,
    };
    state
        .limiter
        .tiers()
        .create_user(domain.name(), &user)
        .await?;
    record_change(&headers, peer, "create_user", &user.user_id);
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "domain": domain.name(),
            "user_id": user.user_id,
            "tier": user.tier,
            "api_keys": user.api_keys,
        })),
    )
        .into_response())
}

async fn add_key(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user_id): Path<String>,
    Query(params): Query<DomainParam>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Reply {
    check_path_part("user_id", &user_id)?;
    let body: NewKey = parse_body(&bytes, &["api_key"])?;
    let api_key = required("api_key", body.api_key)?;
    let config = state.limiter.config();
    let domain = tiered_domain(&config, params.domain.as_deref())?;
    state
        .limiter
        .tiers()
        .add_key(domain.name(), &user_id, &api_key)
        .await?;
    record_change(
        &headers,
        peer,
        "add_api_key",
        &format!("{user_id}/{}", mask_secret(&api_key)),
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "user_id": user_id, "api_key": api_key })),
    )
        .into_response())
}

async fn revoke_key(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((user_id, api_key)): Path<(String, String)>,
    Query(params): Query<DomainParam>,
    headers: HeaderMap,
) -> Reply {
    check_path_part("user_id", &user_id)?;
    check_path_part("api_key", &api_key)?;
    let config = state.limiter.config();
    let domain = tiered_domain(&config, params.domain.as_deref())?;
    state
        .limiter
        .tiers()
        .revoke_key(domain.name(), &user_id, &api_key)
        .await?;
    let masked = mask_secret(&api_key);
    record_change(
        &headers,
        peer,
        "revoke_api_key",
        &format!("{user_id}/{masked}"),
    );
    Ok(axum::Json(json!({ "user_id": user_id, "revoked": masked })).into_response())
}

async fn set_tier(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user_id): Path<String>,
    Query(params): Query<DomainParam>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Reply {
    check_path_part("user_id", &user_id)?;
    let body: NewTier = parse_body(&bytes, &["tier"])?;
    let tier = required("tier", body.tier)?;
    let config = state.limiter.config();
    let domain = tiered_domain(&config, params.domain.as_deref())?;
    check_tier(domain, &tier)?;
    state
        .limiter
        .tiers()
        .set_tier(domain.name(), &user_id, &tier)
        .await?;
    record_change(&headers, peer, "set_tier", &format!("{user_id} -> {tier}"));
    Ok(axum::Json(json!({ "user_id": user_id, "tier": tier })).into_response())
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
