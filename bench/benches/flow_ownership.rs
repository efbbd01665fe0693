//! Flow ownership with two workers (issue 3, item 3; DESIGN.md §1): a flow and its reply must
//! meet the same conntrack state. Two designs process the same established-flow traffic on two
//! threads, pinned to the machine's two cores:
//!
//! ```text
//!   (a) hand-off            rx ─ owner_hash ─ mine ──────────────> Pipeline[me] (no lock)
//!                                   └ other: copy into a pooled 2 KiB buffer ─> ArrayQueue[owner]
//!   (b) shared table        rx ─────────────> lock ─ Pipeline (one conntrack) ─ unlock
//!       sharded table       rx ─ owner_hash ─> lock shard[hash] ─ Pipeline[shard] ─ unlock
//!   (c) baseline            rx (every frame already at its owner) ─> Pipeline[me] (no lock)
//! ```
//!
//! Traffic: ACKs of 10 000 established flows (client → ClusterIP, DNAT), 64 frames per burst per
//! thread. Thread `t` receives the flows `i` with `i % 2 == t`, independently of their owner, as
//! veth's per-packet queue choice does, so about half of the frames land on the wrong worker.
//! The baseline threads receive exactly the flows they own.
//!
//! (a) hand-off, with the real `frame_owner_hash`/`owner_of` of `runtime::owner`:
//! - `handoff/all_local`: every frame received by its owner: the owner parse and nothing else.
//! - `handoff/per_frame_half_wrong`: the runtime's first design (restated here; replaced): one
//!   queue operation per frame (pooled 2 KiB buffer, `ArrayQueue` per destination). Symmetric
//!   offered load, as every other variant: each worker receives a full burst per turn, hands
//!   off the wrong half, and processes its own frames together with handed-in ones (≤ 64 per
//!   `process_burst`) until its queue is worked off. A full queue or an empty pool makes the
//!   sender wait (working off its own queue meanwhile); `stalls` counts the waits.
//! - `handoff/per_frame_overload`: the same with the runtime's admission rule (handed-in
//!   frames take at most half a burst, the rest of the burst is received) and its drops, both
//!   workers receiving as fast as they can; ns per *processed* packet.
//! - `handoff/batched_half_wrong`, `handoff/batched_overload`: **the runtime's code**
//!   (`runtime::handoff::HandoffPort`): each turn's frames for the peer travel as one batch
//!   (one queue push and pop per batch). Symmetric load as above, and the runtime's admission
//!   under overload; a full queue drops (counted, as in the runtime); ns per processed packet.
//!
//! The shared table has no implementation in the tree: the pipeline owns its conntrack, so (b)
//! puts whole pipelines behind `Mutex`es — one (lock per burst or per packet), or 16 shards
//! chosen by the same owner hash (each shard a pipeline holding its flows: a sharded conntrack
//! without rewriting the pipeline). Per packet goes through `process_one`, which also runs the
//! pipeline's per-call GC step (64 deadline slots); `baseline/local_per_packet` measures that
//! API cost without any lock, so the lock's own cost is the difference.
//!
//! One iteration = one 64-frame burst received by each thread = 128 packets; criterion's
//! throughput is packets/s over both threads, and the table printed at the end gives ns/packet
//! (median and best of the measured samples, wall clock from the first worker's start to the
//! last one's end) and the ratio to `baseline/local_burst` of the same run.
//!
//! Run: `cargo bench -p nodeplane-bench --bench flow_ownership` (~50 s; figures go to
//! `bench/RESULTS.md`, "Flow ownership: hand-off vs shared table").

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use crossbeam::queue::ArrayQueue;
use nodeplane_bench::{client_frame, state, xorshift};
use nodeplane_dataplane::handoff::{Handoff as BatchHandoff, HandoffPort};
use nodeplane_dataplane::owner::{frame_owner, frame_owner_hash, owner_of, FragOwners, OwnerIndex};
use nodeplane_dataplane::parse;
use nodeplane_dataplane::tables::IfIndex;
use nodeplane_dataplane::{Action, MaglevCache, Outcome, Packet, Pipeline, Tables, BURST};

