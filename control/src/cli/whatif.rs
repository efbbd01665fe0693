//! `nodeplane whatif`: see [`nodeplane_control::whatif`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use nodeplane_control::api::client::call;
use nodeplane_control::api::{Request, DEFAULT_SOCKET};
use nodeplane_control::whatif::{self, live, traffic, Traffic, WhatifOptions};
use nodeplane_dataplane::worker::RemovedFlowAction;
use nodeplane_state::State;

use super::replay::{parse_input, parse_removed};
use super::CliResult;

/// Exit code when `--fail-on-change` is given and some flow changes.
const EXIT_CHANGED: u8 = 3;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("traffic").required(true).args(["inputs", "from_events", "live"])))]
pub struct WhatifArgs {
    /// The proposed state: a file or directory of YAML files.
    #[arg(long)]
    state: PathBuf,
    /// The current state (file or directory). Default: the running daemon's state, asked over
    /// `--socket` (what it really forwards with: identities allocated, the last good state).
    #[arg(long)]
    current: Option<PathBuf>,
    /// IFACE=FILE: a pcap/pcapng capture entering on interface IFACE (repeatable).
    #[arg(long = "input", value_parser = parse_input)]
    inputs: Vec<(String, PathBuf)>,
    /// Flow events (`nodeplane observe --json` lines, or `replay --events`): each flow's first
    /// packet is rebuilt and replayed.
    #[arg(long)]
    from_events: Option<PathBuf>,
    /// Record the running daemon's flow events for this many seconds, then judge them.
    #[arg(long, value_name = "SECONDS")]
    live: Option<f64>,
    /// The daemon's control socket (`--live`, and the current state without `--current`).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Keep the two replays' outputs (verdicts, pcaps) in this directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// `drop` or `rst`, as the daemon's `removed_flow_action`.
    #[arg(long, value_parser = parse_removed, default_value = "drop")]
    removed_flow_action: RemovedFlowAction,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Exit with code 3 when any flow changes (for scripts and CI gates).
    #[arg(long)]
    fail_on_change: bool,
}

fn load(path: &std::path::Path) -> Result<State, String> {
    nodeplane_state::load_path(path)
        .map_err(|e| format!("cannot load state {}: {e}", path.display()))
}

pub fn run(a: WhatifArgs) -> CliResult {
    let proposed = load(&a.state)?;
    let (current, current_name) = match &a.current {
        Some(p) => (load(p)?, p.display().to_string()),
        None => {
            let v = call(&a.socket, &Request::StateGet {}).map_err(|e| {
                format!("no --current given, and the daemon's state is not available: {e}")
            })?;
            let s: State = serde_json::from_value(v)
                .map_err(|e| format!("the daemon's state does not decode: {e}"))?;
            (s, format!("the daemon at {}", a.socket.display()))
        }
    };
    let traffic = if let Some(f) = &a.from_events {
        Traffic::Events(traffic::read_events(f)?)
    } else if let Some(secs) = a.live {
        if !secs.is_finite() || secs <= 0.0 {
            return Err(format!("--live {secs}: a number of seconds > 0").into());
        }
        eprintln!("recording the daemon's flow events for {secs} s ...");
        let (records, stats) = live::collect(&a.socket, Duration::from_secs_f64(secs))?;
        if stats.dropped > 0 || stats.lost > 0 {
            eprintln!(
                "warning: {} events dropped for this observer and {} lost on the workers: those flows are not judged",
                stats.dropped, stats.lost
            );
        }
        eprintln!("{} flow events recorded", records.len());
        Traffic::Events(records)
    } else {
        Traffic::Captures(a.inputs.clone())
    };
    let opts = WhatifOptions {
        current,
        proposed,
        traffic,
        removed_flow_action: a.removed_flow_action,
        work_dir: a.work_dir,
    };
    let report = whatif::run(&opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!(
            "{}",
            report.render(&current_name, &a.state.display().to_string())
        );
    }
    if a.fail_on_change && report.changed_flows > 0 {
        return Ok(ExitCode::from(EXIT_CHANGED));
    }
    Ok(ExitCode::SUCCESS)
}
