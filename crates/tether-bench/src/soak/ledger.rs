//! The soak's ledger: what was published with an offset, what each subscriber received, and
//! the reckoning at the end.
//!
//! Every publish carries a tag (a number unique to the run) in its data; the publisher
//! records `(offset, tag)` when the hub answers with the offset. Every subscriber records,
//! in arrival order, the `(offset, tag)` of each message frame, and every span the hub
//! declared unrecoverable (`subscribed` with `recovered: false` after a `since`).
//!
//! Order and duplicates are judged as frames arrive: on one subscription, across all its
//! reconnects, offsets must strictly increase. Unlike the JS client, which silently drops a
//! frame at or below its last offset, the soak counts it: the hub promises resume with "no
//! gap and no duplicate", and a client-side filter would hide a broken promise.
//!
//! Loss is judged at the end: a publish that got an offset must be among the subscriber's
//! frames (with the same tag), or inside a span the hub said it could not recover.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

/// One channel's acknowledged publishes.
#[derive(Debug)]
struct ChannelBook {
    name: String,
    /// `(offset, tag)` in the order the answers arrived.
    published: Mutex<Vec<(u64, u64)>>,
}

/// Everything the run published and received.
#[derive(Debug)]
pub struct Ledger {
    channels: Vec<ChannelBook>,
    subscribers: Vec<SubscriberBook>,
}

/// What one subscriber received. Each subscriber listens to one channel for the whole run.
#[derive(Debug)]
pub struct SubscriberBook {
    pub channel: usize,
    inner: Mutex<Received>,
}

#[derive(Debug, Default)]
struct Received {
    /// The `offset` of the first `subscribed` answer: every publish above it is owed.
    start: Option<u64>,
    /// Highest offset received (or the start): what a resume sends as `since`.
    last: Option<u64>,
    /// `(offset, tag)` of every in-order frame, so offsets strictly increase.
    got: Vec<(u64, u64)>,
    /// Spans `(since, top]` the hub declared unrecoverable.
    gaps: Vec<(u64, u64)>,
    duplicated: u64,
    out_of_order: u64,
}

/// What a `message` frame was, judged against what the subscriber had already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next offset in order.
    InOrder,
    /// An offset this subscriber already received.
    Duplicate,
    /// Below the last offset but never received: late, out of order.
    OutOfOrder,
}

impl SubscriberBook {
    fn lock(&self) -> MutexGuard<'_, Received> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The offset to resume from (`since`), or `None` before the first `subscribed`.
    pub fn since(&self) -> Option<u64> {
        self.lock().last
    }

    /// Whether the first `subscribed` has arrived.
    pub fn started(&self) -> bool {
        self.lock().start.is_some()
    }

    /// Records a `subscribed` answer to a subscribe that carried `since` (`None`: the first).
    pub fn subscribed(&self, since: Option<u64>, top: u64, recovered: bool) {
        let mut r = self.lock();
        match since {
            None => {
                if r.start.is_none() {
                    r.start = Some(top);
                }
                if r.last.is_none() {
                    r.last = Some(top);
                }
            }
            Some(since) if !recovered && top > since => r.gaps.push((since, top)),
            Some(_) => {}
        }
    }

    /// Records a `message` frame.
    pub fn message(&self, offset: u64, tag: u64) -> Arrival {
        let mut r = self.lock();
        if let Some(last) = r.last {
            if offset <= last {
                let seen = r.got.binary_search_by_key(&offset, |&(o, _)| o).is_ok();
                return if seen {
                    r.duplicated += 1;
                    Arrival::Duplicate
                } else {
                    r.out_of_order += 1;
                    Arrival::OutOfOrder
                };
            }
        }
        r.got.push((offset, tag));
        r.last = Some(offset);
        Arrival::InOrder
    }
}

/// The reckoning, summed over channels and subscribers.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Tally {
    /// Publishes that got an offset.
    pub published: u64,
    /// (publish, subscriber) pairs owed: each publish times its channel's subscribers.
    pub owed: u64,
    pub delivered: u64,
    /// Owed, not delivered, and not covered by a `recovered: false` span.
    pub lost: u64,
    /// Owed, not delivered, inside a span the hub said it could not recover.
    pub unrecovered: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// A frame whose offset was acknowledged for a different message (tag), or one offset
    /// acknowledged twice for different messages.
    pub corrupted: u64,
    /// Frames whose offset no publisher learnt (its answer was lost with a connection):
    /// delivered, but outside the ledger's promise either way.
    pub unacknowledged: u64,
}

