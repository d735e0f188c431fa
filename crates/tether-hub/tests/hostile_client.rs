//! The attacks of issue #11 on the hub's sessions and HTTP side, replayed against a real
//! node over real sockets: control-frame floods, JSON nested past what readers can parse,
//! sockets that never finish a request, frames far above the size limit, and requests
//! the framework itself refuses.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tether_hub::protocol::{ChannelName, MAX_DATA_DEPTH};
use tether_hub::HubConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

async fn memory_hub(config: HubConfig) -> tether_hub::HubHandle {
    let broker = tether_hub::broker_from_url("memory").unwrap();
    tether_hub::serve(config, broker, None).await.unwrap()
}

/// `data` made of `depth` nested arrays around a number.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn ping_flood_beyond_the_client_rate_is_closed_with_1008() {
    let hub = memory_hub(HubConfig {
        client_rate: 10,
        client_burst: 20,
        ..config("h")
    })
    .await;
    let mut flooder = Client::connect(hub.local_addr()).await;
    for _ in 0..500 {
        let ping = Message::Ping(vec![7u8; 125].into());
        if flooder.ws.send(ping).await.is_err() {
            break;
        }
    }
    let close = next_close(&mut flooder.ws).await;
    assert_eq!(
        close,
        Some(CloseCode::Policy),
        "pings count against the rate"
    );
    assert!(
        counted(
            hub.local_addr(),
            r#"tether_hub_disconnects_total{reason="flood"} 1"#
        )
        .await,
        "the hub counts the flooder as dropped for flooding"
    );
}

/// Waits (10 s at most) until the node's `/metrics` holds `line`.
async fn counted(addr: std::net::SocketAddr, line: &str) -> bool {
    eventually(Duration::from_secs(10), || async move {
        http(addr, "GET", "/metrics", None, None)
            .await
            .1
            .contains(line)
    })
    .await
}

