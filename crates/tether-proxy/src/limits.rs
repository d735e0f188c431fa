//! Admission control: how many connections, and how fast one address may open them.

use std::collections::HashMap;
use std::net::IpAddr;
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
