//! `nodeplane run --config FILE`: the daemon (see `nodeplane_control::daemon`).

use std::path::PathBuf;
use std::process::ExitCode;

use nodeplane_control::daemon::{self, config::Config};

use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The daemon's config file (docs/config.md). Without it: the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: RunArgs) -> CliResult {
    let cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    daemon::log::init(&cfg.log_level, cfg.log_format);
    daemon::run(cfg, args.config.clone())?;
    Ok(ExitCode::SUCCESS)
}
