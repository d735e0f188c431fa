//! Brokers: where offsets are assigned, history is kept and messages cross between nodes.
//!
//! A [`Broker`] is shared by every hub node that should act as one. Each node calls
//! [`Broker::attach`] once and gets a [`Link`]: its own live feed of publications for the
//! channels it subscribed through the link, plus [`BrokerEvent::Resync`] whenever the feed may
//! have lost messages (a reconnect), so the node refills from history.
//!
//! # The contract: what a broker must promise
//!
//! Written for the author of a new broker (NATS JetStream, Kafka, RabbitMQ streams …). The
//! hub's promise — a client that reconnects to any node gets every message it missed, in
//! order, once, or is told `recovered: false` — rests on these and nothing else; the
//! conformance suite (`tests/conformance.rs`) checks each of them against every broker.
//!
//! 1. **Offsets strictly increase per channel, and may have gaps.** [`Broker::publish`]
//!    returns the offset the broker assigned, the same for every node. A JetStream stream
//!    sequence or a Kafka partition offset qualifies: nothing in the hub assumes that the
//!    next offset is `offset + 1`. Offset 0 is never assigned (it means "the channel was
//!    empty").
//! 2. **Each delivery names the offset before it.** A live [`BrokerEvent::Publication`]
//!    carries `prev`, the offset the channel's log held just before this message (`None`
//!    for the first message of a log). A node that last delivered `prev` knows nothing is
//!    missing; anything else is a gap, refilled from [`Broker::history_page`].
//! 3. **History is contiguous in the broker's own numbering.** A page holds the retained
//!    messages after `since`, oldest first, with nothing left out between them; trimming
//!    (by size and by age, [`HistoryPolicy`]) only ever removes the oldest. Use
//!    [`History::from_retained`] to build the answer: it decides `recovered` the same way for
//!    every broker. It needs the offset before each page's first message when offsets have
//!    gaps; see [`History::from_log`].
//! 4. **An epoch per channel log.** When a channel's log is lost or recreated (the broker
//!    restarted empty, the keys expired, a stream was deleted from outside) its [`Epoch`]
//!    changes, and the offsets of the new log start above every offset the old one handed
//!    out. That second half is what keeps old clients working without an epoch on the wire:
//!    a `since` from the old log is below the new log's first offset, so the resume is
//!    answered `recovered: false`, never with a silent gap. Memory and Redis start a new
//!    log at the clock in microseconds ([`Offset::fresh_base`]); a broker whose numbering
//!    restarts at 1 must add such a base itself.
//! 5. **Stored before fanned out.** A publication is in history before any node's feed
//!    carries it, so a node that drops events (an overflow, a reconnect) refills them.
//! 6. **Errors are [`BrokerError`]**, whatever the broker: the hub answers each with a clear
//!    error (an `error` frame, HTTP 503) and never retries on its own behalf. Options only
//!    one broker understands live in that broker's module.
//! 7. **Say what you lack.** [`Broker::capabilities`] tells the hub, which reports it on
//!    `/health` and in metrics rather than promising what the broker cannot keep.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::value::RawValue;

use crate::protocol::{ChannelName, Offset, Publication};

pub mod feed;
pub mod health;
pub mod memory;
pub mod nats;
pub mod policy;
pub mod redis;

pub use feed::{Feed, FeedLimit};
pub use health::BrokerState;
pub use policy::{HistoryPolicies, HistoryPolicy};

/// Options for [`broker_with`].
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Per channel, by namespace (see [`policy`]).
    pub history: HistoryPolicies,
    /// Prefix of every Redis key and pub/sub channel, and of every NATS subject (and the
    /// default stream name, `TETHER_<prefix>`), so deployments and tests can share a
    /// Redis or a NATS without seeing each other.
    pub redis_prefix: String,
    /// How much each node's feed holds before it overflows into a resync (see `feed`).
    pub feed: FeedLimit,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            history: HistoryPolicies::default(),
            redis_prefix: "tether".into(),
            feed: FeedLimit::DEFAULT,
        }
    }
}

/// How much one history read may return. A replay reads a channel's history page by page,
/// asking for the next page only once the previous one was written to the client, so what
/// a subscribe costs the broker and the node is one page however much the channel holds:
/// a channel of 1000 × 60 KB messages read whole by twenty clients at once grew Redis by
/// 1.4 GB and stalled everyone's publishes for seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// At most this many messages.
    pub messages: NonZeroUsize,
    /// At most this many bytes of message data, except that a page always holds at least
    /// one message (when there is one), so a reader always makes progress.
    pub bytes: NonZeroUsize,
}

