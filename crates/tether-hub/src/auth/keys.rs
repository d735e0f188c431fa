//! The keys tokens are checked with: an HMAC secret, PEM public keys, JWKS entries.
//!
//! Every key is bound to exactly one algorithm when it is loaded, and a token is checked
//! only with keys of the algorithm its header names. That is what defeats algorithm
//! confusion: a token that says `HS256` is never checked against an RSA public key used as
//! an HMAC secret (the public key is public, so anyone could sign with it), and `alg:
//! none` names no algorithm tether knows.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::signature::{
    UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256,
};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm as JwkAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

/// Shortest HMAC secret accepted: RFC 7518 §3.2 asks for a key at least as long as the
/// hash (32 bytes for HS256); shorter secrets can be guessed offline from one token.
pub const MIN_HMAC_SECRET: usize = 32;

/// Smallest RSA modulus accepted, in bits (what aws-lc verifies for RS256).
pub const MIN_RSA_BITS: usize = 2048;

/// The algorithms the hub accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// HMAC with SHA-256 and a secret shared with the application.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl KeyAlgorithm {
    /// The algorithm a JWT header names, if the hub accepts it.
    pub fn from_header(alg: &str) -> Option<Self> {
        match alg {
            "HS256" => Some(Self::Hs256),
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }

    pub(crate) fn jwt(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
        }
    }
}

/// A key bound to its algorithm, with the `kid` it is known by, if any.
#[derive(Clone)]
pub struct VerifyingKey {
    pub alg: KeyAlgorithm,
    pub kid: Option<Arc<str>>,
    pub(crate) key: Arc<DecodingKey>,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Whether this key may check a token whose header says `alg` and `kid`. A key without
    /// a `kid` (a configured PEM file) checks tokens with any `kid`; a key with one checks
    /// only tokens that name it.
    pub fn fits(&self, alg: KeyAlgorithm, kid: Option<&str>) -> bool {
        self.alg == alg
            && match (&self.kid, kid) {
                (Some(mine), Some(theirs)) => &**mine == theirs,
                (Some(_), None) | (None, _) => true,
            }
    }
}

/// A key that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    #[error("the HMAC secret is {len} bytes; at least {MIN_HMAC_SECRET} are needed (e.g. `openssl rand -base64 32`)")]
    WeakSecret { len: usize },
    #[error("{file}: {problem}")]
    File { file: PathBuf, problem: String },
}

/// The HS256 key for `secret`.
pub fn hmac_key(secret: &[u8]) -> Result<VerifyingKey, KeyError> {
    if secret.len() < MIN_HMAC_SECRET {
        return Err(KeyError::WeakSecret { len: secret.len() });
    }
    let key = DecodingKey::from_secret(secret).map_err(|_| KeyError::WeakSecret { len: 0 })?;
    Ok(VerifyingKey {
        alg: KeyAlgorithm::Hs256,
        kid: None,
        key: Arc::new(key),
    })
}

/// Reads a PEM public key (`PUBLIC KEY`, `RSA PUBLIC KEY` or a `CERTIFICATE`): an RSA key
/// becomes an RS256 key, a P-256 key an ES256 key; anything else is refused naming the file.
pub fn pem_key_file(file: &Path, kid: Option<&str>) -> Result<VerifyingKey, KeyError> {
    let fail = |problem: String| KeyError::File {
        file: file.to_owned(),
        problem,
    };
    let pem = std::fs::read(file).map_err(|e| fail(format!("cannot read: {e}")))?;
    pem_key(&pem, kid).map_err(fail)
}

/// [`pem_key_file`] for PEM text already read.
pub fn pem_key(pem: &[u8], kid: Option<&str>) -> Result<VerifyingKey, String> {
    if std::str::from_utf8(pem).is_ok_and(|text| text.contains("PRIVATE KEY")) {
        return Err("holds a private key; give the hub only the public key".into());
    }
    let (alg, key) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        (KeyAlgorithm::Rs256, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        (KeyAlgorithm::Es256, key)
    } else {
        return Err("not a PEM RSA or EC public key".into());
    };
    check_usable(alg, &key)?;
    Ok(VerifyingKey {
        alg,
        kid: kid.map(Into::into),
        key: Arc::new(key),
    })
}

