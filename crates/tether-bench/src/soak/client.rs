//! A subscriber that keeps its subscription through anything, as `clients/js/tether.js` does:
//! it reconnects with full-jitter backoff (a restart or drain, close 1001/1012, only with a
//! short jitter; a push-back, 1013/1008, further each time), then subscribes again with
//! `since` = the last offset it saw, and records every frame in the ledger.
//!
//! The injector reaches a subscriber through its [`Control`] queue: cut its connection as a
//! network failure would, or stop reading for a while (a stalled consumer).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::ledger::{Arrival, Asked, Ledger};
use super::trace::Step;
use crate::client::{Ws, HANDSHAKE_TIMEOUT};
use crate::source::connect_from;

/// First backoff ceiling, as the JS client's `minDelay`.
const MIN_DELAY: Duration = Duration::from_millis(250);
/// Largest backoff ceiling. Lower than the JS client's 10 s so a soak's final drain is short.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Ceiling of the jitter before reconnecting after 1001/1012.
const RESTART_JITTER: Duration = Duration::from_secs(1);
/// How long after `broker_unavailable` the subscribe is sent again.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// What the injector may do to a subscriber.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    /// Drop the connection at once; with `reset`, as an RST (SO_LINGER 0), else a FIN.
    Cut { reset: bool },
    /// Stop reading for this long.
    Stall(Duration),
}

/// Counters over all subscribers.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub closes_by_server: AtomicU64,
    pub server_errors: AtomicU64,
    pub gaps: AtomicU64,
    /// Connected right now (for the resource CSV).
    pub connected: Arc<AtomicU64>,
}

/// Where and how a subscriber connects.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub proxy: SocketAddr,
    pub source: IpAddr,
    /// Sticky key: the proxy hashes on it.
    pub sid: String,
    /// Testing the soak itself: ignore every Nth message frame (see `SoakArgs`).
    pub drop_every: Option<std::num::NonZeroU64>,
}

/// The reaction to how a connection ended, as the JS client's `reactionTo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reaction {
    ResumeNow,
    BackOff,
    Retry,
}

fn reaction_to(code: Option<u16>) -> Reaction {
    match code {
        Some(1001 | 1012) => Reaction::ResumeNow,
        Some(1008 | 1013) => Reaction::BackOff,
        Some(c) if (4000..5000).contains(&c) => Reaction::BackOff,
        _ => Reaction::Retry,
    }
}

/// Full-jitter exponential backoff: uniform below min(max, base × 2^attempt).
fn backoff(attempt: u32) -> Duration {
    let ceiling = MIN_DELAY
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(MAX_DELAY);
    ceiling.mul_f64(rand::random::<f64>())
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    offset: Option<u64>,
    recovered: Option<bool>,
    data: Option<Tagged>,
    code: Option<String>,
    node: Option<String>,
}

#[derive(Deserialize)]
struct Tagged {
    t: u64,
}

/// How one connection ended.
enum Ended {
    /// The run is over.
    Stop,
    /// The connection ended; the close code if the server sent one.
    Lost(Option<u16>),
}

/// Runs subscriber `index` until `stop` turns true.
pub async fn run(
    index: usize,
    endpoint: Endpoint,
    ledger: Arc<Ledger>,
    stats: Arc<ClientStats>,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut stop: watch::Receiver<bool>,
) {
    let channel = ledger
        .channel_name(ledger.subscriber(index).channel)
        .to_owned();
    let mut attempt = 0u32;
    let mut pushback = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let opened = tokio::time::Instant::now();
        let ended = match open(&endpoint).await {
            Ok(ws) => {
                stats.connects.fetch_add(1, Ordering::Relaxed);
                stats.connected.fetch_add(1, Ordering::Relaxed);
                let mut received = Received::default();
                let ended = session(
                    ws,
                    index,
                    &endpoint,
                    &channel,
                    &ledger,
                    &stats,
                    &mut control,
                    &mut stop,
                    &mut attempt,
                    &mut received,
                )
                .await;
                stats.connected.fetch_sub(1, Ordering::Relaxed);
                if let Ended::Lost(code) = ended {
                    ledger.subscriber(index).step(Step::Ended {
                        code,
                        messages: received.messages,
                        first: received.first,
                        last: received.last,
                    });
                }
                ended
            }
            Err(_) => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                Ended::Lost(None)
            }
        };
        let code = match ended {
            Ended::Stop => return,
            Ended::Lost(code) => code,
        };
        let delay = match reaction_to(code) {
            Reaction::ResumeNow => {
                attempt = 0;
                pushback = 0;
                RESTART_JITTER.mul_f64(rand::random::<f64>())
            }
            Reaction::BackOff => {
                if opened.elapsed() >= MAX_DELAY {
                    pushback = 0;
                }
                pushback += 1;
                attempt = attempt.max(pushback + 1);
                backoff(attempt)
            }
            Reaction::Retry => {
                pushback = 0;
                backoff(attempt)
            }
        };
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The message frames one connection brought, for the subscriber's trace.
#[derive(Debug, Default)]
struct Received {
    messages: u64,
    first: Option<u64>,
    last: Option<u64>,
}

