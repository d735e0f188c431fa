//! `tether proxy` and `tether check`: command-line wiring.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Path to the proxy's TOML configuration.
    #[arg(long, short)]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Path to the proxy's TOML configuration.
    #[arg(long, short)]
    config: PathBuf,
}

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    anyhow::bail!("`tether proxy --config {}` is not wired yet", args.config.display())
}

pub fn check(args: CheckArgs) -> anyhow::Result<()> {
    anyhow::bail!("`tether check --config {}` is not wired yet", args.config.display())
}
