//! A node's channels: who on this node listens to what, and the per-channel task that hands
//! each publication to them exactly once, in offset order, with no gap.
//!
//! One dispatcher task per channel with local subscribers. It subscribes the node's broker
//! link to the channel (so the node only hears channels someone here wants), remembers the
//! last offset it delivered, drops repeats, and when an offset skips ahead (a pub/sub
//! message lost in a reconnect) or the feed announces a resync, it refills the hole from the
//! broker's history before going on.
//!
//! The dispatchers, and the task routing the broker's feed to them, run on the broker lane
//! (see `lane`): a publication is handed out without waiting behind the node's writes.
//!
//! The dispatcher hands its subscribers batches, not single messages: whatever the feed
//! brought in one go. A burst thus costs each subscriber one queue operation and one wake.
//!
//! The queue from the router to each dispatcher is bounded too (see [`Backlog`]): the feed
//! in front of the router is bounded, but the router empties it as fast as it can, so
//! without a second bound a channel whose dispatcher falls behind (a burst on one hot
//! channel, a lane starved of CPU) would just move the unbounded queue one hop further
//! in. What does not fit is dropped and replaced by one refill from history, which holds
//! every publication already (brokers store before they fan out): nothing is lost, and
//! the cost of falling behind is a history read, counted in
//! `tether_hub_channel_overflows_total`.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::broker::{Broker, BrokerError, BrokerEvent, Feed, Link};
use crate::mailbox::{Batch, Postbox, Posted};
use crate::metrics::{BrokerOp, Metrics};
use crate::protocol::{ChannelName, Offset, Publication};

/// Identifies one WebSocket connection in logs and in channel membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

impl SessionId {
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// How a dispatcher reaches one session. A session whose inbox overflows is dropped from
/// the channel (its [`Postbox`] tells it to close: it lost messages).
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub id: SessionId,
    pub postbox: Postbox,
}

enum Command {
    Join(Subscriber, oneshot::Sender<Result<(), BrokerError>>),
    Leave(SessionId),
    Deliver(Arc<Publication>, Option<Offset>),
    Resync,
}

struct Entry {
    members: usize,
    commands: mpsc::UnboundedSender<Command>,
    backlog: Arc<Backlog>,
}

/// What waits in one dispatcher's queue, shared by the router (which adds) and the
/// dispatcher (which takes). Only publications count: joins and leaves are bounded by the
/// node's sessions, and at most one refill is ever asked for at a time.
#[derive(Default)]
struct Backlog {
    publications: AtomicUsize,
    /// A refill was queued and the dispatcher has not started it yet.
    refill_asked: AtomicBool,
}

impl Backlog {
    /// Takes a place for one more publication, if there is one below `limit`.
    fn admit(&self, limit: NonZeroUsize) -> bool {
        self.publications
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit.get()).then_some(n + 1)
            })
            .is_ok()
    }

    fn taken(&self) {
        self.publications.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether a refill must be queued: true once until the dispatcher starts it.
    fn ask_refill(&self) -> bool {
        !self.refill_asked.swap(true, Ordering::AcqRel)
    }
}

/// The channels of one node.
pub struct Channels {
    entries: Mutex<HashMap<ChannelName, Entry>>,
    link: Arc<dyn Link>,
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    router: Mutex<Option<JoinHandle<()>>>,
    /// Publications that may wait for one dispatcher (see [`Backlog`]).
    per_channel: NonZeroUsize,
}

impl Channels {
    /// Attaches the node to `broker` and starts routing its feed to the channel tasks.
    pub fn new(broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Arc<Self> {
        let (link, events) = broker.attach();
        let channels = Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            link,
            broker,
            metrics,
            router: Mutex::new(None),
            per_channel: events.limit().per_channel,
        });
        let router = crate::lane::spawn(route(Arc::downgrade(&channels), events));
        *channels.router.lock().unwrap_or_else(|p| p.into_inner()) = Some(router);
        channels
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<ChannelName, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `subscriber` to `channel`. Once this returns `Ok`, every publication of the
    /// channel from then on reaches the subscriber's inbox.
    pub async fn join(
        &self,
        channel: &ChannelName,
        subscriber: Subscriber,
    ) -> Result<(), BrokerError> {
        let id = subscriber.id;
        let (ack, acked) = oneshot::channel();
        {
            let mut entries = self.entries();
            let entry = entries
                .entry(channel.clone())
                .or_insert_with(|| self.spawn_dispatcher(channel));
            entry.members += 1;
            // The dispatcher lives while its entry does, so this send cannot fail.
            let _ = entry.commands.send(Command::Join(subscriber, ack));
        }
        let result = acked.await.unwrap_or(Err(BrokerError::Disconnected));
        if result.is_err() {
            self.metrics.broker_error(BrokerOp::Subscribe);
            self.leave(channel, id);
        }
        result
    }

