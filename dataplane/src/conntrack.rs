//! Connection tracking, owned by one worker (no locks).
//!
//! Layout: a fixed slab of `max_entries` [`Entry`]s (one 64-byte cache line each, IPv4
//! addresses in line: everything an established packet reads and writes) reserved up front
//! and written only as flows first use its slots; beside it, per slot, the flow's cold part
//! ([`Cold`], 32 bytes: what an established packet does not need) and its timer (`deadline`,
//! what the GC sweeps); an IPv6 flow's three addresses in a store of their own, grown on demand
//! in chunks (`v6`, named by an id in the entry), so `max_entries` counts flows of either
//! family and nothing is reserved for IPv6 until IPv6 flows come; and one hash index of
//! `slot << 1 | direction` values covering both the original key (as the flow arrived, before DNAT) and the reply key (the reverse of
//! the translated tuple). The index ([`CtIndex`]) stores no keys (4 bytes a bucket: the value
//! and a 7-bit tag of the hash, sized once for a full table, so it stays in cache): a probe
//! compares against the key in the entry only when the tag matches, and the packet needs that
//! entry next anyway. Free slots are linked through their own `next` field (no free list beside
//! the slab). The entry stores only the original key; the reply key is derived from it, the
//! NAT's backend and, for a source-NATed flow, the translated source ([`FlowRef::reply`]; a
//! [`FlowRef`] is an entry with its IPv6 addresses attached). The translated source costs the
//! entry 3 bytes, not 19: its port, and where its address comes from ([`SnatFrom`]): the
//! client itself (a remapped port), the address the client dialled (hairpin, a NodePort's node
//! IP), or an address of the small process-wide [`SnatAddrs`] table (the node IP an ExternalIP
//! or LoadBalancer flow is masqueraded to). A lookup is one probe and tells the direction.
//! Only a new IPv6 flow allocates after [`Conntrack::new`], once per 1024 IPv6 records of the
//! high-water mark (a chunk of the IPv6 store): the index is created with room for every key
//! of a full slab, and the slab grows only within its reservation. Memory: ~115 bytes
//! reserved and resident per IPv4 flow (entry 64, cold part 32, index share 10.7, timer 8),
//! 48 more per IPv6 flow.
//!
//! The index hash ([`Conntrack::hash`]) is a seeded folded multiply over the key's words, with a
//! random seed per process, so that nobody can aim many flows at one bucket without knowing it
//! (the same construction as foldhash, the default hasher of the maps elsewhere).
//!
//! Full table: first reclaim expired entries (a bounded scan), then evict the oldest entry in a
//! closing TCP state (FIN_WAIT, CLOSE, TIME_WAIT; kept in an intrusive LRU list), else refuse the
//! new flow (`ct-full`). Established flows are never evicted to make room.
//!
//! Time is whatever the caller passes (pcap timestamps in replay, a per-burst clock live), so
//! replay is deterministic.

use crate::ct_index::{self, CtIndex};
use crate::drop::DropReason;
use crate::flow::{Addr, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP};
use crate::policy::PolicyVerdict;
use crate::snapshot::SavedFlow;
use crate::tables::CtConfig;
use crate::wire::tcp::flags as F;

const NIL: u32 = u32::MAX;

/// How far one reclaim scan looks for expired entries when the table is full.
const RECLAIM_SCAN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlowState {
    /// UDP, ICMP and other datagram flows.
    #[default]
    Open,
    SynSent,
    SynRecv,
    Established,
    FinWait,
    Close,
    TimeWait,
}

impl FlowState {
    pub fn name(self) -> &'static str {
        match self {
            FlowState::Open => "OPEN",
            FlowState::SynSent => "SYN_SENT",
            FlowState::SynRecv => "SYN_RECV",
            FlowState::Established => "ESTABLISHED",
            FlowState::FinWait => "FIN_WAIT",
            FlowState::Close => "CLOSE",
            FlowState::TimeWait => "TIME_WAIT",
        }
    }
    fn closing(self) -> bool {
        matches!(
            self,
            FlowState::FinWait | FlowState::Close | FlowState::TimeWait
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Orig = 0,
    Reply = 1,
}

/// Destination NAT of a service flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nat {
    pub vip: Addr,
    pub vip_port: u16,
    pub backend: Addr,
    pub backend_port: u16,
    /// Service index in the tables of generation `Entry::generation`.
    pub service: u32,
}

/// What the pipeline learned from one direction's last fully checked packet, so that the next
/// packets of that direction skip the classification (anti-spoofing or uplink ownership) and
/// route lookups: both are pure functions of the direction's key, the ingress interface and the
/// tables, and the key is fixed per direction. Valid only while `epoch` equals the pipeline's
/// current tables epoch (unique per installed snapshot and pipeline) and the packet comes in on
/// `ingress`.
/// The entry keeps it in 10 bytes a direction and one epoch for both ([`Entry::fast`]): the
/// egress index must leave its high bit clear (else nothing is recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FastPath {
    /// 0: never valid. A pipeline's epoch truncated to 32 bits (never 0), recorded only after
    /// the flow was checked under these tables, so it stands for the entry's generation too
    /// (the fast paths do not read the generation, which is in the cold part): a stale one
    /// could match again only after 2³² table installs during one idle flow's life.
    pub epoch: u32,
    pub ingress: u16,
    pub egress: u16,
    /// The next hop's MAC (the source MAC is the egress interface's, from the tables).
    pub dst_mac: [u8; 6],
    /// The egress is a pod interface (a VLAN tag is stripped toward pods).
    pub egress_pod: bool,
}

/// An IPv4 flow's destination NAT as the established lane reads it from the hot line
/// ([`Entry::nat_v4`]): what [`Nat`] holds, without building 17-byte addresses.
#[derive(Debug, Clone, Copy)]
pub struct NatV4 {
    pub vip: [u8; 4],
    pub vip_port: u16,
    pub backend: [u8; 4],
    pub backend_port: u16,
    pub service: u32,
}

/// Source NAT of a flow: the original direction leaves from `addr:port` instead of the
/// client's address and port, and replies come back to it (see `snat.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snat {
    pub addr: Addr,
    pub port: u16,
}

/// Where a source-NATed flow's translated address comes from (`Entry::snat_from`): the
/// original key's source ([`SNAT_FROM_CLIENT`]: only the port is remapped), its destination
/// ([`SNAT_FROM_DIALLED`]: hairpin leaves from the address it dialled, a NodePort flow is
/// masqueraded to the node IP it dialled), or `SNAT_FROM_TABLE + i`: entry `i` of
/// [`SnatAddrs`].
type SnatFrom = u8;
const SNAT_FROM_CLIENT: SnatFrom = 0;
const SNAT_FROM_DIALLED: SnatFrom = 1;
const SNAT_FROM_TABLE: SnatFrom = 2;

/// The addresses source NAT translates to that are neither the client's nor the one it
/// dialled: the node IP that ExternalIP and LoadBalancer flows are masqueraded to, and the
/// host interface's far side (`snat::HOST_SNAT_V4` / `HOST_SNAT_V6`). One process-wide table of
/// [`SnatAddrs::CAPACITY`] cells, so that an entry names its address in one byte, every table
/// (each worker's, a what-if copy, a restored snapshot's) reads the same index the same way,
/// and [`Entry`] stays 96 bytes.
///
/// A cell counts the live conntrack entries that name it: an entry takes a reference when it
/// is created or restored ([`SnatAddrs::intern`]: a copy interns its address again) and gives it back
/// when it is removed or its table dropped ([`SnatAddrs::release`]). A cell no entry names is
/// reusable for another address, so a node whose addresses change more than 64 times keeps
/// masquerading; only 64 addresses *in use at once* fill the table (then `snat-no-address`).
/// No lock and no allocation: each cell is three atomics, its address written only while the
/// cell is claimed (flag `BUSY`, reference count 0), which no reader can observe, because
/// readers only ever read cells their entry holds a reference to. A generation in the cell's
/// state word makes a claim visible to a concurrent `intern` that looked at the old address
/// (its compare-exchange fails; 29 bits: it would take 2^29 reuses of one cell during one
/// compare-exchange to fool it). Only new and removed flows with such a source NAT touch a
/// cell (one compare-exchange or one atomic subtraction on a line the workers share: the cost
/// of reuse, paid per masqueraded connection, never per packet); every other flow never does.
#[derive(Debug)]
pub struct SnatAddrs;

/// One cell: `meta` = reference count (bits 0-31) | `VALID` | `V6` | `BUSY` | generation (bits
/// 35-63); the address's 16 bytes in `words`. A cache line each: workers counting references
/// to the IPv4 and the IPv6 address at once do not share a line.
#[derive(Debug)]
#[repr(align(64))]
struct SnatCell {
    meta: std::sync::atomic::AtomicU64,
    words: [std::sync::atomic::AtomicU64; 2],
}

const CELL_REFS: u64 = 0xffff_ffff;
const CELL_VALID: u64 = 1 << 32;
const CELL_V6: u64 = 1 << 33;
const CELL_BUSY: u64 = 1 << 34;
const CELL_GEN_SHIFT: u32 = 35;

static SNAT_ADDRS: [SnatCell; SnatAddrs::CAPACITY] = [const {
    SnatCell {
        meta: std::sync::atomic::AtomicU64::new(0),
        words: [
            std::sync::atomic::AtomicU64::new(0),
            std::sync::atomic::AtomicU64::new(0),
        ],
    }
}; SnatAddrs::CAPACITY];

fn addr_words(a: &Addr) -> [u64; 2] {
    let (lo, hi) = a.bytes.split_at(8);
    [
        u64::from_le_bytes(lo.try_into().unwrap_or([0; 8])),
        u64::from_le_bytes(hi.try_into().unwrap_or([0; 8])),
    ]
}

impl SnatAddrs {
    /// Distinct addresses a process can masquerade flows to at once.
    pub const CAPACITY: usize = 64;

    /// The index of a cell holding `addr`, with one reference taken for the caller: a cell that
    /// holds it already, else a cell no entry refers to (claimed and rewritten). `None` when
    /// every cell is referenced by other addresses' entries.
    pub fn intern(addr: Addr) -> Option<u8> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
        let w = addr_words(&addr);
        let v6 = if addr.v6 { CELL_V6 } else { 0 };
        for (i, c) in SNAT_ADDRS.iter().enumerate() {
            let mut m = c.meta.load(Acquire);
            // Retried only while other workers change this cell's reference count.
            while m & (CELL_VALID | CELL_BUSY | CELL_V6) == CELL_VALID | v6
                && m & CELL_REFS != CELL_REFS
                && c.words[0].load(Relaxed) == w[0]
                && c.words[1].load(Relaxed) == w[1]
            {
                match c.meta.compare_exchange(m, m + 1, AcqRel, Acquire) {
                    Ok(_) => return Some(i as u8),
                    Err(now) => m = now,
                }
            }
        }
        for (i, c) in SNAT_ADDRS.iter().enumerate() {
            let m = c.meta.load(Acquire);
            if m & CELL_BUSY != 0 || m & CELL_REFS != 0 {
                continue;
            }
            let generation = (m >> CELL_GEN_SHIFT).wrapping_add(1) << CELL_GEN_SHIFT;
            if c.meta
                .compare_exchange(m, generation | CELL_BUSY, AcqRel, Acquire)
                .is_ok()
            {
                c.words[0].store(w[0], Relaxed);
                c.words[1].store(w[1], Relaxed);
                // Publishes the words with the reference (readers acquire `meta` first).
                c.meta.store(generation | CELL_VALID | v6 | 1, Release);
                return Some(i as u8);
            }
        }
        None
    }

    /// Gives back a reference taken by [`Self::intern`].
    fn release(i: u8) {
        if let Some(c) = SNAT_ADDRS.get(usize::from(i)) {
            c.meta.fetch_sub(1, std::sync::atomic::Ordering::Release);
        }
    }

    /// The address of cell `i` (referenced by the caller's entry, so not rewritten meanwhile).
    /// Out of line: only flows masqueraded through the table come here, and the lookups of
    /// every other flow stay as small as without it.
    #[cold]
    #[inline(never)]
    fn get(i: u8) -> Addr {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        let Some(c) = SNAT_ADDRS.get(usize::from(i)) else {
            return Addr::default();
        };
        let v6 = c.meta.load(Acquire) & CELL_V6 != 0;
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&c.words[0].load(Relaxed).to_le_bytes());
        bytes[8..].copy_from_slice(&c.words[1].load(Relaxed).to_le_bytes());
        Addr { bytes, v6 }
    }

    /// The entries that name cell `i` (tests and diagnostics).
    pub fn references(i: u8) -> u64 {
        SNAT_ADDRS.get(usize::from(i)).map_or(0, |c| {
            c.meta.load(std::sync::atomic::Ordering::Acquire) & CELL_REFS
        })
    }
}

/// Gives back the reference [`snat_fields`] took for an entry that was not created.
fn release_snat_from(has_snat: bool, from: SnatFrom) {
    if has_snat && from >= SNAT_FROM_TABLE {
        SnatAddrs::release(from - SNAT_FROM_TABLE);
    }
}

/// The [`SnatAddrs`] cell an entry names, if any.
#[inline]
fn table_cell(e: &Entry) -> Option<u8> {
    (e.flags & NAT_SRC != 0 && e.snat_from >= SNAT_FROM_TABLE)
        .then(|| e.snat_from - SNAT_FROM_TABLE)
}

/// `Entry::flags`: the flow is destination-NATed (a service flow).
const NAT_DST: u8 = 1;
/// `Entry::flags`: the flow is also source-NATed (`snat_port`, `snat_from`).
const NAT_SRC: u8 = 2;
/// `Entry::flags`: an IPv6 flow; its addresses are in the table's [`V6Store`], by the id in
/// `src`.
const V6: u8 = 4;
/// `Entry::flags`: the slot holds a live flow.
const LIVE: u8 = 8;
/// `Entry::flags`: the flow is on the closing list (`prev`, `next`).
const IN_CLOSING: u8 = 16;

