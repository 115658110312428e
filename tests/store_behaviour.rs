//! One set of behaviour tests, run against every store: the memory store and the Redis store
//! (a real redis-server) must give the same answers.

mod support;

use std::sync::Arc;
use std::time::Duration;

use floodgate::clock::SystemClock;
use floodgate::store::redis::RedisOptions;
use floodgate::store::{Check, MemoryStore, RedisStore, Store};
use support::RedisServer;

fn check(key: &str, limit: u64, hits: u64) -> Check {
    Check {
        key: key.into(),
        limit,
        window_secs: 31_536_000, // a year: no window edge falls inside a test run
        hits,
        shadow: false,
        gate: false,
    }
}

async fn counts(store: &impl Store, checks: &[Check]) -> (bool, Vec<u64>) {
    let applied = store.apply(checks).await.unwrap();
    (
        applied.admitted,
        applied.counters.iter().map(|c| c.count).collect(),
    )
}

async fn counts_then_denies(store: &impl Store) {
    assert_eq!(counts(store, &[check("a", 2, 1)]).await, (true, vec![1]));
    assert_eq!(counts(store, &[check("a", 2, 1)]).await, (true, vec![2]));
    assert_eq!(counts(store, &[check("a", 2, 1)]).await, (false, vec![3]));
    assert_eq!(
        counts(store, &[check("a", 2, 0)]).await,
        (true, vec![2]),
        "denied hit not kept"
    );
}

async fn all_or_nothing(store: &impl Store) {
    let denied = [check("b", 5, 1), check("c", 0, 1)];
    assert_eq!(counts(store, &denied).await, (false, vec![1, 1]));
    assert_eq!(counts(store, &[check("b", 5, 0)]).await, (true, vec![0]));
}

async fn shadow_never_denies(store: &impl Store) {
    let shadow = Check {
        shadow: true,
        ..check("d", 0, 1)
    };
    assert_eq!(
        counts(store, &[check("e", 5, 1), shadow.clone()]).await,
        (true, vec![1, 1])
    );
    assert_eq!(counts(store, &[shadow]).await, (true, vec![2]));
}

async fn same_key_twice(store: &impl Store) {
    assert_eq!(
        counts(store, &[check("f", 3, 1), check("f", 3, 2)]).await,
        (true, vec![1, 3])
    );
    assert_eq!(counts(store, &[check("f", 3, 1)]).await, (false, vec![4]));
}

async fn hits_at_once(store: &impl Store) {
    assert_eq!(counts(store, &[check("g", 10, 10)]).await, (true, vec![10]));
    assert_eq!(counts(store, &[check("g", 10, 1)]).await, (false, vec![11]));
}

async fn reset_within_window(store: &impl Store) {
    let applied = store.apply(&[check("h", 1, 1)]).await.unwrap();
    let reset = applied.counters[0].reset_ms;
    assert!((1..=31_536_000_000).contains(&reset), "reset {reset}");
}

async fn all(store: &impl Store) {
    counts_then_denies(store).await;
    all_or_nothing(store).await;
    shadow_never_denies(store).await;
    same_key_twice(store).await;
    hits_at_once(store).await;
    reset_within_window(store).await;
}

#[tokio::test]
async fn memory_store() {
    all(&MemoryStore::new(Arc::new(SystemClock), 1000)).await;
}

#[tokio::test]
async fn redis_store() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = RedisStore::new(&RedisOptions {
        url: redis.url(),
        pool_size: 2,
        timeout: Duration::from_secs(2),
        key_prefix: "fg:".into(),
    })
    .unwrap();
    all(&store).await;
}
