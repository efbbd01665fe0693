//! One worker's packet I/O over AF_XDP: its sockets (one per interface queue it owns, one
//! UMEM), the RX → pipeline → TX burst, and the hand-off of frames whose flow another worker
//! owns ([`crate::handoff`], in batches).
//!
//! ```text
//!   handed-in frames (≤ 32, from the batch being worked off) ──────────────┐
//!   rx_burst(socket s, ≤ 64 - handed-in) ─> owner(frame) == me ? ─yes─> Packet ─┤
//!                                  │ no: copied into the batch for its owner    │
//!                                  └─> end of loop: one queue push per owner    ▼
//!                      process(pkts, outs)  (Pipeline::process_burst, ≤ 64 packets)
//!                                                                               │
//!   Forward(e): rx frame ─> Action::Tx(my socket on e)  (descriptor moves, no copy)
//!               handed-in ─> Burst::tx_copy(my socket on e)
//!   Drop / Held (the pipeline kept a copy) ─> frame recycled
//!   Pass ─> recycled and counted `pass_dropped`: the XDP program passes host traffic itself,
//!           so a steered frame the pipeline would pass has no way back into the kernel
//! ```
//!
//! An interface that goes away ([`super::link`]): its sockets are taken out of service
//! between two bursts, the egress to it becomes `iface-down` (counted, never transmitted, never
//! counted as sent), and when it is re-created the worker binds new sockets on its UMEM and
//! routes to it again.
//!
//! Per burst: one parse per frame for its owner (only with more than one worker; the parse
//! goes with the frame into the pipeline, here or at its owner, which does not parse again),
//! at most one queue
//! push per other worker and one pop, no allocation, no lock, no syscall except the ring kicks
//! inside [`super::xsk`]. The batches come from a pool allocated at start; a full queue or an
//! empty pool is a counted drop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::link::{LinkCmd, LinkOutcome, LinkPort, LinkReply};
use super::xsk::{Action as XskAction, SocketId, XskWorker};
use crate::tables::IfIndex;
use crate::worker::io::{
    AfXdpIoStats, IoCounters, IoStats, PacketIo, TxCount, XskKernelStats, XskSocketStats,
};
use crate::{Action, Outcome, Packet, Tables, BURST};

use crate::drop::DROP_REASON_SLOTS;
use crate::handoff::{Handoff, HandoffPort, StageError};
use crate::offload::{ifindex_from_slow_path_mac, Offload};
use crate::owner::{frame_owner, OwnerIndex};
use crate::parse::{self, Parsed};
use crate::partial;
use crate::DropReason;

/// A slow-path frame's ingress: the table interface whose kernel ifindex its destination MAC
/// names; the MAC becomes that interface's own (as the frame would have arrived on it).
/// `None`: no such interface (the frame is dropped `slow-path-unknown`).
#[inline]
fn slow_ingress(t: &Tables, by_ifindex: &[(u32, IfIndex)], frame: &mut [u8]) -> Option<IfIndex> {
    let ifindex = ifindex_from_slow_path_mac(frame)?;
    // The MAC carries the ifindex's low 24 bits.
    let at = by_ifindex
        .binary_search_by(|&(k, _)| (k & 0xff_ffff).cmp(&ifindex))
        .ok()?;
    let idx = by_ifindex[at].1;
    let mac = t.ifaces.get(usize::from(idx))?.mac;
    frame.get_mut(..6)?.copy_from_slice(&mac);
    Some(idx)
}

#[derive(Debug, Clone, Copy)]
struct Sock {
    id: SocketId,
    /// Index of its interface in the bound tables (`IfIndex::MAX`: not in the state).
    iface: IfIndex,
    /// A socket of the slow-path interface (`io.afxdp.fast_path: tc`): each frame's ingress is
    /// the pod interface its destination MAC names ([`crate::offload`]).
    slow: bool,
}

