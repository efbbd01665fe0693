//! `nodeplane service list`.

use std::process::ExitCode;

use nodeplane_control::api::{Request, ServiceRow};

use super::client::{ask, table, Common};
use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    cmd: ServiceCmd,
}

#[derive(Debug, clap::Subcommand)]
enum ServiceCmd {
    /// Services with their frontends (NodePorts on every node IP), backend counts and traffic
    /// since the daemon started (new flows, frames and bytes forwarded both ways, frames
    /// dropped).
    List(Common),
}

pub fn run(args: ServiceArgs) -> CliResult {
    let ServiceCmd::List(c) = args.cmd;
    let Some(rows) = ask::<Vec<ServiceRow>>(&c, &Request::ServiceList {})? else {
        return Ok(ExitCode::SUCCESS);
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.kind.clone(),
                s.frontends.join(","),
                s.algorithm.clone(),
                format!("{}/{}/{}", s.active, s.terminating, s.quarantined),
                s.affinity_s
                    .map(|a| format!("ClientIP {a}s"))
                    .unwrap_or_else(|| "-".into()),
                s.traffic.flows.to_string(),
                s.traffic.packets.to_string(),
                s.traffic.bytes.to_string(),
                s.traffic.dropped.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "NAME",
                "TYPE",
                "FRONTENDS",
                "ALGORITHM",
                "BACKENDS(act/term/quar)",
                "AFFINITY",
                "FLOWS",
                "PKTS",
                "BYTES",
                "DROPPED"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}
