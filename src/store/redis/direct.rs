//! A pipeline dispatcher's own connection to the master: the dispatcher writes a batch's
//! script calls to the socket and reads their replies itself, in its own task.
//!
//! (Through a redis-rs multiplexed connection every round trip crossed two more tasks, its
//! writer and its reader, with a channel, a wake-up and a reply tree made on one thread and
//! freed on another; on a 3-descriptor decision that was most of what Redis cost Floodgate
//! beyond the memory store.) Plain TCP only; `rediss://` and Unix sockets keep the pooled
//! redis-rs connections.

use std::sync::Arc;

use redis::ConnectionAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::connect::Connector;
use super::resp::{self, MAX_REPLY, Reply, WireError};
use crate::store::StoreError;

/// A dispatcher's connection, made when first needed and dropped when it fails, misses a
/// deadline or reaches a demoted master, so that the next round trip finds the master anew.
pub(crate) struct DirectLink {
    connector: Arc<Connector>,
    stream: Option<TcpStream>,
    /// Bytes read and not yet parsed.
    input: Vec<u8>,
}

/// What one round trip brought back: a reply per call, their integers in one buffer.
#[derive(Default)]
pub(crate) struct Replies {
    pub(crate) replies: Vec<Reply>,
    pub(crate) ints: Vec<i64>,
}

impl Replies {
    pub(crate) fn clear(&mut self) {
        self.replies.clear();
        self.ints.clear();
    }
}

impl DirectLink {
    /// A link that connects through `connector` when first used.
    pub(crate) fn new(connector: Arc<Connector>) -> DirectLink {
        DirectLink {
            connector,
            stream: None,
            input: Vec::with_capacity(16 * 1024),
        }
    }

    /// Drops the connection: the next round trip connects again.
    pub(crate) fn retire(&mut self) {
        self.stream = None;
    }

    /// Sends `out` (`calls` commands, each at its range of `out`) and reads a reply for
    /// each. Calls that found the script missing are sent again after loading it.
    pub(crate) async fn round_trip(
        &mut self,
        out: &[u8],
        spans: &[std::ops::Range<usize>],
        script: &str,
        into: &mut Replies,
    ) -> Result<(), StoreError> {
        let result = self.exchange(out, spans, script, into).await;
        let demoted = into.replies.iter().any(|r| r.is_error("READONLY"));
        if result.is_err() || demoted {
            // Broken, out of step, or a master demoted by a failover: find the master anew.
            self.retire();
        }
        result
    }

    async fn exchange(
        &mut self,
        out: &[u8],
        spans: &[std::ops::Range<usize>],
        script: &str,
        into: &mut Replies,
    ) -> Result<(), StoreError> {
        if self.stream.is_none() {
            self.stream = Some(self.connect().await?);
        }
        self.send(out).await?;
        self.receive(spans.len(), into).await?;
        let missing: Vec<usize> = (0..spans.len())
            .filter(|&i| into.replies[i].is_error("NOSCRIPT"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        // Restarted or flushed: load the script, then send the calls that missed it again.
        let mut again = Vec::new();
        resp::command(&mut again, &[b"SCRIPT", b"LOAD", script.as_bytes()]);
        for &i in &missing {
            again.extend_from_slice(&out[spans[i].clone()]);
        }
        self.send(&again).await?;
        let mut resent = Replies::default();
        self.receive(1 + missing.len(), &mut resent).await?;
        if let Reply::Error(text) = &resent.replies[0] {
            return Err(StoreError::Unavailable(format!(
                "Redis refused the script: {text}"
            )));
        }
        for (&i, reply) in missing.iter().zip(&resent.replies[1..]) {
            into.replies[i] = match reply {
                Reply::Integers(range) => {
                    let start = into.ints.len();
                    into.ints.extend_from_slice(&resent.ints[range.clone()]);
                    Reply::Integers(start..into.ints.len())
                }
                other => other.clone(),
            };
        }
        Ok(())
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let stream = self.stream.as_mut().ok_or_else(not_connected)?;
        stream.write_all(bytes).await.map_err(io_error)
    }

    /// Reads `count` replies into `into`; the server must have sent nothing more.
    async fn receive(&mut self, count: usize, into: &mut Replies) -> Result<(), StoreError> {
        let stream = self.stream.as_mut().ok_or_else(not_connected)?;
        let mut at = 0;
        let mut left = count;
        while left > 0 {
            match resp::parse(&self.input[at..], &mut into.ints).map_err(wire_error)? {
                Some((reply, used)) => {
                    into.replies.push(reply);
                    at += used;
                    left -= 1;
                }
                None => {
                    if self.input.len() - at > MAX_REPLY {
                        return Err(wire_error(WireError("reply too long")));
                    }
                    self.input.reserve(16 * 1024);
                    if stream.read_buf(&mut self.input).await.map_err(io_error)? == 0 {
                        return Err(StoreError::Unavailable(
                            "Redis closed the connection".into(),
                        ));
                    }
                }
            }
        }
        let unasked = self.input.len() > at;
        self.input.clear();
        if unasked {
            return Err(wire_error(WireError("more replies than calls")));
        }
        Ok(())
    }

    /// Connects to the master (asking the Sentinels where it is, if any) and logs in.
    async fn connect(&mut self) -> Result<TcpStream, StoreError> {
        let result = self.connect_and_log_in().await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(crate::telemetry::REDIS_CONNECTS, "result" => outcome).increment(1);
        result
    }

    async fn connect_and_log_in(&mut self) -> Result<TcpStream, StoreError> {
        let info = self.connector.master().await?;
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Err(StoreError::Unavailable(
                "a dispatcher connection needs a plain TCP address".into(),
            ));
        };
        let stream = TcpStream::connect((host.as_str(), *port))
            .await
            .map_err(io_error)?;
        // Pipelined writes must leave at once (see connect::tcp_settings).
        stream.set_nodelay(true).map_err(io_error)?;
        self.stream = Some(stream);
        let settings = info.redis_settings();
        let mut hello = Vec::new();
        let mut commands = 0;
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => {
                    resp::command(&mut hello, &[b"AUTH", user.as_bytes(), password.as_bytes()])
                }
                None => resp::command(&mut hello, &[b"AUTH", password.as_bytes()]),
            }
            commands += 1;
        }
        if settings.db() != 0 {
            let db = settings.db().to_string();
            resp::command(&mut hello, &[b"SELECT", db.as_bytes()]);
            commands += 1;
        }
        if commands > 0 {
            self.send(&hello).await?;
            let mut replies = Replies::default();
            self.receive(commands, &mut replies).await?;
            // Redis' refusal (WRONGPASS, NOAUTH, ERR DB index...) never repeats the password.
            if let Some(Reply::Error(text)) = replies
                .replies
                .iter()
                .find(|r| matches!(r, Reply::Error(_)))
            {
                return Err(StoreError::Unavailable(format!(
                    "Redis refused the connection: {text}"
                )));
            }
        }
        self.stream.take().ok_or_else(not_connected)
    }
}

fn not_connected() -> StoreError {
    StoreError::Unavailable("not connected to Redis".into())
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("Redis connection: {e}"))
}

fn wire_error(e: WireError) -> StoreError {
    StoreError::Protocol(e.to_string())
}
