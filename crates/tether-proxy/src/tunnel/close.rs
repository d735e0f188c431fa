//! Closing live tunnels on purpose: one at a time (a [`Ticket`] per tunnel), found through
//! the [`TunnelTable`], and paced ([`spread`]) so that their clients come back over a window
//! instead of in one burst.
//!
//! A tunnel registers in the table when it starts (one lock of one shard) and leaves it when
//! it ends. While it runs, its only link to all of this is one atomic load per wake-up of
//! its ticket's reason: a drain, a rebalance or a shutdown sets the reason and wakes the
//! tunnel's task, which then finishes the frame under way and says goodbye (see
//! `tunnel::goodbye`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use rand::Rng;

use crate::backend::Backend;

/// Why the proxy ends a tunnel, which says which close code its client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The proxy is shutting down: 1001 Going Away.
    Shutdown = 1,
    /// Its backend is being drained: 1012 Service Restart (come back now, elsewhere).
    Drain = 2,
    /// Its key belongs to another backend now (or its backend is above the bound): 1012.
    Rebalance = 3,
}

impl CloseReason {
    pub(crate) fn from_u8(v: u8) -> Option<CloseReason> {
        match v {
            1 => Some(CloseReason::Shutdown),
            2 => Some(CloseReason::Drain),
            3 => Some(CloseReason::Rebalance),
            _ => None,
        }
    }

    /// The WebSocket close code and reason text the client is sent.
    pub fn close_code(self) -> (u16, &'static str) {
        match self {
            CloseReason::Shutdown => (1001, "proxy shutting down"),
            CloseReason::Drain => (1012, "backend draining"),
            CloseReason::Rebalance => (1012, "rebalancing"),
        }
    }
}

/// One tunnel's order to end. Held by the tunnel and by whoever may close it.
#[derive(Debug, Default)]
pub struct Ticket {
    /// 0 until a close is requested, then a [`CloseReason`]. The first request wins.
    reason: AtomicU8,
    waker: AtomicWaker,
    /// Counted in its backend's `closing` (a close is scheduled or under way).
    scheduled: AtomicBool,
    /// The tunnel has ended: a request now closes nothing.
    ended: AtomicBool,
}

impl Ticket {
    /// Asks the tunnel to end for `reason`. False when it already ended or was already asked.
    pub fn request(&self, reason: CloseReason) -> bool {
        if self.ended.load(Ordering::Acquire) {
            return false;
        }
        let first = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::Release, Ordering::Relaxed)
            .is_ok();
        if first {
            self.waker.wake();
        }
        first
    }

    /// The reason, once requested.
    #[inline]
    pub fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.reason.load(Ordering::Acquire))
    }

    /// Leaves the waker of the task to wake on a request. A tunnel calls it once: its task's
    /// waker does not change, and registering on every wake-up would cost atomics for
    /// nothing.
    pub fn listen(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    pub fn is_requested(&self) -> bool {
        self.reason.load(Ordering::Relaxed) != 0
    }

    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

/// A live tunnel as the table knows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub ticket: Arc<Ticket>,
    pub backend: Arc<Backend>,
    /// The hash of its routing key (consistent hashing), for a rebalance.
    pub key: Option<u64>,
}

impl Entry {
    /// Counts the tunnel in its backend's `closing` until it ends; false if it already was.
    pub fn mark_scheduled(&self) -> bool {
        if self.ticket.has_ended() || self.ticket.scheduled.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.backend.closing_started();
        true
    }

    fn is_scheduled(&self) -> bool {
        self.ticket.scheduled.load(Ordering::Acquire)
    }

    /// Takes back a mark that will not be followed by a close (a drain called off).
    pub fn unmark_scheduled(&self) {
        if self.ticket.scheduled.swap(false, Ordering::AcqRel) {
            self.backend.closing_ended();
        }
    }
}

const SHARDS: usize = 16;

/// Every live tunnel, by connection id, so drains, rebalances and shutdowns can find them.
/// Sharded so that tunnels starting and ending on different threads rarely meet on a lock.
#[derive(Debug, Default)]
pub struct TunnelTable {
    shards: [Mutex<HashMap<u64, Entry>>; SHARDS],
}

