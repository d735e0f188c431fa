//! One node's live feed: a core NATS subscription per channel the node has subscribers
//! for, on the subject the stream republishes each message to once it is stored.
//!
//! Why the republished subject and not the published one: a subscriber of the subject a
//! publish is sent to would see it before JetStream stored it (or even when JetStream
//! refused it, as it does every publish that lost a race), and without its sequence. What
//! the stream republishes was stored first (contract item 5), comes in the stream's order,
//! and carries its sequence (`Nats-Sequence`) and the headers it was stored with, among them
//! the previous sequence of its channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_nats::{Message, Subscriber};
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::task::JoinHandle;

use super::connection::{unavailable, Connection};
use super::history::{offset, prev_of};
use crate::broker::feed::{self as node_feed, Feed, FeedLimit, FeedSender};
use crate::broker::{BrokerError, BrokerEvent, Link};
use crate::protocol::{ChannelName, Offset, Publication};

/// The header the stream's republish puts the stored sequence in.
const SEQUENCE_HEADER: &str = "Nats-Sequence";

pub(super) struct NatsLink {
    connection: Arc<Connection>,
    feed: FeedSender,
    /// How many times the node subscribed each channel, and the task forwarding it.
    channels: Mutex<HashMap<ChannelName, (usize, JoinHandle<()>)>>,
    /// Held while a channel's subscription is being made, so two subscribes of one
    /// channel make one subscription.
    making: tokio::sync::Mutex<()>,
}

pub(super) fn attach(connection: Arc<Connection>, limit: FeedLimit) -> (NatsLink, Feed) {
    let (feed, events) = node_feed::feed(limit);
    connection.add_feed(feed.clone());
    let link = NatsLink {
        connection,
        feed,
        channels: Mutex::new(HashMap::new()),
        making: tokio::sync::Mutex::new(()),
    };
    (link, events)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NatsLink {
    fn counted(&self, channel: &ChannelName) -> bool {
        match lock(&self.channels).get_mut(channel) {
            Some((count, _)) => {
                *count += 1;
                true
            }
            None => false,
        }
    }

    async fn subscribe_new(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        let _making = self.making.lock().await;
        if self.counted(channel) {
            return Ok(());
        }
        self.connection.check_up()?;
        let (client, _) = self.connection.client().await?;
        let subscriber = client
            .subscribe(self.connection.subjects.live(channel))
            .await
            .map_err(unavailable)?;
        // Once the server has seen the subscription, every later message reaches it.
        self.connection.sync().await?;
        let task = crate::lane::spawn(forward(
            self.connection.clone(),
            channel.clone(),
            subscriber,
            self.feed.clone(),
        ));
        lock(&self.channels).insert(channel.clone(), (1, task));
        Ok(())
    }
}

impl Link for NatsLink {
    fn subscribe<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            if self.counted(channel) {
                return Ok(());
            }
            self.subscribe_new(channel).await
        }
        .boxed()
    }

    fn unsubscribe(&self, channel: &ChannelName) {
        let mut channels = lock(&self.channels);
        if let Some((count, task)) = channels.get_mut(channel) {
            *count -= 1;
            if *count == 0 {
                // Dropping the subscriber (with its task) unsubscribes at the server.
                task.abort();
                channels.remove(channel);
            }
        }
    }
}

impl Drop for NatsLink {
    fn drop(&mut self) {
        for (_, (_, task)) in lock(&self.channels).drain() {
            task.abort();
        }
    }
}

async fn forward(
    connection: Arc<Connection>,
    channel: ChannelName,
    mut subscriber: Subscriber,
    feed: FeedSender,
) {
    while let Some(message) = subscriber.next().await {
        let event = match decode(&connection, &channel, &message) {
            Decoded::Publication(event) => event,
            // Offsets cannot be told until the stream's epoch is read again (after a
            // reconnect): the resync that follows refills this message from history.
            Decoded::NoEpoch => BrokerEvent::Resync,
            Decoded::Malformed(why) => {
                tracing::warn!(%channel, why, "malformed live message from nats ignored");
                continue;
            }
        };
        if feed.send(event).is_err() {
            return;
        }
    }
}

enum Decoded {
    Publication(BrokerEvent),
    NoEpoch,
    Malformed(&'static str),
}

fn decode(connection: &Connection, channel: &ChannelName, message: &Message) -> Decoded {
    let headers = message.headers.as_ref();
    let Some(sequence) = headers
        .and_then(|h| h.get(SEQUENCE_HEADER))
        .and_then(|v| v.as_str().parse::<u64>().ok())
    else {
        return Decoded::Malformed("no sequence header");
    };
    let Some(prev) = prev_of(headers) else {
        return Decoded::Malformed("no previous-sequence header");
    };
    if prev >= sequence {
        return Decoded::Malformed("previous sequence not before the message");
    }
    let Ok(text) = String::from_utf8(message.payload.to_vec()) else {
        return Decoded::Malformed("payload is not UTF-8");
    };
    let Ok(data) = RawValue::from_string(text) else {
        return Decoded::Malformed("payload is not JSON");
    };
    let Some(epoch) = connection.cached_epoch() else {
        return Decoded::NoEpoch;
    };
    let prev: Option<Offset> = (prev != 0).then(|| offset(epoch, prev));
    let publication = Publication::new(channel.clone(), offset(epoch, sequence), data);
    Decoded::Publication(BrokerEvent::Publication { publication, prev })
}
