//! Fuzz targets for the proxy's HTTP/1.1 parsers: the request-head reader and parser, the
//! backend's response head, and the body framing. Each runs a fixed number of cases in
//! `cargo test`; `TETHER_FUZZ_ITERS=N` runs N cases of each (docs/fuzz.md).
//!
//! Beyond "no panic on any input", each target checks a property the proxy relies on: a head
//! it forwards is the same request to the backend, a head read in pieces is read as if it came
//! at once, and a body ends at the same byte however it is split.

use std::net::IpAddr;
use std::num::NonZeroU64;
use std::pin::pin;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use tether_proxy::body::{Body, Framing};
use tether_proxy::handshake::{read_head, HeadLimits, ReadError, Reject, RequestHead};
use tether_proxy::response::{closing_response_head, insert_header, parse_response, ResponseHead};
use tether_testkit::fuzz;
use tokio::io::AsyncWriteExt;

const HEADS: &[&[u8]] = &[
    b"GET /ws?sid=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: a=1; srv=abc\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.1\r\n\r\n",
    b"POST /publish?c=news HTTP/1.1\r\nHost: hub.test:8080\r\nContent-Length: 11\r\nContent-Type: application/json\r\n\r\n{\"a\":[1,2]}",
    b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nForwarded: for=192.0.2.60;proto=http\r\nX-Forwarded-Proto: https\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
    b"HEAD /health HTTP/1.1\r\nhost: a\r\nconnection: close\r\nx-forwarded-for: 203.0.113.5\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n",
    b"OPTIONS /x/y/z%20?q=1&r HTTP/1.1\r\nHost: [::1]:80\r\nCookie: x=1;;=;y\r\nProxy-Connection: keep-alive\r\nKeep-Alive: 5\r\n\r\n",
];

const HEAD_DICT: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"\t",
    b",",
    b";",
    b"=",
    b"\0",
    b"\x7f",
    b"\xff",
    b"\x16\x03\x01",
    b"HTTP/1.0",
    b"HTTP/1.1",
    b"Host: a\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 18446744073709551616\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Upgrade: websocket\r\n",
    b"Connection: close\r\n",
    b"Connection: upgrade\r\n",
    b"Sec-WebSocket-Version: 13\r\n",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    b"X-Forwarded-For: 9.9.9.9\r\n",
    b"Forwarded: for=1.1.1.1\r\n",
    b"X-Forwarded-Proto: https\r\n",
];

/// Where the proxy sets or rewrites the header itself.
fn is_forwarding(name: &str) -> bool {
    ["x-forwarded-for", "forwarded", "x-forwarded-proto"]
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f))
}

fn is_hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "upgrade", "proxy-connection"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// A request head as httparse sees it: method, path, minor version, headers, length.
type Parsed = (String, String, u8, Vec<(String, Vec<u8>)>, usize);

fn httparse_request(buf: &[u8]) -> Option<Parsed> {
    let mut storage = vec![httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut storage);
    let httparse::Status::Complete(len) = req.parse(buf).ok()? else {
        return None;
    };
    let headers = req
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    Some((
        req.method?.to_owned(),
        req.path?.to_owned(),
        req.version?,
        headers,
        len,
    ))
}

