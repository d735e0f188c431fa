//! Active checks take a backend out and bring it back; passive failures count too.

mod common;
use std::time::Duration;

use common::*;
use tokio::net::TcpListener;

async fn out_and_back(kind: &str) {
    let backends = echo_backends(2).await;
    let addr = backends[1].addr();
    let proxy = proxy(&format!("[health]\nkind = \"{kind}\"\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2"), &backends).await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            state_of(&proxy, "b2") == "up"
        })
        .await
    );
    backends[1].stop();
    assert!(
        eventually(Duration::from_secs(3), || async {
            state_of(&proxy, "b2") == "down"
        })
        .await,
        "{kind}: not taken out"
    );
    assert!(proxy
        .metrics_text()
        .contains("tether_backend_up{backend=\"b2\"} 0"));
    // While it is down every client goes to b1.
    for _ in 0..4 {
        assert_eq!(open(&proxy, "/ws").await.1, "b1");
    }
    let _again = EchoServer::serve("b2", TcpListener::bind(addr).await.unwrap());
    assert!(
        eventually(Duration::from_secs(3), || async {
            state_of(&proxy, "b2") == "up"
        })
        .await,
        "{kind}: not brought back"
    );
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(open(&proxy, "/ws").await.1);
    }
    assert!(
        names.iter().any(|n| n == "b2"),
        "{kind}: b2 back but unused: {names:?}"
    );
}

#[tokio::test]
async fn tcp_check_takes_a_backend_out_and_brings_it_back() {
    out_and_back("tcp").await;
}

#[tokio::test]
async fn http_check_takes_a_backend_out_and_brings_it_back() {
    out_and_back("http").await;
}

#[tokio::test]
async fn websocket_check_takes_a_backend_out_and_brings_it_back() {
    out_and_back("websocket").await;
}

#[tokio::test]
async fn http_check_fails_on_a_server_that_is_not_http() {
    // A port that accepts TCP but never answers HTTP: tcp would pass, http must not.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let backends = echo_backends(1).await;
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[health]\nkind = \"http\"\ninterval = \"100ms\"\ntimeout = \"150ms\"\nfall = 2\n[[backend]]\nname = \"silent\"\naddr = \"{silent_addr}\"\n[[backend]]\nname = \"b1\"\naddr = \"{}\"\n",
        backends[0].addr()
    );
    let proxy = proxy_from_toml(&text).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            state_of(&proxy, "silent") == "down"
        })
        .await
    );
    assert_eq!(state_of(&proxy, "b1"), "up");
    hold.abort();
}

#[tokio::test]
async fn backend_answering_5xx_to_handshakes_is_taken_out_passively() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A server that reads a head and answers 503, every time.
    let broken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broken_addr = broken.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = broken.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            });
        }
    });
    let backends = echo_backends(1).await;
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[balance]\nstrategy = \"round-robin\"\n[health]\nkind = \"none\"\ninterval = \"1h\"\nfall = 2\n[[backend]]\nname = \"broken\"\naddr = \"{broken_addr}\"\n[[backend]]\nname = \"b1\"\naddr = \"{}\"\n",
        backends[0].addr()
    );
    let proxy = proxy_from_toml(&text).await;
    let ws_head = "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(raw(proxy.addr(), ws_head.as_bytes()).await.0);
    }
    // The 503s are relayed as they are until `fall` of them take the backend out.
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(state_of(&proxy, "broken"), "down");
    assert!(statuses[4..].iter().all(|&s| s == 101), "{statuses:?}");
}

/// A backend whose application fails (every plain request gets a 5xx, as a hub's
/// `/api/publish` does while its broker is down) but which takes WebSockets fine.
async fn failing_application_backend() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let key = head
                    .lines()
                    .find_map(|l| l.strip_prefix("sec-websocket-key:"))
                    .map(str::trim);
                let response = match key {
                    // The key was lower-cased with the head; the accept value is not checked.
                    Some(key) => format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n", derive_accept_key(key.as_bytes())),
                    None if head.starts_with("post") => "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}".to_owned(),
                    None => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n".to_owned(),
                };
                let _ = s.write_all(response.as_bytes()).await;
                // Hold the connection (a tunnel after 101) until the peer leaves.
                while matches!(s.read(&mut chunk).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn plain_5xx_answers_do_not_take_a_backend_out() {
    let addr = failing_application_backend().await;
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\nenabled = false\n[health]\nkind = \"none\"\ninterval = \"1h\"\nfall = 3\n[[backend]]\nname = \"hub\"\naddr = \"{addr}\"\n"
    );
    let proxy = proxy_from_toml(&text).await;
    for _ in 0..4 {
        assert_eq!(http(proxy.addr(), "GET", "/api/history/ch").await.0, 500);
        assert_eq!(http(proxy.addr(), "POST", "/api/publish").await.0, 503);
    }
    assert_eq!(state_of(&proxy, "hub"), "up");
    let ws_head = "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    for _ in 0..3 {
        assert_eq!(raw(proxy.addr(), ws_head.as_bytes()).await.0, 101);
    }
    assert!(proxy
        .metrics_text()
        .contains("tether_backend_failures_total{backend=\"hub\"} 0"));
}
