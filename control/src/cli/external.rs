//! `nodeplane external list`: workloads outside the cluster (VMs, bare metal) registered with
//! labels, with their IPs and identity (docs/external.md).

use std::process::ExitCode;

use nodeplane_control::api::{ExternalRow, Request};

use super::client::{ask, table, Common};
use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct ExternalArgs {
    #[command(subcommand)]
    cmd: ExternalCmd,
}

#[derive(Debug, clap::Subcommand)]
enum ExternalCmd {
    /// Every registered external workload: name, IPs, identity, labels.
    List(Common),
}

pub fn run(args: ExternalArgs) -> CliResult {
    let ExternalCmd::List(c) = args.cmd;
    let Some(rows) = ask::<Vec<ExternalRow>>(&c, &Request::ExternalList {})? else {
        return Ok(ExitCode::SUCCESS);
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.ips.join(","),
                r.identity.to_string(),
                r.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    print!("{}", table(&["NAME", "IPS", "IDENTITY", "LABELS"], &rows));
    Ok(ExitCode::SUCCESS)
}