/// `Entry::flags`: the flow was ended by the control plane (the reason is
/// [`FlowRef::ended`], in the cold part).
const ENDED: u8 = 32;
/// `Entry::flags`: the original direction was offered to the kernel's flow cache
/// (`io.afxdp.fast_path: tc`, [`crate::offload`]); the reply direction's bit is the next one
/// (`OFFERED << dir`). Never set without a fast path: the entry keeps its layout.
const OFFERED: u8 = 64;
const OFFERED_BOTH: u8 = OFFERED | OFFERED << 1;
/// Offered entries whose timer ran out, set aside for the worker to ask the kernel when it
/// last forwarded them ([`Conntrack::take_offload_due`]) at most this many at a time.
const OFFLOAD_DUE_MAX: usize = 256;
/// How long an offered entry whose timer ran out waits for the worker's look at the kernel
/// before the GC finds it again.
const OFFLOAD_DUE_GRACE: u64 = 1_000_000_000;
/// `Hop::ingress` of a direction without fast-path data (no packet comes in on it).
pub const NO_HOP: u16 = u16::MAX;
/// `Hop::egress`: the high bit marks an egress pod interface ([`FastPath::egress_pod`]).
const EGRESS_POD: u16 = 0x8000;

/// One direction's [`FastPath`] as the entry keeps it (the epoch is shared by both directions).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Hop {
    dst_mac: [u8; 6],
    /// [`NO_HOP`]: none recorded (under `fast_epoch`).
    ingress: u16,
    /// The egress interface, [`EGRESS_POD`] set for a pod interface.
    egress: u16,
}

impl Default for Hop {
    fn default() -> Hop {
        NONE_HOP
    }
}

const NONE_HOP: Hop = Hop {
    dst_mac: [0; 6],
    ingress: NO_HOP,
    egress: 0,
};

/// A flow's hot record: one 64-byte, 64-aligned cache line holding everything an established
/// packet of an IPv4 flow reads and writes (key, state, FIN bits, both directions' fast-path
/// data, the NAT, identities and verdict, the low bits of the packet counters). What such a
/// packet does not need is in the table's parallel cold array ([`Cold`]: generation, why the
/// flow ended, the closing list's links, the counters' high bits); its timer is the table's
/// `deadline` array, which the GC sweeps without touching entries. An IPv6 flow keeps its
/// three 16-byte addresses in the table's [`V6Store`] (grown on demand, named by an id in
/// `src`), so that the common IPv4 flow does not carry 36 bytes of address it never uses.
/// The reply key is not stored: it is the reverse of the translated original key
/// ([`FlowRef::reply`]), and the VIP of the NAT is the original destination.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
pub struct Entry {
    /// IPv4: the original source address (IPv6: the id of its addresses, see [`V6`]).
    src: [u8; 4],
    /// IPv4: the original destination address (the VIP of a service flow).
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    proto: u8,
    /// [`NAT_DST`], [`NAT_SRC`], [`V6`], [`LIVE`], [`IN_CLOSING`], [`ENDED`].
    flags: u8,
    pub state: FlowState,
    /// Bit 0: FIN seen from the originator, bit 1: from the replier.
    fins: u8,
    /// IPv4: the backend of a service flow (`NAT_DST`).
    backend: [u8; 4],
    backend_port: u16,
    /// The translated source port (valid with `NAT_SRC`).
    snat_port: u16,
    /// Service index in the tables of the flow's generation (valid with `NAT_DST`).
    service: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// The epoch both directions' [`Hop`]s were recorded under (see [`FastPath::epoch`]).
    fast_epoch: u32,
    /// Per direction ([`Dir`] as index): see [`FastPath`].
    hops: [Hop; 2],
    pub policy: PolicyVerdict,
    /// Where the translated source address comes from ([`SnatFrom`]).
    snat_from: SnatFrom,
    /// Packets per direction, low 8 bits (the rest in [`Cold::packets`]: written once per 256
    /// packets, so the established packet stays in this line).
    packets: [u8; 2],
}

/// What a flow keeps outside its hot line: read and written on new, ending, closing and
/// revalidated flows, once per 256 packets of a direction, and by dumps.
#[derive(Debug, Clone, Copy)]
struct Cold {
    /// The tables generation the flow's service and policy were last checked against.
    generation: u64,
    /// Closing list links; `next` also links free slots.
    prev: u32,
    next: u32,
    /// Packets per direction less the hot line's low bits (multiples of 256, wrapping).
    packets: [u32; 2],
    /// Set when the flow was ended by the control plane (backend removed or quarantined,
    /// policy now denies): its packets are dropped for this reason until the entry expires or
    /// the client opens a new connection on the same tuple. Keeping the entry (instead of
    /// deleting it) stops the backend's replies from leaking out untranslated. Mirrored by
    /// [`ENDED`] in the hot line.
    ended: Option<DropReason>,
}

impl Default for Cold {
    fn default() -> Cold {
        EMPTY_COLD
    }
}

const EMPTY_COLD: Cold = Cold {
    generation: 0,
    prev: NIL,
    next: NIL,
    packets: [0; 2],
    ended: None,
};

/// An IPv6 flow's addresses: original source, original destination, backend.
type V6Addrs = [[u8; 16]; 3];

/// IPv6 records per chunk of [`V6Store`] (48 KiB).
const V6_CHUNK_BITS: u32 = 10;
const V6_CHUNK: usize = 1 << V6_CHUNK_BITS;

/// The IPv6 flows' addresses, grown on demand: chunks of [`V6_CHUNK`] records allocated as the
/// number of IPv6 flows first reaches them (never freed; a freed record is reused first), so a
/// table reserves nothing for IPv6 until IPv6 flows come, and an IPv6 flow is still admitted
/// until the slab is full (an IPv6 entry names its record by an id in its `src` field). Only
/// the chunk list is reserved up front (one pointer per [`V6_CHUNK`] slots). An allocation
/// happens on a new IPv6 flow's path once per [`V6_CHUNK`] records of the high-water mark,
/// never on an established packet's.
#[derive(Debug)]
struct V6Store {
    chunks: Vec<Box<[V6Addrs]>>,
    /// Records handed out so far (the high-water mark).
    used: u32,
    /// Head of the freed records, linked through their first 4 bytes.
    free: u32,
}

impl V6Store {
    fn new(cap: usize) -> V6Store {
        V6Store {
            chunks: Vec::with_capacity(cap.div_ceil(V6_CHUNK)),
            used: 0,
            free: NIL,
        }
    }

    #[inline(always)]
    fn get(&self, id: u32) -> Option<&V6Addrs> {
        let chunk = self.chunks.get((id >> V6_CHUNK_BITS) as usize)?;
        chunk.get(id as usize & (V6_CHUNK - 1))
    }

    fn get_mut(&mut self, id: u32) -> Option<&mut V6Addrs> {
        let chunk = self.chunks.get_mut((id >> V6_CHUNK_BITS) as usize)?;
        chunk.get_mut(id as usize & (V6_CHUNK - 1))
    }

    /// Stores a flow's addresses; its id. The caller holds a slab slot for the flow, so there
    /// are never more live records than slots.
    fn alloc(&mut self, a: V6Addrs) -> u32 {
        let id = if self.free != NIL {
            let id = self.free;
            self.free = self.get(id).map_or(NIL, |r| {
                u32::from_le_bytes([r[0][0], r[0][1], r[0][2], r[0][3]])
            });
            id
        } else {
            let id = self.used;
            if (id as usize) >> V6_CHUNK_BITS >= self.chunks.len() {
                self.chunks
                    .push(vec![[[0; 16]; 3]; V6_CHUNK].into_boxed_slice());
            }
            self.used += 1;
            id
        };
        if let Some(r) = self.get_mut(id) {
            *r = a;
        }
        id
    }

    fn release(&mut self, id: u32) {
        let next = self.free;
        if let Some(r) = self.get_mut(id) {
            r[0][..4].copy_from_slice(&next.to_le_bytes());
            self.free = id;
        }
    }
}

impl Entry {
    /// Re-points the flow's NAT at another service index (same backend: the keys stay).
    pub fn set_service(&mut self, service: u32) {
        self.service = service;
    }

    /// Direction `dir`'s fast-path data; one never recorded (or dropped, see
    /// [`Self::set_fast`]) has `ingress` [`NO_HOP`], which no packet comes in on.
    #[inline(always)]
    pub fn fast(&self, dir: Dir) -> FastPath {
        let h = self.hops[dir as usize];
        FastPath {
            epoch: self.fast_epoch,
            ingress: h.ingress,
            egress: h.egress & !EGRESS_POD,
            dst_mac: h.dst_mac,
            egress_pod: h.egress & EGRESS_POD != 0,
        }
    }

    /// Records direction `dir`'s fast-path data. Both directions share one epoch: recording
    /// under another epoch drops the other direction's (it was recorded under older tables).
    /// Epoch 0, an ingress of [`NO_HOP`] or an egress index with the high bit set (never, in
    /// practice) drops this direction's instead.
    #[inline]
    pub fn set_fast(&mut self, dir: Dir, f: FastPath) {
        let d = dir as usize;
        if self.fast_epoch != f.epoch {
            self.hops[d ^ 1].ingress = NO_HOP;
            self.fast_epoch = f.epoch;
        }
        if f.epoch == 0 || f.egress & EGRESS_POD != 0 {
            self.hops[d].ingress = NO_HOP;
            return;
        }
        self.hops[d] = Hop {
            dst_mac: f.dst_mac,
            ingress: f.ingress,
            egress: f.egress | u16::from(f.egress_pod) << 15,
        };
    }

    /// The lane's view of an IPv4 flow's destination NAT (the caller knows the family,
    /// [`Conntrack::touch_lane`]): the VIP and its port (the original destination), the
    /// backend and its port, the service index.
    #[inline(always)]
    pub fn nat_v4(&self) -> Option<NatV4> {
        (self.flags & NAT_DST != 0).then_some(NatV4 {
            vip: self.dst,
            vip_port: self.dport,
            backend: self.backend,
            backend_port: self.backend_port,
            service: self.service,
        })
    }

    /// The lane's view of an IPv4 flow's source NAT: the translated source address and port.
    #[inline(always)]
    pub fn snat_v4(&self) -> Option<([u8; 4], u16)> {
        if self.flags & NAT_SRC == 0 {
            return None;
        }
        let a = match self.snat_from {
            SNAT_FROM_CLIENT => self.src,
            SNAT_FROM_DIALLED => self.dst,
            i => v4_of(&SnatAddrs::get(i - SNAT_FROM_TABLE)),
        };
        Some((a, self.snat_port))
    }

    /// An IPv4 flow's original source address and port.
    #[inline(always)]
    pub fn orig_src_v4(&self) -> ([u8; 4], u16) {
        (self.src, self.sport)
    }

    /// The flow has a source NAT ([`FlowRef::snat`] without building it).
    #[inline(always)]
    pub fn has_snat(&self) -> bool {
        self.flags & NAT_SRC != 0
    }

    /// Direction `dir` was offered to the kernel's flow cache ([`crate::offload`]).
    #[inline]
    pub fn offered(&self, dir: Dir) -> bool {
        self.flags & (OFFERED << dir as u8) != 0
    }

    /// Either direction was offered.
    #[inline]
    pub fn offered_any(&self) -> bool {
        self.flags & OFFERED_BOTH != 0
    }

    /// FIN bits: bit 0 seen from the originator, bit 1 from the replier.
    #[inline]
    pub fn fins(&self) -> u8 {
        self.fins
    }

    /// Whether the control plane ended the flow ([`FlowRef::ended`] says why).
    #[inline(always)]
    pub fn is_ended(&self) -> bool {
        self.flags & ENDED != 0
    }

    pub fn proto(&self) -> u8 {
        self.proto
    }

    #[inline(always)]
    fn live(&self) -> bool {
        self.flags & LIVE != 0
    }

    #[inline(always)]
    fn in_closing(&self) -> bool {
        self.flags & IN_CLOSING != 0
    }

    #[inline(always)]
    fn is_v6(&self) -> bool {
        self.flags & V6 != 0
    }

    /// An IPv6 flow's record in the table's [`V6Store`] (kept in `src`, unused by IPv6).
    #[inline(always)]
    fn v6_id(&self) -> u32 {
        u32::from_le_bytes(self.src)
    }

    /// [`FlowRef::has_key`] for an IPv4 flow whose translated source is not in [`SnatAddrs`]
    /// (every address in line): word compares, no address built. `None`: not such a flow.
    #[inline(always)]
    fn has_key_v4(&self, dir: Dir, key: &FlowKey) -> Option<bool> {
        if self.flags & V6 != 0 {
            return None;
        }
        // One family check for the key: a key's addresses share a family (a header's do; so
        // do the keys conntrack derives).
        debug_assert_eq!(key.src.v6, key.dst.v6);
        if key.src.v6 {
            return Some(false);
        }
        // Its addresses' first 4 bytes: an IPv4 [`Addr`] has its other 12 bytes zero wherever
        // one is made ([`Addr::v4`], [`Addr::from_slice`]); a key with other bytes there would
        // not hash to this flow's buckets anyway.
        debug_assert!(key.src.bytes[4..] == [0; 12] && key.dst.bytes[4..] == [0; 12]);
        self.matches_v4(
            dir,
            &V4Tuple {
                src: v4_of(&key.src),
                dst: v4_of(&key.dst),
                sport: key.sport,
                dport: key.dport,
                proto: key.proto,
            },
        )
    }

    /// An IPv4 flow's original key as [`V4Tuple::words`]: the first 13 bytes of the line, two
    /// loads (the second word's top bytes, flags, state and FIN bits, masked off).
    #[inline(always)]
    fn orig_words_v4(&self) -> (u64, u64) {
        (
            u64::from(u32::from_ne_bytes(self.src)) | u64::from(u32::from_ne_bytes(self.dst)) << 32,
            (u64::from(self.sport)
                | u64::from(self.dport) << 16
                | u64::from(self.proto) << 32
                | u64::from(self.flags) << 40
                | u64::from(self.state as u8) << 48
                | u64::from(self.fins) << 56)
                & 0xff_ffff_ffff,
        )
    }

    /// [`Self::has_key_v4`] for an IPv4 key given by its fields (the established lane's, from
    /// its lean parse). `None`: not an IPv4 flow with every address in line.
    #[inline(always)]
    pub fn matches_v4(&self, dir: Dir, k: &V4Tuple) -> Option<bool> {
        if self.flags & V6 != 0 {
            return None;
        }
        Some(match dir {
            Dir::Orig => {
                k.sport == self.sport
                    && k.dport == self.dport
                    && k.proto == self.proto
                    && k.src == self.src
                    && k.dst == self.dst
            }
            Dir::Reply => {
                let (src, sport) = if self.flags & NAT_DST != 0 {
                    (self.backend, self.backend_port)
                } else {
                    (self.dst, self.dport)
                };
                let (dst, dport) = if self.flags & NAT_SRC != 0 {
                    let a = match self.snat_from {
                        SNAT_FROM_CLIENT => self.src,
                        SNAT_FROM_DIALLED => self.dst,
                        _ => return None,
                    };
                    (a, self.snat_port)
                } else {
                    (self.src, self.sport)
                };
                k.dport == dport
                    && k.sport == sport
                    && k.proto == self.proto
                    && k.dst == dst
                    && k.src == src
            }
        })
    }
}

