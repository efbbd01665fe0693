//! Memory per conntrack flow, measured: builds a conntrack table of `FLOWS` entries (default
//! 1 048 576), fills it with that many IPv4 TCP flows through a ClusterIP-style NAT, and prints
//! the process's resident memory (`VmRSS` from /proc/self/status) before the table, after
//! creating it (every page touched up front: the slab, the index, the timer array) and after
//! the fill, with the entry's size and the bytes per flow.
//!
//! `cargo run --release -p nodeplane-bench --example ct_memory [FLOWS]`

use nodeplane_dataplane::conntrack::{Conntrack, Entry, Nat, NewFlow};
use nodeplane_dataplane::tables::CtConfig;
use nodeplane_dataplane::{Addr, FlowKey, PolicyVerdict};

/// Resident set size in bytes (`VmRSS`), or 0 where /proc is missing.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let flows: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1 << 20);
    let cfg = CtConfig::from_state(&nodeplane_state::ConntrackSettings {
        max_entries: flows,
        ..Default::default()
    });
    let before = rss();
    let mut ct = Conntrack::new(&cfg);
    let empty = rss();
    let vip = Addr::v4([10, 96, 0, 10]);
    let mut created = 0u32;
    for i in 0..flows {
        let src = Addr::v4([10, 244, (i >> 16) as u8, (i >> 8) as u8]);
        let sport = 1024 + (i & 0xff) as u16 * 16 + (i >> 24) as u16;
        let backend = Addr::v4([10, 244, 1, 20 + (i % 8) as u8]);
        let orig = FlowKey {
            src,
            dst: vip,
            sport,
            dport: 80,
            proto: 6,
        };
        let f = NewFlow {
            orig,
            reply: FlowKey {
                src: backend,
                dst: src,
                sport: 8080,
                dport: sport,
                proto: 6,
            },
            nat: Some(Nat {
                vip,
                vip_port: 80,
                backend,
                backend_port: 8080,
                service: 0,
            }),
            src_identity: 1000,
            dst_identity: 2000,
            policy: PolicyVerdict::None,
            generation: 1,
        };
        if ct.create(&f, 0x02, 60, 1).is_ok() {
            created += 1;
        }
    }
    let full = rss();
    let per = |b: u64| b as f64 / f64::from(flows);
    println!(
        "entry {} bytes; flows {created} of {flows}; RSS before {:.1} MiB, empty table {:.1} MiB, full {:.1} MiB",
        std::mem::size_of::<Entry>(),
        before as f64 / 1048576.0,
        empty as f64 / 1048576.0,
        full as f64 / 1048576.0,
    );
    println!(
        "per flow (table's RSS / capacity): {:.1} bytes; whole process at {flows} flows: {:.1} MB",
        per(full.saturating_sub(before)),
        full as f64 / 1e6,
    );
    assert_eq!(ct.len(), created as usize);
}
