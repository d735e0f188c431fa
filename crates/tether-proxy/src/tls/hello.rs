//! Reading a TLS ClientHello without terminating TLS, for `tls-passthrough` listeners.
//!
//! A passthrough listener routes on the server name the client asks for, then replays the
//! bytes to a backend that terminates TLS itself. All it needs from the ClientHello is the
//! `server_name` extension, so this is a small parser of that one message and not a TLS stack:
//! it validates exactly what it walks over (record framing, the handshake header, the fixed
//! fields before the extensions, the extension list) and leaves every other check to the
//! backend, which sees the same bytes.
//!
//! The ClientHello may arrive in several TCP segments and span several TLS records (a
//! post-quantum key share makes it larger than one 1460-byte segment). [`peek`] looks at
//! everything read so far and answers "need more", "here is the SNI" or "refuse"; the caller
//! reads more and asks again. Its cost is a walk over at most `limit` bytes per call, and the
//! caller bounds the number of calls with a deadline, so a slow client costs little.
//!
//! Every length in the message is checked against what is left before it is used: the parser
//! works on slices and never indexes past them, so arbitrary bytes yield an error, never a
//! panic (see the property tests at the bottom).

use rustls::pki_types::DnsName;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest ClientHello accepted by default, record headers included. Browsers send 0.5-2
/// KiB (about 1.8 KiB with a post-quantum key share); 16 KiB leaves room for long extension
/// lists while refusing a client that tries to make the proxy buffer more.
pub const DEFAULT_LIMIT: usize = 16 * 1024;

/// The most a single TLS plaintext record may carry (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;
const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

/// What a complete ClientHello told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The server name the client asked for, lower-cased; `None` when it sent none (a client
    /// that connects by IP address, or an old one).
    pub sni: Option<DnsName<'static>>,
    /// How many bytes of the input the records holding the ClientHello took. Everything read
    /// (not only these) must be replayed to the backend.
    pub len: usize,
}

/// Where a look at the bytes read so far stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// The ClientHello is not complete yet; read more.
    Incomplete,
    Complete(ClientHello),
}

/// Why the bytes are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The first byte is not a TLS handshake record: plain HTTP, or anything else.
    #[error("not TLS (first byte {0:#04x})")]
    NotTls(u8),
    /// An SSL 2.0-format or SSL 3.0 hello: protocols with known breaks, refused outright.
    #[error("{0} hello refused")]
    Legacy(LegacyVersion),
    /// More than `limit` bytes without a complete ClientHello.
    #[error("ClientHello larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The bytes are TLS-framed but not a well-formed ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// A length field points past the end of what contains it.
    #[error("malformed ClientHello: the {0} runs past the end of its container")]
    Truncated(&'static str),
}

/// A protocol older than TLS 1.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyVersion {
    Ssl2,
    Ssl3,
}

impl std::fmt::Display for LegacyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LegacyVersion::Ssl2 => "SSLv2",
            LegacyVersion::Ssl3 => "SSLv3",
        })
    }
}

impl HelloError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            HelloError::NotTls(_) => "not_tls",
            HelloError::Legacy(_) => "legacy_version",
            HelloError::TooLarge { .. } => "too_large",
            HelloError::Malformed(_) | HelloError::Truncated(_) => "malformed",
        }
    }
}

