//! The soak's client: every call has a deadline, and every way a call can end is named, so the
//! ledger can tell a decision from a failure mode's answer, a gRPC status, a refused
//! connection, or a call the server left unanswered past its deadline.
//!
//! An [`Endpoint`] is one replica's address and a few HTTP/2 connections to it; a connection
//! that breaks (the replica was killed) is dropped and opened again by the next call, so the
//! load follows a replica through its restarts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use floodgate::pb::{RateLimitResponse, rate_limit_response};
use floodgate::rls::response::DEGRADED_HEADER;

use crate::wire::{Connection, Reply};

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Outcome {
    /// OK, decided by the store.
    Ok,
    /// OVER_LIMIT, decided by the store (or by the replica's cache of full counters).
    OverLimit,
    /// OK from the failure mode (marked `x-floodgate-degraded`): admitted without the store.
    DegradedOk,
    /// OVER_LIMIT from the failure mode.
    DegradedOverLimit,
    /// No decision: a gRPC or HTTP status, or a broken connection.
    Failed(Failure),
    /// No answer before the client's deadline.
    PastDeadline,
}

impl Outcome {
    /// Whether the call admitted a request (the ledger counts it against the limits).
    pub(crate) fn admitted(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::DegradedOk)
    }

    /// Whether the store decided it: the replica and Redis both worked for this call.
    pub(crate) fn decided(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::OverLimit)
    }

    /// A name for reports.
    pub(crate) fn name(self) -> String {
        match self {
            Outcome::Ok => "OK".into(),
            Outcome::OverLimit => "OVER_LIMIT".into(),
            Outcome::DegradedOk => "OK (failure mode)".into(),
            Outcome::DegradedOverLimit => "OVER_LIMIT (failure mode)".into(),
            Outcome::Failed(failure) => failure.name(),
            Outcome::PastDeadline => "past deadline (no answer)".into(),
        }
    }
}

/// Why a call got no decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Failure {
    /// A gRPC status other than OK.
    Grpc(u32),
    /// An HTTP status other than 200.
    Http(u16),
    /// The replica's port refused the connection (it is down).
    ConnectionRefused,
    /// The connection was reset or closed under the call (the replica died).
    ConnectionLost,
    /// The server sent GOAWAY.
    GoAway,
    /// The server reset the call's stream.
    StreamReset,
    /// Another transport error.
    Transport,
    /// An answer that could not be read.
    BadMessage,
}

impl Failure {
    /// A name for reports: gRPC statuses by their code's name.
    pub(crate) fn name(self) -> String {
        match self {
            Failure::Grpc(code) => grpc_code_name(code),
            Failure::Http(status) => format!("HTTP {status}"),
            Failure::ConnectionRefused => "connection refused".into(),
            Failure::ConnectionLost => "connection lost".into(),
            Failure::GoAway => "HTTP/2 GOAWAY".into(),
            Failure::StreamReset => "HTTP/2 stream reset".into(),
            Failure::Transport => "transport error".into(),
            Failure::BadMessage => "unreadable answer".into(),
        }
    }
}

/// gRPC's DEADLINE_EXCEEDED: the server itself gave up on the call.
pub(crate) const DEADLINE_EXCEEDED: u32 = 4;
/// gRPC's RESOURCE_EXHAUSTED: refused by the overload protection.
pub(crate) const RESOURCE_EXHAUSTED: u32 = 8;

fn grpc_code_name(code: u32) -> String {
    let name = match code {
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        DEADLINE_EXCEEDED => "DEADLINE_EXCEEDED",
        RESOURCE_EXHAUSTED => "RESOURCE_EXHAUSTED",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        _ => return format!("gRPC status {code}"),
    };
    name.to_owned()
}

/// A call's outcome, and the longest `duration_until_reset` among its statuses (whole
/// seconds; 0 without statuses).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer {
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// Seconds until the longest window of the request resets, as the server said.
    pub(crate) reset_secs: u32,
}

/// One replica: its address and a few connections to it, each opened on first use and again
/// after it breaks.
#[derive(Debug)]
pub(crate) struct Endpoint {
    addr: String,
    slots: Vec<tokio::sync::Mutex<Option<(u64, Connection)>>>,
    opened: AtomicU64,
}

