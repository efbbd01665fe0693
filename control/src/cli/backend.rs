//! `nodeplane backend list`.

use std::process::ExitCode;

use nodeplane_control::api::{BackendRow, Request};

use super::client::{ask, table, Common};
use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct BackendArgs {
    #[command(subcommand)]
    cmd: BackendCmd,
}

#[derive(Debug, clap::Subcommand)]
enum BackendCmd {
    /// Every service's backends with state, weight and live flows.
    List(Common),
}

pub fn run(args: BackendArgs) -> CliResult {
    let BackendCmd::List(c) = args.cmd;
    let Some(rows) = ask::<Vec<BackendRow>>(&c, &Request::BackendList {})? else {
        return Ok(ExitCode::SUCCESS);
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|b| {
            vec![
                b.service.clone(),
                if b.ip.contains(':') {
                    format!("[{}]:{}", b.ip, b.port)
                } else {
                    format!("{}:{}", b.ip, b.port)
                },
                b.state.clone(),
                b.weight.to_string(),
                b.flows.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["SERVICE", "BACKEND", "STATE", "WEIGHT", "FLOWS"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}
