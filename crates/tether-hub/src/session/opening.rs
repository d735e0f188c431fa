//! The authenticated part of a session: `connect` before `welcome`, `refresh`, and the
//! checks of subscribe and publish against the token and the channel rules.
//!
//! A browser cannot set headers on a WebSocket, so the token comes in the first frame
//! (`{"type":"connect","token":"…"}`) or the `token` query parameter. On a hub with token
//! keys nothing but `connect` is read before the token checks out: a client that sends
//! anything else first is refused (`unauthorized`, close 4003), unless anonymous clients
//! are allowed, in which case that frame is served as an anonymous client's first.

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::{send, CloseReason, Flow, Gone, Opened, Session};
use crate::auth::{AuthCode, AuthError, ChannelGrant};
use crate::protocol::{ClientFrame, ErrorCode, ProtocolError, ServerFrame};

impl Session {
    /// Authenticates the connection (on a hub with token keys) and sends `welcome`.
    pub(super) async fn open(&mut self, ws: &mut WebSocket, token: Option<String>) -> Opened {
        let gate = &self.node.gate;
        if !gate.checks_tokens() {
            return self.welcomed(ws, None).await;
        }
        if let Some(token) = token {
            return self.connect_with(ws, &token).await;
        }
        // Wait for the first frame, as long as a request head may take.
        let deadline = Instant::now() + self.node.config.head_timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) if self.node.gate.anonymous_may_connect() => {
                    return self.welcomed(ws, None).await
                }
                Err(_) => return Opened::Ended(self.refuse(ws, &AuthError::Missing).await),
                Ok(None) => return Opened::Ended(Flow::Drop(CloseReason::ClientClosed)),
                Ok(Some(Err(_))) => return Opened::Ended(Flow::Drop(CloseReason::Error)),
                Ok(Some(Ok(frame))) => frame,
            };
            if !matches!(frame, Message::Close(_)) && !self.bucket.take() {
                return Opened::Ended(Flow::Close(
                    super::CLOSE_POLICY,
                    "rate limit exceeded",
                    CloseReason::Flood,
                ));
            }
            let text = match &frame {
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => return Opened::Ended(Flow::Drop(CloseReason::ClientClosed)),
                Message::Text(text) => text.as_str(),
                Message::Binary(_) => "",
            };
            let parsed = (text.len() <= self.node.config.max_message_size)
                .then(|| ClientFrame::parse(text).ok())
                .flatten();
            return match parsed {
                Some(ClientFrame::Connect { token: Some(token) }) => {
                    self.connect_with(ws, &token).await
                }
                Some(ClientFrame::Connect { token: None })
                    if self.node.gate.anonymous_may_connect() =>
                {
                    self.welcomed(ws, None).await
                }
                // Anything else first: an anonymous client's frame, where that is allowed. It
                // is counted again when it is handled.
                Some(_) | None if self.node.gate.anonymous_may_connect() => {
                    self.bucket.refund();
                    self.welcomed(ws, Some(frame)).await
                }
                _ => Opened::Ended(self.refuse(ws, &AuthError::Missing).await),
            };
        }
    }

    async fn connect_with(&mut self, ws: &mut WebSocket, token: &str) -> Opened {
        match self.node.gate.connection(token).await {
            Ok(identity) => {
                tracing::Span::current().record("user", identity.user.as_str());
                self.access = self.node.gate.access(Some(identity));
                self.welcomed(ws, None).await
            }
            Err(error) => Opened::Ended(self.refuse(ws, &error).await),
        }
    }

    async fn welcomed(&mut self, ws: &mut WebSocket, first: Option<Message>) -> Opened {
        match self.welcome(ws).await {
            Flow::Continue => Opened::Welcomed(first),
            flow => Opened::Ended(flow),
        }
    }

    pub(super) async fn welcome(&mut self, ws: &mut WebSocket) -> Flow {
        let welcome = ServerFrame::Welcome {
            node: self.node.name(),
            user: self.access.user(),
        };
        match send(ws, welcome.encode()).await {
            Ok(()) => Flow::Continue,
            Err(Gone) => Flow::Drop(CloseReason::Error),
        }
    }

    /// Ends the connection over `error`: an `error` frame with its code, then a close with
    /// 4001 (expired: refresh and reconnect) or 4003 (do not retry with this token). The
    /// failure counts against the client's address.
    pub(super) async fn refuse(&mut self, ws: &mut WebSocket, error: &AuthError) -> Flow {
        self.note_failure(error);
        tracing::info!(%error, reason = error.reason(), "connection refused");
        let code = error.code();
        let _ = self.send_auth_error(ws, error, None, None).await;
        let reason = match code {
            AuthCode::TokenExpired => CloseReason::TokenExpired,
            AuthCode::Unauthorized | AuthCode::Forbidden => CloseReason::Unauthorized,
        };
        Flow::Close(code.close_code(), code.as_str(), reason)
    }

    /// `refresh`: a new token for the same user replaces the connection's.
    pub(super) async fn refresh(&mut self, ws: &mut WebSocket, token: &str) -> Flow {
        let Some(current) = self.access.identity.as_ref().map(|i| i.user.clone()) else {
            let error = ProtocolError::new(
                ErrorCode::BadFrame,
                "only a connection opened with a token can refresh it; send `connect`",
            );
            return self.reply_error(ws, &error, None, None).await;
        };
        let checked = match self.node.gate.connection(token).await {
            Ok(identity) if identity.user != current => Err(AuthError::UserChanged),
            other => other,
        };
        match checked {
            Ok(identity) => {
                let exp = identity
                    .expires_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.access = self.node.gate.access(Some(identity));
                tracing::debug!(exp, "token refreshed");
                match send(ws, ServerFrame::Refreshed { exp }.encode()).await {
                    Ok(()) => Flow::Continue,
                    Err(Gone) => Flow::Drop(CloseReason::Error),
                }
            }
            // The connection lives on with its current token until that expires.
            Err(error) => self.reply_auth_error(ws, &error, None, None).await,
        }
    }

    /// Whether this client may subscribe to `channel`, with `token` a subscription token.
    pub(super) async fn may_subscribe(
        &mut self,
        channel: &str,
        token: Option<&str>,
    ) -> Result<(), AuthError> {
        let grant: Option<ChannelGrant> = match (token, &self.access.identity) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(AuthError::WrongKind(
                    "a subscription token needs a connection opened with a token",
                ))
            }
            (Some(token), Some(identity)) => match self.node.gate.verifier() {
                Some(verifier) => Some(
                    verifier
                        .subscription(token, channel, &identity.user)
                        .await?,
                ),
                None => None,
            },
        };
        self.node.gate.rules.check_subscribe(
            channel,
            self.access.identity.as_ref(),
            grant.as_ref(),
        )?;
        Ok(())
    }

    /// Answers a refused token or action without ending the connection.
    pub(super) async fn reply_auth_error(
        &mut self,
        ws: &mut WebSocket,
        error: &AuthError,
        channel: Option<&str>,
        id: Option<&RawValue>,
    ) -> Flow {
        if !matches!(error, AuthError::Forbidden(_)) {
            self.note_failure(error);
        }
        match self.send_auth_error(ws, error, channel, id).await {
            Ok(()) => Flow::Continue,
            Err(Gone) => Flow::Drop(CloseReason::Error),
        }
    }

    async fn send_auth_error(
        &mut self,
        ws: &mut WebSocket,
        error: &AuthError,
        channel: Option<&str>,
        id: Option<&RawValue>,
    ) -> Result<(), Gone> {
        let code = ErrorCode::from(error.code());
        self.node.metrics.client_error(code);
        let message = error.to_string();
        let frame = ServerFrame::Error {
            code,
            message: &message,
            channel,
            id,
        };
        send(ws, frame.encode()).await
    }

    /// Counts a failed authentication: in the metrics by reason, and against the
    /// client's address (a refused subscribe or publish of a good token is not a failure
    /// of authentication and is not counted here).
    fn note_failure(&self, error: &AuthError) {
        self.node.metrics.auth_failure(error.reason());
        if !matches!(error, AuthError::Forbidden(_) | AuthError::Expired) {
            self.node.gate.limiter.failed(self.client);
        }
    }
}
