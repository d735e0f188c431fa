//! Who the client really is: the peer address, or what a trusted proxy in front says.
//!
//! Only peers in `trusted_proxies` are believed. From them the proxy accepts a PROXY protocol
//! header (v1 or v2, when `accept_proxy` is on) and walks `X-Forwarded-For` from the right,
//! skipping trusted hops: the first untrusted address is the client. Anything a client sends
//! directly is ignored, so a client cannot choose its own hash key by forging a header.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult};

/// The `trusted_proxies` list.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies { nets }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client address for a request that arrived from `peer` carrying `xff` entries.
    pub fn client_ip(&self, peer: IpAddr, xff: &[&str]) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in xff.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>().map(canonical) else {
                // A hop we cannot read ends what can be believed.
                break;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

/// `::ffff:1.2.3.4` is `1.2.3.4`, so IPv4 lists match dual-stack sockets.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The outcome of looking for a PROXY protocol header at the start of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// More bytes are needed.
    Incomplete,
    /// A header of `len` bytes; `source` is the original client (None for `UNKNOWN`/`LOCAL`).
    Complete {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// Not a valid PROXY protocol header.
    Invalid,
}

/// The longest PROXY v1 line, CRLF included (the specification's limit).
const MAX_V1_LEN: usize = 107;

pub fn parse_proxy_header(buf: &[u8]) -> ProxyHeader {
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return ProxyHeader::Incomplete;
    }
    // A v1 line is only judged at its CRLF: ppp calls some prefixes invalid (one that ends
    // just after a space, with a port or address still to come), which would refuse a header
    // that merely arrived in two reads.
    if matches!(result, HeaderResult::V1(Err(_))) && buf.len() < MAX_V1_LEN && !buf.contains(&b'\n')
    {
        return ProxyHeader::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            ProxyHeader::Complete {
                len: h.header.len(),
                source,
            }
        }
        HeaderResult::V2(Ok(h)) => {
            let source = match h.addresses {
                ppp::v2::Addresses::IPv4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v2::Addresses::IPv6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            ProxyHeader::Complete {
                len: h.len(),
                source,
            }
        }
        _ => ProxyHeader::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ])
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let ip = trusted().client_ip("203.0.113.9".parse().unwrap(), &["1.1.1.1"]);
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rightmost_untrusted_hop_is_the_client() {
        let ip = trusted().client_ip(
            "127.0.0.1".parse().unwrap(),
            &["6.6.6.6", "198.51.100.7", "10.1.2.3"],
        );
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn proxy_v1_and_v2_headers_give_the_source() {
        let v1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 5555 80\r\nGET /";
        match parse_proxy_header(v1) {
            ProxyHeader::Complete { len, source } => {
                assert_eq!(&v1[len..], b"GET /");
                assert_eq!(source, Some("192.0.2.1:5555".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "192.0.2.3:4444".parse::<SocketAddr>().unwrap(),
                "192.0.2.4:80".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        match parse_proxy_header(&v2) {
            ProxyHeader::Complete { len, source } => {
                assert_eq!(len, v2.len());
                assert_eq!(source, Some("192.0.2.3:4444".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_proxy_header(b"PROXY TCP4 192.0"),
            ProxyHeader::Incomplete
        );
        assert_eq!(
            parse_proxy_header(b"GET / HTTP/1.1\r\n\r\n"),
            ProxyHeader::Invalid
        );
    }

    /// Found by `tests/fuzz_proxy_header.rs`: ppp called this prefix invalid, so a header
    /// split after a space by the network was refused.
    #[test]
    fn a_v1_header_cut_after_a_space_is_incomplete() {
        let header = b"PROXY TCP4 0.0.0.0 100.10.100.10 10000 1000\r\n";
        for k in 0..header.len() {
            assert_eq!(
                parse_proxy_header(&header[..k]),
                ProxyHeader::Incomplete,
                "{}",
                header[..k].escape_ascii()
            );
        }
        assert_eq!(
            parse_proxy_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n"),
            ProxyHeader::Invalid
        );
        assert_eq!(
            parse_proxy_header(&[b"PROXY TCP4 ".as_slice(), &[b'1'; 100]].concat()),
            ProxyHeader::Invalid
        );
    }
}