/// AF_XDP packet I/O of one worker.
#[derive(Debug)]
pub struct AfXdpIo {
    id: usize,
    workers: usize,
    xsk: XskWorker,
    socks: Vec<Sock>,
    names: Vec<String>,
    /// Per table interface index: this worker's socket on it.
    egress: Vec<Option<SocketId>>,
    /// Per table interface index: its sockets are out of service (the interface is gone).
    egress_down: Vec<bool>,
    /// Commands from the control thread about interfaces that go and come back.
    link: Option<LinkPort>,
    next: usize,
    tables: Option<Arc<Tables>>,
    owners: OwnerIndex,
    handoff: HandoffPort,
    counters: IoCounters,
    /// Names of the bound tables' interfaces (index = IfIndex), for the per-index counters.
    egress_names: Vec<String>,
    /// Transmit counters of earlier bindings, by interface name.
    tx_folded: BTreeMap<String, TxCount>,
    core: Option<core_affinity::CoreId>,
    /// The UMEM frame accounting check when the worker stopped.
    accounting: Option<String>,
    /// Frames of the last burst lost after the pipeline decided them: (packet index, reason),
    /// for the worker's flow events ([`PacketIo::lost_in_burst`]).
    lost: [(u8, DropReason); BURST],
    n_lost: usize,
    /// How long an idle worker keeps polling its rings after the last frame before it sleeps
    /// in `poll()` (0: sleeps at the first empty burst).
    busy_poll: Duration,
    /// Pass partial checksums on for the kernel to finish (`io.afxdp.tx_checksum_offload`),
    /// where the UMEM has TX metadata.
    csum_offload: bool,
    /// When the current run of empty bursts began (`None` while frames flow): the busy-poll
    /// window is measured from here, so the clock is read only by empty bursts.
    idle_since: Option<Instant>,
    /// The kernel flow cache (`io.afxdp.fast_path: tc`): offers, batches, counters.
    offload: Option<Offload>,
    /// The slow path's interface (`npslow1`), whose sockets deliver the pod interfaces' frames.
    slow_iface: Option<String>,
    /// (kernel ifindex, table index) of the bound tables' interfaces, sorted: the slow-path
    /// frames' ingress by their destination MAC.
    by_ifindex: Vec<(u32, IfIndex)>,
}

impl AfXdpIo {
    /// Wraps a worker's sockets. `id` is this worker's index among `workers`.
    /// `core`: the core the worker pins itself to when its thread starts.
    pub fn new(
        id: usize,
        workers: usize,
        xsk: XskWorker,
        handoff: Arc<Handoff>,
        core: Option<core_affinity::CoreId>,
    ) -> AfXdpIo {
        let ids: Vec<SocketId> = xsk.socket_ids().collect();
        let names = ids.iter().map(|&s| xsk.binding(s).0.to_owned()).collect();
        AfXdpIo {
            id,
            workers,
            socks: ids
                .into_iter()
                .map(|id| Sock {
                    id,
                    iface: IfIndex::MAX,
                    slow: false,
                })
                .collect(),
            names,
            xsk,
            egress: Vec::new(),
            egress_down: Vec::new(),
            link: None,
            next: 0,
            tables: None,
            owners: OwnerIndex::default(),
            handoff: HandoffPort::new(handoff, id),
            counters: IoCounters::default(),
            egress_names: Vec::new(),
            tx_folded: BTreeMap::new(),
            core,
            accounting: None,
            lost: [(0, DropReason::TxFailed); BURST],
            n_lost: 0,
            busy_poll: Duration::ZERO,
            idle_since: None,
            csum_offload: true,
            offload: None,
            slow_iface: None,
            by_ifindex: Vec::new(),
        }
    }

    /// The fast path (`io.afxdp.fast_path: tc`): this worker's sockets on `slow_iface` receive
    /// the pod interfaces' slow-path frames (their ingress named by the destination MAC), and
    /// `offload` is its side of the kernel flow cache.
    pub fn with_fast_path(mut self, slow_iface: &str, offload: Offload) -> AfXdpIo {
        for (s, name) in self.socks.iter_mut().zip(&self.names) {
            s.slow = name == slow_iface;
        }
        self.slow_iface = Some(slow_iface.to_owned());
        self.offload = Some(offload);
        self
    }

