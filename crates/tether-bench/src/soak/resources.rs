//! Open file descriptors and resident memory of every process, once a second, from /proc.
//!
//! `DIR/resources.csv` has one row per second and two columns per process
//! (`NAME_fds,NAME_rss_kib`, empty while the process is down), plus the subscribers
//! connected at that moment: open it in a spreadsheet or feed it to gnuplot as it is.
//!
//! Growth is judged by comparing the median of the first quarter of the run with the median
//! of the last quarter. Medians, so the reconnect storm after a fault does not decide it.
//! Judged: the proxy, the hubs together, and each hub's own descriptors. Clients move
//! between hubs with every kill and drain, so one hub's descriptors and memory follow its
//! share of clients, not a leak; their sum holds every client once and does not move. For
//! each hub alone the CSV also has `NAME_tunnels`, the proxy's live tunnels to it (from
//! `GET /api/backends`), and `NAME-own` in the summary is descriptors less tunnels: what
//! the hub holds besides its clients (listener, Redis, HTTP publishers), judged on its own.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::BenchError;

/// Growth allowed between the first and the last quarter before the run fails: descriptors
/// grow by at most 10 % + 64 (a reconnect storm still settling at the end), memory by at most
/// 50 % + 32 MiB (allocators keep the high-water mark of the storms; a leak of one buffer per
/// connection or message outgrows this within minutes at the soak's rates).
pub const FD_BOUND: (f64, i64) = (0.10, 64);
pub const RSS_BOUND: (f64, i64) = (0.50, 32 * 1024);

/// One watched process: its name and the cell holding its current pid (0 while down).
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pid: Arc<AtomicU32>,
}

/// One second's reading of one process.
#[derive(Debug, Clone, Copy)]
struct Reading {
    fds: u64,
    rss_kib: u64,
    /// The proxy's live tunnels to this process, for a backend.
    tunnels: Option<u64>,
}

/// The samples of a run.
#[derive(Debug, Default)]
pub struct Samples {
    names: Vec<String>,
    /// Per row: per process, the reading if the process was up.
    rows: Vec<Vec<Option<Reading>>>,
}

/// First quarter against last quarter for one process (or the hubs together).
#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    pub name: String,
    pub fds_first: u64,
    pub fds_last: u64,
    pub rss_kib_first: u64,
    pub rss_kib_last: u64,
    /// Whether descriptors and memory count toward the verdict.
    pub fds_judged: bool,
    pub rss_judged: bool,
}

impl Growth {
    pub fn fd_growth(&self) -> i64 {
        self.fds_last as i64 - self.fds_first as i64
    }

    pub fn rss_growth_kib(&self) -> i64 {
        self.rss_kib_last as i64 - self.rss_kib_first as i64
    }

    /// Whether growth stayed within [`FD_BOUND`] and [`RSS_BOUND`].
    pub fn within_bounds(&self) -> bool {
        let allowed = |base: u64, (share, plus): (f64, i64)| (base as f64 * share) as i64 + plus;
        (!self.fds_judged || self.fd_growth() <= allowed(self.fds_first, FD_BOUND))
            && (!self.rss_judged || self.rss_growth_kib() <= allowed(self.rss_kib_first, RSS_BOUND))
    }

    /// Whether anything of it counts toward the verdict.
    pub fn judged(&self) -> bool {
        self.fds_judged || self.rss_judged
    }
}

/// Where the proxy says how many tunnels each backend has.
#[derive(Debug, Clone, Copy)]
pub struct Tunnels {
    pub admin: SocketAddr,
}

#[derive(serde::Deserialize)]
struct BackendView {
    name: String,
    active: u64,
}

impl Tunnels {
    async fn read(&self, conn: &mut super::http::HttpConn) -> HashMap<String, u64> {
        match conn.request("GET", "/api/backends", None).await {
            Ok(a) if a.status == 200 => serde_json::from_slice::<Vec<BackendView>>(&a.body)
                .map(|v| v.into_iter().map(|b| (b.name, b.active)).collect())
                .unwrap_or_default(),
            _ => HashMap::new(),
        }
    }
}

