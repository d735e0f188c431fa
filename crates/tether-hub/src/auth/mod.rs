//! Who may connect, subscribe and publish.
//!
//! A client proves who it is with a JWT ([`token::Verifier`]) signed with a shared secret
//! (HS256), an RSA or EC key whose public half the hub holds (RS256, ES256), or a key from
//! the identity provider's JWKS document ([`jwks`]). The token's claims ([`claims`]) name the
//! user and the channel [`pattern`]s it may use; the hub's channel [`rules`] say, per
//! namespace, whether a channel is open to everyone, to any authenticated user, or only
//! to tokens that name it. [`settings`] reads all of it from `hub.toml`.
//!
//! Every refusal is an [`AuthError`] whose [`AuthCode`] is what the client sees
//! (`unauthorized`, `forbidden`, `token_expired`) and whose [`AuthError::reason`] is what
//! the metrics count.

pub mod claims;
pub mod jwks;
pub mod keys;
pub mod limiter;
pub mod pattern;
pub mod rules;
pub mod settings;
pub mod token;

use std::net::SocketAddr;

pub use claims::{ChannelGrant, Grant, Identity, UserId};
pub use keys::KeyAlgorithm;
pub use pattern::ChannelPattern;
pub use rules::{Denied, Namespace, PublishRule, Rules, SubscribeRule};
pub use settings::{AuthConfig, SettingsError};
pub use token::{Checks, Verifier};

/// Close code: the token expired (or was refused as expired). Get a fresh token, then
/// reconnect.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close code: the token was refused for good (bad signature, wrong audience, forbidden).
/// Retrying with the same token cannot help.
pub const CLOSE_FORBIDDEN: u16 = 4003;

/// The stable code a client branches on, sent as the `code` of an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthCode {
    /// No usable token: missing, malformed, badly signed, for someone else.
    Unauthorized,
    /// A good token that does not allow this.
    Forbidden,
    /// A good token whose time is up: refresh it.
    TokenExpired,
}

impl AuthCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthCode::Unauthorized => "unauthorized",
            AuthCode::Forbidden => "forbidden",
            AuthCode::TokenExpired => "token_expired",
        }
    }

    /// The close code a connection ends with when this refusal ends it.
    pub fn close_code(self) -> u16 {
        match self {
            AuthCode::TokenExpired => CLOSE_TOKEN_EXPIRED,
            AuthCode::Unauthorized | AuthCode::Forbidden => CLOSE_FORBIDDEN,
        }
    }
}

/// Why a token or an action was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required: send {{\"type\":\"connect\",\"token\":\"…\"}} first")]
    Missing,
    #[error("token of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("algorithm {0:?} is not accepted here")]
    Algorithm(String),
    #[error("no key matches the token (kid {kid:?})")]
    UnknownKey { kid: Option<String> },
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token is meant for another audience (aud)")]
    Audience,
    #[error("the token comes from an issuer this hub does not accept (iss)")]
    Issuer,
    #[error("claim `{claim}` {problem}")]
    Claim {
        claim: &'static str,
        problem: String,
    },
    /// A subscription token where a connection token belongs, or the reverse.
    #[error("wrong kind of token: {0}")]
    WrongKind(&'static str),
    /// A refresh token for another user than the connection's.
    #[error("a refresh must keep the same user (sub)")]
    UserChanged,
    #[error("{0}")]
    Forbidden(#[from] Denied),
}

impl AuthError {
    pub fn code(&self) -> AuthCode {
        match self {
            AuthError::Expired => AuthCode::TokenExpired,
            AuthError::Forbidden(_) => AuthCode::Forbidden,
            _ => AuthCode::Unauthorized,
        }
    }

    /// A short label for metrics and logs: which check refused it.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLarge { .. } => "too_large",
            AuthError::Malformed(_) => "malformed",
            AuthError::Algorithm(_) => "algorithm",
            AuthError::UnknownKey { .. } => "unknown_key",
            AuthError::Signature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Audience => "audience",
            AuthError::Issuer => "issuer",
            AuthError::Claim { .. } => "claims",
            AuthError::WrongKind(_) => "wrong_kind",
            AuthError::UserChanged => "user_changed",
            AuthError::Forbidden(_) => "forbidden",
        }
    }
}

/// Every [`AuthError::reason`], for metrics that should show zeros before the first failure.
pub const REASONS: &[&str] = &[
    "missing",
    "too_large",
    "malformed",
    "algorithm",
    "unknown_key",
    "signature",
    "expired",
    "not_yet_valid",
    "audience",
    "issuer",
    "claims",
    "wrong_kind",
    "user_changed",
    "forbidden",
];

/// A hub that would be open to anyone on a network: it listens beyond loopback and has no
/// way to tell clients apart. Like Redis's protected mode, it does not start unless told to.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "refusing to serve {listen} without authentication: any client on the network could \
     read and publish every channel. Configure tokens (--token-hmac-secret / env \
     TETHER_HUB_TOKEN_HMAC_SECRET, --token-public-key, --token-jwks, or [auth] hmac_secret, \
     public_keys, jwks in hub.toml), or open it on purpose with --allow-anonymous \
     ([auth] allow_anonymous = true)"
)]
pub struct Unprotected {
    pub listen: SocketAddr,
}

/// Refuses an open hub on a non-loopback address. A loopback hub may stay open: only
/// programs on the same machine reach it, which is what development wants.
pub fn check_protected_mode(
    listen: SocketAddr,
    tokens_configured: bool,
    allow_anonymous: bool,
) -> Result<(), Unprotected> {
    if tokens_configured || allow_anonymous || listen.ip().is_loopback() {
        Ok(())
    } else {
        Err(Unprotected { listen })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_open_hub_off_loopback_is_refused() {
        let lo: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let lo6: SocketAddr = "[::1]:7000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        assert!(check_protected_mode(lo, false, false).is_ok());
        assert!(check_protected_mode(lo6, false, false).is_ok());
        assert!(check_protected_mode(any, true, false).is_ok());
        assert!(check_protected_mode(any, false, true).is_ok());
        let refused = check_protected_mode(any, false, false).unwrap_err();
        assert!(refused.to_string().contains("--allow-anonymous"));
        assert!(refused.to_string().contains("--token-hmac-secret"));
    }

    #[test]
    fn expiry_alone_asks_for_a_refresh() {
        assert_eq!(AuthError::Expired.code(), AuthCode::TokenExpired);
        assert_eq!(AuthError::Expired.code().close_code(), CLOSE_TOKEN_EXPIRED);
        assert_eq!(AuthError::Signature.code().close_code(), CLOSE_FORBIDDEN);
        for error in [AuthError::Missing, AuthError::Signature, AuthError::Expired] {
            assert!(REASONS.contains(&error.reason()));
        }
    }
}
