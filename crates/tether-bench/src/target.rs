//! The WebSocket URL a run aims at, parsed once so every connection reuses the same address.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use crate::error::BenchError;

/// A `ws://` or `wss://host:port/path?query` target, resolved to one socket address.
///
/// `wss://` exists to measure a proxy's TLS termination; the generator then pays for TLS on
/// its side too, which is why it runs on a CPU of its own (see `bench/compare.sh`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl {
    scheme: Scheme,
    addr: SocketAddr,
    authority: String,
    path_and_query: String,
}

/// Whether the target speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Ws,
    Wss,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }
}

impl TargetUrl {
    /// `ws` or `wss`.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host as written (no port, no brackets), the name a TLS client verifies.
    pub fn host(&self) -> &str {
        let host = match self.authority.rfind(':') {
            Some(i) => &self.authority[..i],
            None => &self.authority,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }

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
            "{}://{}{}{sep}{param}={value}",
            self.scheme.as_str(),
            self.authority,
            self.path_and_query
        )
    }

    /// The request URL as given.
    pub fn url(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority,
            self.path_and_query
        )
    }
}

impl FromStr for TargetUrl {
    type Err = BenchError;

    fn from_str(url: &str) -> Result<TargetUrl, BenchError> {
        let bad = |reason: &str| BenchError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("ws://") {
            (Scheme::Ws, rest)
        } else if let Some(rest) = url.strip_prefix("wss://") {
            (Scheme::Wss, rest)
        } else {
            return Err(bad("only ws:// and wss:// URLs are supported"));
        };
        let (authority, path_and_query) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() {
            return Err(bad("missing host"));
        }
        if !authority.contains(':') || authority.ends_with(']') {
            return Err(bad(
                "missing port (write ws://host:port/... or wss://host:port/...)",
            ));
        }
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| bad(&format!("cannot resolve {authority}: {e}")))?
            .next()
            .ok_or_else(|| bad("host resolves to no address"))?;
        Ok(TargetUrl {
            scheme,
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
    fn wss_keeps_its_scheme_and_names_the_host_to_verify() {
        let t: TargetUrl = "wss://localhost:9443/ws".parse().unwrap();
        assert_eq!(t.scheme(), Scheme::Wss);
        assert_eq!(t.host(), "localhost");
        assert_eq!(
            t.url_with_param("sid", "c1"),
            "wss://localhost:9443/ws?sid=c1"
        );
        let v6: TargetUrl = "wss://[::1]:9443/".parse().unwrap();
        assert_eq!(v6.host(), "::1");
        let plain: TargetUrl = "ws://127.0.0.1:9000/".parse().unwrap();
        assert_eq!(plain.scheme(), Scheme::Ws);
        assert_eq!(plain.host(), "127.0.0.1");
    }

    #[test]
    fn non_ws_scheme_and_missing_port_are_rejected() {
        assert!("http://127.0.0.1:9000/".parse::<TargetUrl>().is_err());
        assert!("https://127.0.0.1:9000/".parse::<TargetUrl>().is_err());
        assert!("wss://127.0.0.1/".parse::<TargetUrl>().is_err());
        assert!("ws://127.0.0.1/".parse::<TargetUrl>().is_err());
        assert!("ws:///x".parse::<TargetUrl>().is_err());
    }
}
