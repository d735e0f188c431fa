//! The WebSocket URL a run aims at, parsed once so every connection reuses the same address.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use crate::error::BenchError;

/// A `ws://host:port/path?query` target, resolved to one socket address.
///
/// Only plain `ws://` is accepted: the benchmark measures the proxy's tunnel, and TLS on the
/// client side would measure the client instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl {
    addr: SocketAddr,
    authority: String,
    path_and_query: String,
}

impl TargetUrl {
    /// The resolved address connections go to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The path and query as given (`/` when the URL had none).
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// The same target with a different path and query (used by flavours that own the path).
    pub fn with_path(&self, path_and_query: &str) -> TargetUrl {
        TargetUrl {
            path_and_query: path_and_query.to_owned(),
            ..self.clone()
        }
    }

    /// True when the URL named no path beyond `/`.
    pub fn has_default_path(&self) -> bool {
        self.path_and_query == "/"
    }

    /// The request URL with `param=value` appended to the query, the sticky key the proxies
    /// under test hash on.
    pub fn url_with_param(&self, param: &str, value: &str) -> String {
        let sep = if self.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "ws://{}{}{sep}{param}={value}",
            self.authority, self.path_and_query
        )
    }

    /// The request URL as given.
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.authority, self.path_and_query)
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ws://{}{}", self.authority, self.path_and_query)
    }
}

impl FromStr for TargetUrl {
    type Err = BenchError;

    fn from_str(url: &str) -> Result<TargetUrl, BenchError> {
        let bad = |reason: &str| BenchError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| bad("only ws:// URLs are supported"))?;
        let (authority, path_and_query) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() {
            return Err(bad("missing host"));
        }
        if !authority.contains(':') || authority.ends_with(']') {
            return Err(bad("missing port (write ws://host:port/...)"));
        }
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| bad(&format!("cannot resolve {authority}: {e}")))?
            .next()
            .ok_or_else(|| bad("host resolves to no address"))?;
        Ok(TargetUrl {
            addr,
            authority: authority.to_owned(),
            path_and_query,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_param_is_appended_with_the_right_separator() {
        let plain: TargetUrl = "ws://127.0.0.1:9000/ws".parse().unwrap();
        assert_eq!(
            plain.url_with_param("sid", "c7"),
            "ws://127.0.0.1:9000/ws?sid=c7"
        );
        let queried: TargetUrl = "ws://127.0.0.1:9000/ws?x=1".parse().unwrap();
        assert_eq!(
            queried.url_with_param("sid", "c7"),
            "ws://127.0.0.1:9000/ws?x=1&sid=c7"
        );
    }

    #[test]
    fn url_without_path_gets_root_path() {
        let t: TargetUrl = "ws://127.0.0.1:9000".parse().unwrap();
        assert!(t.has_default_path());
        assert_eq!(t.url(), "ws://127.0.0.1:9000/");
    }

    #[test]
    fn non_ws_scheme_and_missing_port_are_rejected() {
        assert!("http://127.0.0.1:9000/".parse::<TargetUrl>().is_err());
        assert!("wss://127.0.0.1:9000/".parse::<TargetUrl>().is_err());
        assert!("ws://127.0.0.1/".parse::<TargetUrl>().is_err());
        assert!("ws:///x".parse::<TargetUrl>().is_err());
    }
}
