//! Closed-loop ping-pong: each connection sends one message, waits for its echo, and repeats.
//!
//! The rate is whatever the path sustains, so messages/s measures throughput and the
//! round-trip histogram measures latency at that load. With `--watch-pid` the server's CPU
//! time over the window divided by the round trips gives CPU per echoed message.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::client::{self, Buffers};
use crate::dialer::{Dial, Dialer};
use crate::error::BenchError;
use crate::latency::{LatencyRecorder, LatencySummary};
use crate::procstat::{Usage, WatchArgs};
use crate::source::SourcePool;
use crate::target::TargetUrl;
use crate::window::{Watched, Window};

/// `tether bench pingpong`: N connections in closed loop against an echo path.
#[derive(Debug, Clone, clap::Args)]
pub struct PingpongArgs {
    /// WebSocket URL of the path under test (an echo backend, or a proxy in front of some);
    /// `wss://` needs `--ca`.
    #[arg(long)]
    pub url: TargetUrl,
    /// PEM file of the CA that signed a `wss://` server's certificate (the only one trusted).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Concurrent connections, each with one message in flight.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Payload size of each binary message, in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Length of the measured window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load applied before the window opens (not counted).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Query parameter that carries each connection's sticky key (`sid=pp-N`).
    #[arg(long, default_value = "sid")]
    pub sid_param: String,
    /// Distinct 127.x source addresses to connect from.
    #[arg(long, default_value_t = 1)]
    pub sources: u8,
    #[command(flatten)]
    pub watch: WatchArgs,
}

/// The JSON result of a ping-pong run.
#[derive(Debug, Clone, Serialize)]
pub struct PingpongReport {
    pub mode: &'static str,
    pub url: String,
    pub connections: usize,
    pub size: usize,
    pub duration_s: f64,
    /// Round trips completed inside the window.
    pub messages: u64,
    pub msgs_per_sec: f64,
    /// Payload bytes per second in each direction.
    pub bytes_per_sec: f64,
    pub latency: LatencySummary,
    /// Echoes that did not match what was sent, plus sessions that broke.
    pub errors: u64,
    /// The generator's CPU use over the window, % of one CPU (≈100 with one thread: the
    /// generator set the pace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator_cpu_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<Usage>,
    /// Server CPU time per round trip, µs (needs `--watch-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_msg: Option<f64>,
}

struct ConnOutcome {
    latency: LatencyRecorder,
    messages: u64,
    errors: u64,
}

/// Runs the ping-pong load and reports what was counted inside the window.
pub async fn run(args: PingpongArgs) -> Result<PingpongReport, BenchError> {
    if args.connections == 0 || args.size == 0 {
        return Err(BenchError::InvalidArgument(
            "--connections and --size must be at least 1".into(),
        ));
    }
    match Dial::new(&args.url, args.ca.as_deref())? {
        Dial::Plain(dialer) => run_with(args, dialer).await,
        Dial::Tls(dialer) => run_with(args, dialer).await,
    }
}

async fn run_with<D: Dialer>(args: PingpongArgs, dialer: D) -> Result<PingpongReport, BenchError> {
    let sources = SourcePool::loopback(args.sources)?;
    let sessions = open_all(&args, &dialer, &sources).await?;
    crate::progress!(
        "pingpong: {} connections open to {}; warming up {:?}, measuring {:?}",
        sessions.len(),
        args.url,
        args.warmup,
        args.duration
    );
    let window = Window::after(args.warmup, args.duration);
    let usage = window.watch(args.watch.clone());
    let counted = Arc::new(AtomicU64::new(0));
    let ticker = window.report_progress("pingpong round trips", counted.clone());
    let payload: Arc<[u8]> = (0..args.size).map(|i| i as u8).collect();
    let mut tasks = JoinSet::new();
    for ws in sessions {
        tasks.spawn(drive(ws, payload.clone(), window, counted.clone()));
    }
    let mut latency = LatencyRecorder::new();
    let (mut messages, mut errors) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let Ok(outcome) = done else {
            errors += 1;
            continue;
        };
        latency.merge(&outcome.latency);
        messages += outcome.messages;
        errors += outcome.errors;
    }
    ticker.abort();
    let watched = usage.await.unwrap_or_else(|_| Ok(Watched::default()))?;
    let server = watched.server;
    let secs = window.duration().as_secs_f64();
    Ok(PingpongReport {
        mode: "pingpong",
        url: args.url.to_string(),
        connections: args.connections,
        size: args.size,
        duration_s: secs,
        messages,
        msgs_per_sec: (messages as f64 / secs).round(),
        bytes_per_sec: (messages as f64 * args.size as f64 / secs).round(),
        latency: latency.summary(),
        errors,
        server_cpu_us_per_msg: server.and_then(|u| u.cpu_us_per(messages)),
        server,
        generator_cpu_pct: watched.generator_cpu_pct,
    })
}

/// Opens every connection before the clock starts, so setup is never inside the window.
async fn open_all<D: Dialer>(
    args: &PingpongArgs,
    dialer: &D,
    sources: &SourcePool,
) -> Result<Vec<WebSocketStream<D::Stream>>, BenchError> {
    let mut opening = JoinSet::new();
    for i in 0..args.connections {
        let url = args.url.url_with_param(&args.sid_param, &format!("pp-{i}"));
        let (dialer, source, buffers) = (
            dialer.clone(),
            sources.for_connection(i),
            Buffers::ForMessages(args.size),
        );
        opening.spawn(async move { client::open_with(&dialer, &url, source, buffers).await });
    }
    let mut sessions = Vec::with_capacity(args.connections);
    while let Some(opened) = opening.join_next().await {
        match opened {
            Ok(Ok(ws)) => sessions.push(ws),
            Ok(Err(e)) => return Err(e),
            Err(source) => {
                return Err(BenchError::Task {
                    what: "connection",
                    source,
                })
            }
        }
    }
    Ok(sessions)
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    payload: Arc<[u8]>,
    window: Window,
    counted: Arc<AtomicU64>,
) -> ConnOutcome {
    let mut out = ConnOutcome {
        latency: LatencyRecorder::new(),
        messages: 0,
        errors: 0,
    };
    let message = Message::binary(payload.to_vec());
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            break;
        }
        if ws.send(message.clone()).await.is_err() {
            out.errors += 1;
            return out;
        }
        let echoed = loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => break Some(b),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Text(_))) => break None,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    out.errors += 1;
                    return out;
                }
            }
        };
        let now = Instant::now();
        match echoed {
            Some(b) if b[..] == payload[..] => {
                if window.contains(sent) && now < window.end {
                    out.messages += 1;
                    out.latency.record(now - sent);
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => out.errors += 1,
        }
    }
    let _ = ws.close(None).await;
    out
}
