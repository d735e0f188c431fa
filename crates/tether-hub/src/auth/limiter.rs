//! A budget of failed authentications per client address.
//!
//! One token check is cheap, but a client that fails again and again still makes the hub
//! accept, upgrade and check each connection. Each address gets a small budget of
//! failures that refills over time; an address that spent it is refused at the HTTP
//! upgrade (429, before any WebSocket or token work) until the budget refills. Clients at
//! other addresses never notice. IPv6 addresses are counted per /64, the block one
//! subscriber usually holds, so rotating through it does not reset the budget.
//!
//! The table is bounded: when it is full, entries whose budget has refilled are dropped;
//! if none has, a new address is not tracked (it is let through, as before the limiter
//! existed) rather than evicting an address that is being limited.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use foldhash::{HashMap, HashMapExt};
use ipnet::IpNet;
use tokio::time::Instant;

/// Most addresses tracked at once.
pub const MAX_TRACKED: usize = 65_536;

/// How many failures an address may have in a burst, and how fast the budget refills.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureBudget {
    pub burst: u32,
    pub per_second: f64,
}

impl Default for FailureBudget {
    fn default() -> Self {
        Self {
            burst: 20,
            per_second: 1.0,
        }
    }
}

/// Failed authentications per address.
pub struct FailureLimiter {
    budget: FailureBudget,
    capacity: usize,
    table: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Tokens now, after refilling since `at`.
    fn refilled(&self, budget: FailureBudget, now: Instant) -> f64 {
        let earned = now.duration_since(self.at).as_secs_f64() * budget.per_second;
        (self.tokens + earned).min(budget.burst as f64)
    }
}

impl FailureLimiter {
    pub fn new(budget: FailureBudget) -> Self {
        Self::with_capacity(budget, MAX_TRACKED)
    }

    fn with_capacity(budget: FailureBudget, capacity: usize) -> Self {
        Self {
            budget,
            capacity,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `addr` still has budget; if not, how long until one failure is allowed.
    pub fn check(&self, addr: IpAddr) -> Result<(), Duration> {
        let key = block_of(addr);
        let now = Instant::now();
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match table.get(&key) {
            Some(bucket) => {
                let tokens = bucket.refilled(self.budget, now);
                if tokens >= 1.0 {
                    Ok(())
                } else {
                    let wait = (1.0 - tokens) / self.budget.per_second;
                    Err(Duration::from_secs_f64(wait.clamp(0.0, 3600.0)))
                }
            }
            None => Ok(()),
        }
    }

    /// Counts a failure from `addr`.
    pub fn failed(&self, addr: IpAddr) {
        let key = block_of(addr);
        let now = Instant::now();
        let budget = self.budget;
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.contains_key(&key) && table.len() >= self.capacity {
            table.retain(|_, b| b.refilled(budget, now) < budget.burst as f64);
            if table.len() >= self.capacity {
                return;
            }
        }
        let bucket = table.entry(key).or_insert(Bucket {
            tokens: budget.burst as f64,
            at: now,
        });
        bucket.tokens = (bucket.refilled(budget, now) - 1.0).max(0.0);
        bucket.at = now;
    }

    /// Addresses tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The address a request comes from: the peer, or — when the peer is a trusted proxy —
/// the rightmost `X-Forwarded-For` entry that is not itself a trusted proxy. Entries
/// further left were written by the client and prove nothing.
pub fn client_addr(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut hops = header.rsplit(',').map(str::trim);
    let mut last = peer;
    for hop in hops.by_ref() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => last = ip,
            Ok(ip) => return ip,
            // Garbage in a hop a trusted proxy wrote: stop at what is known.
            Err(_) => return last,
        }
    }
    last
}

/// The unit a budget belongs to: an IPv4 address, or an IPv6 /64.
fn block_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_is_limited_after_its_burst_and_recovers() {
        let limiter = FailureLimiter::new(FailureBudget {
            burst: 3,
            per_second: 1.0,
        });
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
            limiter.failed(a);
        }
        let wait = limiter.check(a).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(
            limiter.check(ip("10.0.0.2")).is_ok(),
            "others are not affected"
        );
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(limiter.check(a).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_addresses_share_their_slash_64() {
        let limiter = FailureLimiter::new(FailureBudget {
            burst: 2,
            per_second: 0.1,
        });
        limiter.failed(ip("2001:db8::1"));
        limiter.failed(ip("2001:db8::ffff:2"));
        assert!(limiter.check(ip("2001:db8::3")).is_err());
        assert!(limiter.check(ip("2001:db8:0:1::3")).is_ok());
        limiter.failed(ip("::ffff:10.0.0.9"));
        limiter.failed(ip("10.0.0.9"));
        assert!(limiter.check(ip("10.0.0.9")).is_err());
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ];
        let peer = ip("127.0.0.1");
        assert_eq!(
            client_addr(ip("192.0.2.7"), Some("198.51.100.1"), &trusted),
            ip("192.0.2.7")
        );
        assert_eq!(client_addr(peer, None, &trusted), peer);
        assert_eq!(
            client_addr(peer, Some("198.51.100.1"), &trusted),
            ip("198.51.100.1")
        );
        // A client that writes its own header is named by the hop the proxy added.
        assert_eq!(
            client_addr(peer, Some("1.2.3.4, 198.51.100.1, 10.1.2.3"), &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(client_addr(peer, Some("junk"), &trusted), peer);
        assert_eq!(client_addr(peer, Some("198.51.100.1"), &[]), peer);
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded_and_keeps_the_limited() {
        let limiter = FailureLimiter::with_capacity(
            FailureBudget {
                burst: 1,
                per_second: 0.001,
            },
            4,
        );
        for i in 0..10 {
            limiter.failed(ip(&format!("10.0.0.{i}")));
        }
        assert_eq!(limiter.tracked(), 4);
        // The first four are limited and stay so; the rest were let through untracked.
        assert!(limiter.check(ip("10.0.0.0")).is_err());
        assert!(limiter.check(ip("10.0.0.9")).is_ok());
    }
}
