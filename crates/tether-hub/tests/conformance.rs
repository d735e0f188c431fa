//! The broker conformance suite: one function per property of the broker contract (see
//! `broker/mod.rs`), run against every broker by the `conformance!` macro at the bottom.
//! A new broker passes when it gets a `Kind` and a line in that macro, and every test here
//! passes for it.
//!
//! Everything is real: hubs on loopback, WebSocket clients, a real Redis (the machine's
//! 6379 under a prefix of the test's own, or a private `redis-server` on a free port
//! where the test must cut or restart it), a real NATS JetStream (a private `nats-server`
//! per test: its `max_payload` must fit the largest messages, which the machine's default
//! one does not, and it leaves no stream behind).

mod support;

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt;
use serde_json::json;
use serde_json::value::RawValue;
use support::nats::{NatsServer, Relay};
use support::redis_tls::RedisTlsServer;
use support::*;
use tether_hub::broker::memory::MemoryBroker;
use tether_hub::broker::FeedLimit;
use tether_hub::protocol::{ChannelName, Offset};
use tether_hub::{Broker, BrokerOptions, HistoryPolicy, HubHandle};
use tokio_tungstenite::tungstenite::Message;

/// The brokers under test.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Memory,
    Redis,
    /// A private TLS-only `redis-server` reached by `rediss://…?ca=`.
    RedisTls,
    Nats,
}

/// Where one test's brokers come from: `node()` gives the broker one more hub node uses
/// (a shared one for memory, one per node for Redis and NATS, as separate processes would
/// have). Hub nodes connect to `hub_url` when it is set (a relay the test can cut), the
/// test's own brokers to `url`.
struct Brokers {
    kind: Kind,
    options: BrokerOptions,
    url: String,
    hub_url: Option<String>,
    memory: Option<Arc<dyn Broker>>,
    /// The private server of a NATS test, stopped with it.
    _nats: Option<NatsServer>,
    /// The private TLS server of a `rediss://` test, stopped with it.
    _redis_tls: Option<RedisTlsServer>,
}

impl Brokers {
    async fn new(kind: Kind, test: &str, history: HistoryPolicy) -> Self {
        Self::with(kind, test, history, FeedLimit::DEFAULT).await
    }

    async fn with(kind: Kind, test: &str, history: HistoryPolicy, feed: FeedLimit) -> Self {
        match kind {
            Kind::Nats => {
                let server = NatsServer::start().await;
                let brokers = Self::at(kind, test, history, feed, server.url(), None);
                Self {
                    _nats: Some(server),
                    ..brokers
                }
            }
            Kind::RedisTls => {
                let server = RedisTlsServer::start().await;
                let brokers = Self::at(kind, test, history, feed, server.url(), None);
                Self {
                    _redis_tls: Some(server),
                    ..brokers
                }
            }
            _ => Self::at(kind, test, history, feed, SHARED_REDIS.into(), None),
        }
    }

    fn at(
        kind: Kind,
        test: &str,
        history: HistoryPolicy,
        feed: FeedLimit,
        url: String,
        hub_url: Option<String>,
    ) -> Self {
        let options = BrokerOptions {
            feed,
            ..redis_options(&unique_prefix(test), history)
        };
        let memory = match kind {
            Kind::Memory => {
                Some(Arc::new(MemoryBroker::new(history).with_feed_limit(feed)) as Arc<dyn Broker>)
            }
            Kind::Redis | Kind::RedisTls | Kind::Nats => None,
        };
        Self {
            kind,
            options,
            url,
            hub_url,
            memory,
            _nats: None,
            _redis_tls: None,
        }
    }

    fn hub_node(&self) -> Arc<dyn Broker> {
        match &self.hub_url {
            Some(url) => tether_hub::broker_with(url, self.options.clone()).unwrap(),
            None => self.node(),
        }
    }

    fn node(&self) -> Arc<dyn Broker> {
        match (self.kind, &self.memory) {
            (Kind::Memory, Some(memory)) => memory.clone(),
            _ => tether_hub::broker_with(&self.url, self.options.clone()).unwrap(),
        }
    }

    async fn hubs(&self, n: usize) -> Vec<HubHandle> {
        let mut hubs = Vec::new();
        for i in 1..=n {
            let config = tether_hub::HubConfig {
                client_queue: 100_000,
                max_message_size: 1024 * 1024,
                ..config(&format!("hub{i}"))
            };
            hubs.push(
                tether_hub::serve(config, self.hub_node(), None)
                    .await
                    .unwrap(),
            );
        }
        hubs
    }
}

