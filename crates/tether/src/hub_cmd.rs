//! `tether hub`: command-line wiring for one realtime hub node.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tether_hub::{BrokerOptions, HistoryPolicy, HubConfig};

#[derive(Debug, clap::Args)]
pub struct HubArgs {
    /// Address to listen on (WebSocket at /ws, HTTP API under /api/, /health, /metrics).
    #[arg(long, default_value = "127.0.0.1:7000", env = "TETHER_HUB_LISTEN")]
    listen: SocketAddr,
    /// Node name, sent to clients in `welcome`.
    #[arg(long, default_value = "hub", env = "TETHER_HUB_NAME")]
    name: String,
    /// Broker shared by the nodes that act as one: `memory` (this process only) or
    /// `redis://host:port/db`.
    #[arg(long, default_value = "memory", env = "TETHER_HUB_BROKER")]
    broker: String,
    /// Prefix of every Redis key and pub/sub channel.
    #[arg(long, default_value = "tether", env = "TETHER_HUB_REDIS_PREFIX")]
    redis_prefix: String,
    /// Messages kept per channel for resume.
    #[arg(long, default_value_t = 1000)]
    history_size: usize,
    /// Oldest message kept per channel for resume (e.g. 300s, 5m, 1h).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    history_ttl: Duration,
    /// Bearer token required by /api/* (unset: the API is open).
    #[arg(long, env = "TETHER_HUB_API_TOKEN")]
    api_token: Option<String>,
    /// Largest client frame or publish body, in bytes.
    #[arg(long, default_value_t = 65536)]
    max_message_size: usize,
    /// How often each connection is pinged.
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    ping_interval: Duration,
    /// How long a pinged client may stay silent before it is dropped.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    ping_timeout: Duration,
    /// Frames per second one client may send on average (beyond: closed with 1008).
    #[arg(long, default_value_t = 100)]
    client_rate: u32,
    /// Frames one client may send in a burst.
    #[arg(long, default_value_t = 200)]
    client_burst: u32,
    /// Messages queued for one client before it is closed as too slow (1013).
    #[arg(long, default_value_t = 1024)]
    client_queue: usize,
    /// Shortest interval between two message writes to one client (e.g. 10ms): messages
    /// arriving sooner go out together when it is up. 0 writes each message at once.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    write_delay: Duration,
    /// Channels one connection may subscribe at once.
    #[arg(long, default_value_t = 128)]
    max_subscriptions: usize,
    /// On SIGTERM, clients are closed with 1012 spread over this window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    shutdown_window: Duration,
    /// Longest time a connection may take to send a complete request head, from when it
    /// opens or its previous response went out; slower (or silent) sockets are closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    head_timeout: Duration,
    /// Longest time an HTTP connection (not yet a WebSocket) may send nothing, e.g. in the
    /// middle of a request body, before it is closed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
}

impl HubArgs {
    fn config(&self) -> HubConfig {
        HubConfig {
            name: self.name.clone(),
            listen: self.listen,
            api_token: self.api_token.clone(),
            max_message_size: self.max_message_size,
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            client_rate: self.client_rate,
            client_burst: self.client_burst,
            client_queue: self.client_queue,
            write_delay: self.write_delay,
            max_subscriptions: self.max_subscriptions,
            shutdown_window: self.shutdown_window,
            head_timeout: self.head_timeout,
            idle_timeout: self.idle_timeout,
        }
    }

    fn broker_options(&self) -> BrokerOptions {
        BrokerOptions {
            history: HistoryPolicy {
                size: self.history_size,
                ttl: self.history_ttl,
            },
            redis_prefix: self.redis_prefix.clone(),
            ..Default::default()
        }
    }
}

pub fn run(args: HubArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: HubArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.history_size > 0,
        "--history-size must be greater than zero"
    );
    let broker = tether_hub::broker_with(&args.broker, args.broker_options())
        .with_context(|| format!("--broker {}", args.broker))?;
    let hub = tether_hub::serve(args.config(), broker, None).await?;
    println!(
        "tether hub {} listening on {}",
        hub.name(),
        hub.local_addr()
    );
    stop_signal().await?;
    tracing::info!("stop signal received; draining");
    hub.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
    }
    Ok(())
}

/// Parses `500ms`, `10s`, `5m`, `1h` (a bare number is seconds).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s, 5m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "" | "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        "h" => Ok(Duration::from_secs(value * 3600)),
        other => Err(format!(
            "unknown unit {other:?} in {text:?}; use ms, s, m or h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
