//! The state one hub node shares between its connections, HTTP handlers and its handle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore, SemaphorePermit};

use crate::access::Gate;
use crate::broker::Broker;
use crate::channel::Channels;
use crate::config::HubConfig;
use crate::metrics::Metrics;

/// Where the node is in its life; every connection watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Running,
    /// Stop accepting; close each client with 1012 at a random moment within `window`.
    Draining {
        window: Duration,
    },
    /// Drop everything now, as a crash would.
    Aborted,
}

/// History page reads one node may have in flight for replays at once. A page is at most
/// 1 MiB (see `broker::Page`), so this bounds what replays ask of the broker at any moment
/// to a few MiB however many clients resume together, and keeps the broker connection free
/// for publishes.
const REPLAY_READS: usize = 4;

pub struct Node {
    pub config: HubConfig,
    /// Who may connect, subscribe and publish.
    pub gate: Gate,
    pub broker: Arc<dyn Broker>,
    pub channels: Arc<Channels>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: watch::Sender<Lifecycle>,
    live_sessions: AtomicUsize,
    all_closed: Notify,
    replay_reads: Semaphore,
}

impl Node {
    pub fn new(config: HubConfig, broker: Arc<dyn Broker>, gate: Gate) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new());
        let lacks = broker.capabilities().lacks();
        if !lacks.is_empty() {
            tracing::info!(node = %config.name, broker = broker.kind(), ?lacks, "the broker lacks some capabilities; /health says which");
        }
        let channels = Channels::new(broker.clone(), metrics.clone());
        Arc::new(Self {
            config,
            gate,
            broker,
            channels,
            metrics,
            lifecycle: watch::Sender::new(Lifecycle::Running),
            live_sessions: AtomicUsize::new(0),
            all_closed: Notify::new(),
            replay_reads: Semaphore::new(REPLAY_READS),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Counts a session as open until the guard is dropped, however the session ends.
    pub fn session_guard(self: &Arc<Self>) -> SessionGuard {
        self.live_sessions.fetch_add(1, Ordering::SeqCst);
        self.metrics.connections.inc();
        SessionGuard { node: self.clone() }
    }

    /// Waits for a turn to read a page of history for a replay; the turn ends when the
    /// permit is dropped. (`None` never happens: the semaphore is never closed.)
    pub async fn replay_permit(&self) -> Option<SemaphorePermit<'_>> {
        self.replay_reads.acquire().await.ok()
    }

    /// Waits until no session is open.
    pub async fn sessions_closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            if self.live_sessions.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub struct SessionGuard {
    node: Arc<Node>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.node.metrics.connections.dec();
        if self.node.live_sessions.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.node.all_closed.notify_waiters();
        }
    }
}