/// An IPv4 flow key by its fields ([`Entry::matches_v4`], [`Conntrack::hash_v4`]).
#[derive(Debug, Clone, Copy)]
pub struct V4Tuple {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl V4Tuple {
    /// The key as two words: both addresses (source in the low half, each in the machine's
    /// order of its bytes); the ports and protocol (`sport | dport << 16 | proto << 32`).
    #[inline(always)]
    pub fn words(&self) -> (u64, u64) {
        (
            u64::from(u32::from_ne_bytes(self.src)) | u64::from(u32::from_ne_bytes(self.dst)) << 32,
            u64::from(self.sport) | u64::from(self.dport) << 16 | u64::from(self.proto) << 32,
        )
    }

    /// The [`FlowKey`] of these fields.
    #[inline(always)]
    pub fn key(&self) -> FlowKey {
        FlowKey {
            src: Addr::v4(self.src),
            dst: Addr::v4(self.dst),
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
        }
    }
}

/// A flow as its table holds it: the entry and, for IPv6, its addresses. Dereferences to the
/// [`Entry`] for the fields that do not involve addresses.
#[derive(Debug, Clone, Copy)]
pub struct FlowRef<'a> {
    e: &'a Entry,
    c: &'a Cold,
    v6: Option<&'a V6Addrs>,
}

impl std::ops::Deref for FlowRef<'_> {
    type Target = Entry;
    #[inline(always)]
    fn deref(&self) -> &Entry {
        self.e
    }
}

impl FlowRef<'_> {
    /// The tables generation the flow's service and policy were last checked against.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.c.generation
    }

    /// Why the control plane ended the flow, if it did (see [`Cold::ended`]).
    #[inline]
    pub fn ended(&self) -> Option<DropReason> {
        self.c.ended
    }

    /// Packets per direction (wrapping).
    #[inline]
    pub fn packets(&self) -> [u32; 2] {
        [0, 1].map(|d| self.c.packets[d].wrapping_add(u32::from(self.e.packets[d])))
    }

    #[inline(always)]
    fn addr(&self, i: usize, v4: [u8; 4]) -> Addr {
        match self.v6 {
            None => addr_v4(v4),
            Some(a) => Addr::v6(a[i]),
        }
    }

    #[inline(always)]
    fn src(&self) -> Addr {
        self.addr(0, self.e.src)
    }

    #[inline(always)]
    fn dst(&self) -> Addr {
        self.addr(1, self.e.dst)
    }

    #[inline(always)]
    fn backend(&self) -> Addr {
        self.addr(2, self.e.backend)
    }

    /// The original key (as the flow's first packet arrived).
    #[inline]
    pub fn orig(&self) -> FlowKey {
        FlowKey {
            src: self.src(),
            dst: self.dst(),
            sport: self.e.sport,
            dport: self.e.dport,
            proto: self.e.proto,
        }
    }

    /// The destination NAT of a service flow.
    #[inline]
    pub fn nat(&self) -> Option<Nat> {
        (self.e.flags & NAT_DST != 0).then(|| Nat {
            vip: self.dst(),
            vip_port: self.e.dport,
            backend: self.backend(),
            backend_port: self.e.backend_port,
            service: self.e.service,
        })
    }

    /// The source NAT of a flow that has one.
    #[inline]
    pub fn snat(&self) -> Option<Snat> {
        (self.e.flags & NAT_SRC != 0).then(|| Snat {
            addr: self.snat_addr(),
            port: self.e.snat_port,
        })
    }

    /// The translated source address (of a flow with `NAT_SRC`).
    #[inline(always)]
    fn snat_addr(&self) -> Addr {
        match self.e.snat_from {
            SNAT_FROM_CLIENT => self.src(),
            SNAT_FROM_DIALLED => self.dst(),
            i => SnatAddrs::get(i - SNAT_FROM_TABLE),
        }
    }

    /// The reply key: the reverse of the original key after its destination and source NAT.
    #[inline]
    pub fn reply(&self) -> FlowKey {
        let (src, sport) = self.translated_dst();
        let (dst, dport) = self.translated_src();
        FlowKey {
            src,
            dst,
            sport,
            dport,
            proto: self.e.proto,
        }
    }

    /// Where the original direction goes after NAT (the reply's source).
    #[inline(always)]
    fn translated_dst(&self) -> (Addr, u16) {
        if self.e.flags & NAT_DST != 0 {
            (self.backend(), self.e.backend_port)
        } else {
            (self.dst(), self.e.dport)
        }
    }

    /// Where the original direction comes from after NAT (the reply's destination).
    #[inline(always)]
    fn translated_src(&self) -> (Addr, u16) {
        if self.e.flags & NAT_SRC != 0 {
            (self.snat_addr(), self.e.snat_port)
        } else {
            (self.src(), self.e.sport)
        }
    }

    /// Whether `key` is this flow's key in direction `dir` (the index probe's compare: neither
    /// key is built).
    #[inline(always)]
    fn has_key(&self, dir: Dir, key: &FlowKey) -> bool {
        match dir {
            Dir::Orig => {
                key.sport == self.e.sport
                    && key.dport == self.e.dport
                    && key.proto == self.e.proto
                    && key.src == self.src()
                    && key.dst == self.dst()
            }
            Dir::Reply => {
                let (src, sport) = self.translated_dst();
                let (dst, dport) = self.translated_src();
                key.dst == dst
                    && key.dport == dport
                    && key.sport == sport
                    && key.proto == self.e.proto
                    && key.src == src
            }
        }
    }
}

/// A flow for changing the fields that hold no address: the hot line (through `Deref`) and
/// the generation in the cold part.
#[derive(Debug)]
pub struct EntryMut<'a> {
    e: &'a mut Entry,
    c: &'a mut Cold,
}

impl std::ops::Deref for EntryMut<'_> {
    type Target = Entry;
    #[inline(always)]
    fn deref(&self) -> &Entry {
        self.e
    }
}

impl std::ops::DerefMut for EntryMut<'_> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Entry {
        self.e
    }
}

impl EntryMut<'_> {
    /// Records the tables generation the flow was checked against.
    pub fn set_generation(&mut self, generation: u64) {
        self.c.generation = generation;
    }
}

/// [`Addr::v4`] as one zero-extended 128-bit store (not 16 byte writes): the fast path builds
/// the NAT's addresses of every packet from the entry's 4-byte ones.
#[inline(always)]
fn addr_v4(v4: [u8; 4]) -> Addr {
    Addr {
        bytes: u128::from(u32::from_le_bytes(v4)).to_le_bytes(),
        v6: false,
    }
}

/// The 4 bytes an IPv4 flow keeps of an address.
#[inline(always)]
fn v4_of(a: &Addr) -> [u8; 4] {
    // One 4-byte load (an element-wise array literal costs a load and a shift per byte).
    a.bytes.first_chunk().copied().unwrap_or_default()
}

/// The entry's encoding of a source NAT: (port, [`SnatFrom`]); `snat-no-address` when the
/// address needs a [`SnatAddrs`] cell and none is left. A table cell comes with one reference
/// for the entry (given back by [`release_snat_from`] if the entry is not created).
#[inline(always)]
fn snat_fields(orig: &FlowKey, snat: Option<Snat>) -> Result<(u16, SnatFrom), DropReason> {
    let Some(s) = snat else {
        return Ok((0, SNAT_FROM_CLIENT));
    };
    let from = if s.addr == orig.src {
        SNAT_FROM_CLIENT
    } else if s.addr == orig.dst {
        SNAT_FROM_DIALLED
    } else {
        // CAPACITY (64) + SNAT_FROM_TABLE fits in the byte.
        SNAT_FROM_TABLE + SnatAddrs::intern(s.addr).ok_or(DropReason::SnatNoAddress)?
    };
    Ok((s.port, from))
}

/// What an entry starts with besides its key and NAT (a new flow's first packet, a snapshot's
/// flow, a copy from another table).
#[derive(Debug, Clone, Copy)]
struct Init {
    state: FlowState,
    fins: u8,
    expires: u64,
    src_identity: u32,
    dst_identity: u32,
    policy: PolicyVerdict,
    ended: Option<DropReason>,
    generation: u64,
    packets: [u32; 2],
    /// The original direction's fast-path data, when the first packet records it.
    fast: Option<FastPath>,
}

/// What a new flow starts with (filled by the service and policy stages).
#[derive(Debug, Clone, Copy)]
pub struct NewFlow {
    pub orig: FlowKey,
    pub reply: FlowKey,
    pub nat: Option<Nat>,
    /// Source NAT (masquerade, hairpin, or a reply-tuple clash resolved by a new port).
    pub snat: Option<Snat>,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub policy: PolicyVerdict,
    pub generation: u64,
}

/// What a new flow starts with besides its keys and NAT ([`Conntrack::create_derived`]).
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub src_identity: u32,
    pub dst_identity: u32,
    pub policy: PolicyVerdict,
    pub generation: u64,
    /// The original direction's fast path, recorded with the entry (as [`Entry::set_fast`]
    /// would right after), when the first packet may record it.
    pub fast: Option<FastPath>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct CtStats {
    pub created: u64,
    pub expired: u64,
    pub evicted: u64,
    pub full_drops: u64,
    pub key_conflicts: u64,
}

#[derive(Debug)]
pub struct Conntrack {
    /// The flows' hot lines ([`Entry`]).
    slots: Vec<Entry>,
    /// Per slot: the flow's cold part ([`Cold`]), grown with `slots`.
    cold: Vec<Cold>,
    /// The IPv6 flows' addresses (original source, destination, backend), by the id in their
    /// entry, grown on demand: an IPv4 flow never touches it.
    v6: V6Store,
    /// Head of the free slots, linked through their `next` (most recently freed first).
    free_head: u32,
    /// Per slot: the live flow's expiry (its timer: entries do not repeat it), or `u64::MAX`
    /// for a free slot or an IPv6 flow's address slot. The GC sweep reads only this (8 bytes a
    /// slot, so 64 slots are 8 cache lines instead of the 64-128 lines of entries it would
    /// otherwise pull through the cache every burst).
    deadline: Vec<u64>,
    /// `slot << 1 | dir` values, hashed by [`Self::hash`] of the key they stand for.
    index: CtIndex,
    seed: [u64; 4],
    /// Moves on every insertion and removal: a lookup result taken earlier in the burst is
    /// still exact while this has not moved.
    version: u64,
    closing_head: u32,
    closing_tail: u32,
    gc_cursor: usize,
    live: usize,
    cfg: CtConfig,
    pub stats: CtStats,
    /// Offered entries whose timer ran out, waiting for the worker's look at the kernel's
    /// flow cache ([`Self::take_offload_due`]); empty and never allocated without offers.
    offload_due: Vec<u32>,
}

/// A dropped table (a stopped worker, a what-if copy) gives back its entries' [`SnatAddrs`]
/// references.
impl Drop for Conntrack {
    fn drop(&mut self) {
        for e in self.slots.iter().filter(|e| e.live()) {
            if let Some(i) = table_cell(e) {
                SnatAddrs::release(i);
            }
        }
    }
}

/// The view of a slot's flow (live or free), its IPv6 addresses attached; `None` for a slot
/// out of range.
#[inline(always)]
fn flow_in<'a>(
    slots: &'a [Entry],
    cold: &'a [Cold],
    v6: &'a V6Store,
    slot: u32,
) -> Option<FlowRef<'a>> {
    let e = slots.get(slot as usize)?;
    let c = cold.get(slot as usize)?;
    let v6 = if e.is_v6() {
        Some(v6.get(e.v6_id())?)
    } else {
        None
    };
    Some(FlowRef { e, c, v6 })
}

impl Conntrack {
    pub fn new(cfg: &CtConfig) -> Conntrack {
        // The index holds `slot << 1 | dir`: at most 16 Mi slots (the state's limit).
        let cap = (cfg.max_entries as usize).min(ct_index::MAX_VALUE as usize / 2 + 1);
        let mut cfg = cfg.clone();
        cfg.max_entries = cap as u32;
        Conntrack {
            // Reserved, not written: the slab grows into its reservation as flows come
            // ([`Conntrack::take_slot`]), so a start does not write (and fault in) every page
            // of a table that is mostly empty, and never reallocates.
            slots: Vec::with_capacity(cap),
            cold: Vec::with_capacity(cap),
            v6: V6Store::new(cap),
            deadline: Vec::with_capacity(cap),
            free_head: NIL,
            index: CtIndex::with_keys(cap * 2),
            seed: random_seed(),
            version: 0,
            closing_head: NIL,
            closing_tail: NIL,
            gc_cursor: 0,
            live: 0,
            cfg,
            stats: CtStats::default(),
            offload_due: Vec::new(),
        }
    }

    /// Timeouts may change with a new state; capacity is fixed for the table's life.
    pub fn set_config(&mut self, cfg: &CtConfig) {
        let cap = self.cfg.max_entries;
        self.cfg = cfg.clone();
        self.cfg.max_entries = cap;
    }

    pub fn capacity(&self) -> usize {
        self.cfg.max_entries as usize
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The index hash of a key: three folded multiplies over its words, seeded per process.
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        Self::hash_seeded(self.seed, key)
    }

    #[inline]
    fn hash_seeded(seed: [u64; 4], key: &FlowKey) -> u64 {
        let (sa, sb) = key.src.words();
        let (da, db) = key.dst.words();
        let [s0, s1, s2, s3] = seed;
        let ports = u64::from(key.sport)
            | u64::from(key.dport) << 16
            | u64::from(key.proto) << 32
            | u64::from(key.src.v6) << 40;
        let x = fold_mul(sa ^ s0, sb ^ s1);
        let y = fold_mul(da ^ s2, db ^ s3);
        fold_mul(x ^ ports, y ^ s0)
    }

    /// Reads the index bucket where a probe or an insert of `hash` starts (read-only): for a
    /// look-ahead that wants it in cache first (`pipeline/syn.rs`). Returns what it read.
    #[inline(always)]
    pub fn warm(&self, hash: u64) -> u32 {
        self.index.warm(hash)
    }

    /// [`Self::hash`] of the IPv4 key of these fields (the established lane's, from its lean
    /// parse in registers rather than from the key in memory): the same value.
    #[inline(always)]
    pub fn hash_v4(&self, k: &V4Tuple) -> u64 {
        let [s0, s1, s2, s3] = self.seed;
        // An IPv4 `Addr`'s first word is its 4 bytes in the low half (native order), the
        // second word zero; `v6` is false.
        let sa = u64::from(u32::from_ne_bytes(k.src));
        let da = u64::from(u32::from_ne_bytes(k.dst));
        let ports = u64::from(k.sport) | u64::from(k.dport) << 16 | u64::from(k.proto) << 32;
        let x = fold_mul(sa ^ s0, s1);
        let y = fold_mul(da ^ s2, s3);
        fold_mul(x ^ ports, y ^ s0)
    }