const FLOWS: usize = 10_000;
const SERVICES: u32 = 100;
const WORKERS: usize = 2;
const SHARDS: usize = 16;
/// Conntrack capacity of a worker's (or the shared) pipeline, and of each shard.
const CT: u32 = 32_768;
const CT_SHARD: u32 = 4_096;
/// The runtime's defaults (`io.afxdp.handoff_depth`, `HANDOFF_FRAME`).
const HANDOFF_DEPTH: usize = 1024;
const HANDOFF_FRAME: usize = 2048;
const TS: u64 = 2;
const SAMPLES: usize = 20;

/// Per-call ns/packet figures of each benchmark, for the ratio table (criterion calls the
/// routine once per sample after its warm-up calls: the last `SAMPLES` are the measurement).
static FIGURES: Mutex<Vec<(String, Vec<f64>)>> = Mutex::new(Vec::new());

fn record(name: &str, elapsed: Duration, packets: u64) {
    let ns = elapsed.as_nanos() as f64 / packets.max(1) as f64;
    let mut f = FIGURES.lock().expect("figures");
    match f.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => v.push(ns),
        None => f.push((name.to_string(), vec![ns])),
    }
}

/// One thread's receive side: frames restored from templates into 64 buffers, cyclically (the
/// pipeline rewrites frames in place; restoring stands for the AF_XDP copy into the UMEM and
/// costs the same in every variant).
struct Rx {
    templates: Vec<Vec<u8>>,
    pos: usize,
    bufs: Vec<Vec<u8>>,
}

impl Rx {
    fn new(templates: Vec<Vec<u8>>) -> Rx {
        Rx {
            bufs: templates[..BURST].to_vec(),
            templates,
            pos: 0,
        }
    }

    /// Receives `n` frames into `bufs[..n]`.
    #[inline]
    fn receive(&mut self, n: usize) {
        for b in &mut self.bufs[..n] {
            b.copy_from_slice(&self.templates[self.pos]);
            self.pos += 1;
            if self.pos == self.templates.len() {
                self.pos = 0;
            }
        }
    }
}

/// A frame copied for another worker (as `runtime::io::HandoffFrame`).
struct HandoffFrame {
    len: u16,
    iface: IfIndex,
    data: [u8; HANDOFF_FRAME],
}

/// One bounded queue per destination worker and the pool of buffers they carry (as
/// `runtime::io::Handoff`).
struct Handoff {
    inbound: Vec<ArrayQueue<Box<HandoffFrame>>>,
    pool: ArrayQueue<Box<HandoffFrame>>,
    handed_off: AtomicU64,
    /// Hand-offs dropped (runtime mode): full queue or empty pool.
    dropped: AtomicU64,
    /// Times a hand-off found the pool empty or the owner's queue full (the runtime drops then).
    stalls: AtomicU64,
}

impl Handoff {
    fn new() -> Handoff {
        let pool = ArrayQueue::new(WORKERS * HANDOFF_DEPTH);
        for _ in 0..WORKERS * HANDOFF_DEPTH {
            let _ = pool.push(Box::new(HandoffFrame {
                len: 0,
                iface: 0,
                data: [0; HANDOFF_FRAME],
            }));
        }
        Handoff {
            inbound: (0..WORKERS)
                .map(|_| ArrayQueue::new(HANDOFF_DEPTH))
                .collect(),
            pool,
            handed_off: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
        }
    }
}

/// What every thread shares: the tables snapshot, its owner index, the receive interface.
struct Env {
    tables: Arc<Tables>,
    owners: OwnerIndex,
    frags: FragOwners,
    iface: IfIndex,
}

impl Env {
    #[inline]
    fn owner(&self, frame: &[u8], of: usize) -> usize {
        frame_owner_hash(&self.tables, &self.owners, frame).map_or(0, |h| owner_of(h, of))
    }
}

/// Runs `f(thread, state)` on two threads pinned to the two cores; returns the wall clock from
/// the first one's start to the last one's end. Both instants are taken in the workers: on this
/// loaded machine the spawning thread may wake up late after the barrier.
fn run2<S: Send>(states: &mut [S; WORKERS], f: impl Fn(usize, &mut S) + Sync) -> Duration {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let barrier = Barrier::new(WORKERS);
    let (f, barrier, cores) = (&f, &barrier, &cores);
    std::thread::scope(|sc| {
        let [a, b] = states;
        let handles: Vec<_> = [a, b]
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                sc.spawn(move || {
                    if let Some(c) = cores.get(i % cores.len().max(1)) {
                        core_affinity::set_for_current(*c);
                    }
                    barrier.wait();
                    let start = Instant::now();
                    f(i, s);
                    (start, Instant::now())
                })
            })
            .collect();
        let spans: Vec<(Instant, Instant)> = handles
            .into_iter()
            .map(|h| h.join().expect("worker thread"))
            .collect();
        let start = spans.iter().map(|s| s.0).min().expect("two spans");
        let end = spans.iter().map(|s| s.1).max().expect("two spans");
        end - start
    })
}