    /// Removes a session from a channel; the last one out stops the channel's task, which
    /// unsubscribes the node from the broker.
    pub fn leave(&self, channel: &ChannelName, id: SessionId) {
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(channel) else {
            return;
        };
        let _ = entry.commands.send(Command::Leave(id));
        entry.members -= 1;
        if entry.members == 0 {
            // Dropping the sender ends the dispatcher.
            entries.remove(channel);
        }
    }

    fn spawn_dispatcher(&self, channel: &ChannelName) -> Entry {
        let (commands, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::default());
        let dispatcher = Dispatcher {
            backlog: backlog.clone(),
            channel: channel.clone(),
            link: self.link.clone(),
            broker: self.broker.clone(),
            metrics: self.metrics.clone(),
            subscribers: Vec::new(),
            last: None,
            started: false,
            retry_at: None,
            pending: Vec::new(),
        };
        let span = tracing::debug_span!("channel", %channel);
        crate::lane::spawn(dispatcher.run(rx).instrument(span));
        Entry {
            members: 0,
            commands,
            backlog,
        }
    }

    /// Queues `p` for its channel's dispatcher, or, when the dispatcher is `per_channel`
    /// behind, drops it and queues one refill from history in its place.
    fn deliver(&self, p: Arc<Publication>, prev: Option<Offset>) {
        let entries = self.entries();
        let Some(entry) = entries.get(&p.channel) else {
            return;
        };
        if entry.backlog.admit(self.per_channel) {
            let _ = entry.commands.send(Command::Deliver(p, prev));
        } else if entry.backlog.ask_refill() {
            tracing::debug!(channel = %p.channel, "channel fell behind its feed; refilling from history");
            self.metrics.channel_overflows.inc();
            let _ = entry.commands.send(Command::Resync);
        }
    }

    fn resync_all(&self) {
        for entry in self.entries().values() {
            let _ = entry.commands.send(Command::Resync);
        }
    }
}

impl Drop for Channels {
    fn drop(&mut self) {
        if let Some(router) = self
            .router
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            router.abort();
        }
    }
}

/// Hands the node's broker feed to the channel tasks.
async fn route(channels: Weak<Channels>, mut events: Feed) {
    while let Some(event) = events.recv().await {
        let Some(channels) = channels.upgrade() else {
            return;
        };
        match event {
            BrokerEvent::Publication { publication, prev } => channels.deliver(publication, prev),
            BrokerEvent::Resync => channels.resync_all(),
            BrokerEvent::Overflowed => {
                tracing::warn!(
                    "node fell behind its broker feed; refilling every channel from history"
                );
                channels.metrics.feed_overflows.inc();
                channels.resync_all();
            }
            BrokerEvent::Lost(reason) => {
                tracing::warn!(%reason, "broker feed lost");
                channels.metrics.broker_error(BrokerOp::Feed);
            }
        }
    }
}

