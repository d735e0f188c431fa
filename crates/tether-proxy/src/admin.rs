//! The admin API: Prometheus metrics, backend state, drain/enable, reload, a live event stream
//! and the dashboard page.
//!
//! Served on `[admin] addr`, and also under `stats_uri` on the main listener when configured
//! (like HAProxy's `stats uri`), so a browser that reaches the proxy reaches the dashboard.
//! Every route but the page goes through [`access`]: the bearer token, the loopback rule and
//! the refusal of cross-site browser requests are decided there, once, for both listeners.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::backend::{Backend, BackendState};
use crate::balance::rebalance::RebalanceView;
use crate::shared::Shared;
use crate::tunnel::close::spread;
use crate::tunnel::CloseReason;

mod access;
mod ticket;
mod token;

pub use access::{Access, Need, Refusal, Via};
pub use ticket::Tickets;
pub use token::AdminToken;

const DASHBOARD: &str = include_str!("../web/dashboard/index.html");

/// A backend as `GET /api/backends` reports it.
#[derive(Debug, Serialize)]
pub struct BackendView {
    pub name: String,
    pub addr: String,
    pub state: BackendState,
    pub weight: u32,
    pub active: usize,
    /// Tunnels a drain, rebalance or shutdown is closing and that have not ended yet.
    pub closing: usize,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub failures: u64,
}

