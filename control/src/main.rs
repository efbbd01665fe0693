//! `nodeplane`: the daemon and its CLI. Each subcommand lives in `cli/<name>.rs`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Debug, Parser)]
#[command(
    name = "nodeplane",
    version,
    about = "AF_XDP dataplane for Kubernetes-style nodes"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the packet pipeline over pcap files instead of AF_XDP sockets.
    Replay(cli::replay::ReplayArgs),
    /// Check or show a state file or directory.
    State(cli::state::StateArgs),
    /// The BGP speaker: run it, or show its neighbours.
    Bgp(cli::bgp::BgpArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Replay(a) => cli::replay::run(a),
        Command::State(a) => cli::state::run(a),
        Command::Bgp(a) => cli::bgp::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nodeplane: {e}");
            let mut source = std::error::Error::source(&*e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
