//! Runs established-flow bursts through the pipeline for profiling with a load-independent
//! counter: `valgrind --tool=callgrind target/release/examples/profile_established N`.
//! Run it with two N and divide the instruction difference by the packet difference to get
//! instructions per packet without the setup.
//!
//! Arguments: `BURSTS [SERVICES [FLOWS [PAYLOAD [partial]]]]` (defaults 1000, 10, 1024, 10):
//! PAYLOAD bytes of data per established packet; `partial` sends them with partial checksums
//! (CHECKSUM_PARTIAL, as pods at default offloads do), which the pipeline completes. With FLOWS = 10000 the flows'
//! state outgrows the L2 cache as in the criterion benchmark; add `--cache-sim=yes` to
//! callgrind to count the cache misses.

use std::sync::Arc;

use nodeplane_bench::{client_frame, client_frame_sized, make_partial, state, xorshift};
use nodeplane_dataplane::{MaglevCache, Outcome, Packet, Pipeline, Tables, BURST};

/// Bytes of each frame the harness restores per burst: the headers the pipeline rewrites
/// (Ethernet, IPv4 and TCP are 54 bytes; nothing past them is rewritten).
const RESTORE: usize = 64;

/// A frame's first [`RESTORE`] bytes in a cache line of their own.
#[repr(align(64))]
struct Head([u8; RESTORE]);

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
    let payload: usize = std::env::args()
        .nth(4)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let partial = std::env::args().nth(5).as_deref() == Some("partial");
    let t = Arc::new(Tables::build(
        &state(services, 65_536),
        1,
        &mut MaglevCache::default(),
    ));
    let pc = t.iface_index("pod-client").expect("iface");
    let mut p = Pipeline::new(t);
    // As a worker whose flow events nobody observes (the default of a running node).
    p.set_record_tuples(false);
    let mut rng = 1u64;
    let mut acks = Vec::new();
    for i in 0..flows {
        let svc = (xorshift(&mut rng) % u64::from(services)) as u32;
        let mut syn = client_frame(svc, 10_000 + i, true);
        p.process_one(&mut syn, pc, 1);
        let mut ack = client_frame_sized(svc, 10_000 + i, false, payload);
        if partial {
            make_partial(&mut ack);
        }
        acks.push(ack);
    }
    // Every frame has one length (one payload size, the payload identical).
    assert!(acks.iter().all(|a| a.len() == acks[0].len()));
    // The frames' first 64 bytes, one cache line each, contiguous: what the harness restores.
    let heads: Vec<Head> = acks
        .iter()
        .filter_map(|a| a.first_chunk().map(|h| Head(*h)))
        .collect();
    let mut bufs: Vec<Vec<u8>> = acks[..BURST].to_vec();
    let mut out = [Outcome::default(); BURST];
    let mut next = 0;
    for _ in 0..bursts {
        // Restore the frames (the pipeline rewrote their addresses, ports, MACs, TTL and
        // checksums, all in the first 54 bytes): a 64-byte copy from one cache line per frame,
        // not a `memcpy` call of the whole frame from its own allocation. A real worker copies
        // nothing here (its frames arrive in the UMEM); this keeps the harness's share of the
        // figure small (bench/RESULTS.md, `## Fast path (issue 11)`).
        for buf in bufs.iter_mut() {
            match (buf.first_chunk_mut::<RESTORE>(), heads.get(next)) {
                (Some(dst), Some(src)) => *dst = src.0,
                _ => buf.copy_from_slice(&acks[next]),
            }
            next += 1;
            if next == acks.len() {
                next = 0;
            }
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
        "packets {} forwarded {} dropped {} checksums completed {}",
        c.packets, c.forwarded, c.dropped, c.csum_completed
    );
}
