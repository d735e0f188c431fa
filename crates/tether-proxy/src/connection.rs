//! One client connection, from accept to the end of its tunnel.
//!
//! The handshake future is boxed and dropped before the tunnel starts, so nothing it needed
//! (the head buffer, the parsed header table) stays alive for the life of the WebSocket.
//! Every phase before the tunnel ends when the proxy's
//! [`CloseSignal`](crate::tunnel::CloseSignal) is raised (shutdown past the grace period);
//! the tunnel registers in the [`TunnelTable`](crate::tunnel::TunnelTable), through which a
//! drain, a rebalance or a shutdown closes it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, debug_span, info, Instrument};

use crate::backend::{Backend, BackendId, Lease};
use crate::balance::PickError;
use crate::body::Body;
use crate::client_ip::{parse_proxy_header, ProxyHeader};
use crate::config::Strategy;
use crate::exchange::{self, note_failure, Sent, Switched};
use crate::frontend::Frontend;
use crate::handshake::{self, ReadError, Reject, RequestHead, Via};
use crate::key::routing_key;
use crate::limits::{Admitted, Pending};
use crate::shared::{ClientGauge, Shared};
use crate::tls::{hello, ClientIdentity, HandshakeFailure, TlsVersion};
use crate::transport::{BackendIo, ClientIo, Io};
use crate::tunnel::{self, Closer, Counters};

mod passthrough;
mod termination;

use passthrough::passthrough;
use termination::{accept_tls, close_refused, hello_failure};

/// The identifier of a client connection in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the handshake produced.
enum Handshake {
    /// The request went to a backend; its answer is awaited next (counted as pending).
    Sent(Sent, Option<Pending>),
    /// The request was for the admin pages under `stats_uri`; the head is handed over.
    Admin(Vec<u8>),
    /// A `tls-passthrough` connection whose ClientHello went to a backend: tunnel now.
    Passthrough(Switched),
    /// Nothing more to do (the client left, or was answered by the proxy).
    Done,
}

/// What keeps a connection counted while it is open.
struct Open {
    _gauge: ClientGauge,
    _admitted: Admitted,
}

/// Serves one client connection through its handshake, then hands it to a task of its own.
///
/// The task that lives as long as the WebSocket is memory per idle tunnel, so it holds only
/// the tunnel's state: this future, with room for every phase of the handshake, ends here,
/// and the phases that need buffers are boxed and freed as soon as they are over.
pub async fn handle(
    shared: Arc<Shared>,
    frontend: Arc<Frontend>,
    tcp: TcpStream,
    peer: SocketAddr,
    id: ConnId,
) {
    let started = Instant::now();
    let gauge = ClientGauge::new(&shared);
    let Some(admitted) = shared.gate.admit() else {
        let mut client: ClientIo = Io::Plain(tcp);
        if frontend.tls.is_none() {
            Box::pin(refuse(&shared, &mut client, Reject::MaxConn)).await;
        }
        return;
    };
    // A debug span: at the default level it is disabled and costs nothing, where an enabled
    // span formatted and stored its fields for every connection (~2 % of a handshake's CPU).
    let span = debug_span!("conn", %id, %peer);
    // Both phases in one future, so listening for the close signal costs one registration.
    let phases = async {
        let (client, handshake) = Box::pin(handshake(&shared, &frontend, tcp, peer, started))
            .instrument(span.clone())
            .await;
        let mut client = client?;
        let next = match handshake {
            Handshake::Sent(sent, pending) => {
                let switched = Box::pin(exchange::run(&shared, &mut client, sent))
                    .instrument(span)
                    .await;
                drop(pending);
                switched.map(Next::Tunnel)
            }
            Handshake::Admin(head) => Some(Next::Admin(head)),
            Handshake::Passthrough(switched) => Some(Next::Tunnel(switched)),
            Handshake::Done => None,
        };
        Some((client, next?))
    };
    match until_closed(&shared, id, phases).await.flatten() {
        Some((client, Next::Tunnel(switched))) => {
            let open = Open {
                _gauge: gauge,
                _admitted: admitted,
            };
            tokio::spawn(relay(Tunnel::new(
                shared, client, switched, id, started, open,
            )));
        }
        Some((client, Next::Admin(head))) => {
            let admin = Box::pin(crate::admin::serve_on_main(shared.clone(), client, head));
            until_closed(&shared, id, admin).await;
        }
        None => {}
    }
}