    /// The index value of `key` with its hash, without touching the table.
    #[inline]
    fn index_of(&self, key: &FlowKey, hash: u64) -> Option<u32> {
        let (slots, cold, v6) = (&self.slots, &self.cold, &self.v6);
        self.index.find(hash, |v| key_is(slots, cold, v6, v, key))
    }

    /// Finds a live, unexpired flow by either of its keys. An expired entry found here is
    /// removed on the spot, so correctness never waits for GC.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, now: u64) -> Option<(u32, Dir)> {
        self.lookup_hashed(key, self.hash(key), now)
    }

    /// [`Self::lookup`] with the key's [`Self::hash`] known.
    #[inline]
    pub fn lookup_hashed(&mut self, key: &FlowKey, hash: u64, now: u64) -> Option<(u32, Dir)> {
        let v = self.index_of(key, hash)?;
        let slot = v >> 1;
        if self.expires(slot) <= now {
            self.remove(slot);
            self.stats.expired += 1;
            return None;
        }
        Some((slot, dir_of(v)))
    }

    /// The slot and direction of a key with this [`Self::hash`], expired or not, without
    /// touching the table (the pipeline's fast path checks expiry itself and leaves every other
    /// case to [`Self::lookup`]).
    #[inline]
    pub fn find_hashed(&self, key: &FlowKey, hash: u64) -> Option<(u32, Dir)> {
        let v = self.index_of(key, hash)?;
        Some((v >> 1, dir_of(v)))
    }

    /// [`Self::find_hashed`] computing the hash.
    #[inline]
    pub fn find(&self, key: &FlowKey) -> Option<(u32, Dir)> {
        self.find_hashed(key, self.hash(key))
    }

    /// When the flow of `slot` expires (nanoseconds on the caller's clock; `u64::MAX` for a
    /// slot without a live flow).
    #[inline(always)]
    pub fn expires(&self, slot: u32) -> u64 {
        self.deadline.get(slot as usize).copied().unwrap_or(0)
    }

    /// Whether `slot` holds a live flow whose key in direction `dir` is the IPv4 key of these
    /// fields: then it is what a lookup of that key finds (keys are unique in the index), so a
    /// result remembered earlier (the lane's flow cache) is confirmed without a probe. One
    /// bounds check; the fields compared in registers on the entry found, a [`FlowKey`] built
    /// only for a flow whose addresses are not all in line (translated to a [`SnatAddrs`]
    /// address).
    ///
    /// The original direction compares two words (the entry's key is stored in the order of
    /// [`V4Tuple::words`]); the reply's, field by field.
    #[inline(always)]
    pub fn holds_v4(&self, slot: u32, dir: Dir, t: &V4Tuple) -> bool {
        let Some(e) = self.slots.get(slot as usize) else {
            return false;
        };
        // Live and IPv4 in one test.
        let is = if e.flags & (LIVE | V6) != LIVE {
            if !e.live() {
                return false;
            }
            None
        } else if dir == Dir::Orig {
            Some(e.orig_words_v4() == t.words())
        } else {
            e.matches_v4(dir, t)
        };
        match is {
            Some(is) => is,
            None => key_is_general(
                &self.slots,
                &self.cold,
                &self.v6,
                slot << 1 | dir as u32,
                &t.key(),
            ),
        }
    }

    /// See the `version` field.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Looks a key up without touching the table (for `explain` and dumps).
    pub fn peek(&self, key: &FlowKey, now: u64) -> Option<(FlowRef<'_>, Dir)> {
        let v = self.index_of(key, self.hash(key))?;
        let f = flow_in(&self.slots, &self.cold, &self.v6, v >> 1)?;
        (self.expires(v >> 1) > now).then_some((f, dir_of(v)))
    }

    fn contains(&self, key: &FlowKey) -> bool {
        self.index_of(key, self.hash(key)).is_some()
    }

    /// Adds `slot`'s key of direction `dir` with its hash to the index.
    fn index_insert_hashed(&mut self, slot: u32, dir: Dir, h: u64) {
        self.index.insert(h, slot << 1 | dir as u32);
        self.version += 1;
    }

    /// Removes `slot`'s key of direction `dir` (the entry still holds it) from the index.
    fn index_remove(&mut self, slot: u32, dir: Dir) {
        let Some(key) =
            flow_in(&self.slots, &self.cold, &self.v6, slot).map(|f| key_of_flow(&f, dir))
        else {
            return;
        };
        let h = self.hash(&key);
        let (slots, cold, v6, seed) = (&self.slots, &self.cold, &self.v6, self.seed);
        self.index.remove(h, slot << 1 | dir as u32, |v| {
            key_of(slots, cold, v6, v).map_or(0, |k| hash_with(seed, &k))
        });
        self.version += 1;
    }

    /// The flow of `slot`. A slot that holds none (never given out by this table) reads as an
    /// empty, never-live entry.
    #[inline]
    pub fn entry(&self, slot: u32) -> FlowRef<'_> {
        let e = self.slots.get(slot as usize).unwrap_or(&EMPTY);
        let c = self.cold.get(slot as usize).unwrap_or(&EMPTY_COLD);
        let v6 = if e.is_v6() {
            self.v6.get(e.v6_id())
        } else {
            None
        };
        FlowRef { e, c, v6 }
    }

    /// The entry of `slot` for the fields that hold no address (`None` for a slot that holds no
    /// flow: never one this table gave out).
    #[inline]
    pub fn entry_mut(&mut self, slot: u32) -> Option<EntryMut<'_>> {
        let e = self.slots.get_mut(slot as usize)?;
        let c = self.cold.get_mut(slot as usize)?;
        Some(EntryMut { e, c })
    }

    /// The hot line of `slot` alone (the fast paths' and the state machine's writes).
    #[inline(always)]
    fn hot_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize)
    }

    /// The cold part of `slot` alone.
    #[inline(always)]
    fn cold_mut(&mut self, slot: u32) -> Option<&mut Cold> {
        self.cold.get_mut(slot as usize)
    }

    /// Creates a flow. `proto`/`tcp_flags` of the first packet pick the initial state.
    pub fn create(
        &mut self,
        f: &NewFlow,
        tcp_flags: u8,
        len: usize,
        now: u64,
    ) -> Result<u32, DropReason> {
        let h_orig = self.hash(&f.orig);
        if self.index_of(&f.orig, h_orig).is_some() {
            self.stats.key_conflicts += 1;
            return Err(DropReason::CtInvalid);
        }
        self.create_absent(f, h_orig, tcp_flags, len, now)
    }

    /// [`Self::create`] for a flow whose original key the caller has just looked up
    /// ([`Self::lookup_hashed`] with `h_orig`) and not found, with nothing inserted since: one
    /// hash and one probe fewer per new connection.
    pub fn create_absent(
        &mut self,
        f: &NewFlow,
        h_orig: u64,
        tcp_flags: u8,
        len: usize,
        now: u64,
    ) -> Result<u32, DropReason> {
        let h_reply = self.hash(&f.reply);
        self.create_hashed(f, h_orig, h_reply, false, tcp_flags, len, now)
    }

    /// [`Self::create_absent`] with the reply key's hash known; `reply_free`: the caller has
    /// just looked the reply key up too ([`Self::lookup_hashed`]) and not found it, with nothing
    /// inserted since (the pipeline's source NAT check), so it is not probed again.
    #[expect(
        clippy::too_many_arguments,
        reason = "the new flow's hashes and first packet, passed on from the lookups"
    )]
    pub fn create_hashed(
        &mut self,
        f: &NewFlow,
        h_orig: u64,
        h_reply: u64,
        reply_free: bool,
        tcp_flags: u8,
        _len: usize,
        now: u64,
    ) -> Result<u32, DropReason> {
        debug_assert_eq!(h_reply, self.hash(&f.reply));
        if !consistent(&f.orig, &f.reply, f.nat, f.snat) {
            // The entry derives the reply key from the original and the NAT.
            self.stats.key_conflicts += 1;
            return Err(DropReason::CtInvalid);
        }
        let start = Start {
            src_identity: f.src_identity,
            dst_identity: f.dst_identity,
            policy: f.policy,
            generation: f.generation,
            fast: None,
        };
        let probe = (!reply_free).then_some(&f.reply);
        self.create_derived(
            &f.orig, f.nat, f.snat, start, h_orig, h_reply, probe, tcp_flags, now,
        )
    }

    /// [`Self::create_hashed`] for a flow whose reply key the caller built from `orig`, `nat`
    /// and `snat` the way the entry derives it (the reverse of the translated original key:
    /// the pipeline's `new_flow`), so that it is not compared again, and whose original key
    /// it has just looked up (`h_orig`) and not found. `h_reply`: the reply key's hash;
    /// `probe_reply`: that key, when the caller has not just looked it up and found it free
    /// (a flow without NAT), else `None`. The new flow's fields go straight into its entry: no
    /// [`NewFlow`] is built.
    #[expect(
        clippy::too_many_arguments,
        reason = "the new flow's parts and hashes, passed on from the lookups"
    )]
    #[inline]
    pub fn create_derived(
        &mut self,
        orig: &FlowKey,
        nat: Option<Nat>,
        snat: Option<Snat>,
        start: Start,
        h_orig: u64,
        h_reply: u64,
        probe_reply: Option<&FlowKey>,
        tcp_flags: u8,
        now: u64,
    ) -> Result<u32, DropReason> {
        debug_assert!(self.index_of(orig, h_orig).is_none());
        // One family per flow (the entry keeps IPv4 addresses in line, IPv6 ones in the store).
        let v6 = orig.src.v6;
        if orig.dst.v6 != v6
            || nat.is_some_and(|n| n.backend.v6 != v6)
            || snat.is_some_and(|s| s.addr.v6 != v6 || nat.is_none())
        {
            self.stats.key_conflicts += 1;
            return Err(DropReason::CtInvalid);
        }
        if let Some(reply) = probe_reply {
            debug_assert_eq!(h_reply, self.hash(reply));
            if self.index_of(reply, h_reply).is_some() {
                // Another flow already owns one of the keys (e.g. the same client port used
                // for a VIP and for its backend directly). Translating would merge two
                // connections.
                self.stats.key_conflicts += 1;
                return Err(DropReason::CtInvalid);
            }
        }
        let state = if orig.proto == PROTO_TCP {
            initial_tcp_state(tcp_flags)
        } else {
            FlowState::Open
        };
        let init = Init {
            state,
            fins: if tcp_flags & F::FIN != 0 { 1 } else { 0 },
            expires: now + self.timeout(orig.proto, state),
            src_identity: start.src_identity,
            dst_identity: start.dst_identity,
            policy: start.policy,
            ended: None,
            generation: start.generation,
            packets: [1, 0],
            fast: start.fast,
        };
        let slot = self.insert(orig, nat, snat, init, h_orig, h_reply, now)?;
        self.stats.created += 1;
        Ok(slot)
    }

    /// Writes a flow whose keys are known to be free (and consistent) into a new slot (two for
    /// IPv6), and indexes both keys.
    #[expect(
        clippy::too_many_arguments,
        reason = "a flow's key, NAT and start values, with both keys' hashes"
    )]
    #[inline(always)]
    fn insert(
        &mut self,
        orig: &FlowKey,
        nat: Option<Nat>,
        snat: Option<Snat>,
        init: Init,
        h_orig: u64,
        h_reply: u64,
        now: u64,
    ) -> Result<u32, DropReason> {
        // A table address comes with the entry's reference, given back if there is no slot.
        let (snat_port, snat_from) = snat_fields(orig, snat)?;
        let slot = match self.take_slot(now) {
            Ok(s) => s,
            Err(r) => {
                release_snat_from(snat.is_some(), snat_from);
                return Err(r);
            }
        };
        let v6 = orig.src.v6;
        let backend = nat.map_or(Addr::default(), |n| n.backend);
        let mut flags = LIVE;
        if nat.is_some() {
            flags |= NAT_DST;
        }
        if snat.is_some() {
            flags |= NAT_SRC;
        }
        if v6 {
            flags |= V6;
        }
        if init.ended.is_some() {
            flags |= ENDED;
        }
        // An IPv6 flow's addresses go to the store; its entry names them by id in `src`.
        let src = if v6 {
            self.v6
                .alloc([orig.src.bytes, orig.dst.bytes, backend.bytes])
                .to_le_bytes()
        } else {
            v4_of(&orig.src)
        };
        let mut e = Entry {
            src,
            dst: v4_of(&orig.dst),
            sport: orig.sport,
            dport: orig.dport,
            proto: orig.proto,
            flags,
            state: init.state,
            fins: init.fins,
            backend: v4_of(&backend),
            backend_port: nat.map_or(0, |n| n.backend_port),
            snat_port,
            service: nat.map_or(0, |n| n.service),
            src_identity: init.src_identity,
            dst_identity: init.dst_identity,
            fast_epoch: 0,
            hops: [Hop::default(); 2],
            policy: init.policy,
            snat_from,
            packets: init.packets.map(|p| p as u8),
        };
        if let Some(f) = init.fast {
            e.set_fast(Dir::Orig, f);
        }
        let c = Cold {
            generation: init.generation,
            prev: NIL,
            next: NIL,
            packets: init.packets.map(|p| p & !0xff),
            ended: init.ended,
        };
        self.put(slot, e, c, init.expires);
        self.index_insert_hashed(slot, Dir::Orig, h_orig);
        self.index_insert_hashed(slot, Dir::Reply, h_reply);
        if init.state.closing() {
            self.closing_push(slot);
        }
        self.live += 1;
        Ok(slot)
    }

    /// Inserts a copy of a flow taken from another table (a what-if pipeline for `explain`
    /// starts from the live flow of the packet it explains). Same rules as [`Conntrack::create`]
    /// for conflicts and a full table.
    pub fn restore(&mut self, f: FlowRef<'_>, expires: u64, now: u64) -> Result<u32, DropReason> {
        let (orig, reply) = (f.orig(), f.reply());
        if self.contains(&orig) || self.contains(&reply) {
            self.stats.key_conflicts += 1;
            return Err(DropReason::CtInvalid);
        }
        let init = Init {
            state: f.state,
            fins: f.fins,
            expires,
            src_identity: f.src_identity,
            dst_identity: f.dst_identity,
            policy: f.policy,
            ended: f.ended(),
            generation: f.generation(),
            packets: f.packets(),
            fast: None,
        };
        let (h_orig, h_reply) = (self.hash(&orig), self.hash(&reply));
        let slot = self.insert(&orig, f.nat(), f.snat(), init, h_orig, h_reply, now)?;
        let fast = [f.fast(Dir::Orig), f.fast(Dir::Reply)];
        if let Some(e) = self.hot_mut(slot) {
            e.set_fast(Dir::Orig, fast[0]);
            e.set_fast(Dir::Reply, fast[1]);
        }
        Ok(slot)
    }

    /// The live, unexpired flows as of `now`, for a snapshot (timers made relative to `now`).
    /// Entries keep no byte counts, creation or last-seen time: a snapshot carries zero bytes
    /// and age, and the idle time since the timer was last set (its expiry less the state's
    /// timeout).
    pub fn save(&self, now: u64) -> impl Iterator<Item = SavedFlow> + '_ {
        self.iter_slots()
            .filter(move |&(s, _)| self.expires(s) > now)
            .map(move |(s, f)| {
                let expires = self.expires(s);
                let set_at = expires.saturating_sub(self.timeout(f.proto, f.state));
                SavedFlow {
                    orig: f.orig(),
                    reply: f.reply(),
                    state: f.state,
                    fins: f.fins,
                    policy: f.policy,
                    ended: f.ended(),
                    src_identity: f.src_identity,
                    dst_identity: f.dst_identity,
                    nat: f.nat(),
                    packets: f.packets().map(u64::from),
                    bytes: [0, 0],
                    age_ns: 0,
                    idle_ns: now.saturating_sub(set_at),
                    remaining_ns: expires - now,
                }
            })
    }

    /// Inserts a flow of a snapshot, its timers made absolute again on this table's clock.
    /// Its generation is 0 (never a published generation), so its first packet re-checks its
    /// backend and policy against the running tables ([`Entry::generation`]): the flow keeps
    /// its backend while that backend still serves the service, whatever Maglev would pick
    /// now, and ends `backend-gone` otherwise. Same rules as [`Conntrack::create`] for
    /// conflicts and a full table.
    pub fn restore_saved(&mut self, f: &SavedFlow, now: u64) -> Result<u32, DropReason> {
        // The source NAT is the reply key's destination when that is not the client.
        let snat = ((f.reply.dst, f.reply.dport) != (f.orig.src, f.orig.sport)).then_some(Snat {
            addr: f.reply.dst,
            port: f.reply.dport,
        });
        if !consistent(&f.orig, &f.reply, f.nat, snat) {
            // A snapshot this table could not have written (the reply key is derived).
            self.stats.key_conflicts += 1;
            return Err(DropReason::CtInvalid);
        }
        if self.contains(&f.orig) || self.contains(&f.reply) {
            self.stats.key_conflicts += 1;
            return Err(DropReason::CtInvalid);
        }
        let init = Init {
            state: f.state,
            fins: f.fins,
            expires: now.saturating_add(f.remaining_ns),
            src_identity: f.src_identity,
            dst_identity: f.dst_identity,
            policy: f.policy,
            ended: f.ended,
            generation: 0,
            packets: f.packets.map(|p| p.min(u64::from(u32::MAX)) as u32),
            fast: None,
        };
        let (h_orig, h_reply) = (self.hash(&f.orig), self.hash(&f.reply));
        self.insert(&f.orig, f.nat, snat, init, h_orig, h_reply, now)
    }

    /// Accounts a packet that changes no connection state and returns `true`; or, for any
    /// other packet, changes nothing and returns `false` (the caller takes the full path, which
    /// calls [`Self::on_packet`]). Steady: a TCP packet without SYN/FIN/RST of an established
    /// flow with no FIN seen (or of a handshake, from the side that waits), or a packet of a
    /// datagram flow that is not closing. The established fast path's whole conntrack update.
    #[inline(always)]
    pub fn touch_steady(
        &mut self,
        slot: u32,
        dir: Dir,
        tcp_flags: u8,
        _len: usize,
        now: u64,
    ) -> bool {
        let Some(e) = self.slots.get_mut(slot as usize) else {
            return false;
        };
        let Some(timeout) = steady_timeout(e, dir, tcp_flags, &self.cfg) else {
            return false;
        };
        let p = &mut e.packets[dir as usize];
        *p = p.wrapping_add(1);
        if *p == 0 {
            self.carry(slot, dir);
        }
        if let Some(d) = self.deadline.get_mut(slot as usize) {
            *d = now + timeout;
        }
        true
    }

    /// The established lane's whole conntrack step for a packet of the IPv4 flow in `slot`
    /// (found by its key in direction `dir`): `None`, nothing changed, unless the flow is not
    /// ended and not expired, direction `dir`'s fast path was recorded under `epoch` for
    /// ingress `iface`, and the packet is steady ([`Self::touch_steady`]); then the packet is
    /// counted, the timer renewed, and the hot line returned for the rewrite and the outcome.
    /// What `entry`, `expires` and `touch_steady` do in turn for the other fast path, through
    /// one bounds check of the slab and one of the timers (the lane's cost, bench/RESULTS.md).
    #[inline(always)]
    pub fn touch_lane(
        &mut self,
        slot: u32,
        dir: Dir,
        epoch: u32,
        iface: u16,
        tcp_flags: u8,
        now: u64,
    ) -> Option<&Entry> {
        let i = slot as usize;
        let (Some(e), Some(d)) = (self.slots.get_mut(i), self.deadline.get_mut(i)) else {
            return None;
        };
        // An IPv6 flow (never found by an IPv4 key) and an ended one take the other paths.
        if e.fast_epoch != epoch
            || e.hops[dir as usize].ingress != iface
            || e.flags & (ENDED | V6) != 0
            || *d <= now
        {
            return None;
        }
        let timeout = steady_timeout(e, dir, tcp_flags, &self.cfg)?;
        let p = &mut e.packets[dir as usize];
        *p = p.wrapping_add(1);
        if *p == 0 {
            carry_cold(&mut self.cold, slot, dir);
        }
        *d = now + timeout;
        Some(e)
    }

    /// A direction's low packet count wrapped: 256 more in the cold part.
    #[cold]
    #[inline(never)]
    fn carry(&mut self, slot: u32, dir: Dir) {
        carry_cold(&mut self.cold, slot, dir);
    }

    /// Counts a packet of `slot` in direction `dir`.
    #[inline(always)]
    fn count(&mut self, slot: u32, dir: Dir) {
        if let Some(e) = self.hot_mut(slot) {
            let p = &mut e.packets[dir as usize];
            *p = p.wrapping_add(1);
            if *p == 0 {
                self.carry(slot, dir);
            }
        }
    }

    /// Accounts a packet of an existing flow and advances its TCP state and timer.
    #[inline]
    pub fn on_packet(&mut self, slot: u32, dir: Dir, tcp_flags: u8, len: usize, now: u64) {
        // The common case first: a TCP packet without SYN/FIN/RST in a state it cannot move
        // (established, or the handshake waiting on the other side), or a datagram flow's
        // packet, changes no state and no closing-list position; only the timer moves.
        let Some(e) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let proto = e.proto;
        let steady = !e.in_closing()
            && !e.state.closing()
            && if proto == PROTO_TCP {
                tcp_flags & (F::SYN | F::FIN | F::RST) == 0
                    && e.fins == 0
                    && matches!(
                        (e.state, dir),
                        (FlowState::Established, _)
                            | (FlowState::SynSent, Dir::Orig)
                            | (FlowState::SynRecv, Dir::Reply)
                    )
            } else {
                true
            };
        if steady {
            let state = e.state;
            self.count(slot, dir);
            let timeout = self.timeout(proto, state);
            self.deadline[slot as usize] = now + timeout;
            return;
        }
        self.on_packet_general(slot, dir, tcp_flags, len, now);
    }

    #[inline(never)]
    fn on_packet_general(&mut self, slot: u32, dir: Dir, tcp_flags: u8, _len: usize, now: u64) {
        self.count(slot, dir);
        let Some(e) = self.hot_mut(slot) else {
            return;
        };
        let proto = e.proto;
        let new_state = if proto == PROTO_TCP {
            tcp_transition(e, dir, tcp_flags)
        } else {
            e.state
        };
        e.state = new_state;
        let was = e.in_closing();
        let timeout = self.timeout(proto, new_state);
        self.deadline[slot as usize] = now + timeout;
        if new_state.closing() {
            // Move to the tail: the list stays ordered by last activity.
            if was {
                self.closing_unlink(slot);
            }
            self.closing_push(slot);
        } else if was {
            self.closing_unlink(slot);
        }
    }

    /// Ends a flow by rule: it stays as a CLOSE tombstone (see [`Entry::ended`]).
    pub fn end(&mut self, slot: u32, reason: DropReason, now: u64) {
        let timeout = self.cfg.close;
        let Some(mut e) = self.entry_mut(slot) else {
            return;
        };
        e.c.ended = Some(reason);
        e.flags |= ENDED;
        e.state = FlowState::Close;
        let was = e.in_closing();
        self.deadline[slot as usize] = now + timeout;
        if was {
            self.closing_unlink(slot);
        }
        self.closing_push(slot);
    }

    /// Whether a TCP packet would open a new connection on a finished flow's 5-tuple
    /// (port reuse): the old entry should be replaced, not continued.
    pub fn is_reopen(&self, slot: u32, dir: Dir, tcp_flags: u8) -> bool {
        let Some(e) = self.slots.get(slot as usize) else {
            return false;
        };
        e.proto == PROTO_TCP
            && dir == Dir::Orig
            && tcp_flags & (F::SYN | F::ACK | F::RST) == F::SYN
            && matches!(e.state, FlowState::Close | FlowState::TimeWait)
            || (e.is_ended() && dir == Dir::Orig && e.proto != PROTO_TCP)
    }

    pub fn remove(&mut self, slot: u32) {
        let Some(e) = self.slots.get(slot as usize) else {
            return;
        };
        if !e.live() {
            return;
        }
        let cell = table_cell(e);
        if e.in_closing() {
            self.closing_unlink(slot);
        }
        if let Some(i) = cell {
            SnatAddrs::release(i);
        }
        self.index_remove(slot, Dir::Orig);
        self.index_remove(slot, Dir::Reply);
        self.push_free(slot);
        self.live -= 1;
    }

    /// Puts a slot on the free list (the most recently freed is taken first).
    fn push_free(&mut self, slot: u32) {
        let i = slot as usize;
        let Some(e) = self.slots.get(i) else {
            return;
        };
        if e.is_v6() {
            let id = e.v6_id();
            self.v6.release(id);
        }
        self.slots[i] = Entry::default();
        self.cold[i] = Cold {
            next: self.free_head,
            ..EMPTY_COLD
        };
        self.deadline[i] = u64::MAX;
        self.free_head = slot;
    }

    /// Reclaims expired entries, looking at no more than `budget` slots (call per burst with a
    /// small budget; a full sweep is `budget = capacity`). Returns how many were reclaimed.
    pub fn gc_step(&mut self, now: u64, budget: usize) -> usize {
        let n = self.deadline.len();
        let mut left = budget.min(n);
        let mut reclaimed = 0;
        // The cursor in a local; the budget's slots as at most two runs (the wrap tested per
        // run, not per slot), each first scanned as a slice for an expired timer (a compare and
        // a `min` per slot, no bounds check): this runs on every burst and almost always finds
        // nothing. A run that has one is walked slot by slot (`remove` is rare, out of line).
        let mut s = self.gc_cursor;
        while left > 0 {
            if s >= n {
                s = 0;
            }
            let end = n.min(s + left);
            let Some(run) = self.deadline.get(s..end) else {
                break;
            };
            let first = run.iter().fold(u64::MAX, |m, &d| m.min(d));
            if first <= now {
                for i in s..end {
                    if self.deadline.get(i).is_some_and(|&d| d <= now) {
                        if self.slots.get(i).is_some_and(Entry::offered_any) {
                            self.defer_offered(i, now);
                            continue;
                        }
                        self.remove(i as u32);
                        self.stats.expired += 1;
                        reclaimed += 1;
                    }
                }
            }
            left -= end - s;
            s = end;
        }
        self.gc_cursor = s;
        reclaimed
    }

    /// An offered entry whose timer ran out: the kernel may have forwarded its packets since
    /// (they never reach conntrack), so it is set aside for the worker, which asks the kernel
    /// ([`crate::offload`]) and then refreshes or removes it. Its timer moves by
    /// [`OFFLOAD_DUE_GRACE`] meanwhile (also when the list is full: it comes back later).
    #[cold]
    #[inline(never)]
    fn defer_offered(&mut self, i: usize, now: u64) {
        if self.offload_due.len() < OFFLOAD_DUE_MAX {
            if self.offload_due.capacity() == 0 {
                self.offload_due.reserve_exact(OFFLOAD_DUE_MAX);
            }
            self.offload_due.push(i as u32);
        }
        if let Some(d) = self.deadline.get_mut(i) {
            *d = now + OFFLOAD_DUE_GRACE;
        }
    }

    /// The offered entries whose timer ran out since the last call (slots; the caller checks
    /// each is still live and offered), handed to `f` and forgotten.
    pub fn take_offload_due(&mut self, mut f: impl FnMut(&mut Conntrack, u32)) {
        if self.offload_due.is_empty() {
            return;
        }
        let due = std::mem::take(&mut self.offload_due);
        for &slot in &due {
            f(self, slot);
        }
        // The list's allocation is kept (cleared, not freed).
        self.offload_due = due;
        self.offload_due.clear();
    }

    /// Marks direction `dir` of `slot` offered to the kernel's flow cache, or not.
    pub fn set_offered(&mut self, slot: u32, dir: Dir, on: bool) {
        if let Some(e) = self.slots.get_mut(slot as usize) {
            let bit = OFFERED << dir as u8;
            if on {
                e.flags |= bit;
            } else {
                e.flags &= !bit;
            }
        }
    }

    /// Forgets every entry's offers (the kernel's flow cache was cleared). Walks the slab:
    /// called per publication with a fast path only.
    pub fn clear_offered(&mut self) {
        for e in &mut self.slots {
            e.flags &= !OFFERED_BOTH;
        }
    }

    /// Sets a live flow's timer (an offered flow the kernel forwarded packets of).
    pub fn set_expiry(&mut self, slot: u32, expires: u64) {
        if self.slots.get(slot as usize).is_some_and(|e| e.live()) {
            if let Some(d) = self.deadline.get_mut(slot as usize) {
                *d = expires;
            }
        }
    }

    /// The timeout of a flow in its current state (what its next packet would give it).
    pub fn timeout_of(&self, slot: u32) -> u64 {
        self.slots
            .get(slot as usize)
            .map_or(0, |e| self.timeout(e.proto, e.state))
    }

    /// Whether `slot` holds a live flow.
    pub fn is_live(&self, slot: u32) -> bool {
        self.slots.get(slot as usize).is_some_and(|e| e.live())
    }

    /// Removes every flow (operator `ct flush`).
    pub fn flush(&mut self) {
        for s in 0..self.slots.len() as u32 {
            self.remove(s);
        }
    }

    /// Live flows, in slot order (for dumps; not for the hot path).
    pub fn iter(&self) -> impl Iterator<Item = FlowRef<'_>> {
        self.iter_slots().map(|(_, f)| f)
    }

    /// Live flows with their slots, in slot order.
    pub fn iter_slots(&self) -> impl Iterator<Item = (u32, FlowRef<'_>)> {
        (0..self.slots.len() as u32).filter_map(|s| {
            flow_in(&self.slots, &self.cold, &self.v6, s)
                .filter(|f| f.live())
                .map(|f| (s, f))
        })
    }

    /// A slot for a new entry: a freed one (the most recently freed first), else the next one of
    /// the reservation never used yet, else room made by [`Self::make_room`]. Slots are handed out in
    /// the same order as from a slab written up front and a free list of every slot.
    #[inline]
    fn take_slot(&mut self, now: u64) -> Result<u32, DropReason> {
        if let Some(s) = self.pop_free() {
            return Ok(s);
        }
        let used = self.slots.len();
        if used < self.capacity() {
            // The next slot of the reservation: [`Self::put`] pushes the entry into it.
            return Ok(used as u32);
        }
        self.make_room(now)
    }

    /// Writes a new entry and its timer into a slot from [`Self::take_slot`] (nothing taken in
    /// between): a reused slot is overwritten, the next one of the reservation is pushed (no
    /// reallocation: `new` reserved the capacity). The entry is written once, in place.
    #[inline]
    fn put(&mut self, slot: u32, e: Entry, c: Cold, expires: u64) {
        let i = slot as usize;
        if i == self.slots.len() {
            self.slots.push(e);
            self.cold.push(c);
            self.deadline.push(expires);
        } else {
            self.slots[i] = e;
            self.cold[i] = c;
            self.deadline[i] = expires;
        }
    }

    /// The most recently freed slot, taken off the free list.
    #[inline]
    fn pop_free(&mut self) -> Option<u32> {
        let s = self.free_head;
        self.free_head = self.cold.get(s as usize)?.next;
        Some(s)
    }

    fn make_room(&mut self, now: u64) -> Result<u32, DropReason> {
        if self.gc_step(now, RECLAIM_SCAN) > 0 {
            if let Some(s) = self.pop_free() {
                return Ok(s);
            }
        }
        if self.closing_head != NIL {
            let victim = self.closing_head;
            self.remove(victim);
            self.stats.evicted += 1;
            if let Some(s) = self.pop_free() {
                return Ok(s);
            }
        }
        self.stats.full_drops += 1;
        Err(DropReason::CtFull)
    }

    fn timeout(&self, proto: u8, state: FlowState) -> u64 {
        let c = &self.cfg;
        match state {
            FlowState::SynSent => c.syn_sent,
            FlowState::SynRecv => c.syn_recv,
            FlowState::Established => c.established,
            FlowState::FinWait => c.fin_wait,
            FlowState::Close => c.close,
            FlowState::TimeWait => c.time_wait,
            FlowState::Open => match proto {
                PROTO_ICMP | PROTO_ICMPV6 => c.icmp,
                _ => c.udp,
            },
        }
    }

    fn closing_push(&mut self, slot: u32) {
        let tail = self.closing_tail;
        let Some(mut e) = self.entry_mut(slot) else {
            return;
        };
        e.c.prev = tail;
        e.c.next = NIL;
        e.flags |= IN_CLOSING;
        if tail == NIL {
            self.closing_head = slot;
        } else if let Some(t) = self.cold_mut(tail) {
            t.next = slot;
        }
        self.closing_tail = slot;
    }

    fn closing_unlink(&mut self, slot: u32) {
        let Some(mut e) = self.entry_mut(slot) else {
            return;
        };
        e.flags &= !IN_CLOSING;
        let (prev, next) = (e.c.prev, e.c.next);
        match self.cold_mut(prev) {
            Some(p) => p.next = next,
            None => self.closing_head = next,
        }
        match self.cold_mut(next) {
            Some(n) => n.prev = prev,
            None => self.closing_tail = prev,
        }
    }
}

