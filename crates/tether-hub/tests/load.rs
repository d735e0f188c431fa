//! Load: 1000 subscribers spread over 3 hubs sharing a real Redis, 100 messages/s for 10 s
//! on one channel; every subscriber must receive every message once, in order.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use support::*;
use tether_hub::HistoryPolicy;
use tokio_tungstenite::tungstenite::Message;

const SUBSCRIBERS: usize = 1000;
const RATE_PER_SEC: u64 = 100;
const SECONDS: u64 = 10;

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    offset: u64,
}

/// What one subscriber saw: its offsets must be exactly the published ones.
#[derive(Default)]
struct Tally {
    offsets: std::sync::Mutex<Vec<u64>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_subscribers_across_three_hubs_receive_every_message_once_in_order() {
    let prefix = unique_prefix("load");
    let history = HistoryPolicy {
        size: 2000,
        ttl: Duration::from_secs(60),
    };
    let hubs = redis_hubs(3, SHARED_REDIS, &prefix, history).await;
    let addrs: Vec<_> = hubs.iter().map(|h| h.local_addr()).collect();

    let subscribed = Arc::new(AtomicUsize::new(0));
    let mut tallies = Vec::new();
    let mut readers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let addr = addrs[i % addrs.len()];
        let tally = Arc::new(Tally::default());
        tallies.push(tally.clone());
        let subscribed = subscribed.clone();
        readers.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            client.subscribe("load", None).await;
            subscribed.fetch_add(1, Ordering::SeqCst);
            while let Some(Ok(frame)) = client.ws.next().await {
                let Message::Text(text) = frame else { continue };
                let frame: Frame = serde_json::from_str(&text).unwrap();
                if frame.kind == "message" {
                    tally.offsets.lock().unwrap().push(frame.offset);
                }
            }
        }));
    }
    let all_subscribed = {
        let subscribed = subscribed.clone();
        eventually(Duration::from_secs(30), move || {
            let subscribed = subscribed.clone();
            async move { subscribed.load(Ordering::SeqCst) == SUBSCRIBERS }
        })
        .await
    };
    assert!(
        all_subscribed,
        "only {} subscribed",
        subscribed.load(Ordering::SeqCst)
    );

    let started = Instant::now();
    let total = RATE_PER_SEC * SECONDS;
    // Publishes go out on a fixed clock, each on its own task, so a slow answer does not
    // slow the rate down; the order is whatever offsets the broker assigned.
    let mut publishes = Vec::with_capacity(total as usize);
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE_PER_SEC));
    for n in 0..total {
        tick.tick().await;
        let addr = addrs[n as usize % addrs.len()];
        publishes.push(tokio::spawn(publish(addr, "load", json!({"n": n}))));
    }
    let mut published = Vec::with_capacity(total as usize);
    for p in publishes {
        published.push(p.await.unwrap().expect("publish accepted"));
    }
    published.sort_unstable();
    let publish_time = started.elapsed();

    let expected = published.len();
    let tallies_for_wait = tallies.clone();
    let delivered = eventually(Duration::from_secs(10), move || {
        let tallies = tallies_for_wait.clone();
        async move {
            tallies
                .iter()
                .all(|t| t.offsets.lock().unwrap().len() >= expected)
        }
    })
    .await;
    let counts: Vec<usize> = tallies
        .iter()
        .map(|t| t.offsets.lock().unwrap().len())
        .collect();
    let short = counts.iter().filter(|&&c| c < expected).count();
    assert!(
        delivered,
        "{short} subscribers short of {expected} messages; min {:?}",
        counts.iter().min()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, tally) in tallies.iter().enumerate() {
        assert_eq!(*tally.offsets.lock().unwrap(), published, "subscriber {i}");
    }
    eprintln!(
        "{SUBSCRIBERS} subscribers, {expected} messages published in {publish_time:?}, {} deliveries, all complete after {:?}",
        SUBSCRIBERS * expected,
        started.elapsed()
    );
    for reader in readers {
        reader.abort();
    }
}
