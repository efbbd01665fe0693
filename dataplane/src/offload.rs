//! The worker's side of the kernel flow cache (`io.afxdp.fast_path: tc`, issue 10).
//!
//! ```text
//!   pod ──> TC ingress (xdp-redirect/bpf/fastpath.c) ── (ifindex, 5-tuple) in np_flows? ──
//!             │ yes, no SYN/FIN/RST: rewrite, redirect (the kernel repeats a decision)     │
//!             │ no: slow path ──> npslow0 ─ npslow1 ─ XDP ─> AF_XDP ─> worker (as today)   │
//!   worker, after each burst (this module, only with a fast path):                         │
//!     per frame forwarded for an established flow direction that entered on a pod         │
//!     interface: decide (`decide`), mark the entry offered, batch (key, action) ───────────┘
//!     per frame of an offered flow that is closing or ended: withdraw both directions
//!     offered entries whose timer ran out (conntrack sets them aside): ask the kernel when
//!     it last forwarded them; refresh, or remove them here and there
//!     one `insert` and one `remove` system call per burst at most (the kernel map's batches)
//! ```
//!
//! Userspace keeps every decision: the kernel only repeats, for later packets of a flow
//! direction, what the pipeline did to one of its packets (the same NAT, TTL, MACs, egress),
//! and the TC program sends every TCP SYN/FIN/RST to the slow path, so conntrack still sees
//! every state change. A publication (new tables, a policy-mode override) clears the whole
//! map ([`Offload::clear`]): the next packet of each flow is decided again under the new
//! tables and offered again.
//!
//! Each worker clears the map when it picks up new tables, so the last worker to switch
//! clears last and nothing decided under older tables survives it. A worker's entries cleared
//! by another worker (or lost to a full map) come back by themselves: a packet of an offered
//! direction that reaches the worker is offered again ([`Counters::reoffered`]).
//!
//! Nothing here runs per packet without a fast path (the worker has no [`Offload`] then);
//! with one, per frame of the slow path: one conntrack probe, the decision, and a copy into
//! the batch; the batches are preallocated.

use std::io;

use nodeplane_state::InterfaceRole;
use serde::{Deserialize, Serialize};

use crate::conntrack::{Dir, FlowRef, FlowState};
use crate::flow::{FlowKey, PROTO_TCP, PROTO_UDP};
use crate::pipeline::{Action, CtStatus, Outcome};
use crate::policy::PolicyVerdict;
use crate::tables::{IfIndex, Tables};
use crate::{Pipeline, BURST};

/// One direction of a flow as the kernel's flow cache keys it: the ingress interface (kernel
/// ifindex) and the 5-tuple as the packet arrives (ports in host order here; the map's
/// encoding is the loader's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OffloadKey {
    pub ifindex: u32,
    pub proto: u8,
    pub v6: bool,
    /// IPv4: the 4 address bytes first, the rest 0 (as [`crate::Addr`]).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

impl OffloadKey {
    fn of(ifindex: u32, k: &FlowKey) -> OffloadKey {
        OffloadKey {
            ifindex,
            proto: k.proto,
            v6: k.src.v6,
            src: k.src.bytes,
            dst: k.dst.bytes,
            sport: k.sport,
            dport: k.dport,
        }
    }
}

/// What the kernel does to a packet of an offered direction: the tuple it leaves with, where
/// and with which MACs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadAction {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub egress_ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The egress is a pod interface: straight into the pod's namespace (`bpf_redirect_peer`).
    pub peer: bool,
    /// Decrement the TTL / hop limit (the worker does for every packet it forwards).
    pub dec_ttl: bool,
    /// The source (address or port) changes.
    pub nat_src: bool,
    /// The destination (address or port) changes.
    pub nat_dst: bool,
    /// The tables generation the decision was made under (truncated).
    pub generation: u32,
}

