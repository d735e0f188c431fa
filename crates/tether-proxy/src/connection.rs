//! One client connection, from accept to the end of its tunnel.
//!
//! The handshake future is boxed and dropped before the tunnel starts, so nothing it needed
//! (the head buffer, the parsed header table) stays alive for the life of the WebSocket.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, debug_span, info, Instrument};

use crate::backend::{Backend, BackendId, Lease};
use crate::balance::PickError;
use crate::client_ip::{parse_proxy_header, ProxyHeader};
use crate::config::Strategy;
use crate::handshake::{self, ReadError, Reject, RequestHead};
use crate::key::routing_key;
use crate::limits::Admitted;
use crate::shared::{ClientGauge, Shared};
use crate::tunnel::{self, Counters};

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
    /// The backend answered and the response went to the client; bytes flow from now on.
    Forwarded(Upstream),
    /// The request was for the admin pages under `stats_uri`; the head is handed over.
    Admin(Vec<u8>),
    /// Nothing more to do (the client left, or was answered by the proxy).
    Done,
}

struct Upstream {
    stream: TcpStream,
    lease: Lease,
    client_ip: IpAddr,
    status: u16,
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
pub async fn handle(shared: Arc<Shared>, mut client: TcpStream, peer: SocketAddr, id: ConnId) {
    let started = Instant::now();
    let gauge = ClientGauge::new(&shared);
    let Some(admitted) = shared.gate.admit() else {
        Box::pin(refuse(&shared, &mut client, Reject::MaxConn)).await;
        return;
    };
    // A debug span: at the default level it is disabled and costs nothing, where an enabled
    // span formatted and stored its fields for every connection (~2 % of a handshake's CPU).
    let span = debug_span!("conn", %id, %peer);
    let outcome = Box::pin(handshake(&shared, &mut client, peer, started))
        .instrument(span)
        .await;
    match outcome {
        Handshake::Forwarded(upstream) => {
            let open = Open {
                _gauge: gauge,
                _admitted: admitted,
            };
            tokio::spawn(relay(Tunnel::new(
                shared, client, upstream, id, started, open,
            )));
        }
        Handshake::Admin(head) => Box::pin(crate::admin::serve_on_main(shared, client, head)).await,
        Handshake::Done => {}
    }
}

async fn refuse(shared: &Shared, client: &mut TcpStream, reject: Reject) {
    debug!(status = reject.status(), %reject, "answered by the proxy");
    shared.metrics.reject(reject.metric());
    let _ = client
        .write_all(&reject.response(shared.config.limits.retry_after_secs))
        .await;
    let _ = client.shutdown().await;
    linger(client).await;
}

/// Closing a socket that still has unread request bytes sends a reset, which can destroy the
/// response before the client reads it. So after answering, read and discard what the client
/// still sends until it closes, for a short while.
async fn linger(client: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 512];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn handshake(
    shared: &Shared,
    client: &mut TcpStream,
    peer: SocketAddr,
    started: Instant,
) -> Handshake {
    let mut buf = Vec::with_capacity(1024);
    let mut peer_ip = peer.ip();
    if shared.config.listen.accept_proxy && shared.trusted.contains(peer_ip) {
        match read_proxy_header(shared, client, &mut buf, started).await {
            Ok(Some(source)) => peer_ip = source,
            Ok(None) => {}
            Err(reject) => {
                refuse(shared, client, reject).await;
                return Handshake::Done;
            }
        }
    }
    let head_len = match handshake::read_head(client, &mut buf, &shared.head_limits, started).await
    {
        Ok(n) => n,
        Err(ReadError::Closed | ReadError::Io(_)) => return Handshake::Done,
        Err(ReadError::Reject(r)) => {
            refuse(shared, client, r).await;
            return Handshake::Done;
        }
    };
    match route(shared, client, &buf, head_len, peer_ip).await {
        Ok(Routed::Backend(upstream)) => Handshake::Forwarded(upstream),
        Ok(Routed::Admin) => Handshake::Admin(buf),
        Err(Some(reject)) => {
            refuse(shared, client, reject).await;
            Handshake::Done
        }
        Err(None) => Handshake::Done,
    }
}

/// Reads a PROXY protocol header if the peer sent one; returns the original client address.
async fn read_proxy_header(
    shared: &Shared,
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    started: Instant,
) -> Result<Option<IpAddr>, Reject> {
    use tokio::io::AsyncReadExt;
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
    /// To a backend, whose response head the client already has.
    Backend(Upstream),
    /// Nowhere yet: it is for the admin pages under `stats_uri`.
    Admin,
}

/// Checks the request, chooses a backend, forwards the head and relays the response head.
/// `Err(None)`: the client is gone, nothing to answer.
async fn route(
    shared: &Shared,
    client: &mut TcpStream,
    buf: &[u8],
    head_len: usize,
    peer_ip: IpAddr,
) -> Result<Routed, Option<Reject>> {
    let head =
        RequestHead::parse(&buf[..head_len], shared.config.limits.max_headers).map_err(Some)?;
    if shared.is_stats_path(head.path(buf)) {
        return Ok(Routed::Admin);
    }
    let peer_trusted = shared.trusted.contains(peer_ip);
    let client_ip = shared.trusted.client_ip(peer_ip, &head.forwarded_for(buf));
    if let Some(rate) = &shared.rate {
        if !rate.allow(client_ip, std::time::Instant::now()) {
            return Err(Some(Reject::RateLimited));
        }
    }
    if head.websocket && !shared.origin_allowed(head.header(buf, "origin")) {
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
    let mut out = Vec::with_capacity(head_len + 128 + buf.len() - head_len);
    head.forward(buf, client_ip, peer_trusted, !head.websocket, &mut out);
    out.extend_from_slice(&buf[head_len..]);
    let sent_at = Instant::now();
    let (mut backend_stream, lease) = connect(
        shared,
        sticky.clone(),
        key.as_ref().map(|k| k.as_bytes()),
        &out,
    )
    .await?;
    let backend = lease.backend().clone();
    let response = read_response(shared, &mut backend_stream).await;
    let Some((mut response, head)) = response else {
        note_failure(shared, &backend, "no valid response head");
        return Err(Some(Reject::BackendFailed));
    };
    shared
        .metrics
        .handshake_seconds
        .observe(sent_at.elapsed().as_secs_f64());
    backend
        .metrics
        .record_handshake(&shared.metrics, &backend.name, head.status);
    if head.status >= 500 {
        note_failure(shared, &backend, "5xx response to a handshake");
    } else {
        backend.record_success(shared.config.health.rise);
    }
    let cookie = &shared.config.balance.cookie;
    let cookie_ok = head.status < 400 && !cookie.is_empty();
    if cookie_ok && sticky.as_ref().is_none_or(|b| !Arc::ptr_eq(b, &backend)) {
        let line = format!(
            "Set-Cookie: {cookie}={}; Path=/; HttpOnly; SameSite=Lax",
            backend.cookie
        );
        handshake::insert_header(&mut response, head.len, &line);
    }
    client.write_all(&response).await.map_err(|_| None)?;
    Ok(Routed::Backend(Upstream {
        stream: backend_stream,
        lease,
        client_ip,
        status: head.status,
    }))
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
) -> Result<(TcpStream, Lease), Option<Reject>> {
    let set = shared.registry.snapshot();
    let mut tried: Vec<BackendId> = Vec::new();
    let attempts = shared.config.balance.retries + 1;
    let mut sticky = sticky;
    for attempt in 0..attempts {
        let lease = match sticky.take() {
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
        if let Some(id) = set.ids().find(|id| Arc::ptr_eq(set.get(*id), &backend)) {
            if !tried.contains(&id) {
                tried.push(id);
            }
        }
        match open(backend.addr, head, shared.config.timeouts.connect).await {
            Ok(stream) => return Ok((stream, lease)),
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

fn note_failure(shared: &Shared, backend: &Backend, cause: &str) {
    debug!(backend = %backend.name, cause, "backend failure");
    backend.metrics.failures.inc();
    let transition = backend.record_failure(shared.config.health.fall);
    crate::health::log_transition(
        backend,
        transition,
        Some(std::io::Error::other(cause.to_owned())),
    );
}

/// Reads the backend's response head. Returns the bytes read (head plus whatever followed it)
/// and the parsed head.
async fn read_response(
    shared: &Shared,
    backend: &mut TcpStream,
) -> Option<(Vec<u8>, handshake::ResponseHead)> {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + shared.config.timeouts.response;
    let mut buf = Vec::with_capacity(512);
    loop {
        let n = tokio::time::timeout_at(deadline, backend.read_buf(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if let Some(head) = handshake::parse_response(&buf) {
            return Some((buf, head));
        }
        if buf.len() > shared.config.limits.max_head_bytes {
            return None;
        }
    }
}

/// What a connection holds on its backend after the response head.
enum Hold {
    /// A WebSocket: a lease, counted as a live tunnel.
    Tunnel(Lease),
    /// The rest of one plain HTTP exchange: not a tunnel, so least-connections ignores it.
    Request(Arc<Backend>),
}

impl Hold {
    fn backend(&self) -> &Arc<Backend> {
        match self {
            Hold::Tunnel(lease) => lease.backend(),
            Hold::Request(backend) => backend,
        }
    }
}

/// Everything the tunnel's task owns. Kept in one place (and borrowed, not destructured) so
/// the task's state machine stores each piece once.
struct Tunnel {
    shared: Arc<Shared>,
    client: TcpStream,
    backend: TcpStream,
    hold: Hold,
    client_ip: IpAddr,
    id: ConnId,
    started: Instant,
    _open: Open,
}

impl Tunnel {
    fn new(
        shared: Arc<Shared>,
        client: TcpStream,
        upstream: Upstream,
        id: ConnId,
        started: Instant,
        open: Open,
    ) -> Tunnel {
        let hold = if upstream.status == 101 {
            Hold::Tunnel(upstream.lease)
        } else {
            Hold::Request(upstream.lease.backend().clone())
        };
        Tunnel {
            shared,
            client,
            backend: upstream.stream,
            hold,
            client_ip: upstream.client_ip,
            id,
            started,
            _open: open,
        }
    }
}

/// After the response head: the tunnel for a WebSocket, or the rest of one plain HTTP exchange.
async fn relay(t: Tunnel) {
    let backend = t.hold.backend();
    let counters = Counters {
        to_backend: &backend.metrics.bytes_to_backend,
        to_client: &backend.metrics.bytes_to_client,
    };
    let idle = Some(t.shared.config.timeouts.tunnel_idle).filter(|d| !d.is_zero());
    let outcome = tunnel::run(&t.client, &t.backend, idle, &counters).await;
    match &t.hold {
        Hold::Tunnel(_) => {
            t.shared
                .metrics
                .tunnels_ended
                .get_or_create(&crate::metrics::EndLabels {
                    reason: outcome.reason,
                })
                .inc();
            // Plain values where they do (an integer, a `&str`): the line is written once
            // per tunnel, and a `Display` wrapper costs a formatting pass per field.
            info!(
                conn = t.id.0,
                client = %t.client_ip,
                backend = &*backend.name,
                duration = ?round(t.started.elapsed()),
                bytes_to_backend = outcome.to_backend,
                bytes_to_client = outcome.to_client,
                reason = ?outcome.reason,
                error = ?outcome.error,
                "tunnel ended"
            );
        }
        Hold::Request(_) => {
            debug!(conn = %t.id, client = %t.client_ip, backend = %backend.name, "request done")
        }
    }
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
        let shared = std::sync::Arc::new(crate::shared::Shared::new(config, None));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (backend, _) = l.accept().await.unwrap();
        let peer = client.local_addr().unwrap();
        let set = shared.registry.snapshot();
        let upstream = super::Upstream {
            stream: backend,
            lease: set.backends[0].lease(),
            client_ip: peer.ip(),
            status: 101,
        };
        let open = super::Open {
            _gauge: crate::shared::ClientGauge::new(&shared),
            _admitted: shared.gate.admit().unwrap(),
        };
        let tunnel = super::Tunnel::new(
            shared.clone(),
            client,
            upstream,
            super::ConnId(1),
            tokio::time::Instant::now(),
            open,
        );
        let task = super::relay(tunnel);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1024, "tunnel task state is {size} bytes");
    }
}