/// Packets over `bufs[i]` for every bit `i` of `mine`, then over the handed-in frames.
#[inline]
fn packets<'a>(
    bufs: &'a mut [Vec<u8>],
    mine: u64,
    inbound: &'a mut [Box<HandoffFrame>],
    iface: IfIndex,
) -> ([Packet<'a>; BURST], usize) {
    let mut pkts: [Packet<'a>; BURST] = std::array::from_fn(|_| Packet {
        data: &mut [],
        iface,
        ts: TS,
        tag: 0,
        parsed: None,
    });
    let mut n = 0;
    for (i, b) in bufs.iter_mut().enumerate() {
        if mine & (1 << i) != 0 {
            pkts[n].data = b.as_mut_slice();
            pkts[n].tag = i as u64;
            n += 1;
        }
    }
    for f in inbound.iter_mut() {
        if n == BURST {
            break;
        }
        let len = usize::from(f.len);
        pkts[n] = Packet {
            data: &mut f.data[..len],
            iface: f.iface,
            ts: TS,
            tag: u64::MAX,
            parsed: None,
        };
        n += 1;
    }
    (pkts, n)
}

fn all_bits(n: usize) -> u64 {
    if n == BURST {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// (c) and the no-lock references: every frame goes to this thread's own pipeline.
struct Local<'a> {
    p: &'a mut Pipeline,
    rx: &'a mut Rx,
}

fn local_burst(env: &Env, s: &mut Local<'_>, iters: u64) {
    let mut outs = [Outcome::default(); BURST];
    for _ in 0..iters {
        s.rx.receive(BURST);
        let (mut pkts, n) = packets(&mut s.rx.bufs, u64::MAX, &mut [], env.iface);
        s.p.process_burst(&mut pkts[..n], &mut outs[..n]);
        black_box(&outs);
    }
}

fn local_per_packet(env: &Env, s: &mut Local<'_>, iters: u64) {
    for _ in 0..iters {
        s.rx.receive(BURST);
        for b in &mut s.rx.bufs {
            black_box(s.p.process_one(b, env.iface, TS));
        }
    }
}

/// (a) One worker of the hand-off design: `frames` frames received, plus whatever the other
/// worker hands in, until both have received everything and this queue is empty.
struct Worker<'a> {
    p: &'a mut Pipeline,
    rx: &'a mut Rx,
    #[expect(
        clippy::vec_box,
        reason = "pooled buffers move by pointer between queues"
    )]
    inbound: Vec<Box<HandoffFrame>>,
}

/// Pops up to a burst of this worker's handed-in frames and processes them (while its own
/// hand-off waits for room); returns how many.
#[expect(
    clippy::vec_box,
    reason = "pooled buffers move by pointer between queues"
)]
fn drain_own(
    env: &Env,
    h: &Handoff,
    me: usize,
    p: &mut Pipeline,
    inbound: &mut Vec<Box<HandoffFrame>>,
) -> usize {
    while inbound.len() < BURST {
        match h.inbound[me].pop() {
            Some(f) => inbound.push(f),
            None => break,
        }
    }
    let n = inbound.len();
    if n > 0 {
        let mut outs = [Outcome::default(); BURST];
        let (mut pkts, n) = packets(&mut [], 0, inbound, env.iface);
        p.process_burst(&mut pkts[..n], &mut outs[..n]);
        black_box(&outs);
    }
    for f in inbound.drain(..) {
        let _ = h.pool.push(f);
    }
    n
}

/// How a hand-off worker admits frames (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// A full burst received per turn; everything handed in is worked off; a full queue waits.
    Symmetric,
    /// The runtime's rule: handed-in frames take ≤ half a burst; a full queue drops.
    Runtime,
}

