//! What a verified token grants, read from its claims with every type checked.
//!
//! The signature and the registered claims (`exp`, `nbf`, `aud`, `iss`) are checked by
//! [`super::token`]; this module reads the claims tether gives meaning to and refuses a
//! token whose claims have the wrong shape rather than guessing (a `channels` that is a
//! string instead of a list would otherwise grant nothing or, worse, something).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::pattern::{is_channel_char, ChannelPattern};
use super::AuthError;
use crate::protocol::MAX_CHANNEL_LEN;

/// Most patterns one claim (`channels`, `publish`) may list: bounds the work of every
/// subscribe and publish check.
pub const MAX_PATTERNS: usize = 128;

/// Longest user id (`sub`), in bytes.
pub const MAX_USER_LEN: usize = 128;

/// The user a token speaks for: its `sub` claim, 1..=128 bytes without control characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserId(Arc<str>);

impl UserId {
    pub fn parse(sub: &str) -> Result<Self, String> {
        if sub.is_empty() || sub.len() > MAX_USER_LEN {
            return Err(format!("must be 1..={MAX_USER_LEN} bytes"));
        }
        if sub.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(sub.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({:?})", self.0)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An authenticated connection: who it is, what it may do, until when.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserId,
    /// Channels the client may subscribe to where the namespace defers to the token.
    pub subscribe: Arc<[ChannelPattern]>,
    /// Channels the client may publish to where the namespace defers to the token.
    pub publish: Arc<[ChannelPattern]>,
    /// The token's `exp`. Past it (plus the leeway) the connection needs a fresh token.
    pub expires_at: SystemTime,
}

/// A subscription token: the application lets `user` subscribe to one `channel`.
#[derive(Debug, Clone)]
pub struct ChannelGrant {
    pub user: UserId,
    pub channel: Box<str>,
    pub expires_at: SystemTime,
}

/// A verified token's claims, typed.
#[derive(Debug, Clone)]
pub enum Grant {
    /// A connection token (no `channel` claim).
    Connection(Identity),
    /// A subscription token (a `channel` claim).
    Subscription(ChannelGrant),
}

impl Grant {
    /// Reads the claims of a token whose signature and registered claims already passed.
    pub fn from_claims(claims: &Map<String, Value>) -> Result<Self, AuthError> {
        let user = match claims.get("sub") {
            None => return Err(claim("sub", "is required (the user id)")),
            Some(Value::String(sub)) => UserId::parse(sub).map_err(|p| claim("sub", p))?,
            Some(_) => return Err(claim("sub", "must be a string")),
        };
        let expires_at = expiry(claims)?;
        match claims.get("channel") {
            None => Ok(Grant::Connection(Identity {
                user,
                subscribe: patterns(claims, "channels")?,
                publish: patterns(claims, "publish")?,
                expires_at,
            })),
            Some(Value::String(channel)) => {
                let valid = !channel.is_empty()
                    && channel.len() <= MAX_CHANNEL_LEN
                    && channel.chars().all(is_channel_char);
                if !valid {
                    return Err(claim(
                        "channel",
                        format!("must be a channel name (1..={MAX_CHANNEL_LEN} of A-Z a-z 0-9 _ - . : # ,)"),
                    ));
                }
                Ok(Grant::Subscription(ChannelGrant {
                    user,
                    channel: channel.as_str().into(),
                    expires_at,
                }))
            }
            Some(_) => Err(claim("channel", "must be a string")),
        }
    }
}

fn claim(name: &'static str, problem: impl Into<String>) -> AuthError {
    AuthError::Claim {
        claim: name,
        problem: problem.into(),
    }
}

/// `exp` as a time. Its presence and value were checked with the signature; this only
/// converts, accepting the fractional seconds NumericDate allows.
fn expiry(claims: &Map<String, Value>) -> Result<SystemTime, AuthError> {
    let seconds = match claims.get("exp") {
        Some(Value::Number(n)) => n.as_f64(),
        _ => None,
    };
    match seconds {
        Some(s) if (0.0..1e12).contains(&s) => Ok(UNIX_EPOCH + Duration::from_secs_f64(s)),
        _ => Err(claim("exp", "must be a NumericDate (seconds since 1970)")),
    }
}

/// A claim holding channel patterns: absent means none; otherwise a list of at most
/// [`MAX_PATTERNS`] valid patterns.
fn patterns(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Arc<[ChannelPattern]>, AuthError> {
    let list = match claims.get(name) {
        None => return Ok(Arc::from([])),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(claim(name, "must be a list of channel patterns")),
    };
    if list.len() > MAX_PATTERNS {
        return Err(claim(
            name,
            format!("lists {} patterns; at most {MAX_PATTERNS}", list.len()),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(p) => {
                ChannelPattern::parse(p).map_err(|e| claim(name, format!("item {i}: {e}")))
            }
            _ => Err(claim(name, format!("item {i} must be a string"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn grant(claims: Value) -> Result<Grant, AuthError> {
        match claims {
            Value::Object(map) => Grant::from_claims(&map),
            _ => unreachable!("tests pass objects"),
        }
    }

    fn claim_of(result: Result<Grant, AuthError>) -> &'static str {
        match result {
            Err(AuthError::Claim { claim, .. }) => claim,
            other => panic!("expected a claim error, got {other:?}"),
        }
    }

    #[test]
    fn a_connection_token_lists_its_patterns() {
        let g = grant(
            json!({"sub": "alice", "exp": 2e9, "channels": ["room:*"], "publish": ["room:lobby"]}),
        );
        let Ok(Grant::Connection(identity)) = g else {
            panic!("expected a connection grant, got {g:?}");
        };
        assert_eq!(identity.user.as_str(), "alice");
        assert!(identity.subscribe[0].matches("room:x"));
        assert!(identity.publish[0].matches("room:lobby"));
        assert_eq!(
            identity.expires_at,
            UNIX_EPOCH + Duration::from_secs(2_000_000_000)
        );
    }

    #[test]
    fn a_channel_claim_makes_a_subscription_token() {
        let g = grant(json!({"sub": "bob", "exp": 2e9, "channel": "dm:#alice,bob"}));
        assert!(matches!(g, Ok(Grant::Subscription(ref s)) if &*s.channel == "dm:#alice,bob"));
    }

    #[test]
    fn claims_of_the_wrong_type_are_refused_by_name() {
        let base = |extra: Value| {
            let mut claims = json!({"sub": "a", "exp": 2e9});
            for (k, v) in extra.as_object().unwrap() {
                claims[k] = v.clone();
            }
            grant(claims)
        };
        assert_eq!(claim_of(base(json!({"channels": "room:*"}))), "channels");
        assert_eq!(claim_of(base(json!({"channels": [1]}))), "channels");
        assert_eq!(claim_of(base(json!({"publish": ["a b"]}))), "publish");
        assert_eq!(claim_of(base(json!({"sub": 7}))), "sub");
        assert_eq!(claim_of(base(json!({"sub": ""}))), "sub");
        assert_eq!(claim_of(base(json!({"channel": ["x"]}))), "channel");
        assert_eq!(claim_of(base(json!({"channel": "a/b"}))), "channel");
        assert_eq!(claim_of(base(json!({"exp": "soon"}))), "exp");
        assert_eq!(claim_of(grant(json!({"exp": 2e9}))), "sub");
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("c{i}")).collect();
        assert_eq!(claim_of(base(json!({"channels": many}))), "channels");
    }
}
