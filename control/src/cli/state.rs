//! `nodeplane state`: check a state file or directory the way the daemon loads it.
//!
//! ```text
//! nodeplane state check PATH     validate; print a summary, or every problem (exit 1)
//! nodeplane state show PATH      validate, then print the merged state as YAML (or --json)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use nodeplane_state::{load_path, BackendState, State};

use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct StateArgs {
    #[command(subcommand)]
    command: StateCommand,
}

#[derive(Debug, clap::Subcommand)]
enum StateCommand {
    /// Validate a state file or directory: print a summary, or every problem and exit 1.
    Check {
        /// A YAML file, or a directory of *.yaml / *.yml files merged.
        path: PathBuf,
    },
    /// Validate, then print the merged state (with defaults filled in).
    Show {
        /// A YAML file, or a directory of *.yaml / *.yml files merged.
        path: PathBuf,
        /// JSON instead of YAML.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: StateArgs) -> CliResult {
    match args.command {
        StateCommand::Check { path } => match load_path(&path) {
            Ok(state) => {
                out(&format!("OK {}\n{}", path.display(), summary(&state)))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                // Printed here, not returned: the error already lists every problem, one per
                // line, and main would print its source chain a second time.
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        StateCommand::Show { path, json } => match load_path(&path) {
            Ok(state) => {
                let text = if json {
                    serde_json::to_string_pretty(&state)? + "\n"
                } else {
                    state.to_yaml_string()?
                };
                out(&text)?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

/// Writes to stdout; a closed pipe (`nodeplane state show x | head`) is not an error.
fn out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// What a valid state holds, in a few lines.
fn summary(s: &State) -> String {
    let name = if s.node.name.is_empty() {
        "(unnamed)"
    } else {
        &s.node.name
    };
    let policy_mode = match s.node.policy_mode {
        nodeplane_state::PolicyMode::Enforce => "enforce",
        nodeplane_state::PolicyMode::Audit => "audit",
        nodeplane_state::PolicyMode::AllowAll => "allow-all",
    };
    let frontends: usize = s.services.iter().map(|x| x.frontends.len()).sum();
    let node_ports: usize = s.services.iter().map(|x| x.node_ports.len()).sum();
    let backends: usize = s.services.iter().map(|x| x.backends.len()).sum();
    let not_active = s
        .services
        .iter()
        .flat_map(|x| &x.backends)
        .filter(|b| b.state != BackendState::Active)
        .count();
    let rules: usize = s
        .policies
        .iter()
        .map(|p| p.ingress.len() + p.egress.len())
        .sum();
    format!(
        "  node {name}: {} PodCIDRs, {} node IPs, policy mode {policy_mode}\n\
         \x20 {} interfaces, {} endpoints, {} ipcache entries\n\
         \x20 {} services: {frontends} frontends, {node_ports} node ports, {backends} backends \
         ({not_active} not active)\n\
         \x20 {} policies: {rules} rules\n\
         \x20 conntrack: {} entries per worker\n",
        s.node.pod_cidrs.len(),
        s.node.node_ips.len(),
        s.interfaces.len(),
        s.endpoints.len(),
        s.ipcache.len(),
        s.services.len(),
        s.policies.len(),
        s.conntrack.max_entries,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_the_example() {
        let s = nodeplane_state::example::state().unwrap();
        assert_eq!(
            summary(&s),
            "  node node-1: 2 PodCIDRs, 2 node IPs, policy mode enforce\n\
             \x20 4 interfaces, 3 endpoints, 2 ipcache entries\n\
             \x20 5 services: 5 frontends, 3 node ports, 12 backends (1 not active)\n\
             \x20 3 policies: 14 rules\n\
             \x20 conntrack: 262144 entries per worker\n"
        );
    }
}