fn handoff_worker(
    env: &Env,
    h: &Handoff,
    done: &[AtomicBool; WORKERS],
    me: usize,
    s: &mut Worker<'_>,
    frames: usize,
    mode: Admission,
) {
    let peer = 1 - me;
    let mut outs = [Outcome::default(); BURST];
    let mut received = 0;
    let (mut handed_off, mut dropped, mut stalls) = (0u64, 0u64, 0u64);
    loop {
        let receiving = received < frames;
        if !receiving && done[peer].load(Ordering::Acquire) && h.inbound[me].is_empty() {
            break;
        }
        let n = match mode {
            // As the runtime: handed-in frames take at most half a burst while receiving.
            Admission::Runtime => {
                let cap = if receiving { BURST / 2 } else { BURST };
                BURST - h.inbound[me].len().min(cap)
            }
            Admission::Symmetric => BURST,
        }
        .min(frames - received);
        s.rx.receive(n);
        received += n;
        let mut mine = all_bits(n);
        for i in 0..n {
            let frame = &s.rx.bufs[i];
            let owner = env.owner(frame, WORKERS);
            if owner == me {
                continue;
            }
            mine &= !(1 << i);
            let buf = loop {
                if let Some(b) = h.pool.pop() {
                    break Some(b);
                }
                if mode == Admission::Runtime {
                    break None;
                }
                stalls += 1;
                if drain_own(env, h, me, s.p, &mut s.inbound) == 0 {
                    std::hint::spin_loop();
                }
            };
            let Some(mut b) = buf else {
                dropped += 1;
                continue;
            };
            b.data[..frame.len()].copy_from_slice(frame);
            b.len = frame.len() as u16;
            b.iface = env.iface;
            loop {
                match h.inbound[owner].push(b) {
                    Ok(()) => {
                        handed_off += 1;
                        break;
                    }
                    Err(back) if mode == Admission::Runtime => {
                        dropped += 1;
                        let _ = h.pool.push(back);
                        break;
                    }
                    Err(back) => {
                        b = back;
                        stalls += 1;
                        if drain_own(env, h, me, s.p, &mut s.inbound) == 0 {
                            std::hint::spin_loop();
                        }
                    }
                }
            }
        }
        if receiving && received == frames {
            // After the last push: the peer stops once it sees this and an empty queue.
            done[me].store(true, Ordering::Release);
        }
        let room = match mode {
            Admission::Runtime => BURST - n,
            Admission::Symmetric => BURST - mine.count_ones() as usize,
        };
        while s.inbound.len() < room {
            match h.inbound[me].pop() {
                Some(f) => s.inbound.push(f),
                None => break,
            }
        }
        let (mut pkts, total) = packets(&mut s.rx.bufs[..n], mine, &mut s.inbound, env.iface);
        if total > 0 {
            s.p.process_burst(&mut pkts[..total], &mut outs[..total]);
            black_box(&outs);
        }
        for f in s.inbound.drain(..) {
            let _ = h.pool.push(f);
        }
        if mode == Admission::Symmetric {
            // Work off what was handed in before this turn ends.
            let mut left = h.inbound[me].len();
            while left > 0 {
                let k = drain_own(env, h, me, s.p, &mut s.inbound);
                if k == 0 {
                    break;
                }
                left = left.saturating_sub(k);
            }
        }
        if total == 0 {
            std::hint::spin_loop();
        }
    }
    h.handed_off.fetch_add(handed_off, Ordering::Relaxed);
    h.dropped.fetch_add(dropped, Ordering::Relaxed);
    h.stalls.fetch_add(stalls, Ordering::Relaxed);
}

