//! Backends: what the balancer chooses among, and the live state each one carries.
//!
//! A [`Backend`] outlives configuration reloads as long as its name and address stay the same,
//! so its counters, health and the tunnels that hold a [`Lease`] on it are not disturbed. The
//! set the balancer reads is an immutable [`BackendSet`] snapshot swapped in whole.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use crate::balance::Ring;
use crate::config::BackendConfig;
use crate::metrics::{BackendLabel, BytesLabels, Direction, HandshakeLabels, Metrics};

/// The position of a backend in one [`BackendSet`] snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendId(pub(crate) u32);

impl BackendId {
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// What the admin API reports for a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    Up,
    Down,
    Draining,
}

const HEALTH_UP: u8 = 1;
const HEALTH_DOWN: u8 = 0;

/// A health transition worth logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    WentUp,
    WentDown,
}

/// Per-backend metric handles, cloned out of their families once.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    pub active: Gauge,
    pub up: Gauge,
    pub bytes_to_backend: Counter,
    pub bytes_to_client: Counter,
    pub failures: Counter,
    /// Handshakes refused with 503 because of `[limits] backend_handshake_rate`.
    pub throttled: Counter,
    /// `tether_handshakes_total{status="101"}` of this backend, looked up on first use (so
    /// the series appears with the first upgrade, as before) and then kept.
    switched: OnceLock<Counter>,
}

impl BackendMetrics {
    fn new(metrics: &Metrics, name: &str) -> BackendMetrics {
        let label = BackendLabel {
            backend: name.to_owned(),
        };
        let bytes = |direction| {
            metrics
                .bytes
                .get_or_create(&BytesLabels {
                    backend: name.to_owned(),
                    direction,
                })
                .clone()
        };
        BackendMetrics {
            active: metrics.connections_active.get_or_create(&label).clone(),
            up: metrics.backend_up.get_or_create(&label).clone(),
            bytes_to_backend: bytes(Direction::ClientToBackend),
            bytes_to_client: bytes(Direction::BackendToClient),
            failures: metrics.backend_failures.get_or_create(&label).clone(),
            throttled: metrics.backend_throttled.get_or_create(&label).clone(),
            switched: OnceLock::new(),
        }
    }

    /// Counts a handshake answered with `status`. A `101` touches only this backend's own
    /// counter; other statuses are rare and go through the label map.
    pub fn record_handshake(&self, metrics: &Metrics, name: &str, status: u16) {
        let counter = |status| {
            metrics.handshakes.get_or_create(&HandshakeLabels {
                backend: name.to_owned(),
                status,
            })
        };
        if status == 101 {
            self.switched.get_or_init(|| counter(101).clone()).inc();
        } else {
            counter(status).inc();
        }
    }
}

/// One upstream server.
#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Live tunnels allowed at most; 0 = no limit.
    pub maxconn: usize,
    /// The opaque value of the LB-inserted sticky cookie that names this backend.
    pub cookie: Arc<str>,
    health: AtomicU8,
    draining: AtomicBool,
    /// Set when a reload removed the backend; its health checker stops.
    retired: AtomicBool,
    failures: AtomicU32,
    successes: AtomicU32,
    pub metrics: BackendMetrics,
    /// TLS to this backend (handshakes and health checks alike); `None` for plain TCP.
    pub tls: Option<crate::tls::BackendConnector>,
    tls_settings: Option<crate::tls::BackendTls>,
    /// `[limits] backend_handshake_rate`: how fast handshakes may reach this backend.
    pub handshake_rate: Option<crate::limits::HandshakeRate>,
    /// Tunnels a drain, rebalance or shutdown is closing (scheduled, not yet ended).
    closing: AtomicUsize,
    /// Bumped by every drain and enable, so a paced drain stops once it is superseded.
    drain_epoch: AtomicU64,
}

impl Backend {
    pub fn new(config: &BackendConfig, metrics: &Metrics) -> Backend {
        let m = BackendMetrics::new(metrics, &config.name);
        m.up.set(1);
        Backend {
            name: Arc::from(config.name.as_str()),
            addr: config.addr,
            weight: config.weight,
            maxconn: config.maxconn,
            cookie: Arc::from(cookie_value(&config.name).as_str()),
            health: AtomicU8::new(HEALTH_UP),
            draining: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            metrics: m,
            tls: config.connector.clone(),
            tls_settings: config.tls_settings.clone(),
            handshake_rate: config.handshake_rate.map(crate::limits::HandshakeRate::new),
            closing: AtomicUsize::new(0),
            drain_epoch: AtomicU64::new(0),
        }
    }

