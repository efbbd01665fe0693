//! Runs bursts of SYNs of new connections through the pipeline for profiling with a
//! load-independent counter:
//! `valgrind --tool=callgrind target/release/examples/profile_new_connections N [SERVICES]`.
//! Run it with two N and divide the instruction difference by the packet difference to get
//! instructions per new connection without the setup. The frames are built before the timed
//! part of a real benchmark would start; here they are built up front, once, outside the loop.

use std::sync::Arc;

use nodeplane_bench::{client_frame, state, xorshift};
use nodeplane_dataplane::{Action, MaglevCache, Outcome, Packet, Pipeline, Tables, BURST};

fn main() {
    let bursts: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let services: u32 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let t = Arc::new(Tables::build(
        &state(services, 1 << 20),
        1,
        &mut MaglevCache::default(),
    ));
    let pc = t.iface_index("pod-client").expect("iface");
    let mut p = Pipeline::new(t);
    let mut rng = 7u64;
    // Every SYN on its own 5-tuple (sport × service), built before processing starts.
    let mut frames: Vec<Vec<u8>> = (0..bursts * BURST)
        .map(|i| {
            let svc = (xorshift(&mut rng) % u64::from(services)) as u32;
            client_frame(svc, 1024 + (i % 60_000) as u16, true)
        })
        .collect();
    let mut out = [Outcome::default(); BURST];
    let mut forwarded = 0;
    for chunk in frames.chunks_mut(BURST) {
        let mut it = chunk.iter_mut();
        let mut pkts: [Packet<'_>; BURST] = std::array::from_fn(|i| Packet {
            data: it.next().expect("frame").as_mut_slice(),
            iface: pc,
            ts: 1,
            tag: i as u64,
            parsed: None,
        });
        p.process_burst(&mut pkts, &mut out);
        forwarded += out
            .iter()
            .filter(|o| matches!(o.action, Action::Forward(_)))
            .count();
    }
    let c = p.counters();
    println!(
        "packets {} forwarded {forwarded} new flows {} dropped {}",
        c.packets, c.ct_new, c.dropped
    );
}
