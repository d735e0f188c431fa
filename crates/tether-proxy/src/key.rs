//! Deriving the routing key of a request from its configured source.

use std::net::IpAddr;

use crate::config::KeySource;
use crate::handshake::RequestHead;

/// A routing key: bytes borrowed from the request, or the client IP's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RoutingKey<'a> {
    Borrowed(&'a [u8]),
    Ip([u8; 16]),
}

impl RoutingKey<'_> {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RoutingKey::Borrowed(b) => b,
            RoutingKey::Ip(b) => b,
        }
    }
}

/// The key for `source`, or `None` when the request does not carry it (the fallback
/// strategy is used then). Empty values count as absent.
pub fn routing_key<'a>(
    source: &KeySource,
    head: &RequestHead,
    buf: &'a [u8],
    client: IpAddr,
) -> Option<RoutingKey<'a>> {
    let found: Option<&'a [u8]> = match source {
        KeySource::Ip => {
            let v6 = match client {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            return Some(RoutingKey::Ip(v6.octets()));
        }
        KeySource::Query(name) => query_param(head.path(buf), name).map(str::as_bytes),
        KeySource::Header(name) => head.header(buf, name).map(<[u8]>::trim_ascii),
        KeySource::Cookie(name) => head.cookie(buf, name),
        KeySource::Path(n) => path_segment(head.path(buf), *n).map(str::as_bytes),
        // The server name of a ClientHello: only `tls-passthrough` listeners route on it
        // (see `connection::passthrough`); an HTTP request uses the fallback strategy.
        KeySource::Sni => None,
    };
    found.filter(|v| !v.is_empty()).map(RoutingKey::Borrowed)
}

fn query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn path_segment(path: &str, n: usize) -> Option<&str> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.split('/').filter(|s| !s.is_empty()).nth(n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] =
        b"GET /room/42/ws?sid=abc&x=1 HTTP/1.1\r\nHost: h\r\nX-User:  u7 \r\nCookie: s=c9\r\n\r\n";

    fn key(source: &str) -> Option<Vec<u8>> {
        let head = RequestHead::parse(REQ, 16).unwrap();
        routing_key(
            &source.parse().unwrap(),
            &head,
            REQ,
            "127.0.0.1".parse().unwrap(),
        )
        .map(|k| k.as_bytes().to_vec())
    }

    #[test]
    fn each_key_source_finds_its_value() {
        assert_eq!(key("query:sid").unwrap(), b"abc");
        assert_eq!(key("header:x-user").unwrap(), b"u7");
        assert_eq!(key("cookie:s").unwrap(), b"c9");
        assert_eq!(key("path:2").unwrap(), b"42");
        assert_eq!(key("ip").unwrap().len(), 16);
    }

    #[test]
    fn missing_key_is_none() {
        assert_eq!(key("query:nope"), None);
        assert_eq!(key("path:9"), None);
        assert_eq!(key("cookie:none"), None);
    }
}
