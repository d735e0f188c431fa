//! A node that falls behind its broker feed under a flood does not queue without limit:
//! the feed overflows into a refill from history, counted in a metric, and subscribers
//! still get every message once, in order.

mod support;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use support::*;
use tether_hub::broker::memory::MemoryBroker;
use tether_hub::broker::FeedLimit;
use tether_hub::protocol::ChannelName;
use tether_hub::{Broker, HistoryPolicy, HubConfig};

const FLOOD: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_feed_bound_is_refilled_from_history_and_counted() {
    let history = HistoryPolicy {
        size: 10_000,
        ttl: Duration::from_secs(60),
    };
    let limit = FeedLimit {
        events: NonZeroUsize::new(4).unwrap(),
        bytes: NonZeroUsize::new(1024 * 1024).unwrap(),
        ..FeedLimit::DEFAULT
    };
    let memory = Arc::new(MemoryBroker::new(history).with_feed_limit(limit));
    let broker: Arc<dyn Broker> = memory.clone();
    let config = HubConfig {
        client_queue: 100_000,
        ..config("hub1")
    };
    let hub = tether_hub::serve(config, broker, None).await.unwrap();
    let addr = hub.local_addr();
    let mut client = Client::connect(addr).await;
    let subscribed = client.subscribe("flood", None).await;
    assert_eq!(subscribed["offset"], 0);

    // Publishers in this process hand each message to the node's feed synchronously, far
    // faster than the node's router drains a feed of 4.
    let channel = ChannelName::parse("flood").unwrap();
    for n in 0..FLOOD {
        let data = RawValue::from_string(n.to_string()).unwrap();
        drop(memory.publish(&channel, data));
    }

    let received = client.messages(FLOOD).await;
    let data: Vec<u64> = received.iter().map(|(_, d)| d.as_u64().unwrap()).collect();
    assert_eq!(
        data,
        (0..FLOOD as u64).collect::<Vec<_>>(),
        "every message once, in order"
    );
    assert!(
        received.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "contiguous offsets"
    );
    let (_, metrics) = http(addr, "GET", "/metrics", None, None).await;
    let overflows = counter(&metrics, "tether_hub_feed_overflows_total");
    assert!(
        overflows > 0,
        "the flood never overflowed the feed: {metrics}"
    );
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The feed is large enough here; what overflows is the queue from the node's router to
/// the channel's dispatcher, which the router fills faster than one dispatcher empties it
/// (both share the broker lane). Two subscribers on two hubs, the last messages of the
/// flood among those dropped: only a refill, not a later message, can reveal that gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_behind_its_router_is_refilled_from_history_and_counted() {
    let history = HistoryPolicy {
        size: 10_000,
        ttl: Duration::from_secs(60),
    };
    let limit = FeedLimit {
        events: NonZeroUsize::new(100_000).unwrap(),
        bytes: NonZeroUsize::new(64 * 1024 * 1024).unwrap(),
        per_channel: NonZeroUsize::new(4).unwrap(),
    };
    let memory = Arc::new(MemoryBroker::new(history).with_feed_limit(limit));
    let broker: Arc<dyn Broker> = memory.clone();
    let mut hubs = Vec::new();
    let mut clients = Vec::new();
    for name in ["hub1", "hub2"] {
        let config = HubConfig {
            client_queue: 100_000,
            ..config(name)
        };
        let hub = tether_hub::serve(config, broker.clone(), None)
            .await
            .unwrap();
        let mut client = Client::connect(hub.local_addr()).await;
        assert_eq!(client.subscribe("hot", None).await["offset"], 0);
        clients.push(client);
        hubs.push(hub);
    }

    let channel = ChannelName::parse("hot").unwrap();
    for n in 0..FLOOD {
        let data = RawValue::from_string(n.to_string()).unwrap();
        drop(memory.publish(&channel, data));
    }

    for client in &mut clients {
        let received = client.messages(FLOOD).await;
        let data: Vec<u64> = received.iter().map(|(_, d)| d.as_u64().unwrap()).collect();
        assert_eq!(
            data,
            (0..FLOOD as u64).collect::<Vec<_>>(),
            "every message once, in order, on {}",
            client.node
        );
    }
    for hub in &hubs {
        let (_, metrics) = http(hub.local_addr(), "GET", "/metrics", None, None).await;
        assert_eq!(
            counter(&metrics, "tether_hub_feed_overflows_total"),
            0,
            "the feed itself must not overflow in this test"
        );
        assert!(
            counter(&metrics, "tether_hub_channel_overflows_total") > 0,
            "the channel queue never overflowed: {metrics}"
        );
    }
}
