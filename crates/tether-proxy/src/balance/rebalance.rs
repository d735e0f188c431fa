//! Rebalancing live tunnels after scale-out (`[rebalance] rate`).
//!
//! A WebSocket lives for hours, so a balancer that only places new connections leaves a
//! backend that joins idle for hours too. When a backend joins (a reload adds it, `enable`
//! ends its drain, a health check brings it up), the proxy closes, with 1012, the tunnels
//! that now belong elsewhere, at `rate` tunnels per second so their clients come back
//! without a burst, and the balancer places them again:
//!
//! * **consistent-hash:** the tunnels whose key's first up backend on the ring is now a
//!   backend that joined. Nothing else moves: a key whose owner did not change stays,
//!   whatever the bound did to it (moving those would churn keys the bound will spill again).
//! * **other strategies:** the tunnels a backend holds above the balance bound
//!   ⌈f × live tunnels × weight ÷ Σweights⌉ (f = `balance_factor`, 1 when it is 0; never below
//!   `bound_floor` × weight), picked at random; measured again after each round, once the
//!   closed clients had a moment to come back, until every backend is within its bound.
//!
//! The watcher compares the set of backends that take new tunnels every [`WATCH`] (and at
//! once on a reload or an enable), so every way a backend joins is seen the same way.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use serde::Serialize;
use tokio::sync::Notify;
use tracing::info;

use crate::backend::{Backend, BackendSet, BackendState};
use crate::config::Strategy;
use crate::shared::Shared;
use crate::tunnel::{CloseReason, Entry};

/// How often the set of up backends is compared with the last one seen.
const WATCH: Duration = Duration::from_millis(250);
/// How long the clients closed in one round get to come back before the next is measured.
const SETTLE: Duration = Duration::from_secs(1);
/// Rounds at most per rebalance (other strategies; a strategy that keeps placing clients
/// back on a loaded backend must not close tunnels forever).
const MAX_ROUNDS: usize = 10;

/// The rebalancer's state, shared with the admin API and the dashboard.
#[derive(Debug, Default)]
pub struct Rebalancer {
    active: AtomicBool,
    left: AtomicUsize,
    moved: AtomicU64,
    kick: Notify,
}

/// What `/api/backends`'s event stream reports about a rebalance.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RebalanceView {
    /// A rebalance is running.
    pub active: bool,
    /// Tunnels this round still has to close.
    pub left: usize,
    /// Tunnels closed by rebalances since the proxy started.
    pub moved: u64,
}

impl Rebalancer {
    /// Looks at the backends now rather than at the next watch tick.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    pub fn view(&self) -> RebalanceView {
        RebalanceView {
            active: self.active.load(Ordering::Relaxed),
            left: self.left.load(Ordering::Relaxed),
            moved: self.moved.load(Ordering::Relaxed),
        }
    }
}

/// Backends that take new tunnels, as pointers to compare.
fn up(set: &BackendSet) -> Vec<Arc<Backend>> {
    set.backends
        .iter()
        .filter(|b| b.state() == BackendState::Up)
        .cloned()
        .collect()
}

/// Watches for backends joining and rebalances after each, until the proxy stops it.
pub async fn run(shared: Arc<Shared>, rate: NonZeroU32) {
    let mut known = up(&shared.registry.snapshot());
    let mut tick = tokio::time::interval(WATCH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.rebalancer.kick.notified() => {}
        }
        let now = up(&shared.registry.snapshot());
        let joined: Vec<Arc<Backend>> = now
            .iter()
            .filter(|b| !known.iter().any(|k| Arc::ptr_eq(k, b)))
            .cloned()
            .collect();
        known = now;
        if !joined.is_empty() {
            rebalance(&shared, &joined, rate).await;
        }
    }
}

/// Closes, at `rate`, the tunnels that belong elsewhere now that `joined` joined.
async fn rebalance(shared: &Shared, joined: &[Arc<Backend>], rate: NonZeroU32) {
    let status = &shared.rebalancer;
    let started = tokio::time::Instant::now();
    let names: Vec<&str> = joined.iter().map(|b| &*b.name).collect();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.get())));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hashing = shared.config.balance.strategy == Strategy::ConsistentHash;
    let mut moved = 0u64;
    for round in 0..MAX_ROUNDS {
        if round > 0 {
            tokio::time::sleep(SETTLE).await;
        }
        let plan = if hashing {
            owned_by_joined(shared, joined)
        } else {
            above_bound(shared)
        };
        if plan.is_empty() {
            break;
        }
        if round == 0 {
            info!(joined = ?names, to_move = plan.len(), rate = rate.get(), "rebalance started");
            status.active.store(true, Ordering::Relaxed);
        }
        let planned: Vec<Entry> = plan.into_iter().filter(Entry::mark_scheduled).collect();
        status.left.store(planned.len(), Ordering::Relaxed);
        for entry in planned {
            ticker.tick().await;
            // A request that loses (a drain closes it, or it ended) leaves the count to them.
            if entry.ticket.request(CloseReason::Rebalance) {
                moved += 1;
                status.moved.fetch_add(1, Ordering::Relaxed);
            }
            status.left.fetch_sub(1, Ordering::Relaxed);
        }
        if hashing {
            break;
        }
    }
    if status.active.swap(false, Ordering::Relaxed) {
        info!(joined = ?names, moved, duration = ?started.elapsed(), "rebalance finished");
    }
}

/// Consistent hashing: the tunnels whose key's owner (the first up backend on the ring) is
/// a backend that joined, and which sit somewhere else. In random order.
fn owned_by_joined(shared: &Shared, joined: &[Arc<Backend>]) -> Vec<Entry> {
    let set = shared.registry.snapshot();
    let owner = |hash: u64| {
        set.ring
            .walk_hash(hash)
            .map(|id| set.get(id))
            .find(|b| b.state() == BackendState::Up)
    };
    let mut plan = shared.tunnels.select(|e| {
        let Some(hash) = e.key else { return false };
        owner(hash).is_some_and(|o| {
            !Arc::ptr_eq(o, &e.backend) && joined.iter().any(|j| Arc::ptr_eq(j, o))
        })
    });
    plan.shuffle(&mut rand::rng());
    plan
}

/// Other strategies: from each up backend above its bound, that many of its tunnels (not
/// already closing), at random.
fn above_bound(shared: &Shared) -> Vec<Entry> {
    let set = shared.registry.snapshot();
    let up = up(&set);
    let total: usize = up.iter().map(|b| b.active()).sum();
    let weights: u32 = up.iter().map(|b| b.weight).sum();
    let mut plan = Vec::new();
    let mut rng = rand::rng();
    for b in &up {
        let bound = shared.balancer.rebalance_bound(total, b.weight, weights);
        let excess = b.active().saturating_sub(bound).saturating_sub(b.closing());
        if excess == 0 {
            continue;
        }
        let mut held = shared.tunnels.select(|e| Arc::ptr_eq(&e.backend, b));
        held.shuffle(&mut rng);
        held.truncate(excess);
        plan.extend(held);
    }
    plan.shuffle(&mut rng);
    plan
}
