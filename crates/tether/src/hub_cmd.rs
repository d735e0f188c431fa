//! `tether hub`: command-line wiring.

#[derive(Debug, clap::Args)]
pub struct HubArgs {}

pub fn run(_args: HubArgs) -> anyhow::Result<()> {
    anyhow::bail!("`tether hub` is not wired yet")
}