/// The kernel's flow map, as a worker uses it (the daemon implements it over the pinned map,
/// tests over a table in memory). Batches: one system call each, never one per packet.
pub trait FlowMap: Send + std::fmt::Debug {
    /// Inserts or replaces `keys[i] → actions[i]`; how many went in (a full map skips what it
    /// has no room for).
    fn insert(&mut self, keys: &[OffloadKey], actions: &[OffloadAction]) -> io::Result<usize>;
    /// Deletes the keys (missing ones are no error); how many were there.
    fn remove(&mut self, keys: &[OffloadKey]) -> io::Result<usize>;
    /// Nanoseconds since the kernel last forwarded a packet of `key` (`None`: not in the map,
    /// or never forwarded).
    fn last_seen_age(&self, key: &OffloadKey) -> io::Result<Option<u64>>;
    /// Deletes every entry; how many there were.
    fn clear(&mut self) -> io::Result<usize>;
}

/// The worker's flow-cache counters (`nodeplane status`, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Flow directions inserted into the kernel's flow map.
    pub offered: u64,
    /// Of `offered`: directions offered again (the kernel had lost them: another worker's
    /// clear, a full map earlier).
    pub reoffered: u64,
    /// Offers the map had no room for (`io.afxdp.fast_path_flows`).
    pub offload_full: u64,
    /// Map operations that failed otherwise (inserts, removals, clears, lookups).
    pub offload_errors: u64,
    /// Directions removed because their flow closed, ended or expired.
    pub withdrawn: u64,
    /// Offered flows whose timer ran out and that the kernel had forwarded since: refreshed.
    pub refreshed: u64,
    /// Offered flows expired after the kernel's look (idle there too).
    pub expired: u64,
    /// Times this worker cleared the map (new tables).
    pub cleared: u64,
    /// Slow-path frames whose slow-path MAC names no interface of the state (dropped
    /// `slow-path-unknown`).
    pub slow_path_unknown: u64,
    /// Frames received on the slow path.
    pub slow_path_rx: u64,
}

/// What one forwarded frame says about its flow direction ([`decide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Offer the direction (`again`: it was offered already; the kernel lost it).
    Offer { again: bool },
    /// The flow closes or was ended: withdraw its offered directions.
    Withdraw,
    /// Nothing to do.
    Nothing,
}

/// What the worker keeps of each frame of a burst for the offers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    pub iface: IfIndex,
    pub action: Action,
    pub ct: CtStatus,
    pub l2_trim: u8,
}

impl Seen {
    #[inline]
    pub fn of(iface: IfIndex, o: &Outcome) -> Seen {
        Seen {
            iface,
            action: o.action,
            ct: o.ct,
            l2_trim: o.l2_trim,
        }
    }
}

/// Whether a flow is in the state the kernel may repeat decisions for: TCP established with
/// no FIN seen, or a datagram flow with a reply seen.
fn steady(e: &FlowRef<'_>) -> bool {
    if e.is_ended() {
        return false;
    }
    match e.proto() {
        PROTO_TCP => e.state == FlowState::Established && e.fins() == 0,
        PROTO_UDP => e.state == FlowState::Open && e.packets()[Dir::Reply as usize] > 0,
        _ => false,
    }
}

