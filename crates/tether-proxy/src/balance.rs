//! Choosing a backend for a new connection.
//!
//! Every strategy counts *live tunnels*, not requests: a WebSocket is one long request, so the
//! only load that matters is how many sockets a backend holds right now.
//!
//! Consistent hashing uses bounded loads (Mirrokni, Thorup, Zadimoghaddam): with factor `f`, a
//! backend takes a new key only while its load is below ⌈f × (total + 1) × weight / Σweights⌉;
//! otherwise the key walks clockwise to the next backend on the ring. The ring is built from
//! backend *names*, so it is the same after a restart, on every proxy instance, and adding or
//! removing one backend moves only the keys that land on (or leave) it.
//!
//! The bound never drops below `bound_floor × weight`: on a nearly idle proxy the bound is 1
//! or 2, which would move a key's second connection (a second tab, a reconnect while the old
//! tunnel closes) for no benefit. Below the floor keys stay where the ring puts them; above
//! it the bound alone decides, so a hot key still spills once a backend is actually loaded.

pub mod rebalance;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;
use xxhash_rust::xxh3::xxh3_64;

use crate::backend::{Backend, BackendId, BackendSet, Lease};
use crate::config::{BalanceConfig, Strategy};

/// Points on the ring per unit of weight: enough that three equal backends split keys within a
/// few percent of a third each.
const POINTS_PER_WEIGHT: u32 = 160;

/// The hash ring of one backend set.
#[derive(Debug, Default)]
pub struct Ring {
    /// Sorted by hash.
    points: Vec<(u64, BackendId)>,
    /// How many backends the points refer to (ids are `0..backends`).
    backends: usize,
}

impl Ring {
    pub fn new(backends: &[Arc<Backend>]) -> Ring {
        let mut points = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            for p in 0..b.weight * POINTS_PER_WEIGHT {
                let label = format!("{}#{p}", b.name);
                points.push((xxh3_64(label.as_bytes()), BackendId(i as u32)));
            }
        }
        points.sort_unstable_by_key(|&(h, _)| h);
        Ring {
            points,
            backends: backends.len(),
        }
    }

    /// Backends in ring order starting at `key`'s position, each once, for any number of
    /// backends (a spill or a retry must be able to reach every one of them).
    pub fn walk(&self, key: &[u8]) -> impl Iterator<Item = BackendId> + '_ {
        self.walk_hash(key_hash(key))
    }

    /// [`Ring::walk`] from a key already hashed with [`key_hash`].
    pub fn walk_hash(&self, hash: u64) -> impl Iterator<Item = BackendId> + '_ {
        let start = self.points.partition_point(|&(h, _)| h < hash);
        let n = self.points.len();
        let mut seen = vec![false; self.backends];
        (0..n).filter_map(move |i| {
            let id = self.points[(start + i) % n].1;
            let slot = seen.get_mut(id.0 as usize)?;
            if std::mem::replace(slot, true) {
                return None;
            }
            Some(id)
        })
    }
}

/// The position of a routing key on the ring.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// A smooth weighted round-robin order (weights 3,1 → a,a,b,a rather than a,a,a,b).
pub fn weighted_schedule(backends: &[Arc<Backend>]) -> Vec<BackendId> {
    let total: i64 = backends.iter().map(|b| i64::from(b.weight)).sum();
    let mut current = vec![0i64; backends.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, b) in current.iter_mut().zip(backends) {
            *c += i64::from(b.weight);
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, -(i as i64)))
        else {
            break;
        };
        current[best] -= total;
        out.push(BackendId(best as u32));
    }
    out
}

/// Why no backend could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("no backend is up")]
    NoneUp,
    #[error("every backend that is up is at its maxconn")]
    AllFull,
}

/// The configured strategy with its running state.
#[derive(Debug)]
pub struct Balancer {
    strategy: Strategy,
    fallback: Strategy,
    factor: f64,
    floor: u32,
    cursor: AtomicUsize,
}

