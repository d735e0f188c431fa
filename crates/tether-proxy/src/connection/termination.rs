//! TLS termination on a `[listen.tls]` listener: the handshake, inside the connection's task.

use super::*;
use crate::tls::alert::Alert;

/// The TLS handshake of a connection to a `[listen.tls]` listener, under the same deadlines
/// as a request head: the first byte within `timeouts.first_byte`, the whole handshake within
/// `timeouts.head` of the accept, so a client stalling mid-ClientHello is cut like a
/// slowloris one. The ClientHello is read by the proxy first (bounded in size, refusing
/// plain HTTP and SSLv2/SSLv3 before rustls sees a byte), then replayed to rustls. A failed
/// handshake is counted by reason and the connection closed, without an HTTP answer a TLS
/// client could not read: with the TLS alert that says why where the client can read one
/// (see [`close_refused`]).
pub(super) async fn accept_tls(
    shared: &Shared,
    tls: &crate::tls::TlsServer,
    mut tcp: TcpStream,
    mut buf: Vec<u8>,
    started: Instant,
) -> Option<(ClientIo, Option<ClientIdentity>)> {
    let metrics = &shared.metrics.tls;
    let fail = |reason: HandshakeFailure, detail: &dyn std::fmt::Display| {
        debug!(?reason, %detail, "TLS handshake failed");
        metrics.failure(reason);
    };
    let first_byte = started + shared.head_limits.first_byte;
    let deadline = started + shared.head_limits.complete;
    if buf.is_empty() {
        match tokio::time::timeout_at(first_byte, tcp.read_buf(&mut buf)).await {
            Err(_) => {
                fail(HandshakeFailure::Timeout, &"no first byte");
                return None;
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                fail(HandshakeFailure::Closed, &"closed before a ClientHello");
                return None;
            }
            Ok(Ok(_)) => {}
        }
    }
    let read = hello::read(&mut tcp, &mut buf, hello::DEFAULT_LIMIT);
    match tokio::time::timeout_at(deadline, read).await {
        Err(_) => {
            fail(HandshakeFailure::Timeout, &"ClientHello incomplete");
            return None;
        }
        Ok(Err(e)) => {
            fail(hello_failure(&e), &e);
            // A plain-HTTP client gets an orderly close (FIN after its request is drained),
            // not bytes it would show as garbage; a TLS client, the alert that says why.
            close_refused(&mut tcp, Alert::for_refused_hello(&e, &buf)).await;
            return None;
        }
        Ok(Ok(_)) => {}
    }
    // Fallible: a failed handshake gives the socket back, to close it so that the alert
    // rustls wrote reaches the client (see `close_refused`).
    let accept = tls
        .acceptor()
        .accept(crate::prefixed::PrefixedIo::new(buf, tcp))
        .into_fallible();
    match tokio::time::timeout_at(deadline, accept).await {
        Err(_) => {
            fail(HandshakeFailure::Timeout, &"handshake incomplete");
            None
        }
        Ok(Err((e, mut io))) => {
            fail(HandshakeFailure::of(&e), &e);
            // rustls has already written its alert (tokio-rustls's last write after the
            // error); what is left is to close without destroying it.
            close_refused(&mut io, None).await;
            None
        }
        Ok(Ok(stream)) => {
            let conn = stream.get_ref().1;
            metrics.handshake(TlsVersion::of(conn));
            let identity = ClientIdentity::of(conn);
            Some((Io::Tls(Box::new(stream)), identity))
        }
    }
}

/// Ends a refused handshake: writes `alert` if there is one, sends FIN, then reads and drops
/// what the client still sends for a moment. Closing a socket with unread bytes (the rest of
/// an oversized ClientHello, a TLS 1.3 client's first request sent right after its Finished)
/// makes the kernel send a reset, which can destroy the alert before the client reads it.
pub(super) async fn close_refused<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    alert: Option<Alert>,
) {
    if let Some(alert) = alert {
        // Seven bytes into a socket that has sent (almost) nothing: never blocks for long, but
        // a client that reads nothing must not hold the task.
        let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(&alert.record())).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    linger(io).await;
}

pub(super) fn hello_failure(e: &hello::ReadHelloError) -> HandshakeFailure {
    use hello::{HelloError, ReadHelloError};
    match e {
        ReadHelloError::Hello(HelloError::NotTls(_)) => HandshakeFailure::NotTls,
        ReadHelloError::Hello(HelloError::Legacy(_)) => HandshakeFailure::LegacyVersion,
        ReadHelloError::Hello(HelloError::TooLarge { .. }) => HandshakeFailure::TooLarge,
        ReadHelloError::Hello(HelloError::Malformed(_) | HelloError::Truncated(_)) => {
            HandshakeFailure::Malformed
        }
        ReadHelloError::Closed(_) => HandshakeFailure::Closed,
        ReadHelloError::Io(_) => HandshakeFailure::Other,
    }
}
