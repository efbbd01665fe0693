//! `nodeplane bgp run` (the speaker, foreground) and `nodeplane bgp status`.

use std::path::PathBuf;
use std::process::ExitCode;

use nodeplane_bgp::daemon::{self, RunOptions};

use super::CliResult;

/// Where `bgp run` serves its status and `bgp status` looks for it by default.
pub const DEFAULT_STATUS_SOCKET: &str = "/run/nodeplane/bgp.sock";

#[derive(Debug, clap::Args)]
pub struct BgpArgs {
    #[command(subcommand)]
    command: BgpCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BgpCommand {
    /// Run the BGP speaker in the foreground. SIGTERM/SIGINT withdraw and close; SIGUSR1 closes
    /// without withdrawing so routers keep the routes (graceful restart) while it is replaced.
    Run {
        /// BGP config (YAML: the `bgp:` section itself or a node config holding it).
        #[arg(long)]
        config: PathBuf,
        /// Node state file or directory (PodCIDRs, services); watched for changes.
        #[arg(long)]
        state: PathBuf,
        /// Unix socket to serve status on (mode 0600).
        #[arg(long, default_value = DEFAULT_STATUS_SOCKET)]
        status_socket: PathBuf,
    },
    /// Show the speaker's neighbours: state, uptime, last error, announced prefixes.
    Status {
        #[arg(long, default_value = DEFAULT_STATUS_SOCKET)]
        socket: PathBuf,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: BgpArgs) -> CliResult {
    match args.command {
        BgpCommand::Run {
            config,
            state,
            status_socket,
        } => {
            if let Some(dir) = status_socket.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            daemon::run(&RunOptions {
                config,
                state,
                status_socket: Some(status_socket),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        BgpCommand::Status { socket, json } => {
            let status = nodeplane_bgp::query_status(&socket)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", nodeplane_bgp::format_status(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