/// (a') the runtime's hand-off (`runtime::handoff::HandoffPort`, in batches): each turn's
/// frames for the peer travel as one batch. `Symmetric`: a full burst received per turn,
/// every handed-in batch worked off before the turn ends. `Runtime`: the runtime's admission
/// (`runtime/io.rs`: handed-in frames take at most half a burst, the socket the rest).
/// Either way a full queue or an empty pool drops (counted) as in the runtime. Returns the
/// frames that went through the pipeline.
fn batched_worker(
    env: &Env,
    run: &BatchRun<'_>,
    me: usize,
    s: &mut Local<'_>,
    frames: usize,
    mode: Admission,
) {
    let BatchRun { h, done, stats } = *run;
    let peer = 1 - me;
    let mut port = HandoffPort::new(Arc::clone(h), me);
    let mut outs = [Outcome::default(); BURST];
    let mut received = 0;
    let (mut handed_off, mut dropped, mut processed) = (0u64, 0u64, 0u64);
    // Processes this turn's own frames (bits of `mine`) with the `waiting` taken frames.
    let mut process =
        |bufs: &mut [Vec<u8>], mine: u64, port: &mut HandoffPort, p: &mut Pipeline| {
            let (mut pkts, mut n) = packets(bufs, mine, &mut [], env.iface);
            for (data, iface, parsed) in port.frames() {
                pkts[n] = Packet {
                    data,
                    iface,
                    ts: TS,
                    tag: u64::MAX,
                    parsed: Some(parsed),
                };
                n += 1;
            }
            if n > 0 {
                p.process_burst(&mut pkts[..n], &mut outs[..n]);
                black_box(&outs);
            }
            port.done();
            n
        };
    loop {
        let receiving = received < frames;
        if !receiving && done[peer].load(Ordering::Acquire) && !port.pending() {
            break;
        }
        let waiting = match mode {
            Admission::Runtime => port.take(if receiving { BURST / 2 } else { BURST }),
            Admission::Symmetric => 0,
        };
        let n = (BURST - waiting).min(frames - received);
        s.rx.receive(n);
        received += n;
        let mut mine = all_bits(n);
        for i in 0..n {
            let frame = &s.rx.bufs[i];
            // As the runtime does: one parse for the owner, carried with the frame.
            let parsed = parse::parse(frame);
            let owner = frame_owner(
                &env.tables,
                &env.owners,
                &env.frags,
                frame,
                &parsed,
                WORKERS,
            )
            .unwrap_or(0);
            if owner == me {
                continue;
            }
            mine &= !(1 << i);
            if port.stage(owner, i, frame, env.iface, parsed).is_err() {
                dropped += 1;
            }
        }
        let sent = port.send(|_| {});
        handed_off += sent.frames;
        dropped += sent.dropped;
        if receiving && received == frames {
            // After the last push: the peer stops once it sees this and nothing pending.
            done[me].store(true, Ordering::Release);
        }
        let mut worked = process(&mut s.rx.bufs[..n], mine, &mut port, s.p);
        if mode == Admission::Symmetric {
            // Work off what was handed in before this turn ends.
            while port.pending() {
                if port.take(BURST) == 0 {
                    break;
                }
                worked += process(&mut [], 0, &mut port, s.p);
            }
        }
        processed += worked as u64;
        if worked == 0 {
            std::hint::spin_loop();
        }
    }
    stats.handed_off.fetch_add(handed_off, Ordering::Relaxed);
    stats.dropped.fetch_add(dropped, Ordering::Relaxed);
    stats.processed.fetch_add(processed, Ordering::Relaxed);
}

/// What both threads of a batched run share.
#[derive(Clone, Copy)]
struct BatchRun<'a> {
    h: &'a Arc<BatchHandoff>,
    done: &'a [AtomicBool; WORKERS],
    stats: &'a BatchStats,
}

#[derive(Default)]
struct BatchStats {
    handed_off: AtomicU64,
    dropped: AtomicU64,
    processed: AtomicU64,
}

/// (b) The shared and sharded tables: pipelines behind locks.
fn shared_burst(env: &Env, shared: &Mutex<Pipeline>, rx: &mut Rx, iters: u64) {
    let mut outs = [Outcome::default(); BURST];
    for _ in 0..iters {
        rx.receive(BURST);
        let (mut pkts, n) = packets(&mut rx.bufs, u64::MAX, &mut [], env.iface);
        let mut p = shared.lock().expect("shared pipeline");
        p.process_burst(&mut pkts[..n], &mut outs[..n]);
        drop(p);
        black_box(&outs);
    }
}

fn shared_per_packet(env: &Env, shards: &[Mutex<Pipeline>], rx: &mut Rx, iters: u64) {
    for _ in 0..iters {
        rx.receive(BURST);
        for b in &mut rx.bufs {
            let s = if shards.len() > 1 {
                env.owner(b, shards.len())
            } else {
                0
            };
            let o = shards[s]
                .lock()
                .expect("shard")
                .process_one(b, env.iface, TS);
            black_box(o);
        }
    }
}