impl TunnelTable {
    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.shards[(id % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a tunnel; it leaves the table when the registration drops.
    pub fn register(&self, id: u64, backend: Arc<Backend>, key: Option<u64>) -> Registration<'_> {
        let ticket = Arc::new(Ticket::default());
        let entry = Entry {
            ticket: ticket.clone(),
            backend,
            key,
        };
        self.shard(id).insert(id, entry.clone());
        Registration {
            table: self,
            id,
            entry,
        }
    }

    /// The live tunnels `keep` selects, not yet asked to close.
    pub fn select(&self, mut keep: impl FnMut(&Entry) -> bool) -> Vec<Entry> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(
                shard
                    .values()
                    .filter(|e| !e.ticket.is_requested() && keep(e))
                    .cloned(),
            );
        }
        out
    }

    /// Asks every live tunnel to close now.
    pub fn request_all(&self, reason: CloseReason) {
        for entry in self.select(|_| true) {
            entry.mark_scheduled();
            entry.ticket.request(reason);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tunnel's place in the table, for as long as the tunnel runs.
#[derive(Debug)]
pub struct Registration<'a> {
    table: &'a TunnelTable,
    id: u64,
    entry: Entry,
}

impl Registration<'_> {
    pub fn ticket(&self) -> &Ticket {
        &self.entry.ticket
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.entry.ticket.ended.store(true, Ordering::Release);
        self.table.shard(self.id).remove(&self.id);
        self.entry.unmark_scheduled();
    }
}

/// Closes `entries` for `reason` at moments drawn uniformly at random over `window`, so
/// their clients reconnect spread over it. Each is counted in its backend's `closing` from
/// the call (not from the first poll, so an answer given right after shows them) until it
/// ends. `go_on` is asked before each close; once it says no, the rest are left open and
/// uncounted (an `enable` calls a drain off). The future resolves to how many were closed.
pub fn spread(
    entries: Vec<Entry>,
    reason: CloseReason,
    window: Duration,
    go_on: impl Fn() -> bool,
) -> impl std::future::Future<Output = usize> {
    let start = tokio::time::Instant::now();
    let mut planned: Vec<(Duration, Entry)> = {
        let mut rng = rand::rng();
        // A tunnel an earlier drain already counts stays in this plan: that drain is being
        // superseded and will not close it.
        entries
            .into_iter()
            .filter(|e| e.mark_scheduled() || e.is_scheduled())
            .map(|e| (window.mul_f64(rng.random::<f64>()), e))
            .collect()
    };
    planned.sort_by_key(|(at, _)| *at);
    async move {
        let mut closed = 0;
        let mut planned = planned.into_iter();
        while let Some((at, entry)) = planned.next() {
            tokio::time::sleep_until(start + at).await;
            if !go_on() {
                entry.unmark_scheduled();
                for (_, rest) in planned.by_ref() {
                    rest.unmark_scheduled();
                }
                break;
            }
            // Counted again if a superseded drain took its mark back meanwhile. A request that
            // loses (someone else closes it, or it ended) leaves the count to them.
            entry.mark_scheduled();
            if entry.ticket.request(reason) {
                closed += 1;
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;
    use crate::metrics::Metrics;

    fn backend() -> Arc<Backend> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        Arc::new(Backend::new(
            &BackendConfig::new("b", addr),
            &Metrics::new(),
        ))
    }

    #[test]
    fn the_first_request_wins_and_an_ended_tunnel_ignores_requests() {
        let table = TunnelTable::default();
        let b = backend();
        let reg = table.register(1, b.clone(), None);
        assert!(reg.ticket().request(CloseReason::Drain));
        assert!(!reg.ticket().request(CloseReason::Shutdown));
        assert_eq!(reg.ticket().reason(), Some(CloseReason::Drain));
        let ticket = table.select(|_| true);
        assert!(
            ticket.is_empty(),
            "a tunnel asked to close is not selected again"
        );
        drop(reg);
        assert!(table.is_empty());
    }

    #[tokio::test]
    async fn spread_counts_closing_until_each_tunnel_ends_and_can_be_called_off() {
        let table = TunnelTable::default();
        let b = backend();
        let regs: Vec<_> = (0..40)
            .map(|i| table.register(i, b.clone(), None))
            .collect();
        let entries = table.select(|_| true);
        let go = std::sync::atomic::AtomicBool::new(true);
        let window = Duration::from_millis(800);
        let run = spread(entries, CloseReason::Drain, window, || {
            go.load(Ordering::Relaxed)
        });
        // Counted from the call, before the first poll.
        assert_eq!(b.closing(), 40);
        let mut run = std::pin::pin!(run);
        let half = tokio::time::timeout(window / 2, run.as_mut()).await;
        assert!(half.is_err(), "done before the window was over");
        let asked = regs.iter().filter(|r| r.ticket().is_requested()).count();
        assert!((1..40).contains(&asked), "{asked} of 40 asked half-way");
        go.store(false, Ordering::Relaxed);
        let closed = run.await;
        assert!(
            closed >= asked && closed < 40,
            "{closed} closed, {asked} asked"
        );
        // The ones not asked are no longer counted; the asked ones are until they end.
        assert_eq!(b.closing(), closed);
        drop(regs);
        assert_eq!(b.closing(), 0);
    }
}
