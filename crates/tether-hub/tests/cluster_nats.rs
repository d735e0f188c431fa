//! Several hubs sharing a real NATS JetStream act as one: a killed hub's clients resume on
//! another with every message once, a NATS restart loses nothing (the stream is on file),
//! channel names with dots travel as one subject token, and a hub started before its NATS
//! serves once NATS comes.
//!
//! Each test runs a `nats-server` of its own on a free port (so it may kill and restart
//! it, and leaves no stream behind on the machine's NATS).

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use support::nats::NatsServer;
use support::*;
use tether_hub::{BrokerOptions, HistoryPolicy, HubHandle};

fn history() -> HistoryPolicy {
    HistoryPolicy {
        size: 1000,
        ttl: Duration::from_secs(60),
    }
}

/// `n` hubs named `hub1..`, each with its own NATS broker (as separate processes would
/// have) on `url` under `prefix`.
async fn nats_hubs(n: usize, url: &str, prefix: &str) -> Vec<HubHandle> {
    let mut hubs = Vec::new();
    for i in 1..=n {
        let options = BrokerOptions {
            history: history().into(),
            redis_prefix: prefix.into(),
            ..Default::default()
        };
        let broker = tether_hub::broker_with(url, options).unwrap();
        hubs.push(
            tether_hub::serve(config(&format!("hub{i}")), broker, None)
                .await
                .unwrap(),
        );
    }
    hubs
}

/// Publishes `0..n` over HTTP, round-robin over `addrs`, every `pause`; returns what was
/// accepted (a publish refused while NATS is down is simply not part of the stream).
async fn publish_stream(
    addrs: Vec<std::net::SocketAddr>,
    channel: &str,
    n: usize,
    pause: Duration,
) -> Vec<Value> {
    let mut accepted = Vec::new();
    for i in 0..n {
        let addr = addrs[i % addrs.len()];
        let answer = tokio::time::timeout(Duration::from_secs(8), publish(addr, channel, json!(i)))
            .await
            .expect("a publish is answered within seconds, even while NATS is down");
        if answer.is_some() {
            accepted.push(json!(i));
        }
        tokio::time::sleep(pause).await;
    }
    accepted
}

