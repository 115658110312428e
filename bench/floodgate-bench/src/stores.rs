//! Everything the `store` and `memory` modes take from Floodgate's store API, in one place: the
//! two stores' constructors, the shape of a check and the one decision call. That API moves with
//! the service; the modes see only these few functions.

use std::sync::Arc;

use floodgate::algorithm::Algorithm;
use floodgate::clock::SystemClock;
use floodgate::query::Entry;
use floodgate::store::redis::RedisOptions;
use floodgate::store::{CounterStore, MemoryStore, RedisStore, StoreError};

pub(crate) use floodgate::store::Check;

/// Window of every check the modes make: an hour, so no counter resets within a run.
const WINDOW_SECS: u64 = 3600;

/// The Redis store at `url` with `pool_size` pooled connections, configured as the server
/// configures it (same script, same pipelining).
pub(crate) fn redis(url: &str, pool_size: u32) -> anyhow::Result<RedisStore> {
    Ok(RedisStore::new(&RedisOptions {
        pool_size,
        ..RedisOptions::standalone(url, "bench-ceiling:")
    })?)
}

/// A memory store on the system clock with room for `max_keys` counters.
pub(crate) fn memory(max_keys: usize) -> MemoryStore {
    MemoryStore::new(Arc::new(SystemClock), max_keys)
}

/// One hit on the fixed-window counter `key`, which admits `limit` per window.
pub(crate) fn check(key: String, limit: u64) -> Check {
    Check::fixed_window(key, limit, WINDOW_SECS, 1)
}

/// The key Floodgate makes for a `remote_address` descriptor of `address` in domain `bench`:
/// keys shaped like the service's, so the memory figures are the service's too.
pub(crate) fn address_key(address: String) -> String {
    let entry = Entry {
        key: "remote_address".into(),
        value: address,
    };
    floodgate::store::counter_key(
        "floodgate:",
        "bench",
        &[entry],
        &[],
        WINDOW_SECS,
        Algorithm::FixedWindow,
    )
}

/// The Redis key of the fixed-window counter of the one-entry descriptor `key`=`value` in
/// `domain`, with windows of `window_secs`, as the server names it (the soak reads these
/// counters to measure what a failover lost).
#[cfg(target_os = "linux")]
pub(crate) fn fixed_window_key(
    prefix: &str,
    domain: &str,
    (key, value): (&str, &str),
    window_secs: u64,
) -> String {
    let entry = Entry {
        key: key.into(),
        value: value.into(),
    };
    floodgate::store::counter_key(
        prefix,
        domain,
        &[entry],
        &[],
        window_secs,
        Algorithm::FixedWindow,
    )
}

/// Applies `checks` as one request's: whether it was admitted.
pub(crate) async fn admitted<S: CounterStore>(
    store: &S,
    checks: &[Check],
) -> Result<bool, StoreError> {
    Ok(store.apply(checks).await?.admitted)
}
