//! One set of behaviour tests, run against every store with injected time: the memory store, the
//! SQLite store (a file of its own per test) and the Redis store (a real redis-server, its
//! script told the time) must give the same answers, for every algorithm, at window edges.

mod support;

use std::sync::Arc;
use std::time::Duration;

use floodgate::algorithm::Algorithm;
use floodgate::clock::ManualClock;
use floodgate::store::redis::RedisOptions;
use floodgate::store::sqlite::SqliteOptions;
use floodgate::store::{Check, CounterStore, MemoryStore, RedisStore, SharedState, SqliteStore};
use support::RedisServer;

const MINUTE: u64 = 60_000;
/// Some whole minute, far from the epoch.
const T0: u64 = 29_000_000 * MINUTE;

fn check(key: &str, limit: u64, hits: u64) -> Check {
    Check::fixed_window(key, limit, 60, hits)
}

fn with(algorithm: Algorithm, c: Check) -> Check {
    Check {
        key: format!("{}{}", c.key, algorithm.code()),
        algorithm,
        ..c
    }
}

/// (admitted, remaining per check).
async fn run(store: &(impl CounterStore + SharedState), checks: &[Check]) -> (bool, Vec<u64>) {
    let applied = store.apply(checks).await.unwrap();
    (
        applied.admitted,
        applied.counters.iter().map(|c| c.remaining).collect(),
    )
}

async fn admitted(store: &(impl CounterStore + SharedState), c: &Check, tries: usize) -> usize {
    let mut n = 0;
    for _ in 0..tries {
        if store.apply(std::slice::from_ref(c)).await.unwrap().admitted {
            n += 1;
        }
    }
    n
}

async fn counts_then_denies(store: &(impl CounterStore + SharedState), _: &ManualClock) {
    assert_eq!(run(store, &[check("a", 2, 1)]).await, (true, vec![1]));
    assert_eq!(run(store, &[check("a", 2, 1)]).await, (true, vec![0]));
    assert_eq!(run(store, &[check("a", 2, 1)]).await, (false, vec![0]));
    assert_eq!(
        run(store, &[check("a", 2, 0)]).await,
        (true, vec![0]),
        "peek"
    );
}

async fn all_or_nothing(store: &(impl CounterStore + SharedState), _: &ManualClock) {
    let denied = [check("b", 5, 1), check("c", 0, 1)];
    assert_eq!(run(store, &denied).await, (false, vec![5, 0]));
    assert_eq!(
        run(store, &[check("b", 5, 0)]).await,
        (true, vec![5]),
        "b untouched"
    );
}

async fn shadow_never_denies(store: &(impl CounterStore + SharedState), _: &ManualClock) {
    let shadow = Check {
        shadow: true,
        ..check("d", 0, 1)
    };
    let applied = store.apply(&[check("e", 5, 1), shadow]).await.unwrap();
    assert!(applied.admitted);
    assert!(applied.counters[1].over);
    assert_eq!(applied.counters[0].remaining, 4);
    // Every other algorithm, and a gate, in shadow: over, and the request still admitted.
    store.set_flag("shadowed", 60_000).await.unwrap();
    let shadow = |c: Check| Check { shadow: true, ..c };
    let shadows = [
        shadow(with(Algorithm::SlidingWindow, check("h", 0, 1))),
        shadow(with(Algorithm::TokenBucket { burst: 1 }, check("i", 0, 1))),
        shadow(Check::gate("shadowed".into())),
    ];
    let applied = store.apply(&shadows).await.unwrap();
    assert!(applied.admitted);
    assert!(
        applied.counters.iter().all(|c| c.over),
        "{:?}",
        applied.counters
    );
}

async fn same_key_twice(store: &(impl CounterStore + SharedState), _: &ManualClock) {
    assert_eq!(
        run(store, &[check("f", 3, 1), check("f", 3, 2)]).await,
        (true, vec![2, 0])
    );
    assert_eq!(run(store, &[check("f", 3, 1)]).await, (false, vec![0]));
}

async fn gates(store: &(impl CounterStore + SharedState), clock: &ManualClock) {
    let gate = Check::gate("flag".into());
    assert!(
        store
            .apply(std::slice::from_ref(&gate))
            .await
            .unwrap()
            .admitted
    );
    store.set_flag("flag", 1_500).await.unwrap();
    let applied = store
        .apply(&[check("g", 5, 1), gate.clone()])
        .await
        .unwrap();
    assert!(!applied.admitted);
    assert_eq!(
        run(store, &[check("g", 5, 0)]).await.1,
        vec![5],
        "gated request counted nothing"
    );
    clock.advance(1_600);
    assert!(store.apply(&[gate]).await.unwrap().admitted, "flag expired");
}

