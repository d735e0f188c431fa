//! Authentication as a node applies it: the [`Gate`] every connection passes (keys, rules,
//! the failure budget) and the [`Access`] a connection holds once it passed.
//!
//! The pieces live in [`crate::auth`]; this is where the node's policy is decided once:
//! a node without token keys is open (today's behaviour, kept to loopback by the protected
//! mode in `server`), a node with keys wants a token before `welcome` unless anonymous
//! clients were allowed on purpose.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use ipnet::IpNet;
use tokio::time::Instant;

use crate::auth::limiter::{client_addr, FailureLimiter};
use crate::auth::{AuthConfig, AuthError, Identity, Rules, Verifier};
use crate::metrics::Authenticated;

/// A node's authentication policy.
pub struct Gate {
    verifier: Option<Verifier>,
    pub rules: Rules,
    pub limiter: FailureLimiter,
    anonymous_may_connect: bool,
    trusted_proxies: Vec<IpNet>,
    leeway: Duration,
}

impl Gate {
    /// Loads what `config` names (JWKS documents are fetched once here).
    pub async fn start(config: &AuthConfig) -> Self {
        Self {
            verifier: config.verifier().await,
            rules: config.rules(),
            limiter: FailureLimiter::new(config.failure_budget),
            anonymous_may_connect: config.anonymous_may_connect(),
            trusted_proxies: config.trusted_proxies.clone(),
            leeway: config.checks.leeway,
        }
    }

    /// Whether the node checks tokens at all.
    pub fn checks_tokens(&self) -> bool {
        self.verifier.is_some()
    }

    pub fn anonymous_may_connect(&self) -> bool {
        self.anonymous_may_connect
    }

    pub fn verifier(&self) -> Option<&Verifier> {
        self.verifier.as_ref()
    }

    /// The client's address: the peer's, or the one a trusted proxy forwarded.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        client_addr(peer, forwarded, &self.trusted_proxies)
    }

    /// Checks a connection token.
    pub async fn connection(&self, token: &str) -> Result<Identity, AuthError> {
        match &self.verifier {
            Some(verifier) => verifier.connection(token).await,
            // Unreachable in practice: an open node never asks for a token.
            None => Err(AuthError::Malformed(
                "this hub has no token keys configured".into(),
            )),
        }
    }

    /// The [`Access`] of a connection with this identity.
    pub fn access(&self, identity: Option<Identity>) -> Access {
        let deadline = identity
            .as_ref()
            .map(|i| deadline_of(i.expires_at, self.leeway));
        Access { identity, deadline }
    }
}

/// When a token expiring at `expires_at` stops being accepted, on the tokio clock.
fn deadline_of(expires_at: SystemTime, leeway: Duration) -> Instant {
    let left = (expires_at + leeway)
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + left
}

/// Who a connection is.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `None` for an anonymous connection.
    pub identity: Option<Identity>,
    /// When the token runs out; the connection is closed with 4001 then unless refreshed.
    pub deadline: Option<Instant>,
}

impl Access {
    pub fn kind(&self) -> Authenticated {
        match self.identity {
            Some(_) => Authenticated::Yes,
            None => Authenticated::Anonymous,
        }
    }

    pub fn user(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.user.as_str())
    }
}
