//! Hub fan-out: many subscribers on one channel spread over several hub nodes, one publisher
//! at a rising rate, every delivery accounted for.
//!
//! Each step publishes at a fixed rate for a fixed time, then waits for the deliveries to
//! drain. A step passes when nothing was lost and the p99 end-to-end latency (scheduled publish
//! time to receipt, so a publisher held back by the server is not excused) is within the bound.
//! The run reports the best deliveries/s among passing steps.

mod flavour;
mod ledger;
mod publisher;
mod subscriber;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

pub use flavour::{Flavour, Incoming};
pub use ledger::{Ledger, StepLedger, StepTally};

use crate::error::BenchError;
use crate::latency::LatencySummary;
use crate::procstat::{Usage, WatchArgs};
use crate::source::SourcePool;
use crate::target::TargetUrl;
use publisher::PublisherThread;
use subscriber::subscribe_all;

/// `tether bench fanout`: subscribers across hub nodes, publish rate stepped up until it fails.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// A hub node (`ws://host:port`, path defaulted per flavour). Repeat for every node;
    /// subscribers are spread round-robin, the publisher uses the first.
    #[arg(long = "hub", required = true)]
    pub hubs: Vec<TargetUrl>,
    /// Server protocol: tether hub or Socket.IO.
    #[arg(long, value_enum, default_value_t = Flavour::Tether)]
    pub flavour: Flavour,
    /// Subscribers, all on one channel.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Channel name (default: a fresh `bench-PID-TIME`, so runs never see each other).
    #[arg(long)]
    pub channel: Option<String>,
    /// Publish rate of the first step, messages/s.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Each further step multiplies the rate by this.
    #[arg(long, default_value_t = 2.0)]
    pub factor: f64,
    /// No step goes above this rate (set it equal to --rate for a single step).
    #[arg(long, default_value_t = 10_000.0)]
    pub max_rate: f64,
    /// How long each step publishes.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub step: Duration,
    /// Publishing at the first rate before the first step, not counted: the first messages
    /// after subscribing pay for cold paths (broker subscriptions, allocations) once.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// How long to wait after a step for its last deliveries; later ones count as lost.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// A step passes only with p99 latency at or under this bound.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub p99_bound: Duration,
    /// Keep stepping after failed steps as long as nothing is lost and p99 stays at or under
    /// this looser bound, to trace a server's whole curve (default: stop at the first failure).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub stop_above: Option<Duration>,
    /// Subscriptions being set up at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Distinct 127.x source addresses for the subscribers.
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
}

/// One rate step in the JSON result.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub rate: f64,
    pub published: u64,
    /// Achieved publish rate (lower than `rate` when the server pushed back).
    pub publish_rate: f64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub deliveries_per_sec: f64,
    pub latency: LatencySummary,
    /// Per message, the latency of its first delivery: publisher → hub → broker → the
    /// node's first write. What the way in costs.
    pub first_delivery: LatencySummary,
    /// Per message, the latency of its last delivery; last − first is the pass of writes
    /// over all subscribers.
    pub last_delivery: LatencySummary,
    pub pass: bool,
    /// The generator's CPU use over the step and its drain, % of one CPU. Near 100 with
    /// `--threads 1` means the generator, not the hub, was the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator_cpu_pct: Option<f64>,
}

/// The JSON result of a fan-out run.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub mode: &'static str,
    pub flavour: Flavour,
    pub hubs: Vec<String>,
    pub subscribers: usize,
    pub channel: String,
    pub step_s: f64,
    pub p99_bound_ms: f64,
    pub steps: Vec<StepReport>,
    /// Highest deliveries/s of a passing step (0 when none passed).
    pub best_deliveries_per_sec: f64,
    /// Publish rate of that step.
    pub best_rate: f64,
    /// Highest deliveries/s of a step with zero loss and p99 within `--stop-above` (equals
    /// the best passing step when that flag is not given).
    pub best_sustained_deliveries_per_sec: f64,
    /// Subscriber sessions the server closed during the run.
    pub dropped_subscribers: u64,
    /// Deliveries whose sequence number belonged to no step.
    pub stray: u64,
    /// Error frames the server sent.
    pub server_errors: u64,
    /// The first of them, verbatim, to say what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_server_error: Option<String>,
}

/// Shared between the run and its subscriber tasks.
pub(crate) struct Shared {
    pub(crate) ledger: Ledger,
    pub(crate) clock: Instant,
    pub(crate) dropped: AtomicU64,
    pub(crate) server_errors: AtomicU64,
    pub(crate) first_server_error: std::sync::Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn server_error(&self, frame: &str) {
        self.server_errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_server_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| frame.to_owned());
    }

    pub(crate) fn us_since_start(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.clock).as_micros()).unwrap_or(u64::MAX)
    }
}

