//! The in-process broker: one mutex orders every channel's offsets, history and fan-out.
//!
//! Several hubs inside one process (the demo runs three) share one `MemoryBroker` and act
//! as one, exactly as separate processes do through Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Once, Weak};
use std::time::{Duration, Instant};

use futures_util::future::{self, BoxFuture, FutureExt};
use serde_json::value::RawValue;

use super::feed::{self, Feed, FeedLimit, FeedSender};
use super::{
    paginate, Broker, BrokerError, BrokerEvent, Capabilities, History, HistoryPolicies,
    HistoryPolicy, Link, Page,
};
use crate::protocol::{ChannelName, Offset, Publication};

type LinkId = u64;

/// History and live fan-out inside one process.
pub struct MemoryBroker {
    state: Arc<Mutex<State>>,
    policies: Arc<HistoryPolicies>,
    feed_limit: FeedLimit,
    /// Starts the sweeper on first use (it needs a runtime; building the broker does not).
    sweeper: Once,
}

#[derive(Default)]
struct State {
    channels: HashMap<ChannelName, ChannelLog>,
    next_link: LinkId,
}

/// How often expired messages are dropped from every channel: a fraction of the ttl, so
/// nothing outlives it by much, but not so often that a node with many channels spends
/// its time sweeping.
fn sweep_interval(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
}

impl State {
    /// Drops expired messages, and forgets channels left with no history and no
    /// subscriber: 100 000 channels published once used to hold a hub at 59 MB for good.
    /// A forgotten channel is as if it never existed: a resume from one of its offsets
    /// is answered `recovered: false`, and its next message starts a fresh history at
    /// the current time (see [`Offset::fresh_base`]), above every offset it had before.
    /// A channel still subscribed keeps its top offset (a few bytes), which lets a resume
    /// from that offset say `recovered: true` truthfully.
    fn sweep(&mut self, policies: &HistoryPolicies, now: Instant) {
        self.channels.retain(|name, log| {
            log.trim(policies.for_channel(name), now);
            !log.is_forgettable()
        });
        // Give the memory of a burst of channels back once they are gone.
        if self.channels.capacity() > 64 && self.channels.len() < self.channels.capacity() / 4 {
            self.channels.shrink_to_fit();
        }
    }
}

#[derive(Default)]
struct ChannelLog {
    /// The offset before the first message, fixed when the first message is published.
    base: Option<Offset>,
    top: Option<Offset>,
    retained: VecDeque<(Instant, Arc<Publication>)>,
    /// Links subscribed to this channel, with how many times each subscribed.
    links: HashMap<LinkId, (usize, FeedSender)>,
}

impl ChannelLog {
    /// The offset of the next message; the first one fixes the history's time-based base.
    fn next_offset(&mut self) -> Offset {
        let base = *self.base.get_or_insert_with(Offset::fresh_base);
        let offset = self.top.unwrap_or(base).next();
        self.top = Some(offset);
        offset
    }

    /// Nothing left worth keeping: no retained message and no link listening.
    fn is_forgettable(&self) -> bool {
        self.retained.is_empty() && self.links.is_empty()
    }

    fn trim(&mut self, policy: HistoryPolicy, now: Instant) {
        while self.retained.len() > policy.size {
            self.retained.pop_front();
        }
        while self
            .retained
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > policy.ttl)
        {
            self.retained.pop_front();
        }
    }
}

impl MemoryBroker {
    /// `policies`: one [`HistoryPolicy`] for all channels, or [`HistoryPolicies`] by namespace.
    pub fn new(policies: impl Into<HistoryPolicies>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            policies: Arc::new(policies.into()),
            feed_limit: FeedLimit::DEFAULT,
            sweeper: Once::new(),
        }
    }

    /// Bounds each node's feed by `limit` instead of [`FeedLimit::DEFAULT`].
    pub fn with_feed_limit(mut self, limit: FeedLimit) -> Self {
        self.feed_limit = limit;
        self
    }

    /// How many channels the broker holds state for (retained history or subscribers).
    pub fn channel_count(&self) -> usize {
        lock(&self.state).channels.len()
    }

    /// Starts the task that sweeps expired history while the broker lives.
    fn start_sweeper(&self) {
        self.sweeper.call_once(|| {
            let state = Arc::downgrade(&self.state);
            crate::lane::spawn(sweep(state, self.policies.clone()));
        });
    }
}

