//! `tether bench soak`: the whole system on loopback under random faults, with a ledger that
//! proves nothing published was lost or delivered twice.
//!
//! One run: its own Redis, `--hubs` hubs on it and a proxy in front, all started from the
//! running binary; `--subscribers` resuming subscribers over `--channels` channels through
//! the proxy from several 127.x sources; steady publishers over HTTP (to the hubs) and
//! WebSocket (through the proxy). For `--duration`, faults at random moments (see
//! [`faults`]); then publishing stops, the subscribers catch up, and the ledger is reckoned.
//! docs/soak.md says how to run and read one.
//!
//! * [`system`]: the child processes, started, killed and restarted.
//! * [`faults`]: the seeded injector.
//! * [`client`]: the resuming subscriber; [`publisher`]: the publishers.
//! * [`ledger`]: what was owed and what arrived; [`resources`]: fds and RSS, CSV.
//! * [`trace`]: each subscriber's connections and answers, to explain a missing delivery.

pub mod client;
pub mod faults;
mod http;
pub mod ledger;
pub mod publisher;
pub mod resources;
pub mod system;
pub mod trace;

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::BenchError;
use crate::source::SourcePool;
use client::{ClientStats, Endpoint};
use faults::{Injected, Plan};
use ledger::{Ledger, Tally};
use publisher::PublishStats;
use resources::{Growth, Watched};
use system::System;

/// `tether bench soak`: the system under faults, with a ledger.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// How long faults are injected (publishing runs as long; the final catch-up comes after).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Seed of the fault sequence (printed; default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Directory for the logs, proxy.toml, resources.csv and the summary (default: a fresh
    /// one under the system's temporary directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Subscriber connections, each on one channel.
    #[arg(long, default_value_t = 2000)]
    pub subscribers: usize,
    /// Channels the subscribers are spread over.
    #[arg(long, default_value_t = 200)]
    pub channels: usize,
    /// Hub nodes.
    #[arg(long, default_value_t = 3)]
    pub hubs: usize,
    /// Publishes per second over HTTP, in total.
    #[arg(long, default_value_t = 100.0)]
    pub http_rate: f64,
    /// Publishes per second over WebSocket, in total.
    #[arg(long, default_value_t = 100.0)]
    pub ws_rate: f64,
    /// Distinct 127.x source addresses of the subscribers (127.0.0.2 upwards).
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// How long subscribers may take to catch up after publishing stops.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub catch_up: Duration,
    /// The tether binary to run as proxy and hubs (default: this one).
    #[arg(long)]
    pub tether_bin: Option<PathBuf>,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
    /// For testing the soak itself: every subscriber ignores every Nth message frame, as a
    /// client-side loss the hub never hears of; the ledger must then report `lost`.
    #[arg(long, hide = true)]
    pub self_test_drop_every: Option<std::num::NonZeroU64>,
}

/// HTTP publishers sharing `--http-rate`, and WebSocket publishers sharing `--ws-rate`.
const HTTP_PUBLISHERS: u64 = 4;
const WS_PUBLISHERS: u64 = 4;
/// Subscribers opening at once during setup.
const SETUP_CONCURRENCY: usize = 100;

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub seed: u64,
    pub out: PathBuf,
    pub duration: Duration,
    pub tally: Tally,
    pub publish_attempts: u64,
    pub publish_failed: u64,
    pub faults: usize,
    pub fault_errors: usize,
    pub growth: Vec<Growth>,
    pub panics: usize,
    /// Processes that exited without being told to.
    pub crashed: Vec<String>,
    pub reconnects: u64,
    pub gaps: u64,
    /// Subscribers still short of their channel's last offset when the catch-up ended.
    pub behind: usize,
}

impl SoakReport {
    /// True when the run proved what it should: nothing lost, doubled, reordered or
    /// mangled, no panic or crash, no growth beyond the bounds.
    pub fn passed(&self) -> bool {
        let t = &self.tally;
        t.lost == 0
            && t.duplicated == 0
            && t.out_of_order == 0
            && t.corrupted == 0
            && t.published > 0
            && self.panics == 0
            && self.crashed.is_empty()
            && self.fault_errors == 0
            && self
                .growth
                .iter()
                .filter(|g| g.judged())
                .all(Growth::within_bounds)
    }

