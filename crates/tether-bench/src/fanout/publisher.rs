//! The publisher of a fan-out run: one session on the first hub, publishing each step's
//! budget on schedule.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{Flavour, Incoming, Shared, StepLedger};
use crate::client::{self, Buffers, Ws};
use crate::error::BenchError;
use crate::target::TargetUrl;

/// The publisher on a thread and runtime of its own.
///
/// Latency is counted from the moment a message was due, so a publish sent late is charged
/// to the server. On the subscribers' thread the publisher's timer would fire only between
/// bursts of their reads (a pass over a thousand sockets takes milliseconds), and the
/// generator's own load would show up as the server's latency. Its own thread is woken by
/// the kernel when the timer is due, whatever the subscribers are doing.
pub(super) struct PublisherThread {
    /// Taken on drop: closing it ends the thread's loop.
    orders: Option<mpsc::UnboundedSender<StepOrder>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One step for the publisher thread to run, and where to say how long it took.
struct StepOrder {
    step: Arc<StepLedger>,
    length: Duration,
    done: oneshot::Sender<Result<Duration, BenchError>>,
}

impl PublisherThread {
    /// Connects the publisher from its own thread; returns once it has joined the channel.
    pub(super) async fn start(
        flavour: Flavour,
        hub: &TargetUrl,
        channel: &str,
        shared: &Arc<Shared>,
    ) -> Result<Self, BenchError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(BenchError::Runtime)?;
        let (hub, channel, shared) = (hub.clone(), channel.to_owned(), shared.clone());
        let (orders, mut order_rx) = mpsc::unbounded_channel::<StepOrder>();
        let (connected_tx, connected) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("bench-publisher".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut publisher =
                        match Publisher::connect(flavour, &hub, &channel, &shared).await {
                            Ok(p) => {
                                let _ = connected_tx.send(Ok(()));
                                p
                            }
                            Err(e) => {
                                let _ = connected_tx.send(Err(e));
                                return;
                            }
                        };
                    while let Some(order) = order_rx.recv().await {
                        let result = publisher.run_step(&order.step, order.length).await;
                        let _ = order.done.send(result);
                    }
                })
            })
            .map_err(BenchError::Runtime)?;
        let this = Self {
            orders: Some(orders),
            thread: Some(thread),
        };
        connected.await.unwrap_or(Err(BenchError::PublisherGone))?;
        Ok(this)
    }

    /// Publishes `step`'s budget on schedule; returns how long it took.
    pub(super) async fn run_step(
        &self,
        step: &Arc<StepLedger>,
        length: Duration,
    ) -> Result<Duration, BenchError> {
        let (done, finished) = oneshot::channel();
        let order = StepOrder {
            step: step.clone(),
            length,
            done,
        };
        self.orders
            .as_ref()
            .ok_or(BenchError::PublisherGone)?
            .send(order)
            .map_err(|_| BenchError::PublisherGone)?;
        finished.await.unwrap_or(Err(BenchError::PublisherGone))
    }
}

impl Drop for PublisherThread {
    fn drop(&mut self) {
        // Closing the order queue ends the thread's loop; its connection closes with it.
        drop(self.orders.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

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
