//! `nodeplane replay`: see [`nodeplane_control::replay`].

use std::path::PathBuf;
use std::process::ExitCode;

use nodeplane_control::replay::{self, ReplayOptions};
use nodeplane_dataplane::worker::RemovedFlowAction;

use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// State file or directory of YAML files.
    #[arg(long)]
    state: PathBuf,
    /// IFACE=FILE: a pcap/pcapng capture entering on interface IFACE (repeatable).
    #[arg(long = "input", value_parser = parse_input, required = true)]
    inputs: Vec<(String, PathBuf)>,
    /// Directory for `<egress>.pcap` files and `verdicts.jsonl`.
    #[arg(long)]
    output_dir: PathBuf,
    /// SECONDS=STATE: switch to STATE when the capture clock is SECONDS past its first packet.
    #[arg(long = "state-at", value_parser = parse_state_at)]
    state_at: Vec<(f64, PathBuf)>,
    /// Write the flow events (the records `nodeplane observe --json` prints) to this file.
    #[arg(long)]
    events: Option<PathBuf>,
    /// What to do with a segment of a flow whose backend was removed: `drop`, or `rst` (drop
    /// and answer TCP with a reset), as the daemon's `removed_flow_action`.
    #[arg(long, value_parser = parse_removed, default_value = "drop")]
    removed_flow_action: RemovedFlowAction,
    /// Print the summary as JSON on stdout as well.
    #[arg(long)]
    json: bool,
}

pub(super) fn parse_input(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((i, f)) if !i.is_empty() && !f.is_empty() => Ok((i.to_string(), PathBuf::from(f))),
        _ => Err(format!("expected IFACE=FILE, got {s:?}")),
    }
}

pub(super) fn parse_removed(s: &str) -> Result<RemovedFlowAction, String> {
    match s {
        "drop" => Ok(RemovedFlowAction::Drop),
        "rst" => Ok(RemovedFlowAction::Rst),
        _ => Err(format!("expected drop or rst, got {s:?}")),
    }
}

fn parse_state_at(s: &str) -> Result<(f64, PathBuf), String> {
    let (secs, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected SECONDS=STATE, got {s:?}"))?;
    let secs: f64 = secs
        .parse()
        .map_err(|_| format!("{secs:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{secs} is not a number of seconds >= 0"));
    }
    Ok((secs, PathBuf::from(path)))
}

pub fn run(args: ReplayArgs) -> CliResult {
    let opts = ReplayOptions {
        state: args.state,
        inputs: args.inputs,
        output_dir: args.output_dir,
        state_at: args.state_at,
        events: args.events,
        removed_flow_action: args.removed_flow_action,
    };
    let summary = replay::run(&opts)?;
    eprint!("{}", summary.render());
    if args.json {
        println!("{}", summary.to_json());
    }
    Ok(ExitCode::SUCCESS)
}