/// The offer decision for the flow `e` (direction `dir`) of a frame that entered on `s.iface`
/// and was decided `s` under tables `t` (pipeline epoch `epoch`; `overridden`: a policy-mode
/// override is in force). Pure: the caller applies it.
///
/// Offered: TCP/UDP only; a forward of an established flow direction (not new, not related);
/// entered on a pod interface, untagged; the flow steady ([`steady`]); its verdict a plain
/// forward (none, allow, audit; no override in force, which a later publication would have to
/// undo); this direction's fast path recorded under these tables for this ingress and egress
/// (what the kernel repeats comes from there); the egress MTU at least the ingress MTU (the
/// kernel does not check a length the worker would have answered with an ICMP error).
pub fn decide(
    t: &Tables,
    e: &FlowRef<'_>,
    dir: Dir,
    s: &Seen,
    epoch: u32,
    overridden: bool,
) -> Offer {
    if !matches!(e.proto(), PROTO_TCP | PROTO_UDP) {
        return Offer::Nothing;
    }
    if !steady(e) {
        return if e.offered_any() {
            Offer::Withdraw
        } else {
            Offer::Nothing
        };
    }
    let Action::Forward(egress) = s.action else {
        return Offer::Nothing;
    };
    if !matches!(s.ct, CtStatus::Established | CtStatus::Reply) || s.l2_trim != 0 || overridden {
        return Offer::Nothing;
    }
    if !matches!(
        e.policy,
        PolicyVerdict::None | PolicyVerdict::Allow | PolicyVerdict::Audit
    ) {
        return Offer::Nothing;
    }
    let (Some(ingress), Some(out)) = (
        t.ifaces.get(usize::from(s.iface)),
        t.ifaces.get(usize::from(egress)),
    ) else {
        return Offer::Nothing;
    };
    if ingress.role != InterfaceRole::Pod {
        return Offer::Nothing;
    }
    let f = e.fast(dir);
    if f.epoch != epoch || f.ingress != s.iface || f.egress != egress {
        return Offer::Nothing;
    }
    // 0: unknown. Known ingress and egress MTUs must not shrink; an unknown ingress MTU
    // is taken for the node's largest only when the egress's is unknown as well.
    let fits = out.mtu == 0 || (ingress.mtu != 0 && out.mtu >= ingress.mtu);
    if !fits {
        return Offer::Nothing;
    }
    Offer::Offer {
        again: e.offered(dir),
    }
}

/// The (key, action) of direction `dir` of flow `e`: the key is the direction's tuple as it
/// arrives; the action's tuple is the reverse of the other direction's (what the packet
/// leaves as after NAT), its MACs and egress those of the direction's fast path.
pub fn entry_of(
    t: &Tables,
    e: &FlowRef<'_>,
    dir: Dir,
    ifindex_in: u32,
    ifindex_out: u32,
) -> (OffloadKey, OffloadAction) {
    let (key, leaves) = match dir {
        Dir::Orig => (e.orig(), e.reply().reversed()),
        Dir::Reply => (e.reply(), e.orig().reversed()),
    };
    let f = e.fast(dir);
    let out = &t.ifaces[usize::from(f.egress)];
    let action = OffloadAction {
        src: leaves.src.bytes,
        dst: leaves.dst.bytes,
        sport: leaves.sport,
        dport: leaves.dport,
        egress_ifindex: ifindex_out,
        dmac: f.dst_mac,
        smac: out.mac,
        peer: out.role == InterfaceRole::Pod,
        dec_ttl: true,
        nat_src: leaves.src != key.src || leaves.sport != key.sport,
        nat_dst: leaves.dst != key.dst || leaves.dport != key.dport,
        generation: t.generation as u32,
    };
    (OffloadKey::of(ifindex_in, &key), action)
}

/// The worker's flow-cache state: the kernel map, the kernel ifindex of each interface of the
/// tables, the per-burst batches and the counters. Owned by the worker's I/O (which knows the
/// kernel's interfaces); used by the worker after each burst.
#[derive(Debug)]
pub struct Offload {
    map: Box<dyn FlowMap>,
    /// Per table interface index: its kernel ifindex (0: unknown).
    ifindex: Vec<u32>,
    keys: Vec<OffloadKey>,
    actions: Vec<OffloadAction>,
    /// The entry and direction of each offer of the batch (marked offered once in).
    offers: Vec<(u32, Dir)>,
    removals: Vec<OffloadKey>,
    /// An interface went or came back (another ifindex): entries naming the old one are
    /// cleared after the next burst ([`Offload::request_clear`]).
    clear_requested: bool,
    pub counters: Counters,
}

/// Removals batched per burst at most (the two directions of a burst's closing flows and of
/// expired ones, at most 2 × 256 of those); a full batch goes in an extra call.
const REMOVALS: usize = 1024;

