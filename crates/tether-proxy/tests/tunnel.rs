//! What crosses the tunnel, and how it ends.

mod common;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn messages_of_every_size_cross_byte_exact() {
    let backends = echo_backends(1).await;
    let proxy = proxy("", &backends).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{}/ws", proxy.addr()),
        stream,
        Some(config),
    )
    .await
    .unwrap();
    for size in [0usize, 125, 126, 65_535, 64 * 1024, 16 * 1024 * 1024] {
        let payload: Vec<u8> = (0..size)
            .map(|i| (i.wrapping_mul(31) % 251) as u8)
            .collect();
        ws.send(Message::binary(payload.clone())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            echoed.into_data().as_ref() == payload.as_slice(),
            "{size} B payload differs"
        );
    }
    ws.send(Message::text("héllo ✓")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("héllo ✓"));
}

#[tokio::test]
async fn a_thousand_concurrent_tunnels_each_echo() {
    let backends = echo_backends(3).await;
    let proxy = proxy("[balance]\nstrategy = \"least-connections\"", &backends).await;
    let mut clients = Vec::new();
    for i in 0..1000u32 {
        // Spread the client side over several source addresses, as real clients would be.
        let source = format!("127.0.{}.{}", 1 + i / 250, 1 + i % 250)
            .parse()
            .unwrap();
        let (ws, _) = ws_connect_with(proxy.addr(), "/ws", source, &[])
            .await
            .expect("open tunnel");
        clients.push(ws);
    }
    let active: usize = proxy.backends().iter().map(|b| b.active).sum();
    assert_eq!(active, 1000);
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                let text = format!("client {i}");
                ws.send(Message::text(text.clone())).await.unwrap();
                let got = tokio::time::timeout(Duration::from_secs(20), ws.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                assert_eq!(got, Message::text(text));
                ws.close(None).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            proxy.backends().iter().all(|b| b.active == 0)
        })
        .await,
        "tunnels not released"
    );
}

#[tokio::test]
async fn backend_death_mid_tunnel_closes_the_client_promptly() {
    let backends = echo_backends(1).await;
    let proxy = proxy("", &backends).await;
    let (mut ws, _) = open(&proxy, "/ws").await;
    assert_eq!(whoami(&mut ws).await.unwrap(), "b1");
    backends[0].stop();
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(
        end.is_ok(),
        "client not closed within 2 s of the backend dying"
    );
}

#[tokio::test]
async fn idle_tunnel_is_closed_after_tunnel_idle() {
    let backends = echo_backends(1).await;
    let proxy = proxy("[timeouts]\ntunnel_idle = \"400ms\"", &backends).await;
    let (mut ws, _) = open(&proxy, "/ws").await;
    // With a close frame saying the proxy is going away (see drain.rs for the details).
    let end = tokio::time::timeout(Duration::from_secs(3), ws.next()).await;
    match end {
        Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame))))) => {
            assert_eq!(u16::from(frame.code), 1001)
        }
        other => panic!("no close frame: {other:?}"),
    }
    drop(ws);
    assert!(
        eventually(Duration::from_secs(3), || async {
            proxy
                .metrics_text()
                .contains("tether_tunnels_ended_total{reason=\"IdleTimeout\"} 1")
        })
        .await
    );
}

#[tokio::test]
async fn plain_http_requests_are_proxied_one_per_connection() {
    let backends = echo_backends(2).await;
    let proxy = proxy("[balance]\nstrategy = \"round-robin\"", &backends).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        let (status, text) = http(proxy.addr(), "GET", "/index.html").await;
        assert_eq!(status, 200, "{text}");
        names.push(text.rsplit("\r\n\r\n").next().unwrap().to_owned());
    }
    assert_eq!(count(names.iter()).len(), 2, "{names:?}");
    // Plain requests do not count as live tunnels.
    assert!(proxy.backends().iter().all(|b| b.active == 0));
}

#[tokio::test]
async fn shutdown_closes_the_tunnels_left_after_the_grace_period() {
    let backends = echo_backends(1).await;
    let proxy = proxy("[runtime]\ngrace = \"200ms\"", &backends).await;
    let (mut ws, _) = open(&proxy, "/ws").await;
    assert_eq!(whoami(&mut ws).await.unwrap(), "b1");
    // A client still in its handshake when the grace period ends is closed too.
    let mut slow = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(5), proxy.shutdown())
        .await
        .expect("shutdown did not return");
    // The client sees its tunnel end without sending anything.
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(end.is_ok(), "the tunnel outlived the proxy");
    let mut byte = [0u8; 1];
    let slow_end = tokio::time::timeout(Duration::from_secs(2), slow.read(&mut byte)).await;
    assert!(
        matches!(slow_end, Ok(Ok(0) | Err(_))),
        "a handshake outlived the proxy: {slow_end:?}"
    );
    assert_eq!(
        backends[0]
            .stats()
            .open
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(
        stopped
            .metrics_text()
            .contains("tether_tunnels_ended_total{reason=\"Shutdown\"} 1"),
        "{}",
        stopped.metrics_text()
    );
}