fn history(size: usize, ttl: Duration) -> HistoryPolicy {
    HistoryPolicy { size, ttl }
}

fn long() -> HistoryPolicy {
    history(10_000, Duration::from_secs(60))
}

fn raw(n: u64) -> Box<RawValue> {
    RawValue::from_string(n.to_string()).unwrap()
}

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

fn strictly_increasing(offsets: &[u64]) -> bool {
    offsets.windows(2).all(|w| w[0] < w[1])
}

/// Publishes through two nodes in turn; subscribers on both see every message once, in
/// the same order, which is offset order.
async fn ordering_per_channel_across_two_nodes(kind: Kind) {
    let brokers = Brokers::new(kind, "order", long()).await;
    let hubs = brokers.hubs(2).await;
    let mut a = Client::connect(hubs[0].local_addr()).await;
    let mut b = Client::connect(hubs[1].local_addr()).await;
    a.subscribe("order", None).await;
    b.subscribe("order", None).await;
    for n in 0..100u64 {
        let hub = &hubs[(n % 2) as usize];
        assert!(publish(hub.local_addr(), "order", json!(n)).await.is_some());
    }
    let seen_a = a.messages(100).await;
    let seen_b = b.messages(100).await;
    assert_eq!(seen_a, seen_b, "both nodes deliver the same sequence");
    let data: Vec<u64> = seen_a.iter().map(|(_, d)| d.as_u64().unwrap()).collect();
    assert_eq!(data, (0..100).collect::<Vec<_>>(), "in publish order, once");
    let offsets: Vec<u64> = seen_a.iter().map(|(o, _)| *o).collect();
    assert!(strictly_increasing(&offsets), "{offsets:?}");
}

/// A resume from every offset still in history, on the node that did not publish, gets
/// exactly what came after it and then the live stream, with no duplicate at the seam.
async fn resume_from_any_offset_in_history_without_duplicate(kind: Kind) {
    let brokers = Brokers::new(kind, "resume", long()).await;
    let hubs = brokers.hubs(2).await;
    let broker = brokers.node();
    let c = channel("resume");
    let mut offsets = Vec::new();
    for n in 0..20 {
        offsets.push(broker.publish(&c, raw(n)).await.unwrap().0);
    }
    let mut top = *offsets.last().unwrap();
    let starts: Vec<u64> = std::iter::once(0).chain(offsets).collect();
    for (i, since) in starts.into_iter().enumerate() {
        let mut client = Client::connect(hubs[1].local_addr()).await;
        let subscribed = client.subscribe("resume", Some(since)).await;
        assert_eq!(subscribed["recovered"], true, "since {since}: {subscribed}");
        assert_eq!(subscribed["offset"], top);
        // The first 20 in order, then the live ones earlier rounds added.
        let expected: Vec<u64> = (i as u64..20).chain(1000..1000 + i as u64).collect();
        let replayed = client.messages(expected.len()).await;
        let data: Vec<u64> = replayed.iter().map(|(_, d)| d.as_u64().unwrap()).collect();
        assert_eq!(data, expected, "since {since}");
        // The live stream follows the replay without repeating its end.
        let live = broker.publish(&c, raw(1000 + i as u64)).await.unwrap();
        let next = client.messages(1).await;
        assert_eq!(
            next[0].0, live.0,
            "since {since}: the next frame is the new one"
        );
        top = live.0;
    }
}

/// A resume from before what history keeps is answered `recovered: false`.
async fn recovered_false_past_history(kind: Kind) {
    let brokers = Brokers::new(kind, "past", history(5, Duration::from_secs(60))).await;
    let hubs = brokers.hubs(1).await;
    let broker = brokers.node();
    let c = channel("past");
    let first = broker.publish(&c, raw(0)).await.unwrap();
    for n in 1..20 {
        broker.publish(&c, raw(n)).await.unwrap();
    }
    let mut client = Client::connect(hubs[0].local_addr()).await;
    let subscribed = client.subscribe("past", Some(first.0)).await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    let data: Vec<u64> = client
        .messages(5)
        .await
        .iter()
        .map(|(_, d)| d.as_u64().unwrap())
        .collect();
    assert_eq!(
        data,
        (15..20).collect::<Vec<_>>(),
        "what is left is still sent"
    );
    let mut client = Client::connect(hubs[0].local_addr()).await;
    let subscribed = client.subscribe("past-other", Some(first.0)).await;
    assert_eq!(
        subscribed["recovered"], false,
        "an offset of a log that never existed vouches for nothing: {subscribed}"
    );
}

