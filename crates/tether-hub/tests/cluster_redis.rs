//! Several hubs on loopback sharing a real Redis act as one: delivery across nodes, one
//! order per channel, and resume after a cut connection, a killed node, a Redis restart.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use tether_hub::HistoryPolicy;

fn history() -> HistoryPolicy {
    HistoryPolicy {
        size: 1000,
        ttl: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_published_on_one_node_reaches_subscribers_on_every_node() {
    let prefix = unique_prefix("fanout");
    let hubs = redis_hubs(3, SHARED_REDIS, &prefix, history()).await;
    let mut clients = Vec::new();
    for hub in &hubs {
        let mut client = Client::connect(hub.local_addr()).await;
        client.subscribe("news", None).await;
        clients.push(client);
    }
    let offset = publish(hubs[1].local_addr(), "news", json!({"headline": "hi"}))
        .await
        .unwrap();
    for client in &mut clients {
        assert_eq!(
            client.messages(1).await,
            vec![(offset, json!({"headline": "hi"}))],
            "on {}",
            client.node
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_delivers_a_channel_in_the_same_offset_order() {
    let prefix = unique_prefix("order");
    let hubs = redis_hubs(3, SHARED_REDIS, &prefix, history()).await;
    let mut clients = Vec::new();
    for hub in &hubs {
        let mut client = Client::connect(hub.local_addr()).await;
        client.subscribe("seq", None).await;
        clients.push(client);
    }
    // Publishers on all three nodes at once, racing each other.
    let mut publishers = Vec::new();
    for (p, hub) in hubs.iter().enumerate() {
        let addr = hub.local_addr();
        publishers.push(tokio::spawn(async move {
            for n in 0..30 {
                publish(addr, "seq", json!(format!("{p}-{n}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let first = clients[0].messages(90).await;
    let offsets: Vec<u64> = first.iter().map(|(o, _)| *o).collect();
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous offsets"
    );
    for client in &mut clients[1..] {
        assert_eq!(
            client.messages(90).await,
            first,
            "node {} saw another order",
            client.node
        );
    }
}

/// Publishes `0..n` over HTTP, round-robin over `addrs`, every `pause`; returns what was
/// accepted (a publish refused while the broker is down is simply not part of the stream).
async fn publish_stream(
    addrs: Vec<std::net::SocketAddr>,
    channel: &str,
    n: usize,
    pause: Duration,
) -> Vec<Value> {
    let mut accepted = Vec::new();
    for i in 0..n {
        let addr = addrs[i % addrs.len()];
        if publish(addr, channel, json!(i)).await.is_some() {
            accepted.push(json!(i));
        }
        tokio::time::sleep(pause).await;
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_the_connection_is_cut_delivers_every_message_once() {
    let prefix = unique_prefix("cut");
    let hubs = redis_hubs(3, SHARED_REDIS, &prefix, history()).await;
    let addrs: Vec<_> = hubs.iter().map(|h| h.local_addr()).collect();
    let client = ResumingClient::start(addrs.clone(), "cut");
    assert!(client.connected(1).await);
    let publisher = tokio::spawn(publish_stream(
        addrs.clone(),
        "cut",
        200,
        Duration::from_millis(5),
    ));
    for round in 2..=6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        client.cut.notify_one();
        assert!(client.connected(round).await, "reconnect {round}");
    }
    let accepted = publisher.await.unwrap();
    assert_eq!(accepted.len(), 200);
    assert!(
        received_all(&client.received, accepted.len()).await,
        "got {}",
        client.received.len()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_exactly_once_in_order(&client.received, &accepted);
    assert_eq!(client.received.not_recovered.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_node_killed_delivers_every_message_once() {
    let prefix = unique_prefix("kill");
    let hubs = redis_hubs(3, SHARED_REDIS, &prefix, history()).await;
    let addrs: Vec<_> = hubs.iter().map(|h| h.local_addr()).collect();
    // Every client starts on hub1, the node that will die.
    let clients: Vec<ResumingClient> = (0..5)
        .map(|_| ResumingClient::start(addrs.clone(), "k"))
        .collect();
    for client in &clients {
        assert!(client.connected(1).await);
    }
    let survivors = addrs[1..].to_vec();
    let publisher = tokio::spawn(publish_stream(
        survivors,
        "k",
        150,
        Duration::from_millis(5),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    hubs[0].abort();
    let accepted = publisher.await.unwrap();
    for client in &clients {
        assert!(client.connected(2).await, "moved to another node");
        assert!(
            received_all(&client.received, accepted.len()).await,
            "got {}",
            client.received.len()
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for client in &clients {
        assert_exactly_once_in_order(&client.received, &accepted);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_is_false_when_redis_history_was_trimmed() {
    let prefix = unique_prefix("trim");
    let small = HistoryPolicy {
        size: 5,
        ttl: Duration::from_secs(60),
    };
    let hubs = redis_hubs(2, SHARED_REDIS, &prefix, small).await;
    let first = publish(hubs[0].local_addr(), "t", json!(0)).await.unwrap();
    for n in 1..20 {
        publish(hubs[0].local_addr(), "t", json!(n)).await.unwrap();
    }
    let mut client = Client::connect(hubs[1].local_addr()).await;
    let subscribed = client.subscribe("t", Some(first)).await;
    assert_eq!(subscribed["recovered"], false);
    assert_eq!(subscribed["offset"], first + 19);
    let mut reaching = Client::connect(hubs[1].local_addr()).await;
    let subscribed = reaching.subscribe("t", Some(first + 15)).await;
    assert_eq!(subscribed["recovered"], true);
    let data: Vec<Value> = reaching
        .messages(4)
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(data, vec![json!(16), json!(17), json!(18), json!(19)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_an_empty_redis_channel_is_recovered_while_nothing_was_trimmed() {
    let hubs = redis_hubs(1, SHARED_REDIS, &unique_prefix("empty"), history()).await;
    let (subscribed, replayed) = resume_from_empty(hubs[0].local_addr(), "empty").await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(replayed, vec![json!(1), json!(2), json!(3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_an_empty_redis_channel_is_not_recovered_once_trimmed() {
    let small = HistoryPolicy {
        size: 2,
        ttl: Duration::from_secs(60),
    };
    let hubs = redis_hubs(1, SHARED_REDIS, &unique_prefix("empty-trim"), small).await;
    let (subscribed, replayed) = resume_from_empty(hubs[0].local_addr(), "empty").await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(replayed, vec![json!(2), json!(3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_survived_and_every_accepted_message_arrives_once() {
    let mut redis = RedisServer::start().await;
    let prefix = unique_prefix("restart");
    let hubs = redis_hubs(2, &redis.url(), &prefix, history()).await;
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
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().await;
    let accepted = publisher.await.unwrap();
    assert!(
        accepted.len() < 150,
        "some publishes must have met the dead Redis"
    );
    assert!(
        accepted.len() > 50,
        "publishing resumed after the restart: {}",
        accepted.len()
    );
    for client in &clients {
        assert!(
            received_all(&client.received, accepted.len()).await,
            "got {} of {}",
            client.received.len(),
            accepted.len()
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for client in &clients {
        assert_exactly_once_in_order(&client.received, &accepted);
    }
    let (_, metrics) = http(addrs[0], "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains(r#"tether_hub_broker_errors_total{op="feed"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_lost_by_a_cut_pubsub_link_are_refilled_from_history() {
    let redis = RedisServer::start().await;
    let prefix = unique_prefix("pubsubcut");
    let hubs = redis_hubs(2, &redis.url(), &prefix, history()).await;
    let addrs: Vec<_> = hubs.iter().map(|h| h.local_addr()).collect();
    let client = ResumingClient::start(vec![addrs[1]], "p");
    assert!(client.connected(1).await);
    // Publish through hub1 only while hub2's pub/sub connections keep being killed: hub2
    // misses live messages and must fetch them from the stream.
    let publisher = tokio::spawn(publish_stream(
        vec![addrs[0]],
        "p",
        150,
        Duration::from_millis(5),
    ));
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    }
    let accepted = publisher.await.unwrap();
    assert_eq!(accepted.len(), 150);
    assert!(
        received_all(&client.received, 150).await,
        "got {}",
        client.received.len()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_exactly_once_in_order(&client.received, &accepted);
    assert_eq!(
        client.received.connects.load(Ordering::SeqCst),
        1,
        "the client itself never reconnected"
    );
    let (_, metrics) = http(addrs[1], "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains(r#"tether_hub_broker_errors_total{op="feed"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_messages_of_a_channel_lost_by_a_cut_pubsub_link_are_refilled() {
    let redis = RedisServer::start().await;
    let hubs = redis_hubs(2, &redis.url(), &unique_prefix("firstcut"), history()).await;
    let mut client = Client::connect(hubs[1].local_addr()).await;
    let subscribed = client.subscribe("q", None).await;
    assert_eq!(
        subscribed["offset"], 0,
        "the channel starts empty: {subscribed}"
    );
    // hub2 is away from pub/sub (its feed reconnects after a backoff of at least 50 ms)
    // while the channel gets its first messages: they reach hub2 only through history.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    for n in 1..=3 {
        publish(hubs[0].local_addr(), "q", json!(n)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(hubs[0].local_addr(), "q", json!(4)).await.unwrap();
    let data: Vec<Value> = client
        .messages(4)
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(data, vec![json!(1), json!(2), json!(3), json!(4)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listens_in_redis_only_to_channels_with_local_subscribers() {
    let prefix = unique_prefix("numsub");
    let hubs = redis_hubs(2, SHARED_REDIS, &prefix, history()).await;
    let numsub = |channel: &str| {
        let live = format!("{prefix}:live:{channel}");
        let out = std::process::Command::new("redis-cli")
            .args(["-p", "6379", "PUBSUB", "NUMSUB", &live])
            .output()
            .expect("redis-cli must be installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .nth(1)
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    };
    assert_eq!(numsub("wanted"), 0);
    let mut first = Client::connect(hubs[0].local_addr()).await;
    first.subscribe("wanted", None).await;
    let mut second = Client::connect(hubs[0].local_addr()).await;
    second.subscribe("wanted", None).await;
    assert_eq!(
        numsub("wanted"),
        1,
        "two local subscribers, one Redis subscription"
    );
    assert_eq!(numsub("unwanted"), 0);
    first
        .send(json!({"type": "unsubscribe", "channel": "wanted"}))
        .await;
    assert_eq!(first.next().await["type"], "unsubscribed");
    assert_eq!(numsub("wanted"), 1, "one local subscriber left");
    drop(second);
    let gone = eventually(Duration::from_secs(5), || async { numsub("wanted") == 0 }).await;
    assert!(
        gone,
        "the node still listens to a channel nobody on it wants"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_subscribe_and_publish_are_refused_and_the_connection_survives() {
    let mut redis = RedisServer::start().await;
    let prefix = unique_prefix("down");
    let hubs = redis_hubs(1, &redis.url(), &prefix, history()).await;
    let addr = hubs[0].local_addr();
    let mut client = Client::connect(addr).await;
    redis.kill();
    client
        .send(json!({"type": "subscribe", "channel": "d"}))
        .await;
    let answer = client.next().await;
    assert_eq!(answer["code"], "broker_unavailable", "{answer}");
    assert_eq!(answer["channel"], "d");
    client
        .send(json!({"type": "publish", "channel": "d", "data": 1, "id": "p1"}))
        .await;
    let answer = client.next().await;
    assert_eq!(answer["code"], "broker_unavailable", "{answer}");
    assert_eq!(answer["id"], "p1");
    let (status, _) = http(
        addr,
        "POST",
        "/api/publish",
        Some(r#"{"channel":"d","data":1}"#),
        None,
    )
    .await;
    assert_eq!(status, 503);
    redis.restart().await;
    let back = eventually(Duration::from_secs(10), || async {
        publish(addr, "d", json!("probe")).await.is_some()
    })
    .await;
    assert!(back, "publishing works again once Redis is back");
    let subscribed = client.subscribe("d", None).await;
    let offset = publish(addr, "d", json!("after")).await.unwrap();
    assert!(offset > subscribed["offset"].as_u64().unwrap());
    assert_eq!(client.messages(1).await, vec![(offset, json!("after"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_longer_than_a_page_arrives_whole_once_and_in_order() {
    let hubs = redis_hubs(2, SHARED_REDIS, &unique_prefix("pages"), history()).await;
    // More small messages than one page holds (256), so the replay crosses pages by count.
    let mut publisher = Client::connect(hubs[0].local_addr()).await;
    for n in 0..600 {
        publisher
            .send(json!({"type": "publish", "channel": "long", "data": n, "id": n}))
            .await;
        if n % 100 == 99 {
            // Stay under the client frame rate limit.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    let mut answered = 0;
    while answered < 600 {
        if publisher.next().await["type"] == "published" {
            answered += 1;
        }
    }
    let mut client = Client::connect(hubs[1].local_addr()).await;
    let subscribed = client.subscribe("long", Some(0)).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let replayed = client
        .replay_until(subscribed["offset"].as_u64().unwrap())
        .await;
    assert_eq!(replayed, (0..600).map(|n| json!(n)).collect::<Vec<_>>());
    let live = publish(hubs[0].local_addr(), "long", json!("live"))
        .await
        .unwrap();
    assert_eq!(client.messages(1).await, vec![(live, json!("live"))]);
}