/// Checks what `forward` produced from `input` against what it must be.
fn check_forwarded(
    input: &[u8],
    head: &RequestHead,
    client: IpAddr,
    trusted: bool,
    close: bool,
) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    head.forward(input, client, trusted, close, &mut out);
    let (method, path, version, headers, _) =
        httparse_request(input).expect("httparse accepts what RequestHead accepted");
    let Some((f_method, f_path, f_version, f_headers, f_len)) = httparse_request(&out) else {
        return Err(TestCaseError::fail(format!(
            "forwarded head does not parse: {:?}",
            String::from_utf8_lossy(&out)
        )));
    };
    prop_assert_eq!(f_len, out.len(), "the forwarded head is exactly one head");
    prop_assert_eq!((&f_method, &f_path, f_version), (&method, &path, version));
    let kept = |hs: &[(String, Vec<u8>)]| -> Vec<(String, Vec<u8>)> {
        hs.iter()
            .filter(|(n, _)| !(is_forwarding(n) || (close && is_hop_by_hop(n))))
            .cloned()
            .collect()
    };
    prop_assert_eq!(kept(&f_headers), kept(&headers));
    let values = |hs: &[(String, Vec<u8>)], name: &str| -> Vec<Vec<u8>> {
        hs.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    let mut xff = Vec::new();
    if trusted {
        for v in values(&headers, "x-forwarded-for") {
            xff.extend_from_slice(&v);
            xff.extend_from_slice(b", ");
        }
    }
    xff.extend_from_slice(client.to_string().as_bytes());
    prop_assert_eq!(values(&f_headers, "x-forwarded-for"), vec![xff]);
    prop_assert_eq!(values(&f_headers, "forwarded").len(), 1);
    if close {
        prop_assert_eq!(
            values(&f_headers, "connection"),
            vec![b"close".to_vec()],
            "one Connection: close"
        );
    }
    let again = RequestHead::parse(&out, 256).map_err(|e| {
        TestCaseError::fail(format!(
            "forwarded head refused ({e}): {:?}",
            String::from_utf8_lossy(&out)
        ))
    })?;
    prop_assert_eq!(again.framing, head.framing);
    prop_assert_eq!(again.path(&out), head.path(input));
    prop_assert_eq!(again.is_head(&out), head.is_head(input));
    // Without `close` the upgrade goes through as it came; with it, `Upgrade` is dropped.
    prop_assert_eq!(again.websocket, head.websocket && !close);
    Ok(())
}

proptest! {
    #![proptest_config(fuzz::config(4000))]

    #[test]
    fn a_forwarded_head_is_the_same_request(
        input in fuzz::mutated(HEADS, HEAD_DICT, 8),
        trusted: bool,
        close: bool,
        v6: bool,
    ) {
        let Ok(head) = RequestHead::parse(&input, 64) else {
            return Ok(());
        };
        // The accessors the balancer and the key extractor use must not panic either.
        let _ = (
            head.path(&input),
            head.cookie(&input, "srv"),
            head.forwarded_for(&input),
            head.header(&input, "host"),
        );
        let client: IpAddr = if v6 { "2001:db8::7".parse().unwrap() } else { "192.0.2.7".parse().unwrap() };
        check_forwarded(&input, &head, client, trusted, close)?;
    }
}

fn limits() -> HeadLimits {
    HeadLimits {
        max_bytes: 16 * 1024,
        max_headers: 64,
        first_byte: Duration::from_secs(30),
        complete: Duration::from_secs(30),
    }
}

/// How reading a head ended, comparable across runs.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// A head of this length, and what parsing it gave.
    Head(usize, Result<(bool, Framing), Reject>),
    Rejected(Reject),
    Closed,
}