async fn sweep(state: Weak<Mutex<State>>, policies: Arc<HistoryPolicies>) {
    let mut tick = tokio::time::interval(sweep_interval(policies.shortest_ttl()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        lock(&state).sweep(&policies, Instant::now());
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding this lock cannot leave the maps half-updated in a way later
    // calls would misread, so a poisoned lock is still usable.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Broker for MemoryBroker {
    fn publish(
        &self,
        channel: &ChannelName,
        data: Box<RawValue>,
    ) -> BoxFuture<'static, Result<Offset, BrokerError>> {
        self.start_sweeper();
        let now = Instant::now();
        let mut state = lock(&self.state);
        let log = state.channels.entry(channel.clone()).or_default();
        let prev = log.top;
        let offset = log.next_offset();
        let publication = Publication::new(channel.clone(), offset, data);
        log.retained.push_back((now, publication.clone()));
        log.trim(self.policies.for_channel(channel), now);
        // Sending under the lock is what keeps every link's feed in offset order.
        log.links.retain(|_, (_, tx)| {
            tx.send(BrokerEvent::Publication {
                publication: publication.clone(),
                prev,
            })
            .is_ok()
        });
        future::ready(Ok(offset)).boxed()
    }

    fn history_page<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        page: Page,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let answer = match state.channels.get_mut(channel) {
            None => History::from_retained(Offset(0), None, since, Vec::new(), false),
            Some(log) => {
                log.trim(self.policies.for_channel(channel), now);
                let top = log.top.unwrap_or(Offset(0));
                let (messages, more) = match since {
                    None => (Vec::new(), false),
                    Some(since) => {
                        // Retained messages are in offset order: skip to the first after
                        // `since` rather than walk the whole history.
                        let first = log.retained.partition_point(|(_, p)| p.offset <= since);
                        paginate(log.retained.range(first..).map(|(_, p)| p), page)
                    }
                };
                History::from_retained(top, log.base, since, messages, more)
            }
        };
        future::ready(Ok(answer)).boxed()
    }

    fn attach(&self) -> (Arc<dyn Link>, Feed) {
        let (tx, rx) = feed::feed(self.feed_limit);
        let id = {
            let mut state = lock(&self.state);
            state.next_link += 1;
            state.next_link
        };
        let link = MemoryLink {
            id,
            tx,
            state: self.state.clone(),
        };
        (Arc::new(link), rx)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            history: true,
            shared_across_processes: false,
            survives_restart: false,
        }
    }
}

struct MemoryLink {
    id: LinkId,
    tx: FeedSender,
    state: Arc<Mutex<State>>,
}

impl Link for MemoryLink {
    fn subscribe<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, Result<(), BrokerError>> {
        let mut state = lock(&self.state);
        let log = state.channels.entry(channel.clone()).or_default();
        log.links
            .entry(self.id)
            .or_insert_with(|| (0, self.tx.clone()))
            .0 += 1;
        future::ready(Ok(())).boxed()
    }

