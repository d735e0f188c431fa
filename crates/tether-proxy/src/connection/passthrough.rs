//! `tls-passthrough` listeners: route on the ClientHello's server name, tunnel the TLS bytes.

use super::*;
use crate::tls::alert::Alert;

/// A `tls-passthrough` connection: reads the ClientHello (under the first-byte and head
/// deadlines, bounded in size), routes on its server name (`key = "sni"` for consistent
/// hashing; `default_backend` or a close when there is none), replays every byte read to the
/// backend and tunnels at L4. The backend terminates TLS itself; `tls` on a backend is not
/// used here, since the bytes are already TLS.
pub(super) async fn passthrough(
    shared: &Shared,
    frontend: &Frontend,
    mut tcp: TcpStream,
    peer: SocketAddr,
    started: Instant,
) -> Option<(ClientIo, Switched)> {
    let metrics = &shared.metrics.tls;
    let mut buf = Vec::with_capacity(2048);
    let first = started + shared.head_limits.first_byte;
    let deadline = started + shared.head_limits.complete;
    let refuse_with = |reason: HandshakeFailure, detail: &dyn std::fmt::Display| {
        debug!(?reason, %detail, "passthrough refused");
        metrics.failure(reason);
    };
    let mut client_ip = peer.ip();
    if frontend.accept_proxy && frontend.trusted.contains(client_ip) {
        // The PROXY header is the proxy's, not the backend's: read and drop it; what
        // follows it is the start of the ClientHello.
        match read_proxy_header(shared, &mut tcp, &mut buf, started).await {
            Ok(Some(source)) => client_ip = source,
            Ok(None) => {}
            Err(reject) => {
                debug!(%reject, "passthrough refused");
                return None;
            }
        }
    }
    let got = if buf.is_empty() {
        tokio::time::timeout_at(first, tcp.read_buf(&mut buf)).await
    } else {
        Ok(Ok(buf.len()))
    };
    match got {
        Ok(Ok(n)) if n > 0 => {}
        Err(_) => {
            refuse_with(HandshakeFailure::Timeout, &"no first byte");
            return None;
        }
        _ => {
            refuse_with(HandshakeFailure::Closed, &"closed before a ClientHello");
            return None;
        }
    }
    let read = hello::read(&mut tcp, &mut buf, hello::DEFAULT_LIMIT);
    let hello = match tokio::time::timeout_at(deadline, read).await {
        Err(_) => {
            refuse_with(HandshakeFailure::Timeout, &"ClientHello incomplete");
            return None;
        }
        Ok(Err(e)) => {
            refuse_with(hello_failure(&e), &e);
            close_refused(&mut tcp, Alert::for_refused_hello(&e, &buf)).await;
            return None;
        }
        Ok(Ok(hello)) => hello,
    };
    let set = shared.registry.snapshot();
    let (backend, lease) = match &hello.sni {
        Some(name) => {
            let key = (shared.config.balance.key == Some(crate::config::KeySource::Sni)
                && shared.config.balance.strategy == Strategy::ConsistentHash)
                .then(|| name.as_ref().as_bytes());
            connect(shared, None, key, &buf, true).await.ok()?
        }
        None => {
            let named = frontend
                .default_backend
                .as_deref()
                .and_then(|n| set.by_name(n))
                .filter(|b| b.accepts_new())
                .cloned();
            let Some(named) = named else {
                refuse_with(
                    HandshakeFailure::NoServerName,
                    &"no SNI and no default_backend",
                );
                close_refused(&mut tcp, Some(Alert::missing_server_name(&buf))).await;
                return None;
            };
            connect(shared, Some(named), None, &buf, true).await.ok()?
        }
    };
    debug!(sni = ?hello.sni, backend = %lease.backend().name, "passthrough routed");
    Some((
        Io::Plain(tcp),
        Switched {
            backend,
            lease,
            client_ip,
            frames: None,
        },
    ))
}
