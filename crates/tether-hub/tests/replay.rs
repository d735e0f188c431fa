//! Replays are paged and paced by the client's reading: the replay-amplification attack
//! (many clients resuming from 0 on a channel of large messages, never reading) must not
//! blow up Redis or stall the node, and a slow reader still gets every message.

mod support;

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use support::*;
use tether_hub::HistoryPolicy;
use tokio_tungstenite::tungstenite::Message;

const MESSAGES: usize = 200;
const MESSAGE_BYTES: usize = 60 * 1024;
const IDLE_CLIENTS: usize = 20;

fn redis_used_memory_peak(redis: &RedisServer) -> u64 {
    let info = redis.cli(&["INFO", "memory"]);
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory_peak:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO memory has used_memory_peak")
}

/// Publishes over the client's WebSocket and waits for the answer; returns how long it took.
async fn publish_round_trip(client: &mut Client, channel: &str, n: usize) -> Duration {
    let started = Instant::now();
    client
        .send(json!({"type": "publish", "channel": channel, "data": n, "id": n}))
        .await;
    loop {
        let answer = client.next().await;
        if answer["type"] == "published" && answer["id"] == n {
            return started.elapsed();
        }
        assert_ne!(answer["type"], "error", "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resuming_from_zero_without_reading_cost_redis_and_publishers_little() {
    let redis = RedisServer::start().await;
    let history = HistoryPolicy {
        size: 1000,
        ttl: Duration::from_secs(120),
    };
    let hubs = redis_hubs(1, &redis.url(), &unique_prefix("amplify"), history).await;
    let addr = hubs[0].local_addr();
    let big = "x".repeat(MESSAGE_BYTES);
    for n in 0..MESSAGES {
        publish(addr, "big", json!({"n": n, "pad": big}))
            .await
            .expect("published");
    }
    let peak_before = redis_used_memory_peak(&redis);

    // The attack: subscribe from 0 and never read a byte.
    let mut idle = Vec::new();
    for _ in 0..IDLE_CLIENTS {
        let (mut ws, _) = ws_connect(addr, "/ws").await.unwrap();
        ws.send(Message::text(
            json!({"type": "subscribe", "channel": "big", "since": 0}).to_string(),
        ))
        .await
        .unwrap();
        idle.push(ws);
    }

    // Meanwhile a well-behaved client publishes on another channel and times each answer,
    // and a slow reader replays the whole channel.
    let reader = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        let subscribed = client.subscribe("big", Some(0)).await;
        assert_eq!(subscribed["recovered"], true, "{subscribed}");
        let mut seen = Vec::new();
        while seen.len() < MESSAGES {
            for (offset, data) in client.messages(10).await {
                seen.push((offset, data["n"].as_u64().unwrap()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (client, seen)
    });
    let mut publisher = Client::connect(addr).await;
    let mut slowest = Duration::ZERO;
    for n in 0..30 {
        slowest = slowest.max(publish_round_trip(&mut publisher, "chat", n).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut reader, seen) = reader.await.unwrap();
    let peak_after = redis_used_memory_peak(&redis);

    let ns: Vec<u64> = seen.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        ns,
        (0..MESSAGES as u64).collect::<Vec<_>>(),
        "every message once, in order"
    );
    assert!(
        seen.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "contiguous offsets"
    );
    // The seam after the replay: the next live message arrives once.
    let live = publish(addr, "big", json!({"n": MESSAGES})).await.unwrap();
    let (offset, data) = reader.messages(1).await.remove(0);
    assert_eq!((offset, data["n"].clone()), (live, json!(MESSAGES)));

    let growth = peak_after.saturating_sub(peak_before);
    eprintln!("redis peak grew {growth} bytes; slowest publish {slowest:?}");
    // Whole histories read at once: 20 × 12 MB of replies. One page per read in flight is
    // a few MB at most.
    assert!(
        growth < 40 * 1024 * 1024,
        "Redis peak memory grew by {} MB during the replays",
        growth / (1024 * 1024)
    );
    assert!(
        slowest < Duration::from_secs(2),
        "a publish took {slowest:?} while others replayed"
    );
    let (_, metrics) = http(addr, "GET", "/metrics", None, None).await;
    assert!(
        !metrics.contains(r#"broker_errors_total{op="feed"}"#)
            && !metrics.contains(r#"broker_errors_total{op="publish"}"#),
        "the broker stopped answering: {metrics}"
    );
    drop(idle);
}
