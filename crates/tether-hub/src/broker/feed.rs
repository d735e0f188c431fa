//! A node's feed: the bounded queue that carries a broker's events to the node's channels.
//!
//! Why bounded, and why overflow is not an error: the feed is filled by whatever reads the
//! broker (the Redis pub/sub connection, or publishers in this process) and drained by the
//! node's router. A node that falls behind under a flood — starved of CPU, or with a burst
//! arriving faster than its channels hand it out — used to queue without limit and grow
//! until it ran out of memory. Now the queue holds at most [`FeedLimit`] events and bytes;
//! what does not fit is dropped, and the next thing the node reads is
//! [`BrokerEvent::Overflowed`]. Every dropped publication is already in the broker's
//! history (it is stored before it is fanned out), so the node refills each channel from
//! there, exactly as after a pub/sub reconnect: nothing is lost, the cost of falling
//! behind is a history read per channel, and the memory it takes is bounded.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::BrokerEvent;

/// How much a node's feed holds before it overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedLimit {
    pub events: NonZeroUsize,
    /// Bytes of message data queued; one event always fits however large.
    pub bytes: NonZeroUsize,
    /// Publications that may wait for one channel's dispatcher after the node's router
    /// took them off the feed (see `channel`). Beyond it the channel refills from history
    /// instead, exactly as the feed itself does when it overflows.
    pub per_channel: NonZeroUsize,
}

impl FeedLimit {
    /// 4096 events or 16 MiB: seconds of a busy node's traffic, far from its memory; 1024
    /// waiting for one channel, four of the dispatcher's turns.
    pub const DEFAULT: FeedLimit = FeedLimit {
        events: NonZeroUsize::new(4096).unwrap(),
        bytes: NonZeroUsize::new(16 * 1024 * 1024).unwrap(),
        per_channel: NonZeroUsize::new(1024).unwrap(),
    };
}

impl Default for FeedLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The node that owned the feed is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the node's feed is closed")]
pub struct FeedClosed;

struct Shared {
    limit: FeedLimit,
    events: AtomicUsize,
    bytes: AtomicUsize,
    /// Set when an event was dropped; cleared when the node is told.
    overflowed: AtomicBool,
}

/// The broker's end of a node's feed.
#[derive(Clone)]
pub struct FeedSender {
    events: mpsc::UnboundedSender<BrokerEvent>,
    shared: Arc<Shared>,
}

/// The node's end of its feed.
pub struct Feed {
    events: mpsc::UnboundedReceiver<BrokerEvent>,
    shared: Arc<Shared>,
}

impl Feed {
    /// The bounds this feed was made with; the node sizes its channel queues from them.
    pub fn limit(&self) -> FeedLimit {
        self.shared.limit
    }
}

/// A feed holding at most `limit`.
pub fn feed(limit: FeedLimit) -> (FeedSender, Feed) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        limit,
        events: AtomicUsize::new(0),
        bytes: AtomicUsize::new(0),
        overflowed: AtomicBool::new(false),
    });
    let sender = FeedSender {
        events: tx,
        shared: shared.clone(),
    };
    (sender, Feed { events: rx, shared })
}

fn size_of(event: &BrokerEvent) -> usize {
    match event {
        BrokerEvent::Publication { publication, .. } => publication.data.get().len(),
        BrokerEvent::Resync | BrokerEvent::Lost(_) | BrokerEvent::Overflowed => 0,
    }
}

impl FeedSender {
    /// Queues `event`, or drops it and marks the feed overflowed when it does not fit (see
    /// the module docs); an error only when the node is gone.
    pub fn send(&self, event: BrokerEvent) -> Result<(), FeedClosed> {
        if self.events.is_closed() {
            return Err(FeedClosed);
        }
        let shared = &*self.shared;
        let size = size_of(&event);
        let events = shared.events.fetch_add(1, Ordering::AcqRel) + 1;
        let bytes = shared.bytes.fetch_add(size, Ordering::AcqRel) + size;
        let fits = events <= shared.limit.events.get()
            && (events == 1 || bytes <= shared.limit.bytes.get());
        if !fits {
            shared.events.fetch_sub(1, Ordering::AcqRel);
            shared.bytes.fetch_sub(size, Ordering::AcqRel);
            shared.overflowed.store(true, Ordering::Release);
            return Ok(());
        }
        self.events.send(event).map_err(|_| FeedClosed)
    }