    /// Tunnels being closed on purpose (drain, rebalance, shutdown) and not yet ended.
    pub fn closing(&self) -> usize {
        self.closing.load(Ordering::Relaxed)
    }

    pub(crate) fn closing_started(&self) {
        self.closing.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closing_ended(&self) {
        self.closing.fetch_sub(1, Ordering::Relaxed);
    }

    /// Starts a drain (or an enable): returns its epoch; earlier paced drains stop.
    pub(crate) fn next_drain_epoch(&self) -> u64 {
        self.drain_epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// True while the drain of `epoch` is the latest change and the backend still drains.
    pub(crate) fn drain_current(&self, epoch: u64) -> bool {
        self.drain_epoch.load(Ordering::Acquire) == epoch && self.state() == BackendState::Draining
    }

    pub fn state(&self) -> BackendState {
        if self.draining.load(Ordering::Relaxed) {
            BackendState::Draining
        } else if self.is_healthy() {
            BackendState::Up
        } else {
            BackendState::Down
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.health.load(Ordering::Relaxed) == HEALTH_UP
    }

    /// Live tunnels (and handshakes holding a lease).
    pub fn active(&self) -> usize {
        self.metrics.active.get().max(0) as usize
    }

    /// True when a new connection may go here: healthy, not draining, below `maxconn`.
    pub fn accepts_new(&self) -> bool {
        self.state() == BackendState::Up && (self.maxconn == 0 || self.active() < self.maxconn)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
        self.publish_up();
    }

    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Takes a slot for a new connection; the slot is given back when the lease drops.
    pub fn lease(self: &Arc<Self>) -> Lease {
        self.metrics.active.inc();
        Lease {
            backend: self.clone(),
            key: None,
        }
    }

    /// A failed check, connect or 5xx handshake. After `fall` in a row the backend goes down.
    pub fn record_failure(&self, fall: u32) -> Option<Transition> {
        self.successes.store(0, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= fall && self.health.swap(HEALTH_DOWN, Ordering::Relaxed) == HEALTH_UP {
            self.publish_up();
            return Some(Transition::WentDown);
        }
        None
    }

    /// A passed check or a good handshake. A down backend comes back after `rise` in a row.
    pub fn record_success(&self, rise: u32) -> Option<Transition> {
        self.failures.store(0, Ordering::Relaxed);
        if self.is_healthy() {
            return None;
        }
        let n = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= rise && self.health.swap(HEALTH_UP, Ordering::Relaxed) == HEALTH_DOWN {
            self.successes.store(0, Ordering::Relaxed);
            self.publish_up();
            return Some(Transition::WentUp);
        }
        None
    }

    fn publish_up(&self) {
        self.metrics
            .up
            .set(i64::from(self.state() == BackendState::Up));
    }
}

/// The sticky cookie value for a backend: a hash of its name, so it reveals no address and is
/// the same on every proxy instance that shares the configuration.
fn cookie_value(name: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(name.as_bytes()))
}

/// A slot on a backend held by one client connection.
#[derive(Debug)]
pub struct Lease {
    backend: Arc<Backend>,
    /// The hash of the routing key the backend was chosen by (consistent hashing), so a
    /// rebalance can tell where the connection belongs once the ring changes.
    key: Option<u64>,
}

impl Lease {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    pub fn key(&self) -> Option<u64> {
        self.key
    }

    /// Notes the routing key the connection was placed by.
    pub fn set_key(&mut self, key: Option<&[u8]>) {
        self.key = key.map(crate::balance::key_hash);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.metrics.active.dec();
    }
}

/// An immutable snapshot of the backends and the structures derived from them.
#[derive(Debug)]
pub struct BackendSet {
    pub backends: Vec<Arc<Backend>>,
    pub ring: Ring,
    /// Backend ids in smooth weighted round-robin order.
    pub schedule: Vec<BackendId>,
}

impl BackendSet {
    fn new(backends: Vec<Arc<Backend>>) -> BackendSet {
        let ring = Ring::new(&backends);
        let schedule = crate::balance::weighted_schedule(&backends);
        BackendSet {
            backends,
            ring,
            schedule,
        }
    }

    pub fn get(&self, id: BackendId) -> &Arc<Backend> {
        &self.backends[id.index()]
    }

    pub fn ids(&self) -> impl Iterator<Item = BackendId> + '_ {
        (0..self.backends.len() as u32).map(BackendId)
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| &*b.name == name)
    }

    pub fn by_cookie(&self, value: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| &*b.cookie == value)
    }
}

