//! The subscribers of a fan-out run: opened and subscribed with bounded concurrency, then
//! each left reading in its own task, recording every delivery in the ledger.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{FanoutArgs, Flavour, Incoming, Shared, StepLedger};
use crate::client::{self, Buffers, Ws};
use crate::error::BenchError;
use crate::source::SourcePool;
use crate::target::TargetUrl;

/// Opens and subscribes every subscriber, then leaves each reading in its own task.
pub(super) async fn subscribe_all(
    args: &FanoutArgs,
    hubs: &[TargetUrl],
    channel: &str,
    sources: &SourcePool,
    shared: &Arc<Shared>,
) -> Result<JoinSet<()>, BenchError> {
    let mut opening = JoinSet::new();
    let mut running = JoinSet::new();
    let mut next = 0;
    while next < args.subscribers || !opening.is_empty() {
        while next < args.subscribers && opening.len() < args.concurrency {
            let hub = hubs[next % hubs.len()].clone();
            let (flavour, channel, source) = (
                args.flavour,
                channel.to_owned(),
                sources.for_connection(next),
            );
            let index = next;
            opening.spawn(async move {
                let url = hub.url();
                let mut ws = client::open(&hub, &url, source, Buffers::ForMessages(256)).await?;
                flavour.join(&mut ws, &hub).await?;
                flavour.subscribe(&mut ws, &hub, &channel).await?;
                Ok::<_, BenchError>((index, ws))
            });
            next += 1;
        }
        match opening.join_next().await {
            Some(Ok(Ok((index, ws)))) => {
                running.spawn(subscriber(ws, index, args.flavour, shared.clone()));
            }
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(source)) => {
                return Err(BenchError::Task {
                    what: "subscriber",
                    source,
                })
            }
            None => break,
        }
    }
    Ok(running)
}

async fn subscriber(mut ws: Ws, index: usize, flavour: Flavour, shared: Arc<Shared>) {
    let mut step: Option<Arc<StepLedger>> = None;
    while let Some(frame) = ws.next().await {
        let text = match frame {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        match flavour.classify(text.as_str()) {
            Incoming::Delivery { seq, sent_us } => {
                let latency = shared
                    .us_since_start(Instant::now())
                    .saturating_sub(sent_us);
                if !step.as_ref().is_some_and(|s| s.covers(seq)) {
                    step = shared.ledger.step_for(seq);
                }
                match &step {
                    Some(s) => s.record(index, seq, latency),
                    None => {
                        shared.ledger.stray.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Incoming::Ping => {
                if ws.send(Message::text(flavour.pong())).await.is_err() {
                    break;
                }
            }
            Incoming::Error => shared.server_error(text.as_str()),
            Incoming::Other => {}
        }
    }
    shared.dropped.fetch_add(1, Ordering::Relaxed);
}
