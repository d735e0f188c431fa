//! The `tether` binary: parses the command line, sets up logging and runs one role.
//!
//! Every role lives in its library crate; this file only wires them. `anyhow` stops here.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

mod bench_cmd;
mod demo;
mod hub_cmd;
mod proxy_cmd;

#[derive(Debug, Parser)]
#[command(
    name = "tether",
    version,
    about = "WebSocket load balancer and realtime hub"
)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TETHER_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the WebSocket load balancer.
    Proxy(proxy_cmd::ProxyArgs),
    /// Validate a proxy configuration (--config) or a hub.toml (--hub) and exit (1 on error,
    /// naming file, key and problem).
    Check(proxy_cmd::CheckArgs),
    /// Run a realtime hub node.
    Hub(Box<hub_cmd::HubArgs>),
    /// Run the proxy in front of three hubs with the chat page and the dashboard.
    Demo(demo::DemoArgs),
    /// Load generator and echo backend for benchmarks.
    Bench(bench_cmd::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Proxy(args) => proxy_cmd::run(args),
        Command::Check(args) => proxy_cmd::check(args),
        Command::Hub(args) => hub_cmd::run(*args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench_cmd::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, one line: an operator's error is not a crash to debug.
            eprintln!("tether: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("TETHER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a terminal: in a log file they are noise, and writing them is a
    // measurable share of the per-tunnel line's cost.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