/// History keeps the newest `size` messages and none older than `ttl`.
async fn trimming_by_size_and_age(kind: Kind) {
    let brokers = Brokers::new(kind, "trim", history(5, Duration::from_millis(400))).await;
    let broker = brokers.node();
    let c = channel("trim");
    for n in 0..12 {
        broker.publish(&c, raw(n)).await.unwrap();
    }
    let h = broker.history(&c, Some(Offset(0))).await.unwrap();
    let data: Vec<&str> = h.messages.iter().map(|p| p.data.get()).collect();
    assert_eq!(data, ["7", "8", "9", "10", "11"], "the newest 5");
    assert!(!h.recovered);
    let top = h.top;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let h = broker.history(&c, Some(Offset(top.0 - 2))).await.unwrap();
    assert!(h.messages.is_empty(), "everything expired: {h:?}");
    assert!(!h.recovered, "what expired cannot be vouched for");
}

/// Whatever the live feed loses (here: a node whose feed holds a single event, flooded),
/// the node refills from history: the subscriber gets every message once, in order.
async fn gap_refill_after_the_live_feed_is_cut(kind: Kind) {
    let tiny = FeedLimit {
        events: NonZeroUsize::new(1).unwrap(),
        bytes: NonZeroUsize::new(1024 * 1024).unwrap(),
        per_channel: NonZeroUsize::new(2).unwrap(),
    };
    let brokers = Brokers::with(kind, "cut", long(), tiny).await;
    let hubs = brokers.hubs(1).await;
    let mut client = Client::connect(hubs[0].local_addr()).await;
    client.subscribe("cut", None).await;
    let broker = brokers.node();
    let c = channel("cut");
    let sent = join_all((0..500).map(|n| broker.publish(&c, raw(n)))).await;
    assert!(sent.iter().all(Result::is_ok));
    let data: Vec<u64> = client
        .messages(500)
        .await
        .iter()
        .map(|(_, d)| d.as_u64().unwrap())
        .collect();
    assert_eq!(data, (0..500).collect::<Vec<_>>());
}

/// Two nodes publishing to one channel at once: every offset distinct, each node's
/// publishes numbered in the order it made them, subscribers see one sequence.
async fn two_publishers_racing_on_one_channel(kind: Kind) {
    let brokers = Brokers::new(kind, "race", long()).await;
    let hubs = brokers.hubs(2).await;
    let mut client = Client::connect(hubs[0].local_addr()).await;
    client.subscribe("race", None).await;
    let (one, two) = (brokers.node(), brokers.node());
    let c = channel("race");
    let (a, b) = tokio::join!(
        join_all((0..200).map(|n| one.publish(&c, raw(n)))),
        join_all((1000..1200).map(|n| two.publish(&c, raw(n)))),
    );
    let a: Vec<u64> = a.into_iter().map(|o| o.unwrap().0).collect();
    let b: Vec<u64> = b.into_iter().map(|o| o.unwrap().0).collect();
    assert!(strictly_increasing(&a) && strictly_increasing(&b));
    let all: HashSet<u64> = a.iter().chain(&b).copied().collect();
    assert_eq!(all.len(), 400, "no offset handed out twice");
    let seen = client.messages(400).await;
    let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
    assert!(strictly_increasing(&offsets));
    let mut expected: Vec<u64> = all.into_iter().collect();
    expected.sort_unstable();
    assert_eq!(offsets, expected);
}

/// 10 000 channels, one message each: each has its own offset and history, and a node
/// subscribed to a hundred of them gets theirs live.
async fn ten_thousand_channels(kind: Kind) {
    let brokers = Brokers::new(kind, "many", long()).await;
    let hubs = brokers.hubs(1).await;
    let mut client = Client::connect(hubs[0].local_addr()).await;
    for i in 0..100 {
        client.subscribe(&format!("many-{i}"), None).await;
    }
    let broker = brokers.node();
    let names: Vec<ChannelName> = (0..10_000).map(|i| channel(&format!("many-{i}"))).collect();
    for chunk in names.chunks(1000) {
        let sent = join_all(chunk.iter().map(|c| broker.publish(c, raw(7)))).await;
        assert!(sent.iter().all(Result::is_ok));
    }
    for c in names.iter().step_by(97) {
        let h = broker.history(c, Some(Offset(0))).await.unwrap();
        assert!(h.recovered, "{c}");
        assert_eq!(h.messages.len(), 1, "{c}");
        assert_eq!(h.messages[0].data.get(), "7");
    }
    let mut live = HashSet::new();
    while live.len() < 100 {
        let frame = client.next().await;
        assert_eq!(frame["type"], "message");
        assert!(live.insert(frame["channel"].as_str().unwrap().to_owned()));
    }
}