/// Sends `input` to `read_head` through an in-memory pipe, in pieces cut at `cuts`, letting
/// the reader take each piece before the next is written; the writer closes at the end.
async fn read_in_pieces(input: &[u8], cuts: &[usize]) -> Outcome {
    let (mut client, mut server) = tokio::io::duplex(1 << 20);
    let mut buf = Vec::new();
    let limits = limits();
    let result = {
        let mut reading = pin!(read_head(
            &mut server,
            &mut buf,
            &limits,
            tokio::time::Instant::now()
        ));
        let mut from = 0;
        let mut early = None;
        for &cut in cuts.iter().chain([&input.len()]) {
            let cut = cut.clamp(from, input.len());
            client.write_all(&input[from..cut]).await.unwrap();
            from = cut;
            // Polls the reader once: it reads all there is, then waits for more or ends.
            tokio::select! {
                biased;
                r = &mut reading => { early = Some(r); break; }
                _ = std::future::ready(()) => {}
            }
        }
        match early {
            Some(r) => r,
            None => {
                drop(client);
                reading.await
            }
        }
    };
    match result {
        Ok(len) => Outcome::Head(
            len,
            RequestHead::parse(&buf[..len], 64).map(|h| (h.websocket, h.framing)),
        ),
        Err(ReadError::Reject(r)) => Outcome::Rejected(r),
        Err(ReadError::Closed) => Outcome::Closed,
        Err(ReadError::Io(e)) => panic!("an in-memory pipe failed: {e}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn a_valid_head_split_at_any_byte_reads_the_same_head() {
    let rt = runtime();
    for head in HEADS {
        let whole = rt.block_on(read_in_pieces(head, &[]));
        let Outcome::Head(len, Ok(_)) = whole else {
            panic!(
                "corpus head not read: {whole:?}: {:?}",
                String::from_utf8_lossy(head)
            );
        };
        for cut in 0..=len {
            let split = rt.block_on(read_in_pieces(head, &[cut]));
            assert_eq!(split, whole, "split at {cut}");
        }
    }
}

proptest! {
    #![proptest_config(fuzz::config(3000))]

    /// The early "cannot be HTTP" checks run on each new piece; wherever the pieces are cut,
    /// the outcome is the one the whole input gets.
    #[test]
    fn any_head_read_in_pieces_reads_as_when_whole(
        input in fuzz::mutated(HEADS, HEAD_DICT, 8),
        cuts in proptest::collection::vec(any::<Index>(), 1..5),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let rt = runtime();
        let whole = rt.block_on(read_in_pieces(&input, &[]));
        let split = rt.block_on(read_in_pieces(&input, &cuts));
        prop_assert_eq!(split, whole, "cuts {:?}", cuts);
    }
}

const RESPONSES: &[&[u8]] = &[
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi",
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\ngone",
    b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nSet-Cookie: srv=b1; Path=/\r\n\r\n",
    b"HTTP/1.1 503 \r\nRetry-After: 2\r\nTransfer-Encoding: gzip\r\n\r\n",
];

const RESPONSE_DICT: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b":",
    b" ",
    b"\xff",
    b"\0",
    b"HTTP/1.0",
    b"Content-Length: 3\r\n",
    b"Content-Length: 007\r\n",
    b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"Upgrade: h2c\r\n",
    b"100",
    b"304",
    b"999",
];

proptest! {
    #![proptest_config(fuzz::config(4000))]

    /// A response head parses the same from its own bytes, is "incomplete" (never an error)
    /// on any prefix, and the head the client gets in its place parses to the same status and
    /// framing.
    #[test]
    fn a_response_head_relays_with_the_same_status_and_framing(
        input in fuzz::mutated(RESPONSES, RESPONSE_DICT, 8),
        prefix: Index,
        extra: bool,
    ) {
        let Ok(Some(head)) = parse_response(&input) else {
            return Ok(());
        };
        prop_assert!(head.len <= input.len());
        prop_assert_eq!(parse_response(&input[..head.len]), Ok(Some(head)));
        let k = prefix.index(head.len);
        prop_assert_eq!(parse_response(&input[..k]), Ok(None), "prefix of {} bytes", k);

        let extra = extra.then_some("Set-Cookie: srv=b2; Path=/");
        let closing = closing_response_head(&input, &head, extra);
        let again = parse_response(&closing);
        prop_assert_eq!(
            again,
            Ok(Some(ResponseHead { status: head.status, len: closing.len(), framing: head.framing })),
            "{:?}", String::from_utf8_lossy(&closing)
        );

        let mut with_header = input[..head.len].to_vec();
        insert_header(&mut with_header, head.len, "X-Tether-Backend: b1");
        let again = parse_response(&with_header);
        prop_assert_eq!(
            again,
            Ok(Some(ResponseHead { len: with_header.len(), ..head })),
            "{:?}", String::from_utf8_lossy(&with_header)
        );
    }
}

/// How feeding a body ended: bytes taken and whether it is complete, or the error.
type Fed = Result<(usize, bool), String>;

/// Feeds `data` in pieces cut at `cuts`. A body may take less than it is given only when it
/// is complete (the rest belongs to the next message).
fn feed_in_pieces(framing: Framing, data: &[u8], cuts: &[usize]) -> Fed {
    let mut body = Body::new(framing);
    let mut taken = 0;
    let mut from = 0;
    for &cut in cuts.iter().chain([&data.len()]) {
        let cut = cut.clamp(from, data.len());
        let piece = &data[from..cut];
        from = cut;
        match body.feed(piece) {
            Ok(n) => {
                assert!(n <= piece.len(), "took {n} of {} bytes", piece.len());
                assert!(
                    n == piece.len() || body.is_done(),
                    "stopped short at {} without being done",
                    taken + n
                );
                taken += n;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok((taken, body.is_done()))
}

/// A valid chunked body: chunks, then optional trailer lines.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let chunk = (
        proptest::collection::vec(any::<u8>(), 1..200),
        0usize..3,
        any::<bool>(),
        proptest::option::of("[a-z]{1,5}(=[a-z0-9]{0,5})?"),
    );
    (
        proptest::collection::vec(chunk, 0..6),
        proptest::collection::vec("[A-Za-z-]{1,10}: [ -~]{0,20}", 0..3),
    )
        .prop_map(|(chunks, trailers)| {
            let mut out = Vec::new();
            for (data, zeros, upper, ext) in chunks {
                let size = if upper {
                    format!("{:X}", data.len())
                } else {
                    format!("{:x}", data.len())
                };
                out.extend_from_slice("0".repeat(zeros).as_bytes());
                out.extend_from_slice(size.as_bytes());
                if let Some(ext) = ext {
                    out.extend_from_slice(format!(";{ext}").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            for t in trailers {
                out.extend_from_slice(t.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out
        })
}

fn cut_points(len: usize, cuts: &[Index]) -> Vec<usize> {
    let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

const BODIES: &[&[u8]] = &[
    b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
    b"1;a=b\r\nx\r\n00A\r\n0123456789\r\n0\r\nExpires: never\r\nX: y\r\n\r\n",
    b"0\r\n\r\n",
    b"fffffffffffffff\r\nab\r\n",
];

const BODY_DICT: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"0\r\n\r\n",
    b";ext",
    b" ",
    b"\t",
    b"ffffffffffffffff",
    b"10000000000000000",
    b"1",
    b"a",
    b"G",
];

proptest! {
    #![proptest_config(fuzz::config(4000))]

    /// A valid chunked body ends exactly after its last CRLF, wherever the reads cut it;
    /// what follows it is never taken.
    #[test]
    fn a_chunked_body_ends_after_its_last_crlf_in_any_pieces(
        body in chunked_body(),
        next in proptest::collection::vec(any::<u8>(), 0..64),
        cuts in proptest::collection::vec(any::<Index>(), 0..6),
    ) {
        let mut data = body.clone();
        data.extend_from_slice(&next);
        let cuts = cut_points(data.len(), &cuts);
        prop_assert_eq!(feed_in_pieces(Framing::Chunked, &data, &cuts), Ok((body.len(), true)));
    }

    /// Any bytes, fed at once or in pieces, end the body at the same byte (or with the same
    /// error); a length body takes exactly its length.
    #[test]
    fn any_body_reads_the_same_in_any_pieces(
        data in fuzz::mutated(BODIES, BODY_DICT, 8),
        cuts in proptest::collection::vec(any::<Index>(), 1..6),
        length in 1u64..600,
    ) {
        let cuts = cut_points(data.len(), &cuts);
        let whole = feed_in_pieces(Framing::Chunked, &data, &[]);
        prop_assert_eq!(feed_in_pieces(Framing::Chunked, &data, &cuts), whole);

        let framing = Framing::Length(NonZeroU64::new(length).unwrap());
        let take = data.len().min(length as usize);
        let done = data.len() as u64 >= length;
        prop_assert_eq!(feed_in_pieces(framing, &data, &cuts), Ok((take, done)));
        prop_assert_eq!(feed_in_pieces(Framing::UntilClose, &data, &cuts), Ok((data.len(), false)));
        prop_assert_eq!(feed_in_pieces(Framing::Empty, &data, &cuts), Ok((0, true)));
    }
}
