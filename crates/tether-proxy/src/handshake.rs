//! The L7 part of a connection: reading, checking and rewriting HTTP/1.1 heads.
//!
//! Only the head is parsed; the body (and, after `101`, the WebSocket) is never looked at.
//! Header positions are kept as ranges into the read buffer, so a handshake allocates the
//! buffer and the rewritten head and nothing per header.

use std::io;
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::ops::Range;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::body::Framing;
use crate::metrics::RejectReason;

/// Why a request is answered by the proxy itself, with the status it gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} header lines")]
    TooManyHeaders(usize),
    #[error("request head not received in time")]
    Timeout,
    #[error("unsupported WebSocket version")]
    WebSocketVersion,
    #[error("origin not allowed")]
    Origin,
    #[error("too many handshakes from this address")]
    RateLimited,
    #[error("connection limit reached")]
    MaxConn,
    #[error("no backend available")]
    NoBackend,
    #[error("backend handshake rate reached")]
    BackendThrottled,
    #[error("too many handshakes in flight")]
    TooManyPending,
    #[error("backend failed to answer")]
    BackendFailed,
}

impl Reject {
    pub fn status(&self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::Origin => 403,
            Reject::Timeout => 408,
            Reject::HeadTooLarge(_) | Reject::TooManyHeaders(_) => 431,
            Reject::WebSocketVersion => 426,
            Reject::RateLimited => 429,
            Reject::BackendFailed => 502,
            Reject::MaxConn
            | Reject::NoBackend
            | Reject::BackendThrottled
            | Reject::TooManyPending => 503,
        }
    }

    pub fn metric(&self) -> RejectReason {
        match self {
            Reject::BadRequest(_) | Reject::WebSocketVersion => RejectReason::BadRequest,
            Reject::HeadTooLarge(_) | Reject::TooManyHeaders(_) => RejectReason::HeadTooLarge,
            Reject::Timeout => RejectReason::HeadTimeout,
            Reject::Origin => RejectReason::Origin,
            Reject::RateLimited => RejectReason::RateLimited,
            Reject::MaxConn => RejectReason::MaxConn,
            Reject::NoBackend => RejectReason::NoBackend,
            Reject::BackendFailed => RejectReason::BackendFailed,
            Reject::BackendThrottled | Reject::TooManyPending => RejectReason::Throttled,
        }
    }

    /// The complete response the client gets.
    pub fn response(&self, retry_after_secs: u32) -> Vec<u8> {
        let status = self.status();
        let body = format!("{self}\n");
        let mut extra = String::new();
        if matches!(status, 429 | 503) {
            extra.push_str(&format!("retry-after: {retry_after_secs}\r\n"));
        }
        if status == 426 {
            extra.push_str("sec-websocket-version: 13\r\n");
        }
        format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
            reason_phrase(status),
            body.len()
        )
        .into_bytes()
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Limits on reading a head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_bytes: usize,
    pub max_headers: usize,
    pub first_byte: Duration,
    pub complete: Duration,
}

/// How reading a head ended badly.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed before sending a complete head (nothing to answer).
    Closed,
    Io(io::Error),
    Reject(Reject),
}

/// How a request reached the proxy, for the forwarding headers the proxy owns.
#[derive(Debug, Clone, Default)]
pub struct Via {
    /// It came over TLS: `X-Forwarded-Proto: https`, `Forwarded: proto=https`.
    pub https: bool,
    /// The `X-Forwarded-Client-Cert` value of a verified client certificate.
    pub client_cert: Option<String>,
}

/// Reads until `buf` holds a complete head (`\r\n\r\n`); returns the head's length. Bytes
/// after it (a body, or early WebSocket frames) stay in `buf`. `started` is when the
/// connection was accepted: the deadlines count from there, so a slowloris client is cut.
/// Generic over the stream so the fuzz tests can hand it a head split at exact points.
pub async fn read_head<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: &HeadLimits,
    started: Instant,
) -> Result<usize, ReadError> {
    let mut scanned = 0;
    let mut checked = 0;
    loop {
        let end = find_head_end(buf, scanned);
        let head_so_far = end.unwrap_or(buf.len());
        check_head_bytes(buf, checked, head_so_far).map_err(ReadError::Reject)?;
        checked = head_so_far;
        if let Some(end) = end {
            return Ok(end);
        }
        scanned = buf.len().saturating_sub(3);
        if buf.len() >= limits.max_bytes {
            return Err(ReadError::Reject(Reject::HeadTooLarge(limits.max_bytes)));
        }
        let deadline = started
            + if buf.is_empty() {
                limits.first_byte
            } else {
                limits.complete
            };
        buf.reserve(1024.min(limits.max_bytes - buf.len()).max(256));
        let read = tokio::time::timeout_at(deadline, stream.read_buf(buf)).await;
        match read {
            Err(_) => return Err(ReadError::Reject(Reject::Timeout)),
            Ok(Ok(0)) => return Err(ReadError::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ReadError::Io(e)),
        }
    }
}

