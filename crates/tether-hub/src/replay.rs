//! Replaying a channel's history to one client, a page at a time, paced by its reading.
//!
//! Why pages: a subscribe with `since: 0` on a channel holding 1000 × 60 KB messages used to
//! read the whole history in one broker call and hold it until the client took it. Twenty
//! such clients that never read grew Redis from 80 MB to 1.4 GB (every reply built at
//! once), cut the node's pub/sub feed and stalled everyone's publishes for ~7 s. A replay
//! now reads one [`Page`] (see its limits), and the session asks for the next one only
//! after the previous one was written to the socket: a client that does not read holds one
//! page until it is dropped as too slow, and a slow reader is fed as fast as it reads.
//!
//! Page reads go through the node's replay permits (see [`Node::replay_permit`]), so
//! however many clients replay at once, the node has a bounded number of history reads in
//! flight at the broker.
//!
//! The replay stops at the channel's top as read by the first page: everything after it
//! reaches the session through its inbox, which it joined before that read, so the seam
//! stays exact (the session drops from its inbox what it already replayed).

use std::sync::Arc;

use crate::broker::{BrokerError, History, Page};
use crate::node::Node;
use crate::protocol::{ChannelName, Offset, Publication};

/// Why a replay could not go on after it began.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("history read failed: {0}")]
    Broker(#[from] BrokerError),
    /// The history was trimmed (size or age) past what the client has while it was
    /// replaying: going on would be a silent gap, so the client must resume and be told
    /// `recovered: false`.
    #[error("history was trimmed past offset {after} during the replay")]
    Trimmed { after: Offset },
}

/// Where a subscribe starts: what the `subscribed` frame says.
#[derive(Debug, Clone, Copy)]
pub struct Opening {
    pub top: Offset,
    pub recovered: bool,
}

/// One client's replay of one channel.
#[derive(Debug)]
pub struct Replay {
    channel: ChannelName,
    /// The channel's top when the replay began; later messages come through the inbox.
    until: Offset,
    /// The last offset handed out (or `since` before the first page).
    cursor: Offset,
    /// A page read and not yet handed out.
    ready: Vec<Arc<Publication>>,
    /// Whether the broker holds more before `until` than was read so far.
    more: bool,
}

impl Replay {
    /// Reads where the channel stands and, with `since`, the first page after it.
    pub async fn start(
        node: &Node,
        channel: &ChannelName,
        since: Option<Offset>,
    ) -> Result<(Opening, Replay), BrokerError> {
        let history = match since {
            // Where the channel stands is one small read: no permit needed.
            None => {
                node.broker
                    .history_page(channel, None, Page::DEFAULT)
                    .await?
            }
            Some(_) => read(node, channel, since).await?,
        };
        let opening = Opening {
            top: history.top,
            recovered: history.recovered,
        };
        let mut replay = Replay {
            channel: channel.clone(),
            until: history.top,
            cursor: since.unwrap_or(history.top),
            ready: Vec::new(),
            more: false,
        };
        replay.take(history);
        Ok((opening, replay))
    }

    /// The offset up to which this replay delivers; the session's seam with its inbox.
    pub fn until(&self) -> Offset {
        self.until
    }

    /// The next page to write, `None` once the replay reached [`Replay::until`]. Call it
    /// again only after the previous page was written: that is what paces the replay.
    pub async fn next_page(
        &mut self,
        node: &Node,
    ) -> Result<Option<Vec<Arc<Publication>>>, ReplayError> {
        if self.ready.is_empty() && self.more {
            let history = read(node, &self.channel, Some(self.cursor)).await?;
            if !history.recovered {
                return Err(ReplayError::Trimmed { after: self.cursor });
            }
            self.take(history);
        }
        if self.ready.is_empty() {
            return Ok(None);
        }
        Ok(Some(std::mem::take(&mut self.ready)))
    }

    /// Keeps what a read brought up to `until`.
    fn take(&mut self, history: History) {
        let mut messages = history.messages;
        let before = messages.len();
        messages.retain(|p| p.offset <= self.until);
        // The page reached past `until`: nothing before it is left to read.
        self.more = history.more && messages.len() == before;
        if let Some(last) = messages.last() {
            self.cursor = last.offset;
            if last.offset >= self.until {
                self.more = false;
            }
        }
        self.ready = messages;
    }
}

/// One page read under a replay permit.
async fn read(
    node: &Node,
    channel: &ChannelName,
    since: Option<Offset>,
) -> Result<History, BrokerError> {
    let _permit = node.replay_permit().await;
    node.broker
        .history_page(channel, since, Page::DEFAULT)
        .await
}