    fn worst(&self, of: impl Fn(&Growth) -> String, key: impl Fn(&Growth) -> i64) -> String {
        self.growth
            .iter()
            .filter(|g| g.judged())
            .max_by_key(|g| key(g))
            .map(&of)
            .unwrap_or_else(|| "none".into())
    }

    /// The human summary written before the last line and to `DIR/summary.txt`.
    pub fn summary(&self, faults: &[Injected]) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "seed {}  out {}\nfaults ({}):\n",
            self.seed,
            self.out.display(),
            faults.len()
        ));
        for f in faults {
            s.push_str(&format!("  t={:>7.1}s  {}", f.at.as_secs_f64(), f.fault));
            if let Some(e) = &f.error {
                s.push_str(&format!("  FAILED: {e}"));
            }
            s.push('\n');
        }
        s.push_str(&format!(
            "ledger: {}\n",
            serde_json::to_string(&self.tally).unwrap_or_default()
        ));
        s.push_str(&format!(
            "publishes: attempted {} acknowledged {} failed {}; subscriber reconnects {}, gaps announced {}, behind at the end {}\n",
            self.publish_attempts, self.tally.published, self.publish_failed, self.reconnects, self.gaps, self.behind
        ));
        s.push_str("resources (median of the first quarter -> last quarter):\n");
        for g in &self.growth {
            let verdict = match (g.judged(), g.within_bounds()) {
                (false, _) => "",
                (true, true) => "  ok",
                (true, false) => "  GREW",
            };
            let rss = if g.rss_kib_first == 0 && g.rss_kib_last == 0 {
                "  (descriptors less tunnels)".to_owned()
            } else {
                format!(
                    "  rss {:>8} KiB -> {:>8} KiB ({:+} KiB)",
                    g.rss_kib_first,
                    g.rss_kib_last,
                    g.rss_growth_kib()
                )
            };
            s.push_str(&format!(
                "  {:<9} fds {:>6} -> {:>6} ({:+}){rss}{verdict}\n",
                g.name,
                g.fds_first,
                g.fds_last,
                g.fd_growth(),
            ));
        }
        if !self.crashed.is_empty() {
            s.push_str(&format!("crashed: {}\n", self.crashed.join(", ")));
        }
        s
    }
}

impl fmt::Display for SoakReport {
    /// The machine-readable last line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.tally;
        write!(
            f,
            "soak: duration={}s published={} delivered={} lost={} duplicated={} out_of_order={} corrupted={} unrecovered={} faults={} fd_growth={} rss_growth={} panics={} crashed={} result={}",
            self.duration.as_secs(),
            t.published,
            t.delivered,
            t.lost,
            t.duplicated,
            t.out_of_order,
            t.corrupted,
            t.unrecovered,
            self.faults,
            self.worst(|g| format!("{}:{:+}", g.name, g.fd_growth()), Growth::fd_growth),
            self.worst(
                |g| format!("{}:{:+}KiB", g.name, g.rss_growth_kib()),
                Growth::rss_growth_kib
            ),
            self.panics,
            self.crashed.len(),
            if self.passed() { "pass" } else { "FAIL" }
        )
    }
}

/// Raises the soft fd limit to the hard one; the children inherit it.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed, which lives here.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn validate(args: &SoakArgs) -> Result<(), BenchError> {
    let bad = |m: &str| Err(BenchError::InvalidArgument(m.into()));
    if args.subscribers == 0 || args.channels == 0 || args.hubs == 0 {
        return bad("--subscribers, --channels and --hubs must be at least 1");
    }
    if args.channels > args.subscribers {
        return bad("--channels must not exceed --subscribers (every channel needs a subscriber)");
    }
    let positive = |rate: f64| rate > 0.0 && rate.is_finite();
    if !(positive(args.http_rate) && positive(args.ws_rate)) {
        return bad("--http-rate and --ws-rate must be positive");
    }
    if args.sources == 0 || args.sources > 250 {
        return bad("--sources must be 1..=250");
    }
    Ok(())
}