impl Page {
    /// 256 messages or 1 MiB: small enough that a page in flight per client is cheap, large
    /// enough that a replay of small messages takes few round trips.
    pub const DEFAULT: Page = Page {
        messages: NonZeroUsize::new(256).unwrap(),
        bytes: NonZeroUsize::new(1024 * 1024).unwrap(),
    };
}

impl Default for Page {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Which incarnation of a channel's log an answer comes from (see the contract, item 4).
/// Two answers with different epochs come from different logs: what the first said about
/// offsets says nothing about the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u64);

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a broker can and cannot do; the hub reports it rather than promise more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Keeps per-channel history, so a client can resume. Without it every resume that
    /// missed anything is answered `recovered: false`.
    pub history: bool,
    /// Nodes in different processes (or machines) share it. The memory broker only joins
    /// nodes inside one process.
    pub shared_across_processes: bool,
    /// History outlives a restart of the broker itself (memory: lost with the process;
    /// Redis: only as durable as the server's persistence, which the hub cannot see, so
    /// it says no).
    pub survives_restart: bool,
}

impl Capabilities {
    /// The names of what is missing, for `/health` and logs.
    pub fn lacks(&self) -> Vec<&'static str> {
        let mut lacks = Vec::new();
        if !self.history {
            lacks.push("history");
        }
        if !self.shared_across_processes {
            lacks.push("shared_across_processes");
        }
        if !self.survives_restart {
            lacks.push("survives_restart");
        }
        lacks
    }
}

/// The answer to a history query: one page of it.
#[derive(Debug)]
pub struct History {
    /// The newest offset the channel has handed out (0 if it never had a message).
    pub top: Offset,
    /// The offset just before the first message of the channel's current history (a fresh
    /// history starts at a time-based offset, see [`Offset::fresh_base`]); `None` while the
    /// channel has no history, or when the broker does not know it (a Redis sequence
    /// written by an older version). It is what lets `since: 0` ("I saw this channel
    /// empty") tell an untrimmed history from a trimmed one.
    pub base: Option<Offset>,
    /// Whether `messages` holds every message after `since`; `false` when the history was
    /// trimmed (size or age) past `since` or restarted after data loss.
    pub recovered: bool,
    /// Retained messages after `since`, oldest first (empty when `since` was not given),
    /// at most one [`Page`] of them.
    pub messages: Vec<Arc<Publication>>,
    /// Whether the page limit cut the answer short: more messages follow the last one in
    /// `messages`; read them with that message's offset as `since`.
    pub more: bool,
    /// The log this answer was read from; `None` while the channel has no log.
    pub epoch: Option<Epoch>,
}

impl History {
    /// Builds the answer from the retained messages after `since`, which must be contiguous
    /// and ascending (both brokers trim only from the head), in a log whose offsets go up by
    /// one (memory, Redis). The log's epoch is its base: a recreated log has a new one.
    pub fn from_retained(
        top: Offset,
        base: Option<Offset>,
        since: Option<Offset>,
        messages: Vec<Arc<Publication>>,
        more: bool,
    ) -> Self {
        let recovered = match since {
            None => true,
            Some(since) if since == top => true,
            Some(since) if since > top => false,
            // The client saw the channel empty: it missed nothing only if the history still
            // begins with its very first message. An unknown base is taken as 0, which no
            // time-based history starts at, so the answer stays the cautious `false`.
            Some(Offset(0)) => starts_at(&messages, base.unwrap_or(Offset(0)).next()),
            Some(since) => starts_at(&messages, since.next()),
        };
        Self {
            top,
            base,
            recovered,
            messages,
            more,
            epoch: base.map(|b| Epoch(b.0)),
        }
    }

    /// Builds the answer for a log whose offsets may have gaps: `before_first` is the
    /// offset the log held just before the first of `messages` (`None` when that message
    /// is the first the log ever had, or when `messages` is empty and nothing after
    /// `since` is retained). `since` was reached without loss exactly when that offset is
    /// `since` itself, or when nothing after `since` was ever written.
    pub fn from_log(
        top: Offset,
        epoch: Option<Epoch>,
        since: Option<Offset>,
        before_first: Option<Offset>,
        messages: Vec<Arc<Publication>>,
        more: bool,
    ) -> Self {
        let recovered = match since {
            None => true,
            Some(since) if since == top => true,
            Some(since) if since > top => false,
            Some(Offset(0)) => !messages.is_empty() && before_first.is_none(),
            Some(since) => !messages.is_empty() && before_first == Some(since),
        };
        Self {
            top,
            base: None,
            recovered,
            messages,
            more,
            epoch,
        }
    }
}

