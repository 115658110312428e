//! Latency histograms kept beside the metrics recorder rather than in it.
//!
//! The recorder's histograms keep every sample (a clock read, an epoch pin and an append to a
//! list shared by all threads) until upkeep folds them into buckets; at two samples per
//! decision that was a measurable share of a decision's cost, most of it cache lines moving
//! between cores. These count straight into fixed buckets, in stripes picked per thread, so
//! recording is two relaxed additions on lines the recording core mostly owns. `/metrics`
//! renders them after the recorder's output, in the same exposition format and under the
//! same names as before.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds of the buckets (`le`), nanoseconds: 50 µs to 1 s, dense where a rate limiter
/// should answer.
const BOUNDS_NS: [u64; 14] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];
/// Stripes per histogram: threads beyond it share stripes (still exact, only less private).
const STRIPES: usize = 16;

/// One thread's share of a histogram: a count per bucket (the last one past every bound) and
/// the sum, on cache lines of their own.
#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    counts: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

/// A Prometheus histogram of durations with fixed buckets (see the module).
pub struct LatencyHistogram {
    name: &'static str,
    /// The label pair, rendered (`result="ok"`).
    label: String,
    stripes: Box<[Stripe]>,
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LatencyHistogram({}{{{}}})", self.name, self.label)
    }
}

/// Every histogram made in this process, for rendering; few and made once each.
static HISTOGRAMS: Mutex<Vec<Arc<LatencyHistogram>>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's stripe, chosen round-robin when it first records.
    static STRIPE: Cell<Option<usize>> = const { Cell::new(None) };
}

fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    STRIPE.with(|stripe| {
        stripe.get().unwrap_or_else(|| {
            let index = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            stripe.set(Some(index));
            index
        })
    })
}

impl LatencyHistogram {
    /// The process's histogram `name` with the label `key="value"`, made on first use: every
    /// server of a process records into the same series, as with the recorder's metrics. The
    /// label is written as given (callers pass fixed names, nothing that needs escaping).
    pub fn get(name: &'static str, key: &str, value: &str) -> Arc<LatencyHistogram> {
        debug_assert!(
            !value.contains(['"', '\\', '\n']),
            "label value needs escaping"
        );
        let label = format!("{key}=\"{value}\"");
        let mut all = HISTOGRAMS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = all.iter().find(|h| h.name == name && h.label == label) {
            return found.clone();
        }
        let made = Arc::new(LatencyHistogram {
            name,
            label,
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
        });
        all.push(made.clone());
        made
    }

    /// Counts one duration.
    pub fn record(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS.partition_point(|&bound| bound < ns);
        let stripe = &self.stripes[stripe_index()];
        stripe.counts[bucket].fetch_add(1, Ordering::Relaxed);
        stripe.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Bucket counts (not cumulative) and the sum in nanoseconds, over all stripes.
    fn totals(&self) -> ([u64; BOUNDS_NS.len() + 1], u64) {
        let mut counts = [0; BOUNDS_NS.len() + 1];
        let mut sum = 0u64;
        for stripe in &self.stripes {
            for (total, count) in counts.iter_mut().zip(&stripe.counts) {
                *total += count.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(stripe.sum_ns.load(Ordering::Relaxed));
        }
        (counts, sum)
    }

    fn render_into(&self, out: &mut String) {
        let (counts, sum_ns) = self.totals();
        let (name, label) = (self.name, &self.label);
        let mut cumulative = 0;
        for (bound, count) in BOUNDS_NS.iter().zip(counts) {
            cumulative += count;
            let le = *bound as f64 / 1e9;
            let _ = writeln!(out, "{name}_bucket{{{label},le=\"{le}\"}} {cumulative}");
        }
        cumulative += counts[BOUNDS_NS.len()];
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {cumulative}");
        let sum = sum_ns as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{label}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{label}}} {cumulative}");
    }
}

/// Every histogram of the process, ordered by name and label (the order they are rendered in).
fn sorted() -> Vec<Arc<LatencyHistogram>> {
    let mut all = HISTOGRAMS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    all.sort_by(|a, b| (a.name, &a.label).cmp(&(b.name, &b.label)));
    all
}

/// Appends every histogram of the process to `out`, in the Prometheus text format.
pub(super) fn render(out: &mut String) {
    let mut previous = "";
    for histogram in &sorted() {
        if histogram.name != previous {
            let _ = writeln!(out, "# TYPE {} histogram", histogram.name);
            previous = histogram.name;
        }
        histogram.render_into(out);
    }
}

/// Appends the sample count of every series of the histogram `histogram` as the counter
/// `counter` (same labels): a count the histogram keeps anyway is not kept a second time.
pub(super) fn render_counts(out: &mut String, histogram: &str, counter: &str) {
    let mut series = sorted();
    series.retain(|h| h.name == histogram);
    if series.is_empty() {
        return;
    }
    let _ = writeln!(out, "# TYPE {counter} counter");
    for h in series {
        let count: u64 = h.totals().0.iter().sum();
        let _ = writeln!(out, "{counter}{{{}}} {count}", h.label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = LatencyHistogram::get("test_latency_seconds", "case", "buckets");
        h.record(Duration::from_micros(50)); // on a bound: counts in it
        h.record(Duration::from_micros(51));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(5)); // past every bound
        let mut out = String::new();
        h.render_into(&mut out);
        let value = |series: &str| -> f64 {
            let line = out.lines().find(|l| l.starts_with(series)).unwrap();
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let bucket = |le: &str| {
            value(&format!(
                "test_latency_seconds_bucket{{case=\"buckets\",le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("0.00005"), 1.0);
        assert_eq!(bucket("0.0001"), 2.0);
        assert_eq!(bucket("0.0025"), 2.0);
        assert_eq!(bucket("0.005"), 3.0);
        assert_eq!(bucket("1"), 3.0);
        assert_eq!(bucket("+Inf"), 4.0);
        assert_eq!(value("test_latency_seconds_count{case=\"buckets\"}"), 4.0);
        let sum = value("test_latency_seconds_sum{case=\"buckets\"}");
        assert!((sum - 5.003101).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn the_same_series_is_one_histogram_counted_from_every_thread() {
        let h = LatencyHistogram::get("test_latency_seconds", "case", "threads");
        assert!(Arc::ptr_eq(
            &h,
            &LatencyHistogram::get("test_latency_seconds", "case", "threads")
        ));
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        h.record(Duration::from_micros(200));
                    }
                });
            }
        });
        let (counts, sum) = h.totals();
        assert_eq!(counts.iter().sum::<u64>(), 4000);
        assert_eq!(counts[2], 4000, "200 µs falls in le=0.00025");
        assert_eq!(sum, 4000 * 200_000);
        let mut out = String::new();
        render(&mut out);
        assert_eq!(
            out.matches("# TYPE test_latency_seconds histogram").count(),
            1
        );
        let mut counts = String::new();
        render_counts(&mut counts, "test_latency_seconds", "test_calls_total");
        assert!(
            counts.starts_with("# TYPE test_calls_total counter\n"),
            "{counts}"
        );
        assert!(
            counts.contains("test_calls_total{case=\"threads\"} 4000\n"),
            "{counts}"
        );
    }
}
