//! One node's live feed from Redis pub/sub, kept alive across Redis restarts and cuts.
//!
//! A single task, on the broker lane (see `lane`), owns the pub/sub connection and the
//! node's subscription counts. When the connection dies (or stops answering pings) it
//! reconnects with backoff, subscribes again to every channel the node still wants, and
//! emits [`BrokerEvent::Resync`] so the node refills whatever was published while it was
//! away from history.

use std::collections::HashMap;
use std::time::Duration;

use ::redis::aio::{PubSubSink, PubSubStream};
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::{Keys, COMMAND_TIMEOUT};
use crate::broker::feed::{self as node_feed, Feed as NodeFeed, FeedLimit, FeedSender};
use crate::broker::{BrokerError, BrokerEvent, Link};
use crate::protocol::{ChannelName, Offset, Publication};

/// How often an idle pub/sub connection is pinged to notice a silent cut.
const PING_EVERY: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

enum Command {
    Subscribe(ChannelName, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(ChannelName),
}

/// The handle a node holds; the task behind it ends when the handle is dropped.
pub(super) struct RedisLink {
    commands: mpsc::UnboundedSender<Command>,
}

impl Link for RedisLink {
    fn subscribe<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            let (ack, acked) = oneshot::channel();
            self.commands
                .send(Command::Subscribe(channel.clone(), ack))
                .map_err(|_| BrokerError::Disconnected)?;
            acked.await.unwrap_or(Err(BrokerError::Disconnected))
        }
        .boxed()
    }

    fn unsubscribe(&self, channel: &ChannelName) {
        let _ = self.commands.send(Command::Unsubscribe(channel.clone()));
    }
}

pub(super) fn spawn(
    client: ::redis::Client,
    keys: Keys,
    limit: FeedLimit,
) -> (RedisLink, NodeFeed) {
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (events, event_rx) = node_feed::feed(limit);
    let feed = Feed {
        client,
        keys,
        counts: HashMap::new(),
        waiting: Vec::new(),
        commands: command_rx,
        events,
    };
    crate::lane::spawn(feed.run());
    (RedisLink { commands }, event_rx)
}

struct Feed {
    client: ::redis::Client,
    keys: Keys,
    /// How many times the node subscribed each channel; Redis is subscribed while > 0.
    counts: HashMap<ChannelName, usize>,
    /// Subscribes asked for while disconnected: counted, answered after the next attempt.
    waiting: Vec<(ChannelName, oneshot::Sender<Result<(), BrokerError>>)>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: FeedSender,
}

/// Why a connected session of the feed ended.
enum Ended {
    /// The node dropped its link: stop for good.
    NodeGone,
    /// Redis went away or stopped answering: reconnect.
    Lost(BrokerError),
}

