//! A node's broker state on `/health` and in metrics, the same for every broker: a hub
//! whose broker is down starts anyway, answers `/health` 503 with the reason and refuses
//! publishes fast, and serves again once the broker is back, without a restart. (NATS has
//! the same story in cluster_nats.rs.)

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use tether_hub::HistoryPolicy;

fn history() -> HistoryPolicy {
    HistoryPolicy {
        size: 100,
        ttl: Duration::from_secs(60),
    }
}

async fn health(addr: std::net::SocketAddr) -> (u16, Value) {
    let (status, body) = http(addr, "GET", "/health", None, None).await;
    (status, serde_json::from_str(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hub_is_ready_at_once_and_says_its_broker_is_up() {
    let broker = tether_hub::broker_from_url("memory").unwrap();
    let hub = tether_hub::serve(config("m"), broker, None).await.unwrap();
    let (status, body) = health(hub.local_addr()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["broker"]["up"], true, "{body}");
    assert_eq!(body["broker"]["reason"], Value::Null, "{body}");
    let (_, metrics) = http(hub.local_addr(), "GET", "/metrics", None, None).await;
    assert!(metrics.contains("tether_hub_broker_up 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_started_before_its_redis_is_not_ready_until_redis_comes() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    redis.kill();
    let hubs = redis_hubs(1, &url, &unique_prefix("late"), history()).await;
    let addr = hubs[0].local_addr();
    let (status, body) = health(addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "broker_unavailable", "{body}");
    assert_eq!(body["broker"]["kind"], "redis", "{body}");
    assert!(body["broker"]["reason"].is_string(), "{body}");
    let started = std::time::Instant::now();
    let (status, _) = http(
        addr,
        "POST",
        "/api/publish",
        Some(r#"{"channel":"l","data":1}"#),
        None,
    )
    .await;
    assert_eq!(status, 503);
    assert!(started.elapsed() < Duration::from_secs(4), "refused fast");
    let (_, metrics) = http(addr, "GET", "/metrics", None, None).await;
    assert!(metrics.contains("tether_hub_broker_up 0"), "{metrics}");
    assert!(
        metrics.contains(r#"tether_hub_broker_failures_total{kind="unavailable"}"#),
        "{metrics}"
    );
    redis.restart().await;
    let ready = eventually(Duration::from_secs(15), || async {
        health(addr).await.0 == 200
    })
    .await;
    assert!(ready, "/health turns 200 once Redis is reachable");
    let mut client = Client::connect(addr).await;
    client.subscribe("l", None).await;
    let offset = publish(addr, "l", json!("after")).await.unwrap();
    assert_eq!(client.messages(1).await, vec![(offset, json!("after"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_lost_while_serving_turns_health_503_and_back() {
    let mut redis = RedisServer::start().await;
    let hubs = redis_hubs(1, &redis.url(), &unique_prefix("lost"), history()).await;
    let addr = hubs[0].local_addr();
    assert_eq!(health(addr).await.0, 200);
    redis.kill();
    let down = eventually(Duration::from_secs(10), || async {
        health(addr).await.0 == 503
    })
    .await;
    assert!(
        down,
        "/health notices the broker is gone without any traffic"
    );
    redis.restart().await;
    let up = eventually(Duration::from_secs(15), || async {
        health(addr).await.0 == 200
    })
    .await;
    assert!(up, "and that it is back");
}
