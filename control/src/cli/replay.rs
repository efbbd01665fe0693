//! `nodeplane replay`.

use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {}

pub fn run(_args: ReplayArgs) -> CliResult {
    Err("replay is not built yet".into())
}
