//! Steady publishers: over HTTP (`POST /api/publish` on the hubs, directly) and over
//! WebSocket (through the proxy, `publish` frames answered by `published`).
//!
//! Each publish carries a tag unique to the run (`{"t": TAG}`); its offset, once the hub
//! answers, goes into the ledger. A publish without an answer (hub down, connection cut,
//! timeout) is counted as failed: it may or may not have been published, so nothing is owed
//! for it; if it was, subscribers receive it as an unacknowledged frame.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::http::HttpConn;
use super::ledger::Ledger;
use crate::client::{self, Buffers};

/// Counters over all publishers.
#[derive(Debug, Default)]
pub struct PublishStats {
    pub attempted: AtomicU64,
    pub acknowledged: AtomicU64,
    /// Refused, cut, or unanswered: not owed.
    pub failed: AtomicU64,
}

/// A publisher's identity: its tags are `id << 40 | n`, unique in the run.
fn tag(id: u64, n: u64) -> u64 {
    (id << 40) | n
}

/// The gap between publishes for `rate` per second.
fn period(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate)
}

#[derive(Deserialize)]
struct Offset {
    offset: u64,
}

/// Publishes over HTTP at `rate` per second, rotating over channels and hubs, until `stop`.
/// A hub that fails a publish is skipped for the next one.
pub async fn http(
    id: u64,
    hubs: Vec<SocketAddr>,
    rate: f64,
    ledger: Arc<Ledger>,
    stats: Arc<PublishStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns: Vec<HttpConn> = hubs
        .iter()
        .map(|&h| HttpConn::new(h, Duration::from_secs(5)))
        .collect();
    let mut tick = tokio::time::interval(period(rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let channels = ledger.channel_count();
    let mut n = 0u64;
    let mut hub = id as usize % conns.len();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let channel = (id as usize * 7919 + n as usize) % channels;
        let t = tag(id, n);
        n += 1;
        let body = serde_json::json!({
            "channel": ledger.channel_name(channel),
            "data": {"t": t},
        })
        .to_string();
        stats.attempted.fetch_add(1, Ordering::Relaxed);
        let answer = conns[hub]
            .request("POST", "/api/publish", Some(body.as_bytes()))
            .await;
        match answer {
            Ok(a) if a.status == 200 => match serde_json::from_slice::<Offset>(&a.body) {
                Ok(o) => {
                    ledger.published(channel, o.offset, t);
                    stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                }
            },
            _ => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                hub = (hub + 1) % conns.len();
            }
        }
        hub = (hub + 1) % conns.len();
    }
}

#[derive(Deserialize)]
struct Reply {
    #[serde(rename = "type")]
    kind: String,
    offset: Option<u64>,
    id: Option<u64>,
}

/// Publishes over one WebSocket through the proxy at `rate` per second until `stop`,
/// reconnecting (after a short pause) whenever the connection ends.
pub async fn websocket(
    id: u64,
    proxy: SocketAddr,
    rate: f64,
    ledger: Arc<Ledger>,
    stats: Arc<PublishStats>,
    mut stop: watch::Receiver<bool>,
) {
    let target: crate::target::TargetUrl = match format!("ws://{proxy}/ws").parse() {
        Ok(t) => t,
        Err(_) => return,
    };
    let url = target.url_with_param("sid", &format!("publisher-{id}"));
    let channels = ledger.channel_count();
    let mut n = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        let ws = client::open(
            &target,
            &url,
            std::net::Ipv4Addr::LOCALHOST.into(),
            Buffers::ForMessages(256),
        )
        .await;
        if let Ok(ws) = ws {
            let (mut sink, mut stream) = ws.split();
            // Publishes sent and not answered: frame id → (channel, tag).
            let mut pending: HashMap<u64, (usize, u64)> = HashMap::new();
            let mut tick = tokio::time::interval(period(rate));
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut welcomed = false;
            let ended_by_stop = loop {
                tokio::select! {
                    _ = stop.changed() => break true,
                    _ = tick.tick(), if welcomed => {
                        let channel = (id as usize * 104_729 + n as usize) % channels;
                        let t = tag(id, n);
                        let frame = serde_json::json!({
                            "type": "publish",
                            "channel": ledger.channel_name(channel),
                            "data": {"t": t},
                            "id": n,
                        });
                        pending.insert(n, (channel, t));
                        n += 1;
                        stats.attempted.fetch_add(1, Ordering::Relaxed);
                        if sink.send(Message::text(frame.to_string())).await.is_err() {
                            break false;
                        }
                    }
                    frame = stream.next() => match frame {
                        Some(Ok(Message::Text(text))) => {
                            let Ok(reply) = serde_json::from_str::<Reply>(text.as_str()) else { continue };
                            match (reply.kind.as_str(), reply.id) {
                                ("welcome", _) => welcomed = true,
                                ("published", Some(frame_id)) => {
                                    if let (Some((channel, t)), Some(offset)) = (pending.remove(&frame_id), reply.offset) {
                                        ledger.published(channel, offset, t);
                                        stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                ("error", Some(frame_id)) if pending.remove(&frame_id).is_some() => {
                                    stats.failed.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {}
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break false,
                    },
                }
            };
            if ended_by_stop {
                // Give the answers in flight a moment, so the last publishes are owed too.
                let deadline = Instant::now() + Duration::from_secs(2);
                while !pending.is_empty() {
                    let Ok(Some(Ok(Message::Text(text)))) =
                        tokio::time::timeout_at(deadline, stream.next()).await
                    else {
                        break;
                    };
                    if let Ok(Reply {
                        kind,
                        offset: Some(offset),
                        id: Some(frame_id),
                    }) = serde_json::from_str::<Reply>(text.as_str())
                    {
                        if kind == "published" {
                            if let Some((channel, t)) = pending.remove(&frame_id) {
                                ledger.published(channel, offset, t);
                                stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                stats
                    .failed
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                let _ = sink.close().await;
                return;
            }
            // Sent, then the connection ended before the answer: fate unknown, not owed.
            stats
                .failed
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200 + rand::random_range(0..800))) => {}
            _ = stop.changed() => return,
        }
    }
}