/// Sharded, one lock per shard per burst: the burst's frames sorted by shard (counting sort),
/// each shard's run processed under one lock.
fn sharded_runs(env: &Env, shards: &[Mutex<Pipeline>], rx: &mut Rx, iters: u64) {
    let mut outs = [Outcome::default(); BURST];
    for _ in 0..iters {
        rx.receive(BURST);
        let mut shard = [0u8; BURST];
        let mut start = [0usize; SHARDS + 1];
        for (i, b) in rx.bufs.iter().enumerate() {
            let s = env.owner(b, SHARDS);
            shard[i] = s as u8;
            start[s + 1] += 1;
        }
        for s in 0..SHARDS {
            start[s + 1] += start[s];
        }
        let mut order = [0u8; BURST];
        let mut fill = start;
        for (i, &s) in shard.iter().enumerate() {
            order[fill[usize::from(s)]] = i as u8;
            fill[usize::from(s)] += 1;
        }
        let mut slots: [Option<&mut [u8]>; BURST] = std::array::from_fn(|_| None);
        for (slot, b) in slots.iter_mut().zip(rx.bufs.iter_mut()) {
            *slot = Some(b.as_mut_slice());
        }
        let mut pkts: [Packet<'_>; BURST] = std::array::from_fn(|k| Packet {
            data: slots[usize::from(order[k])].take().unwrap_or_default(),
            iface: env.iface,
            ts: TS,
            tag: u64::from(order[k]),
            parsed: None,
        });
        for s in 0..SHARDS {
            let (a, b) = (start[s], start[s + 1]);
            if a < b {
                let mut p = shards[s].lock().expect("shard");
                p.process_burst(&mut pkts[a..b], &mut outs[a..b]);
            }
        }
        black_box(&outs);
    }
}

/// Forwarded packets of pipelines (every packet of this benchmark is forwarded).
fn forwarded<'a>(ps: impl IntoIterator<Item = &'a Pipeline>) -> u64 {
    ps.into_iter()
        .map(|p| {
            let c = p.counters();
            assert_eq!(c.dropped, 0, "no drops while benchmarking: {:?}", c.drops);
            c.forwarded
        })
        .sum()
}

fn syn(p: &mut Pipeline, svc: u32, sport: u16, iface: IfIndex) {
    let mut f = client_frame(svc, sport, true);
    let o = p.process_one(&mut f, iface, 1);
    assert!(matches!(o.action, Action::Forward(_)), "{o:?}");
}