/// What a connection does after its handshake.
enum Next {
    Tunnel(Switched),
    Admin(Vec<u8>),
}

/// Runs `phase` unless the proxy closes its connections first (`None` then; dropping the
/// phase closes its sockets).
async fn until_closed<T>(
    shared: &Shared,
    id: ConnId,
    phase: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        out = phase => Some(out),
        reason = shared.closing.closed(id.0) => {
            debug!(conn = id.0, ?reason, "closed before its tunnel started");
            None
        }
    }
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut S,
    reject: Reject,
) {
    debug!(status = reject.status(), %reject, "answered by the proxy");
    shared.metrics.reject(reject.metric());
    let retry_after = match reject {
        Reject::BackendThrottled | Reject::TooManyPending => {
            crate::limits::jittered_retry_after(shared.config.limits.retry_after_secs)
        }
        _ => shared.config.limits.retry_after_secs,
    };
    let _ = client.write_all(&reject.response(retry_after)).await;
    let _ = client.shutdown().await;
    linger(client).await;
}

/// Closing a socket that still has unread request bytes sends a reset, which can destroy the
/// response before the client reads it. So after answering, read and discard what the client
/// still sends until it closes, for a short while.
pub(crate) async fn linger<S: AsyncRead + Unpin>(client: &mut S) {
    let mut sink = [0u8; 512];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn handshake(
    shared: &Shared,
    frontend: &Frontend,
    mut tcp: TcpStream,
    peer: SocketAddr,
    started: Instant,
) -> (Option<ClientIo>, Handshake) {
    if frontend.mode == crate::config::ListenMode::TlsPassthrough {
        return match passthrough(shared, frontend, tcp, peer, started).await {
            Some((client, switched)) => (Some(client), Handshake::Passthrough(switched)),
            None => (None, Handshake::Done),
        };
    }
    let mut buf = Vec::with_capacity(1024);
    let mut peer_ip = peer.ip();
    if frontend.accept_proxy && frontend.trusted.contains(peer_ip) {
        match read_proxy_header(shared, &mut tcp, &mut buf, started).await {
            Ok(Some(source)) => peer_ip = source,
            Ok(None) => {}
            Err(reject) => {
                if frontend.tls.is_none() {
                    refuse(shared, &mut tcp, reject).await;
                }
                return (None, Handshake::Done);
            }
        }
    }
    let mut via = Via::default();
    let mut client: ClientIo = match &frontend.tls {
        None => Io::Plain(tcp),
        Some(tls) => match accept_tls(shared, tls, tcp, std::mem::take(&mut buf), started).await {
            Some((stream, identity)) => {
                via.https = true;
                via.client_cert = identity.map(|id| id.header_value());
                stream
            }
            None => return (None, Handshake::Done),
        },
    };
    let head_len =
        match handshake::read_head(&mut client, &mut buf, &shared.head_limits, started).await {
            Ok(n) => n,
            Err(ReadError::Closed | ReadError::Io(_)) => return (None, Handshake::Done),
            Err(ReadError::Reject(r)) => {
                refuse(shared, &mut client, r).await;
                return (None, Handshake::Done);
            }
        };
    let outcome = match route(shared, frontend, &buf, head_len, peer_ip, &via).await {
        Ok(Routed::Backend(sent, pending)) => Handshake::Sent(sent, pending),
        Ok(Routed::Admin) => Handshake::Admin(buf),
        Err(Some(reject)) => {
            refuse(shared, &mut client, reject).await;
            Handshake::Done
        }
        Err(None) => Handshake::Done,
    };
    (Some(client), outcome)
}

/// Reads a PROXY protocol header if the peer sent one; returns the original client address.
async fn read_proxy_header(
    shared: &Shared,
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    started: Instant,
) -> Result<Option<IpAddr>, Reject> {
    let deadline = started + shared.head_limits.complete;
    loop {
        match parse_proxy_header(buf) {
            ProxyHeader::Complete { len, source } => {
                buf.drain(..len);
                return Ok(source.map(|s| s.ip()));
            }
            ProxyHeader::Invalid => {
                return Err(Reject::BadRequest("invalid PROXY protocol header"))
            }
            ProxyHeader::Incomplete if buf.len() > 536 => {
                return Err(Reject::BadRequest("PROXY protocol header too long"))
            }
            ProxyHeader::Incomplete => {}
        }
        match tokio::time::timeout_at(deadline, client.read_buf(buf)).await {
            Err(_) => return Err(Reject::Timeout),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Err(Reject::BadRequest("connection closed in PROXY header"))
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// Where a request went.
enum Routed {
    /// To a backend, which has the head and the body bytes that came with it.
    Backend(Sent, Option<Pending>),
    /// Nowhere yet: it is for the admin pages under `stats_uri`.
    Admin,
}

/// Checks the request, chooses a backend and forwards the head (with the part of the body
/// that came with it). `Err(None)`: the client is gone, nothing to answer.
async fn route(
    shared: &Shared,
    frontend: &Frontend,
    buf: &[u8],
    head_len: usize,
    peer_ip: IpAddr,
    via: &Via,
) -> Result<Routed, Option<Reject>> {
    let head =
        RequestHead::parse(&buf[..head_len], shared.config.limits.max_headers).map_err(Some)?;
    if shared.is_stats_path(head.path(buf)) {
        return Ok(Routed::Admin);
    }
    let peer_trusted = frontend.trusted.contains(peer_ip);
    let client_ip = frontend
        .trusted
        .client_ip(peer_ip, &head.forwarded_for(buf));
    if let Some(rate) = &shared.rate {
        if !rate.allow(client_ip, std::time::Instant::now()) {
            return Err(Some(Reject::RateLimited));
        }
    }
    if head.websocket && !frontend.origin_allowed(head.header(buf, "origin")) {
        return Err(Some(Reject::Origin));
    }
    let sticky = sticky_backend(shared, &head, buf);
    let key = shared
        .config
        .balance
        .key
        .as_ref()
        .filter(|_| shared.config.balance.strategy == Strategy::ConsistentHash)
        .and_then(|source| routing_key(source, &head, buf, client_ip));
    // Only the body of this request goes up with its head. What follows is a WebSocket's
    // early frames (held until `101`) or a second request (never forwarded).
    let after_head = &buf[head_len..];
    let mut upload = Body::new(head.framing);
    let body_len = upload
        .feed(after_head)
        .map_err(|_| Some(Reject::BadRequest("malformed chunked body")))?;
    let early = if head.websocket {
        after_head[body_len..].to_vec()
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(head_len + 128 + body_len);
    head.forward_via(buf, client_ip, peer_trusted, !head.websocket, via, &mut out);
    out.extend_from_slice(&after_head[..body_len]);
    // Counted from before the backend is chosen, so a storm is held back before it connects.
    let pending = match &shared.pending {
        Some(gate) => Some(gate.admit().ok_or(Some(Reject::TooManyPending))?),
        None => None,
    };
    let sent_at = Instant::now();
    let (backend_stream, lease) = connect(
        shared,
        sticky.clone(),
        key.as_ref().map(|k| k.as_bytes()),
        &out,
        false,
    )
    .await?;
    let backend = lease.backend();
    let cookie = &shared.config.balance.cookie;
    let cookie = (!cookie.is_empty() && sticky.as_ref().is_none_or(|b| !Arc::ptr_eq(b, backend)))
        .then(|| {
            // Over TLS the cookie is `Secure`, so a browser never sends it in clear text.
            let secure = if via.https { "; Secure" } else { "" };
            format!(
                "Set-Cookie: {cookie}={}; Path=/; HttpOnly; SameSite=Lax{secure}",
                backend.cookie
            )
        });
    Ok(Routed::Backend(
        Sent {
            backend: backend_stream,
            lease,
            client_ip,
            websocket: head.websocket,
            head_request: head.is_head(buf),
            upload,
            early,
            cookie,
            sent_at,
        },
        pending,
    ))
}

/// The backend named by the LB-inserted cookie, if it still takes connections.
fn sticky_backend(shared: &Shared, head: &RequestHead, buf: &[u8]) -> Option<Arc<Backend>> {
    let name = &shared.config.balance.cookie;
    if name.is_empty() {
        return None;
    }
    let value = std::str::from_utf8(head.cookie(buf, name)?).ok()?;
    let set = shared.registry.snapshot();
    set.by_cookie(value).filter(|b| b.accepts_new()).cloned()
}

/// Connects to a chosen backend and sends it the request head, trying others on failure (the
/// client never sees a failed connect while another backend is left).
async fn connect(
    shared: &Shared,
    sticky: Option<Arc<Backend>>,
    key: Option<&[u8]>,
    head: &[u8],
    raw: bool,
) -> Result<(BackendIo, Lease), Option<Reject>> {
    let set = shared.registry.snapshot();
    let mut tried: Vec<BackendId> = Vec::new();
    let attempts = shared.config.balance.retries + 1;
    let mut sticky = sticky;
    for attempt in 0..attempts {
        let mut lease = match sticky.take() {
            Some(b) => b.lease(),
            None => match shared.balancer.pick(&set, key, &tried) {
                Ok((id, lease)) => {
                    tried.push(id);
                    lease
                }
                Err(PickError::NoneUp | PickError::AllFull) => return Err(Some(Reject::NoBackend)),
            },
        };
        if attempt > 0 {
            shared.metrics.retries.inc();
        }
        let backend = lease.backend().clone();
        if let Some(rate) = &backend.handshake_rate {
            if !rate.allow(std::time::Instant::now()) {
                backend.metrics.throttled.inc();
                return Err(Some(Reject::BackendThrottled));
            }
        }
        if let Some(id) = set.ids().find(|id| Arc::ptr_eq(set.get(*id), &backend)) {
            if !tried.contains(&id) {
                tried.push(id);
            }
        }
        let opened = match backend.tls.as_ref().filter(|_| !raw) {
            None => open(backend.addr, head, shared.config.timeouts.connect)
                .await
                .map(Io::Plain),
            Some(tls) => open_tls(backend.addr, tls, head, shared.config.timeouts.connect).await,
        };
        match opened {
            Ok(stream) => {
                lease.set_key(key);
                return Ok((stream, lease));
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                note_failure(shared, &backend, "connect timed out")
            }
            Err(e) => note_failure(shared, &backend, &e.to_string()),
        }
    }
    Err(Some(Reject::NoBackend))
}

/// Opens a connection to `addr` and writes `head` on it, within `limit`.
///
/// The head is sent right after `connect()` returns, before the socket is registered with the
/// runtime: on a nearby backend (loopback, one LAN hop) the TCP handshake has usually completed
/// by then, so the head leaves at once instead of after a wait for writability, a poll and a
/// `getsockopt(SO_ERROR)`. When it has not (`EAGAIN`), the rest is written the ordinary way; a
/// refused connection shows as the error of that first send.
async fn open(addr: SocketAddr, head: &[u8], limit: Duration) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let sent = match socket.send_with_flags(head, libc::MSG_NOSIGNAL) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    let mut stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    if sent < head.len() {
        tokio::time::timeout(limit, stream.write_all(&head[sent..]))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
    }
    Ok(stream)
}

/// Opens a TLS connection to `addr` (TCP connect and TLS handshake within `limit`) and
/// writes `head` on it. A failed handshake (an untrusted certificate, a wrong name) is a
/// failed connect: the backend is marked and another one tried.
async fn open_tls(
    addr: SocketAddr,
    tls: &crate::tls::BackendConnector,
    head: &[u8],
    limit: Duration,
) -> std::io::Result<BackendIo> {
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut stream = tls.connect(tcp).await?;
        stream.write_all(head).await?;
        stream.flush().await?;
        Ok::<_, std::io::Error>(stream)
    };
    let stream = tokio::time::timeout(limit, connect)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(Io::Tls(Box::new(stream)))
}

/// Everything the tunnel's task owns. Kept in one place (and borrowed, not destructured) so
/// the task's state machine stores each piece once.
struct Tunnel {
    shared: Arc<Shared>,
    client: ClientIo,
    backend: BackendIo,
    /// Counts the tunnel on its backend (least-connections, `maxconn`) while it lives.
    lease: Lease,
    client_ip: IpAddr,
    id: ConnId,
    started: Instant,
    /// The backend→client stream's place in its WebSocket frames (`None`: not frames, the
    /// tunnel is cut rather than closed with a close frame).
    frames: Option<crate::tunnel::FrameTracker>,
    _open: Open,
}

impl Tunnel {
    fn new(
        shared: Arc<Shared>,
        client: ClientIo,
        switched: Switched,
        id: ConnId,
        started: Instant,
        open: Open,
    ) -> Tunnel {
        Tunnel {
            shared,
            client,
            backend: switched.backend,
            lease: switched.lease,
            client_ip: switched.client_ip,
            id,
            started,
            frames: switched.frames,
            _open: open,
        }
    }
}

/// The tunnel of a WebSocket, after `101`.
async fn relay(mut t: Tunnel) {
    let backend: &Backend = t.lease.backend();
    let counters = Counters {
        to_backend: &backend.metrics.bytes_to_backend,
        to_client: &backend.metrics.bytes_to_client,
    };
    let idle = Some(t.shared.config.timeouts.tunnel_idle).filter(|d| !d.is_zero());
    let registration = t
        .shared
        .tunnels
        .register(t.id.0, t.lease.backend().clone(), t.lease.key());
    // A shutdown past its grace asks every registered tunnel after raising the signal: a
    // tunnel registering meanwhile sees the signal here.
    if let Some(reason) = t.shared.closing.reason() {
        registration.ticket().request(reason);
    }
    let closer = Closer {
        ticket: registration.ticket(),
        frames: t.frames,
    };
    // Plain on both sides: the readiness-driven tunnel that holds no buffer while idle.
    // Otherwise TLS is involved, and bytes go through the sessions' streams.
    let outcome = match (&mut t.client, &mut t.backend) {
        (Io::Plain(client), Io::Plain(backend)) => {
            tunnel::run(client, backend, idle, &counters, closer).await
        }
        (client, backend) => tunnel::run_stream(client, backend, idle, &counters, closer).await,
    };
    t.shared
        .metrics
        .tunnels_ended
        .get_or_create(&crate::metrics::EndLabels {
            reason: outcome.reason,
        })
        .inc();
    // Plain values where they do (an integer, a `&str`): the line is written once per
    // tunnel, and a `Display` wrapper costs a formatting pass per field.
    info!(
        conn = t.id.0,
        client = %t.client_ip,
        backend = &*backend.name,
        duration = ?round(t.started.elapsed()),
        bytes_to_backend = outcome.to_backend,
        bytes_to_client = outcome.to_client,
        reason = ?outcome.reason,
        error = ?outcome.error,
        goodbye = ?outcome.goodbye,
        "tunnel ended"
    );
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    /// The tunnel task lives as long as the WebSocket, so its state is memory per idle tunnel.
    /// An inline buffer or a duplicated stream slipping in would show here first.
    #[tokio::test]
    async fn tunnel_task_state_stays_small() {
        let config =
            crate::Config::from_toml("[[backend]]\nname = \"b\"\naddr = \"127.0.0.1:1\"\n")
                .unwrap();
        let shared = std::sync::Arc::new(crate::shared::Shared::new(config, None).unwrap());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (backend, _) = l.accept().await.unwrap();
        let peer = client.local_addr().unwrap();
        let set = shared.registry.snapshot();
        let switched = crate::exchange::Switched {
            backend: crate::transport::Io::Plain(backend),
            lease: set.backends[0].lease(),
            client_ip: peer.ip(),
            frames: Some(Default::default()),
        };
        let open = super::Open {
            _gauge: crate::shared::ClientGauge::new(&shared),
            _admitted: shared.gate.admit().unwrap(),
        };
        let tunnel = super::Tunnel::new(
            shared.clone(),
            crate::transport::Io::Plain(client),
            switched,
            super::ConnId(1),
            tokio::time::Instant::now(),
            open,
        );
        let task = super::relay(tunnel);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1024, "tunnel task state is {size} bytes");
    }
}
