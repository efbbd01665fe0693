//! `nodeplane bgp run` (the standalone speaker, foreground) and `nodeplane bgp status` (the
//! daemon's speaker through the control socket, or a standalone speaker's status socket).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nodeplane_bgp::daemon::{self, RunOptions};
use nodeplane_control::api::client::{call, ClientError};
use nodeplane_control::api::{BgpStatus, Request};

use super::client::Common;
use super::CliResult;

/// Where `bgp run` serves its status; `bgp status` falls back to it when no daemon runs.
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
    /// Show the speaker's neighbours: state, uptime, last error, announced prefixes. Asks the
    /// daemon (`nodeplane run` with a `bgp:` section) on its control socket; when no daemon
    /// socket exists, a standalone speaker's status socket (`bgp run`) at its default path.
    Status {
        #[command(flatten)]
        common: Common,
        /// A standalone speaker's status socket (`bgp run --status-socket`) instead of the
        /// daemon.
        #[arg(long)]
        speaker_socket: Option<PathBuf>,
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
            // The speaker thread logs its socket faults through `log`.
            nodeplane_control::daemon::log::init("info", Default::default());
            daemon::run(&RunOptions {
                config,
                state,
                status_socket: Some(status_socket),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        BgpCommand::Status {
            common,
            speaker_socket,
        } => {
            let standalone = |path: &Path| -> CliResult {
                let status = nodeplane_bgp::query_status(path)?;
                if common.json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    print!("{}", nodeplane_bgp::format_status(&status));
                }
                Ok(ExitCode::SUCCESS)
            };
            if let Some(path) = &speaker_socket {
                return standalone(path);
            }
            let v = match call(&common.socket, &Request::BgpStatus {}) {
                Ok(v) => v,
                Err(ClientError::Connect { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound
                        && Path::new(DEFAULT_STATUS_SOCKET).exists() =>
                {
                    return standalone(Path::new(DEFAULT_STATUS_SOCKET));
                }
                Err(e) => return Err(e.into()),
            };
            if common.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let s: BgpStatus = serde_json::from_value(v)?;
            print!("{}", format_daemon_status(&s));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The speaker line, then the table and per-neighbour blocks of `format_status`.
fn format_daemon_status(s: &BgpStatus) -> String {
    let speaker = match (s.speaker.as_str(), &s.error) {
        ("running", _) if s.forwarding_preserved => {
            "running in the daemon (forwarding state preserved: conntrack restored)".to_string()
        }
        ("running", _) => {
            "running in the daemon (forwarding state not preserved: no conntrack restored)"
                .to_string()
        }
        ("waiting", _) => "waiting for the first accepted state".to_string(),
        (other, Some(e)) => format!("{} ({e}; started again with backoff)", other.to_uppercase()),
        (other, None) => other.to_string(),
    };
    format!(
        "Speaker: {speaker}\n{}",
        nodeplane_bgp::format_status(&s.status)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_status_says_whether_the_speaker_runs() {
        let cfg = nodeplane_bgp::BgpConfig::from_yaml_str(
            "local_as: 65001\nrouter_id: 10.0.0.2\nneighbors: [{ address: 10.0.0.1, remote_as: 65000, name: leaf, families: [ipv4] }]\n",
            Path::new("t"),
        )
        .unwrap();
        let routes = ["10.244.1.0/24".parse().unwrap()].into();
        let err = "cannot listen for BGP on 0.0.0.0:179: Address in use";
        let s = BgpStatus {
            speaker: "failed".into(),
            error: Some(err.into()),
            forwarding_preserved: false,
            status: nodeplane_bgp::SpeakerStatus::not_running(&cfg, &routes, Some(err)),
        };
        let text = format_daemon_status(&s);
        assert!(
            text.starts_with(&format!(
                "Speaker: FAILED ({err}; started again with backoff)\nBGP speaker: AS 65001"
            )),
            "{text}"
        );
        assert!(text.contains("leaf") && text.contains("Idle"), "{text}");
        // The JSON form round-trips (the flattened speaker status included).
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["speaker"], "failed");
        assert_eq!(v["local_as"], 65001);
        assert_eq!(serde_json::from_value::<BgpStatus>(v).unwrap(), s);
    }
}