    /// The kernel ifindex of every interface of the bound tables (sysfs of the worker's
    /// network namespace; 0: none),
    /// for the slow path's ingress and the offers. At bind and when an interface comes back.
    fn resolve_ifindexes(&mut self) {
        if self.offload.is_none() {
            return;
        }
        let kernel: Vec<u32> = self
            .egress_names
            .iter()
            .map(|n| {
                std::fs::read_to_string(format!("/sys/class/net/{n}/ifindex"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        self.by_ifindex = kernel
            .iter()
            .enumerate()
            .filter(|(_, &k)| k != 0)
            .map(|(i, &k)| (k, i as IfIndex))
            .collect();
        self.by_ifindex.sort_unstable();
        if let Some(o) = self.offload.as_mut() {
            o.set_ifindexes(kernel);
        }
    }

    /// Partial checksums from senders with TX checksum offload: passed on for the kernel to
    /// finish (AF_XDP TX metadata; the default, where the UMEM has it) or completed by the
    /// pipeline (`false`).
    pub fn with_checksum_offload(mut self, on: bool) -> AfXdpIo {
        self.csum_offload = on;
        self
    }

    /// Busy polling: after the last non-empty burst the worker keeps polling its rings for
    /// `window` before it sleeps in `poll()` (no wake-up latency while traffic flows, ~0 CPU
    /// when idle). `Duration::ZERO` (the default): sleep at the first empty burst.
    pub fn with_busy_poll(mut self, window: Duration) -> AfXdpIo {
        self.busy_poll = window;
        self
    }

    /// Takes the control thread's commands about interfaces that go away and come back
    /// ([`super::link`]).
    pub fn with_link(mut self, port: LinkPort) -> AfXdpIo {
        self.link = Some(port);
        self
    }

    /// Serves the control thread's link commands, if any (once per burst: an empty channel
    /// costs a couple of atomic loads). Never waits.
    fn serve_link(&mut self) {
        loop {
            let cmd = match self.link.as_ref().map(|p| p.cmds.try_recv()) {
                Some(Ok(c)) => c,
                _ => return,
            };
            let (seq, iface, outcome) = match cmd {
                LinkCmd::Down { seq, iface } => {
                    let (mut sockets, mut unsent) = (0, 0);
                    for i in 0..self.socks.len() {
                        let id = self.socks[i].id;
                        if self.names[i] == iface && self.xsk.is_up(id) {
                            unsent += self.xsk.set_down(id);
                            sockets += 1;
                        }
                    }
                    self.counters.iface_down += u64::from(unsent);
                    if sockets > 0 {
                        self.counters.iface_gone += 1;
                    }
                    (seq, iface, LinkOutcome::Gone { sockets, unsent })
                }
                LinkCmd::Up { seq, iface } => {
                    let (mut sockets, mut failed) = (Vec::new(), Vec::new());
                    for i in 0..self.socks.len() {
                        let id = self.socks[i].id;
                        if self.names[i] != iface || self.xsk.is_up(id) {
                            continue;
                        }
                        let queue = self.xsk.binding(id).1;
                        match self.xsk.rebind(id) {
                            Ok(fd) => sockets.push((queue, fd)),
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    if !sockets.is_empty() {
                        self.counters.iface_rebound += 1;
                    }
                    (seq, iface, LinkOutcome::Rebound { sockets, failed })
                }
            };
            self.rebuild_egress();
            self.resolve_ifindexes();
            if let Some(o) = self.offload.as_mut() {
                // Offers naming the interface's old ifindex (as ingress or egress) must go.
                o.request_clear();
            }
            if let Some(p) = &self.link {
                // The control thread gone (stopping): nobody to tell.
                let _ = p.replies.send(LinkReply {
                    worker: self.id,
                    seq,
                    iface,
                    outcome,
                });
            }
        }
    }

    /// The egress socket per table interface: the first socket in service on it; an
    /// interface whose sockets are all out of service is `egress_down`.
    fn rebuild_egress(&mut self) {
        let n = self.egress_names.len();
        self.egress = vec![None; n];
        self.egress_down = vec![false; n];
        for s in &self.socks {
            let i = usize::from(s.iface);
            if i >= n {
                continue;
            }
            if self.xsk.is_up(s.id) {
                self.egress[i].get_or_insert(s.id);
            } else {
                self.egress_down[i] = true;
            }
        }
        for (d, e) in self.egress_down.iter_mut().zip(&self.egress) {
            *d &= e.is_none();
        }
    }

    /// Folds the per-index transmit counters into the by-name totals (before a rebind).
    fn fold_tx(&mut self) {
        for (i, name) in self.egress_names.iter().enumerate() {
            let p = self.counters.tx.get(i).copied().unwrap_or(0);
            let b = self.counters.tx_bytes.get(i).copied().unwrap_or(0);
            if p > 0 {
                let t = self.tx_folded.entry(name.clone()).or_default();
                t.packets += p;
                t.bytes += b;
            }
        }
        self.counters.tx.iter_mut().for_each(|c| *c = 0);
        self.counters.tx_bytes.iter_mut().for_each(|c| *c = 0);
    }

    /// Resolves interface names against a new snapshot (called when tables are published).
    pub fn bind_tables(&mut self, t: &Arc<Tables>) {
        self.fold_tx();
        self.egress_names = t.ifaces.iter().map(|i| i.name.clone()).collect();
        for (s, name) in self.socks.iter_mut().zip(&self.names) {
            s.iface = t.iface_index(name).unwrap_or(IfIndex::MAX);
        }
        self.rebuild_egress();
        self.counters.tx = vec![0; t.ifaces.len()];
        self.counters.tx_bytes = vec![0; t.ifaces.len()];
        if self.workers > 1 {
            self.owners = OwnerIndex::new(t);
        }
        self.tables = Some(Arc::clone(t));
        self.resolve_ifindexes();
    }

    /// One burst: the next socket (round robin) with frames, plus frames handed in by other
    /// workers. Returns the frames taken off a ring or a hand-off queue, whether processed
    /// here or handed to their owner (0: idle).
    pub fn rx_process(
        &mut self,
        now: u64,
        process: &mut dyn FnMut(&mut [Packet<'_>], &mut [Outcome]),
    ) -> usize {
        self.serve_link();
        let n_socks = self.socks.len();
        for _ in 0..n_socks {
            let s = self.next;
            self.next = (self.next + 1) % n_socks;
            let got = self.burst_on(s, now, process);
            if got > 0 {
                self.idle_since = None;
                return got;
            }
        }
        0
    }

    fn burst_on(
        &mut self,
        s: usize,
        now: u64,
        process: &mut dyn FnMut(&mut [Packet<'_>], &mut [Outcome]),
    ) -> usize {
        self.n_lost = 0;
        let AfXdpIo {
            id,
            workers,
            xsk,
            socks,
            egress,
            egress_down,
            tables,
            owners,
            lost,
            n_lost,
            handoff,
            counters,
            offload,
            by_ifindex,
            ..
        } = self;
        let (me, workers) = (*id, *workers);
        let sock = socks[s];
        let mut waiting = 0;
        if workers > 1 {
            // Left over from a burst that panicked and was unwound before it finished (see
            // `Worker::turn`): the handed-in frames it had taken are not processed again (they
            // may be what panicked); batches it had staged still go to their owners.
            let (abandoned, sent) = handoff.recover();
            counters.handoff_abandoned += abandoned;
            counters.handed_off += sent.frames;
            counters.handoff_chains += sent.chains;
            counters.handoff_dropped += sent.dropped;
            // Handed-in frames take at most half a burst, the socket the rest.
            waiting = handoff.take(BURST / 2);
            counters.handed_in += waiting as u64;
        }
        let mut burst = xsk.rx_burst(sock.id, BURST - waiting);
        let received = burst.len();
        counters.rx += received as u64;

        // Which received frames are ours (bit set) and which go to their owner.
        let mut mine: u64 = if received == 64 {
            u64::MAX
        } else {
            (1u64 << received) - 1
        };
        // Each frame's ingress: the socket's interface, or on the slow path the pod interface
        // the frame's destination MAC names (the MAC restored to that interface's own).
        let mut ifaces = [sock.iface; BURST];
        if sock.slow {
            if let (Some(t), Some(o)) = (tables.as_deref(), offload.as_mut()) {
                o.counters.slow_path_rx += received as u64;
                for (i, at) in ifaces.iter_mut().enumerate().take(received) {
                    match slow_ingress(t, by_ifindex, burst.frame_mut(i)) {
                        Some(x) => *at = x,
                        None => {
                            mine &= !(1 << i);
                            o.counters.slow_path_unknown += 1;
                        }
                    }
                }
            }
        }
        // Frames parsed here for their owner (several workers): the pipeline, this worker's or
        // the owner's, does not parse them again.
        let mut parsed: [Option<Result<Parsed, DropReason>>; BURST] = [None; BURST];
        if workers > 1 {
            if let Some(t) = tables.as_deref() {
                for (i, pre) in parsed.iter_mut().enumerate().take(received) {
                    if mine & (1 << i) == 0 {
                        continue;
                    }
                    let frame = burst.frame(i);
                    let p = parse::parse(frame);
                    *pre = Some(p);
                    let frags = handoff.shared().frag_owners();
                    let Some(owner) = frame_owner(t, owners, frags, frame, &p, workers) else {
                        continue;
                    };
                    if owner == me {
                        continue;
                    }
                    // Not ours either way: a copy goes to the owner (the frame is released,
                    // not counted as dropped by the socket) or the drop is counted here.
                    mine &= !(1 << i);
                    match handoff.stage(owner, i, frame, ifaces[i], p) {
                        Ok(()) => {}
                        Err(StageError::TooLong) => counters.handoff_too_long += 1,
                        Err(StageError::NoBatch) => counters.handoff_dropped += 1,
                    }
                }
                // One queue operation per owner for the whole burst.
                let sent = handoff.send(|i| burst.set_action(i, XskAction::Release));
                counters.handed_off += sent.frames;
                counters.handoff_chains += sent.chains;
                counters.handoff_dropped += sent.dropped;
            }
        }
        if mine == 0 && waiting == 0 {
            burst.finish();
            // Every frame went to its owner: busy, not idle.
            return received;
        }

        // Index of each packet's frame in the burst (rx frames), in packet order.
        let mut rx_index = [0u8; BURST];
        let mut lens = [0u16; BURST];
        let mut outs = [Outcome::default(); BURST];
        let n_rx;
        let total;
        {
            let mut pkts: [Packet<'_>; BURST] = std::array::from_fn(|_| Packet {
                data: &mut [],
                iface: 0,
                ts: now,
                tag: 0,
                parsed: None,
            });
            let mut n = 0;
            for (i, (frame, _)) in burst.frames_mut().enumerate() {
                if mine & (1 << i) != 0 {
                    rx_index[n] = i as u8;
                    pkts[n] = Packet {
                        data: frame,
                        iface: ifaces[i],
                        ts: now,
                        tag: i as u64,
                        parsed: parsed[i],
                    };
                    n += 1;
                }
            }
            n_rx = n;
            for (data, iface, p) in handoff.frames() {
                if n >= BURST {
                    break;
                }
                pkts[n] = Packet {
                    data,
                    iface,
                    ts: now,
                    tag: u64::MAX,
                    parsed: Some(p),
                };
                n += 1;
            }
            total = n;
            process(&mut pkts[..n], &mut outs[..n]);
            for (l, p) in lens.iter_mut().zip(&pkts[..n]) {
                *l = p.data.len() as u16;
            }
        }

        for k in 0..total {
            let o = outs[k];
            let target = match o.action {
                Action::Forward(e) => match egress.get(usize::from(e)).copied().flatten() {
                    Some(t) => Some((e, t)),
                    None => {
                        let reason = if egress_down.get(usize::from(e)) == Some(&true) {
                            counters.iface_down += 1;
                            DropReason::IfaceDown
                        } else {
                            counters.tx_no_socket += 1;
                            DropReason::TxNoSocket
                        };
                        lost[*n_lost] = (k as u8, reason);
                        *n_lost += 1;
                        None
                    }
                },
                Action::Pass => {
                    counters.pass_dropped += 1;
                    lost[*n_lost] = (k as u8, DropReason::PassUnavailable);
                    *n_lost += 1;
                    None
                }
                Action::Drop(_) | Action::Held => None,
            };
            let trim = usize::from(o.l2_trim);
            let len = usize::from(lens[k]);
            if k < n_rx {
                let i = usize::from(rx_index[k]);
                if let Some((e, t)) = target {
                    if trim > 0 && trim < len {
                        burst.frame_mut(i).copy_within(trim..len, 0);
                    }
                    let new_len = len - trim.min(len);
                    if new_len != burst.frame(i).len() {
                        burst.set_len(i, new_len);
                    }
                    if o.csum_partial {
                        // Left partial by the pipeline: the kernel finishes it (TX metadata)
                        // or it is completed here; its field is written afresh either way.
                        let req = if burst.can_request_checksum(i) {
                            partial::offload_request(burst.frame_mut(i))
                        } else {
                            None
                        };
                        match req {
                            Some((start, off)) if burst.request_checksum(i, start, off) => {
                                counters.csum_offloaded += 1
                            }
                            _ => {
                                if partial::complete_frame(burst.frame_mut(i)) {
                                    counters.csum_completed += 1;
                                }
                            }
                        }
                    }
                    burst.set_action(i, XskAction::Tx(t));
                    counters.tx[usize::from(e)] += 1;
                    counters.tx_bytes[usize::from(e)] += new_len as u64;
                }
            } else if let Some((e, t)) = target {
                // Handed in: a copy into this worker's UMEM, a chain if longer than a frame.
                let f = handoff.frame_mut(k - n_rx, len);
                let at = trim.min(f.len());
                let f = &mut f[at..];
                // A partial checksum: the request for the kernel (its field rewritten here,
                // in the contiguous copy) or completed here, before the copy is split.
                let (mut req, mut completed) = (None, false);
                if o.csum_partial {
                    if burst.copy_can_request_checksum() {
                        req = partial::offload_request(f);
                    }
                    if req.is_none() {
                        completed = partial::complete_frame(f);
                    }
                }
                match burst.tx_copy_req(t, f, req) {
                    Ok(offloaded) => {
                        counters.csum_offloaded += u64::from(offloaded);
                        counters.csum_completed += u64::from(completed);
                        counters.tx[usize::from(e)] += 1;
                        counters.tx_bytes[usize::from(e)] += f.len() as u64;
                    }
                    Err(_) => {
                        counters.tx_copy_failed += 1;
                        lost[*n_lost] = (k as u8, DropReason::TxFailed);
                        *n_lost += 1;
                    }
                }
            }
        }
        burst.finish();
        handoff.done();
        received.max(total)
    }

    /// Transmits a copy of a frame outside a burst (a released fragment).
    pub fn send_copy(&mut self, egress: IfIndex, frame: &[u8]) {
        match self.egress.get(usize::from(egress)).copied().flatten() {
            Some(t) => match self.xsk.tx_copy(t, frame) {
                Ok(()) => {
                    if let Some(c) = self.counters.tx.get_mut(usize::from(egress)) {
                        *c += 1;
                    }
                    if let Some(c) = self.counters.tx_bytes.get_mut(usize::from(egress)) {
                        *c += frame.len() as u64;
                    }
                }
                Err(_) => self.counters.tx_copy_failed += 1,
            },
            None if self.egress_down.get(usize::from(egress)) == Some(&true) => {
                self.counters.iface_down += 1
            }
            None => self.counters.tx_no_socket += 1,
        }
    }

    /// Nothing was received: reap, refill, and wait for traffic (at most `max`, less when
    /// other workers may hand frames in). Within the busy-poll window after the last frame it
    /// returns at once instead (the next turn polls the rings again).
    pub fn idle_wait(&mut self, max: Duration) {
        self.xsk.service();
        if self.workers > 1 && self.handoff.pending() {
            return;
        }
        if !self.busy_poll.is_zero() {
            let now = Instant::now();
            let since = *self.idle_since.get_or_insert(now);
            if now.duration_since(since) < self.busy_poll {
                self.counters.busy_polls += 1;
                std::hint::spin_loop();
                return;
            }
        }
        let ms = if self.workers > 1 {
            1
        } else {
            max.as_millis().clamp(1, 100) as i32
        };
        self.counters.idle_sleeps += 1;
        // EINTR is no error (`wait_rx`); others are counted, and the loop comes back here.
        if self.xsk.wait_rx(ms).is_err() {
            self.counters.poll_errors += 1;
        }
    }

    pub fn counters(&self) -> &IoCounters {
        &self.counters
    }

    /// Every socket's counters: userspace (rings, kicks) and the kernel's (`XDP_STATISTICS`,
    /// one `getsockopt` per socket: called for `nodeplane status`, never per burst).
    pub fn socket_stats(&self) -> Vec<XskSocketStats> {
        self.socks
            .iter()
            .map(|s| {
                let (iface, queue) = self.xsk.binding(s.id);
                let u = self.xsk.stats(s.id);
                let kernel = match self.xsk.kernel_stats(s.id) {
                    Ok(k) => Some(XskKernelStats {
                        rx_dropped: k.rx_dropped(),
                        rx_invalid_descs: k.rx_invalid_descs(),
                        rx_ring_full: k.rx_ring_full(),
                        rx_fill_ring_empty_descs: k.rx_fill_ring_empty_descs(),
                        tx_invalid_descs: k.tx_invalid_descs(),
                        tx_ring_empty_descs: k.tx_ring_empty_descs(),
                    }),
                    Err(_) => None,
                };
                XskSocketStats {
                    iface: iface.to_owned(),
                    queue,
                    rx: u.rx,
                    tx: u.tx,
                    tx_completed: u.tx_completed,
                    tx_ring_full: u.tx_ring_full,
                    dropped: u.dropped,
                    released: u.released,
                    fill_starved: u.fill_starved,
                    tx_kicks: u.tx_kicks,
                    fill_kicks: u.fill_kicks,
                    tx_kick_errors: u.tx_kick_errors,
                    fill_kick_errors: u.fill_kick_errors,
                    rx_chains: u.rx_chains,
                    rx_chain_dropped: u.rx_chain_dropped,
                    tx_chains: u.tx_chains,
                    down: !self.xsk.is_up(s.id),
                    kernel,
                }
            })
            .collect()
    }

    /// Frame accounting check of the UMEM (see [`XskWorker::check_accounting`]).
    pub fn check_accounting(&mut self) -> Result<(), String> {
        self.xsk
            .check_accounting()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl PacketIo for AfXdpIo {
    fn start(&mut self) {
        if let Some(c) = self.core {
            if !core_affinity::set_for_current(c) {
                log::warn!("worker {}: cannot pin to core {}", self.id, c.id);
            }
        }
    }

    fn bind(&mut self, tables: &Arc<Tables>) {
        self.bind_tables(tables);
    }

    fn owner(&self) -> (usize, usize) {
        (self.id, self.workers)
    }

    fn keeps_partial(&self) -> bool {
        self.csum_offload && self.xsk.tx_metadata()
    }

    fn burst(
        &mut self,
        now: u64,
        process: &mut dyn FnMut(&mut [Packet<'_>], &mut [Outcome]),
    ) -> usize {
        self.rx_process(now, process)
    }

    fn send(&mut self, egress: IfIndex, frame: &[u8]) {
        self.send_copy(egress, frame);
    }

    fn idle(&mut self, max: Duration) {
        self.idle_wait(max);
    }

    fn stats(&self) -> IoStats {
        let mut tx = self.tx_folded.clone();
        for (i, name) in self.egress_names.iter().enumerate() {
            let p = self.counters.tx.get(i).copied().unwrap_or(0);
            if p > 0 {
                let t = tx.entry(name.clone()).or_default();
                t.packets += p;
                t.bytes += self.counters.tx_bytes.get(i).copied().unwrap_or(0);
            }
        }
        IoStats {
            rx_packets: self.counters.rx,
            tx,
            passed: self.counters.pass_dropped,
            finished: false,
            afxdp: Some(AfXdpIoStats {
                core: self.core.map(|c| c.id),
                counters: self.counters.clone(),
                sockets: self.socket_stats(),
                accounting: self.accounting.clone(),
                offload: self.offload.as_ref().map(|o| o.counters),
            }),
        }
    }

    fn lost_in_burst(&mut self, f: &mut dyn FnMut(usize, DropReason)) {
        for &(k, reason) in &self.lost[..self.n_lost] {
            f(usize::from(k), reason);
        }
        self.n_lost = 0;
    }

    fn drops(&self, drops: &mut [u64; DROP_REASON_SLOTS]) {
        let ring_full = self
            .xsk
            .socket_ids()
            .map(|id| self.xsk.stats(id).tx_ring_full)
            .sum();
        self.counters.add_drops(ring_full, drops);
        if let Some(o) = &self.offload {
            drops[DropReason::SlowPathUnknown as usize] += o.counters.slow_path_unknown;
        }
    }

    fn offload(&mut self) -> Option<&mut Offload> {
        self.offload.as_mut()
    }

    fn finish(&mut self) {
        let r = match self.check_accounting() {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                log::error!("worker {}: {e}", self.id);
                e
            }
        };
        self.accounting = Some(r);
    }
}
