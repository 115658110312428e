//! Every failover of the run, as the Sentinels announce it (`+switch-master`), the ones the
//! faults cause and any the Sentinels start by themselves (on a loaded machine a Sentinel can
//! take a master that was slow to answer for down, a second after promoting it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use super::cluster::MASTER_NAME;
use super::ledger::wall_us;

/// One change of master: the first announcement of it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Switch {
    /// When (µs, wall clock).
    pub(crate) at: u64,
    /// The new master's port.
    pub(crate) to: u16,
}

/// The subscriptions; they end when this is dropped.
pub(crate) struct SwitchLog {
    switches: Arc<Mutex<Vec<Switch>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for SwitchLog {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SwitchLog {
    /// Subscribes to `+switch-master` on the Sentinels on `ports`.
    pub(crate) fn start(ports: &[u16]) -> SwitchLog {
        let switches = Arc::new(Mutex::new(Vec::new()));
        let tasks = ports
            .iter()
            .map(|&port| tokio::spawn(follow(port, switches.clone())))
            .collect();
        SwitchLog { switches, tasks }
    }

    /// The changes of master so far, in order.
    pub(crate) fn switches(&self) -> Vec<Switch> {
        self.switches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Records the switches one Sentinel announces, subscribing again if it goes away.
async fn follow(port: u16, switches: Arc<Mutex<Vec<Switch>>>) {
    loop {
        let _ = listen(port, &switches).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn listen(port: u16, switches: &Mutex<Vec<Switch>>) -> redis::RedisResult<()> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe("+switch-master").await?;
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        // "<name> <old ip> <old port> <new ip> <new port>"
        let payload: String = message.get_payload()?;
        let fields: Vec<&str> = payload.split(' ').collect();
        let (Some(&MASTER_NAME), Some(Ok(to))) = (fields.first(), fields.get(4).map(|p| p.parse()))
        else {
            continue;
        };
        let mut switches = switches.lock().unwrap_or_else(|e| e.into_inner());
        if switches.last().is_none_or(|last| last.to != to) {
            switches.push(Switch { at: wall_us(), to });
        }
    }
    Ok(())
}
