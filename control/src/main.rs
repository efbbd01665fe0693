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
    /// Run the daemon (`--config FILE`; `io: { afxdp: ... }` for the AF_XDP dataplane).
    Run(cli::run::RunArgs),
    /// Daemon status: state generation, rejections, source, policy mode, workers.
    Status(cli::status::StatusArgs),
    /// Services.
    Service(cli::service::ServiceArgs),
    /// Service backends.
    Backend(cli::backend::BackendArgs),
    /// Conntrack: list, count, flush.
    Ct(cli::ct::CtArgs),
    /// The ipcache (address → identity).
    Ipcache(cli::ipcache::IpcacheArgs),
    /// Workloads outside the cluster (VMs, bare metal) and their identities.
    External(cli::external::ExternalArgs),
    /// Security identities.
    Identity(cli::identity::IdentityArgs),
    /// Endpoint policies and the runtime policy mode.
    Policy(cli::policy::PolicyArgs),
    /// The path a packet would take, decided by the live pipeline.
    Explain(cli::explain::ExplainArgs),
    /// Flow events as they happen: new flows and drops, with verdicts and names.
    Observe(cli::observe::ObserveArgs),
    /// Remove the XDP program that stays attached while no daemon runs (its pinned links):
    /// for uninstalling, not for restarts.
    Detach(cli::detach::DetachArgs),
    /// Which flows a proposed state would change: recorded traffic replayed against the
    /// current and the proposed state.
    Whatif(cli::whatif::WhatifArgs),
    /// Record the frames the workers receive on one interface into a pcap (bounded).
    Capture(cli::capture::CaptureArgs),
    /// Several clusters: the mirror of remote clusters' exported keys into the local store.
    Mesh(cli::mesh::MeshArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Replay(a) => cli::replay::run(a),
        Command::State(a) => cli::state::run(a),
        Command::Bgp(a) => cli::bgp::run(a),
        Command::Run(a) => cli::run::run(a),
        Command::Status(a) => cli::status::run(a),
        Command::Service(a) => cli::service::run(a),
        Command::Backend(a) => cli::backend::run(a),
        Command::Ct(a) => cli::ct::run(a),
        Command::Ipcache(a) => cli::ipcache::run(a),
        Command::Identity(a) => cli::identity::run(a),
        Command::External(a) => cli::external::run(a),
        Command::Policy(a) => cli::policy::run(a),
        Command::Explain(a) => cli::explain::run(a),
        Command::Observe(a) => cli::observe::run(a),
        Command::Detach(a) => cli::detach::run(a),
        Command::Whatif(a) => cli::whatif::run(a),
        Command::Capture(a) => cli::capture::run(a),
        Command::Mesh(a) => cli::mesh::run(a),
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
