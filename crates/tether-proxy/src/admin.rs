//! The admin API: Prometheus metrics, backend state, drain/enable, reload, a live event stream
//! and the dashboard page.
//!
//! Served on `[admin] addr`, and also under `stats_uri` on the main listener when configured
//! (like HAProxy's `stats uri`), so a browser that reaches the proxy reaches the dashboard.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::backend::{Backend, BackendState};
use crate::shared::Shared;

const DASHBOARD: &str = include_str!("../../../web/dashboard/index.html");

/// A backend as `GET /api/backends` reports it.
#[derive(Debug, Serialize)]
pub struct BackendView {
    pub name: String,
    pub addr: String,
    pub state: BackendState,
    pub weight: u32,
    pub active: usize,
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
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/metrics", get(metrics))
        .route("/api/backends", get(backends))
        .route("/api/backends/{name}/drain", post(drain))
        .route("/api/backends/{name}/enable", post(enable))
        .route("/api/reload", post(reload))
        .route("/api/events", get(events))
        .with_state(shared)
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
    }
}

async fn backends(State(shared): State<Arc<Shared>>) -> Json<Vec<BackendView>> {
    Json(snapshot(&shared).backends)
}

async fn drain(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    set_draining(&shared, &name, true)
}

async fn enable(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    set_draining(&shared, &name, false)
}

fn set_draining(shared: &Shared, name: &str, draining: bool) -> Response {
    let set = shared.registry.snapshot();
    let Some(backend) = set.by_name(name) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no backend named `{name}`\n"),
        )
            .into_response();
    };
    backend.set_draining(draining);
    tracing::info!(backend = name, draining, "admin changed backend state");
    Json(BackendView::of(backend)).into_response()
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
pub async fn serve_on_main(shared: Arc<Shared>, stream: TcpStream, head: Vec<u8>) {
    let Some(prefix) = shared.stats_prefix().map(str::to_owned) else {
        return;
    };
    // Nesting serves `/_tether`; `/_tether/` is routed to the page explicitly.
    let app = Router::new()
        .nest(&prefix, router(shared.clone()))
        .route(&format!("{prefix}/"), get(|| async { Html(DASHBOARD) }));
    let io = hyper_util::rt::TokioIo::new(Prefixed {
        prefix: head,
        pos: 0,
        inner: stream,
    });
    let service = hyper_util::service::TowerToHyperService::new(app);
    // One request per connection: the next request on this socket may not be for the admin
    // pages at all, and only the handshake path can route it.
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(io, service)
        .await;
}

/// A stream that first yields bytes already read from it.
struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            buf.put_slice(&self.prefix[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
