//! The demo's hubs: nodes in one process on loopback addresses fixed at first start, which
//! the page can crash or drain and which come back on the same address a few seconds later,
//! so the demo always returns to full strength.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tether_hub::{Broker, HubConfig, HubHandle};
use tether_proxy::RunningProxy;
use tokio::time::Instant;

/// How long each step of a takedown takes. The defaults are short enough that a viewer sees
/// a hub go and come back within seconds, long enough that the page shows it happening.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// How long a crashed hub stays down before it is started again.
    pub restart_after_kill: Duration,
    /// How long a drained hub stays down after its last client left.
    pub restart_after_drain: Duration,
    /// The window over which a draining hub closes its clients (1012 at random moments).
    pub drain_window: Duration,
    /// The kill or drain starts this long after the request that asked for it, so the answer
    /// gets out even when the request was served by the very hub going down.
    pub reply_first: Duration,
    /// How long a failed restart waits before the next attempt.
    pub restart_retry: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            restart_after_kill: Duration::from_secs(5),
            restart_after_drain: Duration::from_secs(2),
            drain_window: Duration::from_secs(3),
            reply_first: Duration::from_millis(150),
            restart_retry: Duration::from_secs(2),
        }
    }
}

#[cfg(test)]
impl Timings {
    /// Steps short enough for a test, long enough to observe each state.
    pub fn quick() -> Timings {
        Timings {
            restart_after_kill: Duration::from_millis(800),
            restart_after_drain: Duration::from_millis(300),
            drain_window: Duration::from_millis(300),
            reply_first: Duration::from_millis(10),
            restart_retry: Duration::from_millis(100),
        }
    }
}

/// A hub's name: `hub-1`, `hub-2`, … — also its backend name in the proxy, so the page and
/// the dashboard speak of the same thing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct HubName(String);

impl HubName {
    pub fn numbered(n: usize) -> HubName {
        HubName(format!("hub-{n}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HubName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a slot holds right now. Only `Running` has a handle, so a hub cannot be killed
/// twice or drained while it is down.
enum Life {
    Running(HubHandle),
    /// Closing its clients; expected back around `back_at`.
    Draining {
        back_at: Instant,
    },
    /// Crashed, or not started yet; starts again around `back_at`.
    Down {
        back_at: Instant,
    },
}

impl Life {
    fn state(&self) -> HubState {
        match self {
            Life::Running(_) => HubState::Running,
            Life::Draining { .. } => HubState::Draining,
            Life::Down { .. } => HubState::Down,
        }
    }
}

/// A hub's state as the page and the dashboard see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HubState {
    Running,
    Draining,
    Down,
}

impl fmt::Display for HubState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HubState::Running => "running",
            HubState::Draining => "draining",
            HubState::Down => "down",
        })
    }
}

/// One hub as `GET /api/demo/hubs` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct HubView {
    pub name: HubName,
    pub addr: Option<SocketAddr>,
    pub state: HubState,
    /// Milliseconds until a draining or crashed hub is expected back.
    pub back_in_ms: Option<u64>,
}

/// Why a kill or drain was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no hub named `{0}`")]
    NoSuchHub(String),
    #[error("{0} is {1} right now; try again when it is back")]
    NotRunning(HubName, HubState),
}

/// How a hub is taken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takedown {
    /// Like a crash: every client dropped at once, no close frame.
    Kill,
    /// Gracefully: no new clients, each old one closed with 1012 within the drain window.
    Drain,
}

struct Slot {
    name: HubName,
    /// Chosen by the OS at the first start and reused by every restart, so the proxy's
    /// backend list never changes.
    addr: OnceLock<SocketAddr>,
    life: Mutex<Life>,
}

/// Every hub of the demo and what they share.
pub struct Fleet {
    slots: Vec<Slot>,
    broker: Arc<dyn Broker>,
    timings: Timings,
    /// Routes every hub serves besides its own (the page, the demo API), given the fleet.
    routes: fn(Arc<Fleet>, HubName) -> axum::Router,
    /// Draining a hub also drains its backend in the proxy, so no new client is sent there
    /// while it closes the old ones. Set once the proxy exists (it needs the hubs' addresses).
    proxy: OnceLock<Arc<RunningProxy>>,
}

