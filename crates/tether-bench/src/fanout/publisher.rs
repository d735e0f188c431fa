//! The publisher of a fan-out run: one session on the first hub, publishing each step's
//! budget on schedule.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{Flavour, Incoming, Shared, StepLedger};
use crate::client::{self, Buffers, Ws};
use crate::error::BenchError;
use crate::target::TargetUrl;

/// The one publishing session. A reader task drains what the server sends back (publish
/// acknowledgements, Engine.IO pings) so the server never blocks on it; pongs come back
/// through a channel because the writer half lives here.
pub(super) struct Publisher {
    flavour: Flavour,
    hub: TargetUrl,
    channel_json: String,
    sink: SplitSink<Ws, Message>,
    pongs: mpsc::UnboundedReceiver<()>,
    shared: Arc<Shared>,
    _reader: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub(super) async fn connect(
        flavour: Flavour,
        hub: &TargetUrl,
        channel: &str,
        shared: &Arc<Shared>,
    ) -> Result<Publisher, BenchError> {
        let url = hub.url();
        let mut ws = client::open(
            hub,
            &url,
            std::net::Ipv4Addr::LOCALHOST.into(),
            Buffers::ForMessages(256),
        )
        .await?;
        flavour.join(&mut ws, hub).await?;
        let (sink, stream) = ws.split();
        let (ping_tx, pongs) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_publisher_replies(
            stream,
            flavour,
            ping_tx,
            shared.clone(),
        ));
        Ok(Publisher {
            flavour,
            hub: hub.clone(),
            channel_json: serde_json::to_string(channel).expect("a string serialises"),
            sink,
            pongs,
            shared: shared.clone(),
            _reader: reader,
        })
    }

    /// Publishes the step's budget on schedule; returns how long it took. Messages due at the
    /// same moment are written together and flushed once.
    pub(super) async fn run_step(
        &mut self,
        step: &StepLedger,
        length: Duration,
    ) -> Result<Duration, BenchError> {
        let start = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / step.rate);
        let count = step
            .capacity
            .min((step.rate * length.as_secs_f64()).ceil() as u64);
        let err = |e| BenchError::ws(self.hub.addr(), e);
        for i in 0..count {
            let due = start + interval.mul_f64(i as f64);
            if due > Instant::now() {
                self.sink.flush().await.map_err(err)?;
                while self.pongs.try_recv().is_ok() {
                    self.sink
                        .send(Message::text(self.flavour.pong()))
                        .await
                        .map_err(err)?;
                }
                tokio::time::sleep_until(due).await;
            }
            let frame = self.flavour.publish(
                &self.channel_json,
                step.first_seq + i,
                self.shared.us_since_start(due),
            );
            self.sink.feed(Message::text(frame)).await.map_err(err)?;
            step.published.fetch_add(1, Ordering::Relaxed);
        }
        self.sink.flush().await.map_err(err)?;
        Ok(start.elapsed())
    }
}

async fn read_publisher_replies(
    mut stream: SplitStream<Ws>,
    flavour: Flavour,
    pings: mpsc::UnboundedSender<()>,
    shared: Arc<Shared>,
) {
    while let Some(Ok(frame)) = stream.next().await {
        if let Message::Text(t) = frame {
            match flavour.classify(t.as_str()) {
                Incoming::Ping => {
                    let _ = pings.send(());
                }
                Incoming::Error => shared.server_error(t.as_str()),
                _ => {}
            }
        }
    }
}
