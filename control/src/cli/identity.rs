//! `nodeplane identity list`.

use std::process::ExitCode;

use nodeplane_control::api::{IdentityRow, Request};

use super::client::{ask, table, Common};
use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct IdentityArgs {
    #[command(subcommand)]
    cmd: IdentityCmd,
}

#[derive(Debug, clap::Subcommand)]
enum IdentityCmd {
    /// Every identity known to the node: reserved, local endpoints, ipcache prefixes.
    List(Common),
}

pub fn run(args: IdentityArgs) -> CliResult {
    let IdentityCmd::List(c) = args.cmd;
    let Some(rows) = ask::<Vec<IdentityRow>>(&c, &Request::IdentityList {})? else {
        return Ok(ExitCode::SUCCESS);
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.identity.to_string(),
                r.cluster.to_string(),
                r.kind.clone(),
                r.members.join(", "),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["IDENTITY", "CLUSTER", "KIND", "MEMBERS"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}