impl Feed {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.connect().await {
                Ok((sink, stream)) => {
                    backoff = BACKOFF_MIN;
                    self.answer_waiting(true);
                    match self.serve(sink, stream).await {
                        Ended::NodeGone => return,
                        Ended::Lost(error) => self.report_lost(error),
                    }
                }
                Err(error) => {
                    self.answer_waiting(false);
                    self.report_lost(error);
                }
            }
            if !self.wait_out(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn report_lost(&self, error: BrokerError) {
        tracing::warn!(%error, "redis pub/sub connection lost; reconnecting");
        let _ = self.events.send(BrokerEvent::Lost(error.to_string()));
    }

    /// Connects and subscribes to everything the node wants, then announces the resync.
    async fn connect(&mut self) -> Result<(PubSubSink, PubSubStream), BrokerError> {
        let pubsub = tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| BrokerError::Timeout(COMMAND_TIMEOUT))??;
        let (mut sink, stream) = pubsub.split();
        if !self.counts.is_empty() {
            let live: Vec<String> = self.counts.keys().map(|c| self.keys.live(c)).collect();
            tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(live))
                .await
                .map_err(|_| BrokerError::Timeout(COMMAND_TIMEOUT))??;
            tracing::info!(channels = self.counts.len(), "redis pub/sub resubscribed");
            let _ = self.events.send(BrokerEvent::Resync);
        }
        Ok((sink, stream))
    }

    /// Answers the subscribes that came in while disconnected, once an attempt to connect
    /// has succeeded or failed; a failed one is not counted.
    fn answer_waiting(&mut self, connected: bool) {
        for (channel, ack) in std::mem::take(&mut self.waiting) {
            if connected {
                let _ = ack.send(Ok(()));
            } else {
                self.forget(&channel);
                let _ = ack.send(Err(BrokerError::Disconnected));
            }
        }
    }

    /// Sleeps through a backoff while still answering the node: unsubscribes are recorded;
    /// a subscribe cuts the wait short (someone is waiting for Redis now) and is answered
    /// after the attempt. Returns false when the node is gone.
    async fn wait_out(&mut self, backoff: Duration) -> bool {
        let jittered = backoff.mul_f64(rand::random_range(0.5..1.0));
        let deadline = tokio::time::sleep(jittered);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return true,
                command = self.commands.recv() => match command {
                    None => return false,
                    Some(Command::Subscribe(channel, ack)) => {
                        *self.counts.entry(channel.clone()).or_insert(0) += 1;
                        self.waiting.push((channel, ack));
                        return true;
                    }
                    Some(Command::Unsubscribe(channel)) => {
                        self.forget(&channel);
                    }
                },
            }
        }
    }

    /// Decrements a channel's count; true when nobody on this node wants it any more.
    fn forget(&mut self, channel: &ChannelName) -> bool {
        match self.counts.get_mut(channel) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                self.counts.remove(channel);
                true
            }
            None => false,
        }
    }

    async fn serve(&mut self, mut sink: PubSubSink, mut stream: PubSubStream) -> Ended {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    None => return Ended::Lost(BrokerError::Disconnected),
                    Some(message) => self.forward(&message),
                },
                command = self.commands.recv() => match command {
                    None => return Ended::NodeGone,
                    Some(command) => if let Err(error) = self.apply(&mut sink, command).await {
                        return Ended::Lost(error);
                    },
                },
                _ = ping.tick() => {
                    let answer = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<::redis::Value>()).await;
                    match answer {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Ended::Lost(error.into()),
                        Err(_) => return Ended::Lost(BrokerError::Timeout(COMMAND_TIMEOUT)),
                    }
                }
            }
            if self.events.is_closed() {
                return Ended::NodeGone;
            }
        }
    }

    async fn apply(&mut self, sink: &mut PubSubSink, command: Command) -> Result<(), BrokerError> {
        match command {
            Command::Subscribe(channel, ack) => {
                if let Some(count) = self.counts.get_mut(&channel) {
                    *count += 1;
                    let _ = ack.send(Ok(()));
                    return Ok(());
                }
                let live = self.keys.live(&channel);
                let result = tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(live))
                    .await
                    .map_err(|_| BrokerError::Timeout(COMMAND_TIMEOUT))
                    .and_then(|r| r.map_err(BrokerError::from));
                match result {
                    Ok(()) => {
                        self.counts.insert(channel, 1);
                        let _ = ack.send(Ok(()));
                        Ok(())
                    }
                    Err(error) => {
                        let _ = ack.send(Err(BrokerError::Disconnected));
                        Err(error)
                    }
                }
            }
            Command::Unsubscribe(channel) => {
                if self.forget(&channel) {
                    let live = self.keys.live(&channel);
                    tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(live))
                        .await
                        .map_err(|_| BrokerError::Timeout(COMMAND_TIMEOUT))??;
                }
                Ok(())
            }
        }
    }

    /// Turns a pub/sub message `"<offset> <json>"` into a publication for the node.
    fn forward(&self, message: &::redis::Msg) {
        let Some(channel) = self.keys.channel_of_live(message.get_channel_name()) else {
            return;
        };
        match parse_live(message.get_payload_bytes()) {
            Some((offset, prev, data)) => {
                let publication = Publication::new(channel, offset, data);
                let _ = self
                    .events
                    .send(BrokerEvent::Publication { publication, prev });
            }
            None => tracing::warn!(%channel, "malformed pub/sub payload ignored"),
        }
    }
}

/// Reads `"<offset>/<prev> <json>"`, prev 0 meaning the first message of its log. The
/// form of older versions, `"<offset> <json>"`, is read with `prev` taken as `offset - 1`
/// (they only ever numbered by one), so nodes of both versions work side by side.
fn parse_live(payload: &[u8]) -> Option<(Offset, Option<Offset>, Box<RawValue>)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (position, data) = text.split_once(' ')?;
    let (offset, prev) = match position.split_once('/') {
        Some((offset, prev)) => {
            let offset: u64 = offset.parse().ok()?;
            let prev: u64 = prev.parse().ok()?;
            (offset, (prev != 0).then_some(Offset(prev)))
        }
        None => {
            let offset: u64 = position.parse().ok()?;
            (offset, offset.checked_sub(1).map(Offset))
        }
    };
    if offset == 0 || prev.is_some_and(|p| p.0 >= offset) {
        return None;
    }
    let data = RawValue::from_string(data.to_owned()).ok()?;
    Some((Offset(offset), prev, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_payload_is_offset_slash_prev_space_json() {
        let (offset, prev, data) = parse_live(br#"42/40 {"a":1}"#).unwrap();
        assert_eq!((offset, prev), (Offset(42), Some(Offset(40))));
        assert_eq!(data.get(), r#"{"a":1}"#);
        let (_, prev, _) = parse_live(b"7/0 1").unwrap();
        assert_eq!(prev, None, "the first message of a log");
        let (_, prev, _) = parse_live(b"42 1").unwrap();
        assert_eq!(prev, Some(Offset(41)), "an older node's form");
        assert!(parse_live(b"x {}").is_none());
        assert!(parse_live(b"42/x {}").is_none());
        assert!(parse_live(b"42/42 {}").is_none(), "prev must come before");
        assert!(parse_live(b"42 {nope").is_none());
    }
}
