//! A resume into a channel whose log the broker lost, before anything new was published in
//! it: what the hub answers, and what comes after.
//!
//! Found by the chaos soak (docs/soak.md): a subscriber stalled while its channel's next
//! publishes were acknowledged; then Redis lost its data, and the resume was answered
//! `subscribed {offset: 0, recovered: false}` — `offset` below `since`, because the new log
//! was still empty. The hub was right, the soak's ledger was not (it excused only
//! `(since, offset]`, an empty span, and reported the acknowledged messages of the lost log
//! as lost). This pins down the hub's side of it, which the ledger now relies on: such a
//! resume says `recovered: false`, and the new log's messages then arrive live, above every
//! offset of the old one, none of them withheld as "already seen".
//!
//! Writing it found a hub defect too: the node's channel dispatcher, having closed its
//! subscribers over the lost log, kept the old log's last offset, so the new log's first
//! message looked like one more hole and the client that had just resumed (and been told)
//! was closed again with 1013 "messages lost", for nothing. The dispatcher now goes on
//! from the log's current top once it has told its subscribers.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tether_hub::HistoryPolicy;
use tokio_tungstenite::tungstenite::Message;

use support::*;

/// Subscribes, asking again while the node answers `broker_unavailable` (the broker is
/// coming back); the `subscribed` frame.
async fn subscribe_when_served(client: &mut Client, channel: &str, since: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        client
            .send(json!({"type": "subscribe", "channel": channel, "since": since}))
            .await;
        let answer = client.next().await;
        match answer["type"].as_str() {
            Some("subscribed") => return answer,
            Some("error") if answer["code"] == "broker_unavailable" => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the broker never came back: {answer}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => panic!("expected subscribed, got {answer}"),
        }
    }
}

/// Publishes until a hub acknowledges it (the broker may still be coming back).
async fn publish_when_served(addr: std::net::SocketAddr, channel: &str, data: Value) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(offset) = publish(addr, channel, data.clone()).await {
            return offset;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publish acknowledged after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_resume_into_the_empty_new_log_is_unrecovered_and_then_gets_the_new_log_live() {
    let mut redis = RedisServer::start().await;
    let prefix = unique_prefix("lost-log");
    let hubs = redis_hubs(2, &redis.url(), &prefix, HistoryPolicy::default()).await;
    let (publisher, node) = (hubs[0].local_addr(), hubs[1].local_addr());

    // A subscriber that stays on the resuming client's node, so the node's dispatcher for
    // the channel has delivered the old log (its last offset belongs to the old log).
    let mut watcher = Client::connect(node).await;
    watcher.subscribe("lost", None).await;
    let mut old = Vec::new();
    for n in 0..3 {
        old.push(publish(publisher, "lost", json!(n)).await.unwrap());
    }
    let seen = watcher.messages(3).await;
    assert_eq!(seen.iter().map(|(o, _)| *o).collect::<Vec<_>>(), old);

    // The broker loses everything; nothing is published in the channel's new log yet.
    redis.restart().await;

    // The watcher's node learns of the lost log and closes it (1013), as it closes anyone
    // owed messages that history no longer holds. The watcher does not read yet, so its
    // session stays a member of the channel for the second it waits for a closing answer:
    // the channel's dispatcher, which has just told its subscribers, lives on.
    let told = eventually(Duration::from_secs(15), || async move {
        let metrics = http(node, "GET", "/metrics", None, None).await.1;
        metrics.contains("tether_hub_channel_gaps_total 1")
    })
    .await;
    assert!(told, "the node noticed the lost log within 15 s");

    // A client that saw only the first message resumes there: what came after it is gone,
    // and the answer says so although the channel's newest offset (0: its new log is
    // empty) is below `since`.
    let mut resumed = Client::connect(node).await;
    let subscribed = subscribe_when_served(&mut resumed, "lost", old[0]).await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(
        subscribed["offset"], 0,
        "the new log is empty: {subscribed}"
    );

    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watcher.ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watcher's close arrived");
    match closed {
        Some(Ok(Message::Close(Some(close)))) => assert_eq!(u16::from(close.code), 1013),
        other => panic!("expected close 1013, got {other:?}"),
    }

    // The new log's first message arrives live, numbered above the lost log's offsets, and
    // nothing else (no message of the lost log, no repeat) comes before it.
    let fresh = publish_when_served(publisher, "lost", json!("fresh")).await;
    assert!(fresh > old[2], "a new log starts above the old: {fresh}");
    let got = resumed.next().await;
    assert_eq!(got["type"], "message", "{got}");
    assert_eq!(got["offset"], fresh, "{got}");
    assert_eq!(got["data"], "fresh", "{got}");
}
