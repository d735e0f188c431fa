//! Fan-out accounting against a tiny in-test hub that speaks tether's frames. The fake exists
//! only to test the generator's own bookkeeping (a real hub is measured by bench/compare.sh).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tether_bench::fanout::{self, FanoutArgs, Flavour};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

/// Fake hub nodes sharing one in-process "broker". When `drop_seq` is set, the first
/// subscriber to see that message does not get it, once.
struct FakeHub {
    urls: Vec<String>,
}

async fn fake_hubs(nodes: usize, drop_seq: Option<u64>) -> FakeHub {
    let (broker, _) = broadcast::channel::<(u64, Value)>(4096);
    let dropped_once = Arc::new(AtomicBool::new(drop_seq.is_none()));
    let offsets = Arc::new(AtomicU64::new(0));
    let mut urls = Vec::new();
    for _ in 0..nodes {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("ws://{}", listener.local_addr().unwrap()));
        let (broker, dropped_once, offsets) =
            (broker.clone(), dropped_once.clone(), offsets.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (broker, dropped_once, offsets) =
                    (broker.clone(), dropped_once.clone(), offsets.clone());
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    serve(ws, broker, dropped_once, offsets, drop_seq).await;
                });
            }
        });
    }
    FakeHub { urls }
}

async fn serve(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    broker: broadcast::Sender<(u64, Value)>,
    dropped_once: Arc<AtomicBool>,
    offsets: Arc<AtomicU64>,
    drop_seq: Option<u64>,
) {
    let mut feed = broker.subscribe();
    let mut subscribed = false;
    ws.send(Message::text(
        json!({"type": "welcome", "node": "fake"}).to_string(),
    ))
    .await
    .ok();
    loop {
        tokio::select! {
            frame = ws.next() => {
                let Some(Ok(Message::Text(t))) = frame else { return };
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("subscribe") => {
                        subscribed = true;
                        let reply = json!({"type": "subscribed", "channel": v["channel"], "offset": 0, "recovered": true});
                        ws.send(Message::text(reply.to_string())).await.ok();
                    }
                    Some("publish") => {
                        let offset = offsets.fetch_add(1, Ordering::SeqCst) + 1;
                        let _ = broker.send((offset, v));
                    }
                    _ => {}
                }
            }
            published = feed.recv() => {
                let Ok((offset, v)) = published else { return };
                if !subscribed {
                    continue;
                }
                let seq = v["data"]["seq"].as_u64();
                if seq.is_some() && seq == drop_seq && !dropped_once.swap(true, Ordering::SeqCst) {
                    continue;
                }
                let frame = json!({"type": "message", "channel": v["channel"], "offset": offset, "data": v["data"]});
                if ws.send(Message::text(frame.to_string())).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn args(hub: &FakeHub, subscribers: usize) -> FanoutArgs {
    FanoutArgs {
        hubs: hub.urls.iter().map(|u| u.parse().unwrap()).collect(),
        flavour: Flavour::Tether,
        subscribers,
        channel: None,
        rate: 50.0,
        factor: 2.0,
        max_rate: 50.0,
        step: Duration::from_millis(400),
        warmup: Duration::from_millis(100),
        drain: Duration::from_millis(500),
        // Generous: this test checks accounting, never speed.
        p99_bound: Duration::from_secs(10),
        stop_above: None,
        concurrency: 8,
        sources: 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_counts_a_lost_message_when_the_hub_drops_one() {
    // The warm-up takes seq 0..5; 10 falls in the measured step.
    let hub = fake_hubs(2, Some(10)).await;
    let report = fanout::run(args(&hub, 6)).await.unwrap();
    assert_eq!(report.steps.len(), 1);
    let step = &report.steps[0];
    assert_eq!(step.published, 20);
    assert_eq!(step.expected, 20 * 6);
    assert_eq!(step.lost, 1, "{step:?}");
    assert_eq!(step.delivered, step.expected - 1);
    assert!(!step.pass, "a step with a loss never passes");
    assert_eq!(report.best_deliveries_per_sec, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_does_not_count_what_happens_during_the_warm_up() {
    let hub = fake_hubs(1, Some(2)).await; // seq 2 is published during the warm-up
    let report = fanout::run(args(&hub, 3)).await.unwrap();
    let step = &report.steps[0];
    assert_eq!((step.published, step.lost), (20, 0), "{step:?}");
    assert!(step.pass);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_through_a_faithful_hub_delivers_everything_across_nodes_and_steps() {
    let hub = fake_hubs(2, None).await;
    let mut a = args(&hub, 6);
    a.max_rate = 100.0; // two steps: 50/s then 100/s
    let report = fanout::run(a).await.unwrap();
    assert_eq!(report.steps.len(), 2, "{report:?}");
    for step in &report.steps {
        assert_eq!(step.lost, 0, "{step:?}");
        assert_eq!(step.duplicates, 0);
        assert_eq!(step.delivered, step.published * 6);
        assert_eq!(step.latency.samples, step.delivered);
        assert!(step.pass);
    }
    assert_eq!(report.steps[1].published, 40);
    assert_eq!(report.stray, 0);
    assert_eq!(report.dropped_subscribers, 0);
    assert!(report.best_deliveries_per_sec > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_stops_at_the_first_failed_step_unless_told_to_trace_the_curve() {
    let hub = fake_hubs(1, None).await;
    let mut a = args(&hub, 2);
    a.max_rate = 100.0;
    a.p99_bound = Duration::ZERO; // every step fails the bound
    let stopped = fanout::run(a.clone()).await.unwrap();
    assert_eq!(stopped.steps.len(), 1);
    assert_eq!(stopped.best_sustained_deliveries_per_sec, 0.0);

    a.stop_above = Some(Duration::from_secs(10));
    let traced = fanout::run(a).await.unwrap();
    assert_eq!(
        traced.steps.len(),
        2,
        "lossless steps under --stop-above go on"
    );
    assert!(traced.steps.iter().all(|s| !s.pass && s.lost == 0));
    assert_eq!(traced.best_deliveries_per_sec, 0.0);
    assert!(traced.best_sustained_deliveries_per_sec > 0.0);
}

#[tokio::test]
async fn fanout_reports_a_refusing_hub_as_an_error() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", free.local_addr().unwrap());
    drop(free);
    let hub = FakeHub { urls: vec![url] };
    assert!(fanout::run(args(&hub, 2)).await.is_err());
}