/// Refuses a head as soon as its bytes show it is not HTTP/1.x, instead of waiting for a
/// blank line that will never come: a first byte that cannot start a method (a TLS
/// ClientHello starts with `0x16`), or a line feed without its carriage return (a bare-LF
/// head, which some servers read differently from others). Checks `buf[from..to]`.
fn check_head_bytes(buf: &[u8], from: usize, to: usize) -> Result<(), Reject> {
    if from == 0 && to > 0 && !is_tchar(buf[0]) {
        return Err(Reject::BadRequest("not an HTTP/1.x request"));
    }
    let bare_lf = buf[from..to]
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (from + i == 0 || buf[from + i - 1] != b'\r'));
    if bare_lf {
        return Err(Reject::BadRequest("line feed without carriage return"));
    }
    Ok(())
}

/// A byte allowed in a method token (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

/// Header positions inside the head buffer.
#[derive(Debug, Clone)]
struct HeaderPos {
    name: Range<usize>,
    value: Range<usize>,
}

/// A parsed request head: ranges into the buffer it was read into.
#[derive(Debug)]
pub struct RequestHead {
    method: Range<usize>,
    path: Range<usize>,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    minor_version: u8,
    headers: Vec<HeaderPos>,
    /// True when this is a valid WebSocket upgrade.
    pub websocket: bool,
    /// Where the request's body ends.
    pub framing: Framing,
}

fn range_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

