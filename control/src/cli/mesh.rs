//! `nodeplane mesh run` (the mirror of remote clusters' exported keys into the local store,
//! foreground) and `nodeplane mesh status` (its status file). docs/multicluster.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use nodeplane_control::mesh::{self, MeshConfig};

use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct MeshArgs {
    #[command(subcommand)]
    command: MeshCommand,
}

#[derive(Debug, clap::Subcommand)]
enum MeshCommand {
    /// Run the mirror in the foreground until SIGTERM/SIGINT: list and watch every remote
    /// cluster's exported keys and write them into the local store under mesh/<cluster>/.
    Run {
        /// The mesh config (YAML: cluster, local, clusters; docs/multicluster.md).
        #[arg(long)]
        config: PathBuf,
        /// Log level: error, warn, info, debug.
        #[arg(long, default_value = "info")]
        log_level: String,
    },
    /// The mirror's status: per remote cluster its state, revision, mirrored and filtered keys.
    Status {
        /// The mesh config (its `status_file` is read).
        #[arg(long, conflicts_with = "status_file")]
        config: Option<PathBuf>,
        /// The status file itself (default: /run/nodeplane/mesh-status.json).
        #[arg(long)]
        status_file: Option<PathBuf>,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a mesh config and print it with its defaults.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

pub fn run(args: MeshArgs) -> CliResult {
    match args.command {
        MeshCommand::Run { config, log_level } => {
            let cfg = MeshConfig::load(&config)?;
            nodeplane_control::daemon::log::init(&log_level, Default::default());
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(sig, stop.clone())
                    .map_err(|e| format!("cannot install the signal handler: {e}"))?;
            }
            log::info!(
                "mesh: cluster {} (id {}) mirroring {} remote cluster(s) into {} {}/mesh/",
                cfg.cluster.name,
                cfg.cluster.id,
                cfg.clusters.len(),
                cfg.local.endpoints.join(","),
                cfg.local.prefix
            );
            mesh::run(cfg, stop)?;
            log::info!("mesh: stopped");
            Ok(ExitCode::SUCCESS)
        }
        MeshCommand::Status {
            config,
            status_file,
            json,
        } => {
            let path = match (config, status_file) {
                (Some(c), _) => MeshConfig::load(&c)?.status_file,
                (None, Some(p)) => p,
                (None, None) => PathBuf::from(mesh::DEFAULT_STATUS_FILE),
            };
            let s = mesh::read_status(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", mesh::format_status(&s, mesh::now_unix_ms()));
            }
            // Non-zero when something needs an operator: scripts and checks can use it.
            let healthy = s.local.connected
                && s.clusters
                    .iter()
                    .all(|c| c.state == mesh::ClusterState::Synced);
            Ok(if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        MeshCommand::Check { config } => {
            let cfg = MeshConfig::load(&config)?;
            print!("{}", yaml_serde::to_string(&cfg)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