async fn open(endpoint: &Endpoint) -> Result<Ws, ()> {
    let url = format!("ws://{}/ws?sid={}", endpoint.proxy, endpoint.sid);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let attempt = async {
        let stream = connect_from(endpoint.source, endpoint.proxy)
            .await
            .map_err(|_| ())?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|_| ())?;
        Ok(ws)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
        .await
        .unwrap_or(Err(()))
}

/// Serves one connection: subscribe (with `since` once there is one), then record frames.
#[allow(clippy::too_many_arguments)]
async fn session(
    mut ws: Ws,
    index: usize,
    endpoint: &Endpoint,
    channel: &str,
    ledger: &Ledger,
    stats: &ClientStats,
    control: &mut mpsc::UnboundedReceiver<Control>,
    stop: &mut watch::Receiver<bool>,
    attempt: &mut u32,
    received: &mut Received,
) -> Ended {
    let book = ledger.subscriber(index);
    let mut asked = Asked::default();
    let mut resubscribe_at: Option<tokio::time::Instant> = None;
    let mut frames = 0u64;
    loop {
        let resubscribe = async {
            match resubscribe_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let frame = tokio::select! {
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return Ended::Stop;
            }
            command = control.recv() => {
                match command {
                    Some(Control::Cut { reset }) => {
                        if reset {
                            // Zero linger: close sends an RST at once, nothing blocks.
                            let _ = socket2::SockRef::from(ws.get_ref()).set_linger(Some(Duration::ZERO));
                        }
                        drop(ws);
                        return Ended::Lost(None);
                    }
                    Some(Control::Stall(length)) => {
                        // Not reading: the hub's writes back up, and its pings go unanswered.
                        tokio::select! {
                            _ = tokio::time::sleep(length) => {}
                            _ = stop.changed() => return Ended::Stop,
                        }
                    }
                    None => {}
                }
                continue;
            }
            _ = resubscribe => {
                resubscribe_at = None;
                asked = ledger.asking(index);
                book.step(Step::Subscribe { asked });
                if send_subscribe(&mut ws, channel, asked.since).await.is_err() {
                    return Ended::Lost(None);
                }
                continue;
            }
            frame = ws.next() => frame,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => {
                stats.closes_by_server.fetch_add(1, Ordering::Relaxed);
                return Ended::Lost(
                    close
                        .map(|c| u16::from(c.code))
                        .or(Some(u16::from(CloseCode::Status))),
                );
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Ended::Lost(None),
        };
        let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
            stats.server_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match frame.kind.as_str() {
            "welcome" => {
                *attempt = 0;
                book.step(Step::Welcome {
                    node: frame.node.unwrap_or_default(),
                });
                asked = ledger.asking(index);
                book.step(Step::Subscribe { asked });
                if send_subscribe(&mut ws, channel, asked.since).await.is_err() {
                    return Ended::Lost(None);
                }
            }
            "subscribed" => {
                let (Some(top), Some(recovered)) = (frame.offset, frame.recovered) else {
                    stats.server_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if !recovered {
                    stats.gaps.fetch_add(1, Ordering::Relaxed);
                }
                book.step(Step::Subscribed { top, recovered });
                book.subscribed(asked, top, recovered);
            }
            "message" => {
                let (Some(offset), Some(data)) = (frame.offset, frame.data) else {
                    stats.server_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                received.messages += 1;
                received.first.get_or_insert(offset);
                received.last = Some(offset);
                if let Some(n) = endpoint.drop_every {
                    frames += 1;
                    if frames == n.get() {
                        frames = 0;
                        continue;
                    }
                }
                if book.message(offset, data.t) != Arrival::InOrder {
                    tracing::warn!(
                        subscriber = index,
                        channel,
                        offset,
                        "frame out of order or repeated"
                    );
                }
            }
            "error" => {
                stats.server_errors.fetch_add(1, Ordering::Relaxed);
                if frame.code.as_deref() == Some("broker_unavailable") {
                    resubscribe_at = Some(tokio::time::Instant::now() + RESUBSCRIBE_DELAY);
                }
            }
            _ => {}
        }
    }
}

async fn send_subscribe(ws: &mut Ws, channel: &str, since: Option<u64>) -> Result<(), ()> {
    let frame = match since {
        Some(since) => serde_json::json!({"type": "subscribe", "channel": channel, "since": since}),
        None => serde_json::json!({"type": "subscribe", "channel": channel}),
    };
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_get_the_js_clients_reactions() {
        assert_eq!(reaction_to(Some(1012)), Reaction::ResumeNow);
        assert_eq!(reaction_to(Some(1001)), Reaction::ResumeNow);
        assert_eq!(reaction_to(Some(1013)), Reaction::BackOff);
        assert_eq!(reaction_to(Some(4001)), Reaction::BackOff);
        assert_eq!(reaction_to(Some(1006)), Reaction::Retry);
        assert_eq!(reaction_to(None), Reaction::Retry);
    }

    #[test]
    fn backoff_stays_under_its_ceiling() {
        for attempt in 0..40 {
            let ceiling = MIN_DELAY
                .saturating_mul(1 << attempt.min(16))
                .min(MAX_DELAY);
            assert!(backoff(attempt) <= ceiling);
        }
    }
}