/// The key a JWKS entry describes, or why the hub cannot use it. Symmetric (`oct`) entries
/// are refused: a secret has no business in a document served to anyone who asks.
pub fn jwk_key(jwk: &Jwk) -> Result<VerifyingKey, String> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
    {
        return Err("`use` is not `sig`".into());
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyAlgorithm::Rs256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            KeyAlgorithm::Es256
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            return Err(format!(
                "curve {:?} is not supported (only P-256)",
                ec.curve
            ))
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric keys are not taken from a JWKS".into())
        }
        _ => return Err("key type not supported (RSA or EC P-256 only)".into()),
    };
    let declared = jwk.common.key_algorithm;
    let agrees = matches!(
        (declared, alg),
        (None, _)
            | (Some(JwkAlgorithm::RS256), KeyAlgorithm::Rs256)
            | (Some(JwkAlgorithm::ES256), KeyAlgorithm::Es256)
    );
    if !agrees {
        return Err(format!("`alg` {declared:?} is not supported for this key"));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable: {e}"))?;
    check_usable(alg, &key)?;
    Ok(VerifyingKey {
        alg,
        kid: jwk.common.key_id.as_deref().map(Into::into),
        key: Arc::new(key),
    })
}

/// Parses the key once with the verifier that will use it, so a key that could never
/// verify anything (a P-384 key for ES256, a 1024-bit RSA key) is refused at load, naming
/// the key, instead of failing every token with "bad signature".
fn check_usable(alg: KeyAlgorithm, key: &DecodingKey) -> Result<(), String> {
    match (alg, key.kind()) {
        (KeyAlgorithm::Hs256, _) => Ok(()),
        (KeyAlgorithm::Rs256, DecodingKeyKind::RsaModulusExponent { n, .. }) => {
            let bits = significant_bits(n);
            if bits < MIN_RSA_BITS {
                Err(format!(
                    "RSA key of {bits} bits; RS256 needs at least {MIN_RSA_BITS}"
                ))
            } else {
                Ok(())
            }
        }
        (KeyAlgorithm::Rs256, DecodingKeyKind::SecretOrDer(der)) => {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
                .parse()
                .map(drop)
                .map_err(|e| format!("not a usable RS256 key ({e}; at least {MIN_RSA_BITS} bits)"))
        }
        (KeyAlgorithm::Es256, DecodingKeyKind::SecretOrDer(point)) => {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .parse()
                .map(drop)
                .map_err(|e| format!("not a P-256 public key ({e})"))
        }
        (KeyAlgorithm::Es256, DecodingKeyKind::RsaModulusExponent { .. }) => {
            Err("an RSA key cannot check ES256".into())
        }
    }
}

fn significant_bits(big_endian: &[u8]) -> usize {
    match big_endian.iter().position(|&b| b != 0) {
        Some(first) => {
            (big_endian.len() - first - 1) * 8 + (8 - big_endian[first].leading_zeros() as usize)
        }
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hmac_secrets_are_refused() {
        assert!(matches!(
            hmac_key(b"hunter2"),
            Err(KeyError::WeakSecret { len: 7 })
        ));
        assert!(hmac_key(&[7u8; MIN_HMAC_SECRET]).is_ok());
    }

    #[test]
    fn keys_fit_only_their_own_algorithm_and_kid() {
        let key = hmac_key(&[1u8; 32]).unwrap();
        assert!(key.fits(KeyAlgorithm::Hs256, None));
        assert!(key.fits(KeyAlgorithm::Hs256, Some("any")));
        assert!(!key.fits(KeyAlgorithm::Rs256, None));
        let named = VerifyingKey {
            kid: Some("k1".into()),
            ..key
        };
        assert!(named.fits(KeyAlgorithm::Hs256, Some("k1")));
        assert!(!named.fits(KeyAlgorithm::Hs256, Some("k2")));
    }

    #[test]
    fn the_algorithm_list_has_no_none() {
        assert_eq!(KeyAlgorithm::from_header("none"), None);
        assert_eq!(KeyAlgorithm::from_header("HS512"), None);
        assert_eq!(
            KeyAlgorithm::from_header("ES256"),
            Some(KeyAlgorithm::Es256)
        );
    }

    #[test]
    fn pem_garbage_and_private_keys_are_refused() {
        assert!(pem_key(b"hello", None).is_err());
        let private =
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert!(pem_key(private, None).unwrap_err().contains("private key"));
    }

    #[test]
    fn bits_are_counted_from_the_first_set_bit() {
        assert_eq!(significant_bits(&[0, 0, 1]), 1);
        assert_eq!(significant_bits(&[0x80, 0]), 16);
        assert_eq!(significant_bits(&[]), 0);
    }
}