#[tokio::test]
async fn pongs_count_against_the_client_rate_too() {
    let hub = memory_hub(HubConfig {
        client_rate: 10,
        client_burst: 20,
        ..config("h")
    })
    .await;
    let mut flooder = Client::connect(hub.local_addr()).await;
    for _ in 0..500 {
        if flooder
            .ws
            .send(Message::Pong(Default::default()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(next_close(&mut flooder.ws).await, Some(CloseCode::Policy));
}

/// The close code the hub sends, skipping every other frame; `None` if the connection
/// ends without one. Fails the test after 10 s.
async fn next_close(ws: &mut Ws) -> Option<CloseCode> {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(Message::Close(close)) => return close.map(|c| c.code),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the hub closed the connection within 10 s")
}

#[tokio::test]
async fn data_nested_too_deep_is_refused_at_publish_over_websocket_and_http() {
    let hub = memory_hub(config("h")).await;
    let addr = hub.local_addr();
    let mut client = Client::connect(addr).await;
    client.subscribe("deep", None).await;

    let frame = format!(
        r#"{{"type":"publish","channel":"deep","data":{},"id":1}}"#,
        nested(128)
    );
    client.send_raw(&frame).await;
    let answer = client.next().await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "too_deep", "{answer}");
    assert_eq!(answer["id"], 1, "{answer}");

    let body = format!(r#"{{"channel":"deep","data":{}}}"#, nested(128));
    let (status, body) = http(addr, "POST", "/api/publish", Some(&body), None).await;
    assert_eq!(status, 400, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "too_deep", "{body}");

    // The limit itself is accepted, and the connection carries on.
    let frame = format!(
        r#"{{"type":"publish","channel":"deep","data":{},"id":2}}"#,
        nested(MAX_DATA_DEPTH)
    );
    client.send_raw(&frame).await;
    let mut kinds = [client.next().await, client.next().await]
        .map(|f| f["type"].as_str().unwrap_or_default().to_owned());
    kinds.sort();
    assert_eq!(kinds, ["message", "published"]);

    let (status, body) = http(addr, "GET", "/api/history/deep", None, None).await;
    assert_eq!(status, 200, "{body}");
    let history: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
}

/// A message stored before the check existed (or by a node without it) is served as it
/// was stored: the history answer is not parsed again, so it cannot fail on it.
#[tokio::test]
async fn history_serves_deep_data_already_stored_without_failing() {
    let broker = tether_hub::broker_from_url("memory").unwrap();
    let channel = ChannelName::parse("stored-deep").unwrap();
    let data = serde_json::value::RawValue::from_string(nested(128)).unwrap();
    broker.publish(&channel, data).await.unwrap();
    let hub = tether_hub::serve(config("h"), broker, None).await.unwrap();
    for _ in 0..2 {
        let (status, body) = http(
            hub.local_addr(),
            "GET",
            "/api/history/stored-deep",
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(&format!(r#""data":{}}}]"#, nested(128))),
            "{body}"
        );
    }
}

/// Reads until the hub closes the connection; how long that took, or `None` if it was
/// still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn idle_sockets_are_closed_after_the_idle_timeout() {
    let hub = memory_hub(HubConfig {
        idle_timeout: Duration::from_millis(500),
        head_timeout: Duration::from_secs(60),
        ..config("h")
    })
    .await;
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(TcpStream::connect(hub.local_addr()).await.unwrap());
    }
    for socket in &mut sockets {
        let took = closed_within(socket, Duration::from_secs(15)).await;
        assert!(took.is_some(), "an idle socket is still open after 15 s");
    }
}

#[tokio::test]
async fn slowloris_heads_are_closed_after_the_head_timeout() {
    let hub = memory_hub(HubConfig {
        head_timeout: Duration::from_millis(800),
        idle_timeout: Duration::from_secs(60),
        ..config("h")
    })
    .await;
    let addr = hub.local_addr();
    let mut sockets = Vec::new();
    for _ in 0..20 {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        sockets.push(socket);
    }
    // One header byte per socket every 100 ms: never idle, never a complete head.
    let trickle = async {
        loop {
            for socket in &mut sockets {
                if socket.write_all(b"X").await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    for socket in &mut sockets {
        let took = closed_within(socket, Duration::from_secs(15)).await;
        assert!(
            took.is_some(),
            "a slowloris socket is still open after 15 s"
        );
    }
}

#[tokio::test]
async fn a_request_body_that_stalls_is_closed_after_the_idle_timeout() {
    let hub = memory_hub(HubConfig {
        idle_timeout: Duration::from_millis(500),
        ..config("h")
    })
    .await;
    let mut socket = TcpStream::connect(hub.local_addr()).await.unwrap();
    socket
        .write_all(
            b"POST /api/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n{\"channel\"",
        )
        .await
        .unwrap();
    let took = closed_within(&mut socket, Duration::from_secs(15)).await;
    assert!(took.is_some(), "a stalled body is still open after 15 s");
}

#[tokio::test]
async fn keep_alive_requests_within_the_timeouts_are_served() {
    let hub = memory_hub(HubConfig {
        idle_timeout: Duration::from_secs(2),
        head_timeout: Duration::from_secs(2),
        ..config("h")
    })
    .await;
    let mut socket = TcpStream::connect(hub.local_addr()).await.unwrap();
    for _ in 0..3 {
        socket
            .write_all(b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Sends `message` from one task while another reads, as a browser does: the hub stops
/// reading a frame it refuses, so a large send may never complete.
async fn send_and_await_close(ws: Ws, message: Message) -> Option<CloseCode> {
    let (mut sink, mut stream) = ws.split();
    let sender = tokio::spawn(async move {
        let _ = sink.send(message).await;
        sink
    });
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(Message::Close(close)) => return close.map(|c| c.code),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the hub closed the connection within 10 s");
    sender.abort();
    close
}

#[tokio::test]
async fn frames_above_the_hard_limit_are_closed_with_1009_at_any_size() {
    let limit = 1024;
    let hub = memory_hub(HubConfig {
        max_message_size: limit,
        ..config("h")
    })
    .await;
    let hard_limit = limit * 16;
    for size in [hard_limit + 1, 4 << 20, 32 << 20] {
        let client = Client::connect(hub.local_addr()).await;
        let text = format!(r#""{}""#, "x".repeat(size));
        let close = send_and_await_close(client.ws, Message::text(text)).await;
        assert_eq!(close, Some(CloseCode::Size), "a frame of {size} bytes");
    }
    assert!(
        counted(
            hub.local_addr(),
            r#"tether_hub_disconnects_total{reason="too_large"} 3"#
        )
        .await,
        "the hub counts each as dropped for a too-large frame"
    );
}

/// A frame header that announces 2^40 bytes, sent over a raw socket: refused from the
/// header, with 1009, before any of the payload is read.
#[tokio::test]
async fn a_frame_header_announcing_a_terabyte_is_closed_with_1009() {
    let hub = memory_hub(config("h")).await;
    let mut socket = TcpStream::connect(hub.local_addr()).await.unwrap();
    let handshake = "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    socket.write_all(handshake.as_bytes()).await.unwrap();
    // Text, final, masked, 64-bit length 2^40, mask key, then a little payload.
    let mut frame = vec![0x81u8, 0xFF];
    frame.extend_from_slice(&(1u64 << 40).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(&[0u8; 4096]);
    socket.write_all(&frame).await.unwrap();
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut received)).await;
    // The close frame is the last frame: 0x88, length 2 + reason, then the code.
    let close = received
        .windows(4)
        .rposition(|w| w[0] == 0x88 && w[1] >= 2 && w[1] <= 125)
        .map(|at| u16::from_be_bytes([received[at + 2], received[at + 3]]));
    assert_eq!(
        close,
        Some(1009),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
}

#[tokio::test]
async fn every_http_error_is_json_with_a_stable_code() {
    let mut redis = RedisServer::start().await;
    let prefix = unique_prefix("json-errors");
    let broker = tether_hub::broker_with(
        &redis.url(),
        redis_options(&prefix, tether_hub::HistoryPolicy::default()),
    )
    .unwrap();
    let hub = tether_hub::serve(
        HubConfig {
            max_message_size: 1024,
            ..config("h")
        },
        broker,
        None,
    )
    .await
    .unwrap();
    let guarded = memory_hub(HubConfig {
        api_token: Some("secret".into()),
        ..config("g")
    })
    .await;
    let addr = hub.local_addr();
    let too_large = json!({"channel": "c", "data": "x".repeat(4096)}).to_string();
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        ("GET", "/nope", None, 404, "not_found"),
        ("DELETE", "/api/publish", None, 405, "method_not_allowed"),
        ("POST", "/health", None, 405, "method_not_allowed"),
        ("POST", "/api/publish", Some("{nope"), 400, "bad_json"),
        (
            "POST",
            "/api/publish",
            Some(r#"{"channel":"a b","data":1}"#),
            400,
            "bad_channel",
        ),
        ("POST", "/api/publish", Some(&too_large), 413, "too_large"),
        ("GET", "/api/history/c?since=abc", None, 400, "bad_query"),
        ("GET", "/api/history/no%20space", None, 400, "bad_channel"),
        ("GET", "/ws", None, 400, "not_websocket"),
    ];
    for (method, path, body, status, code) in cases {
        let answer = http_answer(addr, method, path, body, None).await;
        answer.assert_json_error(status, code, &format!("{method} {path}"));
    }
    http_answer(guarded.local_addr(), "GET", "/api/history/c", None, None)
        .await
        .assert_json_error(401, "unauthorized", "no token");
    redis.kill();
    http_answer(
        addr,
        "POST",
        "/api/publish",
        Some(r#"{"channel":"c","data":1}"#),
        None,
    )
    .await
    .assert_json_error(503, "broker_unavailable", "Redis down");
}