impl RequestHead {
    /// Parses and checks a request head (`buf[..len]` must be the complete head).
    pub fn parse(buf: &[u8], max_headers: usize) -> Result<RequestHead, Reject> {
        // The header table lives on the stack for the default limit (64): no allocation and
        // no initialisation of slots the head does not use.
        const INLINE: usize = 64;
        let mut inline = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; INLINE];
        let mut heap = Vec::new();
        let storage = if max_headers <= INLINE {
            &mut inline[..max_headers]
        } else {
            heap.resize_with(max_headers, std::mem::MaybeUninit::uninit);
            &mut heap[..]
        };
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(buf, storage) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(Reject::BadRequest("incomplete head")),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Reject::TooManyHeaders(max_headers))
            }
            Err(_) => return Err(Reject::BadRequest("not an HTTP/1.x request head")),
        }
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Err(Reject::BadRequest("incomplete request line"));
        };
        if !path.starts_with('/') {
            return Err(Reject::BadRequest(
                "request target must be an absolute path",
            ));
        }
        let headers: Vec<HeaderPos> = req
            .headers
            .iter()
            .map(|h| HeaderPos {
                name: range_in(buf, h.name.as_bytes()),
                value: range_in(buf, h.value),
            })
            .collect();
        let mut head = RequestHead {
            method: range_in(buf, method.as_bytes()),
            path: range_in(buf, path.as_bytes()),
            minor_version: version,
            headers,
            websocket: false,
            framing: Framing::Empty,
        };
        head.check(buf)?;
        Ok(head)
    }

    /// Request-smuggling and WebSocket rules (RFC 9112 §6.3, RFC 6455 §4.2.1).
    fn check(&mut self, buf: &[u8]) -> Result<(), Reject> {
        match self.headers_named(buf, "host").count() {
            0 if self.minor_version == 1 => {
                return Err(Reject::BadRequest("HTTP/1.1 request without Host"))
            }
            0 | 1 => {}
            _ => return Err(Reject::BadRequest("more than one Host header")),
        }
        self.framing = self.request_framing(buf)?;
        let upgrade = self.header(buf, "upgrade").is_some_and(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        });
        if !upgrade {
            return Ok(());
        }
        if &buf[self.method.clone()] != b"GET" || self.minor_version != 1 {
            return Err(Reject::BadRequest(
                "a WebSocket upgrade must be GET over HTTP/1.1",
            ));
        }
        if self.framing != Framing::Empty {
            // Bytes after the head of an upgrade are WebSocket frames, held until `101`;
            // a body would make them ambiguous.
            return Err(Reject::BadRequest("a WebSocket upgrade with a body"));
        }
        let connection_upgrade = self.headers_named(buf, "connection").any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        });
        if !connection_upgrade {
            return Err(Reject::BadRequest(
                "WebSocket upgrade without `Connection: upgrade`",
            ));
        }
        let key_ok = {
            let mut keys = self.headers_named(buf, "sec-websocket-key");
            matches!((keys.next(), keys.next()), (Some(k), None) if is_websocket_key(k.trim_ascii()))
        };
        if !key_ok {
            return Err(Reject::BadRequest("missing or malformed Sec-WebSocket-Key"));
        }
        if self
            .header(buf, "sec-websocket-version")
            .map(|v| v.trim_ascii())
            != Some(b"13")
        {
            return Err(Reject::WebSocketVersion);
        }
        self.websocket = true;
        Ok(())
    }

    /// Where the body ends (RFC 9112 §6.3), refusing every head whose framing two servers
    /// could read differently: both `Transfer-Encoding` and `Content-Length`, lengths that
    /// disagree or are not numbers, a transfer coding that does not end in `chunked`, or any
    /// transfer coding in HTTP/1.0.
    fn request_framing(&self, buf: &[u8]) -> Result<Framing, Reject> {
        let length = content_length(self.headers_named(buf, "content-length"))
            .map_err(|()| Reject::BadRequest("invalid Content-Length"))?;
        let chunked = transfer_chunked(self.headers_named(buf, "transfer-encoding"));
        match (chunked, length) {
            (None, length) => Ok(length.unwrap_or(Framing::Empty)),
            (Some(_), Some(_)) => Err(Reject::BadRequest(
                "both Transfer-Encoding and Content-Length",
            )),
            (Some(_), None) if self.minor_version == 0 => Err(Reject::BadRequest(
                "Transfer-Encoding in an HTTP/1.0 request",
            )),
            (Some(true), None) => Ok(Framing::Chunked),
            (Some(false), None) => Err(Reject::BadRequest(
                "Transfer-Encoding that does not end in chunked",
            )),
        }
    }

    /// True for `HEAD`, whose response has no body whatever its headers say.
    pub fn is_head(&self, buf: &[u8]) -> bool {
        &buf[self.method.clone()] == b"HEAD"
    }

    /// The first value of a header (case-insensitive name).
    pub fn header<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.headers_named(buf, name).next()
    }

    fn headers_named<'s, 'b, 'n>(
        &'s self,
        buf: &'b [u8],
        name: &'n str,
    ) -> impl Iterator<Item = &'b [u8]> + use<'s, 'b, 'n> {
        self.headers
            .iter()
            .filter(move |h| buf[h.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(move |h| &buf[h.value.clone()])
    }

    pub fn path<'b>(&self, buf: &'b [u8]) -> &'b str {
        // httparse only accepts visible ASCII in the request target.
        std::str::from_utf8(&buf[self.path.clone()]).unwrap_or("/")
    }

    /// All `X-Forwarded-For` entries in order, comma lists flattened.
    pub fn forwarded_for<'b>(&self, buf: &'b [u8]) -> Vec<&'b str> {
        self.headers_named(buf, "x-forwarded-for")
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The value of one cookie from any `Cookie` header.
    pub fn cookie<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.headers_named(buf, "cookie")
            .flat_map(|v| v.split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|&b| b == b'=')?;
                (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
            })
    }

    /// The head to send upstream: the original request line and headers, minus forwarding
    /// headers the proxy sets itself (unless they came from a trusted proxy, then appended to),
    /// plus `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded`. With `close`, the
    /// connection is marked `Connection: close` so the backend ends it after one response
    /// (plain requests are proxied one per connection, never smuggled past the proxy's checks).
    pub fn forward(
        &self,
        buf: &[u8],
        client: IpAddr,
        peer_trusted: bool,
        close: bool,
        out: &mut Vec<u8>,
    ) {
        self.forward_via(buf, client, peer_trusted, close, &Via::default(), out)
    }

    /// [`forward`](Self::forward) for a request that came in as `via` says: `https` sets
    /// the forwarded protocol, and a verified client certificate goes up in
    /// `X-Forwarded-Client-Cert`. That header is the proxy's: any copy in the request is
    /// dropped, from trusted peers too, so no client can claim an identity it did not prove.
    pub fn forward_via(
        &self,
        buf: &[u8],
        client: IpAddr,
        peer_trusted: bool,
        close: bool,
        via: &Via,
        out: &mut Vec<u8>,
    ) {
        let proto = if via.https { "https" } else { "http" };
        out.extend_from_slice(&buf[self.method.clone()]);
        out.push(b' ');
        out.extend_from_slice(&buf[self.path.clone()]);
        out.extend_from_slice(if self.minor_version == 1 {
            b" HTTP/1.1\r\n"
        } else {
            b" HTTP/1.0\r\n"
        });
        let mut prior_xff: Vec<&[u8]> = Vec::new();
        let mut prior_fwd: Vec<&[u8]> = Vec::new();
        for h in &self.headers {
            let name = &buf[h.name.clone()];
            let value = &buf[h.value.clone()];
            if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                prior_xff.push(value);
            } else if name.eq_ignore_ascii_case(b"forwarded") {
                prior_fwd.push(value);
            } else if (close && is_hop_by_hop(name))
                || name.eq_ignore_ascii_case(b"x-forwarded-client-cert")
            {
                continue;
            } else if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
                if peer_trusted {
                    push_header(out, name, value);
                }
            } else {
                push_header(out, name, value);
            }
        }
        let client_text = client.to_string();
        out.extend_from_slice(b"X-Forwarded-For: ");
        if peer_trusted {
            for v in &prior_xff {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(client_text.as_bytes());
        out.extend_from_slice(b"\r\n");
        if !(peer_trusted && self.header(buf, "x-forwarded-proto").is_some()) {
            out.extend_from_slice(b"X-Forwarded-Proto: ");
            out.extend_from_slice(proto.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Forwarded: ");
        if peer_trusted {
            for v in &prior_fwd {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
        }
        match client {
            IpAddr::V4(_) => {
                out.extend_from_slice(format!("for={client_text};proto={proto}").as_bytes())
            }
            IpAddr::V6(_) => {
                out.extend_from_slice(format!("for=\"[{client_text}]\";proto={proto}").as_bytes())
            }
        }
        out.extend_from_slice(b"\r\n");
        if let Some(cert) = &via.client_cert {
            out.extend_from_slice(crate::tls::server::CLIENT_CERT_HEADER.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(cert.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The `Content-Length` of a head: `Ok(None)` without one, `Err` when the values are not all
/// the same number.
pub(crate) fn content_length<'b>(
    mut values: impl Iterator<Item = &'b [u8]>,
) -> Result<Option<Framing>, ()> {
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let n = std::str::from_utf8(first)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(())?;
    if !values.all(|v| v == first) {
        return Err(());
    }
    Ok(Some(
        NonZeroU64::new(n).map_or(Framing::Empty, Framing::Length),
    ))
}

/// `None` without `Transfer-Encoding`; otherwise whether its codings end in a single `chunked`.
pub(crate) fn transfer_chunked<'b>(values: impl Iterator<Item = &'b [u8]>) -> Option<bool> {
    let mut any = false;
    let mut chunked_count = 0;
    let mut last_is_chunked = false;
    for value in values {
        any = true;
        for coding in value.split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                continue;
            }
            last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            chunked_count += usize::from(last_is_chunked);
        }
    }
    any.then_some(last_is_chunked && chunked_count == 1)
}

/// A `Sec-WebSocket-Key` is the base64 of 16 bytes (RFC 6455 §4.1): 22 characters of the
/// base64 alphabet, `==`, and no stray bits in the last character (a canonical encoding).
fn is_websocket_key(key: &[u8]) -> bool {
    let b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24
        && key[..22].iter().all(b64)
        && &key[22..] == b"=="
        && b"AQgw".contains(&key[21])
}

pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"upgrade",
        b"proxy-connection",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

pub(crate) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: &str = "GET /ws?sid=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: a=1; srv=abc\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.1\r\n\r\n";

    #[test]
    fn websocket_upgrade_is_recognised() {
        let h = RequestHead::parse(WS.as_bytes(), 64).unwrap();
        assert!(h.websocket);
        assert_eq!(h.path(WS.as_bytes()), "/ws?sid=7");
        assert_eq!(h.cookie(WS.as_bytes(), "srv"), Some(&b"abc"[..]));
        assert_eq!(h.forwarded_for(WS.as_bytes()), vec!["1.2.3.4", "10.0.0.1"]);
    }

    #[test]
    fn malformed_heads_are_rejected_with_4xx() {
        let cases: &[(&str, u16)] = &[
            ("GARBAGE\r\n\r\n", 400),
            ("GET /x HTTP/1.1\r\n\r\n", 400),
            ("GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", 426),
            ("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 3\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
        ];
        for (head, status) in cases {
            let err = RequestHead::parse(head.as_bytes(), 64).unwrap_err();
            assert_eq!(err.status(), *status, "{head:?}: {err}");
        }
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "X: y\r\n".repeat(10));
        assert_eq!(
            RequestHead::parse(many.as_bytes(), 5).unwrap_err().status(),
            431
        );
    }

    #[test]
    fn request_framing_follows_rfc_9112() {
        let framing = |head: &str| RequestHead::parse(head.as_bytes(), 64).unwrap().framing;
        assert_eq!(framing("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Framing::Empty);
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\n"),
            Framing::Length(NonZeroU64::new(7).unwrap())
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            Framing::Chunked
        );
    }

    #[test]
    fn bytes_that_cannot_start_a_head_are_seen_at_once() {
        assert!(check_head_bytes(b"\x16\x03\x01", 0, 3).is_err());
        assert!(check_head_bytes(b"GET / HTTP/1.1\n", 0, 15).is_err());
        assert!(check_head_bytes(b"GET / HTTP/1.1\r\nHost: a\r\n", 0, 25).is_ok());
        // A CR at the end of one read and its LF at the start of the next.
        assert!(check_head_bytes(b"GET / HTTP/1.1\r\n", 15, 16).is_ok());
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let h = RequestHead::parse(WS.as_bytes(), 64).unwrap();
        let mut out = Vec::new();
        h.forward(
            WS.as_bytes(),
            "127.0.0.9".parse().unwrap(),
            false,
            false,
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("X-Forwarded-For: 127.0.0.9\r\n"), "{text}");
        assert!(!text.contains("1.2.3.4"), "{text}");
        assert!(
            text.contains("Forwarded: for=127.0.0.9;proto=http\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn trusted_forwarding_headers_are_appended_to() {
        let h = RequestHead::parse(WS.as_bytes(), 64).unwrap();
        let mut out = Vec::new();
        h.forward(
            WS.as_bytes(),
            "10.0.0.2".parse().unwrap(),
            true,
            false,
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("X-Forwarded-For: 1.2.3.4, 10.0.0.1, 10.0.0.2\r\n"),
            "{text}"
        );
    }

    /// A small deterministic generator, so a failure reproduces from the printed seed.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn mutated_and_random_heads_never_panic() {
        let seeds: [&[u8]; 3] = [
            WS.as_bytes(),
            b"POST /a?b=c HTTP/1.0\r\nContent-Length: 5\r\nCookie: x=1;;=;y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket, h2c\r\n\r\n",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..1 + rng.next() % 8 {
                if input.is_empty() {
                    input.push(b'G');
                }
                let at = (rng.next() as usize) % input.len();
                match rng.next() % 4 {
                    0 => input[at] = rng.next() as u8,
                    1 => {
                        input.remove(at);
                    }
                    2 => input.insert(at, b":\r\n; ,=\0"[(rng.next() % 8) as usize]),
                    _ => input.truncate(at.max(1)),
                }
            }
            if let Ok(head) = RequestHead::parse(&input, 16) {
                let mut out = Vec::new();
                head.forward(
                    &input,
                    "::1".parse().unwrap(),
                    round % 2 == 0,
                    round % 3 == 0,
                    &mut out,
                );
                let _ = (
                    head.path(&input),
                    head.cookie(&input, "x"),
                    head.forwarded_for(&input),
                );
            }
            let _ = crate::response::parse_response(&input);
            let _ = crate::client_ip::parse_proxy_header(&input);
        }
    }
}