/// One missing delivery, for the report and `ledger.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub channel: String,
    pub subscriber: usize,
    pub offset: u64,
    pub tag: u64,
}

impl Ledger {
    /// A ledger for `channels` channel names and one subscriber per entry of
    /// `subscriber_channels` (the index of the channel it listens to).
    pub fn new(channels: Vec<String>, subscriber_channels: impl Iterator<Item = usize>) -> Ledger {
        Ledger {
            channels: channels
                .into_iter()
                .map(|name| ChannelBook {
                    name,
                    published: Mutex::new(Vec::new()),
                })
                .collect(),
            subscribers: subscriber_channels
                .map(|channel| SubscriberBook {
                    channel,
                    inner: Mutex::new(Received::default()),
                })
                .collect(),
        }
    }

    pub fn channel_name(&self, channel: usize) -> &str {
        &self.channels[channel].name
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    pub fn subscriber(&self, index: usize) -> &SubscriberBook {
        &self.subscribers[index]
    }

    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    /// Records that the publish tagged `tag` on `channel` was given `offset`.
    pub fn published(&self, channel: usize, offset: u64, tag: u64) {
        self.channels[channel]
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((offset, tag));
    }

    /// Publishes acknowledged so far.
    pub fn published_count(&self) -> u64 {
        self.channels
            .iter()
            .map(|c| c.published.lock().unwrap_or_else(|p| p.into_inner()).len() as u64)
            .sum()
    }

    /// How many subscribers have not yet received their channel's highest acknowledged
    /// offset: zero means everything owed has arrived (or been skipped past).
    pub fn behind(&self) -> usize {
        let tops: Vec<Option<u64>> = self
            .channels
            .iter()
            .map(|c| {
                let p = c.published.lock().unwrap_or_else(|p| p.into_inner());
                p.iter().map(|&(o, _)| o).max()
            })
            .collect();
        self.subscribers
            .iter()
            .filter(|s| match tops[s.channel] {
                Some(top) => s.lock().last.is_none_or(|last| last < top),
                None => false,
            })
            .count()
    }

    /// Reckons every channel and subscriber; also returns the first `keep` missing deliveries.
    pub fn reckon(&self, keep: usize) -> (Tally, Vec<Missing>) {
        let mut tally = Tally::default();
        let mut missing = Vec::new();
        for (index, book) in self.channels.iter().enumerate() {
            let mut published = book
                .published
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            published.sort_unstable();
            published.dedup();
            // The same answer twice is harmless; the same offset for two tags is not.
            let mut acknowledged: HashMap<u64, u64> = HashMap::with_capacity(published.len());
            for &(offset, tag) in &published {
                if acknowledged.insert(offset, tag).is_some() {
                    tally.corrupted += 1;
                }
            }
            tally.published += acknowledged.len() as u64;
            let mut offsets: Vec<(u64, u64)> = acknowledged.iter().map(|(&o, &t)| (o, t)).collect();
            offsets.sort_unstable();
            for (s_index, subscriber) in self.subscribers.iter().enumerate() {
                if subscriber.channel != index {
                    continue;
                }
                let r = subscriber.lock();
                tally.duplicated += r.duplicated;
                tally.out_of_order += r.out_of_order;
                for &(offset, tag) in &r.got {
                    match acknowledged.get(&offset) {
                        Some(&t) if t != tag => tally.corrupted += 1,
                        Some(_) => {}
                        None => tally.unacknowledged += 1,
                    }
                }
                let start = r.start.unwrap_or(0);
                for &(offset, tag) in offsets.iter().filter(|&&(o, _)| o > start) {
                    tally.owed += 1;
                    if r.got.binary_search_by_key(&offset, |&(o, _)| o).is_ok() {
                        tally.delivered += 1;
                    } else if r.gaps.iter().any(|&(a, b)| a < offset && offset <= b) {
                        tally.unrecovered += 1;
                    } else {
                        tally.lost += 1;
                        if missing.len() < keep {
                            missing.push(Missing {
                                channel: book.name.clone(),
                                subscriber: s_index,
                                offset,
                                tag,
                            });
                        }
                    }
                }
            }
        }
        (tally, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_channel(subscribers: usize) -> Ledger {
        Ledger::new(vec!["c".into()], std::iter::repeat_n(0, subscribers))
    }

    #[test]
    fn every_owed_message_delivered_once_balances() {
        let ledger = one_channel(2);
        for s in 0..2 {
            ledger.subscriber(s).subscribed(None, 0, true);
        }
        for offset in 1..=3 {
            ledger.published(0, offset, 100 + offset);
            for s in 0..2 {
                assert_eq!(
                    ledger.subscriber(s).message(offset, 100 + offset),
                    Arrival::InOrder
                );
            }
        }
        let (t, missing) = ledger.reckon(10);
        assert_eq!((t.published, t.owed, t.delivered, t.lost), (3, 6, 6, 0));
        assert!(missing.is_empty());
    }

    #[test]
    fn a_skipped_offset_is_lost_unless_the_hub_declared_the_gap() {
        let ledger = one_channel(2);
        for s in 0..2 {
            ledger.subscriber(s).subscribed(None, 0, true);
        }
        for offset in 1..=4 {
            ledger.published(0, offset, offset);
        }
        // Subscriber 0 misses 2 and 3 silently; subscriber 1 was told they are gone.
        for offset in [1, 4] {
            ledger.subscriber(0).message(offset, offset);
        }
        ledger.subscriber(1).message(1, 1);
        ledger.subscriber(1).subscribed(Some(1), 3, false);
        ledger.subscriber(1).message(4, 4);
        let (t, missing) = ledger.reckon(10);
        assert_eq!((t.delivered, t.lost, t.unrecovered), (4, 2, 2));
        assert_eq!(
            missing
                .iter()
                .map(|m| (m.subscriber, m.offset))
                .collect::<Vec<_>>(),
            [(0, 2), (0, 3)]
        );
    }

    #[test]
    fn a_repeat_is_a_duplicate_and_an_older_unseen_offset_is_out_of_order() {
        let ledger = one_channel(1);
        let s = ledger.subscriber(0);
        s.subscribed(None, 10, true);
        assert_eq!(s.message(12, 1), Arrival::InOrder);
        assert_eq!(s.message(12, 1), Arrival::Duplicate);
        assert_eq!(s.message(11, 2), Arrival::OutOfOrder);
        assert_eq!(s.message(9, 3), Arrival::OutOfOrder);
        let (t, _) = ledger.reckon(0);
        assert_eq!((t.duplicated, t.out_of_order), (1, 2));
    }

    #[test]
    fn publishes_before_the_first_subscribe_are_not_owed() {
        let ledger = one_channel(1);
        ledger.published(0, 5, 5);
        ledger.subscriber(0).subscribed(None, 5, true);
        ledger.published(0, 6, 6);
        ledger.subscriber(0).message(6, 6);
        let (t, _) = ledger.reckon(0);
        assert_eq!((t.owed, t.delivered, t.lost), (1, 1, 0));
    }

    #[test]
    fn a_frame_carrying_another_message_under_an_acknowledged_offset_is_corrupt() {
        let ledger = one_channel(1);
        ledger.subscriber(0).subscribed(None, 0, true);
        ledger.published(0, 1, 7);
        ledger.subscriber(0).message(1, 8);
        ledger.subscriber(0).message(2, 9);
        let (t, _) = ledger.reckon(0);
        assert_eq!((t.corrupted, t.unacknowledged), (1, 1));
    }

    #[test]
    fn behind_counts_subscribers_short_of_their_channel_top() {
        let ledger = one_channel(2);
        for s in 0..2 {
            ledger.subscriber(s).subscribed(None, 0, true);
        }
        ledger.published(0, 1, 1);
        ledger.subscriber(0).message(1, 1);
        assert_eq!(ledger.behind(), 1);
        ledger.subscriber(1).message(1, 1);
        assert_eq!(ledger.behind(), 0);
    }
}
