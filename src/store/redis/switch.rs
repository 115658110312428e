//! Following the Sentinels' failovers as they happen: every Sentinel announces a new master on
//! its `+switch-master` channel, and on that news every pooled connection is retired, so the
//! next call asks the Sentinels where the master is now.
//!
//! Why not wait for an error on the old connections: a master that was frozen (or cut off)
//! and failed over meanwhile comes back still believing itself master, and the Sentinels demote
//! it only seconds later. Until then it answers, and a replica still connected to it would
//! count there while the others count on the new master: two masters, each admitting up to
//! the limits, and everything written to the old one lost when it is demoted. The chaos soak
//! (bench/soak.sh) saw it after a 3 s SIGSTOP: about 10 s of such counting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::{Client, ConnectionInfo, RedisResult};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

/// The channel a Sentinel announces a new master on: `<name> <old ip> <old port> <new ip>
/// <new port>`.
const CHANNEL: &str = "+switch-master";
/// How long to wait before subscribing again to a Sentinel that went away.
const RETRY: Duration = Duration::from_secs(1);

/// The subscriptions to every Sentinel; they end when this is dropped.
#[derive(Debug)]
pub(crate) struct SwitchWatch {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for SwitchWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Subscribes to `+switch-master` on every Sentinel in `sentinels`; each announcement of a switch of
/// `master_name` advances `generation`, which retires every connection made before it. Runs on
/// the current Tokio runtime.
///
/// Every Sentinel's announcement counts, not only the first: the Sentinel that led the failover
/// announces it last, at its end, and until then may still name the old master to a client
/// that asks it first (its `SENTINEL MASTERS` keeps the old address while its failover runs).
pub(crate) fn watch(
    sentinels: Vec<ConnectionInfo>,
    master_name: &str,
    generation: &Arc<AtomicU64>,
) -> SwitchWatch {
    let tasks = sentinels
        .into_iter()
        .map(|sentinel| {
            let follow = Follow {
                sentinel,
                master_name: master_name.to_owned(),
                generation: Arc::downgrade(generation),
            };
            tokio::spawn(follow.run())
        })
        .collect();
    SwitchWatch { tasks }
}

/// One Sentinel's subscription.
struct Follow {
    sentinel: ConnectionInfo,
    master_name: String,
    /// The pool's generation; gone with the pool.
    generation: Weak<AtomicU64>,
}

impl Follow {
    async fn run(self) {
        while self.generation.strong_count() > 0 {
            if let Err(e) = self.listen().await {
                tracing::debug!(error = %e, "Sentinel subscription lost; subscribing again");
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Subscribes and acts on every switch until the connection ends.
    async fn listen(&self) -> RedisResult<()> {
        let mut pubsub = Client::open(self.sentinel.clone())?
            .get_async_pubsub()
            .await?;
        pubsub.subscribe(CHANNEL).await?;
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let switch: String = message.get_payload()?;
            if switch.split(' ').next() == Some(self.master_name.as_str()) {
                self.switched(switch);
            }
        }
        Ok(())
    }

    fn switched(&self, switch: String) {
        if let Some(generation) = self.generation.upgrade() {
            tracing::info!(switch = %switch, sentinel = %self.sentinel.addr(), "the Sentinels switched the Redis master: every connection is made anew");
            generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}
