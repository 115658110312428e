//! The fixed-window algorithm as pure functions of (counts, now), shared by the stores.
//!
//! Windows are aligned to whole multiples of their length since the Unix epoch, as in
//! envoyproxy/ratelimit. The Redis store runs the same rules inside its Lua script
//! (`store/redis/fixed_window.lua`); the tests of both stores hold them to one behaviour.

/// The window containing `now_ms`: (start in seconds, milliseconds until it ends).
pub fn window(now_ms: u64, window_secs: u64) -> (u64, u64) {
    let window_secs = window_secs.max(1);
    let now_s = now_ms / 1000;
    let start = now_s - now_s % window_secs;
    let end_ms = (start + window_secs) * 1000;
    (start, end_ms - now_ms)
}

/// Whether a counter at `count_after` (this request's hits included) exceeds `limit`.
pub fn is_over(count_after: u64, limit: u64) -> bool {
    count_after > limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_the_unit() {
        assert_eq!(window(0, 60), (0, 60_000));
        assert_eq!(window(59_999, 60), (0, 1));
        assert_eq!(window(60_000, 60), (60, 60_000));
        assert_eq!(window(61_500, 60), (60, 58_500));
        assert_eq!(window(1_500, 1), (1, 500));
        // a zero-length window is treated as one second rather than dividing by zero
        assert_eq!(window(1_500, 0), (1, 500));
    }

    #[test]
    fn over_means_strictly_above() {
        assert!(!is_over(0, 0));
        assert!(is_over(1, 0));
        assert!(!is_over(10, 10));
        assert!(is_over(11, 10));
    }
}
