//! `nodeplane ipcache get IP`: the identity of an address and the prefix that gives it.

use std::process::ExitCode;

use nodeplane_control::api::{IpcacheEntry, Request};

use super::client::{ask, opt, table, Common};
use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct IpcacheArgs {
    #[command(subcommand)]
    cmd: IpcacheCmd,
}

#[derive(Debug, clap::Subcommand)]
enum IpcacheCmd {
    /// Longest-prefix match of IP in the ipcache.
    Get {
        ip: String,
        #[command(flatten)]
        common: Common,
    },
}

pub fn run(args: IpcacheArgs) -> CliResult {
    let IpcacheCmd::Get { ip, common } = args.cmd;
    let Some(e) = ask::<IpcacheEntry>(&common, &Request::IpcacheGet { ip })? else {
        return Ok(ExitCode::SUCCESS);
    };
    print!(
        "{}",
        table(
            &["IP", "IDENTITY", "PREFIX", "SOURCE"],
            &[vec![e.ip, e.identity.to_string(), opt(&e.prefix), e.source]]
        )
    );
    Ok(ExitCode::SUCCESS)
}