impl Offload {
    pub fn new(map: Box<dyn FlowMap>) -> Offload {
        Offload {
            map,
            ifindex: Vec::new(),
            keys: Vec::with_capacity(BURST),
            actions: Vec::with_capacity(BURST),
            offers: Vec::with_capacity(BURST),
            removals: Vec::with_capacity(REMOVALS),
            clear_requested: false,
            counters: Counters::default(),
        }
    }

    /// Clears the map after the next burst (the I/O asks when an interface went away or came
    /// back with another ifindex: entries keyed by, or redirecting to, the old one must go).
    pub fn request_clear(&mut self) {
        self.clear_requested = true;
    }

    /// The kernel ifindex of each table interface (index = [`IfIndex`]; 0: unknown). Set by
    /// the I/O when tables are bound and when an interface is re-created.
    pub fn set_ifindexes(&mut self, ifindex: Vec<u32>) {
        self.ifindex = ifindex;
    }

    fn ifindex(&self, i: IfIndex) -> u32 {
        self.ifindex.get(usize::from(i)).copied().unwrap_or(0)
    }

    /// New tables (or another policy-mode override): every decision may change, so the whole
    /// map goes, and this worker's entries forget their offers.
    pub fn clear(&mut self, pipeline: &mut Pipeline) {
        self.counters.cleared += 1;
        if self.map.clear().is_err() {
            self.counters.offload_errors += 1;
        }
        pipeline.conntrack_mut().clear_offered();
    }

    /// After a burst: offers and withdrawals of the burst's frames (`seen[i]` is frame `i`,
    /// whose tuple as it arrived is `pipeline.tuples()[i]`), the expiry of offered flows
    /// whose timer ran out, then one insert and one removal batch.
    pub fn after_burst(&mut self, pipeline: &mut Pipeline, seen: &[Seen], now: u64) {
        if self.clear_requested {
            self.clear_requested = false;
            self.clear(pipeline);
        }
        let n = seen.len().min(BURST);
        let epoch = pipeline.epoch();
        let overridden = pipeline.policy_mode_override().is_some();
        for (i, s) in seen.iter().enumerate().take(n) {
            let key = pipeline.tuples(n)[i];
            if !matches!(key.proto, PROTO_TCP | PROTO_UDP) {
                continue;
            }
            let t = pipeline.tables();
            let ct = pipeline.conntrack();
            let Some((slot, dir)) = ct.find(&key) else {
                continue;
            };
            let e = ct.entry(slot);
            match decide(t, &e, dir, s, epoch, overridden) {
                Offer::Nothing => {}
                Offer::Withdraw => {
                    for d in [Dir::Orig, Dir::Reply] {
                        if e.offered(d) {
                            let k = match d {
                                Dir::Orig => e.orig(),
                                Dir::Reply => e.reply(),
                            };
                            let ifindex = self.ifindex(e.fast(d).ingress);
                            self.withdraw(OffloadKey::of(ifindex, &k));
                        }
                    }
                    let ct = pipeline.conntrack_mut();
                    ct.set_offered(slot, Dir::Orig, false);
                    ct.set_offered(slot, Dir::Reply, false);
                }
                Offer::Offer { again } => {
                    let f = e.fast(dir);
                    let (ifin, ifout) = (self.ifindex(s.iface), self.ifindex(f.egress));
                    if ifin == 0 || ifout == 0 || self.keys.len() >= BURST {
                        continue;
                    }
                    if self.offers.contains(&(slot, dir)) {
                        continue;
                    }
                    let (k, a) = entry_of(t, &e, dir, ifin, ifout);
                    self.keys.push(k);
                    self.actions.push(a);
                    self.offers.push((slot, dir));
                    if again {
                        self.counters.reoffered += 1;
                    }
                }
            }
        }
        self.expire_due(pipeline, now);
        self.flush(pipeline);
    }

    fn withdraw(&mut self, k: OffloadKey) {
        if self.removals.len() >= REMOVALS {
            self.flush_removals();
        }
        self.removals.push(k);
        self.counters.withdrawn += 1;
    }

