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

/// The TCP source port and checksum in the frame (Ethernet, 20-byte IPv4 header, TCP).
const SPORT: usize = 14 + 20;
const TCP_CSUM: usize = 14 + 20 + 16;

/// Writes a flow's own bytes into its service's frame.
#[inline(always)]
fn patch(frame: &mut [u8], own: [u8; 4]) {
    // One bounds check: the 18 bytes from the port to the checksum as an array.
    if let Some(f) = frame
        .get_mut(SPORT..TCP_CSUM + 2)
        .and_then(|f| <&mut [u8; TCP_CSUM + 2 - SPORT]>::try_from(f).ok())
    {
        f[..2].copy_from_slice(&own[..2]);
        f[TCP_CSUM - SPORT..].copy_from_slice(&own[2..]);
    }
}

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
    let mut rng = 1u64;
    // The frames as a worker receives them: the kernel's copy has just written each into the
    // UMEM, so the pipeline reads it from cache. The harness writes each frame of a burst into
    // one of 64 buffers before the burst, like that copy, from a compact source: its service's
    // template (10 to 100k services, shared by its flows) and the 4 bytes that are the flow's
    // own (source port, TCP checksum). Copying 10k whole frames from 10k separate allocations
    // instead made the harness miss the L2 cache ~1.9 times per packet on data a worker has
    // in cache (bench/RESULTS.md, `### A one-cache-line hot flow record`).
    let mut templates: Vec<Option<Vec<u8>>> = vec![None; services as usize];
    let mut patches: Vec<(u32, [u8; 4])> = Vec::new();
    for i in 0..flows {
        let svc = (xorshift(&mut rng) % u64::from(services)) as u32;
        let mut syn = client_frame(svc, 10_000 + i, true);
        p.process_one(&mut syn, pc, 1);
        let mut ack = client_frame_sized(svc, 10_000 + i, false, payload);
        if partial {
            make_partial(&mut ack);
        }
        let own = [ack[SPORT], ack[SPORT + 1], ack[TCP_CSUM], ack[TCP_CSUM + 1]];
        let t = templates[svc as usize].get_or_insert_with(|| ack.clone());
        let mut rebuilt = t.clone();
        patch(&mut rebuilt, own);
        assert_eq!(
            rebuilt, ack,
            "a flow's frame is its template and its own 4 bytes"
        );
        patches.push((svc, own));
    }
    let templates: Vec<Vec<u8>> = templates
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let mut bufs: Vec<Vec<u8>> = (0..BURST)
        .map(|i| templates[patches[i % patches.len()].0 as usize].clone())
        .collect();
    let mut out = [Outcome::default(); BURST];
    for b in 0..bursts {
        for (i, buf) in bufs.iter_mut().enumerate() {
            let (svc, own) = patches[(b * BURST + i) % patches.len()];
            buf.copy_from_slice(&templates[svc as usize]);
            patch(buf, own);
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