/// Takes messages from `retained` (ascending) while they fit in `page`; returns them and
/// whether any were left out.
pub(crate) fn paginate<'a>(
    retained: impl Iterator<Item = &'a Arc<Publication>>,
    page: Page,
) -> (Vec<Arc<Publication>>, bool) {
    let mut taken = Vec::new();
    let mut bytes = 0usize;
    for p in retained {
        let size = p.data.get().len();
        let full = taken.len() >= page.messages.get()
            || (!taken.is_empty() && bytes.saturating_add(size) > page.bytes.get());
        if full {
            return (taken, true);
        }
        bytes = bytes.saturating_add(size);
        taken.push(p.clone());
    }
    (taken, false)
}

/// Whether the first of `messages` is the one at `offset` (nothing before it is missing).
fn starts_at(messages: &[Arc<Publication>], offset: Offset) -> bool {
    messages.first().is_some_and(|m| m.offset == offset)
}

/// What a node's live feed carries.
#[derive(Debug)]
pub enum BrokerEvent {
    /// A new message, and the offset its channel's log held before it (`None`: the first
    /// message of a log). See the contract, item 2.
    Publication {
        publication: Arc<Publication>,
        prev: Option<Offset>,
    },
    /// The feed was interrupted and is back: messages may have been missed; refill from
    /// history for every channel.
    Resync,
    /// The feed is down (the reason is for logs and metrics); a `Resync` follows when it is
    /// back.
    Lost(String),
    /// The node fell behind and its feed dropped events (see `feed`): refill every channel
    /// from history, as for `Resync`.
    Overflowed,
}

/// Why a broker operation failed, the same for every broker (each maps its client's errors
/// into these). Every variant but the URL ones is transient from the hub's point of view:
/// the operation is answered with an error and retried by whoever asked. Clone, because one
/// failed round trip can fail a whole batch of publishes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("unsupported broker URL {0:?}: expected \"memory\", \"redis://host:port/db\", \"rediss://host:port/db?ca=FILE\" or \"nats://host:port\"")]
    UnsupportedUrl(String),
    /// The URL names a known broker but cannot be used (the reason never repeats a
    /// password).
    #[error("bad {broker} URL: {reason}")]
    BadUrl {
        broker: &'static str,
        reason: String,
    },
    /// The broker could not be reached, or the connection broke.
    #[error("{broker} unavailable: {reason}")]
    Unavailable {
        broker: &'static str,
        reason: String,
    },
    /// The broker answered, and refused the operation.
    #[error("{broker} refused the operation: {reason}")]
    Refused {
        broker: &'static str,
        reason: String,
    },
    #[error("broker reply was malformed: {0}")]
    BadReply(String),
    #[error("broker is not connected")]
    Disconnected,
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
}

impl BrokerError {
    /// A short name of the variant, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            BrokerError::UnsupportedUrl(_) => "unsupported_url",
            BrokerError::BadUrl { .. } => "bad_url",
            BrokerError::Unavailable { .. } => "unavailable",
            BrokerError::Refused { .. } => "refused",
            BrokerError::BadReply(_) => "bad_reply",
            BrokerError::Disconnected => "disconnected",
            BrokerError::Timeout(_) => "timeout",
        }
    }

    /// Whether the broker could not be reached at all (rather than answering with a
    /// refusal or a reply the hub could not read).
    pub fn means_unreachable(&self) -> bool {
        matches!(
            self,
            BrokerError::Unavailable { .. } | BrokerError::Disconnected | BrokerError::Timeout(_)
        )
    }
}

