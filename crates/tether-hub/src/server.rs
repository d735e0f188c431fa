//! Starting and stopping a node: the listener, the router, the accept loop, the handle.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::access::Gate;
use crate::api::{self, ApiError};
use crate::auth::{check_protected_mode, Unprotected};
use crate::broker::health;
use crate::broker::Broker;
use crate::config::{ConfigError, HubConfig};
use crate::node::{Lifecycle, Node};
use crate::session;

/// Frames above `max_message_size` × this are refused by the WebSocket layer itself (the
/// connection closes with 1009); between the two limits the hub answers `too_large` and
/// the connection lives on.
const HARD_LIMIT_FACTOR: usize = 16;

/// Bytes of outgoing frames tungstenite gathers before writing them to the socket (a
/// flush writes sooner); tungstenite's own default, named because the bound below is
/// counted from it.
const WRITE_BUFFER: usize = 128 * 1024;

/// Room above one full write buffer and one largest frame in a connection's write buffer.
/// tungstenite answers every ping it reads by queueing a pong in that buffer, even while
/// the client reads nothing, so a client pinging without reading grew it without limit
/// (3 M pings took a hub from 103 MB to 502 MB). Bounded, the buffer stops taking pongs
/// when full (tungstenite keeps only the newest one pending) and the hub's own writes
/// fail, which drops the client.
const WRITE_SLACK: usize = 16 * 1024;

/// How long a starting node waits for its first word from the broker, so `/health` is
/// right from the start when the broker answers quickly.
const FIRST_PROBE_PATIENCE: Duration = Duration::from_secs(1);

