//! A session's inbox of publications, filled by the channel dispatchers.
//!
//! Dispatchers hand over batches (every message of one channel gathered since the last
//! hand-over), so a busy channel costs each subscriber one queue operation and one wake per
//! batch rather than per message. The bound still counts messages, not batches: it is what
//! says how far a client may fall behind before it is dropped as too slow.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::protocol::Publication;

/// Consecutive publications of one channel, in offset order. Shared by every subscriber of
/// the channel on this node: handing it over clones a pointer, not the messages.
pub type Batch = Arc<[Arc<Publication>]>;

/// What became of a batch handed to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    Queued,
    /// The session's queue is full: it was told to close, and must leave the channel.
    Overflowed,
    /// The session is gone.
    Closed,
}

struct Bound {
    /// Messages in batches posted and not yet taken.
    queued: AtomicUsize,
    limit: usize,
}

/// The dispatchers' end of a session's inbox.
#[derive(Clone)]
pub struct Postbox {
    batches: mpsc::UnboundedSender<Batch>,
    bound: Arc<Bound>,
    overflow: Arc<Notify>,
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
    /// Queues `batch` unless that would put more than the limit in the queue; then the
    /// session's overflow bell rings instead (it lost messages and must close).
    pub fn post(&self, batch: &Batch) -> Posted {
        let n = batch.len();
        let before = self.bound.queued.fetch_add(n, Ordering::AcqRel);
        if before + n > self.bound.limit {
            self.bound.queued.fetch_sub(n, Ordering::AcqRel);
            self.overflow.notify_one();
            return Posted::Overflowed;
        }
        match self.batches.send(batch.clone()) {
            Ok(()) => Posted::Queued,
            Err(_) => Posted::Closed,
        }
    }
}

/// The session's end of its inbox.
pub struct Mailbox {
    batches: mpsc::UnboundedReceiver<Batch>,
    bound: Arc<Bound>,
    overflow: Arc<Notify>,
}

/// An inbox holding at most `limit` messages.
pub fn mailbox(limit: usize) -> (Postbox, Mailbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let bound = Arc::new(Bound {
        queued: AtomicUsize::new(0),
        limit,
    });
    let overflow = Arc::new(Notify::new());
    let postbox = Postbox {
        batches: tx,
        bound: bound.clone(),
        overflow: overflow.clone(),
    };
    let mailbox = Mailbox {
        batches: rx,
        bound,
        overflow,
    };
    (postbox, mailbox)
}

impl Mailbox {
    /// The next batch; never `None` while the session holds its own [`Postbox`].
    pub async fn recv(&mut self) -> Option<Batch> {
        let batch = self.batches.recv().await?;
        Some(self.taken(batch))
    }

    /// A batch already waiting, if any.
    pub fn try_recv(&mut self) -> Option<Batch> {
        let batch = self.batches.try_recv().ok()?;
        Some(self.taken(batch))
    }

    /// Whether messages are waiting.
    pub fn has_waiting(&self) -> bool {
        self.bound.queued.load(Ordering::Acquire) > 0
    }

    /// Rung when a dispatcher found the queue full.
    pub fn overflow(&self) -> Arc<Notify> {
        self.overflow.clone()
    }

    fn taken(&self, batch: Batch) -> Batch {
        self.bound.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        batch
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

    #[tokio::test]
    async fn the_bound_counts_messages_not_batches() {
        let (postbox, mut mailbox) = mailbox(5);
        assert_eq!(postbox.post(&batch(1..=3)), Posted::Queued);
        assert_eq!(postbox.post(&batch(4..=6)), Posted::Overflowed);
        assert_eq!(postbox.post(&batch(4..=5)), Posted::Queued);
        assert_eq!(mailbox.recv().await.unwrap().len(), 3);
        // Taking a batch makes room for as many messages as it held.
        assert_eq!(postbox.post(&batch(6..=8)), Posted::Queued);
        assert_eq!(mailbox.try_recv().unwrap().len(), 2);
        assert_eq!(mailbox.try_recv().unwrap().len(), 3);
        assert!(mailbox.try_recv().is_none());
    }

    #[tokio::test]
    async fn an_overflow_rings_the_bell() {
        let (postbox, mailbox) = mailbox(1);
        let overflow = mailbox.overflow();
        let rung = overflow.notified();
        assert_eq!(postbox.post(&batch(1..=2)), Posted::Overflowed);
        tokio::time::timeout(std::time::Duration::from_secs(1), rung)
            .await
            .expect("the overflow bell was not rung");
    }

    #[tokio::test]
    async fn posting_to_a_closed_session_says_so() {
        let (postbox, mailbox) = mailbox(8);
        drop(mailbox);
        assert_eq!(postbox.post(&batch(1..=1)), Posted::Closed);
    }
}