impl BackendView {
    pub(crate) fn of(b: &Backend) -> BackendView {
        BackendView {
            name: b.name.to_string(),
            addr: b.addr.to_string(),
            state: b.state(),
            weight: b.weight,
            active: b.active(),
            closing: b.closing(),
            bytes_to_backend: b.metrics.bytes_to_backend.get(),
            bytes_to_client: b.metrics.bytes_to_client.get(),
            failures: b.metrics.failures.get(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Snapshot {
    backends: Vec<BackendView>,
    client_connections: i64,
    rebalance: RebalanceView,
}

/// Which listener a router serves.
#[derive(Debug, Clone, Copy)]
enum Side {
    Admin,
    Main,
}

fn router(shared: Arc<Shared>, side: Side) -> Router {
    let guarded = |need| {
        middleware::from_fn_with_state(
            Gate {
                shared: shared.clone(),
                need,
                side,
            },
            gate,
        )
    };
    let reads = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/backends", get(backends))
        .route_layer(guarded(Need::Read));
    let stream = Router::new()
        .route("/api/events", get(events))
        .route_layer(guarded(Need::Stream));
    let tickets = Router::new()
        .route("/api/events/ticket", post(ticket))
        .route_layer(guarded(Need::Ticket));
    let changes = Router::new()
        .route("/api/backends/{name}/drain", post(drain))
        .route("/api/backends/{name}/enable", post(enable))
        .route("/api/reload", post(reload))
        .route_layer(guarded(Need::Mutate));
    Router::new()
        .route("/", get(page))
        .merge(reads)
        .merge(stream)
        .merge(tickets)
        .merge(changes)
        .with_state(shared)
}

/// Serves the admin API on its own listener until the listener fails.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> io::Result<()> {
    let addr = listener.local_addr()?;
    if !shared.admin_access.has_token() && !addr.ip().to_canonical().is_loopback() {
        tracing::warn!(
            %addr,
            "the admin listener is not on loopback and has no [admin] token: its reads are \
             public and only loopback clients may drain, enable or reload"
        );
    }
    let app = router(shared, Side::Admin).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await
}

/// What the access middleware of one group of routes needs to decide.
#[derive(Clone)]
struct Gate {
    shared: Arc<Shared>,
    need: Need,
    side: Side,
}

/// Runs the request only if [`Access::check`] allows it; logs every refusal and every
/// change that was let through, with where it came from.
async fn gate(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let via = match gate.side {
        Side::Main => Via::MainListener,
        Side::Admin => Via::AdminListener {
            peer: request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        },
    };
    let ticket = request.uri().query().and_then(ticket_param);
    let path = request.uri().path().to_owned();
    let access = &gate.shared.admin_access;
    if let Err(refusal) = access.check(gate.need, via, request.headers(), ticket) {
        tracing::info!(
            ?via,
            path,
            reason = refusal.reason(),
            "admin request refused"
        );
        return refusal.into_response();
    }
    if gate.need == Need::Mutate {
        tracing::info!(?via, path, "admin change allowed");
    }
    let mut response = next.run(request).await;
    // Admin answers describe the live system; no cache in between should keep them.
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The `ticket` query parameter, if any (tickets are hex: nothing to decode).
fn ticket_param(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("ticket="))
}

/// The dashboard: a static page with no data in it (everything it shows comes from the
/// guarded endpoints), so it is served to anyone; it may not be framed by another site.
async fn page() -> Response {
    (
        [
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Html(DASHBOARD),
    )
        .into_response()
}

/// `POST /api/events/ticket`: a single-use ticket for `api/events?ticket=…`.
async fn ticket(State(shared): State<Arc<Shared>>) -> Response {
    #[derive(Serialize)]
    struct Issued {
        ticket: String,
        expires_in_secs: u64,
    }
    match shared.admin_access.tickets.issue() {
        Ok(ticket) => Json(Issued {
            ticket,
            expires_in_secs: Tickets::TTL.as_secs(),
        })
        .into_response(),
        Err(e) => (StatusCode::TOO_MANY_REQUESTS, format!("{e}\n")).into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
}

fn snapshot(shared: &Shared) -> Snapshot {
    Snapshot {
        backends: shared
            .registry
            .snapshot()
            .backends
            .iter()
            .map(|b| BackendView::of(b))
            .collect(),
        client_connections: shared.metrics.client_connections.get(),
        rebalance: shared.rebalancer.view(),
    }
}

async fn backends(State(shared): State<Arc<Shared>>) -> Json<Vec<BackendView>> {
    Json(snapshot(&shared).backends)
}

/// The query of `POST /api/backends/NAME/drain`.
#[derive(Debug, Deserialize)]
struct DrainQuery {
    /// Close the backend's live tunnels (1012) spread over this window (`30s`, `2m`).
    close_within: Option<String>,
}

/// A 400 naming the query parameter that was wrong, as JSON.
fn bad_parameter(parameter: &str, error: String) -> Response {
    let body = serde_json::json!({ "error": error, "parameter": parameter });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

async fn drain(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    query: Result<Query<DrainQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return bad_parameter("close_within", e.body_text()),
    };
    let window = match query.close_within.as_deref().map(str::trim) {
        None => None,
        Some(text) => match humantime_serde::re::humantime::parse_duration(text) {
            Ok(window) => Some(window),
            Err(e) => {
                return bad_parameter(
                    "close_within",
                    format!("close_within: `{text}` is not a duration such as 30s or 2m: {e}"),
                )
            }
        },
    };
    answer(set_draining(&shared, &name, true, window), &name)
}

async fn enable(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    answer(set_draining(&shared, &name, false, None), &name)
}

fn answer(view: Option<BackendView>, name: &str) -> Response {
    match view {
        Some(view) => Json(view).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no backend named `{name}`\n"),
        )
            .into_response(),
    }
}

/// Marks backend `name` draining (no new tunnels) or enabled again; `None` if unknown.
/// With `close_within`, a drain also closes the backend's live tunnels with 1012 at moments
/// drawn uniformly over that window, so their clients come back spread over it; a later
/// drain or enable calls it off. An enable lets the rebalancer look at once.
pub(crate) fn set_draining(
    shared: &Shared,
    name: &str,
    draining: bool,
    close_within: Option<Duration>,
) -> Option<BackendView> {
    let set = shared.registry.snapshot();
    let backend = set.by_name(name)?.clone();
    backend.set_draining(draining);
    let epoch = backend.next_drain_epoch();
    tracing::info!(backend = name, draining, close_within = ?close_within, "admin changed backend state");
    if !draining {
        shared.rebalancer.kick();
    }
    if let Some(window) = close_within.filter(|_| draining) {
        let tunnels = shared.tunnels.select(|e| Arc::ptr_eq(&e.backend, &backend));
        tracing::info!(
            backend = name,
            tunnels = tunnels.len(),
            ?window,
            "closing the drained backend's tunnels with 1012"
        );
        let watched = backend.clone();
        let closing = spread(tunnels, CloseReason::Drain, window, move || {
            watched.drain_current(epoch)
        });
        let name = backend.name.clone();
        tokio::spawn(async move {
            let closed = closing.await;
            tracing::info!(backend = &*name, closed, "drain closed its tunnels");
        });
    }
    Some(BackendView::of(&backend))
}

async fn reload(State(shared): State<Arc<Shared>>) -> Response {
    match crate::reload_from_file(&shared) {
        Ok(()) => Json(snapshot(&shared).backends).into_response(),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response(),
    }
}

/// Server-sent events: the backend table once a second, for the dashboard.
async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let ticks = tokio::time::interval(Duration::from_secs(1));
    let stream = futures_util::stream::unfold((ticks, shared), |(mut ticks, shared)| async move {
        ticks.tick().await;
        let data = serde_json::to_string(&snapshot(&shared)).unwrap_or_default();
        Some((
            Ok(Event::default().event("backends").data(data)),
            (ticks, shared),
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Serves the admin router on the main listener for a request under `stats_uri`. `head`
/// holds everything read so far, starting with the request head.
pub async fn serve_on_main(shared: Arc<Shared>, stream: crate::transport::ClientIo, head: Vec<u8>) {
    let Some(prefix) = shared.stats_prefix().map(str::to_owned) else {
        return;
    };
    // Nesting serves `/_tether`; `/_tether/` is routed to the page explicitly.
    let app = Router::new()
        .nest(&prefix, router(shared.clone(), Side::Main))
        .route(&format!("{prefix}/"), get(page));
    let io = hyper_util::rt::TokioIo::new(crate::prefixed::PrefixedIo::new(head, stream));
    let service = hyper_util::service::TowerToHyperService::new(app);
    // One request per connection: the next request on this socket may not be for the admin
    // pages at all, and only the handshake path can route it.
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(io, service)
        .await;
}
