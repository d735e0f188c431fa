//! The hub's protocol against real sockets, one node (or three) on the memory broker.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::*;
use tether_hub::{HistoryPolicy, HubConfig};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

async fn memory_hub(config: HubConfig) -> tether_hub::HubHandle {
    let broker = tether_hub::broker_from_url("memory").unwrap();
    tether_hub::serve(config, broker, None).await.unwrap()
}

#[tokio::test]
async fn welcome_names_the_node() {
    let hub = memory_hub(config("alpha")).await;
    let client = Client::connect(hub.local_addr()).await;
    assert_eq!(client.node, "alpha");
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_survives() {
    let hub = memory_hub(HubConfig {
        max_message_size: 1024,
        ..config("h")
    })
    .await;
    let mut client = Client::connect(hub.local_addr()).await;
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "bad_json"),
        (json!({"type": "dance"}).to_string(), "unknown_type"),
        (json!({"type": "subscribe"}).to_string(), "bad_frame"),
        (
            json!({"type": "subscribe", "channel": "no spaces"}).to_string(),
            "bad_channel",
        ),
        (
            json!({"type": "publish", "channel": "c", "data": "x".repeat(2000)}).to_string(),
            "too_large",
        ),
        (
            json!({"type": "unsubscribe", "channel": "never"}).to_string(),
            "not_subscribed",
        ),
    ];
    for (frame, code) in cases {
        client.send_raw(&frame).await;
        let answer = client.next().await;
        assert_eq!(answer["type"], "error", "{frame} -> {answer}");
        assert_eq!(answer["code"], code, "{frame} -> {answer}");
    }
    futures_util::SinkExt::send(&mut client.ws, Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    assert_eq!(client.next().await["code"], "bad_frame");
    // Still a working connection.
    client.subscribe("c", None).await;
    client
        .send(json!({"type": "publish", "channel": "c", "data": {"n": 1}, "id": 7}))
        .await;
    let mut frames = [client.next().await, client.next().await];
    frames.sort_by_key(|f| f["type"].as_str().unwrap_or("").to_owned());
    assert_eq!(frames[0]["type"], "message");
    assert_eq!(frames[0]["data"], json!({"n": 1}));
    assert_eq!(frames[1]["type"], "published");
    assert_eq!(frames[1]["id"], 7);
    assert_eq!(frames[0]["offset"], frames[1]["offset"]);
}