/// Runs the soak. Children are stopped before this returns, whatever happened.
pub async fn run(args: SoakArgs) -> Result<SoakReport, BenchError> {
    validate(&args)?;
    raise_fd_limit();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let dir = match &args.out {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("tether-soak-{}-{seed}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let bin = match &args.tether_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe().map_err(BenchError::Runtime)?,
    };
    crate::progress!("soak: seed={seed} out={}", dir.display());
    let system = System::start(&bin, &args.redis_server, args.hubs, &dir).await?;
    crate::progress!(
        "soak: redis {} hubs {} proxy {} (admin {})",
        system.redis.addr,
        system
            .hubs
            .iter()
            .map(|h| h.addr.to_string())
            .collect::<Vec<_>>()
            .join(","),
        system.proxy.addr,
        system.proxy.admin
    );
    // Whatever `drive` returns, the children are stopped first (and if this future is
    // dropped instead, by Ctrl-C, `kill_on_drop` kills them).
    let mut system = system;
    let result = drive(&args, seed, &dir, &mut system).await;
    let logs: Vec<PathBuf> = system
        .processes()
        .iter()
        .map(|p| p.log_path().to_owned())
        .collect();
    system.stop().await;
    let mut report = result?;
    report.panics = count_panics(&logs);
    let _ = std::fs::write(dir.join("last-line.txt"), format!("{report}\n"));
    Ok(report)
}

async fn drive(
    args: &SoakArgs,
    seed: u64,
    dir: &Path,
    system: &mut System,
) -> Result<SoakReport, BenchError> {
    let channels: Vec<String> = (0..args.channels).map(|i| format!("soak.{i}")).collect();
    let ledger = Arc::new(Ledger::new(
        channels,
        (0..args.subscribers).map(|i| i % args.channels),
    ));
    let stats = Arc::new(ClientStats::default());
    let (stop_tx, stop) = watch::channel(false);
    // 127.0.0.2 upwards: the publishers use 127.0.0.1.
    let sources = SourcePool::loopback(args.sources.saturating_add(1).min(250))?;
    let mut subscribers = JoinSet::new();
    let mut controls = Vec::with_capacity(args.subscribers);
    for index in 0..args.subscribers {
        let (control_tx, control) = mpsc::unbounded_channel();
        controls.push(control_tx);
        let endpoint = Endpoint {
            proxy: system.proxy.addr,
            source: sources.for_connection(1 + index % args.sources as usize),
            sid: format!("s{index}"),
            drop_every: args.self_test_drop_every,
        };
        subscribers.spawn(client::run(
            index,
            endpoint,
            ledger.clone(),
            stats.clone(),
            control,
            stop.clone(),
        ));
        if index % SETUP_CONCURRENCY == SETUP_CONCURRENCY - 1 {
            wait_started(&ledger, index + 1, Duration::from_secs(60)).await?;
        }
    }
    wait_started(&ledger, args.subscribers, Duration::from_secs(60)).await?;
    crate::progress!(
        "soak: {} subscribers on {} channels through the proxy",
        args.subscribers,
        args.channels
    );

    let watched: Vec<Watched> = system
        .processes()
        .iter()
        .map(|p| Watched {
            name: p.name.clone(),
            pid: p.pid_cell(),
        })
        .chain(std::iter::once(Watched {
            name: "soak".into(),
            pid: Arc::new(std::process::id().into()),
        }))
        .collect();
    let (sampler_stop_tx, sampler_stop) = watch::channel(false);
    let sampler = tokio::spawn(resources::sample(
        dir.to_owned(),
        watched,
        system.hubs.iter().map(|h| h.process.name.clone()).collect(),
        resources::Tunnels {
            admin: system.proxy.admin,
        },
        stats.connected.clone(),
        sampler_stop,
    ));

    let publish_stats = Arc::new(PublishStats::default());
    let (publish_stop_tx, publish_stop) = watch::channel(false);
    let mut publishers = JoinSet::new();
    let hub_addrs: Vec<_> = system.hubs.iter().map(|h| h.addr).collect();
    for id in 1..=HTTP_PUBLISHERS {
        publishers.spawn(publisher::http(
            id,
            hub_addrs.clone(),
            args.http_rate / HTTP_PUBLISHERS as f64,
            ledger.clone(),
            publish_stats.clone(),
            publish_stop.clone(),
        ));
    }
    for id in HTTP_PUBLISHERS + 1..=HTTP_PUBLISHERS + WS_PUBLISHERS {
        publishers.spawn(publisher::websocket(
            id,
            system.proxy.addr,
            args.ws_rate / WS_PUBLISHERS as f64,
            ledger.clone(),
            publish_stats.clone(),
            publish_stop.clone(),
        ));
    }

    let started = Instant::now();
    let mut plan = Plan::new(
        rand::rngs::StdRng::seed_from_u64(seed),
        args.hubs,
        args.subscribers,
    );
    let injected = faults::run(
        started + args.duration,
        started,
        system,
        &mut plan,
        &controls,
    )
    .await;

    // Publishing stops; the subscribers' own stop comes after they caught up.
    stop_publishers(&publish_stop_tx, &mut publishers).await;
    catch_up(&ledger, args.catch_up).await;
    let behind = ledger.behind();
    let _ = stop_tx.send(true);
    let closing = async { while subscribers.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(10), closing).await;
    let _ = sampler_stop_tx.send(true);
    let samples = match sampler.await {
        Ok(samples) => samples?,
        Err(source) => {
            return Err(BenchError::Task {
                what: "resource sampler",
                source,
            })
        }
    };
    subscribers.abort_all();

    let (tally, missing) = ledger.reckon(1000);
    write_missing(dir, &missing, &ledger.explain(&missing));
    let growth = samples.growth(&["proxy", "hubs"]);
    let report = SoakReport {
        seed,
        out: dir.to_owned(),
        duration: args.duration,
        tally,
        publish_attempts: publish_stats.attempted.load(Ordering::Relaxed),
        publish_failed: publish_stats.failed.load(Ordering::Relaxed),
        faults: injected.len(),
        fault_errors: injected.iter().filter(|f| f.error.is_some()).count(),
        growth,
        panics: 0,
        crashed: system.crashed(),
        reconnects: stats
            .connects
            .load(Ordering::Relaxed)
            .saturating_sub(args.subscribers as u64),
        gaps: stats.gaps.load(Ordering::Relaxed),
        behind,
    };
    let summary = report.summary(&injected);
    let _ = std::fs::write(dir.join("summary.txt"), &summary);
    Ok(report)
}

/// Stops the publishers; each finishes the publish in flight and waits briefly for the
/// answers still due, so the last publishes are owed too.
async fn stop_publishers(stop: &watch::Sender<bool>, publishers: &mut JoinSet<()>) {
    let _ = stop.send(true);
    let finishing = async { while publishers.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), finishing)
        .await
        .is_err()
    {
        publishers.abort_all();
    }
}