/// A message bus with per-channel offsets and history. Object-safe so hubs hold
/// `Arc<dyn Broker>` and the CLI picks the implementation from a URL.
pub trait Broker: Send + Sync + 'static {
    /// Assigns the next offset of `channel`, stores the message in history and fans it out
    /// to every link subscribed to the channel, in offset order.
    ///
    /// The message is handed to the broker by this call, not when the future is first
    /// polled: publishes called in sequence are numbered in that sequence, however many
    /// are awaited at once.
    fn publish(
        &self,
        channel: &ChannelName,
        data: Box<RawValue>,
    ) -> BoxFuture<'static, Result<Offset, BrokerError>>;

    /// The channel's top offset and, with `since`, the first [`Page`] of retained messages
    /// after it ([`History::more`] says whether the page limit left some out).
    fn history_page<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        page: Page,
    ) -> BoxFuture<'a, Result<History, BrokerError>>;

    /// [`Broker::history_page`] with the [`Page::DEFAULT`] limits.
    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        self.history_page(channel, since, Page::DEFAULT)
    }

    /// Opens one node's live feed, bounded as the broker's options say.
    fn attach(&self) -> (Arc<dyn Link>, Feed);

    /// Short name for logs and metrics ("memory", "redis").
    fn kind(&self) -> &'static str;

    /// What this broker can and cannot do (see the contract, item 7).
    fn capabilities(&self) -> Capabilities;

    /// One cheap round trip that succeeds only while the broker is reachable; a node runs
    /// it every second for `/health` (see `health`). By default a history read of a
    /// channel nobody uses, which creates nothing.
    fn probe(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        async move {
            let probe = ChannelName::parse("tether-probe")
                .map_err(|e| BrokerError::BadReply(format!("probe channel name refused: {e}")))?;
            self.history(&probe, None).await.map(|_| ())
        }
        .boxed()
    }

    /// What this handle knows of the broker's reachability: [`BrokerState::Unknown`] unless
    /// it is watched (a node's broker is, see `health::Watched`).
    fn state(&self) -> BrokerState {
        BrokerState::Unknown
    }
}

/// One node's subscriptions. Reference-counted per channel: the feed carries a channel
/// while at least one `subscribe` has not been matched by an `unsubscribe`, so the callers
/// need not order their calls.
pub trait Link: Send + Sync + 'static {
    /// Returns once publications of `channel` are guaranteed to reach this link's feed.
    fn subscribe<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<(), BrokerError>>;
    fn unsubscribe(&self, channel: &ChannelName);
}

/// Builds a broker from its URL with default options: `memory`, `redis://host:port/db` or
/// `nats://host:port`.
pub fn broker_from_url(url: &str) -> Result<Arc<dyn Broker>, BrokerError> {
    broker_with(url, BrokerOptions::default())
}

