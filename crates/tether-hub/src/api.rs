//! The HTTP side of a node: `/health`, `/metrics` and the publish/history API.
//!
//! Every error this side answers is JSON `{code, message}` with a code from a fixed list
//! (docs/protocol.md, "HTTP API"): handlers build an [`ApiError`]; whatever the framework
//! answers by itself (an unknown path, a wrong method, a rejected extractor) is rewritten
//! into one by [`json_errors`], so a client never has to parse plain text.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::broker::BrokerState;
use crate::metrics::{BrokerOp, Source};
use crate::node::{Lifecycle, Node};
use crate::protocol::{check_depth, ChannelName, ErrorCode, Offset, ProtocolError};

/// Longest framework error text carried over into the `message` of a rewritten answer.
const MAX_REWRITTEN_MESSAGE: usize = 1024;

/// An API failure: an HTTP status and a JSON body `{code, message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// An error known only by its status (the framework's own answers): the code is the
    /// status's stable name.
    fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, code_for(status), message)
    }
}

/// The stable code of an HTTP error status the hub's own handlers do not name better.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UPGRADE_REQUIRED => "not_websocket",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        status if status.is_client_error() => "bad_request",
        _ => "internal",
    }
}

impl From<ProtocolError> for ApiError {
    fn from(error: ProtocolError) -> Self {
        let status = match error.code {
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BrokerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, error.code.as_str(), error.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            code: &'a str,
            message: &'a str,
        }
        let body = Body {
            code: self.code,
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// `GET /health`: 200 while serving, 503 once draining so a balancer stops sending here, and
/// 503 while the broker cannot be reached (with the reason), so a balancer sends clients
/// to nodes that can serve them.
pub async fn health(State(node): State<Arc<Node>>) -> Response {
    let broker_state = node.broker.state();
    let (status, state) = match (*node.lifecycle.borrow(), &broker_state) {
        (Lifecycle::Draining { .. } | Lifecycle::Aborted, _) => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining")
        }
        (Lifecycle::Running, BrokerState::Up) => (StatusCode::OK, "ok"),
        (Lifecycle::Running, _) => (StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable"),
    };
    let reason = match &broker_state {
        BrokerState::Up => None,
        BrokerState::Unknown => Some("the broker has not answered yet"),
        BrokerState::Down(reason) => Some(reason.as_str()),
    };
    // What the broker lacks is said here, not hidden (see the broker contract).
    let broker = serde_json::json!({
        "kind": node.broker.kind(),
        "lacks": node.broker.capabilities().lacks(),
        "up": broker_state.is_up(),
        "reason": reason,
    });
    let body = serde_json::json!({ "status": state, "node": node.name(), "broker": broker });
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics.encode(),
    )
        .into_response()
}

/// Checks the API token. Without one configured, the API is open only where the hub as a
/// whole may be (loopback, or `allow_anonymous` on purpose): the API publishes to any
/// channel, so on a network it would undo every channel rule.
fn authorize(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = node.config.api_token.as_deref() else {
        if node.config.listen.ip().is_loopback() || node.config.auth.allow_anonymous {
            return Ok(());
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the HTTP API of a hub reachable from the network needs a token: set --api-token \
             (env TETHER_HUB_API_TOKEN, or api_token in hub.toml)",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|token| constant_time_eq(token.as_bytes(), expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        ))
    }
}

/// Refuses a publish whose body is not declared JSON. A web page can make a browser send a
/// cross-site POST without asking first only with a "simple" body (`text/plain`, a form,
/// or none declared); requiring `application/json` turns every such request away, so a
/// page a developer visits cannot publish to the hub on their machine.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match declared.as_deref() {
        Some("application/json") => Ok(()),
        Some(media) if media.starts_with("application/") && media.ends_with("+json") => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        )),
    }
}

/// Compares without stopping at the first difference, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
struct PublishRequest {
    channel: String,
    data: Box<RawValue>,
}

#[derive(Serialize)]
pub struct PublishResponse {
    offset: Offset,
}