/// What [`Conntrack::entry`] reads for a slot that holds no flow.
static EMPTY: Entry = Entry {
    src: [0; 4],
    dst: [0; 4],
    sport: 0,
    dport: 0,
    proto: 0,
    flags: 0,
    state: FlowState::Open,
    fins: 0,
    backend: [0; 4],
    backend_port: 0,
    snat_port: 0,
    service: 0,
    src_identity: 0,
    dst_identity: 0,
    fast_epoch: 0,
    hops: [NONE_HOP; 2],
    policy: PolicyVerdict::None,
    snat_from: 0,
    packets: [0; 2],
};

#[inline]
fn key_of_flow(f: &FlowRef<'_>, dir: Dir) -> FlowKey {
    match dir {
        Dir::Orig => f.orig(),
        Dir::Reply => f.reply(),
    }
}

/// The key an index value stands for (index removal only).
#[inline]
fn key_of(slots: &[Entry], cold: &[Cold], v6: &V6Store, v: u32) -> Option<FlowKey> {
    flow_in(slots, cold, v6, v >> 1).map(|f| key_of_flow(&f, dir_of(v)))
}

/// A direction's low packet count wrapped: 256 more in `slot`'s cold part.
#[cold]
#[inline(never)]
fn carry_cold(cold: &mut [Cold], slot: u32, dir: Dir) {
    if let Some(c) = cold.get_mut(slot as usize) {
        let p = &mut c.packets[dir as usize];
        *p = p.wrapping_add(256);
    }
}

