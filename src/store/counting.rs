//! The counting every store does, over its own reads and writes (pure): look at each check's
//! counter, apply the admission rule, then record all the hits or none. Written once so that
//! every store decides alike.

use smallvec::SmallVec;

use super::{Check, Counted, Counter, Counters, admits};
use crate::algorithm::{Cell, Verdict, evaluate};

/// Per-check scratch of one request, inline up to four checks.
pub(crate) type Few<T> = SmallVec<[T; 4]>;

/// A counter as a store keeps it: its cell and when it may be forgotten (a flag: only when).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredCounter {
    /// The algorithm's state.
    pub(crate) cell: Cell,
    /// Unix ms after which the counter no longer matters.
    pub(crate) expires_ms: u64,
}

/// What each check would do to its counter at `now`, recording nothing. `stored(i)` is what
/// the store holds under check `i`'s key (expired entries are ignored here); a key checked
/// twice sees its first check's hits.
pub(crate) fn look(
    checks: &[Check],
    stored: impl Fn(usize) -> Option<StoredCounter>,
    now: u64,
) -> Few<Verdict> {
    let mut verdicts: Few<Verdict> = Few::with_capacity(checks.len());
    for (i, check) in checks.iter().enumerate() {
        let stored = stored(i).filter(|slot| slot.expires_ms > now);
        if check.gate {
            verdicts.push(Verdict {
                over: stored.is_some(),
                remaining_after: 0,
                remaining_before: 0,
                reset_ms: stored.map_or(0, |slot| slot.expires_ms - now),
                next: Cell::default(),
                expires_ms: 0,
            });
            continue;
        }
        let earlier = (0..i)
            .rev()
            .find(|&j| checks[j].key == check.key && !checks[j].gate);
        let cell = match earlier {
            Some(j) => Some(verdicts[j].next),
            None => stored.map(|slot| slot.cell),
        };
        let window_ms = check.window_secs.saturating_mul(1000);
        verdicts.push(evaluate(
            check.algorithm,
            cell,
            now,
            check.limit,
            window_ms,
            check.hits,
        ));
    }
    verdicts
}

/// Applies the admission rule to `verdicts` (looked at `now`) and hands `write` each verdict
/// to record (all of them when the request is admitted; otherwise only those counting denied
/// hits): the request's answer.
///
/// A state already expired at `now` (a zero limit's bucket, which keeps nothing) is not
/// written: it would read as absent and so erase what the key held, a debt included. The
/// Redis script writes no expired state either.
pub(crate) fn record(
    checks: &[Check],
    verdicts: &[Verdict],
    now: u64,
    mut write: impl FnMut(usize, &Verdict),
) -> Counted {
    let admitted = admits(checks, |i| verdicts[i].over);
    let mut counters = Counters::with_capacity(checks.len());
    for (i, (check, verdict)) in checks.iter().zip(verdicts).enumerate() {
        let recorded = check.records(admitted);
        if recorded && verdict.expires_ms > now {
            write(i, verdict);
        }
        counters.push(Counter {
            over: verdict.over,
            remaining: if recorded {
                verdict.remaining_after
            } else {
                verdict.remaining_before
            },
            reset_ms: verdict.reset_ms,
        });
    }
    Counted { admitted, counters }
}