/// How long `bind` keeps retrying an address still held by a node that was just aborted.
const REBIND_PATIENCE: Duration = Duration::from_secs(3);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("invalid hub configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Unprotected(#[from] Unprotected),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running node. Dropping the handle leaves the node running; call [`HubHandle::shutdown`]
/// or [`HubHandle::abort`] to stop it.
pub struct HubHandle {
    node: Arc<Node>,
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl HubHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn name(&self) -> &str {
        self.node.name()
    }

    /// Stops like a crash: every client is dropped at once without a close frame and the
    /// listener closes. Clients notice a broken connection and resume elsewhere.
    pub fn abort(&self) {
        self.node.lifecycle.send_replace(Lifecycle::Aborted);
        self.accept.abort();
    }

    /// Stops gracefully: no new connections, `/health` turns 503, each client is closed
    /// with 1012 at a random moment within the shutdown window; returns when all are gone.
    pub async fn shutdown(self) {
        let window = self.node.config.shutdown_window;
        tracing::info!(node = %self.node.name(), ?window, "draining");
        self.node
            .lifecycle
            .send_replace(Lifecycle::Draining { window });
        let grace = window + Duration::from_secs(3);
        if tokio::time::timeout(grace, self.node.sessions_closed())
            .await
            .is_err()
        {
            tracing::warn!("clients still open after the shutdown window; dropping them");
        }
        self.node.lifecycle.send_replace(Lifecycle::Aborted);
        self.accept.abort();
        let _ = self.accept.await;
    }
}

/// Starts a node on `config.listen`, sharing `broker` with any other node given the same
/// broker. `extra_routes` are merged into the node's router (the demo serves its pages so).
pub async fn serve(
    config: HubConfig,
    broker: Arc<dyn Broker>,
    extra_routes: Option<Router>,
) -> Result<HubHandle, HubError> {
    config.validate()?;
    check_protected_mode(
        config.listen,
        config.auth.tokens_configured(),
        config.auth.allow_anonymous,
    )?;
    let listener = bind(config.listen).await?;
    let local_addr = listener.local_addr().map_err(|source| HubError::Bind {
        addr: config.listen,
        source,
    })?;
    let gate = Gate::start(&config.auth).await;
    let watched = Arc::new(health::Watched::new(broker));
    let node = Node::new(config, watched.clone(), gate);
    watched.report_to(node.metrics.clone());
    // A broker that is down does not stop the node: it starts, says so on /health, and
    // serves once the broker comes.
    watched
        .start_probing(node.lifecycle.subscribe(), FIRST_PROBE_PATIENCE)
        .await;
    let mut router = routes(node.clone());
    if let Some(extra) = extra_routes {
        router = router.merge(extra);
    }
    tracing::info!(
        node = %node.name(),
        addr = %local_addr,
        broker = node.broker.kind(),
        tokens = node.gate.checks_tokens(),
        tls = node.config.tls.is_some(),
        anonymous = node.gate.anonymous_may_connect(),
        "hub listening"
    );
    let timeouts = Timeouts {
        head: node.config.head_timeout,
        idle: node.config.idle_timeout,
    };
    let tls = node.config.tls.as_ref().map(|tls| tls.acceptor());
    let accept = tokio::spawn(accept_loop(
        listener,
        router,
        tls,
        timeouts,
        node.lifecycle.subscribe(),
    ));
    Ok(HubHandle {
        node,
        local_addr,
        accept,
    })
}

fn routes(node: Arc<Node>) -> Router {
    // Twice the message limit, so a body just over it still reaches the handler and gets
    // the JSON `too_large` answer rather than the framework's plain-text one.
    let body_limit = DefaultBodyLimit::max(node.config.max_message_size.saturating_mul(2));
    Router::new()
        .route("/ws", get(upgrade))
        .route("/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .route("/api/publish", post(api::publish))
        .route("/api/history/{channel}", get(api::history))
        .fallback(api::not_found)
        .layer(axum::middleware::map_response(api::json_errors))
        .layer(body_limit)
        .with_state(node)
}

/// Bytes a session reads from its socket at a time. tungstenite zero-fills the free part of
/// its read buffer before every read, and a session is polled for reading each time a message
/// is delivered to it; with the default 128 KiB, that zeroing was half of a fan-out node's
/// CPU (perf, 1000 subscribers); at 4 KiB it was still 2–5 %. Client frames (subscribe,
/// publish) are small, and a larger one simply takes several reads. It is also what an
/// idle session holds.
const READ_BUFFER: usize = 1024;

/// The versioned name of the hub's wire protocol (docs/protocol.md). A client that offers it
/// gets it back in `Sec-WebSocket-Protocol`; one that offers none is still served, as before.
const SUBPROTOCOL: &str = "tether.v1";

/// `/ws?token=…`: the connection token, for clients that cannot send a `connect` frame
/// first. (Prefer the frame: URLs end up in logs.)
#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
}

async fn upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            let message = format!("/ws takes a WebSocket handshake: {}", rejection.body_text());
            return ApiError::new(rejection.status(), "not_websocket", message).into_response();
        }
    };
    if *node.lifecycle.borrow() != Lifecycle::Running {
        let error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "node is shutting down",
        );
        return error.into_response();
    }
    // An address that failed authentication too often is refused here, before the
    // WebSocket handshake and any token work: its flood costs the hub one HTTP answer.
    let client = node.gate.client_addr(peer.ip(), &headers);
    if let Err(wait) = node.gate.limiter.check(client) {
        node.metrics.auth_limited.inc();
        let retry = wait.as_secs().max(1).to_string();
        let error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            "too many failed authentications from this address; wait and retry",
        );
        let mut response = error.into_response();
        if let Ok(value) = retry.parse() {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let handshake = session::Handshake {
        token: query.ok().and_then(|Query(q)| q.token),
        client,
    };
    let hard_limit = node
        .config
        .max_message_size
        .saturating_mul(HARD_LIMIT_FACTOR);
    upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + hard_limit + WRITE_SLACK)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |ws| session::run(ws, node, handshake))
}

/// Binds with SO_REUSEADDR, retrying briefly while an aborted node's listener on the same
/// address is still being torn down.
async fn bind(addr: SocketAddr) -> Result<TcpListener, HubError> {
    let deadline = tokio::time::Instant::now() + REBIND_PATIENCE;
    loop {
        match try_bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(source) => return Err(HubError::Bind { addr, source }),
        }
    }
}

