//! `nodeplane status`: state generation, last rejection, source health, policy mode, workers.

use std::process::ExitCode;

use nodeplane_control::api::{BgpSummary, Request, Status};
use nodeplane_dataplane::worker::WorkerStats;

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
    if s.source_attempts > 0 {
        println!(
            "             {} attempts to reach it, {} full syncs",
            s.source_attempts, s.source_syncs
        );
    }
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
    if let Some(b) = &s.bgp {
        print_bgp(b);
    }
    for h in &s.health_checks {
        println!(
            "healthcheck: port {} for {}: {} local endpoint(s), {}",
            h.port,
            h.service,
            h.local_endpoints,
            match (
                h.listening,
                h.local_endpoints > 0 && s.dead_workers.is_empty()
            ) {
                (false, _) => "NOT LISTENING (port in use? tried again at the next publication)",
                (true, true) => "answers 200",
                (true, false) => "answers 503",
            }
        );
    }
    for d in &s.dead_workers {
        println!(
            "DEAD worker: {} ({}): its queues are not served; restart nodeplane",
            d.worker, d.reason
        );
    }
    println!(
        "observers:   {} (flow events: `nodeplane observe`)",
        s.event_observers
    );
    if let Some(r) = &s.conntrack_restore {
        match &r.error {
            Some(e) => println!("ct restore:  IGNORED {} ({e}); started empty", r.path),
            None => println!(
                "ct restore:  {} {}/{} flows, {} affinity entries from {} (saved {:.1} s before the start by {})",
                r.result,
                r.flows_restored,
                r.flows_saved,
                r.affinity_restored,
                r.path,
                r.age_s.unwrap_or(0.0),
                r.writer.as_deref().unwrap_or("?")
            ),
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
                    format!("{}/{}", w.events.emitted, w.events.lost),
                    w.drops
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .chain((w.worker_panics > 0).then(|| {
                            format!("PANICS={} (frames {})", w.worker_panics, w.panic_dropped)
                        }))
                        .chain((w.rejects_sent + w.rejects_suppressed > 0).then(|| {
                            format!(
                                "rejects-sent={} rejects-suppressed={}",
                                w.rejects_sent, w.rejects_suppressed
                            )
                        }))
                        .chain((w.mtu_icmp_sent + w.mtu_icmp_suppressed > 0).then(|| {
                            format!(
                                "mtu-icmp-sent={} mtu-icmp-suppressed={}",
                                w.mtu_icmp_sent, w.mtu_icmp_suppressed
                            )
                        }))
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
                    "EVENTS(sent/lost)",
                    "DROPS"
                ],
                &rows
            )
        );
    }
    if !s.mtus.is_empty() {
        let m: Vec<String> = s
            .mtus
            .iter()
            .map(|m| match m.mtu {
                Some(v) => format!("{} {v} ({})", m.iface, m.source),
                None => format!("{} - (unknown: not checked)", m.iface),
            })
            .collect();
        println!("mtu:         {}", m.join(", "));
    }
    if let Some(io) = &s.io {
        print_io(io, &s.workers);
    }
    Ok(if s.state == "ok" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// The BGP speaker and one row per session (the details: `nodeplane bgp status`).
fn print_bgp(b: &BgpSummary) {
    let speaker = match &b.error {
        Some(e) if b.speaker != "running" => format!("{} ({e})", b.speaker.to_uppercase()),
        _ => b.speaker.clone(),
    };
    println!(
        "bgp:         {speaker}; AS {}, {} route(s) to announce",
        b.local_as, b.routes
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let rows: Vec<Vec<String>> = b
        .neighbors
        .iter()
        .map(|n| {
            vec![
                format!("  {}", n.name),
                n.address.to_string(),
                n.remote_as.to_string(),
                format!("{:?}", n.state),
                n.established_since_unix_ms
                    .map(|t| {
                        let s = now_ms.saturating_sub(t) / 1000;
                        format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
                    })
                    .unwrap_or_else(|| "-".into()),
                n.announced.to_string(),
                n.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "  NEIGHBOR",
                "ADDRESS",
                "AS",
                "STATE",
                "UP",
                "ANNOUNCED",
                "LAST ERROR"
            ],
            &rows
        )
    );
}

/// The packet I/O: XDP attachment and counters, the uplink's neighbour, and per AF_XDP socket
/// the ring counters and the kernel's (`XDP_STATISTICS`: frames lost before the pipeline).
fn print_io(io: &nodeplane_control::runtime::backend::IoStatus, workers: &[WorkerStats]) {
    println!();
    println!("io:          {}", io.kind);
    if !io.attached.is_empty() {
        println!("xdp:         {}", io.attached.join(", "));
        let c: Vec<String> = io
            .xdp
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("xdp counts:  {}", c.join(" "));
    }
    if let Some(fp) = &io.fast_path {
        let c: Vec<String> = fp
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("fast path:   tc; {}", c.join(" "));
        for w in workers {
            if let Some(o) = w.io.afxdp.as_ref().and_then(|a| a.offload) {
                println!(
                    "  worker {}: offered {} (again {}), full {}, errors {}, withdrawn {}, \
                     refreshed {}, expired {}, cleared {}, slow path rx {} (unknown {})",
                    w.worker,
                    o.offered,
                    o.reoffered,
                    o.offload_full,
                    o.offload_errors,
                    o.withdrawn,
                    o.refreshed,
                    o.expired,
                    o.cleared,
                    o.slow_path_rx,
                    o.slow_path_unknown
                );
            }
        }
    }
    if !io.down.is_empty() {
        println!(
            "DOWN:        {} (gone: sockets out of service, frames to it dropped iface-down)",
            io.down.join(", ")
        );
    }
    let l = &io.links;
    if l.gone + l.reattached + l.reattach_failed > 0 {
        println!(
            "interfaces:  {} gone, {} re-attached, {} re-attach attempts failed{}",
            l.gone,
            l.reattached,
            l.reattach_failed,
            l.last_attach_us
                .map(|a| format!(
                    "; last: XDP attached {a} µs after the link notification, sockets ready after {}",
                    l.last_ready_us
                        .map(|r| format!("{r} µs"))
                        .unwrap_or_else(|| "-".into())
                ))
                .unwrap_or_default()
        );
    }
    if let Some(n) = &io.neighbour {
        println!(
            "uplink:      {} gateway {} -> {} (from {}; kernel state {:#x}, {} lookups, {} triggers, {} unresolved)",
            opt(&n.uplink),
            n.gateway.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
            opt(&n.mac),
            n.source,
            n.kernel_state,
            n.lookups,
            n.triggers,
            n.unresolved
        );
    }
    let mut rows = Vec::new();
    for w in workers {
        let Some(a) = &w.io.afxdp else { continue };
        for sk in &a.sockets {
            let k = sk.kernel.unwrap_or_default();
            rows.push(vec![
                w.worker.to_string(),
                format!(
                    "{}/{}{}",
                    sk.iface,
                    sk.queue,
                    if sk.down { " DOWN" } else { "" }
                ),
                sk.rx.to_string(),
                sk.tx.to_string(),
                sk.tx_ring_full.to_string(),
                sk.fill_starved.to_string(),
                if sk.kernel.is_some() {
                    format!(
                        "{}/{}/{}/{}",
                        k.rx_dropped,
                        k.rx_ring_full,
                        k.rx_fill_ring_empty_descs,
                        k.tx_invalid_descs
                    )
                } else {
                    "-".into()
                },
            ]);
        }
        let c = &a.counters;
        if c.handed_off
            + c.handed_in
            + c.handoff_dropped
            + c.pass_dropped
            + c.tx_copy_failed
            + c.iface_down
            > 0
        {
            println!(
                "worker {}:    handed off {} (chains {}) in {} dropped {}; pass_dropped {}, tx_copy_failed {}, tx_no_socket {}, iface_down {}",
                w.worker,
                c.handed_off,
                c.handoff_chains,
                c.handed_in,
                c.handoff_dropped,
                c.pass_dropped,
                c.tx_copy_failed,
                c.tx_no_socket,
                c.iface_down
            );
        }
        // Syscall errors of the rings (none expected): shown only when there are some.
        let kicks: (u64, u64) = a.sockets.iter().fold((0, 0), |(t, f), s| {
            (t + s.tx_kick_errors, f + s.fill_kick_errors)
        });
        if c.poll_errors + kicks.0 + kicks.1 > 0 {
            println!(
                "worker {}:    ERRORS poll {}, tx kick {}, fill kick {}",
                w.worker, c.poll_errors, kicks.0, kicks.1
            );
        }
    }
    if !rows.is_empty() {
        println!();
        print!(
            "{}",
            table(
                &[
                    "WORKER",
                    "SOCKET",
                    "RX",
                    "TX",
                    "TX_RING_FULL",
                    "FILL_STARVED",
                    "KERNEL rx_dropped/rx_ring_full/fill_empty/tx_invalid"
                ],
                &rows
            )
        );
    }
}
