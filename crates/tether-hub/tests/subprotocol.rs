//! The hub names its wire protocol `tether.v1` in the WebSocket handshake
//! (`Sec-WebSocket-Protocol`, docs/protocol.md), so a later `tether.v2` can be offered beside
//! it; clients that offer no subprotocol, like every client written before it, keep working.

mod support;

use std::net::{IpAddr, Ipv4Addr};

use support::*;
use tether_testkit::ws_connect_with;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn memory_hub() -> tether_hub::HubHandle {
    let broker = tether_hub::broker_from_url("memory").unwrap();
    tether_hub::serve(config("versioned"), broker, None)
        .await
        .unwrap()
}

/// Reads the first frame of a connection, which must be the hub's `welcome`.
async fn welcome(ws: Ws) -> serde_json::Value {
    let mut client = Client {
        ws,
        node: String::new(),
    };
    client.next().await
}

fn selected(
    response: &tokio_tungstenite::tungstenite::handshake::client::Response,
) -> Option<&str> {
    response
        .headers()
        .get("sec-websocket-protocol")
        .map(|value| value.to_str().expect("header is ASCII"))
}

#[tokio::test]
async fn a_client_offering_tether_v1_gets_it_selected() {
    let hub = memory_hub().await;
    let (ws, response) = ws_connect_with(
        hub.local_addr(),
        "/ws",
        LOCAL,
        &[("sec-websocket-protocol", "tether.v1")],
    )
    .await
    .expect("the hub accepts a client offering tether.v1");
    assert_eq!(selected(&response), Some("tether.v1"));
    let first = welcome(ws).await;
    assert_eq!(first["type"], "welcome", "{first}");
    assert_eq!(first["node"], "versioned", "{first}");
}

#[tokio::test]
async fn tether_v1_is_picked_out_of_several_offers() {
    let hub = memory_hub().await;
    let (ws, response) = ws_connect_with(
        hub.local_addr(),
        "/ws",
        LOCAL,
        &[("sec-websocket-protocol", "mqtt, tether.v1, tether.v0")],
    )
    .await
    .expect("the hub accepts a client offering tether.v1 among others");
    assert_eq!(selected(&response), Some("tether.v1"));
    let first = welcome(ws).await;
    assert_eq!(first["type"], "welcome", "{first}");
}

#[tokio::test]
async fn a_client_offering_no_subprotocol_is_served_without_one() {
    let hub = memory_hub().await;
    let (ws, response) = ws_connect_with(hub.local_addr(), "/ws", LOCAL, &[])
        .await
        .expect("the hub accepts a client that offers no subprotocol");
    assert_eq!(
        selected(&response),
        None,
        "a server must not name a subprotocol the client did not offer"
    );
    let mut client = Client {
        ws,
        node: String::new(),
    };
    assert_eq!(client.next().await["type"], "welcome");
    let subscribed = client.subscribe("plain", None).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
}

#[tokio::test]
async fn a_client_offering_only_unknown_subprotocols_is_upgraded_without_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = memory_hub().await;
    let mut socket = tokio::net::TcpStream::connect(hub.local_addr())
        .await
        .unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt, tether.v2\r\n\r\n",
        hub.local_addr()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read(&mut byte))
            .await
            .expect("the hub answered within 10 s")
            .unwrap();
        assert_eq!(read, 1, "the hub closed before its answer ended: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        !head.contains("sec-websocket-protocol"),
        "the hub must not name a subprotocol the client did not offer: {head}"
    );
}