/// Looks at the bytes read so far (`buf` starts at the first byte of the connection).
/// Bytes past the ClientHello's records are ignored, not refused.
pub fn peek(buf: &[u8], limit: usize) -> Result<Peek, HelloError> {
    let Some(&first) = buf.first() else {
        return Ok(Peek::Incomplete);
    };
    if first != CONTENT_HANDSHAKE {
        return legacy_or_not_tls(buf);
    }
    // The handshake message, reassembled only when it spans several records: the usual
    // ClientHello fits in one, and is then parsed in place.
    let mut joined: Vec<u8> = Vec::new();
    let mut single: Option<&[u8]> = None;
    let mut pos = 0;
    loop {
        // Whatever record would start here could not end within the limit.
        if pos + RECORD_HEADER > limit {
            return Err(HelloError::TooLarge { limit });
        }
        let Some(header) = buf.get(pos..pos + RECORD_HEADER) else {
            return Ok(Peek::Incomplete);
        };
        if header[0] != CONTENT_HANDSHAKE {
            return Err(HelloError::Malformed(
                "a record that is not a handshake before the ClientHello ended",
            ));
        }
        if header[1] != 3 {
            return Err(HelloError::Malformed("record version is not 3.x"));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            return Err(HelloError::Malformed("empty handshake record"));
        }
        if len > MAX_RECORD {
            return Err(HelloError::Malformed("record longer than 16 KiB"));
        }
        let end = pos + RECORD_HEADER + len;
        if end > limit {
            return Err(HelloError::TooLarge { limit });
        }
        let Some(fragment) = buf.get(pos + RECORD_HEADER..end) else {
            return Ok(Peek::Incomplete);
        };
        pos = end;
        let message: &[u8] = match single.take() {
            None if joined.is_empty() => {
                single = Some(fragment);
                fragment
            }
            Some(first) => {
                joined.extend_from_slice(first);
                joined.extend_from_slice(fragment);
                &joined
            }
            None => {
                joined.extend_from_slice(fragment);
                &joined
            }
        };
        let Some(header) = message.get(..4) else {
            continue;
        };
        if header[0] != HANDSHAKE_CLIENT_HELLO {
            return Err(HelloError::Malformed(
                "first handshake message is not a ClientHello",
            ));
        }
        let body_len =
            usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
        // Refuse a declared size over the limit now, before waiting for its bytes.
        if 4 + body_len > limit {
            return Err(HelloError::TooLarge { limit });
        }
        if let Some(body) = message.get(4..4 + body_len) {
            let sni = parse_body(body)?;
            return Ok(Peek::Complete(ClientHello { sni, len: pos }));
        }
    }
}

/// An SSL 2.0 CLIENT-HELLO has a 2-byte length with the top bit set, then message type 1.
fn legacy_or_not_tls(buf: &[u8]) -> Result<Peek, HelloError> {
    let first = buf[0];
    if first & 0x80 == 0 {
        return Err(HelloError::NotTls(first));
    }
    match buf.get(2) {
        None => Ok(Peek::Incomplete),
        Some(1) => Err(HelloError::Legacy(LegacyVersion::Ssl2)),
        Some(_) => Err(HelloError::NotTls(first)),
    }
}

/// The ClientHello body (RFC 8446 §4.1.2; the same layout back to TLS 1.0).
fn parse_body(body: &[u8]) -> Result<Option<DnsName<'static>>, HelloError> {
    let mut r = Reader(body);
    let version = r.u16("client version")?;
    match version {
        0x0300 => return Err(HelloError::Legacy(LegacyVersion::Ssl3)),
        v if v >> 8 != 3 || v < 0x0300 => {
            return Err(HelloError::Malformed("client version is not 3.x"))
        }
        _ => {}
    }
    r.take(32, "random")?;
    let session_id = r.u8("session id")?;
    if session_id > 32 {
        return Err(HelloError::Malformed("session id longer than 32 bytes"));
    }
    r.take(usize::from(session_id), "session id")?;
    let suites = usize::from(r.u16("cipher suites")?);
    if suites == 0 || suites % 2 != 0 {
        return Err(HelloError::Malformed("cipher suite list is empty or odd"));
    }
    r.take(suites, "cipher suites")?;
    let compression = usize::from(r.u8("compression methods")?);
    if compression == 0 {
        return Err(HelloError::Malformed("no compression method"));
    }
    r.take(compression, "compression methods")?;
    if r.0.is_empty() {
        // A hello without extensions (allowed before TLS 1.3) has no SNI.
        return Ok(None);
    }
    let ext_len = usize::from(r.u16("extensions")?);
    let mut exts = Reader(r.take(ext_len, "extensions")?);
    if !r.0.is_empty() {
        return Err(HelloError::Malformed("bytes after the extensions"));
    }
    let mut sni = None;
    while !exts.0.is_empty() {
        let kind = exts.u16("extension type")?;
        let len = usize::from(exts.u16("extension length")?);
        let data = exts.take(len, "extension data")?;
        if kind == EXT_SERVER_NAME {
            if sni.is_some() {
                return Err(HelloError::Malformed("two server_name extensions"));
            }
            sni = Some(parse_server_name(data)?);
        }
    }
    Ok(sni.flatten())
}

