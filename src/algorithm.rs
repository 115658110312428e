//! The rate limit algorithms as pure functions of (stored state, now, hits).
//!
//! Both stores run exactly these rules: the memory store calls [`evaluate`]; the Redis store's
//! Lua script (`store/redis/decide.lua`) is a line-by-line transcription, and the behaviour
//! tests hold both to the same answers at window edges with injected time.
//!
//! - **Fixed window** (the reference's): windows aligned to whole multiples of their length
//!   since the Unix epoch; exact counts, but a client can spend a full limit at the end of one
//!   window and another at the start of the next (up to twice the limit in a short span).
//! - **Sliding window**: the current window's count plus the previous window's, weighted by how
//!   much of the previous window still lies inside the last `window` milliseconds. No double
//!   burst at edges; exact when the previous window's requests were spread evenly, otherwise
//!   off by at most the previous window's count times the unevenness.
//! - **Token bucket** (GCRA): a bucket of `burst` tokens refilled at `limit` per window, kept as
//!   one "theoretical arrival time". Exact to the microsecond; smooth, with bursts of `burst`.

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Aligned fixed windows.
    #[default]
    FixedWindow,
    /// Weighted sliding window.
    SlidingWindow,
    /// GCRA token bucket holding at most `burst` requests.
    TokenBucket {
        /// Requests that may arrive at once from a full bucket.
        burst: u32,
    },
}

impl Algorithm {
    /// The configuration name.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::TokenBucket { .. } => "token_bucket",
        }
    }

    /// The code the store script dispatches on, and the suffix of counter keys (so that a
    /// change of algorithm never reads another algorithm's state).
    pub const fn code(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "f",
            Algorithm::SlidingWindow => "s",
            Algorithm::TokenBucket { .. } => "t",
        }
    }
}

/// A counter's stored state: the meaning of the fields depends on the algorithm.
/// Fixed window: (window start ms, count, 0). Sliding window: (window start ms, count in that
/// window, count in the window before). Token bucket: (theoretical arrival time µs, 0, 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cell(pub u64, pub u64, pub u64);

/// What one check finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// This request's hits would take the counter over its limit.
    pub over: bool,
    /// Requests left if this request's hits are recorded (0 when over).
    pub remaining_after: u64,
    /// Requests left if they are not (the request is denied elsewhere, or only looks).
    pub remaining_before: u64,
    /// Milliseconds until the window resets (token bucket: until the bucket is full again, or
    /// when over, until this request would fit).
    pub reset_ms: u64,
    /// The state to store if the hits are recorded.
    pub next: Cell,
    /// When that state may be forgotten (Unix ms).
    pub expires_ms: u64,
}

/// Evaluates `hits` more requests against a counter in `cell` at `now_ms`, for `limit` requests
/// per `window_ms`.
pub fn evaluate(
    algorithm: Algorithm,
    cell: Option<Cell>,
    now_ms: u64,
    limit: u64,
    window_ms: u64,
    hits: u64,
) -> Verdict {
    let window_ms = window_ms.max(1);
    match algorithm {
        Algorithm::FixedWindow => fixed_window(cell, now_ms, limit, window_ms, hits),
        Algorithm::SlidingWindow => sliding_window(cell, now_ms, limit, window_ms, hits),
        Algorithm::TokenBucket { burst } => {
            token_bucket(cell, now_ms, limit, u64::from(burst), window_ms, hits)
        }
    }
}

fn fixed_window(cell: Option<Cell>, now: u64, limit: u64, window: u64, hits: u64) -> Verdict {
    let start = now - now % window;
    let count = cell.filter(|c| c.0 == start).map_or(0, |c| c.1);
    let after = count.saturating_add(hits);
    let over = after > limit;
    Verdict {
        over,
        remaining_after: if over { 0 } else { limit - after },
        remaining_before: limit.saturating_sub(count),
        reset_ms: start + window - now,
        next: Cell(start, after, 0),
        expires_ms: start + window,
    }
}

