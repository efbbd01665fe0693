//! Memory per conntrack flow, measured from the outside: a counting allocator reports the heap
//! a pipeline holds, so the figure does not depend on how conntrack lays out its entries.
//!
//! `target/release/examples/profile_memory [FLOWS]` (default 1,000,000):
//! - `bytes_per_flow`: the heap of a pipeline with room for FLOWS flows minus that of one with
//!   room for 1,024, divided by the difference in flows. Entry, index share, free list and
//!   deadline, everything the table holds per flow.
//! - `rss_mb`: the process's resident memory (VmRSS) after FLOWS new connections went through
//!   the pipeline, each a SYN on its own 5-tuple, so every page of the table was touched.
//! - `explain_scratch_bytes`: the heap of `nodeplane explain`'s scratch pipeline for one
//!   packet, built fresh and built on an earlier one's buffers (`Pipeline::scratch`).

// The measurement is a counting global allocator, which is an `unsafe` trait to implement.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::net::{IpAddr, Ipv4Addr};

use nodeplane_bench::{client_frame, client_frame_from, state};
use nodeplane_dataplane::{MaglevCache, Outcome, Packet, Pipeline, Tables, BURST};

/// The system allocator, counting the bytes live on the heap.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `GlobalAlloc::alloc` is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `dealloc` and `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SERVICES: u32 = 10;
const FIRST_PORT: u32 = 1024;
const PORTS: u32 = 65_536 - FIRST_PORT;
/// Client addresses (10.244.0.10 + k), enough that every flow has its own (address, port):
/// flows that share one would share a reply tuple when their services pick one backend.
const CLIENT_IPS: u32 = 32;

fn client_ip(k: u32) -> [u8; 4] {
    [10, 244, 0, 10 + k as u8]
}

/// The heap held by a pipeline with room for `flows` flows (its tables excluded).
fn pipeline_heap(t: &Arc<Tables>) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    let p = Pipeline::new(t.clone());
    let held = LIVE.load(Ordering::Relaxed) - before;
    drop(p);
    held
}

fn tables(flows: u32) -> Arc<Tables> {
    let mut s = state(SERVICES, flows);
    if let Some(c) = s.endpoints.iter_mut().find(|e| e.name == "client") {
        c.ips = (0..CLIENT_IPS)
            .map(|k| IpAddr::V4(Ipv4Addr::from(client_ip(k))))
            .collect();
    }
    Arc::new(Tables::build(&s, 1, &mut MaglevCache::default()))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let flows: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    assert!(
        flows > 1024 && flows <= CLIENT_IPS * PORTS,
        "FLOWS must be in 1025..={}",
        CLIENT_IPS * PORTS
    );
    let small = pipeline_heap(&tables(1024));
    let t = tables(flows);
    let large = pipeline_heap(&t);
    let per_flow = (large - small) as f64 / f64::from(flows - 1024);

    let pc = t.iface_index("pod-client").expect("iface");
    let mut p = Pipeline::new(t);
    let mut out = [Outcome::default(); BURST];
    let mut bufs: Vec<Vec<u8>> = vec![client_frame(0, 1024, true); BURST];
    let mut sent = 0u32;
    while sent < flows {
        let n = (flows - sent).min(BURST as u32) as usize;
        for (k, buf) in bufs.iter_mut().take(n).enumerate() {
            let i = sent + k as u32;
            let port = (FIRST_PORT + i % PORTS) as u16;
            *buf = client_frame_from(client_ip(i / PORTS), i % SERVICES, port, true);
        }
        let mut it = bufs.iter_mut();
        let mut pkts: [Packet<'_>; BURST] = std::array::from_fn(|i| Packet {
            data: it.next().expect("buf").as_mut_slice(),
            iface: pc,
            ts: 1,
            tag: i as u64,
            parsed: None,
        });
        p.process_burst(&mut pkts[..n], &mut out[..n]);
        sent += n as u32;
    }
    let c = p.counters();
    assert_eq!(c.dropped, 0, "every flow must be admitted: {:?}", c.drops);
    println!(
        "flows {flows} new {} dropped {} bytes_per_flow {per_flow:.1} rss_mb {:.1}",
        c.ct_new,
        c.dropped,
        rss_kib() as f64 / 1024.0
    );
    let (fresh, reused) = explain_heap(&p, pc);
    println!("explain_scratch_bytes fresh {fresh} reused {reused}");
}

/// The heap a `nodeplane explain` scratch pipeline holds while it decides one packet: built
/// fresh, and built on the buffers of an earlier one (what a worker does from its second
/// explain on).
fn explain_heap(p: &Pipeline, iface: u16) -> (usize, usize) {
    let mut frame = client_frame(0, 1024, true);
    let mut held = |reuse| {
        let before = LIVE.load(Ordering::Relaxed);
        let mut s = p.scratch(&[], 1, reuse);
        s.process_one(&mut frame, iface, 1);
        let held = LIVE.load(Ordering::Relaxed) - before;
        (held, s.into_buffers())
    };
    let (fresh, buffers) = held(None);
    let (reused, _) = held(Some(buffers));
    (fresh, reused)
}