/// Messages at the largest size a hub accepts go through publish, the live feed and
/// history intact.
async fn large_payloads(kind: Kind) {
    let brokers = Brokers::new(kind, "large", long()).await;
    let hubs = brokers.hubs(2).await;
    let mut live = Client::connect(hubs[1].local_addr()).await;
    live.subscribe("large", None).await;
    let big = "x".repeat(1024 * 1024 - 64);
    for _ in 0..3 {
        assert!(publish(hubs[0].local_addr(), "large", json!(big))
            .await
            .is_some());
    }
    for (_, data) in live.messages(3).await {
        assert_eq!(data.as_str().map(str::len), Some(big.len()));
    }
    let mut resumed = Client::connect(hubs[1].local_addr()).await;
    let subscribed = resumed.subscribe("large", Some(0)).await;
    assert_eq!(subscribed["recovered"], true);
    for (_, data) in resumed.messages(3).await {
        assert_eq!(data.as_str(), Some(big.as_str()));
    }
}

/// A broker that can be cut off and restarted: a private server of the test's own.
trait Restartable {
    fn brokers(&self, kind: Kind, test: &str, history: HistoryPolicy) -> Brokers;
    /// Cuts every node's live feed without losing the broker's state.
    fn cut_feeds(&self);
    async fn restart_empty(&mut self);
}

impl Restartable for RedisServer {
    fn brokers(&self, kind: Kind, test: &str, history: HistoryPolicy) -> Brokers {
        Brokers::at(kind, test, history, FeedLimit::DEFAULT, self.url(), None)
    }
    fn cut_feeds(&self) {
        self.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    }
    async fn restart_empty(&mut self) {
        self.restart().await;
    }
}

/// A private NATS with a relay in front of the hubs: NATS 2.9 cannot drop a client, so a
/// cut of the relay is the cut of every node's connection (feed and all) while the broker
/// and the test's own publishing connection stay up.
struct NatsRig {
    server: NatsServer,
    relay: Relay,
}

impl NatsRig {
    async fn start() -> Self {
        let server = NatsServer::start().await;
        let relay = Relay::start(server.port).await;
        Self { server, relay }
    }
}

impl Restartable for NatsRig {
    fn brokers(&self, kind: Kind, test: &str, history: HistoryPolicy) -> Brokers {
        let hubs = Some(self.relay.url());
        Brokers::at(
            kind,
            test,
            history,
            FeedLimit::DEFAULT,
            self.server.url(),
            hubs,
        )
    }
    fn cut_feeds(&self) {
        self.relay.cut();
    }
    async fn restart_empty(&mut self) {
        self.server.restart_empty().await;
    }
}

/// The live feed is cut (the connection killed at the broker) while messages are
/// published: the nodes reconnect and refill the gap from history.
async fn feed_cut_at_the_broker_is_refilled(kind: Kind, server: &mut impl Restartable) {
    let brokers = server.brokers(kind, "killfeed", long());
    let hubs = brokers.hubs(2).await;
    let mut client = Client::connect(hubs[1].local_addr()).await;
    client.subscribe("killfeed", None).await;
    let broker = brokers.node();
    let c = channel("killfeed");
    for n in 0..300u64 {
        if n % 100 == 50 {
            server.cut_feeds();
        }
        broker.publish(&c, raw(n)).await.unwrap();
    }
    let data: Vec<u64> = client
        .messages(300)
        .await
        .iter()
        .map(|(_, d)| d.as_u64().unwrap())
        .collect();
    assert_eq!(data, (0..300).collect::<Vec<_>>());
    let (_, metrics) = http(hubs[1].local_addr(), "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains(r#"tether_hub_broker_errors_total{op="feed"}"#),
        "the cut reached the node's feed: {metrics}"
    );
}