fn try_bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// How long a connection may take before it is a WebSocket (see [`HubConfig`]).
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    head: Duration,
    idle: Duration,
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    timeouts: Timeouts,
    mut lifecycle: watch::Receiver<Lifecycle>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let stream = Watched::new(stream);
                    let (router, lifecycle) = (router.clone(), lifecycle.clone());
                    match &tls {
                        None => tokio::spawn(serve_connection(stream, peer, router, timeouts, lifecycle)),
                        Some(tls) => tokio::spawn(serve_tls(tls.clone(), stream, peer, router, timeouts, lifecycle)),
                    };
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            changed = lifecycle.changed() => {
                if changed.is_err() || *lifecycle.borrow_and_update() != Lifecycle::Running {
                    return;
                }
            }
        }
    }
}

/// Serves HTTP/1.1 on one connection until it ends, is upgraded (the WebSocket then lives
/// in its own task), the node drains (finish the request in flight) or aborts (drop it).
///
/// Until it is upgraded, a connection is closed when it takes longer than `head` to send
/// a request head (hyper's header timer: it runs from the moment the connection opens or
/// its previous response went out, so it ends idle sockets and slowloris heads alike), or
/// sends nothing for `idle` (a request body that stalls). Without these, 500 idle and 500
/// slowloris sockets were all still open after 45 s.
async fn serve_connection<I>(
    (stream, activity): (I, Arc<Activity>),
    peer: SocketAddr,
    router: Router,
    timeouts: Timeouts,
    mut lifecycle: watch::Receiver<Lifecycle>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Handlers learn the peer's address as axum's `ConnectInfo`.
    let service = TowerToHyperService::new(router.map_request(
        move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        },
    ));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.head)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let idle_check = tokio::time::sleep(timeouts.idle);
    tokio::pin!(idle_check);
    let mut draining = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            () = idle_check.as_mut() => {
                let quiet = activity.quiet_for();
                if quiet >= timeouts.idle {
                    tracing::debug!(?quiet, "closing an HTTP connection that sent nothing");
                    return;
                }
                idle_check.as_mut().reset(Instant::now() + (timeouts.idle - quiet));
            }
            changed = lifecycle.changed() => match changed.map(|()| *lifecycle.borrow_and_update()) {
                Ok(Lifecycle::Aborted) | Err(_) => return,
                Ok(Lifecycle::Draining { .. }) if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
                Ok(_) => {}
            },
        }
    }
}

/// Runs the TLS handshake, then serves HTTP/1.1 over it as [`serve_connection`] does.
///
/// The handshake must finish within `head` of the accept, the same bound as a request head:
/// a client that opens a socket and stalls mid-ClientHello is cut like a slowloris one. A
/// failed handshake (plain HTTP on the TLS port, an untrusted certificate on the client's
/// side) only closes that connection.
async fn serve_tls(
    tls: TlsAcceptor,
    (stream, activity): (Watched, Arc<Activity>),
    peer: SocketAddr,
    router: Router,
    timeouts: Timeouts,
    lifecycle: watch::Receiver<Lifecycle>,
) {
    let stream = match tokio::time::timeout(timeouts.head, tls.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake took longer than the head timeout");
            return;
        }
    };
    serve_connection((stream, activity), peer, router, timeouts, lifecycle).await;
}

/// When a connection last delivered bytes, shared between its socket wrapper and the task
/// that serves it. Milliseconds since `opened`, so it fits an atomic.
struct Activity {
    opened: Instant,
    last_read_ms: AtomicU64,
}

impl Activity {
    fn note_read(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_read_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the last byte arrived (or the connection opened).
    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }
}

/// A socket that notes in [`Activity`] when it reads bytes, for the idle timeout.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl Watched {
    fn new(stream: TcpStream) -> (Self, Arc<Activity>) {
        let activity = Arc::new(Activity {
            opened: Instant::now(),
            last_read_ms: AtomicU64::new(0),
        });
        let watched = Self {
            stream,
            activity: activity.clone(),
        };
        (watched, activity)
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.note_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
