//! The keys the tiers write, in one place so that decisions and the admin API never build them
//! two ways (pure).

use crate::config::Limit;
use crate::query::Entry;
use crate::store::counter_key;
use crate::store::key::state_key;

/// The counter of `user_id` under the tiered descriptor `entries` (whose last value is the API
/// key, replaced by the user: every key of a user shares it) for `limit`.
pub fn user_counter_key(
    prefix: &str,
    domain: &str,
    entries: &[Entry],
    user_id: &str,
    limit: &Limit,
) -> String {
    let user = user_value(user_id);
    let shared = [(entries.len().saturating_sub(1), user.as_str())];
    counter_key(
        prefix,
        domain,
        entries,
        &shared,
        limit.window_secs(),
        limit.algorithm,
    )
}

/// The value a user's counters are keyed by in place of an API key.
fn user_value(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// Key of the flag that blocks `address` in `domain`.
pub fn block_key(prefix: &str, domain: &str, address: &str) -> String {
    state_key(prefix, "block", domain, address)
}

/// Key of the counter of invalid API keys sent from `address` in `domain`.
pub fn strike_key(prefix: &str, domain: &str, address: &str) -> String {
    state_key(prefix, "strike", domain, address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Unit;

    #[test]
    fn every_key_of_a_user_shares_its_counter() {
        let limit = Limit::per(10, Unit::Minute);
        let entries = |api_key: &str| {
            vec![Entry {
                key: "api_key".into(),
                value: api_key.into(),
            }]
        };
        let one = user_counter_key("p:", "d", &entries("key-1"), "alice", &limit);
        let two = user_counter_key("p:", "d", &entries("key-2"), "alice", &limit);
        let other = user_counter_key("p:", "d", &entries("key-1"), "bob", &limit);
        assert_eq!(one, two);
        assert_ne!(one, other);
        assert!(
            !one.contains("key-1"),
            "the API key is not in the counter key: {one}"
        );
    }
}