/// Every accepted message arrived, each once, in publish order. A publish in flight when
/// NATS was killed may have been stored although its answer was lost (the hub answered
/// 503): it is delivered too, in its place, since the stream is durable — a refused
/// publish is "maybe stored", as with any broker whose reply can be lost.
fn assert_once_in_order_with_every_accepted(received: &Received, accepted: &[Value]) {
    let data: Vec<u64> = received
        .data()
        .iter()
        .map(|d| d.as_u64().unwrap())
        .collect();
    assert!(
        data.windows(2).all(|w| w[0] < w[1]),
        "in publish order, once each: {data:?}"
    );
    let missing: Vec<&Value> = accepted
        .iter()
        .filter(|a| !data.contains(&a.as_u64().unwrap()))
        .collect();
    assert!(
        missing.is_empty(),
        "accepted but never delivered: {missing:?}"
    );
    let offsets = received.offsets();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_hub_is_killed_delivers_every_message_once() {
    let nats = NatsServer::start().await;
    let hubs = nats_hubs(2, &nats.url(), &unique_prefix("kill")).await;
    let addrs: Vec<_> = hubs.iter().map(|h| h.local_addr()).collect();
    // Every client starts on hub1, the node that will die.
    let clients: Vec<ResumingClient> = (0..5)
        .map(|_| ResumingClient::start(addrs.clone(), "k"))
        .collect();
    for client in &clients {
        assert!(client.connected(1).await);
    }
    let publisher = tokio::spawn(publish_stream(
        vec![addrs[1]],
        "k",
        150,
        Duration::from_millis(5),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    hubs[0].abort();
    let accepted = publisher.await.unwrap();
    assert_eq!(accepted.len(), 150, "hub2 and NATS stayed up");
    for client in &clients {
        assert!(client.connected(2).await, "moved to the other hub");
        assert!(
            received_all(&client.received, accepted.len()).await,
            "got {}",
            client.received.len()
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for client in &clients {
        assert_exactly_once_in_order(&client.received, &accepted);
        assert_eq!(client.received.not_recovered.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_loses_nothing_and_every_accepted_message_arrives_once() {
    let mut nats = NatsServer::start().await;
    let hubs = nats_hubs(2, &nats.url(), &unique_prefix("restart")).await;
    let addrs: Vec<_> = hubs.iter().map(|h| h.local_addr()).collect();
    let clients: Vec<ResumingClient> = (0..4)
        .map(|_| ResumingClient::start(addrs.clone(), "r"))
        .collect();
    for client in &clients {
        assert!(client.connected(1).await);
    }
    let publisher = tokio::spawn(publish_stream(
        addrs.clone(),
        "r",
        150,
        Duration::from_millis(10),
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    nats.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Back with its stream: same epoch, history intact.
    nats.restart().await;
    let accepted = publisher.await.unwrap();
    assert!(accepted.len() < 150, "some publishes met the dead NATS");
    assert!(
        accepted.len() > 50,
        "publishing resumed after the restart: {}",
        accepted.len()
    );
    for client in &clients {
        // At least the accepted ones (see `assert_once_in_order_with_every_accepted`).
        assert!(
            received_all(&client.received, accepted.len()).await,
            "got {} of {}",
            client.received.len(),
            accepted.len()
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for client in &clients {
        assert_once_in_order_with_every_accepted(&client.received, &accepted);
        assert_eq!(
            client.received.not_recovered.load(Ordering::SeqCst),
            0,
            "the stream outlived the restart: nothing to give up on"
        );
    }
    let (_, metrics) = http(addrs[0], "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains(r#"tether_hub_broker_failures_total{kind="unavailable"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_with_dots_are_one_subject_each() {
    let nats = NatsServer::start().await;
    let hubs = nats_hubs(2, &nats.url(), &unique_prefix("dots")).await;
    let mut dotted = Client::connect(hubs[1].local_addr()).await;
    dotted.subscribe("chat.room.1", None).await;
    let mut plain = Client::connect(hubs[1].local_addr()).await;
    plain.subscribe("chat", None).await;
    let a = publish(hubs[0].local_addr(), "chat.room.1", json!("dotted"))
        .await
        .unwrap();
    let b = publish(hubs[0].local_addr(), "chat", json!("plain"))
        .await
        .unwrap();
    assert_eq!(dotted.messages(1).await, vec![(a, json!("dotted"))]);
    assert_eq!(plain.messages(1).await, vec![(b, json!("plain"))]);
    let (status, body) = http(
        hubs[1].local_addr(),
        "GET",
        "/api/history/chat.room.1?since=0",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("dotted") && !body.contains("plain"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_started_before_its_nats_is_not_ready_until_nats_comes() {
    let mut nats = NatsServer::start().await;
    let url = nats.url();
    nats.kill();
    let hubs = nats_hubs(1, &url, &unique_prefix("late")).await;
    let addr = hubs[0].local_addr();
    let (status, body) = http(addr, "GET", "/health", None, None).await;
    assert_eq!(status, 503, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "broker_unavailable", "{health}");
    assert_eq!(health["broker"]["up"], false, "{health}");
    assert!(health["broker"]["reason"].is_string(), "{health}");
    let started = std::time::Instant::now();
    let (status, body) = http(
        addr,
        "POST",
        "/api/publish",
        Some(r#"{"channel":"l","data":1}"#),
        None,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused fast, not after a hang"
    );
    let (_, metrics) = http(addr, "GET", "/metrics", None, None).await;
    assert!(metrics.contains("tether_hub_broker_up 0"), "{metrics}");
    nats.restart().await;
    let ready = eventually(Duration::from_secs(15), || async {
        http(addr, "GET", "/health", None, None).await.0 == 200
    })
    .await;
    assert!(ready, "/health turns 200 once NATS is reachable");
    let mut client = Client::connect(addr).await;
    client.subscribe("l", None).await;
    let offset = publish(addr, "l", json!("after")).await.unwrap();
    assert_eq!(client.messages(1).await, vec![(offset, json!("after"))]);
    let (_, metrics) = http(addr, "GET", "/metrics", None, None).await;
    assert!(metrics.contains("tether_hub_broker_up 1"), "{metrics}");
}