impl Fleet {
    /// A fleet of `count` hubs sharing `broker`, none started yet.
    pub fn new(
        count: usize,
        broker: Arc<dyn Broker>,
        timings: Timings,
        routes: fn(Arc<Fleet>, HubName) -> axum::Router,
    ) -> Arc<Fleet> {
        let now = Instant::now();
        Arc::new(Fleet {
            slots: (1..=count)
                .map(|n| Slot {
                    name: HubName::numbered(n),
                    addr: OnceLock::new(),
                    life: Mutex::new(Life::Down { back_at: now }),
                })
                .collect(),
            broker,
            timings,
            routes,
            proxy: OnceLock::new(),
        })
    }

    /// Starts every hub on a free loopback port; returns each name with its address.
    pub async fn start_all(self: &Arc<Self>) -> anyhow::Result<Vec<(HubName, SocketAddr)>> {
        let mut started = Vec::with_capacity(self.slots.len());
        for index in 0..self.slots.len() {
            let handle = self.serve(index).await?;
            let addr = handle.local_addr();
            let slot = &self.slots[index];
            let _ = slot.addr.set(addr);
            *lock(&slot.life) = Life::Running(handle);
            started.push((slot.name.clone(), addr));
        }
        Ok(started)
    }

    /// Hands the fleet the proxy in front of it (see [`Fleet::proxy`]).
    pub fn attach_proxy(&self, proxy: Arc<RunningProxy>) {
        let _ = self.proxy.set(proxy);
    }

    pub fn views(&self) -> Vec<HubView> {
        let now = Instant::now();
        self.slots
            .iter()
            .map(|slot| {
                let life = lock(&slot.life);
                let back_at = match &*life {
                    Life::Running(_) => None,
                    Life::Draining { back_at } | Life::Down { back_at } => Some(*back_at),
                };
                HubView {
                    name: slot.name.clone(),
                    addr: slot.addr.get().copied(),
                    state: life.state(),
                    back_in_ms: back_at
                        .map(|at| at.saturating_duration_since(now).as_millis() as u64),
                }
            })
            .collect()
    }

    /// Addresses of the hubs running now, for reading their metrics.
    pub fn running(&self) -> Vec<(HubName, SocketAddr)> {
        self.slots
            .iter()
            .filter_map(|slot| match &*lock(&slot.life) {
                Life::Running(handle) => Some((slot.name.clone(), handle.local_addr())),
                _ => None,
            })
            .collect()
    }

    /// Kills or drains the named hub and schedules its restart on the same address.
    pub fn take_down(self: &Arc<Self>, name: &str, how: Takedown) -> Result<(), ActionError> {
        let index = self
            .slots
            .iter()
            .position(|s| s.name.as_str() == name)
            .ok_or_else(|| ActionError::NoSuchHub(name.to_owned()))?;
        let slot = &self.slots[index];
        let handle = {
            let mut life = lock(&slot.life);
            let back_at = Instant::now()
                + match how {
                    Takedown::Kill => self.timings.restart_after_kill,
                    Takedown::Drain => self.timings.drain_window + self.timings.restart_after_drain,
                };
            let next = match how {
                Takedown::Kill => Life::Down { back_at },
                Takedown::Drain => Life::Draining { back_at },
            };
            match std::mem::replace(&mut *life, next) {
                Life::Running(handle) => handle,
                not_running => {
                    let state = not_running.state();
                    *life = not_running;
                    return Err(ActionError::NotRunning(slot.name.clone(), state));
                }
            }
        };
        let fleet = self.clone();
        match how {
            Takedown::Kill => {
                tracing::warn!(hub = %slot.name, "killing hub (demo)");
                tokio::spawn(async move {
                    tokio::time::sleep(fleet.timings.reply_first).await;
                    handle.abort();
                    tokio::time::sleep(fleet.timings.restart_after_kill).await;
                    fleet.restart(index).await;
                });
            }
            Takedown::Drain => {
                tracing::info!(hub = %slot.name, window = ?self.timings.drain_window, "draining hub (demo)");
                self.set_proxy_draining(&slot.name, true);
                tokio::spawn(async move {
                    tokio::time::sleep(fleet.timings.reply_first).await;
                    handle.shutdown().await;
                    let slot = &fleet.slots[index];
                    *lock(&slot.life) = Life::Down {
                        back_at: Instant::now() + fleet.timings.restart_after_drain,
                    };
                    tokio::time::sleep(fleet.timings.restart_after_drain).await;
                    fleet.restart(index).await;
                    fleet.set_proxy_draining(&fleet.slots[index].name, false);
                });
            }
        }
        Ok(())
    }

