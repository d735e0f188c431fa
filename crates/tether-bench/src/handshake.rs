//! Handshake rate: connect, upgrade, close, again, as fast as the path allows.
//!
//! Reconnect storms are where a proxy spends on parsing, routing and connecting rather than on
//! moving bytes. With `--watch-pid` the report gives server CPU per completed handshake.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;

use crate::client::{self, Buffers};
use crate::dialer::{Dial, Dialer};
use crate::error::BenchError;
use crate::latency::{LatencyRecorder, LatencySummary};
use crate::procstat::{Usage, WatchArgs};
use crate::source::SourcePool;
use crate::target::TargetUrl;
use crate::window::{Watched, Window};

/// How long a client waits for the server's close after sending its own.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// `tether bench handshake`: back-to-back connect/upgrade/close cycles.
#[derive(Debug, Clone, clap::Args)]
pub struct HandshakeArgs {
    /// WebSocket URL of the path under test; `wss://` needs `--ca`, and every handshake
    /// is then a full TLS 1.3 one (no resumption).
    #[arg(long)]
    pub url: TargetUrl,
    /// PEM file of the CA that signed a `wss://` server's certificate (the only one trusted).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Clients cycling concurrently.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Length of the measured window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Cycles run before the window opens (not counted).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Distinct 127.x source addresses, so closed connections' ports are not the limit.
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// Query parameter that carries each connection's sticky key (`sid=hs-N`).
    #[arg(long, default_value = "sid")]
    pub sid_param: String,
    #[command(flatten)]
    pub watch: WatchArgs,
}

/// The JSON result of a handshake run.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeReport {
    pub mode: &'static str,
    pub url: String,
    pub concurrency: usize,
    pub duration_s: f64,
    /// Upgrades completed (101 received) inside the window.
    pub handshakes: u64,
    pub handshakes_per_sec: f64,
    /// Connect + upgrade time.
    pub latency: LatencySummary,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// The generator's CPU use over the window, % of one CPU (≈100 with one thread: the
    /// generator set the pace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator_cpu_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<Usage>,
    /// Server CPU time per handshake (including the close), µs (needs `--watch-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_handshake: Option<f64>,
}

struct CycleOutcome {
    latency: LatencyRecorder,
    handshakes: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Runs the cycles and reports what completed inside the window.
pub async fn run(args: HandshakeArgs) -> Result<HandshakeReport, BenchError> {
    if args.concurrency == 0 {
        return Err(BenchError::InvalidArgument(
            "--concurrency must be at least 1".into(),
        ));
    }
    match Dial::new(&args.url, args.ca.as_deref())? {
        Dial::Plain(dialer) => run_with(args, dialer).await,
        Dial::Tls(dialer) => run_with(args, dialer).await,
    }
}

async fn run_with<D: Dialer>(
    args: HandshakeArgs,
    dialer: D,
) -> Result<HandshakeReport, BenchError> {
    let sources = SourcePool::loopback(args.sources)?;
    let window = Window::after(args.warmup, args.duration);
    crate::progress!(
        "handshake: {} clients cycling against {}; measuring {:?}",
        args.concurrency,
        args.url,
        args.duration
    );
    let usage = window.watch(args.watch.clone());
    let counted = Arc::new(AtomicU64::new(0));
    let ticker = window.report_progress("handshakes", counted.clone());
    let counter = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..args.concurrency {
        tasks.spawn(cycle(
            args.clone(),
            dialer.clone(),
            sources.clone(),
            counter.clone(),
            window,
            counted.clone(),
        ));
    }
    let mut latency = LatencyRecorder::new();
    let (mut handshakes, mut errors, mut first_error) = (0, 0, None);
    while let Some(done) = tasks.join_next().await {
        let Ok(outcome) = done else {
            errors += 1;
            continue;
        };
        latency.merge(&outcome.latency);
        handshakes += outcome.handshakes;
        errors += outcome.errors;
        if first_error.is_none() {
            first_error = outcome.first_error;
        }
    }
    ticker.abort();
    let watched = usage.await.unwrap_or_else(|_| Ok(Watched::default()))?;
    let server = watched.server;
    let secs = window.duration().as_secs_f64();
    Ok(HandshakeReport {
        mode: "handshake",
        url: args.url.to_string(),
        concurrency: args.concurrency,
        duration_s: secs,
        handshakes,
        handshakes_per_sec: (handshakes as f64 / secs).round(),
        latency: latency.summary(),
        errors,
        first_error,
        server_cpu_us_per_handshake: server.and_then(|u| u.cpu_us_per(handshakes)),
        server,
        generator_cpu_pct: watched.generator_cpu_pct,
    })
}

async fn cycle<D: Dialer>(
    args: HandshakeArgs,
    dialer: D,
    sources: SourcePool,
    counter: Arc<AtomicUsize>,
    window: Window,
    progress: Arc<AtomicU64>,
) -> CycleOutcome {
    let mut out = CycleOutcome {
        latency: LatencyRecorder::new(),
        handshakes: 0,
        errors: 0,
        first_error: None,
    };
    loop {
        let started = Instant::now();
        if started >= window.end {
            return out;
        }
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let url = args.url.url_with_param(&args.sid_param, &format!("hs-{n}"));
        let opened = client::open_with(
            &dialer,
            &url,
            sources.for_connection(n),
            Buffers::ForMessages(0),
        )
        .await;
        let done = Instant::now();
        let counted = window.contains(started) && done < window.end;
        match opened {
            Ok(ws) => {
                if counted {
                    out.handshakes += 1;
                    out.latency.record(done - started);
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                close(ws).await;
            }
            Err(e) => {
                if counted {
                    out.errors += 1;
                }
                out.first_error.get_or_insert_with(|| e.chain());
                // A refused or timed-out server should not be hammered in a tight loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Closes cleanly: our close frame, then the server's, then EOF. The server closes the TCP
/// connection first, so the client keeps no TIME_WAIT socket per cycle.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let _ = ws.flush().await;
}
