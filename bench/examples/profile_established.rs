//! Runs established-flow bursts through the pipeline for profiling with a load-independent
//! counter: `valgrind --tool=callgrind target/release/examples/profile_established N`.
//! Run it with two N and divide the instruction difference by the packet difference to get
//! instructions per packet without the setup.
//!
//! Arguments: `BURSTS [SERVICES [FLOWS]]` (defaults 1000, 10, 1024). With FLOWS = 10000 the flows'
//! state outgrows the L2 cache as in the criterion benchmark; add `--cache-sim=yes` to
//! callgrind to count the cache misses.

use std::sync::Arc;

use nodeplane_bench::{client_frame, state, xorshift};
use nodeplane_dataplane::{MaglevCache, Outcome, Packet, Pipeline, Tables, BURST};

fn main() {
    let bursts: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let services: u32 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let flows: u16 = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let t = Arc::new(Tables::build(
        &state(services, 65_536),
        1,
        &mut MaglevCache::default(),
    ));
    let pc = t.iface_index("pod-client").expect("iface");
    let mut p = Pipeline::new(t);
    let mut rng = 1u64;
    let mut acks = Vec::new();
    for i in 0..flows {
        let svc = (xorshift(&mut rng) % u64::from(services)) as u32;
        let mut syn = client_frame(svc, 10_000 + i, true);
        p.process_one(&mut syn, pc, 1);
        acks.push(client_frame(svc, 10_000 + i, false));
    }
    let mut bufs: Vec<Vec<u8>> = acks[..BURST].to_vec();
    let mut out = [Outcome::default(); BURST];
    for b in 0..bursts {
        for (i, buf) in bufs.iter_mut().enumerate() {
            buf.copy_from_slice(&acks[(b * BURST + i) % acks.len()]);
        }
        let mut it = bufs.iter_mut();
        let mut pkts: [Packet<'_>; BURST] = std::array::from_fn(|i| Packet {
            data: it.next().expect("buf").as_mut_slice(),
            iface: pc,
            ts: 2,
            tag: i as u64,
            parsed: None,
        });
        p.process_burst(&mut pkts, &mut out);
    }
    let c = p.counters();
    println!(
        "packets {} forwarded {} dropped {}",
        c.packets, c.forwarded, c.dropped
    );
}
