//! `nodeplane policy get ENDPOINT` and `nodeplane policy mode enforce|audit|allow-all|state`.

use std::process::ExitCode;

use nodeplane_control::api::{PolicyModeSet, PolicyView, Request};
use nodeplane_state::Rule;

use super::client::{ask, table, Common};
use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    cmd: PolicyCmd,
}

#[derive(Debug, clap::Subcommand)]
enum PolicyCmd {
    /// An endpoint's ingress and egress rules (indexes are what `explain` names).
    Get {
        endpoint: String,
        #[command(flatten)]
        common: Common,
    },
    /// The emergency switch: enforce, audit, allow-all; `state` drops the override. Takes
    /// effect within one burst and needs no state store.
    Mode {
        #[arg(value_parser = ["enforce", "audit", "allow-all", "state"])]
        mode: String,
        #[command(flatten)]
        common: Common,
    },
}

pub fn rule_text(r: &Rule) -> (String, String, String, String) {
    let mut peers: Vec<String> = r.identities.iter().map(|i| format!("id:{i}")).collect();
    peers.extend(r.cidrs.iter().map(|c| c.to_string()));
    let peers = if peers.is_empty() {
        "any".into()
    } else {
        peers.join(",")
    };
    let ports = if r.ports.is_empty() {
        "any".into()
    } else {
        r.ports
            .iter()
            .map(|p| {
                if p.end() != p.port {
                    format!("{}-{}", p.port, p.end())
                } else {
                    p.port.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    (
        format!("{:?}", r.action).to_lowercase(),
        peers,
        format!("{:?}", r.protocol).to_lowercase(),
        ports,
    )
}

pub fn run(args: PolicyArgs) -> CliResult {
    match args.cmd {
        PolicyCmd::Get { endpoint, common } => {
            let Some(p) = ask::<PolicyView>(&common, &Request::PolicyGet { endpoint })? else {
                return Ok(ExitCode::SUCCESS);
            };
            println!(
                "endpoint {} (identity {}, {}), policy mode {}",
                p.endpoint,
                p.identity,
                p.ips.join(", "),
                p.mode.effective
            );
            let mut rows = Vec::new();
            for (dir, rules, default) in [
                ("ingress", &p.ingress, &p.ingress_default),
                ("egress", &p.egress, &p.egress_default),
            ] {
                for (i, r) in rules.iter().enumerate() {
                    let (a, peers, proto, ports) = rule_text(r);
                    rows.push(vec![dir.into(), i.to_string(), a, peers, proto, ports]);
                }
                rows.push(vec![
                    dir.into(),
                    "-".into(),
                    default.clone(),
                    "any".into(),
                    "any".into(),
                    "any".into(),
                ]);
            }
            print!(
                "{}",
                table(
                    &["DIRECTION", "RULE", "ACTION", "PEERS", "PROTO", "PORTS"],
                    &rows
                )
            );
        }
        PolicyCmd::Mode { mode, common } => {
            if let Some(m) = ask::<PolicyModeSet>(&common, &Request::PolicyMode { mode })? {
                println!(
                    "policy mode: {} (override: {}, state: {})",
                    m.mode.effective,
                    m.mode.r#override.as_deref().unwrap_or("none"),
                    m.mode.state
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