/// `POST /api/publish {channel, data}` → `{offset}`.
pub async fn publish(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PublishResponse>, ApiError> {
    authorize(&node, &headers)?;
    require_json(&headers)?;
    let body =
        body.map_err(|rejection| ApiError::from_status(rejection.status(), rejection.body_text()))?;
    if body.len() > node.config.max_message_size {
        return Err(ProtocolError::new(
            ErrorCode::TooLarge,
            format!(
                "body of {} bytes exceeds the limit of {}",
                body.len(),
                node.config.max_message_size
            ),
        )
        .into());
    }
    let request: PublishRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("expected {{\"channel\": string, \"data\": any JSON}}: {e}"),
        )
    })?;
    let channel = ChannelName::parse(&request.channel)?;
    check_depth(&request.data)?;
    node.metrics.message_in(Source::Http);
    match node.broker.publish(&channel, request.data).await {
        Ok(offset) => Ok(Json(PublishResponse { offset })),
        Err(error) => {
            node.metrics.broker_error(BrokerOp::Publish);
            tracing::warn!(%error, %channel, "HTTP publish failed");
            Err(ProtocolError::new(
                ErrorCode::BrokerUnavailable,
                format!("not published: {error}"),
            )
            .into())
        }
    }
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    since: Option<u64>,
}

/// The history answer, serialised straight from the stored raw JSON: nothing is parsed
/// again, so no stored `data` (however deep) can make the answer fail.
#[derive(Serialize)]
struct HistoryBody<'a> {
    channel: &'a str,
    offset: Offset,
    recovered: bool,
    messages: Vec<HistoryEntry<'a>>,
}

#[derive(Serialize)]
struct HistoryEntry<'a> {
    offset: Offset,
    data: &'a RawValue,
}

/// `GET /api/history/{channel}?since=N` → `{channel, offset, recovered, messages}`, the
/// same answer a `subscribe` with `since` replays. Without `since`, every retained message.
pub async fn history(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    channel: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&node, &headers)?;
    let Path(channel) = channel
        .map_err(|rejection| ApiError::from_status(rejection.status(), rejection.body_text()))?;
    let Query(query) = query.map_err(|rejection| {
        ApiError::new(rejection.status(), "bad_query", rejection.body_text())
    })?;
    let channel = ChannelName::parse(&channel)?;
    let since = Offset(query.since.unwrap_or(0));
    let history = node
        .broker
        .history(&channel, Some(since))
        .await
        .map_err(|error| {
            node.metrics.broker_error(BrokerOp::History);
            ApiError::from(ProtocolError::new(
                ErrorCode::BrokerUnavailable,
                format!("cannot read history now: {error}"),
            ))
        })?;
    let messages: Vec<HistoryEntry<'_>> = history
        .messages
        .iter()
        .map(|m| HistoryEntry {
            offset: m.offset,
            data: &m.data,
        })
        .collect();
    let recovered = query.since.is_none_or(|_| history.recovered);
    let body = HistoryBody {
        channel: channel.as_str(),
        offset: history.top,
        recovered,
        messages,
    };
    Ok(Json(body).into_response())
}

/// Answers a path the hub does not serve.
pub async fn not_found() -> ApiError {
    ApiError::from_status(StatusCode::NOT_FOUND, "no such endpoint")
}

/// Rewrites an error the framework answered by itself (empty or plain text: a wrong
/// method, a rejected extractor) into the JSON `{code, message}` every hub error has.
/// Answers that already are JSON, and successes, pass untouched.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REWRITTEN_MESSAGE)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let rewritten = ApiError::from_status(status, message).into_response();
    // Keep what the framework said besides the body (`Allow` on a 405, for one).
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, rewritten.into_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_status_has_a_stable_code() {
        assert_eq!(code_for(StatusCode::NOT_FOUND), "not_found");
        assert_eq!(
            code_for(StatusCode::METHOD_NOT_ALLOWED),
            "method_not_allowed"
        );
        assert_eq!(code_for(StatusCode::PAYLOAD_TOO_LARGE), "too_large");
        assert_eq!(code_for(StatusCode::IM_A_TEAPOT), "bad_request");
        assert_eq!(code_for(StatusCode::BAD_GATEWAY), "internal");
    }

    #[test]
    fn token_comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