async fn fixed_window_edges(store: &(impl CounterStore + SharedState), clock: &ManualClock) {
    clock.set(T0 + MINUTE - 1);
    let c = check("fw", 10, 1);
    assert_eq!(admitted(store, &c, 15).await, 10);
    let applied = store.apply(std::slice::from_ref(&c)).await.unwrap();
    assert_eq!((applied.admitted, applied.counters[0].reset_ms), (false, 1));
    clock.set(T0 + MINUTE);
    assert_eq!(
        admitted(store, &c, 15).await,
        10,
        "a new window: the double burst of fixed windows"
    );
    let five = Check {
        window_secs: 300,
        ..check("five", 3, 1)
    };
    clock.set(T0 + 7 * MINUTE);
    let applied = store.apply(std::slice::from_ref(&five)).await.unwrap();
    assert_eq!(
        applied.counters[0].reset_ms,
        3 * MINUTE,
        "5-minute windows aligned to 5 minutes"
    );
}

async fn sliding_window_edges(store: &(impl CounterStore + SharedState), clock: &ManualClock) {
    let c = with(Algorithm::SlidingWindow, check("sw", 10, 1));
    clock.set(T0 + MINUTE - 1);
    assert_eq!(admitted(store, &c, 15).await, 10);
    clock.set(T0 + MINUTE);
    assert_eq!(admitted(store, &c, 15).await, 0, "no double burst");
    clock.set(T0 + MINUTE + MINUTE / 2);
    assert_eq!(
        admitted(store, &c, 15).await,
        5,
        "half the old window has slid out"
    );
    clock.set(T0 + 2 * MINUTE + MINUTE / 2);
    assert_eq!(admitted(store, &c, 15).await, 8);
    clock.set(T0 + 5 * MINUTE);
    assert_eq!(admitted(store, &c, 15).await, 10);
}

async fn token_bucket_edges(store: &(impl CounterStore + SharedState), clock: &ManualClock) {
    let c = with(Algorithm::TokenBucket { burst: 5 }, check("tb", 60, 1));
    clock.set(T0 + 123);
    assert_eq!(admitted(store, &c, 10).await, 5, "a burst of 5");
    let applied = store.apply(std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(
        (applied.admitted, applied.counters[0].reset_ms),
        (false, 1000)
    );
    clock.advance(999);
    assert_eq!(admitted(store, &c, 1).await, 0);
    clock.advance(1);
    assert_eq!(admitted(store, &c, 3).await, 1, "one token per second");
    clock.advance(MINUTE);
    assert_eq!(admitted(store, &c, 10).await, 5, "refilled");
}

/// A check whose hits are counted even when the request is denied (a usage report).
fn metered(c: Check) -> Check {
    Check {
        count_denied: true,
        ..c
    }
}

/// For every algorithm: a usage report past the limit is counted, so every later check is
/// over until the window moves on (the bucket until its debt is paid); a plain check beside
/// it in the denied request still counts nothing.
async fn denied_hits_count_where_asked(
    store: &(impl CounterStore + SharedState),
    clock: &ManualClock,
) {
    clock.set(T0 + 1_000);
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket { burst: 10 },
    ] {
        let report = |hits| metered(with(algorithm, check("usage", 10, hits)));
        let peek = report(0);
        let beside = with(algorithm, check("beside", 10, 1));
        assert_eq!(
            run(store, &[report(9)]).await,
            (true, vec![1]),
            "{algorithm:?}"
        );
        // 9 + 3 > 10: denied, and counted anyway (remaining 0); the other check is not
        let applied = store.apply(&[report(3), beside.clone()]).await.unwrap();
        assert!(!applied.admitted, "{algorithm:?}");
        assert!(applied.counters[0].over, "{algorithm:?}");
        assert_eq!(
            (applied.counters[0].remaining, applied.counters[1].remaining),
            (0, 10),
            "{algorithm:?}"
        );
        let looked = store.apply(std::slice::from_ref(&peek)).await.unwrap();
        assert!(
            !looked.admitted && looked.counters[0].over,
            "{algorithm:?}: a check after the report is over"
        );
        assert_eq!(
            run(store, &[with(algorithm, check("beside", 10, 0))]).await,
            (true, vec![10]),
            "{algorithm:?}: the plain check of the denied request counted nothing"
        );
        // A plain check of the same counter is denied and counts nothing more.
        let plain = with(algorithm, check("usage", 10, 1));
        assert!(!store.apply(&[plain]).await.unwrap().admitted);
    }
    // Two windows later every counter has room again.
    clock.advance(2 * MINUTE);
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket { burst: 10 },
    ] {
        let peek = metered(with(algorithm, check("usage", 10, 0)));
        assert_eq!(run(store, &[peek]).await, (true, vec![10]), "{algorithm:?}");
    }
}