impl Endpoint {
    /// `connections` connections to `addr` (host:port), none opened yet.
    pub(crate) fn new(addr: String, connections: usize) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            addr,
            slots: (0..connections.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            opened: AtomicU64::new(0),
        })
    }

    /// Opens every connection now (a burst should not wait on handshakes).
    pub(crate) async fn open_all(&self) {
        for slot in 0..self.slots.len() {
            let _ = self.connection(slot).await;
        }
    }

    /// Sends `body` on connection `n` (modulo their number) and waits for the answer until
    /// `deadline`, which is also sent as the call's `grpc-timeout`.
    pub(crate) async fn call(&self, n: usize, body: Bytes, deadline: Duration) -> Answer {
        let call = self.try_call(n % self.slots.len(), body, deadline);
        tokio::time::timeout(deadline, call)
            .await
            .unwrap_or(Answer {
                outcome: Outcome::PastDeadline,
                reset_secs: 0,
            })
    }

    async fn try_call(&self, slot: usize, body: Bytes, deadline: Duration) -> Answer {
        let failed = |failure| Answer {
            outcome: Outcome::Failed(failure),
            reset_secs: 0,
        };
        let (id, connection) = match self.connection(slot).await {
            Ok(connection) => connection,
            Err(failure) => return failed(failure),
        };
        match connection.reply(body, Some(deadline)).await {
            Ok(reply) => answer(reply),
            Err(e) => {
                let failure = h2_failure(&e);
                if failure != Failure::StreamReset {
                    self.forget(slot, id).await;
                }
                failed(failure)
            }
        }
    }

    /// Connection `slot`, opened if it is not (one opening at a time per slot).
    async fn connection(&self, slot: usize) -> Result<(u64, Connection), Failure> {
        let mut guard = self.slots[slot].lock().await;
        if let Some((id, connection)) = guard.as_ref() {
            return Ok((*id, connection.clone()));
        }
        let connection = Connection::open(&self.addr).await.map_err(|e| {
            match e.downcast_ref::<std::io::Error>().map(|e| e.kind()) {
                Some(std::io::ErrorKind::ConnectionRefused) => Failure::ConnectionRefused,
                _ => Failure::Transport,
            }
        })?;
        let id = self.opened.fetch_add(1, Ordering::Relaxed);
        *guard = Some((id, connection.clone()));
        Ok((id, connection))
    }

    /// Drops connection `slot` if it is still the one numbered `id`.
    async fn forget(&self, slot: usize, id: u64) {
        let mut guard = self.slots[slot].lock().await;
        if guard.as_ref().is_some_and(|(current, _)| *current == id) {
            *guard = None;
        }
    }
}

fn answer(reply: Reply) -> Answer {
    let response = match reply {
        Reply::Answer(Some(response)) => response,
        Reply::Answer(None) => return failed_answer(Failure::BadMessage),
        Reply::Status(code) => return failed_answer(Failure::Grpc(code)),
        Reply::Http(status) => return failed_answer(Failure::Http(status)),
    };
    let degraded = response
        .response_headers_to_add
        .iter()
        .any(|h| h.key.eq_ignore_ascii_case(DEGRADED_HEADER));
    let outcome = match (code(&response), degraded) {
        (Some(rate_limit_response::Code::Ok), false) => Outcome::Ok,
        (Some(rate_limit_response::Code::Ok), true) => Outcome::DegradedOk,
        (Some(rate_limit_response::Code::OverLimit), false) => Outcome::OverLimit,
        (Some(rate_limit_response::Code::OverLimit), true) => Outcome::DegradedOverLimit,
        _ => Outcome::Failed(Failure::BadMessage),
    };
    let reset_secs = response
        .statuses
        .iter()
        .filter_map(|s| s.duration_until_reset.as_ref())
        .map(|d| d.seconds.clamp(0, i64::from(u32::MAX)) as u32)
        .max()
        .unwrap_or(0);
    Answer {
        outcome,
        reset_secs,
    }
}

fn failed_answer(failure: Failure) -> Answer {
    Answer {
        outcome: Outcome::Failed(failure),
        reset_secs: 0,
    }
}

fn code(response: &RateLimitResponse) -> Option<rate_limit_response::Code> {
    rate_limit_response::Code::try_from(response.overall_code).ok()
}

/// What an HTTP/2 error says about the call: the connection went away (the replica died), or
/// the stream alone was refused.
fn h2_failure(e: &h2::Error) -> Failure {
    if e.is_go_away() {
        Failure::GoAway
    } else if e.is_reset() {
        Failure::StreamReset
    } else if let Some(io) = e.get_io() {
        match io.kind() {
            std::io::ErrorKind::ConnectionRefused => Failure::ConnectionRefused,
            std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof => Failure::ConnectionLost,
            _ => Failure::Transport,
        }
    } else {
        // The library's own errors, such as a connection already closed.
        Failure::ConnectionLost
    }
}
