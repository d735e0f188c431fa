//! The backend's response head: where it ends, where its body ends, and what the client
//! gets of it.
//!
//! Parsed with a fixed table on the stack; a head the proxy could relay ambiguously is an
//! error as soon as its bytes show it, so the client gets `502` at once instead of when the
//! backend gives up.

use crate::body::Framing;
use crate::handshake::{content_length, is_hop_by_hop, push_header, transfer_chunked};

/// The parts of a backend's response head the proxy acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Length of the head in the buffer, including the blank line.
    pub len: usize,
    /// Where the body ends, for any request but `HEAD` (whose answer has none).
    pub framing: Framing,
}

/// A response head the proxy cannot relay safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid response head from the backend: {0}")]
pub struct BadResponse(&'static str);

/// Header lines a response head may have; more is refused at once (`502`), not waited on.
pub const MAX_RESPONSE_HEADERS: usize = 96;

/// Parses a response head: `Ok(None)` while it is incomplete, an error as soon as the bytes
/// show it cannot be a valid head (too many lines, bad syntax, ambiguous framing).
pub fn parse_response(buf: &[u8]) -> Result<Option<ResponseHead>, BadResponse> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut res = httparse::Response::new(&mut storage);
    let parsed = res.parse(buf);
    // httparse accepts a bare LF as a line end (`\r\n\n` ends its head); the proxy refuses it
    // as it does in requests: a client may split such a head differently, and a header
    // inserted before the final CRLF would land inside the status line.
    let head_bytes = match parsed {
        Ok(httparse::Status::Complete(len)) => &buf[..len],
        _ => buf,
    };
    let bare_lf = head_bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head_bytes[i - 1] != b'\r'));
    if bare_lf {
        return Err(BadResponse("line feed without carriage return"));
    }
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadResponse("too many header lines")),
        Err(_) => return Err(BadResponse("not an HTTP/1.x response head")),
    };
    let status = res.code.ok_or(BadResponse("no status code"))?;
    // httparse takes any three digits; `004` has no class to frame by (RFC 9110 §15) and
    // would be relayed as `4`.
    if !(100..=599).contains(&status) {
        return Err(BadResponse("status code outside 100-599"));
    }
    let named = |name: &'static str| {
        res.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let length = content_length(named("content-length"))
        .map_err(|()| BadResponse("invalid Content-Length"))?;
    let chunked = transfer_chunked(named("transfer-encoding"));
    let framing = match (chunked, length) {
        _ if (100..200).contains(&status) || status == 204 || status == 304 => Framing::Empty,
        (Some(_), Some(_)) => return Err(BadResponse("both Transfer-Encoding and Content-Length")),
        (Some(true), None) if res.version == Some(1) => Framing::Chunked,
        // Any other coding, or one in HTTP/1.0: only the close ends the body (RFC 9112 §6.3).
        (Some(_), None) => Framing::UntilClose,
        (None, Some(length)) => length,
        (None, None) => Framing::UntilClose,
    };
    Ok(Some(ResponseHead {
        status,
        len,
        framing,
    }))
}

/// The response head the client gets when its connection ends after this one answer: the
/// backend's status line and headers without its connection-management ones, plus `extra`
/// and `Connection: close`, so the client does not send a second request the proxy would
/// not forward.
pub fn closing_response_head(buf: &[u8], head: &ResponseHead, extra: Option<&str>) -> Vec<u8> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut res = httparse::Response::new(&mut storage);
    let mut out = Vec::with_capacity(head.len + 64);
    // The head parsed once already, so it parses again; fall back to it unchanged if not.
    if !matches!(
        res.parse(&buf[..head.len]),
        Ok(httparse::Status::Complete(_))
    ) {
        out.extend_from_slice(&buf[..head.len]);
        return out;
    }
    let version = if res.version == Some(0) { b'0' } else { b'1' };
    out.extend_from_slice(b"HTTP/1.");
    out.push(version);
    out.extend_from_slice(format!(" {} ", head.status).as_bytes());
    out.extend_from_slice(res.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        // `Upgrade` stays: a `426` names the protocol the client should use in it.
        if name.eq_ignore_ascii_case(b"upgrade") || !is_hop_by_hop(name) {
            push_header(&mut out, h.name.as_bytes(), h.value);
        }
    }
    if let Some(line) = extra {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// Inserts a header line just before the blank line that ends a head of `head_len` bytes.
pub fn insert_header(buf: &mut Vec<u8>, head_len: usize, line: &str) {
    let at = head_len - 2;
    buf.splice(at..at, line.bytes().chain(*b"\r\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_inserted_before_the_blank_line() {
        let mut buf =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nFRAME".to_vec();
        let head = parse_response(&buf).unwrap().unwrap();
        assert_eq!(head.status, 101);
        insert_header(&mut buf, head.len, "Set-Cookie: s=1");
        assert_eq!(
            buf,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSet-Cookie: s=1\r\n\r\nFRAME"
        );
    }

    #[test]
    fn response_framing_and_invalid_heads() {
        let parse = |head: &str| parse_response(head.as_bytes());
        let framing = |head: &str| parse(head).unwrap().unwrap().framing;
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Framing::UntilClose);
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Framing::UntilClose
        );
        assert_eq!(parse("HTTP/1.1 200 OK\r\nX: 1\r\n"), Ok(None));
        assert!(parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        // Too many lines is an error before the head is even complete.
        let many = format!("HTTP/1.1 200 OK\r\n{}", "X: 1\r\n".repeat(120));
        assert!(parse(&many).is_err());
    }

    /// Found by `tests/fuzz_http.rs`: httparse ended this head at `\r\n\n`, and the sticky
    /// cookie inserted "before the blank line" went inside the status line.
    #[test]
    fn a_head_with_a_bare_line_feed_is_refused() {
        let heads: [&[u8]; 3] = [
            b"HTTP/1.1 204 No Content\r\n\n\r\nHTTP/1.0Set-Cookie: srv=b1; Path=/\r\n\r\n",
            b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            b"HTTP/1.1 200 OK\r\nX: y\n",
        ];
        for head in heads {
            assert_eq!(
                parse_response(head),
                Err(BadResponse("line feed without carriage return")),
                "{}",
                head.escape_ascii()
            );
        }
        // A body may hold bare line feeds: only the head is checked.
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\n\n";
        assert!(matches!(parse_response(ok), Ok(Some(h)) if h.len == ok.len() - 2));
    }

    /// Found by `tests/fuzz_http.rs`: httparse read `004` as status 4, and the closing head
    /// the client got said `HTTP/1.1 4`.
    #[test]
    fn a_status_outside_100_to_599_is_refused() {
        for head in [
            &b"HTTP/1.1 004 No Content\r\nSet-Cookie: srv=b1; Path=/\r\n\r\n"[..],
            b"HTTP/1.1 099 x\r\n\r\n",
            b"HTTP/1.0 600 x\r\n\r\n",
        ] {
            assert_eq!(
                parse_response(head),
                Err(BadResponse("status code outside 100-599")),
                "{}",
                head.escape_ascii()
            );
        }
        assert!(
            matches!(parse_response(b"HTTP/1.1 599 x\r\n\r\n"), Ok(Some(h)) if h.status == 599)
        );
    }

    #[test]
    fn closing_response_head_replaces_connection_management() {
        let buf = b"HTTP/1.1 404 Not Found\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nno";
        let head = parse_response(buf).unwrap().unwrap();
        let out = closing_response_head(buf, &head, Some("Set-Cookie: s=1"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nSet-Cookie: s=1\r\nConnection: close\r\n\r\n"
        );
    }
}
