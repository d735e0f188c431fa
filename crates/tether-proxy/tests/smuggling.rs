//! A connection the backend did not upgrade carries exactly one request and one response:
//! whatever a client sends after its first request never reaches the backend unchecked.

mod common;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: t\r\nOrigin: http://good\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// What a hostile client sends once the first request is answered: a spoofed client address,
/// a forbidden origin and an upgrade.
const SMUGGLED: &str = "GET /admin HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 6.6.6.6\r\nOrigin: http://evil\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c211Z2dsZWQgcmVxdWVzdA==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A backend that answers every request it reads with `response`, keeping the connection
/// open (it ignores `Connection: close`), and records every request (head and body).
struct Recorder {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start(response: &'static str, close_after: bool) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, response, close_after, seen.clone()));
            }
        });
        Recorder { addr, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(
    mut s: TcpStream,
    response: &'static str,
    close_after: bool,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let request: Vec<u8> = buf.drain(..end + 4 + length).collect();
        seen.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&request).into_owned());
        if s.write_all(response.as_bytes()).await.is_err() || close_after {
            return;
        }
    }
}

async fn proxy_to(backend: &Recorder, extra: &str) -> tether_proxy::RunningProxy {
    proxy_from_toml(&format!(
        "[listen]\naddr = \"127.0.0.1:0\"\nallowed_origins = [\"http://good\"]\n[admin]\nenabled = false\n[health]\nkind = \"none\"\n{extra}\n[[backend]]\nname = \"r\"\naddr = \"{}\"\n",
        backend.addr
    ))
    .await
}

/// Reads until the proxy closes the connection, for at most 3 s; returns what arrived and
/// whether the close came.
async fn read_until_closed(s: &mut TcpStream) -> (String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Reads one response whose body is `Content-Length` long.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before a response: {out:?}");
            out.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&out).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    return;
                }
            }
        }
    })
    .await
    .expect("no response in time");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_request_after_a_refused_upgrade_never_reaches_the_backend() {
    let backend = Recorder::start(
        "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: keep-alive\r\n\r\nnot found",
        false,
    )
    .await;
    let proxy = proxy_to(&backend, "").await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(UPGRADE.as_bytes()).await.unwrap();
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 404"), "{first}");
    assert!(first.contains("Connection: close\r\n"), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("keep-alive"),
        "{first}"
    );
    // The client tries to reuse the connection; the write may fail once the proxy closed.
    let _ = s.write_all(SMUGGLED.as_bytes()).await;
    let (rest, closed) = read_until_closed(&mut s).await;
    assert!(
        closed,
        "the connection stayed open after the refused upgrade"
    );
    assert!(!rest.contains("HTTP/1.1"), "a second answer came: {rest}");
    let requests = backend.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert!(!requests[0].contains("6.6.6.6") && !requests[0].contains("evil"));
}

#[tokio::test]
async fn a_second_request_on_a_keep_alive_backend_is_not_forwarded() {
    let backend = Recorder::start(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
        false,
    )
    .await;
    let proxy = proxy_to(&backend, "").await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut s).await;
    assert!(
        first.starts_with("HTTP/1.1 200") && first.ends_with("ok"),
        "{first}"
    );
    let _ = s.write_all(SMUGGLED.as_bytes()).await;
    let (_, closed) = read_until_closed(&mut s).await;
    assert!(
        closed,
        "the connection stayed open after one plain exchange"
    );
    let requests = backend.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
}

#[tokio::test]
async fn a_pipelined_request_behind_a_body_is_dropped() {
    let backend = Recorder::start(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
        false,
    )
    .await;
    let proxy = proxy_to(&backend, "").await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let both = format!("POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello{SMUGGLED}");
    s.write_all(both.as_bytes()).await.unwrap();
    let (text, closed) = read_until_closed(&mut s).await;
    assert!(closed && text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
    let requests = backend.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert!(requests[0].ends_with("\r\n\r\nhello"), "{:?}", requests[0]);
}

#[tokio::test]
async fn a_body_sent_after_the_head_still_reaches_the_backend() {
    let backend = Recorder::start("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", false).await;
    let proxy = proxy_to(&backend, "").await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b" world").await.unwrap();
    let (text, closed) = read_until_closed(&mut s).await;
    assert!(closed && text.starts_with("HTTP/1.1 201"), "{text}");
    assert!(backend.requests()[0].ends_with("hello world"));
}

#[tokio::test]
async fn responses_are_relayed_whole_by_their_own_framing() {
    let cases: [(&str, &str, &str, bool); 4] = [
        (
            "GET",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
            false,
        ),
        (
            "HEAD",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            "",
            false,
        ),
        ("GET", "HTTP/1.1 204 No Content\r\n\r\n", "", false),
        (
            "GET",
            "HTTP/1.1 200 OK\r\n\r\nuntil the backend closes",
            "until the backend closes",
            true,
        ),
    ];
    for (method, response, body, close_after) in cases {
        let backend = Recorder::start(response, close_after).await;
        let proxy = proxy_to(&backend, "").await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let started = Instant::now();
        s.write_all(format!("{method} / HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (text, closed) = read_until_closed(&mut s).await;
        assert!(closed, "{method} {response:?}: not closed");
        // Closed because the response was complete, not by a timeout.
        assert!(started.elapsed() < Duration::from_secs(2), "{response:?}");
        let (_, got) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(got, body, "{method} {response:?}");
    }
}

#[tokio::test]
async fn expect_continue_gets_the_interim_answer_and_the_final_one() {
    let backend = Recorder::start(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        false,
    )
    .await;
    let proxy = proxy_to(&backend, "").await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nbody",
    )
    .await
    .unwrap();
    let (text, closed) = read_until_closed(&mut s).await;
    assert!(closed, "{text}");
    assert!(
        text.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
}
