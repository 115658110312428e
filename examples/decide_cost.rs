//! Runs the decide path (match, plan, the memory store, the decision) a given number of times
//! on one thread, for instruction counts that do not depend on the machine's noise:
//!   cargo build --release --example decide_cost
//!   valgrind --tool=callgrind target/release/examples/decide_cost 1 1000
//!   valgrind --tool=callgrind target/release/examples/decide_cost 1 11000
//! The difference of the two totals over 10,000 is the cost of one decision (arguments: the
//! descriptors per request, 1 or 3, and the number of decisions). bench/decide-cost.sh does
//! exactly that.

use std::sync::Arc;

use floodgate::clock::SystemClock;
use floodgate::config::Config;
use floodgate::limiter::{Limiter, LimiterOptions};
use floodgate::query::{DescriptorQuery, Entry, RateLimitQuery};
use floodgate::store::MemoryStore;

/// Limits high enough that every decision is admitted and counted.
const CONFIG: &str = "
domain: bench
descriptors:
  - key: k0
    rate_limit: { unit: hour, requests_per_unit: 1000000000 }
  - key: k1
    rate_limit: { unit: hour, requests_per_unit: 1000000000 }
  - key: k2
    rate_limit: { unit: hour, requests_per_unit: 1000000000 }
";

fn query(descriptors: usize, user: usize) -> RateLimitQuery {
    RateLimitQuery {
        domain: "bench".into(),
        descriptors: (0..descriptors)
            .map(|i| DescriptorQuery {
                entries: vec![Entry {
                    key: format!("k{i}"),
                    value: format!("user{user}"),
                }],
                limit_override: None,
                hits: 1,
            })
            .collect(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let descriptors: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let decisions: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let clock = Arc::new(SystemClock);
    let limiter = Limiter::new(
        Config::from_yaml(CONFIG).expect("the built-in config loads"),
        MemoryStore::new(clock.clone(), 1_000_000),
        LimiterOptions::default(),
        clock,
    );
    // 100 users, queries built once: the loop measures the decision, not the query's making.
    let queries: Vec<RateLimitQuery> = (0..100).map(|u| query(descriptors, u)).collect();
    let mut admitted = 0usize;
    for i in 0..decisions {
        let decision = limiter
            .decide(&queries[i % queries.len()])
            .await
            .expect("the memory store answers");
        admitted += usize::from(decision.overall == floodgate::decision::Code::Ok);
    }
    println!("{admitted} of {decisions} admitted");
}
