//! State that only serves a channel goes away with the channel's history: Redis keys
//! expire, the memory broker forgets the channel, and a resume across the expiry is told
//! `recovered: false` while the re-created channel counts on from above its old offsets.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tether_hub::broker::memory::MemoryBroker;
use tether_hub::{Broker, HistoryPolicy, HubConfig};
use tokio_tungstenite::tungstenite::Message;

const CHANNELS: usize = 3000;

fn short_history() -> HistoryPolicy {
    HistoryPolicy {
        size: 100,
        ttl: Duration::from_secs(1),
    }
}

/// A publisher allowed to publish a few thousand frames at once.
fn fast_publisher(name: &str) -> HubConfig {
    HubConfig {
        client_rate: 100_000,
        client_burst: 100_000,
        ..config(name)
    }
}

/// Publishes one message to each of `n` channels `ch-0..` over one WebSocket, pipelined.
async fn publish_once_to_many(addr: std::net::SocketAddr, n: usize) {
    let client = Client::connect(addr).await;
    let (mut tx, mut rx) = client.ws.split();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            let frame =
                json!({"type": "publish", "channel": format!("ch-{i}"), "data": i, "id": i});
            tx.send(Message::text(frame.to_string())).await.unwrap();
        }
        tx
    });
    let mut answered = 0;
    while answered < n {
        let frame = tokio::time::timeout(Duration::from_secs(30), rx.next())
            .await
            .expect("answers keep coming")
            .expect("connection open")
            .expect("frame read");
        if let Message::Text(text) = frame {
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["type"], "published", "{value}");
            answered += 1;
        }
    }
    drop(sender.await.unwrap());
}

/// Resume from `old` on `channel` after its history expired: not recovered, and the next
/// message's offset is above `old`.
async fn resume_across_expiry(addr: std::net::SocketAddr, channel: &str, old: u64) {
    let mut client = Client::connect(addr).await;
    let subscribed = client.subscribe(channel, Some(old)).await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    let fresh = publish(addr, channel, json!("again")).await.unwrap();
    assert!(
        fresh > old,
        "offset {fresh} of the re-created channel is not above {old}"
    );
    assert_eq!(client.messages(1).await, vec![(fresh, json!("again"))]);
}

fn redis_keys(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", "6379", "--scan", "--pattern", &format!("{prefix}:*")])
        .output()
        .expect("redis-cli must be installed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_of_channels_published_once_expire_with_their_history() {
    let prefix = unique_prefix("expiry");
    let broker =
        tether_hub::broker_with(SHARED_REDIS, redis_options(&prefix, short_history())).unwrap();
    let hub = tether_hub::serve(fast_publisher("hub1"), broker, None)
        .await
        .unwrap();
    let addr = hub.local_addr();
    let old = publish(addr, "gone", json!("before")).await.unwrap();
    publish_once_to_many(addr, CHANNELS).await;
    assert!(
        redis_keys(&prefix).len() >= 3 * CHANNELS,
        "seq, base and history of every channel exist while it is live"
    );
    let keys_gone = eventually(Duration::from_secs(30), || async {
        redis_keys(&prefix).is_empty()
    })
    .await;
    assert!(
        keys_gone,
        "{} keys outlived the history ttl, e.g. {:?}",
        redis_keys(&prefix).len(),
        redis_keys(&prefix).first()
    );
    resume_across_expiry(addr, "gone", old).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_broker_forgets_channels_whose_history_expired() {
    let memory = Arc::new(MemoryBroker::new(short_history()));
    let broker: Arc<dyn Broker> = memory.clone();
    let hub = tether_hub::serve(fast_publisher("hub1"), broker, None)
        .await
        .unwrap();
    let addr = hub.local_addr();
    let old = publish(addr, "gone", json!("before")).await.unwrap();
    publish_once_to_many(addr, CHANNELS).await;
    assert!(
        memory.channel_count() > CHANNELS / 2,
        "the channels exist while live"
    );
    let forgotten = eventually(Duration::from_secs(30), || async {
        memory.channel_count() == 0
    })
    .await;
    assert!(
        forgotten,
        "{} channels outlived their history",
        memory.channel_count()
    );
    resume_across_expiry(addr, "gone", old).await;
}
