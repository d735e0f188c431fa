//! The fault injector: at random moments (from the seeded generator, so a seed replays the
//! same sequence of faults), one fault at a time, each ending with the system whole again.
//!
//! Faults are drawn in rounds: every kind once per round, in a shuffled order, so even a
//! 60-second run sees each kind. Their targets and lengths are drawn from the same generator.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::client::Control;
use super::system::{RedisRestart, System};
use crate::error::BenchError;

/// One fault, with its target and lengths decided up front.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// kill -9 a hub; it restarts on the same port after `down`.
    KillHub { hub: usize, down: Duration },
    /// SIGTERM a hub (it closes its clients with 1012 over its shutdown window); it restarts.
    TermHub { hub: usize, down: Duration },
    /// Stop Redis, keeping or losing its data, and start it again after `down`.
    RestartRedis { how: RedisRestart, down: Duration },
    /// Drain a backend through the proxy's admin API, then enable it again.
    DrainBackend { hub: usize, drained: Duration },
    /// Change one backend's weight in the proxy's config and `POST /api/reload`.
    ReloadProxy { hub: usize, weight: u32 },
    /// Cut `count` subscribers' connections (FIN or RST).
    CutClients { count: usize, reset: bool },
    /// Stop `count` subscribers reading for `length`.
    StallSubscribers { count: usize, length: Duration },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: &Duration| format!("{:.1}s", d.as_secs_f64());
        match self {
            Fault::KillHub { hub, down } => write!(f, "kill-hub hub{} down={}", hub + 1, s(down)),
            Fault::TermHub { hub, down } => write!(f, "term-hub hub{} down={}", hub + 1, s(down)),
            Fault::RestartRedis { how, down } => {
                let how = match how {
                    RedisRestart::KeepData => "keep-data",
                    RedisRestart::LoseData => "lose-data",
                };
                write!(f, "restart-redis {how} down={}", s(down))
            }
            Fault::DrainBackend { hub, drained } => {
                write!(f, "drain-backend hub{} for={}", hub + 1, s(drained))
            }
            Fault::ReloadProxy { hub, weight } => {
                write!(f, "reload-proxy hub{} weight={weight}", hub + 1)
            }
            Fault::CutClients { count, reset } => {
                let how = if *reset { "rst" } else { "fin" };
                write!(f, "cut-clients count={count} {how}")
            }
            Fault::StallSubscribers { count, length } => {
                write!(f, "stall-subscribers count={count} for={}", s(length))
            }
        }
    }
}

/// The kinds, one per round each.
const KINDS: usize = 7;

/// Draws faults from a seeded generator.
pub struct Plan {
    rng: StdRng,
    round: Vec<usize>,
    hubs: usize,
    subscribers: usize,
}

impl Plan {
    pub fn new(rng: StdRng, hubs: usize, subscribers: usize) -> Plan {
        Plan {
            rng,
            round: Vec::new(),
            hubs,
            subscribers,
        }
    }

    /// The quiet time before the next fault.
    pub fn gap(&mut self) -> Duration {
        Duration::from_millis(self.rng.random_range(1_000..5_000))
    }

    pub fn next_fault(&mut self) -> Fault {
        if self.round.is_empty() {
            self.round = (0..KINDS).collect();
            self.round.shuffle(&mut self.rng);
        }
        let kind = self.round.pop().unwrap_or(0);
        let ms =
            |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..hi));
        let hub = self.rng.random_range(0..self.hubs);
        let rng = &mut self.rng;
        match kind {
            0 => Fault::KillHub {
                hub,
                down: ms(rng, 200, 3_000),
            },
            1 => Fault::TermHub {
                hub,
                down: ms(rng, 200, 2_000),
            },
            2 => Fault::RestartRedis {
                how: if rng.random_bool(0.5) {
                    RedisRestart::KeepData
                } else {
                    RedisRestart::LoseData
                },
                down: ms(rng, 200, 2_000),
            },
            3 => Fault::DrainBackend {
                hub,
                drained: ms(rng, 2_000, 8_000),
            },
            4 => Fault::ReloadProxy {
                hub,
                weight: rng.random_range(1..=3),
            },
            5 => Fault::CutClients {
                count: (self.subscribers / rng.random_range(5..20)).max(1),
                reset: rng.random_bool(0.5),
            },
            _ => Fault::StallSubscribers {
                count: rng.random_range(1..=20).min(self.subscribers),
                length: ms(rng, 3_000, 25_000),
            },
        }
    }

    /// Which subscribers a cut or stall hits.
    pub fn pick(&mut self, count: usize) -> Vec<usize> {
        rand::seq::index::sample(&mut self.rng, self.subscribers, count.min(self.subscribers))
            .into_vec()
    }
}