    pub fn is_closed(&self) -> bool {
        self.events.is_closed()
    }
}

impl Feed {
    /// The next event; [`BrokerEvent::Overflowed`] first when events were dropped since
    /// the last call. `None` once every sender is gone.
    ///
    /// An overflow is always noticed: it happens only while the queue is full, so the node
    /// has queued events left to read, and it checks the mark before each of them.
    pub async fn recv(&mut self) -> Option<BrokerEvent> {
        if self.shared.overflowed.swap(false, Ordering::AcqRel) {
            return Some(BrokerEvent::Overflowed);
        }
        let event = self.events.recv().await?;
        self.shared.events.fetch_sub(1, Ordering::AcqRel);
        self.shared
            .bytes
            .fetch_sub(size_of(&event), Ordering::AcqRel);
        Some(event)
    }

    /// What is already queued, if anything (the same order as [`Feed::recv`]).
    pub fn try_recv(&mut self) -> Option<BrokerEvent> {
        if self.shared.overflowed.swap(false, Ordering::AcqRel) {
            return Some(BrokerEvent::Overflowed);
        }
        let event = self.events.try_recv().ok()?;
        self.shared.events.fetch_sub(1, Ordering::AcqRel);
        self.shared
            .bytes
            .fetch_sub(size_of(&event), Ordering::AcqRel);
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChannelName, Offset, Publication};
    use serde_json::value::RawValue;

    fn publication(offset: u64, data: &str) -> BrokerEvent {
        let data = RawValue::from_string(data.into()).unwrap();
        BrokerEvent::Publication {
            publication: Publication::new(ChannelName::parse("c").unwrap(), Offset(offset), data),
            prev: offset.checked_sub(1).map(Offset),
        }
    }

    fn offset(event: Option<BrokerEvent>) -> u64 {
        match event {
            Some(BrokerEvent::Publication { publication, .. }) => publication.offset.0,
            other => panic!("expected a publication, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_full_feed_drops_events_and_says_so_before_the_rest() {
        let (tx, mut rx) = feed(FeedLimit {
            events: NonZeroUsize::new(2).unwrap(),
            bytes: NonZeroUsize::new(1024).unwrap(),
            ..FeedLimit::DEFAULT
        });
        for n in 1..=5 {
            tx.send(publication(n, "1")).unwrap();
        }
        assert!(matches!(rx.recv().await, Some(BrokerEvent::Overflowed)));
        assert_eq!(offset(rx.recv().await), 1);
        assert_eq!(offset(rx.recv().await), 2);
        assert!(rx.try_recv().is_none(), "3, 4 and 5 were dropped");
        // Reading made room again.
        tx.send(publication(6, "1")).unwrap();
        assert_eq!(offset(rx.recv().await), 6);
    }

    #[tokio::test]
    async fn the_byte_bound_counts_data_but_lets_one_large_event_through() {
        let (tx, mut rx) = feed(FeedLimit {
            events: NonZeroUsize::new(100).unwrap(),
            bytes: NonZeroUsize::new(4).unwrap(),
            ..FeedLimit::DEFAULT
        });
        tx.send(publication(1, "\"a large one\"")).unwrap();
        tx.send(publication(2, "1")).unwrap();
        assert!(matches!(rx.recv().await, Some(BrokerEvent::Overflowed)));
        assert_eq!(offset(rx.recv().await), 1);
        tx.send(publication(3, "1")).unwrap();
        tx.send(publication(4, "1")).unwrap();
        assert_eq!(offset(rx.recv().await), 3);
        assert_eq!(offset(rx.recv().await), 4);
    }

    #[tokio::test]
    async fn sending_to_a_node_that_is_gone_fails() {
        let (tx, rx) = feed(FeedLimit::DEFAULT);
        drop(rx);
        assert_eq!(tx.send(BrokerEvent::Resync), Err(FeedClosed));
    }
}