    /// Starts a hub that is down again on its address, retrying until it binds.
    async fn restart(self: &Arc<Self>, index: usize) {
        let slot = &self.slots[index];
        loop {
            match self.serve(index).await {
                Ok(handle) => {
                    tracing::info!(hub = %slot.name, addr = %handle.local_addr(), "hub back");
                    *lock(&slot.life) = Life::Running(handle);
                    return;
                }
                Err(error) => {
                    tracing::error!(hub = %slot.name, %error, "hub did not restart; retrying");
                    *lock(&slot.life) = Life::Down {
                        back_at: Instant::now() + self.timings.restart_retry,
                    };
                    tokio::time::sleep(self.timings.restart_retry).await;
                }
            }
        }
    }

    async fn serve(self: &Arc<Self>, index: usize) -> anyhow::Result<HubHandle> {
        let slot = &self.slots[index];
        let config = HubConfig {
            name: slot.name.to_string(),
            listen: slot
                .addr
                .get()
                .copied()
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            shutdown_window: self.timings.drain_window,
            ..HubConfig::default()
        };
        let routes = (self.routes)(self.clone(), slot.name.clone());
        let handle = tether_hub::serve(config, self.broker.clone(), Some(routes)).await?;
        Ok(handle)
    }

    fn set_proxy_draining(&self, name: &HubName, draining: bool) {
        if let Some(proxy) = self.proxy.get() {
            proxy.set_draining(name.as_str(), draining);
        }
    }

    /// Crashes every running hub; used when the demo exits.
    pub fn abort_all(&self) {
        for slot in &self.slots {
            if let Life::Running(handle) = &*lock(&slot.life) {
                handle.abort();
            }
        }
    }
}

/// Locks a slot; a panic elsewhere while holding it must not take the demo down with it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::scrape;
    use tether_testkit::eventually;

    fn no_routes(_: Arc<Fleet>, _: HubName) -> axum::Router {
        axum::Router::new()
    }

    fn state_of(fleet: &Fleet, name: &HubName) -> HubState {
        fleet
            .views()
            .into_iter()
            .find(|v| v.name == *name)
            .map(|v| v.state)
            .expect("the hub is listed")
    }

    async fn fleet_of(count: usize) -> (Arc<Fleet>, Vec<(HubName, SocketAddr)>) {
        let broker = tether_hub::broker_from_url("memory").expect("memory broker");
        let fleet = Fleet::new(count, broker, Timings::quick(), no_routes);
        let hubs = fleet.start_all().await.expect("hubs start");
        (fleet, hubs)
    }

    #[tokio::test]
    async fn killed_hub_comes_back_on_the_same_address() {
        let (fleet, hubs) = fleet_of(2).await;
        let (name, addr) = hubs[0].clone();
        fleet.take_down(name.as_str(), Takedown::Kill).unwrap();
        assert_eq!(state_of(&fleet, &name), HubState::Down);
        assert!(
            eventually(Duration::from_secs(5), || async {
                scrape::hub_counters(addr).await.is_err()
            })
            .await,
            "the killed hub stops answering"
        );
        assert!(
            eventually(Duration::from_secs(10), || async {
                state_of(&fleet, &name) == HubState::Running
                    && scrape::hub_counters(addr).await.is_ok()
            })
            .await,
            "the hub answers on {addr} again"
        );
        assert_eq!(
            fleet.running().len(),
            2,
            "the fleet is back to full strength"
        );
        fleet.abort_all();
    }

    #[tokio::test]
    async fn a_hub_that_is_down_cannot_be_killed_or_drained_again() {
        let (fleet, hubs) = fleet_of(1).await;
        let name = hubs[0].0.as_str();
        fleet.take_down(name, Takedown::Kill).unwrap();
        for how in [Takedown::Kill, Takedown::Drain] {
            let refused = fleet.take_down(name, how).unwrap_err();
            assert!(
                matches!(refused, ActionError::NotRunning(_, HubState::Down)),
                "{refused}"
            );
        }
        fleet.abort_all();
    }

    #[tokio::test]
    async fn unknown_hub_is_refused_by_name() {
        let (fleet, _) = fleet_of(1).await;
        let refused = fleet.take_down("hub-9", Takedown::Kill).unwrap_err();
        assert!(matches!(refused, ActionError::NoSuchHub(ref n) if n == "hub-9"));
        assert_eq!(refused.to_string(), "no hub named `hub-9`");
        fleet.abort_all();
    }
}
