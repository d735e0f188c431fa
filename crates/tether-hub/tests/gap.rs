//! A hole in a channel's log that history cannot fill is never skipped in silence.
//!
//! Found by the chaos soak (`tether bench soak`, docs/soak.md): after Redis lost its data,
//! a node's dispatcher logged "continuing after the gap" and its subscribers carried on past
//! offsets they never got, with no `recovered: false` to tell them.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tether_hub::HistoryPolicy;
use tokio_tungstenite::tungstenite::Message;

use support::*;

#[tokio::test]
async fn subscribers_past_a_hole_history_cannot_fill_are_closed_and_resume_unrecovered() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("gap");
    let hubs = redis_hubs(1, &redis.url(), &prefix, HistoryPolicy::default()).await;
    let addr = hubs[0].local_addr();

    let mut client = Client::connect(addr).await;
    client.subscribe("news", None).await;
    let first = publish(addr, "news", json!("first")).await.unwrap();
    let got = client.next().await;
    assert_eq!(got["offset"], first, "{got}");

    // Two publications vanish from the log before anyone saw them (what a broker that lost
    // its data looks like to a node): the sequence moves on without them.
    redis.cli(&["INCRBY", &format!("{prefix}:seq:news"), "2"]);
    let after = publish(addr, "news", json!("after the hole"))
        .await
        .unwrap();
    assert_eq!(after, first + 3);

    // The subscriber is not handed the later message as if nothing were missing: it is
    // closed with 1013, so it resumes.
    let frame = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the hub acted within 10 s");
    match frame {
        Some(Ok(Message::Close(Some(close)))) => assert_eq!(u16::from(close.code), 1013),
        other => panic!("expected close 1013 before anything after the hole, got {other:?}"),
    }

    // Its resume from the last offset it saw is told the truth, then gets what is left.
    let mut resumed = Client::connect(addr).await;
    let subscribed = resumed.subscribe("news", Some(first)).await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    let replayed = resumed.next().await;
    assert_eq!(replayed["offset"], after, "{replayed}");

    let counted = eventually(Duration::from_secs(5), || async move {
        let metrics = http(addr, "GET", "/metrics", None, None).await.1;
        metrics.contains("tether_hub_channel_gaps_total 1")
            && metrics.contains(r#"tether_hub_disconnects_total{reason="gap"} 1"#)
    })
    .await;
    assert!(
        counted,
        "{}",
        http(addr, "GET", "/metrics", None, None).await.1
    );
}
