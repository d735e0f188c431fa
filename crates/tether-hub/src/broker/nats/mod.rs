//! The NATS JetStream broker: history in a stream, live fan-out by the stream's republish.
//!
//! `--broker nats://[user:password@]host:port[?stream=NAME]`. Needs nats-server **2.9** or
//! later with JetStream (`-js`): direct gets (`allow_direct`) and republish arrived in 2.9;
//! nothing newer is used (no multiple filter subjects, no `first_seq`, no batch gets).
//!
//! # Layout
//! One stream per hub prefix `P` (`TETHER_P`, or `?stream=`), capturing `P.c.<channel>`
//! with `max_msgs_per_subject` = history size and `max_age` = history ttl, stored on file
//! (so history outlives a NATS restart), republishing every stored message to
//! `P.live.<channel>` — see [`address::Subjects`] for how a channel becomes a subject token.
//!
//! # Offsets: the stream sequence, plus a base
//! A channel's offsets are its messages' stream sequences: strictly increasing per channel,
//! with gaps where other channels' messages went (contract item 1), one number for every
//! node. The other way, a per-channel counter kept by optimistic concurrency, would need
//! the same expected-sequence round trip per publish *and* a mapping from counter to
//! sequence for every history read; the stream sequence needs neither.
//!
//! The *previous* offset of each message (contract item 2) is what makes the sequence
//! usable: every publish carries `Nats-Expected-Last-Subject-Sequence` and the same number in
//! a `Tether-Prev` header, so the server stores it only on top of that message (see
//! `publisher`). Measured on loopback against plain JetStream publishes in the same run
//! (`examples/nats_publish_cost.rs`, figures in docs/brokers.md): the chain costs a round
//! trip per publish per channel where plain publishes pipeline (one channel: about 0.1–0.7 ×
//! pipelined; 64 channels side by side: 0.3–0.85 ×); it buys a `prev` every node can trust
//! without reading anything back, which a blind publish cannot give at any speed.
//!
//! A stream deleted or recreated (a NATS restarted empty) numbers from 1 again, so offsets
//! are `base + sequence`, the base being the stream's creation time in microseconds, read
//! from the server: every node reads the same one, it changes exactly when the stream is
//! recreated, and a new stream's offsets start above the old one's (which handed out fewer
//! sequences than microseconds passed) — the epoch of contract item 4, as
//! [`crate::protocol::Offset::fresh_base`] is for memory and Redis. The base is read again
//! after every reconnect and by every health probe, so a stream recreated behind running
//! hubs is noticed within a probe interval (delete streams with the hubs stopped).
//!
//! # Faults
//! The client reconnects by itself; while it is away publishes, history reads and
//! subscribes fail at once ([`BrokerError::Unavailable`]), every round trip is bounded
//! ([`connection::REQUEST_TIMEOUT`]), and once back each node gets
//! [`crate::broker::BrokerEvent::Resync`] after the server confirmed its subscriptions, so
//! it refills from history what it missed.
//!
//! # Limits
//! A message (JSON data plus about 100 bytes of headers) must fit the server's
//! `max_payload` (1 MiB by default; raise it for hubs with `--max-message-size` near that).

use std::sync::{Arc, OnceLock};

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::value::RawValue;

use super::{
    Broker, BrokerError, BrokerOptions, Capabilities, Feed, FeedLimit, History, Link, Page,
};
use crate::protocol::{ChannelName, Offset};

mod address;
mod connection;
mod feed;
mod history;
mod publisher;

use address::{NatsUrl, Subjects};
use connection::Connection;

/// A broker backed by a NATS server (or cluster) with JetStream.
pub struct NatsBroker {
    connection: Arc<Connection>,
    /// Started by the first publish (it needs a runtime).
    publisher: OnceLock<publisher::Publisher>,
    feed_limit: FeedLimit,
}

impl NatsBroker {
    /// Parses `url`; connects on first use, so building the broker needs neither a runtime
    /// nor a reachable server.
    pub fn new(url: &str, options: BrokerOptions) -> Result<Self, BrokerError> {
        let url = NatsUrl::parse(url)?;
        let subjects = Subjects::new(&options.redis_prefix, url.stream.clone())?;
        // A stream has one set of limits for all its subjects (per-subject limits are not in
        // NATS 2.9): every channel keeps the widest of the namespaces' limits here.
        let policy = options.history.widest();
        if !options.history.is_uniform() {
            tracing::warn!(
                size = policy.size,
                ttl = ?policy.ttl,
                "the NATS broker keeps one history limit for every channel: namespaces' own \
                 history_size/history_ttl are not applied, the widest of them is"
            );
        }
        Ok(Self {
            connection: Connection::new(url, subjects, policy),
            publisher: OnceLock::new(),
            feed_limit: options.feed,
        })
    }

    /// The stream this broker keeps history in.
    pub fn stream_name(&self) -> &str {
        &self.connection.subjects.stream
    }

    fn publisher(&self) -> &publisher::Publisher {
        self.publisher
            .get_or_init(|| publisher::Publisher::spawn(self.connection.clone()))
    }
}

impl Broker for NatsBroker {
    fn publish(
        &self,
        channel: &ChannelName,
        data: Box<RawValue>,
    ) -> BoxFuture<'static, Result<Offset, BrokerError>> {
        self.publisher().publish(channel, data)
    }

    fn history_page<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        page: Page,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        history::page(&self.connection, channel, since, page).boxed()
    }

    fn attach(&self) -> (Arc<dyn Link>, Feed) {
        let (link, feed) = feed::attach(self.connection.clone(), self.feed_limit);
        (Arc::new(link), feed)
    }

    fn kind(&self) -> &'static str {
        "nats"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            history: true,
            shared_across_processes: true,
            // The stream is stored on file: history outlives a NATS restart.
            survives_restart: true,
        }
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        async move {
            self.connection.check_up()?;
            self.connection.refresh_epoch().await.map(|_| ())
        }
        .boxed()
    }
}