/// The `server_name` extension (RFC 6066 §3): a list holding at most one host name.
fn parse_server_name(data: &[u8]) -> Result<Option<DnsName<'static>>, HelloError> {
    let mut r = Reader(data);
    let list_len = usize::from(r.u16("server name list")?);
    let mut list = Reader(r.take(list_len, "server name list")?);
    if !r.0.is_empty() {
        return Err(HelloError::Malformed("bytes after the server name list"));
    }
    let mut host = None;
    while !list.0.is_empty() {
        let kind = list.u8("server name type")?;
        let len = usize::from(list.u16("server name")?);
        let name = list.take(len, "server name")?;
        if kind != NAME_TYPE_HOST {
            continue;
        }
        if host.is_some() {
            return Err(HelloError::Malformed("two host names"));
        }
        let name = std::str::from_utf8(name)
            .ok()
            .and_then(|s| DnsName::try_from(s).ok())
            .ok_or(HelloError::Malformed("server name is not a DNS name"))?;
        host = Some(name.to_lowercase_owned());
    }
    Ok(host)
}

/// A cursor over a slice whose reads fail, naming the field, instead of running past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if n > self.0.len() {
            return Err(HelloError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Why reading a ClientHello from a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadHelloError {
    #[error(transparent)]
    Hello(#[from] HelloError),
    /// The client closed before the ClientHello was complete.
    #[error("connection closed after {0} bytes, before the ClientHello ended")]
    Closed(usize),
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads from `io` into `buf` until it holds a complete ClientHello (or is refused).
/// `buf` keeps every byte read, to be replayed to the backend (see
/// [`PrefixedIo`](crate::prefixed::PrefixedIo)). The caller bounds the time, e.g. with
/// `tokio::time::timeout_at`.
pub async fn read<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<ClientHello, ReadHelloError> {
    loop {
        if let Peek::Complete(hello) = peek(buf, limit)? {
            return Ok(hello);
        }
        // Read no further than the limit: a client cannot make the buffer grow past it.
        let room = limit.saturating_sub(buf.len()).clamp(1, 4096);
        buf.reserve(room);
        let n = (&mut *io).take(room as u64).read_buf(buf).await?;
        if n == 0 {
            return Err(ReadHelloError::Closed(buf.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    /// The bytes a real rustls client sends first, asking for `name`.
    fn rustls_hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Re-frames one handshake message into records of at most `size` bytes.
    fn reframe(hello: &[u8], size: usize) -> Vec<u8> {
        let message = &hello[RECORD_HEADER..];
        let mut out = Vec::new();
        for chunk in message.chunks(size) {
            out.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn sni_of(buf: &[u8]) -> Option<String> {
        match peek(buf, DEFAULT_LIMIT) {
            Ok(Peek::Complete(h)) => h.sni.map(|n| n.as_ref().to_owned()),
            other => panic!("expected a complete hello, got {other:?}"),
        }
    }

    #[test]
    fn sni_of_a_rustls_client_hello_is_found() {
        let hello = rustls_hello("Api.Example.com");
        assert_eq!(sni_of(&hello).as_deref(), Some("api.example.com"));
    }

    #[test]
    fn a_client_connecting_by_ip_sends_no_sni() {
        assert_eq!(sni_of(&rustls_hello("127.0.0.1")), None);
    }

    #[test]
    fn every_prefix_of_a_hello_is_incomplete_never_an_error() {
        let hello = rustls_hello("chat.example.com");
        for n in 0..hello.len() {
            assert_eq!(
                peek(&hello[..n], DEFAULT_LIMIT),
                Ok(Peek::Incomplete),
                "{n}"
            );
        }
    }

    #[test]
    fn a_hello_spread_over_many_records_is_reassembled() {
        let hello = rustls_hello("chat.example.com");
        let framed = reframe(&hello, 7);
        assert!(framed.len() > hello.len() + 5 * 10);
        assert_eq!(sni_of(&framed).as_deref(), Some("chat.example.com"));
        let Ok(Peek::Complete(h)) = peek(&framed, DEFAULT_LIMIT) else {
            unreachable!()
        };
        assert_eq!(h.len, framed.len());
    }

    #[test]
    fn plain_http_is_not_tls() {
        assert_eq!(
            peek(b"GET / HTTP/1.1\r\n", DEFAULT_LIMIT),
            Err(HelloError::NotTls(b'G'))
        );
    }

    #[test]
    fn sslv2_and_sslv3_hellos_are_refused() {
        // SSLv2 CLIENT-HELLO: 2-byte length with the top bit, type 1, version 3.0.
        let v2 = [0x80, 0x2e, 0x01, 0x03, 0x00, 0x00, 0x15];
        assert_eq!(
            peek(&v2, DEFAULT_LIMIT),
            Err(HelloError::Legacy(LegacyVersion::Ssl2))
        );
        let mut v3 = rustls_hello("a.example");
        v3[RECORD_HEADER + 4..RECORD_HEADER + 6].copy_from_slice(&[3, 0]);
        assert_eq!(
            peek(&v3, DEFAULT_LIMIT),
            Err(HelloError::Legacy(LegacyVersion::Ssl3))
        );
    }

    #[test]
    fn a_hello_declaring_64_kib_is_refused_before_it_is_read() {
        let mut big = vec![CONTENT_HANDSHAKE, 3, 1, 0x40, 0x00, HANDSHAKE_CLIENT_HELLO];
        big.extend_from_slice(&[0x01, 0x00, 0x00]); // 64 KiB body
        assert_eq!(
            peek(&big, DEFAULT_LIMIT),
            Err(HelloError::TooLarge {
                limit: DEFAULT_LIMIT
            })
        );
    }

    #[test]
    fn records_past_the_limit_are_refused() {
        // Many small records, each well-formed, whose sum passes the limit.
        let hello = rustls_hello("a.example");
        let framed = reframe(&hello, 1);
        assert_eq!(
            peek(&framed, 1024),
            Err(HelloError::TooLarge { limit: 1024 })
        );
    }

    #[test]
    fn an_oversized_record_or_other_content_type_is_malformed() {
        let over = [CONTENT_HANDSHAKE, 3, 1, 0x40, 0x01];
        assert!(matches!(
            peek(&over, 1 << 20),
            Err(HelloError::Malformed(_))
        ));
        let hello = rustls_hello("a.example");
        let mut mixed = reframe(&hello, 40);
        mixed[45] = 23; // the second record claims to be application data
        assert!(matches!(
            peek(&mixed, DEFAULT_LIMIT),
            Err(HelloError::Malformed(_))
        ));
    }

    #[test]
    fn a_bad_host_name_is_malformed() {
        let hello = rustls_hello("abc.example");
        let at = hello.windows(11).position(|w| w == b"abc.example").unwrap();
        let mut bad = hello.clone();
        bad[at] = b' ';
        assert_eq!(
            peek(&bad, DEFAULT_LIMIT),
            Err(HelloError::Malformed("server name is not a DNS name"))
        );
    }

    #[tokio::test]
    async fn read_gathers_a_hello_split_into_segments() {
        let hello = rustls_hello("chat.example.com");
        let (mut client, mut server) = tokio::io::duplex(64);
        let sent = hello.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in sent.chunks(100) {
                client.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let mut buf = Vec::new();
        let got = read(&mut server, &mut buf, DEFAULT_LIMIT).await.unwrap();
        assert_eq!(got.sni.unwrap().as_ref(), "chat.example.com");
        assert_eq!(buf, hello, "every byte read is kept for the replay");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn read_reports_a_client_that_leaves_mid_hello() {
        let hello = rustls_hello("chat.example.com");
        let mut half: &[u8] = &hello[..hello.len() / 2];
        let mut buf = Vec::new();
        let err = read(&mut half, &mut buf, DEFAULT_LIMIT).await.unwrap_err();
        assert!(
            matches!(err, ReadHelloError::Closed(n) if n == hello.len() / 2),
            "{err}"
        );
    }

    #[tokio::test]
    async fn read_never_buffers_more_than_the_limit() {
        let endless = [CONTENT_HANDSHAKE, 3, 1, 0x40, 0x00];
        let mut input: Vec<u8> = endless.iter().copied().cycle().take(1 << 20).collect();
        input[5] = HANDSHAKE_CLIENT_HELLO;
        let mut src: &[u8] = &input;
        let mut buf = Vec::new();
        let err = read(&mut src, &mut buf, 2048).await.unwrap_err();
        assert!(
            matches!(err, ReadHelloError::Hello(HelloError::TooLarge { .. })),
            "{err}"
        );
        assert!(buf.len() <= 2048, "buffered {}", buf.len());
    }

    fn dns_label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the bytes and however they are cut, `peek` returns; and growing the input
        /// never turns an answer back into "incomplete".
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                       cut in 0usize..2048,
                                       limit in 1usize..4096) {
            let cut = cut.min(bytes.len());
            let before = peek(&bytes[..cut], limit);
            let after = peek(&bytes, limit);
            if before != Ok(Peek::Incomplete) {
                prop_assert_eq!(before, after);
            }
        }

        /// Bytes that pass the first checks (handshake records, a ClientHello header with a
        /// small declared length) reach the body parser with arbitrary contents.
        #[test]
        fn framed_arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600),
                                               declared in 0usize..700,
                                               record in 1usize..300,
                                               cut in any::<prop::sample::Index>()) {
            let mut message = vec![HANDSHAKE_CLIENT_HELLO];
            message.extend_from_slice(&(declared as u32).to_be_bytes()[1..]);
            message.extend_from_slice(&body);
            let mut framed = Vec::new();
            for chunk in message.chunks(record) {
                framed.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
                framed.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
                framed.extend_from_slice(chunk);
            }
            let cut = cut.index(framed.len() + 1);
            let before = peek(&framed[..cut], DEFAULT_LIMIT);
            let after = peek(&framed, DEFAULT_LIMIT);
            if before != Ok(Peek::Incomplete) {
                prop_assert_eq!(before, after);
            }
        }

        /// Mutating a real ClientHello anywhere never panics.
        #[test]
        fn mutated_real_hellos_never_panic(at in any::<prop::sample::Index>(),
                                           value in any::<u8>(),
                                           record in 1usize..600) {
            let mut hello = reframe(&rustls_hello("x.example"), record);
            let i = at.index(hello.len());
            hello[i] = value;
            let _ = peek(&hello, DEFAULT_LIMIT);
        }

        /// For any host name, any record size and any split into segments, the reader agrees
        /// with the name rustls put in its ClientHello.
        #[test]
        fn agrees_with_rustls_over_any_split(labels in proptest::collection::vec(dns_label(), 1..5),
                                             record in 1usize..2000,
                                             cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)) {
            let name = format!("{}.example", labels.join("."));
            let bytes = reframe(&rustls_hello(&name), record);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len())).collect();
            points.sort_unstable();
            for p in points {
                prop_assert_eq!(peek(&bytes[..p], DEFAULT_LIMIT), Ok(Peek::Incomplete));
            }
            let got = peek(&bytes, DEFAULT_LIMIT);
            let Ok(Peek::Complete(hello)) = got else {
                return Err(TestCaseError::fail(format!("{got:?}")));
            };
            prop_assert_eq!(hello.sni.map(|n| n.as_ref().to_owned()), Some(name));
            prop_assert_eq!(hello.len, bytes.len());
        }
    }
}
