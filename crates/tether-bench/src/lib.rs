//! `tether bench`: the load generator and the echo backend the benchmarks run against.
//!
//! Every mode prints progress on stderr and returns one report that the binary prints as a
//! single JSON line on stdout, so scripts can collect results without scraping text.
//!
//! * [`echo`]: the echo backend behind the proxies under test.
//! * [`pingpong`]: closed-loop round trips (throughput, latency, server CPU per message).
//! * [`idle`]: many quiet connections (server memory per tunnel, liveness after a hold).
//! * [`handshake`]: connect/upgrade/close cycles (rate, server CPU per handshake).
//! * [`fanout`]: hub subscribers across nodes at a rising publish rate (deliveries/s, loss).
//! * [`soak`]: the whole system under random faults, with a ledger of every publish.

pub mod client;
pub mod dialer;
pub use tether_testkit::echo;
pub mod error;
pub mod fanout;
pub mod handshake;
pub mod idle;
pub mod latency;
pub mod pingpong;
pub mod procstat;
pub mod soak;
pub mod source;
pub mod target;
pub mod window;

pub use error::BenchError;

/// Writes one progress line on stderr (stdout carries only the JSON result).
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("tether bench: {}", format_args!($($arg)*))
    };
}

/// A load-generating mode (every mode except `echo`, which serves until stopped).
#[derive(Debug, Clone)]
pub enum LoadMode {
    Pingpong(pingpong::PingpongArgs),
    Idle(idle::IdleArgs),
    Handshake(handshake::HandshakeArgs),
    Fanout(fanout::FanoutArgs),
}

/// A finished mode's result; `Display` writes it as one line of JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Report(pub serde_json::Value);

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Report {
    fn of(report: impl serde::Serialize) -> Report {
        Report(serde_json::to_value(report).expect("reports are plain data and always serialise"))
    }
}

/// Runs a load mode to completion and returns its report.
pub async fn run(mode: LoadMode) -> Result<Report, BenchError> {
    Ok(match mode {
        LoadMode::Pingpong(a) => Report::of(pingpong::run(a).await?),
        LoadMode::Idle(a) => Report::of(idle::run(a).await?),
        LoadMode::Handshake(a) => Report::of(handshake::run(a).await?),
        LoadMode::Fanout(a) => Report::of(fanout::run(a).await?),
    })
}

/// Starts one named echo backend per `(name, addr)` and reports where they listen, for
/// `tether bench echo`. They serve until stopped or dropped.
pub async fn start_echoes(
    listeners: &[(String, std::net::SocketAddr)],
) -> Result<(Vec<echo::EchoServer>, Report), BenchError> {
    let mut servers = Vec::with_capacity(listeners.len());
    for (name, addr) in listeners {
        let server = echo::EchoServer::start(name, *addr)
            .await
            .map_err(|source| BenchError::Bind {
                addr: *addr,
                source,
            })?;
        servers.push(server);
    }
    let listening: Vec<_> = servers
        .iter()
        .map(|s| serde_json::json!({"name": s.name(), "addr": s.addr().to_string()}))
        .collect();
    let report = Report(serde_json::json!({"mode": "echo", "listening": listening}));
    Ok((servers, report))
}
