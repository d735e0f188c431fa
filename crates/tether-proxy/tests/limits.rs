//! Every limit answers with its status code, and bad input never stops the proxy.

mod common;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WS_HEAD: &str = "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

#[tokio::test]
async fn malformed_handshakes_get_4xx_and_the_proxy_keeps_serving() {
    let backends = echo_backends(1).await;
    let proxy = proxy("", &backends).await;
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"HELLO\r\n\r\n".to_vec(), 400),
        (b"GET /ws HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            WS_HEAD
                .replace("Version: 13", "Version: 7")
                .into_bytes()
                .into_iter()
                .chain(*b"\r\n")
                .collect(),
            426,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
                "y".repeat(20_000)
            )
            .into_bytes(),
            431,
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
                "X: y\r\n".repeat(100)
            )
            .into_bytes(),
            431,
        ),
    ];
    for (request, status) in cases {
        let (got, text) = raw(proxy.addr(), &request).await;
        assert_eq!(
            got,
            status,
            "{:?} → {text}",
            String::from_utf8_lossy(&request[..request.len().min(60)])
        );
    }
    let (_ws, backend) = open(&proxy, "/ws").await;
    assert_eq!(backend, "b1");
    assert!(proxy
        .metrics_text()
        .contains("tether_rejected_total{reason=\"BadRequest\"}"));
}

#[tokio::test]
async fn slowloris_client_is_cut_with_408() {
    let backends = echo_backends(1).await;
    let proxy = proxy(
        "[timeouts]\nfirst_byte = \"300ms\"\nhead = \"600ms\"",
        &backends,
    )
    .await;
    // Sends a byte every 100 ms: never completes the head.
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    for b in WS_HEAD.bytes().take(20) {
        if s.write_all(&[b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // A silent client is cut at first_byte.
    let (status, _) = raw(proxy.addr(), b"").await;
    assert_eq!(status, 408);
}

#[tokio::test]
async fn maxconn_answers_503_with_retry_after() {
    let backends = echo_backends(1).await;
    let proxy = proxy("[limits]\nmaxconn = 2\nretry_after_secs = 7", &backends).await;
    let _a = open(&proxy, "/ws").await;
    let _b = open(&proxy, "/ws").await;
    let (status, text) = raw(proxy.addr(), format!("{WS_HEAD}\r\n").as_bytes()).await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 7"),
        "{text}"
    );
    drop(_a);
    assert!(
        eventually(Duration::from_secs(3), || async {
            ws_connect(proxy.addr(), "/ws").await.is_ok()
        })
        .await
    );
}

#[tokio::test]
async fn backend_maxconn_full_everywhere_answers_503() {
    let backends = echo_backends(2).await;
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[[backend]]\nname = \"b1\"\naddr = \"{}\"\nmaxconn = 1\n[[backend]]\nname = \"b2\"\naddr = \"{}\"\nmaxconn = 1\n",
        backends[0].addr(),
        backends[1].addr()
    );
    let proxy = proxy_from_toml(&text).await;
    let (_a, first) = open(&proxy, "/ws").await;
    let (_b, second) = open(&proxy, "/ws").await;
    assert_ne!(first, second, "maxconn = 1 sends the second elsewhere");
    let (status, text) = raw(proxy.addr(), format!("{WS_HEAD}\r\n").as_bytes()).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after"));
}

#[tokio::test]
async fn handshake_rate_per_ip_answers_429_per_address() {
    let backends = echo_backends(1).await;
    let proxy = proxy("[limits]\nrate_per_ip = 2\nrate_burst = 3", &backends).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            raw(proxy.addr(), format!("{WS_HEAD}\r\n").as_bytes())
                .await
                .0,
        );
    }
    assert_eq!(&statuses[..3], &[101, 101, 101], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    // Another address has its own bucket.
    let (_ws, r) = ws_connect_with(proxy.addr(), "/ws", "127.0.0.9".parse().unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(r.status(), 101);
}

#[tokio::test]
async fn origin_outside_the_allow_list_gets_403() {
    let backends = echo_backends(1).await;
    let proxy = proxy(
        "[listen]\nallowed_origins = [\"https://app.example\"]",
        &backends,
    )
    .await;
    let (status, _) = raw(
        proxy.addr(),
        format!("{WS_HEAD}Origin: https://evil.example\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = raw(proxy.addr(), format!("{WS_HEAD}\r\n").as_bytes()).await;
    assert_eq!(status, 403, "no Origin is not an allowed origin");
    let (_ws, r) = ws_connect_with(
        proxy.addr(),
        "/ws",
        "127.0.0.1".parse().unwrap(),
        &[("origin", "https://app.example")],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 101);
}

#[tokio::test]
async fn no_backend_up_answers_503() {
    let backends = echo_backends(1).await;
    let proxy = proxy(
        "[balance]\nretries = 1\n[health]\nkind = \"none\"\ninterval = \"1h\"\nfall = 1",
        &backends,
    )
    .await;
    backends[0].stop();
    let (status, text) = raw(proxy.addr(), format!("{WS_HEAD}\r\n").as_bytes()).await;
    assert_eq!(status, 503, "{text}");
}

#[tokio::test]
async fn heads_that_cannot_be_http_get_400_at_once() {
    let backends = echo_backends(1).await;
    let proxy = proxy("", &backends).await;
    let cases: [&[u8]; 3] = [
        // A TLS ClientHello on the plain port: no blank line will ever come.
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        // A bare-LF head.
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n",
    ];
    for request in cases {
        let started = Instant::now();
        let (status, text) = raw(proxy.addr(), request).await;
        assert_eq!(status, 400, "{request:?} → {text}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{request:?} answered after {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn two_hosts_and_invalid_websocket_keys_get_400() {
    let backends = echo_backends(1).await;
    let proxy = proxy("", &backends).await;
    let ws = |key_lines: &str| {
        format!("GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key_lines}Sec-WebSocket-Version: 13\r\n\r\n")
    };
    let cases = [
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_owned(),
        ws("Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==\r\n"),
        // 24 characters, but the base64 of 18 bytes.
        ws("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQQQ\r\n"),
        ws("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: c211Z2dsZWQgcmVxdWVzdA==\r\n"),
    ];
    for request in cases {
        let (status, text) = raw(proxy.addr(), request.as_bytes()).await;
        assert_eq!(status, 400, "{request:?} → {text}");
    }
    assert_eq!(
        backends[0]
            .stats()
            .http_requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        backends[0]
            .stats()
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn a_response_head_with_too_many_lines_gets_502_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let lines = "X-Filler: 1\r\n".repeat(120);
            let _ = s
                .write_all(format!("HTTP/1.1 200 OK\r\n{lines}").as_bytes())
                .await;
            // Never finishes the head and never closes.
            held.push(s);
        }
    });
    let proxy = proxy_from_toml(&format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[[backend]]\nname = \"chatty\"\naddr = \"{addr}\"\n"
    ))
    .await;
    let started = Instant::now();
    let (status, text) = http(proxy.addr(), "GET", "/").await;
    assert_eq!(status, 502, "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