    fn unsubscribe(&self, channel: &ChannelName) {
        let mut state = lock(&self.state);
        let Some(log) = state.channels.get_mut(channel) else {
            return;
        };
        if let Some((count, _)) = log.links.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                log.links.remove(&self.id);
            }
        }
        if log.is_forgettable() {
            state.channels.remove(channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn data(n: u32) -> Box<RawValue> {
        RawValue::from_string(n.to_string()).unwrap()
    }

    #[tokio::test]
    async fn offsets_are_contiguous_and_history_is_bounded_by_size() {
        let broker = MemoryBroker::new(HistoryPolicy {
            size: 3,
            ttl: Duration::from_secs(60),
        });
        let c = ChannelName::parse("c").unwrap();
        let first = broker.publish(&c, data(1)).await.unwrap();
        for n in 2..=5 {
            broker.publish(&c, data(n)).await.unwrap();
        }
        let h = broker.history(&c, Some(first)).await.unwrap();
        assert_eq!(h.top, Offset(first.0 + 4));
        assert!(!h.recovered, "two messages after `first` were trimmed");
        let h = broker.history(&c, Some(Offset(first.0 + 1))).await.unwrap();
        assert!(h.recovered);
        let offsets: Vec<u64> = h.messages.iter().map(|p| p.offset.0).collect();
        assert_eq!(offsets, vec![first.0 + 2, first.0 + 3, first.0 + 4]);
    }

    #[tokio::test]
    async fn the_base_is_fixed_by_the_first_message_and_kept() {
        let broker = MemoryBroker::new(HistoryPolicy {
            size: 2,
            ttl: Duration::from_secs(60),
        });
        let c = ChannelName::parse("c").unwrap();
        assert_eq!(broker.history(&c, None).await.unwrap().base, None);
        let first = broker.publish(&c, data(1)).await.unwrap();
        let h = broker.history(&c, Some(Offset(0))).await.unwrap();
        assert_eq!(h.base, Some(Offset(first.0 - 1)));
        assert!(h.recovered);
        for n in 2..=3 {
            broker.publish(&c, data(n)).await.unwrap();
        }
        let h = broker.history(&c, Some(Offset(0))).await.unwrap();
        assert_eq!(h.base, Some(Offset(first.0 - 1)), "trimming keeps the base");
        assert!(!h.recovered, "the first message was trimmed");
    }

    #[tokio::test]
    async fn expired_channels_nobody_subscribes_are_forgotten() {
        let policy = HistoryPolicy {
            size: 10,
            ttl: Duration::from_millis(50),
        };
        let broker = MemoryBroker::new(policy);
        let (link, _feed) = broker.attach();
        let quiet = ChannelName::parse("quiet").unwrap();
        let watched = ChannelName::parse("watched").unwrap();
        let old = broker.publish(&quiet, data(1)).await.unwrap();
        link.subscribe(&watched).await.unwrap();
        let top = broker.publish(&watched, data(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            broker.channel_count(),
            1,
            "only the subscribed channel is kept"
        );
        let h = broker.history(&watched, Some(top)).await.unwrap();
        assert!(h.recovered, "its top offset is kept: nothing was missed");
        let h = broker.history(&quiet, Some(old)).await.unwrap();
        assert!(
            !h.recovered,
            "a forgotten channel cannot vouch for the past"
        );
        let fresh = broker.publish(&quiet, data(2)).await.unwrap();
        assert!(fresh > old, "a re-created channel counts on from above");
        link.unsubscribe(&watched);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(broker.channel_count(), 0);
    }

    #[tokio::test]
    async fn history_is_read_page_by_page_from_since() {
        let broker = MemoryBroker::new(HistoryPolicy::default());
        let c = ChannelName::parse("c").unwrap();
        let first = broker.publish(&c, data(1)).await.unwrap();
        for n in 2..=7 {
            broker.publish(&c, data(n)).await.unwrap();
        }
        let page = Page {
            messages: std::num::NonZeroUsize::new(3).unwrap(),
            ..Page::DEFAULT
        };
        let mut since = Offset(0);
        let mut pages = Vec::new();
        loop {
            let h = broker.history_page(&c, Some(since), page).await.unwrap();
            assert!(h.recovered, "nothing was trimmed");
            let offsets: Vec<u64> = h
                .messages
                .iter()
                .map(|p| p.offset.0 - first.0 + 1)
                .collect();
            pages.push(offsets);
            match h.messages.last() {
                Some(last) if h.more => since = last.offset,
                _ => break,
            }
        }
        assert_eq!(pages, vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
    }

    #[tokio::test]
    async fn links_receive_only_channels_they_subscribed() {
        let broker = MemoryBroker::new(HistoryPolicy::default());
        let (link, mut feed) = broker.attach();
        let a = ChannelName::parse("a").unwrap();
        let b = ChannelName::parse("b").unwrap();
        link.subscribe(&a).await.unwrap();
        broker.publish(&b, data(1)).await.unwrap();
        broker.publish(&a, data(2)).await.unwrap();
        match feed.recv().await {
            Some(BrokerEvent::Publication { publication, .. }) => {
                assert_eq!(publication.channel, a)
            }
            other => panic!("unexpected {other:?}"),
        }
        link.unsubscribe(&a);
        broker.publish(&a, data(3)).await.unwrap();
        assert!(feed.try_recv().is_none());
    }
}
