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
