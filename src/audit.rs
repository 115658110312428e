//! Audit trail: one structured log line (target `audit`) and one metric per admin change or
//! security event. Secrets (API keys, the admin key) are masked by the callers.

/// Logs and counts a security event (`invalid_api_key`, `address_blocked`, ...).
pub(crate) fn security_event(
    event: &'static str,
    domain: &str,
    target: &str,
    source: Option<&str>,
) {
    tracing::warn!(
        target: "audit",
        event,
        actor = "client",
        domain,
        target,
        source = source.unwrap_or("unknown"),
        "security event"
    );
    metrics::counter!(crate::telemetry::SECURITY_EVENTS, "event" => event).increment(1);
}

/// Logs and counts an admin change.
pub(crate) fn admin_change(action: &'static str, actor: &str, target: &str, source: &str) {
    tracing::info!(target: "audit", event = action, actor, target, source, "admin change");
    metrics::counter!(crate::telemetry::ADMIN_CHANGES, "action" => action).increment(1);
}