/// A bucket counted far past its limit owes one window, not its whole report.
async fn bucket_debt_is_bounded(store: &(impl CounterStore + SharedState), clock: &ManualClock) {
    clock.set(T0 + 500);
    let bucket = |hits| {
        metered(with(
            Algorithm::TokenBucket { burst: 10 },
            check("debt", 10, hits),
        ))
    };
    let applied = store.apply(&[bucket(1_000)]).await.unwrap();
    assert!(!applied.admitted && applied.counters[0].over);
    // 10 tokens owed and one more needed: a window and one token's time (6 s)
    let applied = store.apply(&[bucket(1)]).await.unwrap();
    assert_eq!(applied.counters[0].reset_ms, MINUTE + 6_000);
    clock.advance(MINUTE + 6_000);
    assert!(store.apply(&[bucket(1)]).await.unwrap().admitted);
}

/// Quotas deny only together; an admitted request counts every check, the quota over its
/// limit included; a plain check over its limit denies whatever the quotas say.
async fn quotas_deny_only_together(store: &(impl CounterStore + SharedState), _: &ManualClock) {
    let quota = |key: &str, limit, hits| Check {
        quota: true,
        ..check(key, limit, hits)
    };
    let applied = store
        .apply(&[quota("q-full", 0, 1), quota("q-room", 5, 1)])
        .await
        .unwrap();
    assert!(applied.admitted, "one quota has room");
    assert!(applied.counters[0].over);
    assert_eq!(applied.counters[1].remaining, 4);
    let applied = store
        .apply(&[quota("q-full", 0, 1), quota("q-empty", 0, 1)])
        .await
        .unwrap();
    assert!(!applied.admitted, "every quota over");
    let applied = store
        .apply(&[check("plain", 0, 1), quota("q-room", 5, 1)])
        .await
        .unwrap();
    assert!(!applied.admitted, "a plain limit over");
    assert_eq!(
        run(store, &[quota("q-room", 5, 0)]).await,
        (true, vec![4]),
        "denied requests counted nothing"
    );
    let shadow_quota = Check {
        shadow: true,
        ..quota("q-shadow", 0, 1)
    };
    assert!(
        store
            .apply(&[quota("q-full", 0, 1), shadow_quota])
            .await
            .unwrap()
            .admitted,
        "a shadow quota never counts as over"
    );
}

/// A bucket checked at a zero limit (a shadow check, so admitted) keeps what it held: the
/// state a zero limit makes is expired at once, and writing it refilled the bucket in memory
/// and SQLite but not in Redis (found by tests/properties.rs).
async fn a_zero_limit_leaves_the_bucket_as_it_was(
    store: &(impl CounterStore + SharedState),
    clock: &ManualClock,
) {
    let bucket = |limit, hits| {
        with(
            Algorithm::TokenBucket { burst: 2 },
            check("zero", limit, hits),
        )
    };
    clock.set(T0 + 250);
    assert_eq!(run(store, &[bucket(1, 1)]).await, (true, vec![1]));
    let shadow = Check {
        shadow: true,
        ..bucket(0, 1)
    };
    let applied = store.apply(&[shadow]).await.unwrap();
    assert!(applied.admitted && applied.counters[0].over);
    let peek = store.apply(&[bucket(1, 0)]).await.unwrap();
    assert_eq!(
        (peek.counters[0].remaining, peek.counters[0].reset_ms),
        (1, MINUTE),
        "the bucket still holds the first hit"
    );
}

macro_rules! behaviour_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let clock = Arc::new(ManualClock::new(T0));
                    let store = MemoryStore::new(clock.clone(), 1000);
                    super::$name(&store, &clock).await;
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = support::temp_dir("sqlite-behaviour");
                    let clock = Arc::new(ManualClock::new(T0));
                    let options = SqliteOptions { path: dir.path().join("counters.sqlite"), max_keys: 1000 };
                    let store = SqliteStore::open(&options, clock.clone()).unwrap();
                    super::$name(&store, &clock).await;
                }
            )*
        }
        mod redis {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(redis) = RedisServer::start() else { return };
                    let clock = Arc::new(ManualClock::new(T0));
                    let store = RedisStore::new(&RedisOptions { pool_size: 2, timeout: Duration::from_secs(2), clock: Some(clock.clone()), ..RedisOptions::standalone(&redis.url(), "fg:") })
                    .unwrap();
                    super::$name(&store, &clock).await;
                }
            )*
        }
    };
}

behaviour_tests!(
    counts_then_denies,
    all_or_nothing,
    shadow_never_denies,
    same_key_twice,
    gates,
    fixed_window_edges,
    sliding_window_edges,
    token_bucket_edges,
    denied_hits_count_where_asked,
    bucket_debt_is_bounded,
    quotas_deny_only_together,
    a_zero_limit_leaves_the_bucket_as_it_was,
);