/// Samples every second until `stop`, appending to `DIR/resources.csv`. `backends` names
/// the processes that are the proxy's backends.
pub async fn sample(
    dir: PathBuf,
    watched: Vec<Watched>,
    backends: Vec<String>,
    tunnels: Tunnels,
    connected: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Result<Samples, BenchError> {
    let path = dir.join("resources.csv");
    let io = |source| BenchError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let mut csv = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
    let mut header = String::from("elapsed_s");
    for w in &watched {
        header.push_str(&format!(",{0}_fds,{0}_rss_kib", w.name));
        if backends.contains(&w.name) {
            header.push_str(&format!(",{}_tunnels", w.name));
        }
    }
    header.push_str(",subscribers_connected\n");
    csv.write_all(header.as_bytes()).map_err(io)?;
    let mut samples = Samples {
        names: watched.iter().map(|w| w.name.clone()).collect(),
        rows: Vec::new(),
    };
    let started = Instant::now();
    let mut admin = super::http::HttpConn::new(tunnels.admin, Duration::from_millis(900));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let active = tunnels.read(&mut admin).await;
        let row: Vec<Option<Reading>> = watched
            .iter()
            .map(|w| {
                let mut r = read(w.pid.load(Ordering::Relaxed))?;
                r.tunnels = active.get(&w.name).copied();
                Some(r)
            })
            .collect();
        let mut line = format!("{:.1}", started.elapsed().as_secs_f64());
        for (w, r) in watched.iter().zip(&row) {
            match r {
                Some(r) => line.push_str(&format!(",{},{}", r.fds, r.rss_kib)),
                None => line.push_str(",,"),
            }
            if backends.contains(&w.name) {
                line.push(',');
                if let Some(t) = r.and_then(|r| r.tunnels) {
                    line.push_str(&t.to_string());
                }
            }
        }
        line.push_str(&format!(",{}\n", connected.load(Ordering::Relaxed)));
        csv.write_all(line.as_bytes()).map_err(io)?;
        csv.flush().map_err(io)?;
        samples.rows.push(row);
    }
    Ok(samples)
}

fn read(pid: u32) -> Option<Reading> {
    if pid == 0 {
        return None;
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(Reading {
        fds,
        rss_kib,
        tunnels: None,
    })
}

fn median(mut values: Vec<u64>) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[values.len() / 2]
}