#[tokio::test]
async fn flooding_client_is_closed_with_1008_and_the_node_keeps_serving() {
    let hub = memory_hub(HubConfig {
        client_rate: 10,
        client_burst: 20,
        ..config("h")
    })
    .await;
    let mut flooder = Client::connect(hub.local_addr()).await;
    for _ in 0..200 {
        if futures_util::SinkExt::send(&mut flooder.ws, Message::text(r#"{"type":"nope"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = flooder.ws.next().await {
            match frame {
                Ok(Message::Close(close)) => return close,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Policy));
    let mut other = Client::connect(hub.local_addr()).await;
    other.subscribe("still-up", None).await;
}

/// The session reads its client only when the socket signals input (`wake_gate`); a
/// session woken over and over to write must still notice and answer what the client sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_frames_are_answered_while_the_session_is_busy_writing() {
    let hub = memory_hub(config("h")).await;
    let addr = hub.local_addr();
    let mut busy = Client::connect(addr).await;
    busy.subscribe("stream", None).await;
    // A steady stream (one message every 2 ms) rather than a flood: the other tests of this
    // file share the machine.
    let streaming = tokio::spawn(async move {
        let mut publisher = Client::connect(addr).await;
        for n in 0..2_500 {
            publisher
                .send(json!({"type": "publish", "channel": "stream", "data": {"n": n}}))
                .await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        publisher
    });
    let (mut messages, mut answered) = (0, 0);
    for k in 0..20 {
        busy.send(json!({"type": "subscribe", "channel": format!("side-{k}")}))
            .await;
        // Messages keep coming in between; the answer must be among them.
        loop {
            let frame = busy.next().await;
            match frame["type"].as_str() {
                Some("message") => messages += 1,
                Some("subscribed") => {
                    answered += 1;
                    break;
                }
                _ => panic!("unexpected frame {frame}"),
            }
        }
    }
    assert_eq!(answered, 20);
    // The answers came while the channel was being written to.
    assert!(messages > 0, "no message arrived between the answers");
    streaming.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_is_dropped_and_others_get_every_message() {
    let hub = memory_hub(HubConfig {
        client_queue: 8,
        ping_timeout: Duration::from_millis(500),
        ..config("h")
    })
    .await;
    let addr = hub.local_addr();
    let mut stalled = Client::connect(addr).await;
    stalled.subscribe("firehose", None).await;
    let mut reader = Client::connect(addr).await;
    reader.subscribe("firehose", None).await;
    // The reader reports each message it gets, and the next one is published only after
    // that: its queue never holds more than one message however loaded the machine is, so
    // only the client that stopped reading can overflow its queue of 8.
    let (got, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        for _ in 0..300 {
            let frame = reader.next().await;
            if got.send(frame["data"]["n"].as_u64()).is_err() {
                break;
            }
        }
    });
    // 300 × 50 KB is far more than the socket buffers hold for a client that never reads.
    let blob = "x".repeat(50_000);
    for n in 0..300u64 {
        publish(addr, "firehose", json!({"n": n, "blob": blob}))
            .await
            .unwrap();
        assert_eq!(
            arrivals.recv().await,
            Some(Some(n)),
            "the reader got message {n}"
        );
    }
    reading.await.unwrap();
    let dropped = eventually(Duration::from_secs(5), || async move {
        http(addr, "GET", "/metrics", None, None)
            .await
            .1
            .contains(r#"tether_hub_disconnects_total{reason="slow_consumer"} 1"#)
    })
    .await;
    assert!(
        dropped,
        "{}",
        http(addr, "GET", "/metrics", None, None).await.1
    );
    drop(stalled);
}

#[tokio::test]
async fn silent_client_is_dropped_after_the_ping_timeout() {
    let hub = memory_hub(HubConfig {
        ping_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_millis(200),
        ..config("h")
    })
    .await;
    let addr = hub.local_addr();
    // Never read again: tungstenite answers pings only while being read.
    let _silent = Client::connect(addr).await;
    let mut answering = Client::connect(addr).await;
    let metrics = || async move { http(addr, "GET", "/metrics", None, None).await.1 };
    assert!(metrics().await.contains("tether_hub_connections 2"));
    // The answering client reads (and so answers pings) through several ping rounds.
    let reader = tokio::spawn(async move {
        let read_all = async { while let Some(Ok(_)) = answering.ws.next().await {} };
        let _ = tokio::time::timeout(Duration::from_millis(1500), read_all).await;
        answering
    });
    let dropped = eventually(Duration::from_secs(5), || async move {
        metrics()
            .await
            .contains(r#"tether_hub_disconnects_total{reason="ping_timeout"} 1"#)
    })
    .await;
    assert!(dropped, "{}", metrics().await);
    let mut answering = reader.await.unwrap();
    answering.subscribe("alive", None).await;
    assert!(metrics().await.contains("tether_hub_connections 1"));
}

#[tokio::test]
async fn http_publish_reaches_subscribers_and_requires_the_token_when_set() {
    let hub = memory_hub(HubConfig {
        api_token: Some("s3cret".into()),
        ..config("h")
    })
    .await;
    let addr = hub.local_addr();
    let mut client = Client::connect(addr).await;
    client.subscribe("news", None).await;
    let body = json!({"channel": "news", "data": "hello"}).to_string();
    let (status, _) = http(addr, "POST", "/api/publish", Some(&body), None).await;
    assert_eq!(status, 401);
    let (status, _) = http(addr, "POST", "/api/publish", Some(&body), Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, answer) = http(addr, "POST", "/api/publish", Some(&body), Some("s3cret")).await;
    assert_eq!(status, 200, "{answer}");
    let offset = serde_json::from_str::<Value>(&answer).unwrap()["offset"]
        .as_u64()
        .unwrap();
    assert_eq!(client.messages(1).await, vec![(offset, json!("hello"))]);
    let (status, answer) = http(addr, "POST", "/api/publish", Some("{oops"), Some("s3cret")).await;
    assert_eq!(status, 400, "{answer}");
    let huge = json!({"channel": "news", "data": "x".repeat(70_000)}).to_string();
    let (status, answer) = http(addr, "POST", "/api/publish", Some(&huge), Some("s3cret")).await;
    assert_eq!(status, 413);
    assert!(answer.contains("too_large"), "{answer}");
    let bad_channel = json!({"channel": "a b", "data": 1}).to_string();
    let (status, answer) = http(
        addr,
        "POST",
        "/api/publish",
        Some(&bad_channel),
        Some("s3cret"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(answer.contains("bad_channel"), "{answer}");
}

#[tokio::test]
async fn history_endpoint_serves_what_resume_would_replay() {
    let hub = memory_hub(config("h")).await;
    let addr = hub.local_addr();
    let first = publish(addr, "log", json!(1)).await.unwrap();
    publish(addr, "log", json!(2)).await.unwrap();
    publish(addr, "log", json!(3)).await.unwrap();
    let (status, body) = http(
        addr,
        "GET",
        &format!("/api/history/log?since={first}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["recovered"], true);
    assert_eq!(body["offset"], first + 2);
    let data: Vec<Value> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(data, vec![json!(2), json!(3)]);
    let (status, _) = http(addr, "GET", "/api/history/bad%20name", None, None).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn health_and_metrics_are_served() {
    let hub = memory_hub(config("h")).await;
    let addr = hub.local_addr();
    let (status, body) = http(addr, "GET", "/health", None, None).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""node":"h""#), "{body}");
    publish(addr, "m", json!("x")).await.unwrap();
    let mut client = Client::connect(addr).await;
    // Offset 0 is "saw the channel empty"; nothing was trimmed since, so this resume is
    // complete.
    let subscribed = client.subscribe("m", Some(0)).await;
    assert_eq!(subscribed["recovered"], true);
    client.messages(1).await;
    let (_, text) = http(addr, "GET", "/metrics", None, None).await;
    for needle in [
        "tether_hub_connections 1",
        "tether_hub_subscriptions 1",
        r#"tether_hub_messages_in_total{source="http"} 1"#,
        "tether_hub_messages_out_total 1",
        r#"tether_hub_resumes_total{outcome="recovered"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn resume_with_since_replays_the_gap_then_continues_live_without_duplicates() {
    let hub = memory_hub(config("h")).await;
    let addr = hub.local_addr();
    let mut client = Client::connect(addr).await;
    client.subscribe("feed", None).await;
    publish(addr, "feed", json!(1)).await.unwrap();
    let seen = client.messages(1).await;
    drop(client);
    for n in 2..=4 {
        publish(addr, "feed", json!(n)).await.unwrap();
    }
    let mut client = Client::connect(addr).await;
    let subscribed = client.subscribe("feed", Some(seen[0].0)).await;
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(subscribed["offset"], seen[0].0 + 3);
    publish(addr, "feed", json!(5)).await.unwrap();
    let rest = client.messages(4).await;
    let data: Vec<Value> = rest.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(data, vec![json!(2), json!(3), json!(4), json!(5)]);
    let offsets: Vec<u64> = rest.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (seen[0].0 + 1..=seen[0].0 + 4).collect::<Vec<_>>());
}

#[tokio::test]
async fn recovered_is_false_when_history_was_trimmed() {
    let broker = tether_hub::broker_with(
        "memory",
        tether_hub::BrokerOptions {
            history: HistoryPolicy {
                size: 3,
                ttl: Duration::from_secs(60),
            }
            .into(),
            ..Default::default()
        },
    )
    .unwrap();
    let hub = tether_hub::serve(config("h"), broker, None).await.unwrap();
    let addr = hub.local_addr();
    let first = publish(addr, "t", json!(0)).await.unwrap();
    for n in 1..10 {
        publish(addr, "t", json!(n)).await.unwrap();
    }
    let mut client = Client::connect(addr).await;
    let subscribed = client.subscribe("t", Some(first)).await;
    assert_eq!(subscribed["recovered"], false);
    // What is left is still handed over, oldest first.
    let data: Vec<Value> = client
        .messages(3)
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(data, vec![json!(7), json!(8), json!(9)]);
}

/// A hub on the memory broker keeping `size` messages per channel.
async fn memory_hub_keeping(size: usize) -> tether_hub::HubHandle {
    let options = tether_hub::BrokerOptions {
        history: HistoryPolicy {
            size,
            ttl: Duration::from_secs(60),
        }
        .into(),
        ..Default::default()
    };
    let broker = tether_hub::broker_with("memory", options).unwrap();
    tether_hub::serve(config("h"), broker, None).await.unwrap()
}

#[tokio::test]
async fn resume_from_an_empty_channel_is_recovered_while_nothing_was_trimmed() {
    let hub = memory_hub_keeping(1000).await;
    let (subscribed, replayed) = resume_from_empty(hub.local_addr(), "empty").await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(replayed, vec![json!(1), json!(2), json!(3)]);
}

#[tokio::test]
async fn resume_from_an_empty_channel_is_not_recovered_once_trimmed() {
    let hub = memory_hub_keeping(2).await;
    let (subscribed, replayed) = resume_from_empty(hub.local_addr(), "empty").await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(replayed, vec![json!(2), json!(3)]);
}

#[tokio::test]
async fn three_hubs_sharing_one_memory_broker_act_as_one() {
    let broker = tether_hub::broker_from_url("memory").unwrap();
    let mut hubs = Vec::new();
    for name in ["a", "b", "c"] {
        hubs.push(
            tether_hub::serve(config(name), broker.clone(), None)
                .await
                .unwrap(),
        );
    }
    let mut clients = Vec::new();
    for hub in &hubs {
        let mut client = Client::connect(hub.local_addr()).await;
        client.subscribe("room", None).await;
        clients.push(client);
    }
    for (i, hub) in hubs.iter().enumerate() {
        publish(hub.local_addr(), "room", json!(i)).await.unwrap();
    }
    for client in &mut clients {
        let data: Vec<Value> = client
            .messages(3)
            .await
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(
            data,
            vec![json!(0), json!(1), json!(2)],
            "on {}",
            client.node
        );
    }
}

#[tokio::test]
async fn graceful_shutdown_closes_every_client_with_1012_within_the_window() {
    let hub = memory_hub(HubConfig {
        shutdown_window: Duration::from_millis(600),
        ..config("h")
    })
    .await;
    let addr = hub.local_addr();
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(Client::connect(addr).await);
    }
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(hub.shutdown());
    for client in &mut clients {
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(5), client.ws.next())
                .await
                .unwrap()
            {
                Some(Ok(Message::Close(Some(close)))) => break close.code,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(code, CloseCode::Restart);
    }
    shutdown.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(
        tether_testkit::ws_connect(addr, "/ws").await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn aborted_node_drops_clients_and_its_address_can_be_served_again() {
    let hub = memory_hub(config("first")).await;
    let addr = hub.local_addr();
    let mut client = Client::connect(addr).await;
    hub.abort();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match client.ws.next().await {
                Some(Ok(Message::Close(_))) => return false,
                Some(Ok(_)) => continue,
                _ => return true,
            }
        }
    })
    .await
    .unwrap();
    assert!(ended, "an abort sends no close frame");
    let again = memory_hub(HubConfig {
        listen: addr,
        ..config("second")
    })
    .await;
    assert_eq!(Client::connect(again.local_addr()).await.node, "second");
}

#[tokio::test]
async fn write_delay_spaces_writes_and_sends_what_gathered_together() {
    let delay = Duration::from_secs(1);
    let hub = memory_hub(HubConfig {
        write_delay: delay,
        ..config("h")
    })
    .await;
    let addr = hub.local_addr();
    let mut client = Client::connect(addr).await;
    // Control answers are never held: the subscribe is confirmed at once.
    client.subscribe("batched", None).await;
    let started = tokio::time::Instant::now();
    let mut arrivals = Vec::new();
    let mut data = Vec::new();
    publish(addr, "batched", json!({"n": 0})).await.unwrap();
    // The first message finds no recent write, so it goes out at once...
    data.push(client.messages(1).await.remove(0).1);
    arrivals.push(started.elapsed());
    // ...and the next ones, published right after, wait for the interval and come together.
    for n in 1..5 {
        publish(addr, "batched", json!({"n": n})).await.unwrap();
    }
    let all_published = started.elapsed();
    assert!(
        all_published < delay / 2,
        "publishing 5 messages took {all_published:?}; the test needs them inside one interval"
    );
    for _ in 1..5 {
        data.push(client.messages(1).await.remove(0).1);
        arrivals.push(started.elapsed());
    }
    assert_eq!(data, (0..5).map(|n| json!({"n": n})).collect::<Vec<_>>());
    assert!(
        arrivals[0] < delay / 2,
        "the first message was held: {arrivals:?}"
    );
    assert!(
        arrivals[1] >= arrivals[0] + delay - Duration::from_millis(50),
        "the second write came before the interval was up: {arrivals:?}"
    );
    assert!(
        arrivals[4] - arrivals[1] < delay / 2,
        "messages queued within one interval came apart: {arrivals:?}"
    );
}
