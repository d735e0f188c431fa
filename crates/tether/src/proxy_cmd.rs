//! `tether proxy` and `tether check`: command-line wiring.

use std::path::PathBuf;

use anyhow::Context;
use tether_proxy::{Config, Proxy};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Path to the proxy's TOML configuration.
    #[arg(long, short)]
    config: PathBuf,
}

/// Exactly one of the two files.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct CheckArgs {
    /// Path to the proxy's TOML configuration.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Path to a hub's hub.toml (what `tether hub --config` reads, with the `TETHER_HUB_*`
    /// environment the hub would see).
    #[arg(long)]
    hub: Option<PathBuf>,
}

/// Loads the configuration, builds a runtime with `runtime.workers` threads (0 = every core)
/// and serves until SIGTERM or SIGINT. SIGHUP reloads the backend list and the listeners'
/// certificates.
pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let config = Config::from_file(&args.config)?;
    // One worker needs no work-stealing: a current-thread runtime saves the cross-thread
    // bookkeeping on every wake-up, which is much of a small message's cost.
    let mut builder = match config.runtime.workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                b.worker_threads(n);
            }
            b
        }
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let proxy = Proxy::bind(config, Some(args.config.clone())).await?;
        let running = proxy.spawn();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    if let Err(e) = running.reload_from_file() {
                        tracing::error!(error = %e, "reload failed; keeping the current backends and certificates");
                    }
                }
            }
        }
        tracing::info!("shutting down");
        running.shutdown().await;
        anyhow::Ok(())
    })?;
    // Tunnels still open after the grace period end with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}

/// Validates a configuration: prints `ok` and exits 0, or prints `FILE: KEY: PROBLEM` and exits 1.
pub fn check(args: CheckArgs) -> anyhow::Result<()> {
    let path = match (args.config, args.hub) {
        (Some(path), _) => path,
        (None, Some(hub)) => match crate::hub_cmd::check(&hub) {
            Ok(summary) => {
                println!("{summary}");
                return Ok(());
            }
            Err(e) => {
                eprintln!("{e:#}");
                std::process::exit(1);
            }
        },
        (None, None) => anyhow::bail!("give --config FILE (a proxy) or --hub FILE (a hub)"),
    };
    match Config::from_file(&path) {
        Ok(config) => {
            // Says where the admin token comes from (never the token itself): the one line
            // an operator reads to confirm the admin API is locked.
            let admin = &config.admin;
            let token = match (&admin.token, &admin.token_file) {
                (Some(_), Some(file)) => format!("admin token from {}", file.display()),
                (Some(_), None) => "admin token inline".to_owned(),
                (None, _) => {
                    "no admin token: changes from loopback on the admin listener only".to_owned()
                }
            };
            println!(
                "{}: ok ({} backends, strategy {:?}, {token}, reads {:?})",
                path.display(),
                config.backends.len(),
                config.balance.strategy,
                admin.read
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
