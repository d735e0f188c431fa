//! Whether a node's broker is reachable, for `/health` and metrics, whatever the broker.
//!
//! A node wraps its broker in [`Watched`]: every operation's outcome says whether the broker
//! answered (an error that the broker itself sent back still means it is up), and a probe
//! every second says so while nothing else is asked. So a hub started while its broker is
//! down serves `/health` 503 with the reason until the broker comes, and serves again
//! without a restart once it does; and `tether_hub_broker_up` and
//! `tether_hub_broker_failures_total{kind}` show the same to a scraper.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::value::RawValue;
use tokio::sync::watch;

use super::{Broker, BrokerError, Capabilities, Feed, History, Link, Page};
use crate::metrics::Metrics;
use crate::node::Lifecycle;
use crate::protocol::{ChannelName, Offset};

/// How often an idle broker is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one probe may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a node knows of its broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerState {
    /// Not asked yet.
    Unknown,
    Up,
    /// The last operation or probe could not reach it; why.
    Down(String),
}

impl BrokerState {
    pub fn is_up(&self) -> bool {
        matches!(self, BrokerState::Up)
    }
}

/// A broker whose every outcome is recorded (see the module docs).
pub struct Watched {
    inner: Arc<dyn Broker>,
    shared: Arc<Shared>,
}

struct Shared {
    state: watch::Sender<BrokerState>,
    metrics: OnceLock<Arc<Metrics>>,
}

impl Shared {
    fn record<T>(&self, outcome: &Result<T, BrokerError>) {
        let state = match outcome {
            Ok(_) => BrokerState::Up,
            Err(error) => {
                if let Some(metrics) = self.metrics.get() {
                    metrics.broker_failure(error.kind());
                }
                if !error.means_unreachable() {
                    // The broker answered, if only to refuse.
                    BrokerState::Up
                } else {
                    BrokerState::Down(error.to_string())
                }
            }
        };
        if let Some(metrics) = self.metrics.get() {
            metrics.broker_up.set(i64::from(state.is_up()));
        }
        self.state.send_if_modified(|current| {
            if *current == state {
                return false;
            }
            match &state {
                BrokerState::Down(reason) => tracing::warn!(reason, "broker unreachable"),
                BrokerState::Up => tracing::info!("broker reachable"),
                BrokerState::Unknown => {}
            }
            *current = state;
            true
        });
    }
}

impl Watched {
    pub fn new(inner: Arc<dyn Broker>) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                state: watch::Sender::new(BrokerState::Unknown),
                metrics: OnceLock::new(),
            }),
        }
    }

    /// Where outcomes are counted from now on (the node's metrics exist only once the node
    /// does, and the node needs its broker first).
    pub fn report_to(&self, metrics: Arc<Metrics>) {
        let up = self.shared.state.borrow().is_up();
        metrics.broker_up.set(i64::from(up));
        let _ = self.shared.metrics.set(metrics);
    }

    /// The state now.
    pub fn state(&self) -> BrokerState {
        self.shared.state.borrow().clone()
    }

    /// Probes once, now; then every [`PROBE_EVERY`] on a task that ends with the node (or
    /// when the broker is dropped). Returns once the first probe has answered or `patience`
    /// ran out, so a node starts knowing its broker's state when it can.
    pub async fn start_probing(
        self: &Arc<Self>,
        lifecycle: watch::Receiver<Lifecycle>,
        patience: Duration,
    ) {
        let mut states = self.shared.state.subscribe();
        tokio::spawn(probe_loop(Arc::downgrade(self), lifecycle));
        let _ = tokio::time::timeout(
            patience,
            states.wait_for(|state| *state != BrokerState::Unknown),
        )
        .await;
    }

    async fn probe_once(&self) {
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, self.inner.probe())
            .await
            .unwrap_or(Err(BrokerError::Timeout(PROBE_TIMEOUT)));
        self.shared.record(&outcome);
    }
}

async fn probe_loop(broker: Weak<Watched>, mut lifecycle: watch::Receiver<Lifecycle>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = lifecycle.changed() => {
                if changed.is_err() || *lifecycle.borrow() == Lifecycle::Aborted {
                    return;
                }
                continue;
            }
        }
        let Some(broker) = broker.upgrade() else {
            return;
        };
        broker.probe_once().await;
    }
}

impl Broker for Watched {
    fn publish(
        &self,
        channel: &ChannelName,
        data: Box<RawValue>,
    ) -> BoxFuture<'static, Result<Offset, BrokerError>> {
        // Handed to the broker now, as the contract asks; only the outcome is awaited later.
        let publish = self.inner.publish(channel, data);
        let shared = self.shared.clone();
        async move {
            let outcome = publish.await;
            shared.record(&outcome);
            outcome
        }
        .boxed()
    }

    fn history_page<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: Option<Offset>,
        page: Page,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        async move {
            let outcome = self.inner.history_page(channel, since, page).await;
            self.shared.record(&outcome);
            outcome
        }
        .boxed()
    }

    fn attach(&self) -> (Arc<dyn Link>, Feed) {
        self.inner.attach()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.probe()
    }

    fn state(&self) -> BrokerState {
        Watched::state(self)
    }
}
