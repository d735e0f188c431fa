//! Fuzz target for the PROXY protocol v1/v2 reader (`parse_proxy_header`). Fixed cases in
//! `cargo test`; `TETHER_FUZZ_ITERS=N` for a longer run (docs/fuzz.md).
//!
//! The connection drains the header's `len` bytes from its buffer and reads the request after
//! them, so `len` must be exactly the header, whatever follows it, and a header that arrives in
//! pieces must read as "incomplete" until its last byte, never as invalid.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ppp::v2::{Builder, Command, Protocol, Version};
use proptest::prelude::*;
use proptest::sample::Index;
use tether_proxy::client_ip::{parse_proxy_header, ProxyHeader};
use tether_testkit::fuzz;

/// A valid header and the source it names.
#[derive(Debug, Clone)]
struct Valid {
    bytes: fuzz::Input,
    source: Option<SocketAddr>,
}

fn v1() -> impl Strategy<Value = Valid> {
    let v4 = (
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(s, d, sp, dp)| {
            let (s, d) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
            Valid {
                bytes: fuzz::Input(format!("PROXY TCP4 {s} {d} {sp} {dp}\r\n").into_bytes()),
                source: Some(SocketAddr::new(IpAddr::V4(s), sp)),
            }
        });
    let v6 = (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(s, d, sp, dp)| {
            let (s, d) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
            Valid {
                bytes: fuzz::Input(format!("PROXY TCP6 {s} {d} {sp} {dp}\r\n").into_bytes()),
                source: Some(SocketAddr::new(IpAddr::V6(s), sp)),
            }
        });
    let unknown = Just(Valid {
        bytes: fuzz::Input(b"PROXY UNKNOWN\r\n".to_vec()),
        source: None,
    });
    prop_oneof![4 => v4, 4 => v6, 1 => unknown]
}

fn v2() -> impl Strategy<Value = Valid> {
    let addr = prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(ip.into()), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(ip.into()), port)),
    ];
    let tlv = (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40));
    (addr, any::<u16>(), proptest::collection::vec(tlv, 0..4)).prop_map(
        |(source, dest_port, tlvs)| {
            // Both addresses of one family, as a sender writes them.
            let dest = match source {
                SocketAddr::V4(_) => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), dest_port),
                SocketAddr::V6(_) => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), dest_port),
            };
            let mut builder = Builder::with_addresses(
                Version::Two | Command::Proxy,
                Protocol::Stream,
                (source, dest),
            );
            for (kind, value) in &tlvs {
                builder = builder.write_tlv(*kind, value).expect("tlv fits");
            }
            Valid {
                bytes: fuzz::Input(builder.build().expect("header builds")),
                source: Some(source),
            }
        },
    )
}

proptest! {
    #![proptest_config(fuzz::config(4000))]

    /// A valid v1 or v2 header followed by anything is read as exactly its own length, and
    /// every shorter prefix of it is incomplete.
    #[test]
    fn a_valid_header_then_junk_reads_as_the_header(
        header in prop_oneof![v1(), v2()],
        junk in proptest::collection::vec(any::<u8>(), 0..64),
        prefix: Index,
    ) {
        let mut input = header.bytes.0.clone();
        input.extend_from_slice(&junk);
        prop_assert_eq!(
            parse_proxy_header(&input),
            ProxyHeader::Complete { len: header.bytes.len(), source: header.source }
        );
        let k = prefix.index(header.bytes.len());
        prop_assert_eq!(parse_proxy_header(&header.bytes[..k]), ProxyHeader::Incomplete, "prefix of {}", k);
    }
}

const HEADERS: &[&[u8]] = &[
    b"PROXY TCP4 192.0.2.1 192.0.2.2 5555 80\r\nGET / HTTP/1.1\r\n",
    b"PROXY TCP6 2001:db8::1 ::1 65535 443\r\n",
    b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    // v2, PROXY over TCP4 from 192.0.2.3:4444 to 192.0.2.4:80.
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x03\xc0\x00\x02\x04\x11\x5c\x00\x50GET /",
    // v2, LOCAL with one TLV (type 0x04, NOOP).
    b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x05\x04\x00\x02ab",
    // v2, PROXY over TCP6.
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x24\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x01\xbb\x00\x50",
];

const DICT: &[&[u8]] = &[
    b"\r\n",
    b" ",
    b"PROXY ",
    b"TCP4 ",
    b"TCP6 ",
    b"UNKNOWN",
    b"\r\n\r\n\x00\r\nQUIT\n",
    b"\x21",
    b"\x20",
    b"\x11",
    b"\x21",
    b"\x31",
    b"\xff\xff",
    b"\x00\x00",
    b"65536",
    b"256.1.1.1",
    b"::ffff:1.2.3.4",
];

proptest! {
    #![proptest_config(fuzz::config(6000))]

    /// Never a panic, and a complete header is never longer than the bytes it was read from
    /// (the caller drains that many).
    #[test]
    fn any_bytes_read_as_a_header_no_longer_than_themselves(
        input in fuzz::mutated(HEADERS, DICT, 6),
    ) {
        if let ProxyHeader::Complete { len, .. } = parse_proxy_header(&input) {
            prop_assert!(len <= input.len(), "len {} of {} bytes", len, input.len());
            prop_assert!(len > 0);
        }
    }
}
