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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

use super::trace::{Step, Trace};

/// Subscribers whose trace [`Ledger::explain`] writes out: enough to see a pattern.
const EXPLAINED: usize = 20;

/// One channel's acknowledged publishes.
#[derive(Debug)]
struct ChannelBook {
    name: String,
    /// `(offset, tag)` in the order the answers arrived.
    published: Mutex<Vec<(u64, u64)>>,
    /// The highest offset acknowledged so far (0: none; the hub never hands out 0).
    highest: AtomicU64,
}

/// A `subscribe` as it was sent: its `since`, and the channel's highest acknowledged offset
/// at that moment, which bounds what a `recovered: false` answer to it may declare gone
/// (see [`SubscriberBook::subscribed`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asked {
    /// `None` for the first subscribe of the run.
    pub since: Option<u64>,
    pub acknowledged: Option<u64>,
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
    /// What the subscriber went through, to explain a missing delivery.
    trace: Trace,
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

    /// Records the `subscribed` answer to `asked`.
    ///
    /// `recovered: false` declares messages after `since` gone (docs/protocol.md). Which
    /// ones: those history no longer holds, so the span runs from `since` to the newest
    /// message that was already stored when the hub read its history. That is at least
    /// the answer's `offset` (its top), and at least every publish acknowledged before the
    /// subscribe was sent (stored before the hub read anything for it). The two differ
    /// when the broker lost its data and the channel's new log was still empty: the
    /// answer is `offset: 0`, below `since`, yet the messages acknowledged after `since`
    /// in the lost log are exactly what the hub said is gone. Nothing acknowledged later
    /// is excused: a new log's offsets are above every old one, and a message stored
    /// before the read and kept would have made the top reach it.
    pub fn subscribed(&self, asked: Asked, top: u64, recovered: bool) {
        let mut r = self.lock();
        match asked.since {
            None => {
                if r.start.is_none() {
                    r.start = Some(top);
                }
                if r.last.is_none() {
                    r.last = Some(top);
                }
            }
            Some(since) if !recovered => {
                let gone_up_to = top.max(asked.acknowledged.unwrap_or(0));
                if gone_up_to > since {
                    r.gaps.push((since, gone_up_to));
                }
            }
            Some(_) => {}
        }
    }

    /// Notes a step of the subscriber's life in its trace (see `trace`).
    pub fn step(&self, step: Step) {
        self.lock().trace.push(step);
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
                    highest: AtomicU64::new(0),
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
        let book = &self.channels[channel];
        book.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((offset, tag));
        book.highest.fetch_max(offset, Ordering::AcqRel);
    }

    /// What subscriber `index` asks for now: `since` its last offset, and its channel's
    /// highest acknowledged offset at this moment. Take it just before sending the frame.
    pub fn asking(&self, index: usize) -> Asked {
        let subscriber = &self.subscribers[index];
        let highest = self.channels[subscriber.channel]
            .highest
            .load(Ordering::Acquire);
        Asked {
            since: subscriber.since(),
            acknowledged: (highest != 0).then_some(highest),
        }
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

    /// For each subscriber with a missing delivery in `missing`: the offsets it did receive
    /// either side of each hole, and its trace, to look up in the hubs' logs.
    pub fn explain(&self, missing: &[Missing]) -> String {
        let mut out = String::new();
        let mut seen = Vec::new();
        for m in missing {
            if seen.contains(&m.subscriber) {
                continue;
            }
            if seen.len() == EXPLAINED {
                break;
            }
            seen.push(m.subscriber);
            let r = self.subscribers[m.subscriber].lock();
            out.push_str(&format!("s{} on {}:\n", m.subscriber, m.channel));
            for hole in missing.iter().filter(|h| h.subscriber == m.subscriber) {
                let at = r.got.partition_point(|&(o, _)| o < hole.offset);
                let before = at.checked_sub(1).map(|i| r.got[i].0);
                let after = r.got.get(at).map(|&(o, _)| o);
                out.push_str(&format!(
                    "  missing {} (received before it: {}, after it: {})\n",
                    hole.offset,
                    before.map_or_else(|| "none".to_owned(), |o| o.to_string()),
                    after.map_or_else(|| "none".to_owned(), |o| o.to_string()),
                ));
            }
            out.push_str(&r.trace.render("  "));
        }
        out
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
            ledger.subscriber(s).subscribed(Asked::default(), 0, true);
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
            ledger.subscriber(s).subscribed(Asked::default(), 0, true);
        }
        for offset in 1..=4 {
            ledger.published(0, offset, offset);
        }
        // Subscriber 0 misses 2 and 3 silently; subscriber 1 was told they are gone.
        for offset in [1, 4] {
            ledger.subscriber(0).message(offset, offset);
        }
        ledger.subscriber(1).message(1, 1);
        let asked = Asked {
            since: Some(1),
            acknowledged: Some(3),
        };
        ledger.subscriber(1).subscribed(asked, 3, false);
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

    /// Found by the 60 s soak (docs/soak.md): a subscriber stalled while its channel's
    /// next two publishes were acknowledged, then Redis lost its data. Its resume was
    /// answered `recovered: false` with `offset: 0` (the new log still empty), and the
    /// ledger, which excused only `(since, offset]`, counted the two as lost.
    #[test]
    fn a_resume_into_an_empty_new_log_excuses_what_was_acknowledged_before_it() {
        let ledger = one_channel(1);
        let s = ledger.subscriber(0);
        s.subscribed(ledger.asking(0), 0, true);
        ledger.published(0, 100, 1);
        s.message(100, 1);
        // Acknowledged while the subscriber was away; then the log is lost.
        ledger.published(0, 101, 2);
        ledger.published(0, 102, 3);
        let asked = ledger.asking(0);
        assert_eq!(
            asked,
            Asked {
                since: Some(100),
                acknowledged: Some(102)
            }
        );
        s.subscribed(asked, 0, false);
        // The new log's messages are owed as ever: one arrives, one does not.
        ledger.published(0, 5_000, 4);
        ledger.published(0, 5_001, 5);
        s.message(5_000, 4);
        let (t, missing) = ledger.reckon(10);
        assert_eq!((t.delivered, t.unrecovered, t.lost), (2, 2, 1));
        assert_eq!(
            missing.iter().map(|m| m.offset).collect::<Vec<_>>(),
            [5_001]
        );
    }

    #[test]
    fn a_publish_acknowledged_after_the_subscribe_was_sent_is_never_excused() {
        let ledger = one_channel(1);
        let s = ledger.subscriber(0);
        s.subscribed(ledger.asking(0), 0, true);
        ledger.published(0, 100, 1);
        s.message(100, 1);
        let asked = ledger.asking(0);
        // Acknowledged after the frame went out: the hub may have read history before it
        // was stored, so an answer cannot speak for it.
        ledger.published(0, 101, 2);
        s.subscribed(asked, 0, false);
        let (t, missing) = ledger.reckon(10);
        assert_eq!((t.unrecovered, t.lost), (0, 1));
        assert_eq!(missing[0].offset, 101);
    }

    #[test]
    fn a_repeat_is_a_duplicate_and_an_older_unseen_offset_is_out_of_order() {
        let ledger = one_channel(1);
        let s = ledger.subscriber(0);
        s.subscribed(Asked::default(), 10, true);
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
        ledger.subscriber(0).subscribed(Asked::default(), 5, true);
        ledger.published(0, 6, 6);
        ledger.subscriber(0).message(6, 6);
        let (t, _) = ledger.reckon(0);
        assert_eq!((t.owed, t.delivered, t.lost), (1, 1, 0));
    }

    #[test]
    fn a_frame_carrying_another_message_under_an_acknowledged_offset_is_corrupt() {
        let ledger = one_channel(1);
        ledger.subscriber(0).subscribed(Asked::default(), 0, true);
        ledger.published(0, 1, 7);
        ledger.subscriber(0).message(1, 8);
        ledger.subscriber(0).message(2, 9);
        let (t, _) = ledger.reckon(0);
        assert_eq!((t.corrupted, t.unacknowledged), (1, 1));
    }

    #[test]
    fn explain_shows_the_offsets_around_each_hole_and_the_subscribers_trace() {
        let ledger = one_channel(2);
        for s in 0..2 {
            ledger.subscriber(s).subscribed(Asked::default(), 0, true);
        }
        let s = ledger.subscriber(1);
        s.step(Step::Welcome {
            node: "hub2".into(),
        });
        s.step(Step::Subscribe {
            asked: Asked::default(),
        });
        for offset in 1..=4 {
            ledger.published(0, offset, offset);
            ledger.subscriber(0).message(offset, offset);
        }
        for offset in [1, 4] {
            s.message(offset, offset);
        }
        let (_, missing) = ledger.reckon(10);
        let text = ledger.explain(&missing);
        assert!(text.starts_with("s1 on c:\n"), "{text}");
        assert!(
            text.contains("  missing 2 (received before it: 1, after it: 4)\n"),
            "{text}"
        );
        assert!(text.contains(" welcome node=hub2\n"), "{text}");
        assert!(
            text.contains(" subscribe since=- (acknowledged up to -)\n"),
            "{text}"
        );
        assert!(!text.contains("s0 "), "{text}");
    }

    #[test]
    fn behind_counts_subscribers_short_of_their_channel_top() {
        let ledger = one_channel(2);
        for s in 0..2 {
            ledger.subscriber(s).subscribed(Asked::default(), 0, true);
        }
        ledger.published(0, 1, 1);
        ledger.subscriber(0).message(1, 1);
        assert_eq!(ledger.behind(), 1);
        ledger.subscriber(1).message(1, 1);
        assert_eq!(ledger.behind(), 0);
    }
}
