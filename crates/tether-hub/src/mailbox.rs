//! A session's inbox of publications, filled by the channel dispatchers.
//!
//! Dispatchers hand over batches (every message of one channel gathered since the last
//! hand-over), so a busy channel costs each subscriber one queue operation and one wake per
//! batch rather than per message. The bound still counts messages, not batches: it is what
//! says how far a client may fall behind before it is dropped as too slow.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::protocol::Publication;

/// Consecutive publications of one channel, in offset order. Shared by every subscriber of
/// the channel on this node: handing it over clones a pointer, not the messages.
pub type Batch = Arc<[Arc<Publication>]>;

/// What a session takes from its inbox.
#[derive(Debug)]
pub enum Inbound {
    Messages(Batch),
    /// A dispatcher found the inbox full: the session lost messages and must close.
    Overflowed,
    /// A channel's log lost messages this session was owed (history no longer reached
    /// back to what was delivered last): the session must close, so that its client's
    /// resume is answered `recovered: false` rather than carrying on past a silent gap.
    Lost,
}

/// What became of a batch handed to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    Queued,
    /// The session's inbox is full: it was told to close, and must leave the channel.
    Overflowed,
    /// The session is gone.
    Closed,
}

struct Bound {
    /// Messages in batches posted and not yet taken.
    queued: AtomicUsize,
    limit: usize,
    /// Set for good by the first post that did not fit.
    overflowed: AtomicBool,
    /// Set for good when a dispatcher could not deliver messages the session was owed.
    lost: AtomicBool,
}

/// The dispatchers' end of a session's inbox.
#[derive(Clone)]
pub struct Postbox {
    batches: mpsc::UnboundedSender<Batch>,
    bound: Arc<Bound>,
}

impl std::fmt::Debug for Postbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postbox")
            .field("queued", &self.bound.queued.load(Ordering::Relaxed))
            .field("limit", &self.bound.limit)
            .finish()
    }
}

impl Postbox {
    /// Queues `batch` unless that would put more than the limit in the inbox; then the
    /// session is marked as overflowed instead, and woken by an empty batch to find out.
    /// Folding the overflow into the inbox keeps a second thing to wait on out of the
    /// session's loop, which turns at every delivery.
    pub fn post(&self, batch: &Batch) -> Posted {
        let n = batch.len();
        let before = self.bound.queued.fetch_add(n, Ordering::AcqRel);
        if before + n > self.bound.limit {
            self.bound.queued.fetch_sub(n, Ordering::AcqRel);
            self.bound.overflowed.store(true, Ordering::Release);
            let _ = self.batches.send(Batch::from([]));
            return Posted::Overflowed;
        }
        match self.batches.send(batch.clone()) {
            Ok(()) => Posted::Queued,
            Err(_) => Posted::Closed,
        }
    }

    /// Tells the session that messages it was owed are gone for good. From then on the
    /// session takes nothing more from its inbox: whatever it wrote next would move its
    /// client's last offset past the hole, and the client would never learn of it.
    pub fn lost(&self) {
        self.bound.lost.store(true, Ordering::Release);
        let _ = self.batches.send(Batch::from([]));
    }
}

/// The session's end of its inbox.
pub struct Mailbox {
    batches: mpsc::UnboundedReceiver<Batch>,
    bound: Arc<Bound>,
}

/// An inbox holding at most `limit` messages.
pub fn mailbox(limit: usize) -> (Postbox, Mailbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let bound = Arc::new(Bound {
        queued: AtomicUsize::new(0),
        limit,
        overflowed: AtomicBool::new(false),
        lost: AtomicBool::new(false),
    });
    let postbox = Postbox {
        batches: tx,
        bound: bound.clone(),
    };
    let mailbox = Mailbox { batches: rx, bound };
    (postbox, mailbox)
}

impl Mailbox {
    /// The next batch, or the news that the inbox overflowed; never `None` while the
    /// session holds its own [`Postbox`].
    pub async fn recv(&mut self) -> Option<Inbound> {
        let batch = self.batches.recv().await?;
        Some(self.taken(batch))
    }

    /// What is already waiting, if anything.
    pub fn try_recv(&mut self) -> Option<Inbound> {
        let batch = self.batches.try_recv().ok()?;
        Some(self.taken(batch))
    }

    /// Whether messages are waiting.
    pub fn has_waiting(&self) -> bool {
        self.bound.queued.load(Ordering::Acquire) > 0
    }

    fn taken(&self, batch: Batch) -> Inbound {
        self.bound.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        if self.bound.overflowed.load(Ordering::Acquire) {
            Inbound::Overflowed
        } else if self.bound.lost.load(Ordering::Acquire) {
            Inbound::Lost
        } else {
            Inbound::Messages(batch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChannelName, Offset};

    fn batch(offsets: std::ops::RangeInclusive<u64>) -> Batch {
        let channel = ChannelName::parse("c").unwrap();
        offsets
            .map(|o| {
                let data = serde_json::value::RawValue::from_string("1".into()).unwrap();
                Publication::new(channel.clone(), Offset(o), data)
            })
            .collect()
    }

    fn messages(inbound: Option<Inbound>) -> usize {
        match inbound {
            Some(Inbound::Messages(batch)) => batch.len(),
            other => panic!("expected messages, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_bound_counts_messages_not_batches() {
        let (postbox, mut mailbox) = mailbox(5);
        assert_eq!(postbox.post(&batch(1..=3)), Posted::Queued);
        assert_eq!(postbox.post(&batch(4..=5)), Posted::Queued);
        assert_eq!(messages(mailbox.recv().await), 3);
        // Taking a batch makes room for as many messages as it held.
        assert_eq!(postbox.post(&batch(6..=8)), Posted::Queued);
        assert_eq!(messages(mailbox.try_recv()), 2);
        assert_eq!(messages(mailbox.try_recv()), 3);
        assert!(mailbox.try_recv().is_none());
    }

    #[tokio::test]
    async fn an_overflow_wakes_the_session_and_ends_its_deliveries() {
        let (postbox, mut mailbox) = mailbox(5);
        assert_eq!(postbox.post(&batch(1..=3)), Posted::Queued);
        assert_eq!(postbox.post(&batch(4..=6)), Posted::Overflowed);
        // Even what fitted before is not delivered: the session lost messages after it.
        assert!(matches!(mailbox.try_recv(), Some(Inbound::Overflowed)));
        // The overflow itself wakes a session waiting on an empty inbox.
        let (postbox, mut mailbox) = super::mailbox(1);
        let waiting = tokio::spawn(async move { mailbox.recv().await });
        assert_eq!(postbox.post(&batch(1..=2)), Posted::Overflowed);
        let woken = tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("the overflow did not wake the session")
            .unwrap();
        assert!(matches!(woken, Some(Inbound::Overflowed)));
    }

    #[tokio::test]
    async fn news_of_lost_messages_stops_every_later_delivery() {
        let (postbox, mut mailbox) = mailbox(8);
        assert_eq!(postbox.post(&batch(1..=2)), Posted::Queued);
        postbox.lost();
        assert_eq!(postbox.post(&batch(3..=3)), Posted::Queued);
        // Even the batch posted before the news is withheld: delivering it would let the
        // client's resume start after it, and the hole would go unreported.
        for _ in 0..3 {
            assert!(matches!(mailbox.recv().await, Some(Inbound::Lost)));
        }
    }

    #[tokio::test]
    async fn posting_to_a_closed_session_says_so() {
        let (postbox, mailbox) = mailbox(8);
        drop(mailbox);
        assert_eq!(postbox.post(&batch(1..=1)), Posted::Closed);
    }
}