/// The timeout a steady packet of `e` in direction `dir` renews (see
/// [`Conntrack::touch_steady`]); `None`: the packet is not steady.
#[inline(always)]
fn steady_timeout(e: &Entry, dir: Dir, tcp_flags: u8, cfg: &CtConfig) -> Option<u64> {
    if e.proto == PROTO_TCP {
        let steady = tcp_flags & (F::SYN | F::FIN | F::RST) == 0
            && e.fins == 0
            && matches!(
                (e.state, dir),
                (FlowState::Established, _)
                    | (FlowState::SynSent, Dir::Orig)
                    | (FlowState::SynRecv, Dir::Reply)
            );
        if !steady {
            return None;
        }
        Some(match e.state {
            FlowState::Established => cfg.established,
            FlowState::SynSent => cfg.syn_sent,
            _ => cfg.syn_recv,
        })
    } else {
        if e.in_closing() || e.state != FlowState::Open {
            return None;
        }
        Some(match e.proto {
            PROTO_ICMP | PROTO_ICMPV6 => cfg.icmp,
            _ => cfg.udp,
        })
    }
}

/// Whether the index value `v` stands for `key`: IPv4 flows in line, the rest out of line.
#[inline(always)]
fn key_is(slots: &[Entry], cold: &[Cold], v6: &V6Store, v: u32, key: &FlowKey) -> bool {
    match slots
        .get((v >> 1) as usize)
        .map(|e| e.has_key_v4(dir_of(v), key))
    {
        Some(Some(is)) => is,
        Some(None) => key_is_general(slots, cold, v6, v, key),
        None => false,
    }
}

/// [`key_is`] for IPv6 flows and flows translated to a [`SnatAddrs`] address.
#[cold]
#[inline(never)]
fn key_is_general(slots: &[Entry], cold: &[Cold], v6: &V6Store, v: u32, key: &FlowKey) -> bool {
    flow_in(slots, cold, v6, v >> 1).is_some_and(|f| f.has_key(dir_of(v), key))
}

#[inline(always)]
fn dir_of(v: u32) -> Dir {
    if v & 1 == 0 {
        Dir::Orig
    } else {
        Dir::Reply
    }
}

/// Whether `reply` is what an entry of `orig`, `nat` and `snat` derives (the reverse of the
/// translated original key, the VIP being the original destination). A source NAT exists only
/// with a destination NAT (service flows); every address of a flow is of one family.
#[inline]
fn consistent(orig: &FlowKey, reply: &FlowKey, nat: Option<Nat>, snat: Option<Snat>) -> bool {
    // One family per flow: the entry keeps IPv4 addresses in line and IPv6 ones in a slot.
    if orig.dst.v6 != orig.src.v6 {
        return false;
    }
    let (src, sport) = match nat {
        Some(n) if n.vip != orig.dst || n.vip_port != orig.dport || n.backend.v6 != orig.src.v6 => {
            return false
        }
        Some(n) => (n.backend, n.backend_port),
        None => (orig.dst, orig.dport),
    };
    let (dst, dport) = match snat {
        Some(s) if nat.is_none() || s.addr.v6 != orig.src.v6 => return false,
        Some(s) => (s.addr, s.port),
        None => (orig.src, orig.sport),
    };
    reply.src == src
        && reply.sport == sport
        && reply.dst == dst
        && reply.dport == dport
        && reply.proto == orig.proto
}

/// The 64×64→128-bit multiply folded to 64 bits (foldhash's and wyhash's mixing step).
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ (p >> 64) as u64
}

fn hash_with(seed: [u64; 4], key: &FlowKey) -> u64 {
    Conntrack::hash_seeded(seed, key)
}

/// Per-process random seed words, from std's randomly keyed hasher (seeded from the OS).
fn random_seed() -> [u64; 4] {
    use std::hash::BuildHasher;
    let rs = std::collections::hash_map::RandomState::new();
    let mut out = [0u64; 4];
    for (i, w) in out.iter_mut().enumerate() {
        // Odd multipliers keep fold_mul from collapsing on a zero word.
        *w = rs.hash_one(i as u64) | 1;
    }
    out
}

fn initial_tcp_state(flags: u8) -> FlowState {
    if flags & F::RST != 0 {
        FlowState::Close
    } else if flags & (F::SYN | F::ACK) == F::SYN {
        FlowState::SynSent
    } else if flags & (F::SYN | F::ACK) == F::SYN | F::ACK {
        FlowState::SynRecv
    } else if flags & F::FIN != 0 {
        FlowState::FinWait
    } else {
        // Mid-stream pickup (a flow that predates us, e.g. after a restart).
        FlowState::Established
    }
}