struct Dispatcher {
    channel: ChannelName,
    backlog: Arc<Backlog>,
    link: Arc<dyn Link>,
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    subscribers: Vec<Subscriber>,
    /// The last offset accepted for the subscribers (handed over, or in `pending`); `None`
    /// until the channel has a message.
    last: Option<Offset>,
    /// Whether the link is subscribed and `last` initialised.
    started: bool,
    /// When to try again a refill that failed (the broker was unreachable).
    retry_at: Option<tokio::time::Instant>,
    /// Accepted, in offset order, and not yet handed over.
    pending: Vec<Arc<Publication>>,
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How long a dispatcher waits before retrying a failed refill.
const REFILL_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Commands a dispatcher takes from its queue before handing over what they brought: enough
/// to fold a burst into one batch, few enough that the first of them does not wait long.
const COMMANDS_PER_TURN: usize = 256;

impl Dispatcher {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let retry_at = self.retry_at;
            let command = tokio::select! {
                command = commands.recv() => command,
                _ = sleep_until_some(retry_at) => {
                    self.retry_at = None;
                    self.refill(None).await;
                    self.hand_over();
                    continue;
                }
            };
            let Some(command) = command else { break };
            self.handle(command).await;
            // What else the feed already brought joins the same batch.
            for _ in 1..COMMANDS_PER_TURN {
                match commands.try_recv() {
                    Ok(command) => self.handle(command).await,
                    Err(_) => break,
                }
            }
            self.hand_over();
        }
        if self.started {
            self.link.unsubscribe(&self.channel);
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Join(subscriber, ack) => {
                let result = self
                    .start()
                    .await
                    .map(|()| self.subscribers.push(subscriber));
                let _ = ack.send(result);
            }
            Command::Leave(id) => self.subscribers.retain(|s| s.id != id),
            Command::Deliver(p, prev) => {
                self.backlog.taken();
                if self.started {
                    self.accept(p, prev).await;
                }
            }
            Command::Resync => {
                // From here on a new overflow must ask again: this refill may already
                // have read past what it drops.
                self.backlog.refill_asked.store(false, Ordering::Release);
                if self.started {
                    self.refill(None).await;
                }
            }
        }
    }

    /// Subscribes the node to the channel, then reads where the channel stands: anything
    /// after that offset will come through the feed, which is already listening.
    async fn start(&mut self) -> Result<(), BrokerError> {
        if self.started {
            return Ok(());
        }
        self.link.subscribe(&self.channel).await?;
        match self.broker.history(&self.channel, None).await {
            Ok(history) => {
                self.last = (history.top != Offset(0)).then_some(history.top);
                self.started = true;
                Ok(())
            }
            Err(error) => {
                self.metrics.broker_error(BrokerOp::History);
                self.link.unsubscribe(&self.channel);
                Err(error)
            }
        }
    }

    /// Hands `p` on when it follows what was delivered last (its `prev` says so, see the
    /// broker contract: offsets may have gaps), drops it when it was delivered already, and
    /// otherwise refills the hole before it from history. A `prev` of `None` after
    /// messages were delivered means the channel's log was recreated (a new epoch): the
    /// refill reads the new log from the start.
    async fn accept(&mut self, p: Arc<Publication>, prev: Option<Offset>) {
        match self.last {
            Some(last) if p.offset <= last => {}
            last if prev == last => self.fan_out(p),
            _ => self.refill(Some(p)).await,
        }
    }

    /// Delivers what history holds after `last`, then `trigger` if history did not have it.
    /// History is read a page at a time, each page handed over before the next is read,
    /// so a long hole costs one page in memory, not the whole of it.
    /// When the broker cannot answer, nothing more is delivered (that would skip the hole
    /// for good); the refill is retried shortly, and the messages stay in history meanwhile.
    async fn refill(&mut self, trigger: Option<Arc<Publication>>) {
        loop {
            // With nothing delivered yet the channel was empty when this dispatcher started,
            // so every message in its history came later: ask from 0 ("saw it empty"), not
            // for the top alone, or the channel's first messages missed by the feed would
            // be skipped.
            let since = self.last.unwrap_or(Offset(0));
            let history = match self.broker.history(&self.channel, Some(since)).await {
                Ok(history) => history,
                Err(error) => {
                    self.metrics.broker_error(BrokerOp::History);
                    tracing::warn!(%error, "could not refill from history; retrying");
                    self.retry_at = Some(tokio::time::Instant::now() + REFILL_RETRY);
                    return;
                }
            };
            if !history.recovered {
                // Messages after `since` are gone from the log (trimmed, or lost with the
                // broker's data). Subscribers are told by being closed (1013): each client
                // resumes from the last offset it saw and is answered `recovered: false`.
                // Carrying on after the hole would be silent loss.
                self.hand_over();
                tracing::warn!(%since, top = %history.top, subscribers = self.subscribers.len(),
                    "history no longer reaches back to the last delivered offset; closing the channel's subscribers so they resume and learn of the gap");
                self.metrics.channel_gaps.inc();
                for s in self.subscribers.drain(..) {
                    s.postbox.lost();
                }
                // Everyone owed the hole has been told, and whoever joins from now on
                // replays history for itself: the dispatcher goes on from where the log
                // stands now. Not from `last`: after a lost log that lies above the new
                // log's top (0 while the new log is empty), and the new log's first message
                // would look like one more hole and close the clients that had just
                // resumed and been told, for nothing (found by the soak; `lost_log.rs`).
                self.last = (history.top != Offset(0)).then_some(history.top);
                break;
            }
            for p in history.messages {
                if self.last.is_none_or(|last| p.offset > last) {
                    self.fan_out(p);
                }
            }
            if !history.more {
                break;
            }
            self.hand_over();
        }
        if let Some(p) = trigger {
            if self.last.is_none_or(|last| p.offset > last) {
                self.fan_out(p);
            }
        }
    }

    /// Accepts `p` for the subscribers: it goes out with the next hand-over.
    fn fan_out(&mut self, p: Arc<Publication>) {
        self.last = Some(p.offset);
        self.pending.push(p);
    }

    /// Gives every subscriber the pending messages as one batch, dropping those whose
    /// inbox overflowed (they were told to close) or whose session ended.
    fn hand_over(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch: Batch = self.pending.drain(..).collect();
        self.subscribers
            .retain(|s| s.postbox.post(&batch) == Posted::Queued);
    }
}