/// The current backend set, replaced whole on reload.
#[derive(Debug)]
pub struct Registry {
    current: RwLock<Arc<BackendSet>>,
}

impl Registry {
    pub fn new(configs: &[BackendConfig], metrics: &Metrics) -> Registry {
        let backends = configs
            .iter()
            .map(|c| Arc::new(Backend::new(c, metrics)))
            .collect();
        Registry {
            current: RwLock::new(Arc::new(BackendSet::new(backends))),
        }
    }

    pub fn snapshot(&self) -> Arc<BackendSet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the backend list. A backend whose name and address are unchanged keeps its
    /// state and live tunnels; one that left is retired (its tunnels run on); a new one starts up.
    /// Returns the backends that are new, so their health checks can start.
    pub fn reload(&self, configs: &[BackendConfig], metrics: &Metrics) -> Vec<Arc<Backend>> {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        let old = guard.clone();
        let mut added = Vec::new();
        let backends: Vec<Arc<Backend>> = configs
            .iter()
            .map(|c| match old.by_name(&c.name) {
                Some(b)
                    if b.addr == c.addr
                        && b.weight == c.weight
                        && b.maxconn == c.maxconn
                        && b.tls_settings == c.tls_settings =>
                {
                    b.clone()
                }
                _ => {
                    let b = Arc::new(Backend::new(c, metrics));
                    added.push(b.clone());
                    b
                }
            })
            .collect();
        for b in &old.backends {
            if !backends.iter().any(|n| Arc::ptr_eq(n, b)) {
                b.retire();
                if !backends.iter().any(|n| n.name == b.name) {
                    b.metrics.up.set(0);
                }
            }
        }
        *guard = Arc::new(BackendSet::new(backends));
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, port: u16) -> BackendConfig {
        BackendConfig::new(name, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn fall_failures_take_a_backend_down_and_rise_successes_bring_it_back() {
        let b = Backend::new(&config("b1", 1), &Metrics::new());
        assert_eq!(b.record_failure(3), None);
        assert_eq!(b.record_failure(3), None);
        assert_eq!(b.record_failure(3), Some(Transition::WentDown));
        assert_eq!(b.state(), BackendState::Down);
        assert_eq!(b.record_success(2), None);
        assert_eq!(b.record_success(2), Some(Transition::WentUp));
        assert_eq!(b.state(), BackendState::Up);
    }

    #[test]
    fn lease_counts_until_dropped() {
        let b = Arc::new(Backend::new(&config("b1", 1), &Metrics::new()));
        let l1 = b.lease();
        let l2 = b.lease();
        assert_eq!(b.active(), 2);
        drop(l1);
        assert_eq!(b.active(), 1);
        drop(l2);
        assert_eq!(b.active(), 0);
    }

    #[test]
    fn reload_keeps_unchanged_backends_and_retires_removed_ones() {
        let metrics = Metrics::new();
        let registry = Registry::new(&[config("b1", 1), config("b2", 2)], &metrics);
        let b1 = registry.snapshot().by_name("b1").unwrap().clone();
        let b2 = registry.snapshot().by_name("b2").unwrap().clone();
        b1.set_draining(true);
        let added = registry.reload(&[config("b1", 1), config("b3", 3)], &metrics);
        assert_eq!(added.len(), 1);
        let now = registry.snapshot();
        assert!(Arc::ptr_eq(now.by_name("b1").unwrap(), &b1));
        assert_eq!(b1.state(), BackendState::Draining);
        assert!(b2.is_retired());
        assert!(now.by_name("b2").is_none());
    }

    #[test]
    fn cookie_value_is_opaque_and_stable() {
        let b = Backend::new(&config("b1", 9001), &Metrics::new());
        assert!(!b.cookie.contains("9001"));
        assert_eq!(
            b.cookie,
            Backend::new(&config("b1", 1), &Metrics::new()).cookie
        );
    }
}
