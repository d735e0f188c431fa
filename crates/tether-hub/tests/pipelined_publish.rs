//! A client may publish without waiting for each answer: the hub keeps many publishes in
//! flight to Redis, yet numbers, answers and delivers them in the order the client sent
//! them, and finishes those in flight when the client leaves.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tether_hub::HistoryPolicy;
use tokio_tungstenite::tungstenite::Message;

/// More than the hub keeps in flight for one session, so its back-pressure is crossed too,
/// and less than a client's default frame burst (200), which would close it.
const BURST: usize = 150;

fn history() -> HistoryPolicy {
    HistoryPolicy {
        size: 1000,
        ttl: Duration::from_secs(60),
    }
}

/// Sends `n` publish frames with ids `0..n` in one go, reading nothing in between.
async fn publish_burst(client: &mut Client, channel: &str, n: usize) {
    for i in 0..n {
        let frame = json!({"type": "publish", "channel": channel, "data": i, "id": i});
        client
            .ws
            .feed(Message::text(frame.to_string()))
            .await
            .unwrap();
    }
    client.ws.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_publishes_is_answered_and_delivered_in_the_order_sent() {
    let prefix = unique_prefix("pipelined");
    let hubs = redis_hubs(2, SHARED_REDIS, &prefix, history()).await;
    let mut subscriber = Client::connect(hubs[1].local_addr()).await;
    subscriber.subscribe("burst", None).await;
    let mut publisher = Client::connect(hubs[0].local_addr()).await;

    publish_burst(&mut publisher, "burst", BURST).await;

    let mut offsets = Vec::new();
    for i in 0..BURST {
        let answer = publisher.next().await;
        assert_eq!(answer["type"], "published", "{answer}");
        assert_eq!(answer["id"], json!(i), "answers out of order: {answer}");
        offsets.push(answer["offset"].as_u64().unwrap());
    }
    let first = offsets[0];
    let out_of_order: Vec<(usize, u64)> = (0..BURST)
        .filter(|&i| offsets[i] != first + i as u64)
        .map(|i| (i, offsets[i] - first))
        .collect();
    assert!(
        out_of_order.is_empty(),
        "publishes numbered out of the order sent ((index, offset - first)): {out_of_order:?}"
    );
    let delivered = subscriber.messages(BURST).await;
    let expected: Vec<(u64, Value)> = offsets
        .iter()
        .zip(0..)
        .map(|(&o, i)| (o, json!(i)))
        .collect();
    assert_eq!(delivered, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_in_flight_when_the_client_leaves_are_still_delivered() {
    let prefix = unique_prefix("pipelined-leave");
    let hubs = redis_hubs(1, SHARED_REDIS, &prefix, history()).await;
    let addr = hubs[0].local_addr();
    let mut subscriber = Client::connect(addr).await;
    subscriber.subscribe("leaving", None).await;
    let mut publisher = Client::connect(addr).await;

    let n = 40;
    publish_burst(&mut publisher, "leaving", n).await;
    // The close frame right behind the publishes ends the session while most of them are
    // still with Redis. Whatever the hub answers is read and ignored, so that unread data
    // does not turn the client's close into a reset that could take frames with it.
    publisher.ws.close(None).await.unwrap();
    tokio::spawn(async move { while let Some(Ok(_)) = publisher.ws.next().await {} });

    let data: Vec<Value> = subscriber
        .messages(n)
        .await
        .into_iter()
        .map(|(_, data)| data)
        .collect();
    assert_eq!(data, (0..n).map(|i| json!(i)).collect::<Vec<_>>());
}
