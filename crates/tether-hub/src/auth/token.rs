//! Checking a token: size, header, key, signature, time, audience, issuer, claims.
//!
//! The order is chosen so that what costs nothing runs first: a token is measured before
//! it is decoded, its header is read before any key is looked up, and a signature is
//! checked only with the few keys that fit the header's algorithm and `kid`. Whatever a
//! client sends, the work is bounded by the size limit and the number of configured keys.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Validation;
use serde_json::{Map, Value};

use super::claims::{ChannelGrant, Grant, Identity, UserId};
use super::jwks::{JwksSource, Lookup};
use super::keys::{KeyAlgorithm, VerifyingKey};
use super::AuthError;

/// Default [`Checks::max_token_size`]: room for an RS256 signature and a few dozen
/// channel patterns.
pub const DEFAULT_MAX_TOKEN_SIZE: usize = 8 * 1024;
/// Default [`Checks::leeway`].
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

/// The checks beyond the signature.
#[derive(Debug, Clone)]
pub struct Checks {
    /// When set, a token's `aud` must hold one of these.
    pub audience: Option<Arc<[String]>>,
    /// When set, a token's `iss` must be one of these.
    pub issuer: Option<Arc<[String]>>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Longest token accepted, in bytes.
    pub max_token_size: NonZeroUsize,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            audience: None,
            issuer: None,
            leeway: DEFAULT_LEEWAY,
            max_token_size: NonZeroUsize::new(DEFAULT_MAX_TOKEN_SIZE).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// Checks tokens against the configured keys.
pub struct Verifier {
    keys: Vec<VerifyingKey>,
    jwks: Vec<Arc<JwksSource>>,
    checks: Checks,
}

/// A key that may check a token, and the issuer its source insists on.
struct Candidate {
    key: VerifyingKey,
    issuer: Option<String>,
}

impl Verifier {
    /// `keys` are the HMAC secret and PEM keys; `jwks` the JWKS sources.
    pub fn new(keys: Vec<VerifyingKey>, jwks: Vec<Arc<JwksSource>>, checks: Checks) -> Self {
        Self { keys, jwks, checks }
    }

    pub fn checks(&self) -> &Checks {
        &self.checks
    }

    pub fn jwks(&self) -> &[Arc<JwksSource>] {
        &self.jwks
    }

    /// Checks a connection token (from `connect`, the `token` query parameter, or
    /// `refresh`).
    pub async fn connection(&self, token: &str) -> Result<Identity, AuthError> {
        match self.verify(token).await? {
            Grant::Connection(identity) => Ok(identity),
            Grant::Subscription(_) => Err(AuthError::WrongKind(
                "a subscription token (claim `channel`) cannot open a connection",
            )),
        }
    }

    /// Checks a subscription token for `channel`, held by a connection of `user`.
    pub async fn subscription(
        &self,
        token: &str,
        channel: &str,
        user: &UserId,
    ) -> Result<ChannelGrant, AuthError> {
        let grant = match self.verify(token).await? {
            Grant::Subscription(grant) => grant,
            Grant::Connection(_) => {
                return Err(AuthError::WrongKind(
                    "a subscription token needs a `channel` claim",
                ))
            }
        };
        if &*grant.channel != channel {
            return Err(AuthError::Claim {
                claim: "channel",
                problem: format!("names {:?}, not {channel:?}", grant.channel),
            });
        }
        if grant.user != *user {
            return Err(AuthError::Claim {
                claim: "sub",
                problem: "is not the connection's user".into(),
            });
        }
        Ok(grant)
    }

