//! `tether bench`: command-line wiring for the load generator and the echo backend.
//!
//! Each mode prints progress on stderr and, when done, exactly one JSON line on stdout.
//! `echo` prints its JSON line once all listeners are bound, then serves until interrupted.

use std::net::SocketAddr;

use anyhow::Context;
use tether_bench::{LoadMode, Report};

/// Load generator and echo backend for benchmarks (results as one JSON line on stdout).
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Runtime worker threads for the generator (1 runs its tasks on the calling thread;
    /// fanout's publisher always has a thread of its own, so its timer is on time).
    /// Default: one per CPU the process may use.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Echo backend that says who it is (header X-Tether-Backend, `whoami` text frame).
    /// Serves until interrupted; prints {"mode":"echo","listening":[…]} once bound.
    Echo(EchoArgs),
    /// Closed-loop ping-pong: N connections, one message in flight each; messages/s, latency
    /// p50/p99/p99.9, and server CPU per round trip with --watch-pid.
    Pingpong(tether_bench::pingpong::PingpongArgs),
    /// Hold N idle connections from several 127.x sources, then check a sample still answers;
    /// server memory per connection with --watch-pid.
    Idle(tether_bench::idle::IdleArgs),
    /// Connect/upgrade/close cycles; handshakes/s, handshake latency, and server CPU per
    /// handshake with --watch-pid.
    Handshake(tether_bench::handshake::HandshakeArgs),
    /// Hub fan-out: subscribers across nodes, publish rate stepped up; deliveries/s, end-to-end
    /// latency (and each message's first and last delivery) and lost messages per step, best
    /// passing step.
    Fanout(tether_bench::fanout::FanoutArgs),
    /// Chaos soak: its own Redis, hubs and a proxy from this binary, resuming subscribers,
    /// publishers, random faults (seeded); a ledger proves nothing was lost or doubled.
    /// Last stdout line: `soak: … lost=N duplicated=N …`; exit 1 when the run failed.
    /// See docs/soak.md.
    Soak(tether_bench::soak::SoakArgs),
}

/// `tether bench echo`: one or more named echo listeners in this process.
#[derive(Debug, clap::Args)]
struct EchoArgs {
    /// Address to listen on. Repeat for several listeners in one process.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Name each listener reports, paired with --listen in order. Default: echo-PORT.
    #[arg(long)]
    name: Vec<String>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = build_runtime(args.threads)?;
    match args.mode {
        Mode::Echo(echo) => runtime.block_on(serve_echo(echo)),
        Mode::Pingpong(a) => report(runtime.block_on(tether_bench::run(LoadMode::Pingpong(a)))),
        Mode::Idle(a) => report(runtime.block_on(tether_bench::run(LoadMode::Idle(a)))),
        Mode::Handshake(a) => report(runtime.block_on(tether_bench::run(LoadMode::Handshake(a)))),
        Mode::Fanout(a) => report(runtime.block_on(tether_bench::run(LoadMode::Fanout(a)))),
        Mode::Soak(a) => soak(&runtime, a),
    }
}

fn build_runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder
        .enable_all()
        .build()
        .context("building the bench runtime")
}

/// Runs the soak; a Ctrl-C or SIGTERM stops it early, children included. Prints the summary,
/// then the machine-readable line last; a failed run is an error (exit status 1).
fn soak(
    runtime: &tokio::runtime::Runtime,
    args: tether_bench::soak::SoakArgs,
) -> anyhow::Result<()> {
    let report = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            report = tether_bench::soak::run(args) => Ok(report?),
            _ = term.recv() => anyhow::bail!("soak stopped by SIGTERM"),
            _ = tokio::signal::ctrl_c() => anyhow::bail!("soak interrupted"),
        }
    })?;
    if let Ok(summary) = std::fs::read_to_string(report.out.join("summary.txt")) {
        print!("{summary}");
    }
    println!("{report}");
    anyhow::ensure!(
        report.passed(),
        "soak failed (details in {})",
        report.out.display()
    );
    Ok(())
}

fn report(result: Result<Report, tether_bench::BenchError>) -> anyhow::Result<()> {
    println!("{}", result?);
    Ok(())
}

async fn serve_echo(args: EchoArgs) -> anyhow::Result<()> {
    if !args.name.is_empty() && args.name.len() != args.listen.len() {
        anyhow::bail!(
            "give one --name per --listen ({} names for {} listeners), or none",
            args.name.len(),
            args.listen.len()
        );
    }
    let listeners: Vec<(String, SocketAddr)> = args
        .listen
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let name = args.name.get(i).cloned();
            (
                name.unwrap_or_else(|| format!("echo-{}", addr.port())),
                *addr,
            )
        })
        .collect();
    let (servers, ready) = tether_bench::start_echoes(&listeners).await?;
    println!("{ready}");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for the interrupt signal")?;
    for server in &servers {
        server.stop();
    }
    Ok(())
}
