//! The admin bearer token: a secret that never prints and compares in constant time.

use std::fmt;

use serde::Deserialize;

/// Shortest token accepted: 16 characters. `openssl rand -hex 32` makes a good one.
pub const MIN_LEN: usize = 16;
/// Longest token accepted; it travels in a header, so it must stay well under the head limit.
pub const MAX_LEN: usize = 1024;

/// The secret that `Authorization: Bearer …` must carry for the admin API.
///
/// `Debug` prints `AdminToken(<redacted>)` and there is no `Display`, so a token cannot reach a
/// log line or an error message by accident (the configuration is logged with `{:?}`).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Box<str>);

impl AdminToken {
    /// Checks that `text` can be a bearer token: 16 to 1024 visible ASCII characters (no
    /// spaces, nothing a header cannot carry). The error never repeats the secret.
    pub fn new(text: &str) -> Result<AdminToken, String> {
        if text.len() < MIN_LEN {
            return Err(format!(
                "the token is {} characters; at least {MIN_LEN} are needed (e.g. `openssl rand -hex 32`)",
                text.len()
            ));
        }
        if text.len() > MAX_LEN {
            return Err(format!("the token is longer than {MAX_LEN} characters"));
        }
        if let Some(at) = text.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "the token has a space, control or non-ASCII character at position {}; only visible ASCII can travel in a header",
                at + 1
            ));
        }
        Ok(AdminToken(text.into()))
    }

    /// A fresh random token: 256 bits from the thread's CSPRNG, as 64 hex digits.
    pub fn generate() -> AdminToken {
        let bytes: [u8; 32] = rand::random();
        AdminToken(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Whether `presented` is this token, taking the same time wherever they first differ, so
    /// a client cannot find the token byte by byte by timing refusals. Only the length can be
    /// learnt that way, which says nothing useful about a random token.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        if presented.len() != expected.len() {
            return false;
        }
        let diff = expected
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // Keeps the optimiser from turning the fold into an early-exit comparison.
        std::hint::black_box(diff) == 0
    }

    /// The secret itself, for a client that must send it (the demo, tests).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for AdminToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        AdminToken::new(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "0123456789abcdef0123";

    #[test]
    fn debug_never_shows_the_secret() {
        let token = AdminToken::new(GOOD).unwrap();
        let shown = format!("{token:?} {:?}", Some(&token));
        assert!(!shown.contains(GOOD), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn generated_tokens_are_valid_and_differ() {
        let (a, b) = (AdminToken::generate(), AdminToken::generate());
        assert_ne!(a, b);
        assert_eq!(AdminToken::new(a.expose()), Ok(a));
    }

    #[test]
    fn only_the_exact_token_matches() {
        let token = AdminToken::new(GOOD).unwrap();
        assert!(token.matches(GOOD.as_bytes()));
        assert!(!token.matches(b"0123456789abcdef012"));
        assert!(!token.matches(b"0123456789abcdef0124"));
        assert!(!token.matches(b"0123456789abcdef01234"));
        assert!(!token.matches(b""));
    }

    #[test]
    fn short_spaced_or_non_ascii_tokens_are_refused_without_echoing_them() {
        for bad in [
            "short",
            "0123456789 abcdef",
            "0123456789abcdéf0",
            "tab\there0123456789",
        ] {
            let e = AdminToken::new(bad).unwrap_err();
            assert!(!e.contains(bad), "{e}");
        }
        assert!(AdminToken::new(&"x".repeat(MAX_LEN + 1)).is_err());
    }
}