    /// Checks any token and reads its claims.
    pub async fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let max = self.checks.max_token_size.get();
        if token.len() > max {
            return Err(AuthError::TooLarge {
                len: token.len(),
                max,
            });
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed(
                "expected three base64url parts separated by dots".into(),
            ));
        };
        let header = decode_object(header, "header")?;
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => {
                KeyAlgorithm::from_header(alg).ok_or_else(|| AuthError::Algorithm(alg.clone()))?
            }
            _ => {
                return Err(AuthError::Malformed(
                    "the header has no string `alg`".into(),
                ))
            }
        };
        if header.contains_key("crit") {
            return Err(AuthError::Malformed(
                "critical header extensions (`crit`) are not supported".into(),
            ));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(AuthError::Malformed("`kid` must be a string".into())),
        };
        let candidates = self.candidates(alg, kid, payload).await?;
        for candidate in &candidates {
            let validation = self.validation(candidate);
            match jsonwebtoken::decode::<Map<String, Value>>(token, &candidate.key.key, &validation)
            {
                Ok(data) => return Grant::from_claims(&data.claims),
                // Another configured key may be the one (several PEM keys during a rotation).
                Err(error) if matches!(error.kind(), ErrorKind::InvalidSignature) => continue,
                Err(error) => return Err(map_error(error)),
            }
        }
        Err(AuthError::Signature)
    }

    async fn candidates(
        &self,
        alg: KeyAlgorithm,
        kid: Option<&str>,
        payload: &str,
    ) -> Result<Vec<Candidate>, AuthError> {
        let mut candidates: Vec<Candidate> = self
            .keys
            .iter()
            .filter(|k| k.fits(alg, kid))
            .map(|key| Candidate {
                key: key.clone(),
                issuer: None,
            })
            .collect();
        // JWKS keys are public keys only: an HS256 token is never looked up there.
        let mut ambiguous = false;
        if alg != KeyAlgorithm::Hs256 && !self.jwks.is_empty() {
            // Which provider a token comes from is read before its signature is checked,
            // only to pick the source; the source's issuer is then required, checked.
            let issuer = if self.jwks.iter().any(|s| s.issuer().is_some()) {
                unverified_issuer(payload)
            } else {
                None
            };
            for source in &self.jwks {
                if source
                    .issuer()
                    .is_some_and(|wanted| issuer.as_deref() != Some(wanted))
                {
                    continue;
                }
                match source.find(alg, kid).await {
                    Lookup::Found(key) => candidates.push(Candidate {
                        key,
                        issuer: source.issuer().map(str::to_owned),
                    }),
                    Lookup::Ambiguous => ambiguous = true,
                    Lookup::Unknown => {}
                }
            }
        }
        if candidates.is_empty() {
            let accepts_alg = self.keys.iter().any(|k| k.alg == alg)
                || (alg != KeyAlgorithm::Hs256 && !self.jwks.is_empty());
            return Err(if !accepts_alg {
                AuthError::Algorithm(alg.as_str().into())
            } else if ambiguous {
                AuthError::Malformed("the token has no `kid` and several keys could sign it".into())
            } else {
                AuthError::UnknownKey {
                    kid: kid.map(str::to_owned),
                }
            });
        }
        Ok(candidates)
    }

    fn validation(&self, candidate: &Candidate) -> Validation {
        let mut v = Validation::new(candidate.key.alg.jwt());
        v.leeway = self.checks.leeway.as_secs();
        v.validate_nbf = true;
        v.validate_exp = true;
        let mut required = vec!["exp"];
        match &self.checks.audience {
            Some(audience) => {
                v.set_audience(audience);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        let issuer: Option<Vec<&str>> = match (&candidate.issuer, &self.checks.issuer) {
            (Some(source), _) => Some(vec![source.as_str()]),
            (None, Some(listed)) => Some(listed.iter().map(String::as_str).collect()),
            (None, None) => None,
        };
        if let Some(issuer) = issuer {
            v.set_issuer(&issuer);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v
    }
}

/// Decodes one base64url part holding a JSON object.
fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| AuthError::Malformed(format!("the {what} is not base64url: {e}")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(AuthError::Malformed(format!(
            "the {what} is not a JSON object"
        ))),
        Err(e) => Err(AuthError::Malformed(format!("the {what} is not JSON: {e}"))),
    }
}

fn unverified_issuer(payload: &str) -> Option<String> {
    match decode_object(payload, "payload").ok()?.remove("iss")? {
        Value::String(iss) => Some(iss),
        _ => None,
    }
}

fn map_error(error: jsonwebtoken::errors::Error) -> AuthError {
    let claim_name = |name: &str| -> &'static str {
        match name {
            "exp" => "exp",
            "nbf" => "nbf",
            "aud" => "aud",
            "iss" => "iss",
            "sub" => "sub",
            _ => "registered claim",
        }
    };
    match error.kind() {
        ErrorKind::InvalidSignature => AuthError::Signature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::InvalidIssuer => AuthError::Issuer,
        ErrorKind::MissingRequiredClaim(name) => AuthError::Claim {
            claim: claim_name(name),
            problem: "is required".into(),
        },
        ErrorKind::InvalidClaimFormat(name) => AuthError::Claim {
            claim: claim_name(name),
            problem: "has the wrong type".into(),
        },
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => AuthError::Algorithm(error.to_string()),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthError::Malformed(error.to_string()),
        _ => {
            tracing::warn!(%error, "a configured key could not check a token");
            AuthError::Signature
        }
    }
}