fn flow_ownership(c: &mut Criterion) {
    let mut cache = MaglevCache::default();
    let tables = Arc::new(Tables::build(&state(SERVICES, CT), 1, &mut cache));
    let shard_tables = Arc::new(Tables::build(&state(SERVICES, CT_SHARD), 1, &mut cache));
    let iface = tables.iface_index("pod-client").expect("iface");
    let env = Env {
        owners: OwnerIndex::new(&tables),
        tables: Arc::clone(&tables),
        frags: FragOwners::new(WORKERS),
        iface,
    };

    // 10k established flows: in their owner's pipeline, in the shared one, in their shard.
    let mut own: [Pipeline; WORKERS] = std::array::from_fn(|_| Pipeline::new(Arc::clone(&tables)));
    let mut one = Pipeline::new(Arc::clone(&tables));
    let mut shards: Vec<Pipeline> = (0..SHARDS)
        .map(|_| Pipeline::new(Arc::clone(&shard_tables)))
        .collect();
    let mut owned: [Vec<Vec<u8>>; WORKERS] = Default::default();
    let mut mixed: [Vec<Vec<u8>>; WORKERS] = Default::default();
    let mut rng = 1u64;
    let mut wrong = 0;
    for i in 0..FLOWS {
        let svc = (xorshift(&mut rng) % u64::from(SERVICES)) as u32;
        let sport = 10_000 + i as u16;
        let ack = client_frame(svc, sport, false);
        let owner = env.owner(&ack, WORKERS);
        syn(&mut own[owner], svc, sport, iface);
        syn(&mut one, svc, sport, iface);
        syn(&mut shards[env.owner(&ack, SHARDS)], svc, sport, iface);
        // veth's queue choice, independent of the owner.
        let rxq = i % WORKERS;
        wrong += usize::from(rxq != owner);
        owned[owner].push(ack.clone());
        mixed[rxq].push(ack);
    }
    println!(
        "flow ownership: {FLOWS} flows, {SERVICES} services; owned per worker {} / {}; \
         {wrong} of {FLOWS} flows ({:.1}%) arrive at the wrong worker; {SHARDS} shards of {} to {} flows",
        owned[0].len(),
        owned[1].len(),
        100.0 * wrong as f64 / FLOWS as f64,
        shards.iter().map(|p| p.conntrack().len()).min().unwrap_or(0),
        shards.iter().map(|p| p.conntrack().len()).max().unwrap_or(0),
    );
    let mut rx_owned = owned.map(Rx::new);
    let mut rx_mixed = mixed.map(Rx::new);
    let handoff = Handoff::new();
    let one = [Mutex::new(one)];
    let shards: Vec<Mutex<Pipeline>> = shards.into_iter().map(Mutex::new).collect();

    let mut g = c.benchmark_group("flow_ownership");
    g.throughput(Throughput::Elements((WORKERS * BURST) as u64));
    // `run(iters)` returns the wall clock and the packets that went through a pipeline.
    let mut bench = |name: &str, run: &mut dyn FnMut(u64) -> (Duration, u64)| {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let (d, packets) = run(iters);
                record(name, d, packets);
                d
            })
        });
    };
    let all = |iters: u64| iters * (WORKERS * BURST) as u64;

    let before = forwarded(&own);
    bench("baseline/local_burst", &mut |iters| {
        let [a, b] = &mut own;
        let [ra, rb] = &mut rx_owned;
        let mut st = [Local { p: a, rx: ra }, Local { p: b, rx: rb }];
        (
            run2(&mut st, |_, s| local_burst(&env, s, iters)),
            all(iters),
        )
    });
    bench("baseline/local_per_packet", &mut |iters| {
        let [a, b] = &mut own;
        let [ra, rb] = &mut rx_owned;
        let mut st = [Local { p: a, rx: ra }, Local { p: b, rx: rb }];
        (
            run2(&mut st, |_, s| local_per_packet(&env, s, iters)),
            all(iters),
        )
    });
    let handoff_run =
        |iters: u64, rx: &mut [Rx; WORKERS], own: &mut [Pipeline; WORKERS], mode: Admission| {
            let done = [AtomicBool::new(false), AtomicBool::new(false)];
            let [pa, pb] = own;
            let [ra, rb] = rx;
            let mut w = [
                Worker {
                    p: pa,
                    rx: ra,
                    inbound: Vec::with_capacity(BURST),
                },
                Worker {
                    p: pb,
                    rx: rb,
                    inbound: Vec::with_capacity(BURST),
                },
            ];
            let frames = iters as usize * BURST;
            let dropped = handoff.dropped.load(Ordering::Relaxed);
            let d = run2(&mut w, |me, s| {
                handoff_worker(&env, &handoff, &done, me, s, frames, mode)
            });
            (
                d,
                all(iters) - (handoff.dropped.load(Ordering::Relaxed) - dropped),
            )
        };
    bench("handoff/all_local", &mut |iters| {
        handoff_run(iters, &mut rx_owned, &mut own, Admission::Symmetric)
    });
    assert_eq!(
        handoff.handed_off.load(Ordering::Relaxed),
        0,
        "all frames at their owner"
    );
    bench("handoff/per_frame_half_wrong", &mut |iters| {
        handoff_run(iters, &mut rx_mixed, &mut own, Admission::Symmetric)
    });
    let handed_off = handoff.handed_off.load(Ordering::Relaxed);
    let stalls = handoff.stalls.load(Ordering::Relaxed);
    bench("handoff/per_frame_overload", &mut |iters| {
        handoff_run(iters, &mut rx_mixed, &mut own, Admission::Runtime)
    });
    let overload_off = handoff.handed_off.load(Ordering::Relaxed) - handed_off;
    let overload_dropped = handoff.dropped.load(Ordering::Relaxed);
    let batches = BatchHandoff::new(WORKERS, HANDOFF_DEPTH);
    let batch_stats = [BatchStats::default(), BatchStats::default()];
    let mut batched_run = |iters: u64, mode: Admission, stats: &BatchStats| {
        let done = [AtomicBool::new(false), AtomicBool::new(false)];
        let [a, b] = &mut own;
        let [ra, rb] = &mut rx_mixed;
        let mut st = [Local { p: a, rx: ra }, Local { p: b, rx: rb }];
        let frames = iters as usize * BURST;
        let before = stats.processed.load(Ordering::Relaxed);
        let shared = BatchRun {
            h: &batches,
            done: &done,
            stats,
        };
        let d = run2(&mut st, |me, s| {
            batched_worker(&env, &shared, me, s, frames, mode)
        });
        (d, stats.processed.load(Ordering::Relaxed) - before)
    };
    bench("handoff/batched_half_wrong", &mut |iters| {
        batched_run(iters, Admission::Symmetric, &batch_stats[0])
    });
    bench("handoff/batched_overload", &mut |iters| {
        batched_run(iters, Admission::Runtime, &batch_stats[1])
    });
    assert_eq!(
        batches.pooled(),
        WORKERS * (HANDOFF_DEPTH / BURST + 1),
        "every batch back in the pool"
    );
    let own_total = forwarded(&own) - before;

    bench("shared/lock_per_burst", &mut |iters| {
        let d = run2(&mut rx_mixed.each_mut(), |_, rx| {
            shared_burst(&env, &one[0], rx, iters)
        });
        (d, all(iters))
    });
    bench("shared/lock_per_packet", &mut |iters| {
        let d = run2(&mut rx_mixed.each_mut(), |_, rx| {
            shared_per_packet(&env, &one, rx, iters)
        });
        (d, all(iters))
    });
    bench("sharded16/lock_per_packet", &mut |iters| {
        let d = run2(&mut rx_mixed.each_mut(), |_, rx| {
            shared_per_packet(&env, &shards, rx, iters)
        });
        (d, all(iters))
    });
    bench("sharded16/lock_per_shard_run", &mut |iters| {
        let d = run2(&mut rx_mixed.each_mut(), |_, rx| {
            sharded_runs(&env, &shards, rx, iters)
        });
        (d, all(iters))
    });
    g.finish();

    let one = one.map(|m| m.into_inner().expect("shared"));
    let shards: Vec<Pipeline> = shards
        .into_iter()
        .map(|m| m.into_inner().expect("shard"))
        .collect();
    println!(
        "checks: own pipelines forwarded {own_total}, shared {}, shards {}; no pipeline drops; \
         hand-off (symmetric): {handed_off} frames handed off, {stalls} stalls (queue full / pool \
         empty); runtime admission under overload: {overload_off} handed off, {overload_dropped} \
         dropped ({:.1}%); batched (runtime): symmetric {} handed off, {} dropped; under \
         overload {} handed off, {} dropped ({:.1}%)",
        forwarded(&one),
        forwarded(&shards),
        100.0 * overload_dropped as f64 / (overload_off + overload_dropped).max(1) as f64,
        batch_stats[0].handed_off.load(Ordering::Relaxed),
        batch_stats[0].dropped.load(Ordering::Relaxed),
        batch_stats[1].handed_off.load(Ordering::Relaxed),
        batch_stats[1].dropped.load(Ordering::Relaxed),
        {
            let (o, d) = (
                batch_stats[1].handed_off.load(Ordering::Relaxed),
                batch_stats[1].dropped.load(Ordering::Relaxed),
            );
            100.0 * d as f64 / (o + d).max(1) as f64
        },
    );
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summary() {
    let f = FIGURES.lock().expect("figures");
    let med = |v: &Vec<f64>| median(&v[v.len().saturating_sub(SAMPLES)..]);
    let base = f
        .iter()
        .find(|(n, _)| n == "baseline/local_burst")
        .map(|(_, v)| med(v));
    println!(
        "\n{:<32} {:>10} {:>10} {:>10}",
        "ns/packet (2 threads)", "median", "min", "ratio"
    );
    for (name, v) in f.iter() {
        let tail = &v[v.len().saturating_sub(SAMPLES)..];
        let m = med(v);
        let min = tail.iter().copied().fold(f64::INFINITY, f64::min);
        let ratio = base.map_or("-".to_string(), |b| format!("{:.2}", m / b));
        println!("{name:<32} {m:>10.1} {min:>10.1} {ratio:>10}");
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(SAMPLES)
        .configure_from_args();
    flow_ownership(&mut c);
    c.final_summary();
    summary();
}