impl Samples {
    /// First quarter against last quarter: each process; for each backend `NAME-own`
    /// (descriptors less the proxy's tunnels to it, judged on descriptors); then `hubs` (the
    /// hubs summed, only over seconds when every hub was up). `judged` names the processes
    /// (and `hubs`) the verdict counts.
    pub fn growth(&self, judged: &[&str]) -> Vec<Growth> {
        let quarter = (self.rows.len() / 4).max(1);
        let first = &self.rows[..quarter.min(self.rows.len())];
        let last = &self.rows[self.rows.len().saturating_sub(quarter)..];
        let mut out = Vec::new();
        let of = |rows: &[Vec<Option<Reading>>],
                  pick: &dyn Fn(&[Option<Reading>]) -> Option<Reading>| {
            let readings: Vec<Reading> = rows.iter().filter_map(|r| pick(r)).collect();
            (
                median(readings.iter().map(|r| r.fds).collect()),
                median(readings.iter().map(|r| r.rss_kib).collect()),
            )
        };
        for (i, name) in self.names.iter().enumerate() {
            let pick = |row: &[Option<Reading>]| row[i];
            let (fds_first, rss_kib_first) = of(first, &pick);
            let (fds_last, rss_kib_last) = of(last, &pick);
            out.push(Growth {
                name: name.clone(),
                fds_first,
                fds_last,
                rss_kib_first,
                rss_kib_last,
                fds_judged: judged.contains(&name.as_str()),
                rss_judged: judged.contains(&name.as_str()),
            });
            let own = |row: &[Option<Reading>]| {
                let r = row[i]?;
                Some(Reading {
                    fds: r.fds.saturating_sub(r.tunnels?),
                    rss_kib: 0,
                    tunnels: None,
                })
            };
            let (own_first, _) = of(first, &own);
            let (own_last, _) = of(last, &own);
            if first.iter().chain(last).any(|r| own(r).is_some()) {
                out.push(Growth {
                    name: format!("{name}-own"),
                    fds_first: own_first,
                    fds_last: own_last,
                    rss_kib_first: 0,
                    rss_kib_last: 0,
                    fds_judged: true,
                    rss_judged: false,
                });
            }
        }
        let hubs: Vec<usize> = (0..self.names.len())
            .filter(|&i| self.names[i].starts_with("hub"))
            .collect();
        if !hubs.is_empty() {
            let sum = |row: &[Option<Reading>]| {
                let mut total = Reading {
                    fds: 0,
                    rss_kib: 0,
                    tunnels: None,
                };
                for &i in &hubs {
                    let r = row[i]?;
                    total.fds += r.fds;
                    total.rss_kib += r.rss_kib;
                }
                Some(total)
            };
            let (fds_first, rss_kib_first) = of(first, &sum);
            let (fds_last, rss_kib_last) = of(last, &sum);
            out.push(Growth {
                name: "hubs".into(),
                fds_first,
                fds_last,
                rss_kib_first,
                rss_kib_last,
                fds_judged: judged.contains(&"hubs"),
                rss_judged: judged.contains(&"hubs"),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(series: &[(u64, u64)]) -> Samples {
        Samples {
            names: vec!["proxy".into()],
            rows: series
                .iter()
                .map(|&(fds, rss_kib)| {
                    vec![Some(Reading {
                        fds,
                        rss_kib,
                        tunnels: None,
                    })]
                })
                .collect(),
        }
    }

    #[test]
    fn steady_usage_with_a_spike_is_within_bounds() {
        let mut series = vec![(4000, 50_000); 40];
        series[30] = (6000, 90_000);
        let growth = samples(&series).growth(&["proxy"]);
        assert_eq!(growth[0].fd_growth(), 0);
        assert!(growth[0].within_bounds());
    }

    #[test]
    fn a_steady_climb_in_descriptors_fails() {
        let series: Vec<(u64, u64)> = (0..40).map(|i| (4000 + i * 50, 50_000)).collect();
        let growth = samples(&series).growth(&["proxy"]);
        assert!(growth[0].fd_growth() > 1000);
        assert!(!growth[0].within_bounds());
    }

    #[test]
    fn a_backends_own_descriptors_are_judged_apart_from_its_clients() {
        // Clients move onto the hub (fds follow tunnels): fine. Then fds climb alone: a leak.
        let hub = |fds, tunnels| {
            vec![Some(Reading {
                fds,
                rss_kib: 20_000,
                tunnels: Some(tunnels),
            })]
        };
        let moving = Samples {
            names: vec!["hub1".into()],
            rows: (0..40).map(|i| hub(30 + i * 20, i * 20)).collect(),
        };
        let own = &moving.growth(&[])[1];
        assert_eq!((own.name.as_str(), own.fd_growth()), ("hub1-own", 0));
        assert!(own.within_bounds());
        let leaking = Samples {
            names: vec!["hub1".into()],
            rows: (0..40).map(|i| hub(600 + i * 20, 500)).collect(),
        };
        assert!(!leaking.growth(&[])[1].within_bounds());
    }

    #[test]
    fn own_process_is_readable() {
        let r = read(std::process::id()).unwrap();
        assert!(r.fds > 0 && r.rss_kib > 0);
    }
}
