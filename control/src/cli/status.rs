//! `nodeplane status`: state generation, last rejection, source health, policy mode, workers.

use std::process::ExitCode;

use nodeplane_control::api::{Request, Status};

use super::client::{ask, opt, table, Common};
use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    common: Common,
}

pub fn run(args: StatusArgs) -> CliResult {
    let Some(s) = ask::<Status>(&args.common, &Request::Status {})? else {
        return Ok(ExitCode::SUCCESS);
    };
    println!("node:        {}", s.node);
    println!(
        "state:       {} (generation {}, from {}, {} publications, compile+publish {} ms)",
        s.state,
        s.generation,
        opt(&s.state_origin),
        s.publications,
        s.last_publish_ms
            .map(|m| format!("{m:.1}"))
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "source:      {} ({}{})",
        s.source,
        if s.source_connected {
            "connected"
        } else {
            "DISCONNECTED"
        },
        if s.source_detail.is_empty() {
            String::new()
        } else {
            format!(": {}", s.source_detail)
        }
    );
    println!(
        "policy mode: {}{}",
        s.policy_mode.effective,
        match &s.policy_mode.r#override {
            Some(o) => format!(
                " (operator override {o}; state says {})",
                s.policy_mode.state
            ),
            None => " (from state)".into(),
        }
    );
    println!(
        "tables:      {} services, {} endpoints, {} ipcache entries; removed flows: {}",
        s.services, s.endpoints, s.ipcache_entries, s.removed_flow_action
    );
    if let Some(r) = &s.last_rejection {
        println!("rejections:  {} (last from {}):", s.rejections, r.origin);
        for l in r.error.lines() {
            println!("  {l}");
        }
    }
    if !s.workers.is_empty() {
        let rows: Vec<Vec<String>> = s
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.worker.to_string(),
                    w.generation.to_string(),
                    w.packets.to_string(),
                    w.forwarded.to_string(),
                    w.passed.to_string(),
                    w.dropped.to_string(),
                    format!("{}/{}", w.ct_entries, w.ct_capacity),
                    w.drops
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                ]
            })
            .collect();
        println!();
        print!(
            "{}",
            table(
                &[
                    "WORKER",
                    "GEN",
                    "PACKETS",
                    "FORWARDED",
                    "PASSED",
                    "DROPPED",
                    "CT",
                    "DROPS"
                ],
                &rows
            )
        );
    }
    Ok(if s.state == "ok" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
