//! The service core: the live config, a store, and the one `decide` that gRPC and HTTP share.

use arc_swap::ArcSwap;
use std::sync::Arc;

use crate::config::Config;
use crate::decision::{self, Decision, PlanOptions};
use crate::query::RateLimitQuery;
use crate::store::{Applied, Store, StoreError};

/// Decides queries against the current config with one store call each.
#[derive(Debug)]
pub struct Limiter<S> {
    config: ArcSwap<Config>,
    store: S,
    options: PlanOptions,
}

impl<S: Store> Limiter<S> {
    /// A limiter serving `config` from `store`.
    pub fn new(config: Config, store: S, options: PlanOptions) -> Limiter<S> {
        Limiter {
            config: ArcSwap::from_pointee(config),
            store,
            options,
        }
    }

    /// Matches, counts and decides one query.
    pub async fn decide(&self, query: &RateLimitQuery) -> Result<Decision, StoreError> {
        // The plan owns what it needs, so the config guard is released before the store call
        // and a reload never waits for (nor disturbs) requests in flight.
        let plan = decision::plan(&self.config.load(), query, &self.options);
        let applied = if plan.checks.is_empty() {
            Applied {
                admitted: true,
                counters: Vec::new(),
            }
        } else {
            let applied = self.store.apply(&plan.checks).await?;
            if applied.counters.len() != plan.checks.len() {
                return Err(StoreError::Protocol(format!(
                    "{} counters for {} checks",
                    applied.counters.len(),
                    plan.checks.len()
                )));
            }
            applied
        };
        Ok(decision::decide(plan, &applied))
    }