/// One injected fault, for the report.
#[derive(Debug, Clone)]
pub struct Injected {
    pub at: Duration,
    pub fault: Fault,
    /// Why the fault could not be carried out, if it could not.
    pub error: Option<String>,
}

/// Carries out `fault` and waits until the system is whole again.
pub async fn inject(
    fault: &Fault,
    system: &mut System,
    plan: &mut Plan,
    controls: &[mpsc::UnboundedSender<Control>],
) -> Result<(), BenchError> {
    match *fault {
        Fault::KillHub { hub, down } => {
            let hub = &mut system.hubs[hub];
            hub.process.kill().await;
            tokio::time::sleep(down).await;
            hub.start().await
        }
        Fault::TermHub { hub, down } => {
            let hub = &mut system.hubs[hub];
            hub.process.terminate().await;
            tokio::time::sleep(down).await;
            hub.start().await
        }
        Fault::RestartRedis { how, down } => system.redis.restart(how, down).await,
        Fault::DrainBackend { hub, drained } => {
            let name = format!("hub{}", hub + 1);
            // `close_within` is for proxies that close drained tunnels; others ignore it.
            system
                .proxy
                .admin(
                    "POST",
                    &format!("/api/backends/{name}/drain?close_within=2s"),
                )
                .await?;
            tokio::time::sleep(drained).await;
            system
                .proxy
                .admin("POST", &format!("/api/backends/{name}/enable"))
                .await
        }
        Fault::ReloadProxy { hub, weight } => {
            system.proxy.weights[hub] = weight;
            system.proxy.write_config()?;
            system.proxy.admin("POST", "/api/reload").await
        }
        Fault::CutClients { count, reset } => {
            for index in plan.pick(count) {
                let _ = controls[index].send(Control::Cut { reset });
            }
            Ok(())
        }
        Fault::StallSubscribers { count, length } => {
            for index in plan.pick(count) {
                let _ = controls[index].send(Control::Stall(length));
            }
            Ok(())
        }
    }
}

/// Injects faults until `until`, one at a time; returns what was done.
pub async fn run(
    until: Instant,
    started: Instant,
    system: &mut System,
    plan: &mut Plan,
    controls: &[mpsc::UnboundedSender<Control>],
) -> Vec<Injected> {
    let mut done = Vec::new();
    loop {
        let gap = plan.gap();
        if Instant::now() + gap >= until {
            tokio::time::sleep_until(until).await;
            return done;
        }
        tokio::time::sleep(gap).await;
        let fault = plan.next_fault();
        let at = started.elapsed();
        crate::progress!("soak: t={:.1}s fault {fault}", at.as_secs_f64());
        let error = inject(&fault, system, plan, controls)
            .await
            .err()
            .map(|e| e.chain());
        if let Some(e) = &error {
            crate::progress!("soak: fault {fault} failed: {e}");
        }
        done.push(Injected { at, fault, error });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_seed_replays_the_same_faults() {
        let draw = |seed| {
            let mut plan = Plan::new(StdRng::seed_from_u64(seed), 3, 2000);
            (0..14)
                .map(|_| (plan.gap(), plan.next_fault().to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn every_kind_comes_once_per_round() {
        let mut plan = Plan::new(StdRng::seed_from_u64(1), 3, 2000);
        let mut kinds: Vec<String> = (0..KINDS)
            .map(|_| {
                let f = plan.next_fault().to_string();
                f.split(' ').next().unwrap_or_default().to_owned()
            })
            .collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), KINDS);
    }
}