/// The TCP state machine. Deliberately loose like Linux with `nf_conntrack_tcp_loose`: it
/// follows the handshake and teardown without checking sequence windows.
fn tcp_transition(e: &mut Entry, dir: Dir, flags: u8) -> FlowState {
    if flags & F::RST != 0 {
        return FlowState::Close;
    }
    if flags & F::FIN != 0 {
        e.fins |= 1 << (dir as u8);
    }
    let syn = flags & F::SYN != 0;
    let ack = flags & F::ACK != 0;
    match e.state {
        FlowState::SynSent if dir == Dir::Reply && syn && ack => FlowState::SynRecv,
        FlowState::SynSent if dir == Dir::Reply && ack && !syn => FlowState::Established,
        FlowState::SynRecv if dir == Dir::Orig && ack && !syn => FlowState::Established,
        FlowState::SynSent | FlowState::SynRecv | FlowState::Established if e.fins != 0 => {
            FlowState::FinWait
        }
        FlowState::FinWait if e.fins == 3 => FlowState::TimeWait,
        s => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::PROTO_UDP;

    fn cfg(max: u32) -> CtConfig {
        CtConfig::from_state(&nodeplane_state::ConntrackSettings {
            max_entries: max,
            ..Default::default()
        })
    }

    fn key(i: u16, proto: u8) -> FlowKey {
        FlowKey {
            src: Addr::v4([10, 0, 0, 1]),
            dst: Addr::v4([10, 0, 0, 2]),
            sport: 1000 + i,
            dport: 80,
            proto,
        }
    }

    #[test]
    fn the_lanes_ipv4_hash_is_the_keys_hash() {
        let ct = Conntrack::new(&cfg(16));
        let v4 = |a: &Addr| -> [u8; 4] { a.bytes[..4].try_into().expect("4 bytes") };
        for (i, proto) in [(0, PROTO_TCP), (7, PROTO_UDP), (65000, PROTO_TCP)] {
            let mut k = key(i, proto);
            k.src = Addr::v4([192, 168, (i >> 8) as u8, i as u8]);
            for k in [k, k.reversed()] {
                let t = V4Tuple {
                    src: v4(&k.src),
                    dst: v4(&k.dst),
                    sport: k.sport,
                    dport: k.dport,
                    proto: k.proto,
                };
                assert_eq!(ct.hash_v4(&t), ct.hash(&k), "{k:?}");
            }
        }
    }

    /// The flow cache's confirm (`holds_v4`) says yes exactly where the index finds the key:
    /// flows without NAT, with a destination NAT, with a source NAT from each place (the
    /// client, the dialled address, the table), an IPv6 flow, a removed one, the empty cell's
    /// slot; every key of them and near misses, against every slot and direction.
    #[test]
    fn holds_v4_is_what_the_index_finds() {
        let mut ct = Conntrack::new(&cfg(32));
        let v4 = |a: &Addr| -> [u8; 4] { a.bytes[..4].try_into().expect("4 bytes") };
        let backend = Addr::v4([10, 0, 2, 9]);
        let table_addr = Addr::v4([192, 168, 100, 3]);
        let mut keys = Vec::new();
        let mut slots = Vec::new();
        for i in 0..6u16 {
            let k = key(40 + i, if i == 1 { PROTO_UDP } else { PROTO_TCP });
            let mut f = flow(k);
            if i >= 1 {
                f.nat = Some(Nat {
                    vip: k.dst,
                    vip_port: k.dport,
                    backend,
                    backend_port: 8080,
                    service: 0,
                });
                f.reply = FlowKey {
                    src: backend,
                    dst: k.src,
                    sport: 8080,
                    dport: k.sport,
                    proto: k.proto,
                };
            }
            if let Some(addr) = [None, None, Some(k.src), Some(k.dst), Some(table_addr)]
                .get(usize::from(i))
                .copied()
                .flatten()
            {
                f.snat = Some(Snat {
                    addr,
                    port: 61000 + i,
                });
                f.reply.dst = addr;
                f.reply.dport = 61000 + i;
            }
            slots.push(ct.create(&f, F::SYN, 60, 0).unwrap());
            for k in [f.orig, f.reply] {
                keys.push(k);
                keys.push(k.reversed());
                keys.push(FlowKey {
                    sport: k.sport.wrapping_add(1),
                    ..k
                });
                keys.push(FlowKey { proto: 17, ..k });
            }
        }
        let mut k6 = key(60, PROTO_TCP);
        k6.src = Addr::from("fd00::10".parse::<std::net::IpAddr>().unwrap());
        k6.dst = Addr::from("fd00:96::1".parse::<std::net::IpAddr>().unwrap());
        slots.push(ct.create(&flow(k6), F::SYN, 60, 0).unwrap());
        let gone = ct.create(&flow(key(61, PROTO_TCP)), F::SYN, 60, 0).unwrap();
        ct.remove(gone);
        keys.push(key(61, PROTO_TCP));
        slots.extend([gone, u32::MAX >> 1]);
        let mut hits = 0;
        for k in &keys {
            let t = V4Tuple {
                src: v4(&k.src),
                dst: v4(&k.dst),
                sport: k.sport,
                dport: k.dport,
                proto: k.proto,
            };
            let found = ct.find(k);
            for &s in &slots {
                for d in [Dir::Orig, Dir::Reply] {
                    let want = found == Some((s, d));
                    hits += usize::from(want);
                    assert_eq!(ct.holds_v4(s, d, &t), want, "{k:?} slot {s} {d:?}");
                }
            }
        }
        // Each flow's two keys at least (a near miss of one flow may be another's key).
        assert!(hits >= 12, "{hits} hits");
    }

    fn flow(k: FlowKey) -> NewFlow {
        NewFlow {
            orig: k,
            reply: k.reversed(),
            nat: None,
            snat: None,
            src_identity: 0,
            dst_identity: 0,
            policy: PolicyVerdict::None,
            generation: 0,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn tcp_handshake_and_teardown() {
        let mut ct = Conntrack::new(&cfg(16));
        let k = key(1, PROTO_TCP);
        let s = ct.create(&flow(k), F::SYN, 60, 0).unwrap();
        assert_eq!(ct.entry(s).state, FlowState::SynSent);
        assert_eq!(ct.lookup(&k.reversed(), 1).unwrap(), (s, Dir::Reply));
        ct.on_packet(s, Dir::Reply, F::SYN | F::ACK, 60, 1);
        assert_eq!(ct.entry(s).state, FlowState::SynRecv);
        ct.on_packet(s, Dir::Orig, F::ACK, 60, 2);
        assert_eq!(ct.entry(s).state, FlowState::Established);
        assert_eq!(ct.expires(s), 2 + 21_600 * S);
        ct.on_packet(s, Dir::Orig, F::FIN | F::ACK, 60, 3);
        assert_eq!(ct.entry(s).state, FlowState::FinWait);
        ct.on_packet(s, Dir::Reply, F::FIN | F::ACK, 60, 4);
        assert_eq!(ct.entry(s).state, FlowState::TimeWait);
        assert!(ct.is_reopen(s, Dir::Orig, F::SYN));
        // TIME_WAIT expires after its timeout.
        assert!(ct.lookup(&k, 4 + 120 * S).is_none());
        assert!(ct.is_empty());
    }

    /// The slab is reserved, not written, at start, and grows into its reservation: slots are
    /// handed out in order, a freed slot first, and the table never reallocates.
    #[test]
    fn slab_grows_in_slot_order_within_its_reservation() {
        let mut ct = Conntrack::new(&cfg(4));
        assert_eq!((ct.slots.len(), ct.capacity()), (0, 4), "nothing written");
        let base = ct.slots.as_ptr();
        let s: Vec<u32> = (1..=3)
            .map(|i| ct.create(&flow(key(i, PROTO_UDP)), 0, 60, 0).unwrap())
            .collect();
        assert_eq!(s, [0, 1, 2]);
        ct.remove(1);
        assert_eq!(ct.create(&flow(key(4, PROTO_UDP)), 0, 60, 0), Ok(1));
        assert_eq!(ct.create(&flow(key(5, PROTO_UDP)), 0, 60, 0), Ok(3));
        assert_eq!(ct.slots.len(), 4);
        assert_eq!(ct.deadline.len(), 4);
        assert_eq!(
            ct.create(&flow(key(6, PROTO_UDP)), 0, 60, 0),
            Err(DropReason::CtFull)
        );
        assert_eq!(ct.slots.as_ptr(), base, "no reallocation");
    }

    #[test]
    fn full_table_evicts_oldest_closing_then_drops() {
        let mut ct = Conntrack::new(&cfg(3));
        let a = ct.create(&flow(key(1, PROTO_TCP)), F::ACK, 60, 0).unwrap();
        let b = ct.create(&flow(key(2, PROTO_TCP)), F::ACK, 60, 1).unwrap();
        let _c = ct.create(&flow(key(3, PROTO_TCP)), F::ACK, 60, 2).unwrap();
        // All established: a new flow is refused, established ones stay.
        assert_eq!(
            ct.create(&flow(key(4, PROTO_TCP)), F::SYN, 60, 3),
            Err(DropReason::CtFull)
        );
        assert_eq!(ct.len(), 3);
        // b then a start closing; a is most recently active, so b is the oldest closing.
        ct.on_packet(b, Dir::Orig, F::FIN | F::ACK, 60, 4);
        ct.on_packet(a, Dir::Orig, F::FIN | F::ACK, 60, 5);
        ct.create(&flow(key(4, PROTO_TCP)), F::SYN, 60, 6).unwrap();
        assert!(ct.lookup(&key(2, PROTO_TCP), 7).is_none(), "b evicted");
        assert!(ct.lookup(&key(1, PROTO_TCP), 7).is_some(), "a kept");
        assert_eq!(ct.stats.evicted, 1);
    }

    #[test]
    fn full_table_reclaims_expired_first() {
        let mut ct = Conntrack::new(&cfg(2));
        ct.create(&flow(key(1, PROTO_UDP)), 0, 60, 0).unwrap();
        ct.create(&flow(key(2, PROTO_UDP)), 0, 60, 0).unwrap();
        // UDP timeout is 60 s: at 61 s both are expired and a new flow fits.
        ct.create(&flow(key(3, PROTO_UDP)), 0, 60, 61 * S).unwrap();
        assert_eq!(ct.stats.evicted, 0);
        assert!(ct.stats.expired >= 1);
    }

    #[test]
    fn gc_sweep_reclaims_and_slots_are_reused() {
        let mut ct = Conntrack::new(&cfg(1024));
        for i in 0..1000 {
            ct.create(&flow(key(i, PROTO_UDP)), 0, 60, 0).unwrap();
        }
        assert_eq!(ct.len(), 1000);
        assert_eq!(ct.gc_step(30 * S, 1024), 0);
        assert_eq!(ct.gc_step(61 * S, 1024), 1000);
        assert!(ct.is_empty());
        for i in 0..1024 {
            ct.create(&flow(key(i, PROTO_UDP)), 0, 60, 62 * S).unwrap();
        }
    }

    /// The GC's deadline array mirrors every live entry's timer through all transitions.
    #[test]
    fn deadlines_mirror_entries() {
        let mut ct = Conntrack::new(&cfg(8));
        // Free slots (and IPv6 address slots) have no deadline: the GC never looks at them.
        let check = |ct: &Conntrack| {
            for (i, e) in ct.slots.iter().enumerate() {
                if !e.live() {
                    assert_eq!(ct.deadline[i], u64::MAX, "slot {i}");
                }
            }
            assert_eq!(ct.deadline.len(), ct.slots.len());
        };
        let a = ct.create(&flow(key(1, PROTO_TCP)), F::SYN, 60, 0).unwrap();
        let b = ct.create(&flow(key(2, PROTO_UDP)), 0, 60, 0).unwrap();
        check(&ct);
        ct.on_packet(a, Dir::Reply, F::SYN | F::ACK, 60, 5);
        ct.on_packet(a, Dir::Orig, F::ACK, 60, 6);
        ct.on_packet(b, Dir::Reply, 0, 60, 7);
        check(&ct);
        ct.end(b, DropReason::BackendGone, 8);
        check(&ct);
        ct.remove(a);
        check(&ct);
        let mut other = Conntrack::new(&cfg(8));
        let r = other.restore(ct.entry(b), ct.expires(b), 9).unwrap();
        assert_eq!(other.expires(r), ct.expires(b));
        check(&other);
        ct.gc_step(u64::MAX - 1, 8);
        check(&ct);
        assert!(ct.is_empty());
    }

    /// Flows coming and going through a nearly full table (removal shifts index runs back,
    /// freed slots are reused through the entries' own links): every live flow stays findable
    /// by both keys, nothing else is, and the index holds exactly two keys per live flow.
    #[test]
    fn churn_keeps_every_live_key_findable() {
        let mut ct = Conntrack::new(&cfg(256));
        let mut live: Vec<(FlowKey, u32)> = Vec::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for step in 0..5000u32 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if live.len() == 256 || (!live.is_empty() && rng % 3 == 0) {
                let (_, s) = live.swap_remove((rng >> 8) as usize % live.len());
                ct.remove(s);
            } else {
                let k = key(step as u16, PROTO_UDP);
                live.push((k, ct.create(&flow(k), 0, 60, 0).unwrap()));
            }
            if step % 50 == 0 {
                for (k, s) in &live {
                    assert_eq!(ct.find(k), Some((*s, Dir::Orig)), "step {step}");
                    assert_eq!(ct.find(&k.reversed()), Some((*s, Dir::Reply)));
                }
                assert_eq!(ct.index.values().count(), 2 * live.len());
                assert_eq!(ct.len(), live.len());
            }
        }
        assert_eq!(ct.find(&key(60_000, PROTO_UDP)), None);
        assert!(ct.slots.len() <= 256, "freed slots are reused");
    }

    /// An IPv6 flow keeps its addresses in the IPv6 store (allocated only once IPv6 flows
    /// come): one slot per flow whatever the family; found by both keys with its NAT; a slot
    /// reused by an IPv4 flow reads as IPv4 again; a freed record is reused.
    #[test]
    fn ipv6_flows_keep_their_addresses_beside_the_slab() {
        let v6 = |s: &str| Addr::from(s.parse::<std::net::IpAddr>().unwrap());
        let k6 = |sport: u16| FlowKey {
            src: v6("fd00:244::10"),
            dst: v6("fd00:96::1"),
            sport,
            dport: 80,
            proto: PROTO_TCP,
        };
        let nat6 = |k: &FlowKey| {
            let backend = v6("fd00:244:1::21");
            let mut f = flow(*k);
            f.nat = Some(Nat {
                vip: k.dst,
                vip_port: 80,
                backend,
                backend_port: 8080,
                service: 3,
            });
            f.reply = FlowKey {
                src: backend,
                dst: k.src,
                sport: 8080,
                dport: k.sport,
                proto: PROTO_TCP,
            };
            f
        };
        let mut ct = Conntrack::new(&cfg(2));
        assert!(
            ct.v6.chunks.is_empty(),
            "nothing allocated for IPv6 before an IPv6 flow"
        );
        let a = nat6(&k6(1000));
        let s = ct.create(&a, F::SYN, 80, 0).unwrap();
        assert_eq!(ct.slots.len(), 1);
        assert_eq!(ct.entry(s).orig(), a.orig);
        assert_eq!(ct.entry(s).reply(), a.reply);
        assert_eq!(ct.entry(s).nat(), a.nat);
        assert_eq!(ct.lookup(&a.reply, 1), Some((s, Dir::Reply)));
        let b = nat6(&k6(1001));
        let t = ct.create(&b, F::SYN, 80, 0).unwrap();
        assert_eq!(ct.find(&b.reply), Some((t, Dir::Reply)));
        assert_eq!(ct.find(&a.orig), Some((s, Dir::Orig)));
        assert_eq!(
            ct.create(&flow(key(1, PROTO_UDP)), 0, 60, 0),
            Err(DropReason::CtFull)
        );
        let a_id = ct.entry(s).v6_id();
        ct.remove(s);
        let v4 = ct.create(&flow(key(1, PROTO_UDP)), 0, 60, 0).unwrap();
        assert_eq!(v4, s, "the freed slot");
        // The IPv6 store: one chunk, two records handed out, the freed one reused next.
        assert_eq!((ct.v6.chunks.len(), ct.v6.used), (1, 2));
        assert_eq!(ct.v6.free, a_id, "a's record was freed");
        assert_eq!(ct.entry(v4).orig(), key(1, PROTO_UDP));
        assert_eq!(ct.find(&a.orig), None);
        assert_eq!(ct.find(&b.orig), Some((t, Dir::Orig)));
        ct.remove(v4);
        let c = nat6(&k6(1002));
        let u = ct.create(&c, F::SYN, 80, 0).unwrap();
        assert_eq!(ct.entry(u).v6_id(), a_id, "the freed record is reused");
        assert_eq!(ct.v6.used, 2);
        assert_eq!(ct.entry(u).orig(), c.orig);
        assert_eq!(ct.find(&c.reply), Some((u, Dir::Reply)));
        assert_eq!(ct.entry(t).orig(), b.orig, "b's record untouched");
        // A family mix within one flow is refused, not stored half.
        let mut mixed = nat6(&k6(1003));
        mixed.orig.dst = Addr::v4([10, 96, 0, 1]);
        assert_eq!(ct.create(&mixed, F::SYN, 80, 0), Err(DropReason::CtInvalid));
    }

    #[test]
    fn conflicting_key_is_refused() {
        let mut ct = Conntrack::new(&cfg(8));
        let k = key(1, PROTO_UDP);
        ct.create(&flow(k), 0, 60, 0).unwrap();
        // The reverse direction as a new flow: its original key is the first flow's reply key.
        let other = flow(k.reversed());
        assert_eq!(ct.create(&other, 0, 60, 0), Err(DropReason::CtInvalid));
        assert_eq!(ct.stats.key_conflicts, 1);
        assert_eq!(ct.len(), 1);
    }

    /// The entry derives the reply key; a new flow (or a snapshot's flow) whose reply key is
    /// not the reverse of its translated original key is refused, never half-indexed.
    #[test]
    fn inconsistent_reply_key_is_refused() {
        let mut ct = Conntrack::new(&cfg(8));
        let mut f = flow(key(1, PROTO_TCP));
        f.reply.sport += 1;
        assert_eq!(ct.create(&f, F::SYN, 60, 0), Err(DropReason::CtInvalid));
        assert!(ct.is_empty());
        // With NAT: the reply comes from the backend.
        let k = key(2, PROTO_TCP);
        let backend = Addr::v4([10, 0, 1, 9]);
        let mut f = flow(k);
        f.nat = Some(Nat {
            vip: k.dst,
            vip_port: k.dport,
            backend,
            backend_port: 8080,
            service: 0,
        });
        assert_eq!(ct.create(&f, F::SYN, 60, 0), Err(DropReason::CtInvalid));
        f.reply = FlowKey {
            src: backend,
            dst: k.src,
            sport: 8080,
            dport: k.sport,
            proto: PROTO_TCP,
        };
        let s = ct.create(&f, F::SYN, 60, 0).unwrap();
        assert_eq!(ct.entry(s).reply(), f.reply);
        assert_eq!(ct.entry(s).nat(), f.nat);
        assert_eq!(ct.lookup(&f.reply, 1), Some((s, Dir::Reply)));
        assert_eq!(ct.lookup(&k, 1), Some((s, Dir::Orig)));
    }

    /// A source-NATed flow is found by its translated reply key, not by the client's; its
    /// removal frees that key (the SNAT port) at once.
    #[test]
    fn snat_reply_key_is_the_translated_source() {
        let mut ct = Conntrack::new(&cfg(8));
        let k = key(3, PROTO_TCP);
        let backend = Addr::v4([10, 0, 2, 9]);
        let node = Addr::v4([192, 168, 1, 10]);
        let mut f = flow(k);
        f.nat = Some(Nat {
            vip: k.dst,
            vip_port: k.dport,
            backend,
            backend_port: 8080,
            service: 0,
        });
        f.snat = Some(Snat {
            addr: node,
            port: 61001,
        });
        // A reply key toward the client is inconsistent with the source NAT.
        f.reply = FlowKey {
            src: backend,
            dst: k.src,
            sport: 8080,
            dport: k.sport,
            proto: PROTO_TCP,
        };
        assert_eq!(ct.create(&f, F::SYN, 60, 0), Err(DropReason::CtInvalid));
        f.reply.dst = node;
        f.reply.dport = 61001;
        let s = ct.create(&f, F::SYN, 60, 0).unwrap();
        assert_eq!(ct.entry(s).reply(), f.reply);
        assert_eq!(ct.entry(s).snat(), f.snat);
        assert_eq!(ct.lookup(&f.reply, 1), Some((s, Dir::Reply)));
        let untranslated = FlowKey {
            dst: k.src,
            dport: k.sport,
            ..f.reply
        };
        assert_eq!(ct.lookup(&untranslated, 1), None);
        // Saved and restored: the reply key carries the source NAT.
        let saved: Vec<SavedFlow> = ct.save(1).collect();
        let mut other = Conntrack::new(&cfg(8));
        let r = other.restore_saved(&saved[0], 2).unwrap();
        assert_eq!(other.entry(r).snat(), f.snat);
        assert_eq!(other.lookup(&f.reply, 3), Some((r, Dir::Reply)));
        ct.remove(s);
        assert_eq!(ct.find(&f.reply), None);
        // A source NAT without a destination NAT is refused.
        let mut g = flow(key(4, PROTO_UDP));
        g.snat = Some(Snat {
            addr: node,
            port: 61002,
        });
        g.reply.dst = node;
        g.reply.dport = 61002;
        assert_eq!(ct.create(&g, 0, 60, 0), Err(DropReason::CtInvalid));
    }

    /// Each place a translated address can come from (the client, the address it dialled, the
    /// process-wide table) gives it back exactly, in the reply key and in `snat()`, for both
    /// families; the table names one address by one cell.
    #[test]
    fn snat_address_sources_round_trip() {
        let mut ct = Conntrack::new(&cfg(16));
        for (i, v6) in [(10u16, false), (20, true)] {
            let mut k = key(i, PROTO_TCP);
            if v6 {
                k.src = Addr::from("fd00::10".parse::<std::net::IpAddr>().unwrap());
                k.dst = Addr::from("fd00:96::1".parse::<std::net::IpAddr>().unwrap());
            }
            let table_addr = if v6 {
                Addr::from("fd00:100::2".parse::<std::net::IpAddr>().unwrap())
            } else {
                Addr::v4([192, 168, 100, 2])
            };
            for (j, addr) in [k.src, k.dst, table_addr].into_iter().enumerate() {
                let mut k = k;
                k.sport += j as u16;
                let mut f = flow(k);
                let backend = if v6 { k.src } else { Addr::v4([10, 0, 2, 9]) };
                f.nat = Some(Nat {
                    vip: k.dst,
                    vip_port: k.dport,
                    backend,
                    backend_port: 8080,
                    service: 0,
                });
                f.snat = Some(Snat {
                    addr,
                    port: 61000 + j as u16,
                });
                f.reply = FlowKey {
                    src: backend,
                    dst: addr,
                    sport: 8080,
                    dport: 61000 + j as u16,
                    proto: PROTO_TCP,
                };
                let s = ct.create(&f, F::SYN, 60, 0).unwrap();
                assert_eq!(ct.entry(s).snat(), f.snat, "{addr}");
                assert_eq!(ct.entry(s).reply(), f.reply, "{addr}");
                assert_eq!(ct.lookup(&f.reply, 1), Some((s, Dir::Reply)));
            }
            let (a, b) = (SnatAddrs::intern(table_addr), SnatAddrs::intern(table_addr));
            assert_eq!(a, b);
            for i in [a, b].into_iter().flatten() {
                SnatAddrs::release(i);
            }
        }
    }

    /// Workers interning, reading and releasing at once: every reference reads back its own
    /// address, while cells are claimed and reused under them (addresses 198.20.0.0/16 and
    /// 2001:db8:5a::/48, this test's alone; two threads share each address, so a cell is
    /// both found and claimed concurrently).
    #[test]
    fn snat_cells_under_concurrent_workers() {
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                std::thread::spawn(move || {
                    for j in 0..2000u16 {
                        let n = (j % 300) as u8;
                        let addr = if t % 2 == 0 {
                            Addr::v4([198, 20, 0, n])
                        } else {
                            let mut b = [0u8; 16];
                            b[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0x00, 0x5a]);
                            b[14] = 0;
                            b[15] = n;
                            Addr::v6(b)
                        };
                        let i = SnatAddrs::intern(addr).expect("cells to spare");
                        assert_eq!(SnatAddrs::get(i), addr);
                        assert!(SnatAddrs::references(i) >= 1);
                        SnatAddrs::release(i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no thread saw another's address");
        }
    }

    /// A masqueraded flow through address `addr` (port 61000) to a backend.
    fn table_flow(i: u16, addr: Addr) -> NewFlow {
        let k = key(i, PROTO_TCP);
        let backend = Addr::v4([10, 0, 2, 9]);
        let mut f = flow(k);
        f.nat = Some(Nat {
            vip: k.dst,
            vip_port: k.dport,
            backend,
            backend_port: 8080,
            service: 0,
        });
        f.snat = Some(Snat { addr, port: 61000 });
        f.reply = FlowKey {
            src: backend,
            dst: addr,
            sport: 8080,
            dport: 61000,
            proto: PROTO_TCP,
        };
        f
    }

    /// More distinct masquerade addresses over a process's life than the table has cells: a
    /// cell is reused once no entry names it, while a flow that stays keeps its address. (The
    /// table is process-wide: the addresses here, 198.18.0.0/15, are this test's alone, so
    /// tests running beside it take other cells.)
    #[test]
    fn snat_cells_are_reused_once_no_entry_names_them() {
        let mut ct = Conntrack::new(&cfg(64));
        let kept_addr = Addr::v4([198, 19, 0, 1]);
        let kept = ct.create(&table_flow(1, kept_addr), F::SYN, 60, 0).unwrap();
        let kept_cell = table_cell(&ct.entry(kept)).expect("a table cell");
        let n = 3 * SnatAddrs::CAPACITY as u16;
        for j in 0..n {
            let addr = Addr::v4([198, 18, (j >> 8) as u8, j as u8]);
            let f = table_flow(2 + j, addr);
            let s = ct
                .create(&f, F::SYN, 60, 0)
                .unwrap_or_else(|e| panic!("flow {j} through {addr}: {e:?}"));
            let cell = table_cell(&ct.entry(s)).expect("a table cell");
            assert_ne!(cell, kept_cell, "the kept flow's cell is never taken");
            assert_eq!(
                SnatAddrs::references(cell),
                1,
                "only this flow names {addr}"
            );
            assert_eq!(ct.entry(s).snat(), f.snat);
            assert_eq!(ct.lookup(&f.reply, 1), Some((s, Dir::Reply)));
            ct.remove(s);
        }
        assert_eq!(ct.entry(kept).snat().map(|s| s.addr), Some(kept_addr));
        assert_eq!(
            ct.lookup(&table_flow(1, kept_addr).reply, 1),
            Some((kept, Dir::Reply))
        );
        // A restored copy (what-if, snapshot) takes its own reference, and a dropped table
        // gives its entries' references back.
        assert_eq!(SnatAddrs::references(kept_cell), 1);
        let mut copy = Conntrack::new(&cfg(8));
        copy.restore(ct.entry(kept), ct.expires(kept), 1).unwrap();
        let saved: Vec<SavedFlow> = ct.save(1).collect();
        let mut restored = Conntrack::new(&cfg(8));
        restored.restore_saved(&saved[0], 1).unwrap();
        assert_eq!(SnatAddrs::references(kept_cell), 3);
        drop(copy);
        drop(restored);
        assert_eq!(SnatAddrs::references(kept_cell), 1);
        // A flow refused for a full table takes no reference.
        let mut tiny = Conntrack::new(&cfg(1));
        let first = tiny
            .create(&table_flow(900, kept_addr), F::SYN, 60, 0)
            .unwrap();
        assert_eq!(SnatAddrs::references(kept_cell), 2);
        let mut second = table_flow(901, kept_addr);
        second.snat = Some(Snat {
            addr: kept_addr,
            port: 61001,
        });
        second.reply.dport = 61001;
        assert_eq!(tiny.create(&second, F::SYN, 60, 0), Err(DropReason::CtFull));
        assert_eq!(SnatAddrs::references(kept_cell), 2);
        tiny.remove(first);
        ct.remove(kept);
        assert_eq!(SnatAddrs::references(kept_cell), 0);
    }

    /// The packet counters' low bits are in the hot line, the rest in the cold part: a count
    /// past 256 (and a restored one) reads whole.
    #[test]
    fn packet_counts_carry_into_the_cold_part() {
        let mut ct = Conntrack::new(&cfg(4));
        let k = key(1, PROTO_UDP);
        let s = ct.create(&flow(k), 0, 60, 0).unwrap();
        for i in 0..600u64 {
            assert!(ct.touch_steady(s, Dir::Reply, 0, 60, i + 1));
        }
        for _ in 0..299 {
            ct.on_packet(s, Dir::Orig, 0, 60, 700);
        }
        assert_eq!(ct.entry(s).packets(), [300, 600]);
        let saved: Vec<SavedFlow> = ct.save(700).collect();
        let mut other = Conntrack::new(&cfg(4));
        let t = other.restore_saved(&saved[0], 0).unwrap();
        assert_eq!(other.entry(t).packets(), [300, 600]);
        let u = Conntrack::new(&cfg(4)).restore(ct.entry(s), 10_000, 700);
        assert!(u.is_ok());
    }
}

#[cfg(test)]
mod gc_regression {
    use super::*;
    use crate::flow::PROTO_UDP;

    #[test]
    fn full_sweep_without_expiry_keeps_table_full() {
        let cfg = CtConfig::from_state(&nodeplane_state::ConntrackSettings {
            max_entries: 1024,
            ..Default::default()
        });
        let mut ct = Conntrack::new(&cfg);
        let k = |i: u16| FlowKey {
            src: Addr::v4([10, 0, 0, 1]),
            dst: Addr::v4([10, 0, 0, 2]),
            sport: i,
            dport: 53,
            proto: PROTO_UDP,
        };
        let nf = |key: FlowKey| NewFlow {
            orig: key,
            reply: key.reversed(),
            nat: None,
            snat: None,
            src_identity: 0,
            dst_identity: 0,
            policy: PolicyVerdict::None,
            generation: 0,
        };
        for i in 0..1024 {
            ct.create(&nf(k(i)), 0, 60, 1_000).unwrap();
        }
        assert_eq!(ct.gc_step(2_000, 1024), 0);
        assert_eq!(
            ct.create(&nf(k(5000)), 0, 60, 3_000),
            Err(DropReason::CtFull)
        );
    }
}

#[cfg(test)]
mod layout {
    use super::*;

    /// One cache line whatever the family (an IPv6 flow's addresses are in the table's IPv6
    /// store), and a small cold part.
    #[test]
    fn entry_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Entry>(), 64);
        assert_eq!(std::mem::align_of::<Entry>(), 64);
        assert_eq!(std::mem::size_of::<Hop>(), 10);
        assert_eq!(std::mem::offset_of!(Entry, hops), 40);
        assert_eq!(std::mem::offset_of!(Entry, packets), 62);
        assert_eq!(std::mem::size_of::<Cold>(), 32);
    }

    /// Both directions' fast paths share an epoch: recording one under a new epoch drops the
    /// other's; a pod egress round-trips; epoch 0 records nothing.
    #[test]
    fn fast_paths_share_an_epoch() {
        let mut e = Entry::default();
        let f = |epoch, egress, egress_pod| FastPath {
            epoch,
            ingress: 3,
            egress,
            dst_mac: [1, 2, 3, 4, 5, 6],
            egress_pod,
        };
        assert_eq!(e.fast(Dir::Orig).ingress, NO_HOP);
        assert_eq!(e.fast(Dir::Reply).ingress, NO_HOP);
        e.set_fast(Dir::Orig, f(7, 2, true));
        e.set_fast(Dir::Reply, f(7, 5, false));
        assert_eq!(e.fast(Dir::Orig), f(7, 2, true));
        assert_eq!(e.fast(Dir::Reply), f(7, 5, false));
        e.set_fast(Dir::Reply, f(8, 4, false));
        assert_eq!(
            e.fast(Dir::Orig).ingress,
            NO_HOP,
            "recorded under older tables"
        );
        assert_eq!(e.fast(Dir::Reply), f(8, 4, false));
        e.set_fast(Dir::Reply, f(0, 4, false));
        assert_eq!(e.fast(Dir::Reply).ingress, NO_HOP);
        e.set_fast(Dir::Orig, f(8, EGRESS_POD, false));
        assert_eq!(
            e.fast(Dir::Orig).ingress,
            NO_HOP,
            "an egress index the entry cannot hold"
        );
    }
}
