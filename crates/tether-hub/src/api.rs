//! The HTTP side of a node: `/health`, `/metrics` and the publish/history API.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::metrics::{BrokerOp, Source};
use crate::node::{Lifecycle, Node};
use crate::protocol::{ChannelName, ErrorCode, Offset, ProtocolError};

/// An API failure: an HTTP status and a JSON body `{code, message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
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

/// `GET /health`: 200 while serving, 503 once draining so a balancer stops sending here.
pub async fn health(State(node): State<Arc<Node>>) -> Response {
    let (status, state) = match *node.lifecycle.borrow() {
        Lifecycle::Running => (StatusCode::OK, "ok"),
        Lifecycle::Draining { .. } | Lifecycle::Aborted => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining")
        }
    };
    let body = serde_json::json!({ "status": state, "node": node.name() });
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

fn authorize(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = node.config.api_token.as_deref() else {
        return Ok(());
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
    body: Bytes,
) -> Result<Json<PublishResponse>, ApiError> {
    authorize(&node, &headers)?;
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
    Path(channel): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    authorize(&node, &headers)?;
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
    let body = serde_json::json!({
        "channel": channel.as_str(),
        "offset": history.top,
        "recovered": recovered,
        "messages": messages,
    });
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