    /// Replaces the config for every request that starts from now on.
    pub fn replace_config(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::{Limit, Unit};
    use crate::decision::Code;
    use crate::query::{DescriptorQuery, Entry};
    use crate::store::MemoryStore;

    const CONFIG: &str = r#"
domain: d
descriptors:
  - key: user
    rate_limit: { unit: minute, requests_per_unit: 2, name: per_user }
  - key: vip
    rate_limit: { unit: minute, requests_per_unit: 5 }
    replaces: [{ name: per_user }]
  - key: free
    rate_limit: { unlimited: true }
  - key: shadow
    shadow_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: blocked
    rate_limit: { unit: hour, requests_per_unit: 0 }
"#;

    fn new_limiter(global_shadow: bool) -> Limiter<MemoryStore<ManualClock>> {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let options = PlanOptions {
            key_prefix: "t:".into(),
            global_shadow,
        };
        Limiter::new(
            Config::from_yaml(CONFIG).unwrap(),
            MemoryStore::new(clock, 1000),
            options,
        )
    }

    fn descriptor(key: &str, value: &str) -> DescriptorQuery {
        DescriptorQuery {
            entries: vec![Entry {
                key: key.into(),
                value: value.into(),
            }],
            limit_override: None,
            hits: 1,
        }
    }

    fn query(descriptors: Vec<DescriptorQuery>) -> RateLimitQuery {
        RateLimitQuery {
            domain: "d".into(),
            descriptors,
        }
    }

    async fn codes(
        limiter: &Limiter<MemoryStore<ManualClock>>,
        q: &RateLimitQuery,
    ) -> (Code, Vec<Code>) {
        let decision = limiter.decide(q).await.unwrap();
        (
            decision.overall,
            decision.statuses.iter().map(|s| s.code).collect(),
        )
    }

    #[tokio::test]
    async fn counts_remaining_and_reset() {
        let limiter = new_limiter(false);
        let q = query(vec![descriptor("user", "a")]);
        let first = limiter.decide(&q).await.unwrap();
        assert_eq!(first.overall, Code::Ok);
        let status = &first.statuses[0];
        assert_eq!(status.remaining, 1);
        assert_eq!(status.reset_ms, Some(20_000)); // 1_000_000 s is 40 s into its minute
        let applied = status.limit.as_ref().unwrap();
        assert_eq!(applied.name.as_deref(), Some("per_user"));
        assert_eq!(
            applied.limit,
            Limit {
                requests_per_unit: 2,
                unit: Unit::Minute
            }
        );
        assert_eq!(codes(&limiter, &q).await, (Code::Ok, vec![Code::Ok]));
        let third = limiter.decide(&q).await.unwrap();
        assert_eq!(third.overall, Code::OverLimit);
        assert_eq!(third.statuses[0].remaining, 0);
    }

    #[tokio::test]
    async fn denied_request_consumes_nothing() {
        let limiter = new_limiter(false);
        let q = query(vec![descriptor("user", "a"), descriptor("blocked", "x")]);
        assert_eq!(
            codes(&limiter, &q).await,
            (Code::OverLimit, vec![Code::Ok, Code::OverLimit])
        );
        let decision = limiter.decide(&q).await.unwrap();
        assert_eq!(decision.statuses[0].remaining, 2, "user counter untouched");
        let alone = limiter
            .decide(&query(vec![descriptor("user", "a")]))
            .await
            .unwrap();
        assert_eq!(alone.statuses[0].remaining, 1);
    }

    #[tokio::test]
    async fn replaces_unlimited_unknown_and_no_match() {
        let limiter = new_limiter(false);
        // vip replaces per_user: only the vip limit applies
        let q = query(vec![descriptor("user", "a"), descriptor("vip", "a")]);
        let decision = limiter.decide(&q).await.unwrap();
        assert_eq!(decision.statuses[0].limit, None);
        assert_eq!(decision.statuses[1].remaining, 4);
        let decision = limiter
            .decide(&query(vec![descriptor("free", "x")]))
            .await
            .unwrap();
        assert_eq!(decision.statuses[0].remaining, u32::MAX);
        assert_eq!(decision.statuses[0].limit, None);
        let decision = limiter
            .decide(&query(vec![descriptor("nothing", "x")]))
            .await
            .unwrap();
        assert_eq!(
            (decision.statuses[0].code, decision.statuses[0].remaining),
            (Code::Ok, 0)
        );
        let unknown = RateLimitQuery {
            domain: "other".into(),
            ..query(vec![descriptor("blocked", "x")])
        };
        assert_eq!(codes(&limiter, &unknown).await, (Code::Ok, vec![Code::Ok]));
    }

    #[tokio::test]
    async fn shadow_mode_counts_but_never_denies() {
        let limiter = new_limiter(false);
        let q = query(vec![descriptor("shadow", "s")]);
        for _ in 0..3 {
            assert_eq!(codes(&limiter, &q).await, (Code::Ok, vec![Code::Ok]));
        }
        assert_eq!(limiter.decide(&q).await.unwrap().statuses[0].remaining, 0);

        let global = new_limiter(true);
        let q = query(vec![descriptor("blocked", "x"), descriptor("user", "b")]);
        assert_eq!(
            codes(&global, &q).await,
            (Code::Ok, vec![Code::OverLimit, Code::Ok])
        );
        // the request passed, so its other descriptor was counted
        assert_eq!(global.decide(&q).await.unwrap().statuses[1].remaining, 0);
    }

    #[tokio::test]
    async fn overrides_and_peeks() {
        let limiter = new_limiter(false);
        let mut over = descriptor("user", "c");
        over.limit_override = Some(Limit {
            requests_per_unit: 1,
            unit: Unit::Second,
        });
        let q = query(vec![over.clone()]);
        assert_eq!(codes(&limiter, &q).await, (Code::Ok, vec![Code::Ok]));
        assert_eq!(
            codes(&limiter, &q).await,
            (Code::OverLimit, vec![Code::OverLimit])
        );
        // an override applies even where no rule matches
        let mut unmatched = descriptor("nothing", "x");
        unmatched.limit_override = over.limit_override;
        assert_eq!(
            limiter
                .decide(&query(vec![unmatched]))
                .await
                .unwrap()
                .statuses[0]
                .remaining,
            0
        );
        // hits 0 only looks
        let mut peek = descriptor("user", "d");
        peek.hits = 0;
        for _ in 0..5 {
            assert_eq!(
                limiter
                    .decide(&query(vec![peek.clone()]))
                    .await
                    .unwrap()
                    .statuses[0]
                    .remaining,
                2
            );
        }
        // several hits at once
        let mut heavy = descriptor("user", "e");
        heavy.hits = 3;
        assert_eq!(
            codes(&limiter, &query(vec![heavy])).await.0,
            Code::OverLimit
        );
    }
}