/// Sets up subscribers and the publisher, runs the steps and reports.
pub async fn run(args: FanoutArgs) -> Result<FanoutReport, BenchError> {
    validate(&args)?;
    let hubs: Vec<TargetUrl> = args.hubs.iter().map(|h| args.flavour.endpoint(h)).collect();
    let channel = args.channel.clone().unwrap_or_else(default_channel);
    let shared = Arc::new(Shared {
        ledger: Ledger::default(),
        clock: Instant::now(),
        dropped: AtomicU64::new(0),
        server_errors: AtomicU64::new(0),
        first_server_error: std::sync::Mutex::new(None),
    });
    let sources = SourcePool::loopback(args.sources)?;
    let mut subscribers = subscribe_all(&args, &hubs, &channel, &sources, &shared).await?;
    crate::progress!(
        "fanout: {} subscribers on {channel:?} across {} hubs",
        args.subscribers,
        hubs.len()
    );
    let publisher = PublisherThread::start(args.flavour, &hubs[0], &channel, &shared).await?;
    let mut steps = Vec::new();
    let mut seq = 0u64;
    if !args.warmup.is_zero() {
        let capacity = (args.rate * args.warmup.as_secs_f64()).ceil().max(1.0) as u64;
        let warmup = Arc::new(StepLedger::new(args.rate, seq, capacity, args.subscribers));
        shared.ledger.open_step(warmup.clone());
        seq += capacity;
        publisher.run_step(&warmup, args.warmup).await?;
        drain(&warmup, args.drain).await;
        crate::progress!(
            "fanout: warm-up done ({} published, not counted)",
            warmup.tally().published
        );
    }
    let mut rate = args.rate;
    while rate <= args.max_rate * (1.0 + 1e-9) {
        let capacity = (rate * args.step.as_secs_f64()).ceil().max(1.0) as u64;
        let step = Arc::new(StepLedger::new(rate, seq, capacity, args.subscribers));
        shared.ledger.open_step(step.clone());
        seq += capacity;
        let me = WatchArgs::own_process();
        let (my_first, began) = (me.sample()?, Instant::now());
        let elapsed = publisher.run_step(&step, args.step).await?;
        drain(&step, args.drain).await;
        let generator = Usage::between(&me, my_first, me.sample()?);
        let mut report = step_report(&step, elapsed, args.step, args.p99_bound);
        report.generator_cpu_pct = generator.map(|u| u.cpu_pct_over(began.elapsed()));
        crate::progress!(
            "fanout: rate {:.0}/s → {:.0} deliveries/s, p99 {} µs (first delivery p50 {} µs, last p50 {} µs), lost {}, generator CPU {:.0}% {}",
            report.rate,
            report.deliveries_per_sec,
            report.latency.p99_us,
            report.first_delivery.p50_us,
            report.last_delivery.p50_us,
            report.lost,
            report.generator_cpu_pct.unwrap_or(0.0),
            if report.pass { "PASS" } else { "FAIL" }
        );
        let go_on = report.pass || sustained(&report, args.stop_above);
        steps.push(report);
        if !go_on {
            break;
        }
        rate *= args.factor;
    }
    subscribers.abort_all();
    let best = steps
        .iter()
        .filter(|s| s.pass)
        .max_by(|a, b| a.deliveries_per_sec.total_cmp(&b.deliveries_per_sec));
    let best_sustained = steps
        .iter()
        .filter(|s| s.pass || sustained(s, args.stop_above))
        .map(|s| s.deliveries_per_sec)
        .fold(0.0, f64::max);
    let first_server_error = shared
        .first_server_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(FanoutReport {
        mode: "fanout",
        flavour: args.flavour,
        hubs: hubs.iter().map(|h| h.to_string()).collect(),
        subscribers: args.subscribers,
        channel,
        step_s: args.step.as_secs_f64(),
        p99_bound_ms: args.p99_bound.as_secs_f64() * 1e3,
        best_deliveries_per_sec: best.map_or(0.0, |b| b.deliveries_per_sec),
        best_rate: best.map_or(0.0, |b| b.rate),
        best_sustained_deliveries_per_sec: best_sustained,
        steps,
        dropped_subscribers: shared.dropped.load(Ordering::Relaxed),
        stray: shared.ledger.stray.load(Ordering::Relaxed),
        server_errors: shared.server_errors.load(Ordering::Relaxed),
        first_server_error,
    })
}

fn validate(args: &FanoutArgs) -> Result<(), BenchError> {
    let bad = |m: &str| Err(BenchError::InvalidArgument(m.into()));
    if args.subscribers == 0 || args.concurrency == 0 {
        return bad("--subscribers and --concurrency must be at least 1");
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) || args.max_rate < args.rate {
        return bad("--rate must be positive and no larger than --max-rate");
    }
    if args.factor <= 1.0 && args.max_rate > args.rate {
        return bad("--factor must be above 1 when --max-rate exceeds --rate");
    }
    if args.step.is_zero() {
        return bad("--step must be longer than zero");
    }
    Ok(())
}

fn default_channel() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("bench-{}-{nanos}", std::process::id())
}

/// True when a failed step still lost nothing and stayed under the looser `--stop-above`.
fn sustained(step: &StepReport, stop_above: Option<Duration>) -> bool {
    let Some(limit) = stop_above else {
        return false;
    };
    let limit_us = u64::try_from(limit.as_micros()).unwrap_or(u64::MAX);
    step.lost == 0 && step.published > 0 && step.latency.p99_us <= limit_us
}

/// Waits until every published message reached every subscriber, or the drain time is up.
async fn drain(step: &StepLedger, limit: Duration) {
    let deadline = Instant::now() + limit;
    while step.outstanding() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn step_report(
    step: &StepLedger,
    elapsed: Duration,
    planned: Duration,
    bound: Duration,
) -> StepReport {
    let t: StepTally = step.tally();
    let secs = planned.as_secs_f64();
    let bound_us = u64::try_from(bound.as_micros()).unwrap_or(u64::MAX);
    StepReport {
        rate: step.rate,
        published: t.published,
        publish_rate: (t.published as f64 / elapsed.as_secs_f64().max(secs)).round(),
        expected: t.expected,
        delivered: t.delivered,
        lost: t.lost,
        duplicates: t.duplicates,
        deliveries_per_sec: (t.delivered as f64 / elapsed.as_secs_f64().max(secs)).round(),
        latency: t.latency,
        first_delivery: t.first_delivery,
        last_delivery: t.last_delivery,
        pass: t.lost == 0 && t.published > 0 && t.latency.p99_us <= bound_us,
        generator_cpu_pct: None,
    }
}