fn sliding_window(cell: Option<Cell>, now: u64, limit: u64, window: u64, hits: u64) -> Verdict {
    let start = now - now % window;
    let (current, previous) = match cell {
        Some(Cell(s, count, prev)) if s == start => (count, prev),
        Some(Cell(s, count, _)) if s + window == start => (0, count),
        _ => (0, 0),
    };
    // The share of the previous window still inside the sliding window, in integer math.
    let elapsed = now - start;
    let weighted = previous.saturating_mul(window - elapsed) / window;
    let estimate = weighted.saturating_add(current);
    let after = estimate.saturating_add(hits);
    let over = after > limit;
    Verdict {
        over,
        remaining_after: if over { 0 } else { limit - after },
        remaining_before: limit.saturating_sub(estimate),
        reset_ms: start + window - now,
        next: Cell(start, current.saturating_add(hits), previous),
        // The count still weighs on the next window.
        expires_ms: start + 2 * window,
    }
}

fn token_bucket(
    cell: Option<Cell>,
    now: u64,
    limit: u64,
    burst: u64,
    window: u64,
    hits: u64,
) -> Verdict {
    let now_us = now.saturating_mul(1000);
    if limit == 0 || burst == 0 {
        // Nothing ever refills: every hit is over.
        return Verdict {
            over: hits > 0,
            remaining_after: 0,
            remaining_before: 0,
            reset_ms: window,
            next: Cell(now_us, 0, 0),
            expires_ms: now,
        };
    }
    // Emission interval: the time one request's token takes to come back.
    let interval = (window.saturating_mul(1000) / limit).max(1);
    let tolerance = burst.saturating_mul(interval);
    let tat = cell.map_or(now_us, |c| c.0).max(now_us);
    let new_tat = tat.saturating_add(hits.saturating_mul(interval));
    let over = new_tat - now_us > tolerance;
    // Recorded past its limit (a shadow bucket, or one that counts denied hits), the bucket
    // owes at most one window's worth: whoever keeps sending stays denied, and is let in again
    // at most a window after stopping.
    let stored_tat = new_tat.min(now_us + tolerance + window.saturating_mul(1000));
    let left = |t: u64| (tolerance.saturating_sub(t - now_us)) / interval;
    Verdict {
        over,
        remaining_after: if over { 0 } else { left(new_tat) },
        remaining_before: left(tat),
        reset_ms: if over {
            (new_tat - now_us - tolerance).div_ceil(1000)
        } else {
            (new_tat - now_us).div_ceil(1000)
        },
        next: Cell(stored_tat, 0, 0),
        expires_ms: stored_tat.div_ceil(1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    /// Runs `hits` at `now` and, when admitted, stores the state, like a store would.
    fn hit(alg: Algorithm, cell: &mut Option<Cell>, now: u64, limit: u64, window: u64) -> Verdict {
        let v = evaluate(alg, *cell, now, limit, window, 1);
        if !v.over {
            *cell = Some(v.next);
        }
        v
    }

    fn admitted(
        alg: Algorithm,
        cell: &mut Option<Cell>,
        now: u64,
        limit: u64,
        window: u64,
        tries: u64,
    ) -> u64 {
        (0..tries)
            .filter(|_| !hit(alg, cell, now, limit, window).over)
            .count() as u64
    }

    #[test]
    fn fixed_window_edges() {
        let alg = Algorithm::FixedWindow;
        let mut cell = None;
        // the last millisecond of a window, then the first of the next: a double burst
        assert_eq!(admitted(alg, &mut cell, 5 * MINUTE - 1, 10, MINUTE, 15), 10);
        let v = evaluate(alg, cell, 5 * MINUTE - 1, 10, MINUTE, 1);
        assert_eq!((v.over, v.reset_ms, v.remaining_before), (true, 1, 0));
        assert_eq!(admitted(alg, &mut cell, 5 * MINUTE, 10, MINUTE, 15), 10);
        let v = evaluate(alg, cell, 5 * MINUTE, 10, MINUTE, 0);
        assert_eq!((v.reset_ms, v.remaining_after), (MINUTE, 0));
    }

    #[test]
    fn windows_of_any_length_align_to_their_length() {
        let five = 5 * MINUTE;
        let v = evaluate(Algorithm::FixedWindow, None, 7 * MINUTE, 3, five, 1);
        assert_eq!(v.reset_ms, 3 * MINUTE);
        assert_eq!(v.next.0, five);
    }

    #[test]
    fn sliding_window_has_no_double_burst() {
        let alg = Algorithm::SlidingWindow;
        let mut cell = None;
        assert_eq!(admitted(alg, &mut cell, 5 * MINUTE - 1, 10, MINUTE, 15), 10);
        // just after the edge, the previous window still weighs almost fully
        assert_eq!(admitted(alg, &mut cell, 5 * MINUTE, 10, MINUTE, 15), 0);
        // half way through, half of it has slid out
        assert_eq!(
            admitted(alg, &mut cell, 5 * MINUTE + MINUTE / 2, 10, MINUTE, 15),
            5
        );
        // a whole window later the old count is gone, the newer one weighs in
        let later = 6 * MINUTE + MINUTE / 2;
        assert_eq!(admitted(alg, &mut cell, later, 10, MINUTE, 15), 8);
        // two windows of silence forget everything
        assert_eq!(admitted(alg, &mut cell, 9 * MINUTE, 10, MINUTE, 15), 10);
    }

    #[test]
    fn token_bucket_bursts_then_refills_smoothly() {
        let alg = Algorithm::TokenBucket { burst: 5 };
        let mut cell = None;
        let t0 = 1_000_000;
        // 60 per minute = one per second, bursts of 5
        assert_eq!(admitted(alg, &mut cell, t0, 60, MINUTE, 10), 5);
        let v = evaluate(alg, cell, t0, 60, MINUTE, 1);
        assert!(v.over);
        assert_eq!(v.reset_ms, 1000, "one token comes back after a second");
        assert_eq!(admitted(alg, &mut cell, t0 + 999, 60, MINUTE, 1), 0);
        assert_eq!(admitted(alg, &mut cell, t0 + 1000, 60, MINUTE, 3), 1);
        // after the bucket has refilled completely, a full burst again
        assert_eq!(admitted(alg, &mut cell, t0 + 60_000, 60, MINUTE, 10), 5);
        let v = evaluate(alg, None, t0, 60, MINUTE, 1);
        assert_eq!((v.remaining_before, v.remaining_after), (60 / 12, 4));
    }

    #[test]
    fn token_bucket_recorded_past_its_limit_owes_at_most_one_window() {
        let alg = Algorithm::TokenBucket { burst: 10 };
        let t0 = 1_000_000;
        // 10 per minute (one per 6 s), the bucket full: 15 hits recorded anyway (a usage report)
        let v = evaluate(alg, None, t0, 10, MINUTE, 15);
        assert!(v.over);
        // 5 tokens owed: the next hit fits once 6 tokens are back
        let owed = evaluate(alg, Some(v.next), t0, 10, MINUTE, 1);
        assert_eq!((owed.over, owed.reset_ms), (true, 36_000));
        // a report far beyond the bucket owes one window (10 tokens), not 1,000
        let v = evaluate(alg, None, t0, 10, MINUTE, 1_010);
        let capped = evaluate(alg, Some(v.next), t0, 10, MINUTE, 1);
        assert_eq!(capped.reset_ms, MINUTE + 6_000);
        assert_eq!(v.expires_ms, t0 + 2 * MINUTE);
        // a window (and one token's time) later, one hit fits again
        let later = evaluate(alg, Some(v.next), t0 + MINUTE + 6_000, 10, MINUTE, 1);
        assert!(!later.over);
    }

    #[test]
    fn zero_limits_block() {
        for alg in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::TokenBucket { burst: 0 },
        ] {
            assert!(evaluate(alg, None, 1_000, 0, MINUTE, 1).over, "{alg:?}");
            assert!(
                !evaluate(alg, None, 1_000, 0, MINUTE, 0).over,
                "{alg:?} peek"
            );
        }
    }

    #[test]
    fn peeking_changes_nothing() {
        for alg in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::TokenBucket { burst: 3 },
        ] {
            let mut cell = None;
            hit(alg, &mut cell, 10_000, 3, MINUTE);
            let v = evaluate(alg, cell, 10_000, 3, MINUTE, 0);
            assert_eq!(
                (v.over, v.remaining_after, v.remaining_before),
                (false, 2, 2),
                "{alg:?}"
            );
        }
    }
}