impl Balancer {
    pub fn new(config: &BalanceConfig) -> Balancer {
        Balancer {
            strategy: config.strategy,
            fallback: config.fallback,
            factor: config.balance_factor,
            floor: config.bound_floor,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The most live tunnels a backend of `weight` should hold when `total` are live on
    /// backends weighing `weights` together, as a rebalance measures it: the bounded-loads
    /// bound (with factor 1 when the bound is off), never below the floor.
    pub fn rebalance_bound(&self, total: usize, weight: u32, weights: u32) -> usize {
        let factor = if self.factor == 0.0 { 1.0 } else { self.factor };
        let share = factor * total as f64 * f64::from(weight) / f64::from(weights.max(1));
        (share.ceil() as usize).max(self.floor as usize * weight as usize)
    }

    /// Picks a backend and leases a slot on it. `key` is the routing key when the strategy
    /// uses one; `tried` are backends that already failed for this connection.
    pub fn pick(
        &self,
        set: &BackendSet,
        key: Option<&[u8]>,
        tried: &[BackendId],
    ) -> Result<(BackendId, Lease), PickError> {
        let eligible = |id: &BackendId| !tried.contains(id) && set.get(*id).accepts_new();
        let strategy = match (self.strategy, key) {
            (Strategy::ConsistentHash, None) => self.fallback,
            (s, _) => s,
        };
        let chosen = match strategy {
            Strategy::RoundRobin => self.round_robin(set, &eligible),
            Strategy::LeastConnections => self.least_connections(set, &eligible),
            Strategy::P2c => p2c(set, &eligible),
            Strategy::Random => random(set, &eligible),
            Strategy::ConsistentHash => {
                let key = key.unwrap_or_default();
                self.bounded_hash(set, key, &eligible)
            }
        };
        match chosen {
            Some(id) => Ok((id, set.get(id).lease())),
            None if set
                .backends
                .iter()
                .any(|b| b.state() == crate::backend::BackendState::Up) =>
            {
                Err(PickError::AllFull)
            }
            None => Err(PickError::NoneUp),
        }
    }

    fn round_robin(
        &self,
        set: &BackendSet,
        eligible: &impl Fn(&BackendId) -> bool,
    ) -> Option<BackendId> {
        let n = set.schedule.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| set.schedule[(start + i) % n]).find(eligible)
    }

    fn least_connections(
        &self,
        set: &BackendSet,
        eligible: &impl Fn(&BackendId) -> bool,
    ) -> Option<BackendId> {
        // Rotate the starting point so ties do not always land on the first backend.
        let n = set.backends.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| BackendId(((start + i) % n) as u32))
            .filter(eligible)
            .min_by(|a, b| load_cmp(set.get(*a), set.get(*b)))
    }

    fn bounded_hash(
        &self,
        set: &BackendSet,
        key: &[u8],
        eligible: &impl Fn(&BackendId) -> bool,
    ) -> Option<BackendId> {
        let mut walk = set.ring.walk(key).filter(eligible).peekable();
        if self.factor == 0.0 {
            return walk.next();
        }
        let up: Vec<&Arc<Backend>> = set.backends.iter().filter(|b| b.accepts_new()).collect();
        let total: usize = set.backends.iter().map(|b| b.active()).sum();
        let weights: u32 = up.iter().map(|b| b.weight).sum::<u32>().max(1);
        let first = walk.peek().copied();
        let fits = |id: &BackendId| {
            let b = set.get(*id);
            let bound = (self.factor * (total + 1) as f64 * f64::from(b.weight)
                / f64::from(weights))
            .ceil();
            let floor = f64::from(self.floor) * f64::from(b.weight);
            ((b.active() + 1) as f64) <= bound.max(floor)
        };
        walk.find(fits).or(first)
    }
}

/// Orders by live tunnels per unit of weight.
fn load_cmp(a: &Backend, b: &Backend) -> std::cmp::Ordering {
    (a.active() as u64 * u64::from(b.weight)).cmp(&(b.active() as u64 * u64::from(a.weight)))
}

fn p2c(set: &BackendSet, eligible: &impl Fn(&BackendId) -> bool) -> Option<BackendId> {
    let candidates: Vec<BackendId> = set.ids().filter(eligible).collect();
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (candidates[a], candidates[b]);
            Some(if load_cmp(set.get(b), set.get(a)).is_lt() {
                b
            } else {
                a
            })
        }
    }
}

