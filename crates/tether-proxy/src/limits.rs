//! Admission control: how many connections, how fast one address may open them, and how
//! fast (and how many at once) handshakes may reach the backends.
//!
//! The backend-side limits exist for reconnect storms: when a backend dies or restarts, all
//! its clients come back at once, and without a limit they land on the survivors in one burst.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Counts open client connections against `maxconn`.
#[derive(Debug, Default)]
pub struct ConnectionGate {
    open: AtomicUsize,
    max: usize,
}

/// One admitted connection; leaves the gate when dropped.
#[derive(Debug)]
pub struct Admitted(Arc<ConnectionGate>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionGate {
    pub fn new(max: usize) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Admits a connection, or `None` when `maxconn` are open already.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let n = self.open.fetch_add(1, Ordering::Relaxed);
        let admitted = Admitted(self.clone());
        (self.max == 0 || n < self.max).then_some(admitted)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// Token buckets per client IP: `rate` handshakes per second with a `burst` allowance.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Above this many addresses a shard forgets the ones whose buckets have refilled.
const SHARD_SOFT_CAP: usize = 4096;

impl RateLimiter {
    /// `None` when `rate` is 0 (no limit).
    pub fn new(rate: u32, burst: u32) -> Option<RateLimiter> {
        (rate > 0).then(|| RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(if burst == 0 { rate } else { burst }),
            shards: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    /// Takes a token for `ip`; false when its bucket is empty.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let shard = &self.shards[shard_of(ip) % self.shards.len()];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > SHARD_SOFT_CAP {
            let full = self.burst / self.rate;
            map.retain(|_, b| now.duration_since(b.at).as_secs_f64() < full);
        }
        let bucket = map.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One backend's handshake budget: `rate` per second with a burst of one second's worth.
#[derive(Debug)]
pub struct HandshakeRate {
    rate: f64,
    bucket: Mutex<Bucket>,
}

impl HandshakeRate {
    pub fn new(rate: NonZeroU32) -> HandshakeRate {
        let rate = f64::from(rate.get());
        HandshakeRate {
            rate,
            bucket: Mutex::new(Bucket {
                tokens: rate,
                at: Instant::now(),
            }),
        }
    }

    /// Takes a token; false when the backend has had its share of handshakes for now.
    pub fn allow(&self, now: Instant) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.rate);
        b.at = now.max(b.at);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Handshakes in flight proxy-wide: from the backend being chosen to its answer.
#[derive(Debug)]
pub struct PendingGate {
    pending: AtomicUsize,
    max: NonZeroUsize,
}

/// One handshake in flight; leaves the gate when dropped.
#[derive(Debug)]
pub struct Pending(Arc<PendingGate>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PendingGate {
    pub fn new(max: NonZeroUsize) -> Arc<PendingGate> {
        Arc::new(PendingGate {
            pending: AtomicUsize::new(0),
            max,
        })
    }

    /// Admits a handshake, or `None` when `max` are in flight already.
    pub fn admit(self: &Arc<Self>) -> Option<Pending> {
        let n = self.pending.fetch_add(1, Ordering::Relaxed);
        let pending = Pending(self.clone());
        (n < self.max.get()).then_some(pending)
    }
}

/// `base` to `2 × base` seconds, uniformly: clients refused together come back spread out
/// instead of as the next storm.
pub fn jittered_retry_after(base: u32) -> u32 {
    use rand::Rng;
    let base = base.max(1);
    base + rand::rng().random_range(0..=base)
}

fn shard_of(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(v4) => v4.octets()[3] as usize,
        IpAddr::V6(v6) => v6.octets()[15] as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn gate_refuses_above_maxconn_and_frees_on_drop() {
        let gate = ConnectionGate::new(2);
        let a = gate.admit().unwrap();
        let _b = gate.admit().unwrap();
        assert!(gate.admit().is_none());
        drop(a);
        assert!(gate.admit().is_some());
    }

    #[test]
    fn backend_rate_allows_one_second_then_refills() {
        let r = HandshakeRate::new(NonZeroU32::new(5).unwrap());
        let t0 = Instant::now();
        assert_eq!((0..20).filter(|_| r.allow(t0)).count(), 5);
        let t1 = t0 + Duration::from_millis(400);
        assert_eq!((0..20).filter(|_| r.allow(t1)).count(), 2);
    }

    #[test]
    fn pending_gate_caps_handshakes_in_flight() {
        let gate = PendingGate::new(NonZeroUsize::new(1).unwrap());
        let a = gate.admit().unwrap();
        assert!(gate.admit().is_none());
        drop(a);
        assert!(gate.admit().is_some());
    }

    #[test]
    fn retry_after_varies_within_twice_the_base() {
        let seen: std::collections::HashSet<u32> =
            (0..200).map(|_| jittered_retry_after(2)).collect();
        assert!(seen.iter().all(|s| (2..=4).contains(s)), "{seen:?}");
        assert!(seen.len() > 1, "no jitter: {seen:?}");
    }

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let rl = RateLimiter::new(10, 3).unwrap();
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| rl.allow(ip, t0)));
        assert!(!rl.allow(ip, t0));
        assert!(
            rl.allow("127.0.0.3".parse().unwrap(), t0),
            "other addresses are not affected"
        );
        assert!(rl.allow(ip, t0 + Duration::from_millis(110)));
    }
}