/// Builds a broker from its URL with explicit history limits and Redis key prefix.
pub fn broker_with(url: &str, options: BrokerOptions) -> Result<Arc<dyn Broker>, BrokerError> {
    if url == "memory" || url == "memory://" {
        return Ok(Arc::new(
            memory::MemoryBroker::new(options.history).with_feed_limit(options.feed),
        ));
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(Arc::new(redis::RedisBroker::new(url, options)?));
    }
    if url.starts_with("nats://") {
        return Ok(Arc::new(nats::NatsBroker::new(url, options)?));
    }
    Err(BrokerError::UnsupportedUrl(url.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(offset: u64) -> Arc<Publication> {
        let data = RawValue::from_string("1".into()).unwrap();
        Publication::new(ChannelName::parse("c").unwrap(), Offset(offset), data)
    }

    #[test]
    fn recovered_only_when_history_reaches_since() {
        let base = Some(Offset(3));
        let reaches = History::from_retained(
            Offset(5),
            base,
            Some(Offset(3)),
            vec![publication(4), publication(5)],
            false,
        );
        assert!(reaches.recovered);
        let trimmed = History::from_retained(
            Offset(5),
            Some(Offset(1)),
            Some(Offset(2)),
            vec![publication(4), publication(5)],
            false,
        );
        assert!(!trimmed.recovered);
        let up_to_date = History::from_retained(Offset(5), base, Some(Offset(5)), vec![], false);
        assert!(up_to_date.recovered);
        let from_lost_history =
            History::from_retained(Offset(5), base, Some(Offset(9)), vec![], false);
        assert!(!from_lost_history.recovered);
    }

    #[test]
    fn since_zero_is_recovered_while_history_starts_at_its_base() {
        let base = 1_700_000_000_000_000;
        let untrimmed = History::from_retained(
            Offset(base + 3),
            Some(Offset(base)),
            Some(Offset(0)),
            (base + 1..=base + 3).map(publication).collect(),
            false,
        );
        assert!(
            untrimmed.recovered,
            "nothing was trimmed: all 3 are replayed"
        );
        assert_eq!(untrimmed.messages.len(), 3);
        let trimmed = History::from_retained(
            Offset(base + 3),
            Some(Offset(base)),
            Some(Offset(0)),
            (base + 2..=base + 3).map(publication).collect(),
            false,
        );
        assert!(!trimmed.recovered, "the first message was trimmed");
        let expired = History::from_retained(
            Offset(base + 3),
            Some(Offset(base)),
            Some(Offset(0)),
            vec![],
            false,
        );
        assert!(!expired.recovered, "everything expired");
        let still_empty = History::from_retained(Offset(0), None, Some(Offset(0)), vec![], false);
        assert!(still_empty.recovered);
    }

    #[test]
    fn since_zero_with_an_unknown_base_is_not_recovered() {
        let base = 1_700_000_000_000_000;
        let history = History::from_retained(
            Offset(base + 1),
            None,
            Some(Offset(0)),
            vec![publication(base + 1)],
            false,
        );
        assert!(
            !history.recovered,
            "without the base nobody knows what came first"
        );
    }

    #[test]
    fn a_page_stops_at_its_message_or_byte_limit_but_never_empty() {
        let retained: Vec<_> = (1..=5).map(publication).collect();
        let by_count = Page {
            messages: NonZeroUsize::new(2).unwrap(),
            bytes: NonZeroUsize::new(1024).unwrap(),
        };
        let (taken, more) = paginate(retained.iter(), by_count);
        assert_eq!(taken.len(), 2);
        assert!(more);
        // Each message's data is 1 byte: 3 bytes hold 3 of them.
        let by_bytes = Page {
            messages: NonZeroUsize::new(100).unwrap(),
            bytes: NonZeroUsize::new(3).unwrap(),
        };
        let (taken, more) = paginate(retained.iter(), by_bytes);
        assert_eq!(taken.len(), 3);
        assert!(more);
        let tiny = Page {
            messages: NonZeroUsize::new(100).unwrap(),
            bytes: NonZeroUsize::new(1).unwrap(),
        };
        let big = Publication::new(
            ChannelName::parse("c").unwrap(),
            Offset(1),
            RawValue::from_string("\"a long message\"".into()).unwrap(),
        );
        let (taken, more) = paginate([big].iter(), tiny);
        assert_eq!(
            taken.len(),
            1,
            "one message larger than the page still goes"
        );
        assert!(!more);
        let (taken, more) = paginate(retained.iter(), Page::DEFAULT);
        assert_eq!(taken.len(), 5);
        assert!(!more);
    }

    #[test]
    fn a_log_with_gaps_is_recovered_when_the_page_starts_right_after_since() {
        // Offsets 10, 13, 20: the log held 13 before 20.
        let page = vec![publication(20)];
        let h = History::from_log(
            Offset(20),
            Some(Epoch(1)),
            Some(Offset(13)),
            Some(Offset(13)),
            page,
            false,
        );
        assert!(h.recovered, "20 follows 13 although 14..19 never existed");
        let page = vec![publication(20)];
        let h = History::from_log(
            Offset(20),
            Some(Epoch(1)),
            Some(Offset(10)),
            Some(Offset(13)),
            page,
            false,
        );
        assert!(!h.recovered, "13 was trimmed: the client at 10 missed it");
        let page = vec![publication(10)];
        let h = History::from_log(
            Offset(20),
            Some(Epoch(1)),
            Some(Offset(0)),
            None,
            page,
            true,
        );
        assert!(h.recovered, "the page starts at the log's first message");
        let h = History::from_log(
            Offset(20),
            Some(Epoch(1)),
            Some(Offset(5)),
            None,
            vec![],
            false,
        );
        assert!(!h.recovered, "nothing retained after 5 although 20 exists");
        let h = History::from_log(
            Offset(20),
            Some(Epoch(1)),
            Some(Offset(20)),
            None,
            vec![],
            false,
        );
        assert!(h.recovered, "up to date");
    }

    #[test]
    fn capabilities_name_what_is_missing() {
        let all = Capabilities {
            history: true,
            shared_across_processes: true,
            survives_restart: true,
        };
        assert!(all.lacks().is_empty());
        let memory = broker_from_url("memory").unwrap().capabilities();
        assert_eq!(
            memory.lacks(),
            vec!["shared_across_processes", "survives_restart"]
        );
    }

    #[test]
    fn unknown_broker_url_is_an_error() {
        assert!(matches!(
            broker_from_url("kafka://x"),
            Err(BrokerError::UnsupportedUrl(_))
        ));
    }
}