fn random(set: &BackendSet, eligible: &impl Fn(&BackendId) -> bool) -> Option<BackendId> {
    let candidates: Vec<BackendId> = set.ids().filter(eligible).collect();
    let total: u32 = candidates.iter().map(|id| set.get(*id).weight).sum();
    if total == 0 {
        return None;
    }
    let mut point = rand::rng().random_range(0..total);
    candidates.into_iter().find(|id| {
        let w = set.get(*id).weight;
        if point < w {
            true
        } else {
            point -= w;
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Registry;
    use crate::config::BackendConfig;
    use crate::metrics::Metrics;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn registry(names: &[(&str, u32)]) -> Registry {
        let configs: Vec<BackendConfig> = names
            .iter()
            .enumerate()
            .map(|(i, (n, w))| BackendConfig {
                weight: *w,
                ..BackendConfig::new(n, SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)))
            })
            .collect();
        Registry::new(&configs, &Metrics::new())
    }

    fn balancer(strategy: Strategy, factor: f64) -> Balancer {
        Balancer::new(&BalanceConfig {
            strategy,
            balance_factor: factor,
            bound_floor: 0,
            ..BalanceConfig::default()
        })
    }

    #[test]
    fn smooth_schedule_interleaves_weights() {
        let r = registry(&[("a", 3), ("b", 1)]);
        let s: Vec<u32> = r.snapshot().schedule.iter().map(|id| id.0).collect();
        assert_eq!(s, vec![0, 0, 1, 0]);
    }

    #[test]
    fn ring_moves_only_the_removed_backends_keys() {
        let full = registry(&[("b1", 1), ("b2", 1), ("b3", 1)]).snapshot();
        let less = registry(&[("b1", 1), ("b3", 1)]).snapshot();
        let owner = |set: &BackendSet, k: &str| {
            set.get(set.ring.walk(k.as_bytes()).next().unwrap())
                .name
                .clone()
        };
        let mut moved = 0;
        for i in 0..1000 {
            let k = format!("key-{i}");
            let before = owner(&full, &k);
            let after = owner(&less, &k);
            if &*before != "b2" {
                assert_eq!(before, after, "{k} moved although its backend stayed");
            } else {
                moved += 1;
            }
        }
        assert!((200..470).contains(&moved), "b2 owned {moved} of 1000 keys");
    }

    #[test]
    fn bounded_loads_cap_every_backend() {
        let r = registry(&[("b1", 1), ("b2", 1), ("b3", 1)]);
        let set = r.snapshot();
        let bal = balancer(Strategy::ConsistentHash, 1.25);
        // Every key the same: plain hashing would put all on one backend.
        let leases: Vec<_> = (0..300)
            .map(|_| bal.pick(&set, Some(b"hot"), &[]).unwrap())
            .collect();
        let cap = (1.25f64 * 300.0 / 3.0).ceil() as usize;
        for b in &set.backends {
            assert!(b.active() <= cap, "{} holds {} > {cap}", b.name, b.active());
        }
        drop(leases);
    }

    #[test]
    fn keys_stay_put_below_the_floor_and_spill_above_it() {
        let r = registry(&[("b1", 1), ("b2", 1), ("b3", 1)]);
        let set = r.snapshot();
        let bal = Balancer::new(&BalanceConfig {
            strategy: Strategy::ConsistentHash,
            balance_factor: 1.25,
            bound_floor: 10,
            ..BalanceConfig::default()
        });
        let mut leases = Vec::new();
        for _ in 0..10 {
            leases.push(bal.pick(&set, Some(b"hot"), &[]).unwrap());
        }
        assert!(leases.iter().all(|(id, _)| *id == leases[0].0));
        for _ in 0..290 {
            leases.push(bal.pick(&set, Some(b"hot"), &[]).unwrap());
        }
        let cap = (1.25f64 * 300.0 / 3.0).ceil() as usize;
        for b in &set.backends {
            assert!(b.active() <= cap, "{} holds {} > {cap}", b.name, b.active());
        }
    }

    #[test]
    fn weights_are_honoured_by_round_robin_and_random() {
        for strategy in [Strategy::RoundRobin, Strategy::Random] {
            let r = registry(&[("heavy", 3), ("light", 1)]);
            let set = r.snapshot();
            let bal = balancer(strategy, 0.0);
            let mut counts: HashMap<String, usize> = HashMap::new();
            for _ in 0..4000 {
                let (id, _lease) = bal.pick(&set, None, &[]).unwrap();
                *counts.entry(set.get(id).name.to_string()).or_default() += 1;
            }
            let ratio = counts["heavy"] as f64 / counts["light"] as f64;
            assert!((2.5..3.6).contains(&ratio), "{strategy:?}: {counts:?}");
        }
    }

    #[test]
    fn ring_walk_reaches_every_one_of_200_backends() {
        let names: Vec<String> = (0..200).map(|i| format!("b{i}")).collect();
        let named: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        let set = registry(&named).snapshot();
        for key in ["k", "user-42", ""] {
            let mut walked: Vec<u32> = set.ring.walk(key.as_bytes()).map(|id| id.0).collect();
            assert_eq!(
                walked.len(),
                200,
                "{key:?} walked {} backends",
                walked.len()
            );
            walked.sort_unstable();
            walked.dedup();
            assert_eq!(walked.len(), 200, "{key:?} walked a backend twice");
        }
        // Retries exclude what was tried, so one key can be pushed onto every backend in turn.
        let bal = balancer(Strategy::ConsistentHash, 0.0);
        let mut tried = Vec::new();
        for _ in 0..200 {
            let (id, _lease) = bal.pick(&set, Some(b"k"), &tried).unwrap();
            assert!(!tried.contains(&id));
            tried.push(id);
        }
        assert_eq!(
            bal.pick(&set, Some(b"k"), &tried).unwrap_err(),
            PickError::AllFull
        );
    }

    #[test]
    fn tried_backends_are_skipped() {
        let r = registry(&[("b1", 1), ("b2", 1)]);
        let set = r.snapshot();
        let bal = balancer(Strategy::ConsistentHash, 0.0);
        let (first, _l) = bal.pick(&set, Some(b"k"), &[]).unwrap();
        let (second, _l2) = bal.pick(&set, Some(b"k"), &[first]).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            bal.pick(&set, Some(b"k"), &[first, second]).unwrap_err(),
            PickError::AllFull
        );
    }
}
