//! Idle tunnels: open many connections, hold them without traffic, check a sample still answers.
//!
//! Long-lived, mostly silent WebSockets are the proxy's common case, so what each one costs
//! while idle decides how many a box can hold. With `--watch-pid` the report gives the server's
//! resident-memory growth divided by the connections held.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::client::{self, Buffers};
use crate::dialer::{Dial, Dialer};
use crate::error::BenchError;
use crate::procstat::{Usage, WatchArgs};
use crate::source::SourcePool;
use crate::target::TargetUrl;

/// How long a sampled connection may take to answer `whoami`.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(5);

/// `tether bench idle`: hold N quiet connections from several source addresses.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// WebSocket URL of the path under test; `wss://` needs `--ca`.
    #[arg(long)]
    pub url: TargetUrl,
    /// PEM file of the CA that signed a `wss://` server's certificate (the only one trusted).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Distinct 127.x source addresses to spread them over (127.0.0.1 upwards).
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// Handshakes in flight at once while opening.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// How long to hold the connections once all are open (memory is sampled first).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// Pause after the last connection opens before memory is sampled, so the server settles.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Connections (spread evenly over all held) that must answer `whoami` after the hold.
    #[arg(long, default_value_t = 100)]
    pub sample: usize,
    /// Query parameter that carries each connection's sticky key (`sid=idle-N`).
    #[arg(long, default_value = "sid")]
    pub sid_param: String,
    #[command(flatten)]
    pub watch: WatchArgs,
}

/// The JSON result of an idle run.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub mode: &'static str,
    pub url: String,
    pub requested: usize,
    pub opened: usize,
    pub failed: usize,
    pub sources: usize,
    /// Connections still open after the hold (a drop is a lost tunnel).
    pub still_open: usize,
    pub sampled: usize,
    /// Sampled connections that answered `whoami` with a text frame.
    pub sample_answered: usize,
    pub open_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<Usage>,
    /// Server RSS growth per held connection, in bytes (needs `--watch-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_bytes_per_conn: Option<f64>,
}

/// Opens, holds, samples and reports.
pub async fn run(args: IdleArgs) -> Result<IdleReport, BenchError> {
    if args.connections == 0 || args.concurrency == 0 {
        return Err(BenchError::InvalidArgument(
            "--connections and --concurrency must be at least 1".into(),
        ));
    }
    match Dial::new(&args.url, args.ca.as_deref())? {
        Dial::Plain(dialer) => run_with(args, dialer).await,
        Dial::Tls(dialer) => run_with(args, dialer).await,
    }
}

async fn run_with<D: Dialer>(args: IdleArgs, dialer: D) -> Result<IdleReport, BenchError> {
    let sources = SourcePool::loopback(args.sources)?;
    let before = args.watch.sample()?;
    let started = std::time::Instant::now();
    let (mut held, failed, first_error) = open_all(&args, &dialer, &sources).await;
    let open_s = started.elapsed().as_secs_f64();
    if held.is_empty() {
        if let Some(first) = first_error {
            return Err(BenchError::NoConnections {
                target: args.url.addr(),
                first: Box::new(first),
            });
        }
    }
    crate::progress!(
        "idle: {} open ({} failed) in {open_s:.1}s; settling {:?}, holding {:?}",
        held.len(),
        failed,
        args.settle,
        args.hold
    );
    tokio::time::sleep(args.settle).await;
    let after = args.watch.sample()?;
    tokio::time::sleep(args.hold).await;
    let still_open = count_still_open(&mut held);
    let (sampled, sample_answered) = check_sample(&mut held, args.sample).await;
    let server = Usage::between(&args.watch, before, after);
    Ok(IdleReport {
        mode: "idle",
        url: args.url.to_string(),
        requested: args.connections,
        opened: held.len(),
        failed,
        sources: sources.len(),
        still_open,
        sampled,
        sample_answered,
        open_s: (open_s * 100.0).round() / 100.0,
        first_error: first_error.as_ref().map(BenchError::chain),
        server_rss_bytes_per_conn: server.and_then(|u| u.rss_bytes_per(held.len() as u64)),
        server,
    })
}

/// Opens the connections with bounded concurrency; failures are counted, not fatal, so a
/// server that tops out at some number still gets a report saying where.
type Opened<S> = (Vec<WebSocketStream<S>>, usize, Option<BenchError>);

async fn open_all<D: Dialer>(
    args: &IdleArgs,
    dialer: &D,
    sources: &SourcePool,
) -> Opened<D::Stream> {
    let mut held = Vec::with_capacity(args.connections);
    let mut failed = 0;
    let mut first_error = None;
    let mut opening = JoinSet::new();
    let mut next = 0;
    while next < args.connections || !opening.is_empty() {
        while next < args.connections && opening.len() < args.concurrency {
            let url = args
                .url
                .url_with_param(&args.sid_param, &format!("idle-{next}"));
            let (dialer, source) = (dialer.clone(), sources.for_connection(next));
            opening.spawn(
                async move { client::open_with(&dialer, &url, source, Buffers::Idle).await },
            );
            next += 1;
        }
        match opening.join_next().await {
            Some(Ok(Ok(ws))) => {
                held.push(ws);
                if held.len() % 1000 == 0 {
                    crate::progress!("idle: {} open", held.len());
                }
            }
            Some(Ok(Err(e))) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Some(Err(source)) => {
                failed += 1;
                first_error.get_or_insert(BenchError::Task {
                    what: "connection",
                    source,
                });
            }
            None => break,
        }
    }
    (held, failed, first_error)
}

/// Counts sessions the server has not closed, without blocking: a closed one has a frame or
/// EOF ready to read.
fn count_still_open<S: AsyncRead + AsyncWrite + Unpin>(held: &mut [WebSocketStream<S>]) -> usize {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    held.iter_mut()
        .filter_map(|ws| {
            let open = !matches!(
                ws.poll_next_unpin(&mut cx),
                std::task::Poll::Ready(None | Some(Err(_)) | Some(Ok(Message::Close(_))))
            );
            open.then_some(())
        })
        .count()
}

/// Asks `sample` connections, spread evenly over all held, who they are.
async fn check_sample<S: AsyncRead + AsyncWrite + Unpin>(
    held: &mut [WebSocketStream<S>],
    sample: usize,
) -> (usize, usize) {
    let sample = sample.min(held.len());
    if sample == 0 {
        return (0, 0);
    }
    let stride = held.len() / sample;
    let mut answered = 0;
    for ws in held.iter_mut().step_by(stride.max(1)).take(sample) {
        if whoami(ws).await {
            answered += 1;
        }
    }
    (sample, answered)
}

async fn whoami<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> bool {
    let ask = async {
        ws.send(Message::text("whoami")).await.ok()?;
        loop {
            match ws.next().await? {
                Ok(Message::Text(_)) => return Some(()),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                _ => return None,
            }
        }
    };
    matches!(
        tokio::time::timeout(SAMPLE_TIMEOUT, ask).await,
        Ok(Some(()))
    )
}
