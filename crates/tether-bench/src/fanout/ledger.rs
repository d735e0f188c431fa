//! Who received what: one bit per (subscriber, message) per rate step, plus the latencies.
//!
//! Loss is counted exactly, not estimated: after a step drains, every bit still clear is a
//! message one subscriber never got.
//!
//! Each message also keeps the latency of its first and of its last delivery. The first says
//! how long the way in took (publisher → hub → broker → the node's first write); last − first
//! is the pass of writes over every subscriber. Together they say which of the two makes a
//! step's p99.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::latency::{LatencyRecorder, LatencySummary};

/// The bookkeeping of one publish-rate step.
#[derive(Debug)]
pub struct StepLedger {
    pub rate: f64,
    pub first_seq: u64,
    /// Sequence numbers reserved for the step (its publish budget).
    pub capacity: u64,
    subscribers: usize,
    seen: Vec<AtomicU64>,
    /// Messages the publisher actually sent.
    pub published: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    latency: Mutex<LatencyRecorder>,
    /// Per message of the step: the lowest and the highest latency of its deliveries (µs).
    first_us: Vec<AtomicU64>,
    last_us: Vec<AtomicU64>,
}

/// A step's counts once it has drained.
#[derive(Debug, Clone, Copy)]
pub struct StepTally {
    pub published: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub latency: LatencySummary,
    /// Over the messages delivered at least once: the latency of each one's first delivery,
    /// and of its last.
    pub first_delivery: LatencySummary,
    pub last_delivery: LatencySummary,
}

impl StepLedger {
    pub fn new(rate: f64, first_seq: u64, capacity: u64, subscribers: usize) -> StepLedger {
        let bits = capacity as usize * subscribers;
        StepLedger {
            rate,
            first_seq,
            capacity,
            subscribers,
            seen: (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            latency: Mutex::new(LatencyRecorder::new()),
            first_us: (0..capacity).map(|_| AtomicU64::new(u64::MAX)).collect(),
            last_us: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// True when `seq` was reserved for this step.
    pub fn covers(&self, seq: u64) -> bool {
        seq >= self.first_seq && seq < self.first_seq + self.capacity
    }

    /// Records that `subscriber` got message `seq` after `latency_us`. A second copy counts as a
    /// duplicate, not a delivery.
    pub fn record(&self, subscriber: usize, seq: u64, latency_us: u64) {
        if subscriber >= self.subscribers || !self.covers(seq) {
            return;
        }
        let bit = subscriber as u64 * self.capacity + (seq - self.first_seq);
        let mask = 1u64 << (bit % 64);
        let before = self.seen[(bit / 64) as usize].fetch_or(mask, Ordering::Relaxed);
        if before & mask != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let message = (seq - self.first_seq) as usize;
        self.first_us[message].fetch_min(latency_us, Ordering::Relaxed);
        self.last_us[message].fetch_max(latency_us, Ordering::Relaxed);
        if let Ok(mut latency) = self.latency.lock() {
            latency.record_us(latency_us);
        }
    }

    /// Deliveries still missing against what was published.
    pub fn outstanding(&self) -> u64 {
        self.expected()
            .saturating_sub(self.delivered.load(Ordering::Relaxed))
    }

    fn expected(&self) -> u64 {
        self.published.load(Ordering::Relaxed) * self.subscribers as u64
    }

    pub fn tally(&self) -> StepTally {
        let delivered = self.delivered.load(Ordering::Relaxed);
        let expected = self.expected();
        let (first_delivery, last_delivery) = self.first_and_last();
        StepTally {
            published: self.published.load(Ordering::Relaxed),
            expected,
            delivered,
            lost: expected.saturating_sub(delivered),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            latency: self
                .latency
                .lock()
                .map(|l| l.summary())
                .unwrap_or_else(|p| p.into_inner().summary()),
            first_delivery,
            last_delivery,
        }
    }

    /// Percentiles of the first and of the last delivery of each message delivered at all.
    fn first_and_last(&self) -> (LatencySummary, LatencySummary) {
        let (mut first, mut last) = (LatencyRecorder::new(), LatencyRecorder::new());
        for (lo, hi) in self.first_us.iter().zip(&self.last_us) {
            let lo = lo.load(Ordering::Relaxed);
            if lo != u64::MAX {
                first.record_us(lo);
                last.record_us(hi.load(Ordering::Relaxed));
            }
        }
        (first.summary(), last.summary())
    }
}

/// All steps of a run, looked up by sequence number (there are only a handful).
#[derive(Debug, Default)]
pub struct Ledger {
    steps: RwLock<Vec<Arc<StepLedger>>>,
    /// Deliveries whose sequence number belongs to no step (should stay zero).
    pub stray: AtomicU64,
}

impl Ledger {
    pub fn open_step(&self, step: Arc<StepLedger>) {
        self.steps
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(step);
    }

    /// The step that reserved `seq`.
    pub fn step_for(&self, seq: u64) -> Option<Arc<StepLedger>> {
        let steps = self.steps.read().unwrap_or_else(|p| p.into_inner());
        steps.iter().rev().find(|s| s.covers(seq)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_delivery_is_counted_as_lost() {
        let step = StepLedger::new(10.0, 100, 5, 2);
        step.published.store(3, Ordering::Relaxed);
        for seq in 100..103 {
            step.record(0, seq, 10);
        }
        step.record(1, 100, 10);
        step.record(1, 102, 10);
        let t = step.tally();
        assert_eq!((t.expected, t.delivered, t.lost), (6, 5, 1));
    }

    #[test]
    fn each_message_keeps_its_first_and_last_delivery() {
        let step = StepLedger::new(10.0, 0, 2, 3);
        step.published.store(2, Ordering::Relaxed);
        for (subscriber, latency) in [(0, 900), (1, 100), (2, 500)] {
            step.record(subscriber, 0, latency);
        }
        step.record(0, 1, 300);
        let t = step.tally();
        // Message 0: first 100, last 900; message 1: first = last = 300.
        assert_eq!(t.first_delivery.samples, 2);
        assert_eq!(
            (t.first_delivery.p50_us, t.first_delivery.max_us),
            (100, 300)
        );
        assert_eq!((t.last_delivery.p50_us, t.last_delivery.max_us), (300, 900));
    }

    #[test]
    fn a_second_copy_is_a_duplicate_not_a_delivery() {
        let step = StepLedger::new(10.0, 0, 4, 1);
        step.published.store(1, Ordering::Relaxed);
        step.record(0, 0, 5);
        step.record(0, 0, 5);
        let t = step.tally();
        assert_eq!((t.delivered, t.duplicates, t.lost), (1, 1, 0));
    }

    #[test]
    fn steps_are_found_by_sequence_number() {
        let ledger = Ledger::default();
        ledger.open_step(Arc::new(StepLedger::new(1.0, 0, 10, 1)));
        ledger.open_step(Arc::new(StepLedger::new(2.0, 10, 20, 1)));
        assert_eq!(ledger.step_for(15).unwrap().first_seq, 10);
        assert!(ledger.step_for(30).is_none());
    }
}
