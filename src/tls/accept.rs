//! The accept loop of a TLS listener (gRPC, HTTP). Each connection's handshake runs in a task
//! of its own, bounded by the handshake timeout, so a slow or failing client holds up no one
//! else, and no handshake error ends the loop; tonic ([`incoming`]) and axum ([`listener`]) are
//! handed only connections whose handshake finished.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::ServerTls;

/// Handshakes in progress at once; a connection past that is closed at once.
const MAX_HANDSHAKES: usize = 4096;
/// After a failed accept (out of file descriptors, say), how long to wait before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The connections accepted on `listener`, each once its TLS handshake (with the configuration
/// current when it was accepted) has finished, with TCP_NODELAY set. Accepting stops when
/// `stop` is cancelled or the stream is dropped, which closes the listener.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> {
    let (ready, connections) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, ready, stop));
    ReceiverStream::new(connections).map(Ok)
}

/// `listener` over TLS, for axum: the connections accepted, each once its handshake (with the
/// configuration current when it was accepted) has finished. Accepting stops when `stop` is
/// cancelled or the listener is dropped.
pub fn listener(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    stop: CancellationToken,
) -> TlsListener {
    let local = listener.local_addr();
    let (ready, connections) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, ready, stop));
    TlsListener { connections, local }
}

/// Connections whose TLS handshake has finished, as an axum listener; the address it gives is
/// the client's.
#[derive(Debug)]
pub struct TlsListener {
    connections: mpsc::Receiver<TlsStream<TcpStream>>,
    local: io::Result<SocketAddr>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some(stream) = self.connections.recv().await else {
                // The accept loop stopped (shutdown): axum's graceful shutdown ends the server.
                return std::future::pending().await;
            };
            // A client that has gone already has no address left: skip it.
            if let Ok(peer) = stream.get_ref().0.peer_addr() {
                return (stream, peer);
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match &self.local {
            Ok(addr) => Ok(*addr),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    ready: mpsc::Sender<TlsStream<TcpStream>>,
    stop: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            () = ready.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                let listener = tls.protocol().name();
                tracing::warn!(listener, error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            let listener = tls.protocol().name();
            tracing::warn!(listener, %peer, "too many TLS handshakes in progress: connection closed");
            continue;
        };
        // Answers are small writes that must leave at once (Nagle and delayed ACKs would hold
        // them up to 40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        let acceptor = TlsAcceptor::from(tls.config());
        let timeout = tls.settings().handshake_timeout;
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // Fails only once the server has stopped taking connections.
                    let _ = ready.send(stream).await;
                }
                Ok(Err(e)) => log_failure(peer, &e),
                Err(_) => {
                    tracing::debug!(%peer, ?timeout, "TLS handshake timed out: connection closed");
                }
            }
        });
    }
}

/// Logs a failed handshake: a refused client certificate at warn level (an operator's
/// business), anything else (scanners, plaintext clients, resets) at debug level.
fn log_failure(peer: SocketAddr, error: &io::Error) {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        // The SAN check logged the names already.
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        )) => tracing::debug!(%peer, error = %error, "TLS handshake failed"),
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            tracing::warn!(%peer, error = %error, "TLS handshake failed: client certificate refused");
        }
        _ => tracing::debug!(%peer, error = %error, "TLS handshake failed"),
    }
}