/// Waits until every subscriber has its channel's last acknowledged offset, or `limit`
/// has passed.
async fn catch_up(ledger: &Ledger, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let behind = ledger.behind();
        if behind == 0 || Instant::now() >= deadline {
            crate::progress!("soak: catch-up done, {behind} subscribers behind");
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `count` subscribers got their first `subscribed`.
async fn wait_started(ledger: &Ledger, count: usize, limit: Duration) -> Result<(), BenchError> {
    let deadline = Instant::now() + limit;
    loop {
        let started = (0..count)
            .filter(|&i| ledger.subscriber(i).started())
            .count();
        if started == count {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Soak(format!(
                "only {started} of {count} subscribers were subscribed after {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lists the missing deliveries in `DIR/ledger.txt`, for a reproduction.
fn write_missing(dir: &Path, missing: &[ledger::Missing], explained: &str) {
    let Ok(mut file) = std::fs::File::create(dir.join("ledger.txt")) else {
        return;
    };
    let _ = writeln!(
        file,
        "# channel subscriber offset tag (first {} missing deliveries)",
        missing.len()
    );
    for m in missing {
        let _ = writeln!(
            file,
            "{} s{} {} {}",
            m.channel, m.subscriber, m.offset, m.tag
        );
    }
    if !explained.is_empty() {
        let _ = writeln!(
            file,
            "\n# what those subscribers went through (UTC, as in the hubs' logs)"
        );
        let _ = file.write_all(explained.as_bytes());
    }
}

/// Lines saying `panicked` in the children's logs.
fn count_panics(logs: &[PathBuf]) -> usize {
    logs.iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|text| text.lines().filter(|l| l.contains("panicked")).count())
        .sum()
}