/// The broker restarts empty while two nodes publish: publishes in the outage fail fast
/// with an error (never hang), the nodes serve again once it is back, the subscriber sees
/// no duplicate and no reordering, gets everything acknowledged after the restart, and a
/// resume from before the restart is told `recovered: false` (a new epoch).
async fn broker_restart_under_load(kind: Kind, server: &mut impl Restartable) {
    let brokers = server.brokers(kind, "restart", long());
    let hubs = brokers.hubs(2).await;
    let mut client = Client::connect(hubs[1].local_addr()).await;
    client.subscribe("restart", None).await;
    let mut before = Vec::new();
    for n in 0..50u64 {
        before.push(
            publish(hubs[0].local_addr(), "restart", json!(n))
                .await
                .unwrap(),
        );
    }
    server.restart_empty().await;
    // Publish until the nodes are back; each attempt must be answered within seconds.
    let mut after = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut n = 1000u64;
    while after.len() < 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hubs never came back"
        );
        let hub = hubs[(n % 2) as usize].local_addr();
        let answer =
            tokio::time::timeout(Duration::from_secs(8), publish(hub, "restart", json!(n)))
                .await
                .expect("a publish during an outage fails fast, never hangs");
        if answer.is_some() {
            after.push(n);
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n += 1;
    }
    // Read until the last acknowledged message. The log the subscriber was reading is gone,
    // so its node may close it with 1013 (what it was owed is no longer in history); it then
    // resumes from the last offset it saw, as a client does, and is told `recovered: false`.
    let last = *after.last().unwrap();
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut closed = 0;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), client.ws.next())
            .await
            .expect("the hub answered within 10 s");
        let frame = match frame {
            Some(Ok(Message::Text(text))) => {
                serde_json::from_str::<serde_json::Value>(&text).unwrap()
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(Some(close)))) => {
                assert_eq!(u16::from(close.code), 1013, "{close:?}");
                closed += 1;
                assert!(closed <= 3, "closed again and again");
                let since = seen.last().map_or(*before.last().unwrap(), |(o, _)| *o);
                client = Client::connect(hubs[1].local_addr()).await;
                let subscribed = client.subscribe("restart", Some(since)).await;
                assert_eq!(
                    subscribed["recovered"], false,
                    "the log was lost: {subscribed}"
                );
                continue;
            }
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(frame["type"], "message", "{frame}");
        let data = frame["data"].as_u64().unwrap();
        seen.push((frame["offset"].as_u64().unwrap(), data));
        if data == last {
            break;
        }
    }
    let offsets: Vec<u64> = seen.iter().map(|(o, _)| *o).collect();
    assert!(strictly_increasing(&offsets), "no duplicate, no reordering");
    let got: HashSet<u64> = seen.iter().map(|(_, d)| *d).collect();
    assert!(
        after.iter().all(|n| got.contains(n)),
        "everything acknowledged after the restart arrived"
    );
    let mut resumed = Client::connect(hubs[0].local_addr()).await;
    let subscribed = resumed
        .subscribe("restart", Some(*before.last().unwrap()))
        .await;
    assert_eq!(
        subscribed["recovered"], false,
        "the log was lost: {subscribed}"
    );
}

/// Generates one `#[tokio::test]` per property for a broker.
macro_rules! conformance {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ordering_per_channel_across_two_nodes() {
                super::ordering_per_channel_across_two_nodes($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn resume_from_any_offset_in_history_without_duplicate() {
                super::resume_from_any_offset_in_history_without_duplicate($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn recovered_false_past_history() {
                super::recovered_false_past_history($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn trimming_by_size_and_age() {
                super::trimming_by_size_and_age($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn gap_refill_after_the_live_feed_is_cut() {
                super::gap_refill_after_the_live_feed_is_cut($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_publishers_racing_on_one_channel() {
                super::two_publishers_racing_on_one_channel($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ten_thousand_channels() {
                super::ten_thousand_channels($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn large_payloads() {
                super::large_payloads($kind).await
            }
        }
    };
}

/// The properties that need a broker the test may cut and restart.
macro_rules! conformance_restartable {
    ($module:ident, $kind:expr, $server:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn feed_cut_at_the_broker_is_refilled() {
                let mut server = $server;
                super::feed_cut_at_the_broker_is_refilled($kind, &mut server).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn broker_restart_under_load() {
                let mut server = $server;
                super::broker_restart_under_load($kind, &mut server).await
            }
        }
    };
}

conformance!(memory, Kind::Memory);
conformance!(redis, Kind::Redis);
conformance!(nats, Kind::Nats);
conformance!(redis_tls, Kind::RedisTls);
// The memory broker lives and dies with its process: it has no restart to survive.
conformance_restartable!(redis_private, Kind::Redis, RedisServer::start().await);
conformance_restartable!(nats_private, Kind::Nats, NatsRig::start().await);
