//! The application-level `ping` a browser client sends (it cannot see WebSocket pings) and
//! the hub's `pong`, against a real hub on loopback.

mod support;

use serde_json::json;
use support::*;

async fn memory_hub() -> tether_hub::HubHandle {
    let broker = tether_hub::broker_from_url("memory").unwrap();
    tether_hub::serve(config("pinged"), broker, None)
        .await
        .unwrap()
}

#[tokio::test]
async fn ping_is_answered_with_pong_echoing_its_id() {
    let hub = memory_hub().await;
    let mut client = Client::connect(hub.local_addr()).await;

    client.send(json!({"type": "ping"})).await;
    assert_eq!(client.next().await, json!({"type": "pong"}));

    client.send(json!({"type": "ping", "id": 7})).await;
    assert_eq!(client.next().await, json!({"type": "pong", "id": 7}));

    client
        .send(json!({"type": "ping", "id": {"seq": "a", "at": [1, 2]}}))
        .await;
    assert_eq!(
        client.next().await,
        json!({"type": "pong", "id": {"seq": "a", "at": [1, 2]}})
    );
}

#[tokio::test]
async fn a_ping_between_live_messages_loses_and_reorders_nothing() {
    let hub = memory_hub().await;
    let addr = hub.local_addr();
    let mut client = Client::connect(addr).await;
    client.subscribe("live", None).await;
    let offset = publish(addr, "live", json!("before")).await.unwrap();
    let message = client.next().await;
    assert_eq!(message["offset"], offset, "{message}");
    // A ping between messages neither loses nor reorders them.
    client.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(client.next().await, json!({"type": "pong", "id": 1}));
    let later = publish(addr, "live", json!("after")).await.unwrap();
    let message = client.next().await;
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["offset"], later, "{message}");
    assert_eq!(message["data"], "after");
}

#[tokio::test]
async fn pings_count_against_the_frame_rate_like_any_frame() {
    let broker = tether_hub::broker_from_url("memory").unwrap();
    let hub = tether_hub::serve(
        tether_hub::HubConfig {
            client_rate: 5,
            client_burst: 5,
            ..config("pinged")
        },
        broker,
        None,
    )
    .await
    .unwrap();
    let addr = hub.local_addr();
    let mut flooder = Client::connect(addr).await;
    for _ in 0..50 {
        futures_util::SinkExt::send(
            &mut flooder.ws,
            tokio_tungstenite::tungstenite::Message::text(r#"{"type":"ping"}"#),
        )
        .await
        .ok();
    }
    let flooded = eventually(std::time::Duration::from_secs(10), || async move {
        http(addr, "GET", "/metrics", None, None)
            .await
            .1
            .contains(r#"tether_hub_disconnects_total{reason="flood"} 1"#)
    })
    .await;
    assert!(flooded, "a ping flood must close the client with 1008");
}