    /// Offered flows whose timer ran out (set aside by the conntrack GC): the kernel's last
    /// packet of either direction decides between a refresh and the end.
    fn expire_due(&mut self, pipeline: &mut Pipeline, now: u64) {
        let Offload {
            map,
            ifindex,
            removals,
            counters,
            ..
        } = self;
        let ifx = |i: IfIndex| ifindex.get(usize::from(i)).copied().unwrap_or(0);
        let mut gone: [OffloadKey; 2] = [OffloadKey::default(); 2];
        pipeline.conntrack_mut().take_offload_due(|ct, slot| {
            if !ct.is_live(slot) {
                return;
            }
            let e = ct.entry(slot);
            if !e.offered_any() {
                return;
            }
            let mut latest: Option<u64> = None;
            let mut n = 0;
            for d in [Dir::Orig, Dir::Reply] {
                if !e.offered(d) {
                    continue;
                }
                let k = match d {
                    Dir::Orig => e.orig(),
                    Dir::Reply => e.reply(),
                };
                let key = OffloadKey::of(ifx(e.fast(d).ingress), &k);
                match map.last_seen_age(&key) {
                    Ok(Some(age)) => {
                        let at = now.saturating_sub(age);
                        latest = Some(latest.map_or(at, |l| l.max(at)));
                    }
                    Ok(None) => {}
                    Err(_) => counters.offload_errors += 1,
                }
                gone[n] = key;
                n += 1;
            }
            let timeout = ct.timeout_of(slot);
            match latest {
                Some(at) if at.saturating_add(timeout) > now => {
                    ct.set_expiry(slot, at + timeout);
                    counters.refreshed += 1;
                }
                _ => {
                    removals.extend_from_slice(&gone[..n]);
                    counters.withdrawn += n as u64;
                    counters.expired += 1;
                    ct.remove(slot);
                    ct.stats.expired += 1;
                }
            }
        });
    }

    fn flush_removals(&mut self) {
        if self.removals.is_empty() {
            return;
        }
        if self.map.remove(&self.removals).is_err() {
            self.counters.offload_errors += 1;
        }
        self.removals.clear();
    }

    /// The burst's batches to the kernel: one insert, one removal.
    fn flush(&mut self, pipeline: &mut Pipeline) {
        self.flush_removals();
        if self.keys.is_empty() {
            return;
        }
        let total = self.keys.len();
        let done = match self.map.insert(&self.keys, &self.actions) {
            Ok(n) => n.min(total),
            Err(_) => {
                self.counters.offload_errors += 1;
                0
            }
        };
        // Every offer is marked, whether it went in or not: the map does not say which ones a
        // full map refused, and a mark too many only costs a removal of an absent key at the
        // flow's end (a direction the kernel does not have comes back to the worker, which
        // offers it again), while a mark too few would leave a closed flow's entry behind.
        let ct = pipeline.conntrack_mut();
        for &(slot, dir) in &self.offers {
            ct.set_offered(slot, dir, true);
        }
        self.counters.offered += done as u64;
        // The map had no room for the rest (or the error counted above).
        self.counters.offload_full += (total - done) as u64;
        self.keys.clear();
        self.actions.clear();
        self.offers.clear();
    }
}

/// The slow-path MAC's prefix: `02:6e:70` (locally administered, "np"); the low 24 bits of
/// the ingress ifindex follow. The TC program writes it (`slow_path_mac` in xdp-redirect's
/// `flows.rs`, which this must agree with; a test in the daemon compares the two).
pub const SLOW_PATH_OUI: [u8; 3] = [0x02, 0x6e, 0x70];

/// The ingress ifindex a slow-path frame's destination MAC encodes (`None`: not a slow-path
/// MAC, or ifindex 0).
#[inline]
pub fn ifindex_from_slow_path_mac(mac: &[u8]) -> Option<u32> {
    let m = mac.get(..6)?;
    if m[..3] != SLOW_PATH_OUI {
        return None;
    }
    let i = u32::from(m[3]) << 16 | u32::from(m[4]) << 8 | u32::from(m[5]);
    (i != 0).then_some(i)
}

#[cfg(test)]
mod tests;
