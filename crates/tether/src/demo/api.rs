//! The demo API every hub serves besides its own: the hubs' states and counters, and the
//! buttons that crash or drain one of them.
//!
//! The page names the hub to act on instead of asking "the hub serving this request": a
//! plain HTTP request through the proxy may land on any hub, not the one holding the page's
//! WebSocket.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::fleet::{ActionError, Fleet, HubName, HubView, Takedown};
use super::scrape::{self, HubCounters};

/// What a route needs: the fleet and the name of the hub serving it.
#[derive(Clone)]
struct Ctx {
    fleet: Arc<Fleet>,
    served_by: HubName,
}

pub fn router(fleet: Arc<Fleet>, served_by: HubName) -> Router {
    Router::new()
        .route("/api/demo/hubs", get(hubs))
        .route("/api/demo/hubs/{name}/kill", post(kill))
        .route("/api/demo/hubs/{name}/drain", post(drain))
        .with_state(Ctx { fleet, served_by })
}

#[derive(Serialize)]
struct HubReport {
    #[serde(flatten)]
    view: HubView,
    /// Totals since the hub (re)started; absent while it is down or did not answer.
    counters: Option<HubCounters>,
}

#[derive(Serialize)]
struct HubsReport {
    served_by: HubName,
    hubs: Vec<HubReport>,
}

/// `GET /api/demo/hubs`: every hub's state, with counters read from the running ones.
async fn hubs(State(ctx): State<Ctx>) -> Json<HubsReport> {
    let running = ctx.fleet.running();
    let scraped = futures_util::future::join_all(running.iter().map(|(name, addr)| async move {
        match scrape::hub_counters(*addr).await {
            Ok(counters) => Some((name.clone(), counters)),
            Err(error) => {
                tracing::debug!(hub = %name, %error, "hub metrics not read");
                None
            }
        }
    }))
    .await;
    let hubs = ctx
        .fleet
        .views()
        .into_iter()
        .map(|view| HubReport {
            counters: scraped
                .iter()
                .flatten()
                .find(|(name, _)| *name == view.name)
                .map(|(_, c)| *c),
            view,
        })
        .collect();
    Json(HubsReport {
        served_by: ctx.served_by,
        hubs,
    })
}

/// `POST /api/demo/hubs/{name}/kill`: crash the hub; it is back in a few seconds.
async fn kill(State(ctx): State<Ctx>, Path(name): Path<String>) -> Response {
    act(&ctx, &name, Takedown::Kill)
}

/// `POST /api/demo/hubs/{name}/drain`: close its clients with 1012 over a short window,
/// then restart it.
async fn drain(State(ctx): State<Ctx>, Path(name): Path<String>) -> Response {
    act(&ctx, &name, Takedown::Drain)
}

fn act(ctx: &Ctx, name: &str, how: Takedown) -> Response {
    #[derive(Serialize)]
    struct Refusal {
        code: &'static str,
        message: String,
    }
    match ctx.fleet.take_down(name, how) {
        Ok(()) => (StatusCode::ACCEPTED, Json(ctx.fleet.views())).into_response(),
        Err(error) => {
            let (status, code) = match error {
                ActionError::NoSuchHub(_) => (StatusCode::NOT_FOUND, "no_such_hub"),
                ActionError::NotRunning(..) => (StatusCode::CONFLICT, "not_running"),
            };
            let message = error.to_string();
            (status, Json(Refusal { code, message })).into_response()
        }
    }
}
