//! The worker pipeline: one instance per worker thread, run-to-completion over bursts.
//!
//! ```text
//!  burst ─> parse (all frames) ─> per frame: classify ─> conntrack ─> service ─> policy ─> route ─> rewrite
//!                                     │ not ours: Pass        │ existing flow: NAT from entry
//!                                     │ later fragment: ports from its first fragment (or held)
//!                                     └ ICMP error: matched by its quoted header (related)
//! ```
//!
//! Established flows take a fast path straight from the burst loop: a packet whose flow
//! direction was already classified (anti-spoofing or uplink ownership) and routed on the same
//! ingress interface under the same tables, and which changes no connection state, skips both,
//! using the entry's [`FastPath`]; every other packet (FIN, RST, a SYN on a closed tuple), and
//! every packet the fast path is unsure of, takes the full path above. The common frame
//! (untagged IPv4, 20-byte header, TCP/UDP, full checksums) gets a lean parse and the
//! established fast lane (`pipeline/lane4.rs`, with the flow cache of `pipeline/emc.rs`); a
//! packet the lane does not take continues with the lean parse's [`Meta`] (no second parse),
//! through `established_fast` (other frames of established flows) or the full path; a new
//! connection's IPv4 SYN from a pod takes the new-connection lane (`pipeline/new4.rs`) from
//! there straight to the new flow, with what the burst's SYN look-ahead found. Costs
//! (callgrind, IPv4 TCP through a ClusterIP service, bench/RESULTS.md `## Fast path (issue
//! 11)` and "Conntrack memory"): see bench/baseline.json for the current instructions per
//! established packet (~43 of them the profiling harness's) and per new connection.
//!
//! Every frame ends with exactly one [`Action`]: forward on an interface, pass to the kernel,
//! drop with a [`DropReason`] (counted), or held (an out-of-order fragment, released later
//! through [`Pipeline::drain`] with its own outcome). Per packet nothing allocates, locks or
//! logs; the tables are an `Arc` snapshot swapped only between bursts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hashbrown::HashMap;
use nodeplane_state::{reserved, Algorithm, BackendState, InterfaceRole, PolicyMode, ServiceType};

use crate::conntrack::{Conntrack, Dir, Entry, FastPath, Nat, Snat, Start};
use crate::csum::{self, get16, put16};
use crate::drop::{DropReason, DROP_REASON_SLOTS};
use crate::flow::{Addr, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use crate::frag::{Fate, FragKey, Fragments};
use crate::mtu::MtuErrors;
use crate::parse::{self, Frag, Meta, Parsed};
use crate::partial;
use crate::policy::{Decision, PolicyVerdict};
use crate::rewrite;
use crate::snapshot::{SavedAffinity, SavedFlow, SavedPart};
use crate::snat;
use crate::tables::{IfIndex, Scope, Tables};
use crate::wire::{icmp, ipv4, ipv6, tcp, udp, vlan};

mod emc;
mod lane4;
mod new4;
mod syn;

/// Frames per burst, the unit of work between table swaps, GC steps and ring kicks.
pub const BURST: usize = 64;

/// `Nat::service` of a flow whose service no longer exists.
const NO_SERVICE: u32 = u32::MAX;

/// Conntrack entries examined for expiry per burst (incremental GC: a full sweep of a
/// 256k-entry table takes 4096 bursts, i.e. well under a second at line rate).
const GC_PER_BURST: usize = 64;

/// Where a packet leaves: egress interface and next-hop MAC.
type Route = (IfIndex, [u8; 6]);

/// Source of tables epochs: every pipeline gets a fresh one whenever it installs tables, so a
/// [`FastPath`] recorded under one snapshot (or copied from another pipeline) never applies to
/// another. Touched per table swap, never per packet.
static EPOCHS: AtomicU64 = AtomicU64::new(1);

/// The next epoch, as the 32 bits a [`FastPath`] keeps; never 0 (a [`FastPath`]'s "never
/// valid").
fn next_epoch() -> u32 {
    loop {
        let e = EPOCHS.fetch_add(1, Ordering::Relaxed) as u32;
        if e != 0 {
            return e;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Handed to the kernel (not ours: ARP, host traffic, link-local control).
    #[default]
    Pass,
    /// Transmit on this interface.
    Forward(IfIndex),
    Drop(DropReason),
    /// An out-of-order fragment kept by the pipeline; its outcome comes from `drain`.
    Held,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CtStatus {
    #[default]
    None,
    New,
    Established,
    Reply,
    Related,
}

impl CtStatus {
    pub fn name(self) -> Option<&'static str> {
        match self {
            CtStatus::None => None,
            CtStatus::New => Some("new"),
            CtStatus::Established => Some("established"),
            CtStatus::Reply => Some("reply"),
            CtStatus::Related => Some("related"),
        }
    }
}

/// Everything the pipeline decided about one packet (for transmit, counters and flow events).
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub action: Action,
    pub ct: CtStatus,
    /// Index into the tables' services.
    pub service: Option<u32>,
    pub backend: Option<(Addr, u16)>,
    pub src_identity: Option<u32>,
    pub dst_identity: Option<u32>,
    pub policy: PolicyVerdict,
    /// Bytes to skip at the front of the frame when transmitting (a stripped VLAN tag).
    pub l2_trim: u8,
    /// The frame arrived with a partial TCP/UDP checksum and the pipeline left it partial
    /// ([`Pipeline::set_keep_partial`]): its field is not valid (rewrites updated it as a full
    /// one); the I/O writes it afresh as it transmits (`crate::partial::offload_request` or
    /// `crate::partial::complete_frame`).
    pub csum_partial: bool,
}

impl Outcome {
    fn drop(reason: DropReason) -> Outcome {
        Outcome {
            action: Action::Drop(reason),
            ..Outcome::default()
        }
    }

    /// A packet of established flow `e` in direction `dir`, forwarded on `egress` (both fast
    /// paths write this).
    #[inline(always)]
    fn established(
        egress: IfIndex,
        dir: Dir,
        e: &Entry,
        service: Option<u32>,
        backend: Option<(Addr, u16)>,
        l2_trim: u8,
    ) -> Outcome {
        // Both identities as one word, turned by the direction: a rotate, not two indexed
        // loads and a select.
        let ids = (u64::from(e.dst_identity) << 32 | u64::from(e.src_identity))
            .rotate_right(32 * dir as u32);
        let (si, di) = (ids as u32, (ids >> 32) as u32);
        let ct = match dir {
            Dir::Orig => CtStatus::Established,
            Dir::Reply => CtStatus::Reply,
        };
        Outcome {
            action: Action::Forward(egress),
            ct,
            service,
            backend,
            src_identity: Some(si),
            dst_identity: Some(di),
            policy: e.policy,
            l2_trim,
            csum_partial: false,
        }
    }
}

/// One frame of a burst: its bytes (rewritten in place), ingress interface and time.
#[derive(Debug)]
pub struct Packet<'a> {
    pub data: &'a mut [u8],
    pub iface: IfIndex,
    /// Nanoseconds (pcap time in replay, a monotonic clock live).
    pub ts: u64,
    /// Caller's identifier, handed back for held fragments.
    pub tag: u64,
    /// The frame's parse, when the I/O already parsed it (flow ownership with several
    /// workers; a frame handed to its owner carries it along): the pipeline does not parse it
    /// again. `None`: the pipeline parses.
    pub parsed: Option<Result<Parsed, DropReason>>,
}

/// Per-worker counters. Plain integers: one owner, read by the control thread through a
/// snapshot copy between bursts.
#[derive(Debug, Clone)]
pub struct Counters {
    pub packets: u64,
    pub forwarded: u64,
    pub passed: u64,
    pub dropped: u64,
    /// Fragments held right now (out of order, waiting for their first fragment).
    pub held: u64,
    pub drops: [u64; DROP_REASON_SLOTS],
    pub ct_new: u64,
    pub affinity_full: u64,
    /// Partial TCP/UDP checksums completed (frames from senders with TX checksum offload).
    pub csum_completed: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            packets: 0,
            forwarded: 0,
            passed: 0,
            dropped: 0,
            held: 0,
            drops: [0; DROP_REASON_SLOTS],
            ct_new: 0,
            affinity_full: 0,
            csum_completed: 0,
        }
    }
}

impl Counters {
    #[inline]
    fn count(&mut self, a: Action) {
        match a {
            Action::Forward(_) => self.forwarded += 1,
            Action::Pass => self.passed += 1,
            Action::Drop(r) => {
                self.dropped += 1;
                self.drops[r as usize] += 1;
            }
            Action::Held => self.held += 1,
        }
    }
}

/// What [`Pipeline::restore`] took in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    pub flows: usize,
    pub affinity: usize,
    /// Conflicting keys, or no room left.
    pub skipped: usize,
}

#[derive(Debug, Clone, Copy)]
struct Affinity {
    backend: Addr,
    port: u16,
    expires: u64,
}

/// A held fragment leaving the pipeline (released or timed out).
#[derive(Debug)]
pub struct Released<'a> {
    pub data: &'a [u8],
    pub iface: IfIndex,
    pub ts: u64,
    pub tag: u64,
    pub outcome: Outcome,
}

/// The large buffers of a scratch pipeline, kept for the next one ([`Pipeline::scratch`]).
#[derive(Debug)]
pub struct ScratchBuffers {
    cache: emc::FlowCache,
    keys: Box<[FlowKey; BURST]>,
    mtu: Box<[[u8; crate::reject::REJECT_MAX]]>,
}

#[derive(Debug)]
pub struct Pipeline {
    tables: Arc<Tables>,
    ct: Conntrack,
    frags: Fragments,
    affinity: HashMap<(u64, Addr), Affinity>,
    affinity_cap: usize,
    rng: u64,
    counters: Counters,
    /// Per frame of the current chunk: its 5-tuple as it arrived (see [`Self::tuples`]).
    keys: Box<[FlowKey; BURST]>,
    /// Whether the frames of the lean parse (the established lane's) have their 5-tuples
    /// recorded in `keys` (see [`Self::set_record_tuples`]; the other frames always do).
    record_tuples: bool,
    /// The established fast lane's flow cache (see `emc.rs`).
    cache: emc::FlowCache,
    /// The current chunk's SYNs looked ahead (see `syn.rs`).
    ahead: syn::LookAhead,
    /// Runtime override of the state's policy mode (the operator's emergency switch).
    mode_override: Option<PolicyMode>,
    /// Identifies the installed tables for [`FastPath`] entries (see [`next_epoch`]).
    epoch: u32,
    /// This pipeline's worker index and the number of workers: source NAT allocates only ports
    /// whose replies flow ownership brings back here (see `owner::reply_owner`).
    worker: usize,
    workers: usize,
    /// Leave partial checksums partial (see [`Pipeline::set_keep_partial`]).
    keep_partial: bool,
    /// Egress MTU: the front of a frame longer than the node's smallest MTU, and the ICMP
    /// errors of the burst (see `mtu.rs`).
    mtu: MtuErrors,
}

impl Pipeline {
    pub fn new(tables: Arc<Tables>) -> Pipeline {
        let ct = Conntrack::new(&tables.ct);
        let frags = Fragments::new(&tables.ct);
        let affinity_cap = (tables.ct.max_entries as usize / 4).max(1024);
        Pipeline {
            ct,
            frags,
            // Grown on demand up to `affinity_cap` (only services with ClientIP affinity
            // insert): nothing reserved per flow of a table that may never see one.
            affinity: HashMap::new(),
            affinity_cap,
            rng: 0x2545_f491_4f6c_dd1d,
            counters: Counters::default(),
            keys: Box::new([FlowKey::default(); BURST]),
            record_tuples: true,
            cache: emc::FlowCache::default(),
            ahead: syn::LookAhead::default(),
            mode_override: None,
            epoch: next_epoch(),
            worker: 0,
            workers: 1,
            keep_partial: false,
            mtu: MtuErrors::new(),
            tables,
        }
    }

    /// Leave a partial checksum partial instead of completing it (default: complete): for an
    /// I/O that transmits with the kernel finishing it (AF_XDP TX metadata) or completes it
    /// itself ([`Outcome::csum_partial`] tells which frames). Replay and captures keep the
    /// default.
    pub fn set_keep_partial(&mut self, keep: bool) {
        self.keep_partial = keep;
    }

    /// Which worker this pipeline is among how many (default: the only one).
    pub fn set_owner(&mut self, worker: usize, workers: usize) {
        self.workers = workers.max(1);
        self.worker = worker.min(self.workers - 1);
    }

    /// Publishes new tables; takes effect for the next burst. Flows notice the new generation on
    /// their next packet and re-check their backend and policy.
    pub fn set_tables(&mut self, tables: Arc<Tables>) {
        self.ct.set_config(&tables.ct);
        self.frags.set_timeout(tables.ct.fragment);
        self.tables = tables;
        self.epoch = next_epoch();
    }

    pub fn tables(&self) -> &Arc<Tables> {
        &self.tables
    }

    /// The epoch of the installed tables: a direction's [`FastPath`] recorded under it is
    /// current (the kernel flow cache's offers are made from those, `crate::offload`).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn set_policy_mode_override(&mut self, mode: Option<PolicyMode>) {
        self.mode_override = mode;
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Whether [`Self::tuples`] is valid after each burst (default: yes). A worker whose flow
    /// events nobody observes turns it off for its bursts: the established lane's frames then
    /// store no 5-tuple (~12 instructions per packet, bench/RESULTS.md `## Fast path (issue
    /// 11)`).
    pub fn set_record_tuples(&mut self, on: bool) {
        self.record_tuples = on;
    }

    /// The 5-tuples of the last chunk (at most [`BURST`] frames) that [`Self::process_burst`]
    /// ran, index for index, as each frame arrived, before any rewrite ([`parse::tuple`]: all
    /// zero for a frame that is not IP or did not parse). Flow events take them from here, so
    /// observing costs no second parse. Later fragments carry ports 0 here (their ports come
    /// from the first fragment, on a copy). Only while [`Self::set_record_tuples`] is on (the
    /// default): otherwise the lean-parsed frames' entries are stale.
    pub fn tuples(&self, n: usize) -> &[FlowKey] {
        &self.keys[..n.min(BURST)]
    }

    pub fn conntrack(&self) -> &Conntrack {
        &self.ct
    }

    pub fn conntrack_mut(&mut self) -> &mut Conntrack {
        &mut self.ct
    }

    /// This (scratch) pipeline's buffers for the next [`Pipeline::scratch`]; the rest (its
    /// tables, its tiny conntrack) goes.
    pub fn into_buffers(self) -> ScratchBuffers {
        ScratchBuffers {
            cache: self.cache,
            keys: self.keys,
            mtu: self.mtu.into_bufs(),
        }
    }

    pub fn fragments(&self) -> &Fragments {
        &self.frags
    }

    /// A throwaway copy of this pipeline for one what-if packet (`nodeplane explain`): the same
    /// tables, policy-mode override and affinity of the given sources, and a tiny conntrack that
    /// holds copies of the live flows of `keys` (looked up read-only). Processing a packet on
    /// the copy runs the exact decision logic and leaves this pipeline untouched.
    ///
    /// `reuse`: an earlier copy's buffers ([`Pipeline::into_buffers`]): its flow cache (256 KiB,
    /// most of what a copy allocates), key buffer and MTU answer buffers (20 KiB), taken over
    /// instead of allocated anew.
    /// Their cells may point at the earlier copy's slots: a cell is only a hint, confirmed
    /// against the conntrack entry's key (`emc.rs`), so a stale one is a miss, never a wrong
    /// flow.
    pub fn scratch(&self, keys: &[FlowKey], now: u64, reuse: Option<ScratchBuffers>) -> Pipeline {
        let mut cfg = self.tables.ct.clone();
        cfg.max_entries = (keys.len() as u32 + 2).max(4);
        cfg.max_held_fragments = 1;
        cfg.max_fragment_ids = 4;
        let mut ct = Conntrack::new(&cfg);
        for k in keys {
            if let Some((slot, _)) = self.ct.find(k) {
                let expires = self.ct.expires(slot);
                if expires > now {
                    let _ = ct.restore(self.ct.entry(slot), expires, now);
                }
            }
        }
        let affinity = self
            .affinity
            .iter()
            .filter(|((_, src), _)| keys.iter().any(|k| k.src == *src || k.dst == *src))
            .map(|(k, v)| (*k, *v))
            .collect();
        let (cache, keys_buf, mtu) = match reuse {
            Some(b) => (b.cache, b.keys, MtuErrors::with_bufs(b.mtu)),
            None => (
                emc::FlowCache::default(),
                Box::new([FlowKey::default(); BURST]),
                MtuErrors::new(),
            ),
        };
        Pipeline {
            ct,
            frags: Fragments::new(&cfg),
            affinity,
            affinity_cap: keys.len().max(1),
            rng: self.rng,
            counters: Counters::default(),
            keys: keys_buf,
            record_tuples: true,
            cache,
            ahead: syn::LookAhead::default(),
            mode_override: self.mode_override,
            epoch: next_epoch(),
            worker: self.worker,
            workers: self.workers,
            // A copy for looking (explain), not for transmitting: frames come out complete.
            keep_partial: false,
            mtu,
            tables: Arc::clone(&self.tables),
        }
    }

    /// This pipeline's flows and affinity entries as of `now`, for a snapshot (between
    /// bursts; allocates).
    pub fn save(&self, now: u64) -> SavedPart {
        SavedPart {
            flows: self.ct.save(now).collect(),
            affinity: self
                .affinity
                .iter()
                .filter(|(_, a)| a.expires > now)
                .map(|(&(service, client), a)| SavedAffinity {
                    service,
                    client,
                    backend: a.backend,
                    port: a.port,
                    remaining_ns: a.expires - now,
                })
                .collect(),
        }
    }

    /// Restores flows and affinity entries of a snapshot before the first burst (see
    /// [`Conntrack::restore_saved`]: a restored flow re-checks its backend and policy at its
    /// first packet). Flows that conflict with one already here, or that find the table full,
    /// are skipped and counted; so are affinity entries past the affinity table's capacity.
    pub fn restore(
        &mut self,
        flows: &[SavedFlow],
        affinity: &[SavedAffinity],
        now: u64,
    ) -> Restored {
        let mut r = Restored::default();
        for f in flows {
            match self.ct.restore_saved(f, now) {
                Ok(_) => r.flows += 1,
                Err(_) => r.skipped += 1,
            }
        }
        for a in affinity {
            let key = (a.service, a.client);
            if self.affinity.len() >= self.affinity_cap && !self.affinity.contains_key(&key) {
                r.skipped += 1;
                continue;
            }
            self.affinity.insert(
                key,
                Affinity {
                    backend: a.backend,
                    port: a.port,
                    expires: now.saturating_add(a.remaining_ns),
                },
            );
            r.affinity += 1;
        }
        r
    }

    /// The runtime policy-mode override, if any.
    pub fn policy_mode_override(&self) -> Option<PolicyMode> {
        self.mode_override
    }

    fn mode(&self) -> PolicyMode {
        self.mode_override.unwrap_or(self.tables.policy_mode)
    }

    /// Processes a burst (at most [`BURST`] frames; longer slices are processed in chunks).
    /// `out[i]` receives the outcome of `pkts[i]`.
    pub fn process_burst(&mut self, pkts: &mut [Packet<'_>], out: &mut [Outcome]) {
        assert!(
            out.len() >= pkts.len(),
            "outcome slice shorter than the burst"
        );
        for (chunk, out) in pkts.chunks_mut(BURST).zip(out.chunks_mut(BURST)) {
            // One `Arc` clone per burst, not per packet.
            let tables = Arc::clone(&self.tables);
            // New connections' frontend, service and backend, looked ahead for the whole burst
            // so that their cache misses overlap (`syn.rs`).
            self.ahead.look(&tables, &self.ct, chunk);
            // One index for the frame, its outcome and its tuple (fewer live registers in a
            // loop that also holds the general path than three iterators).
            let n = chunk.len().min(out.len()).min(BURST);
            // The lean parse stops at the node's smallest MTU: a longer frame takes the general
            // path, where its egress MTU is checked (`mtu.rs`), and the lane compares nothing.
            let lean_limit = tables.frame_limit.min(parse::MAX_FRAME_LEN);
            // The burst's leading run of frames the lane takes, in a loop of its own; from the
            // first frame it does not take on, every frame goes through the loop below, in
            // order (so a flow's packets are never reordered between the two).
            let start = self.lane_run(&tables, chunk, out, n, lean_limit);
            // Frames the lane forwarded in the loop below: counted once after it.
            let mut lane = 0u64;
            for i in start..n {
                let (Some(p), Some(out)) = (chunk.get_mut(i), out.get_mut(i)) else {
                    break;
                };
                // Parse (a frame may carry the parse its receiving worker did for flow
                // ownership). The common frame gets a lean parse and tries the established
                // fast lane, which builds its key where flow events read it.
                let parsed = match p.parsed {
                    Some(done) => {
                        self.keys[i] = parse::tuple(&done);
                        done
                    }
                    None => match parse::lean4_within(p.data, lean_limit) {
                        Some(l) => {
                            if self.record_tuples {
                                // Zeroed whole (a few wide stores), then the five fields: fewer
                                // stores than the key's padded addresses written field by field.
                                let k = &mut self.keys[i];
                                *k = FlowKey::default();
                                k.src.bytes[..4].copy_from_slice(&l.src);
                                k.dst.bytes[..4].copy_from_slice(&l.dst);
                                k.sport = l.sport;
                                k.dport = l.dport;
                                k.proto = l.proto;
                            }
                            if lane4::lane4(
                                &mut self.ct,
                                &mut self.cache,
                                self.epoch,
                                &tables,
                                p.data,
                                &l,
                                p.iface,
                                p.ts,
                                out,
                            ) {
                                lane += 1;
                                continue;
                            }
                            Ok(Parsed::Ip(l.meta()))
                        }
                        None => {
                            let parsed = parse::parse_general(p.data);
                            self.keys[i] = parse::tuple(&parsed);
                            parsed
                        }
                    },
                };
                // Egress MTU (`mtu.rs`): a frame longer than the node's smallest MTU goes the
                // same way out of line, its MTU checked.
                let kept = if p.data.len() > tables.frame_limit {
                    self.big_frame(&tables, p, parsed, out)
                } else {
                    self.general(&tables, p, parsed, out)
                };
                out.csum_partial = kept;
                self.counters.packets += 1;
                self.counters.count(out.action);
            }
            self.counters.packets += lane;
            self.counters.forwarded += lane;
            if let Some(last) = chunk.last() {
                self.ct.gc_step(last.ts, GC_PER_BURST);
            }
        }
    }

    /// The established lane over the leading frames of a chunk (`n` frames, lean-parsed up
    /// to `lean_limit` bytes) until the first one it does not take, which it leaves untouched;
    /// how many it took (counted here). A loop of its own, with none of the general path's
    /// values live across it (bench/RESULTS.md, `## Fast path (issue 11)`). A burst whose
    /// first frame the lane does not take pays one lean parse more (that frame's, again in the
    /// loop after this).
    #[inline(always)]
    fn lane_run(
        &mut self,
        tables: &Tables,
        chunk: &mut [Packet<'_>],
        out: &mut [Outcome],
        n: usize,
        lean_limit: usize,
    ) -> usize {
        let mut i = 0;
        while i < n {
            let (Some(p), Some(out)) = (chunk.get_mut(i), out.get_mut(i)) else {
                break;
            };
            if p.parsed.is_some() {
                break;
            }
            let Some(l) = parse::lean4_within(p.data, lean_limit) else {
                break;
            };
            if self.record_tuples {
                // As in the loop of `process_burst`.
                let k = &mut self.keys[i];
                *k = FlowKey::default();
                k.src.bytes[..4].copy_from_slice(&l.src);
                k.dst.bytes[..4].copy_from_slice(&l.dst);
                k.sport = l.sport;
                k.dport = l.dport;
                k.proto = l.proto;
            }
            if !lane4::lane4(
                &mut self.ct,
                &mut self.cache,
                self.epoch,
                tables,
                p.data,
                &l,
                p.iface,
                p.ts,
                out,
            ) {
                break;
            }
            i += 1;
        }
        self.counters.packets += i as u64;
        self.counters.forwarded += i as u64;
        i
    }

    /// The general path of a parsed frame: checksum completion, the established fast path of
    /// other frames, else the full path.
    #[inline(always)]
    fn general(
        &mut self,
        tables: &Tables,
        p: &mut Packet<'_>,
        parsed: Result<Parsed, DropReason>,
        out: &mut Outcome,
    ) -> bool {
        // Complete a partial checksum, so that every later rewrite updates a full one;
        // or leave it to the I/O, which writes the field afresh as the frame leaves.
        let mut kept = false;
        if let Ok(Parsed::Ip(m)) = &parsed {
            if m.csum_partial {
                if self.keep_partial {
                    kept = true;
                } else if partial::complete(p.data, m) {
                    self.counters.csum_completed += 1;
                }
            }
        }
        let fast = match &parsed {
            Ok(Parsed::Ip(m)) if fast_candidate(m) => established_fast(
                &mut self.ct,
                self.epoch,
                tables,
                p.data,
                m,
                p.iface,
                p.ts,
                out,
            ),
            // A new connection's SYN of the common frame: the new-connection lane (`new4.rs`).
            Ok(Parsed::Ip(m)) if new4::candidate(m) => match self.new4(tables, p, m) {
                Some(o) => {
                    *out = o;
                    true
                }
                None => false,
            },
            _ => false,
        };
        if !fast {
            *out = self.process_parsed(tables, p.data, parsed, p.iface, p.ts, Some(p.tag));
        }
        kept
    }

    /// [`Self::general`] for a frame longer than the node's smallest MTU: its front is kept as
    /// it arrived (nothing rewrote it yet), for the ICMP error that may quote it, and its
    /// egress MTU is checked. Out of line, so that the common path's code stays as it is.
    #[cold]
    #[inline(never)]
    fn big_frame(
        &mut self,
        tables: &Tables,
        p: &mut Packet<'_>,
        parsed: Result<Parsed, DropReason>,
        out: &mut Outcome,
    ) -> bool {
        self.mtu.save(p.data);
        let kept = self.general(tables, p, parsed, out);
        self.check_mtu(tables, p, out);
        kept
    }

    /// A frame longer than the node's smallest MTU, decided `out`: if it is to leave on an
    /// interface whose MTU it exceeds, it is dropped instead (and answered, see `mtu.rs`).
    fn check_mtu(&mut self, t: &Tables, p: &Packet<'_>, out: &mut Outcome) {
        let Action::Forward(egress) = out.action else {
            return;
        };
        let mtu = t.ifaces.get(usize::from(egress)).map_or(0, |i| i.mtu);
        if mtu == 0 {
            return;
        }
        if let Some(r) = self.mtu.check(t, p.data, p.iface, p.ts, mtu) {
            out.action = Action::Drop(r);
        }
    }

    /// The ICMP errors of frames that exceeded their egress MTU (the worker sends them after
    /// each burst, [`MtuErrors::flush`]) and their counters.
    pub fn mtu_errors_mut(&mut self) -> &mut MtuErrors {
        &mut self.mtu
    }

    pub fn mtu_errors(&self) -> &MtuErrors {
        &self.mtu
    }

    /// Convenience for one frame (tests, `explain`).
    pub fn process_one(&mut self, data: &mut [u8], iface: IfIndex, ts: u64) -> Outcome {
        let mut p = [Packet {
            data,
            iface,
            ts,
            tag: 0,
            parsed: None,
        }];
        let mut o = [Outcome::default()];
        self.process_burst(&mut p, &mut o);
        o[0]
    }

    /// Processes held fragments that became ready (their first fragment came) or timed out, and
    /// hands each to `f` with its outcome. Call after every burst.
    pub fn drain(&mut self, now: u64, mut f: impl FnMut(Released<'_>)) {
        while let Some((slot, timed_out)) = self.frags.next_due(now) {
            let outcome = if timed_out {
                Outcome::drop(DropReason::FragTimeout)
            } else {
                // Take the frame out of the pool's borrow: process it in place.
                // Processed as of the moment its first fragment came (or its own arrival, if
                // later): however late this drain runs, the datagram is then still known.
                let at = self.frags.ready_at(slot);
                let (data, iface, ts, _) = self.frags.held_frame(slot);
                let at = at.max(ts);
                let len = data.len();
                let mut tmp = [0u8; crate::frag::MAX_HELD_FRAME];
                tmp[..len].copy_from_slice(data);
                let parsed = parse::parse(&tmp[..len]);
                let tables = Arc::clone(&self.tables);
                let o = self.process_parsed(&tables, &mut tmp[..len], parsed, iface, at, None);
                let (data, _, _, _) = self.frags.held_frame(slot);
                data.copy_from_slice(&tmp[..len]);
                o
            };
            // It leaves the held set and is counted by its final action: `packets` always
            // equals forwarded + passed + dropped + held.
            self.counters.held = self.counters.held.saturating_sub(1);
            self.counters.count(outcome.action);
            let (data, iface, ts, tag) = self.frags.held_frame(slot);
            f(Released {
                data,
                iface,
                ts,
                tag,
                outcome,
            });
            self.frags.release(slot, timed_out);
        }
    }

    /// Full GC (periodic, not per burst): conntrack, fragment ids, affinity.
    pub fn gc(&mut self, now: u64) {
        let cap = self.ct.capacity();
        self.ct.gc_step(now, cap);
        self.frags.gc(now);
        self.affinity.retain(|_, a| a.expires > now);
    }

    #[inline(never)]
    fn process_parsed(
        &mut self,
        t: &Tables,
        frame: &mut [u8],
        parsed: Result<Parsed, DropReason>,
        iface: IfIndex,
        now: u64,
        hold_tag: Option<u64>,
    ) -> Outcome {
        let Some(itf) = t.ifaces.get(usize::from(iface)) else {
            return Outcome::drop(DropReason::UnknownInterface);
        };
        let mut m = match parsed {
            Err(r) => return Outcome::drop(r),
            Ok(Parsed::NotIp) => return Outcome::default(),
            Ok(Parsed::Ip(m)) => m,
        };
        if parse::is_icmpv6_link_control(&m) {
            return Outcome::default();
        }

        // Classify: which traffic is ours. `src_ep`: the source's endpoint, once looked up
        // (anti-spoofing on a pod interface), so that a new flow's policy does not look again.
        let mut src_ep = None;
        if itf.role != InterfaceRole::Uplink {
            // Link-local is the kernel's, except the replies of flows masqueraded to a
            // host-network backend: the node answers those to `snat::HOST_SNAT_V4` (checked
            // only for link-scoped frames, never on an ordinary packet's way).
            if (is_link_scoped(&m.dst)
                && !(itf.role == InterfaceRole::Host && m.dst == snat::host_snat_addr(m.v6)))
                || is_link_scoped(&m.src)
            {
                return Outcome::default();
            }
            let genuine = match itf.role {
                // The node's own stack speaks from its node IPs only (see `evaluate_policy`).
                InterfaceRole::Host => t.is_node_ip(&m.src),
                _ => {
                    let ep = t.endpoint_of(&m.src);
                    src_ep = Some(ep);
                    ep.is_some_and(|ep| t.endpoints[ep as usize].iface == iface)
                }
            };
            if !genuine {
                return Outcome::drop(DropReason::SpoofedSource);
            }
        } else if t.host().is_some() && t.is_node_ip(&m.src) {
            // With a host interface the node's own traffic enters there; a node IP from the
            // outside is spoofed (the kernel would call it a martian) and must not pass as the
            // host, which policy always allows.
            return Outcome::drop(DropReason::SpoofedSource);
        } else if !self.uplink_owns(t, frame, &m) {
            if m.frag == Frag::First && t.is_node_ip(&m.dst) {
                // Host traffic: its later fragments, which `uplink_owns` claims while their
                // datagram is unknown, follow it to the kernel.
                let _ = self.frags.record_first(
                    frag_key(&m),
                    m.sport,
                    m.dport,
                    m.proto,
                    Fate::Passed,
                    now,
                );
            }
            return Outcome::default();
        }

        // Later fragments take their ports from the first fragment.
        if m.frag == Frag::Later {
            let fk = frag_key(&m);
            match self.frags.lookup(&fk, now) {
                Some(d) => match d.fate {
                    Fate::Dropped(_) => return Outcome::drop(DropReason::FragOfDroppedDatagram),
                    Fate::Passed => return Outcome::default(),
                    Fate::Followed => {
                        m.sport = d.sport;
                        m.dport = d.dport;
                        m.proto = d.proto;
                    }
                },
                // Released from the held set, its datagram must be known; it cannot be held
                // a second time.
                None if hold_tag.is_none() => return Outcome::drop(DropReason::FragOverflow),
                None => {
                    let tag = hold_tag.unwrap_or(u64::MAX);
                    return match self.frags.hold(frame, fk, iface, now, tag) {
                        Ok(()) => Outcome {
                            action: Action::Held,
                            ..Outcome::default()
                        },
                        Err(r) => Outcome::drop(r),
                    };
                }
            }
        }

        // The datagram key as it arrived (the stages below rewrite m).
        let first_key = (m.frag == Frag::First).then(|| frag_key(&m));
        let (orig_sport, orig_dport, orig_proto) = (m.sport, m.dport, m.proto);
        let outcome = if !matches!(m.proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6) {
            Outcome::drop(DropReason::UnsupportedProtocol)
        } else if parse::is_icmp_error(&m) && m.frag == Frag::None {
            self.icmp_error(t, frame, &mut m, now)
        } else {
            self.flow_path(t, frame, &mut m, iface, src_ep, now)
        };
        if let Some(fk) = first_key {
            let fate = match outcome.action {
                Action::Drop(r) => Fate::Dropped(r),
                Action::Pass => Fate::Passed,
                Action::Forward(_) | Action::Held => Fate::Followed,
            };
            // On overflow the first fragment still goes; its later fragments are held and then
            // time out, counted (`frag-overflow` in the fragment stats, `frag-timeout` drops).
            let _ = self
                .frags
                .record_first(fk, orig_sport, orig_dport, orig_proto, fate, now);
        }
        outcome
    }

    /// On the uplink only traffic to our PodCIDRs, service frontends, NodePorts and the SNAT
    /// port range of the node IPs is ours, and ICMP errors to a node IP about such flows.
    fn uplink_owns(&self, t: &Tables, frame: &[u8], m: &Meta) -> bool {
        if t.in_pod_cidr(&m.dst) || t.service_ips.contains_key(&m.dst) {
            return true;
        }
        if !t.is_node_ip(&m.dst) {
            return false;
        }
        match m.frag {
            // No ports: a NodePort datagram's or host traffic's, decided by its first fragment
            // (recorded either way); held until that comes, so the order does not matter.
            Frag::Later => true,
            // A NodePort, or a reply to a masqueraded flow (node IPs' source ports in
            // `node.snat_port_range` are the dataplane's; the XDP program steers them).
            _ => {
                t.frontend(m.dst, m.dport, m.proto).is_some()
                    || (matches!(m.proto, PROTO_TCP | PROTO_UDP) && t.snat_ports.contains(m.dport))
                    || (m.frag == Frag::None
                        && parse::is_icmp_error(m)
                        && quotes_our_source(t, frame, m))
            }
        }
    }

    /// TCP, UDP, ICMP echo and other ICMP: conntrack, service, policy, route, rewrite.
    /// `src_ep`: `Some(t.endpoint_of(&m.src))` when the caller looked it up already.
    fn flow_path(
        &mut self,
        t: &Tables,
        frame: &mut [u8],
        m: &mut Meta,
        iface: IfIndex,
        src_ep: Option<Option<u32>>,
        now: u64,
    ) -> Outcome {
        let fast_ok = m.frag == Frag::None;
        let key = FlowKey {
            src: m.src,
            dst: m.dst,
            sport: m.sport,
            dport: m.dport,
            proto: m.proto,
        };
        let len = frame.len();
        let mut out = Outcome::default();

        let key_hash = self.ct.hash(&key);
        let mut found = self.ct.lookup_hashed(&key, key_hash, now);
        if let Some((slot, dir)) = found {
            let datagram_to_gone_backend = m.proto != PROTO_TCP
                && dir == Dir::Orig
                && self.stale_flow_verdict(t, slot) == Some(DropReason::BackendGone);
            if datagram_to_gone_backend || self.ct.is_reopen(slot, dir, m.tcp_flags) {
                // A new connection on an old tuple, or a datagram flow whose backend went away:
                // start over (new backend, new policy decision) instead of dropping.
                self.ct.remove(slot);
                found = None;
            }
        }

        let (slot, dir) = match found {
            Some((slot, dir)) => {
                if let Some(r) = self.stale_flow_verdict(t, slot) {
                    self.ct.end(slot, r, now);
                }
                if let Some(r) = self.ct.entry(slot).ended() {
                    let e = self.ct.entry(slot);
                    let (si, di) = match dir {
                        Dir::Orig => (e.src_identity, e.dst_identity),
                        Dir::Reply => (e.dst_identity, e.src_identity),
                    };
                    return Outcome {
                        ct: if dir == Dir::Orig {
                            CtStatus::Established
                        } else {
                            CtStatus::Reply
                        },
                        service: e.nat().map(|n| n.service).filter(|s| *s != NO_SERVICE),
                        backend: e.nat().map(|n| (n.backend, n.backend_port)),
                        src_identity: Some(si),
                        dst_identity: Some(di),
                        policy: if r == DropReason::PolicyDenied {
                            PolicyVerdict::Deny
                        } else {
                            e.policy
                        },
                        ..Outcome::drop(r)
                    };
                }
                self.ct.on_packet(slot, dir, m.tcp_flags, len, now);
                out.ct = if dir == Dir::Orig {
                    CtStatus::Established
                } else {
                    CtStatus::Reply
                };
                (slot, dir)
            }
            None => {
                if m.frag == Frag::Later {
                    // Its first fragment created no flow (or the flow ended): nothing to follow.
                    return Outcome::drop(DropReason::CtInvalid);
                }
                // The burst's look-ahead of this SYN (`syn.rs`).
                let hint = if syn::is_syn4(m.v6, m.proto, m.tcp_flags) {
                    self.ahead.take(&key)
                } else {
                    None
                };
                return self.new_flow(
                    t, frame, m, key, key_hash, hint, iface, src_ep, fast_ok, now,
                );
            }
        };

        let e = self.ct.entry(slot);
        out.policy = e.policy;
        if let Some(nat) = e.nat() {
            out.service = Some(nat.service);
            out.backend = Some((nat.backend, nat.backend_port));
        }
        let (si, di) = match dir {
            Dir::Orig => (e.src_identity, e.dst_identity),
            Dir::Reply => (e.dst_identity, e.src_identity),
        };
        out.src_identity = Some(si);
        out.dst_identity = Some(di);

        // Translate: DNAT (and SNAT) on the way in, reverse NAT on replies.
        let e = self.ct.entry(slot);
        if let Some(nat) = e.nat() {
            match dir {
                Dir::Orig => rewrite::set_addr_port(frame, m, true, nat.backend, nat.backend_port),
                Dir::Reply => rewrite::set_addr_port(frame, m, false, nat.vip, nat.vip_port),
            }
            if let Some(sn) = e.snat() {
                match dir {
                    Dir::Orig => rewrite::set_addr_port(frame, m, false, sn.addr, sn.port),
                    Dir::Reply => {
                        let o = e.orig();
                        rewrite::set_addr_port(frame, m, true, o.src, o.sport)
                    }
                }
            }
        }
        let dst_mac;
        (out.action, out.l2_trim, dst_mac) = self.route_and_finish(t, frame, m);
        if let (true, Action::Forward(egress)) = (fast_ok, out.action) {
            self.record_fast(t, slot, dir, iface, egress, dst_mac);
        }
        out
    }

    /// This direction of flow `slot` passed classification on `iface` and routed to `egress`
    /// under these tables: its next packets can take `established_fast`.
    #[inline]
    fn record_fast(
        &mut self,
        t: &Tables,
        slot: u32,
        dir: Dir,
        iface: IfIndex,
        egress: IfIndex,
        dst_mac: [u8; 6],
    ) {
        let itf = &t.ifaces[usize::from(egress)];
        if let Some(mut e) = self.ct.entry_mut(slot) {
            e.set_fast(
                dir,
                FastPath {
                    epoch: self.epoch,
                    ingress: iface,
                    egress,
                    egress_pod: itf.role != InterfaceRole::Uplink,
                    dst_mac,
                },
            );
        }
    }

    /// A packet that matched no flow: service selection, identities, policy, then a new entry,
    /// and the packet translated and routed from what was decided here (the entry is not read
    /// back). `key_hash` is the conntrack hash of `key`, which the caller has just looked up and
    /// not found. `src_ep` as for [`Self::flow_path`]; `fast_ok`: the packet may record the
    /// flow's fast path. A packet that is not for us after all (host traffic) passes.
    #[expect(
        clippy::too_many_arguments,
        reason = "the packet and what the caller looked up for it already"
    )]
    fn new_flow(
        &mut self,
        t: &Tables,
        frame: &mut [u8],
        m: &mut Meta,
        key: FlowKey,
        key_hash: u64,
        hint: Option<syn::SynHint>,
        iface: IfIndex,
        src_ep: Option<Option<u32>>,
        fast_ok: bool,
        now: u64,
    ) -> Outcome {
        let mut nat = None;
        let mut backend_local = false;
        // The backend's endpoint, known from the tables (`Backend::endpoint`).
        let mut backend_ep = None;
        let mut dst = m.dst;
        let mut dport = m.dport;
        // `hint`: the burst's look-ahead of this SYN (`syn.rs`): its frontend, Maglev hash and,
        // for a plain Maglev service, its backend, as the lookups below would find them.
        if matches!(m.proto, PROTO_TCP | PROTO_UDP) {
            let fe = match hint {
                Some(h) => (h.svc != syn::NONE).then_some(h.svc),
                None => t.frontend(m.dst, m.dport, m.proto),
            };
            if let Some(svc) = fe {
                // The backend: the look-ahead's pick (what its record holds, read there), else
                // picked here.
                let (addr, port, local, ep) = match hint {
                    Some(h) if h.pick != syn::NONE => (
                        Addr::v4(h.addr),
                        h.port,
                        h.local,
                        (h.ep != syn::NONE).then_some(h.ep),
                    ),
                    _ => match self.select_backend(t, svc, &key, hint.map(|h| h.hash), now) {
                        Ok(b) => {
                            let be = &t.services[svc as usize].backends[usize::from(b)];
                            (be.addr, be.port, be.local, be.endpoint)
                        }
                        Err(reason) => {
                            return Outcome {
                                service: Some(svc),
                                ..Outcome::drop(reason)
                            }
                        }
                    },
                };
                backend_local = local;
                backend_ep = Some(ep);
                nat = Some(Nat {
                    vip: m.dst,
                    vip_port: m.dport,
                    backend: addr,
                    backend_port: port,
                    service: svc,
                });
                dst = addr;
                dport = port;
            }
        }
        if nat.is_none() {
            if t.service_ips.contains_key(&m.dst) {
                return Outcome::drop(DropReason::NoService);
            }
            if t.is_node_ip(&m.dst) && t.host().is_none() {
                return Outcome::default();
            }
        }
        // Local endpoints' identities come from their records (no LPM lookup).
        let src_ep = src_ep.unwrap_or_else(|| t.endpoint_of(&m.src));
        let dst_ep = backend_ep.unwrap_or_else(|| t.endpoint_of(&dst));
        let src_identity = t.identity_at(&m.src, src_ep);
        let dst_identity = t.identity_at(&dst, dst_ep);
        let policy = self.evaluate_policy(
            t,
            m.src,
            Some(src_ep),
            src_identity,
            dst,
            dst_ep,
            dst_identity,
            m.proto,
            dport,
        );
        if policy == PolicyVerdict::Deny {
            return Outcome {
                service: nat.map(|n| n.service),
                backend: nat.map(|n| (n.backend, n.backend_port)),
                src_identity: Some(src_identity),
                dst_identity: Some(dst_identity),
                policy,
                ..Outcome::drop(DropReason::PolicyDenied)
            };
        }
        // Nothing is remembered for a packet that cannot leave (TTL, no endpoint, no next hop).
        let routed = match route_at(t, &dst, dst_ep, m.ttl) {
            Ok(r) => r,
            Err(action) => {
                return Outcome {
                    action,
                    service: nat.map(|n| n.service),
                    backend: nat.map(|n| (n.backend, n.backend_port)),
                    src_identity: Some(src_identity),
                    dst_identity: Some(dst_identity),
                    policy,
                    ..Outcome::default()
                }
            }
        };
        let mut reply = FlowKey {
            src: dst,
            dst: m.src,
            sport: dport,
            dport: m.sport,
            proto: m.proto,
        };
        let mut snat = None;
        let h_reply = match nat {
            Some(n) => match self.source_nat(
                t,
                &key,
                &n,
                backend_local,
                &mut reply,
                hint.filter(|h| h.pick != syn::NONE).map(|h| h.ct_reply),
                now,
            ) {
                Ok((s, h)) => {
                    snat = s;
                    h
                }
                Err(r) => {
                    return Outcome {
                        service: Some(n.service),
                        backend: Some((n.backend, n.backend_port)),
                        src_identity: Some(src_identity),
                        dst_identity: Some(dst_identity),
                        policy,
                        ..Outcome::drop(r)
                    }
                }
            },
            None => self.ct.hash(&reply),
        };
        // The reply key is the entry's derivation (the reverse of the translated key); a
        // service flow's was looked up free by `source_nat`, any other's is probed here.
        // The fast path of its original direction goes into the entry with it (what
        // `record_fast` writes for a packet of a live flow).
        let (egress, mac) = routed;
        let fast = fast_ok.then(|| FastPath {
            epoch: self.epoch,
            ingress: iface,
            egress,
            egress_pod: t.ifaces[usize::from(egress)].role != InterfaceRole::Uplink,
            dst_mac: mac,
        });
        let start = Start {
            src_identity,
            dst_identity,
            policy,
            generation: t.generation,
            fast,
        };
        let probe = if nat.is_some() { None } else { Some(&reply) };
        if let Err(r) = self.ct.create_derived(
            &key,
            nat,
            snat,
            start,
            key_hash,
            h_reply,
            probe,
            m.tcp_flags,
            now,
        ) {
            return Outcome {
                service: nat.map(|n| n.service),
                backend: nat.map(|n| (n.backend, n.backend_port)),
                src_identity: Some(src_identity),
                dst_identity: Some(dst_identity),
                policy,
                ..Outcome::drop(r)
            };
        }
        self.counters.ct_new += 1;
        self.ahead.created = true;
        // Translated and routed from what was decided here (the entry is not read back). The
        // route is known and the TTL checked (`route_at`): the DNAT and the TTL go into one
        // update of each checksum (IPv4 TCP/UDP without source NAT: the same bytes as the two
        // rewrites).
        let mut ttl_done = false;
        if let Some(n) = nat {
            ttl_done = snat.is_none()
                && rewrite::nat_v4_and_ttl(frame, m, true, n.backend, n.backend_port);
            if !ttl_done {
                rewrite::set_addr_port(frame, m, true, n.backend, n.backend_port);
            }
            if let Some(sn) = snat {
                rewrite::set_addr_port(frame, m, false, sn.addr, sn.port);
            }
        }
        let (action, l2_trim, _) = self.finish_routed(t, frame, m, egress, mac, ttl_done);
        Outcome {
            action,
            ct: CtStatus::New,
            service: nat.map(|n| n.service),
            backend: nat.map(|n| (n.backend, n.backend_port)),
            src_identity: Some(src_identity),
            dst_identity: Some(dst_identity),
            policy,
            l2_trim,
            csum_partial: false,
        }
    }

    /// The source NAT of a new service flow, if it needs one, and the hash of its (final) reply
    /// key, which is free in conntrack when this returns `Ok`. Kubernetes' rules (kube-proxy
    /// masquerades, Cilium the same for remote backends):
    /// - hairpin: the client is the chosen backend: its source becomes the address it dialled
    ///   (the VIP, or the node IP of a NodePort), so the backend answers the dataplane;
    /// - external traffic (NodePort, ExternalIP, LoadBalancer frontends) with
    ///   `external_traffic_policy: Cluster` to a backend on another node: masqueraded to a node
    ///   IP (the dialled one for a NodePort, else the first node IP of the family), so the reply
    ///   comes back through this node; `Local` keeps the client's address (never SNATed);
    /// - a host-network backend (a node IP, behind the host interface) reached by a client the
    ///   node's stack would not answer through the pair (not one of this node's pods or
    ///   addresses): masqueraded to [`snat::host_snat_addr`], except on an external frontend
    ///   with `external_traffic_policy: Local` (the client's address kept: the node routes the
    ///   replies of connections from the pair back into it by their conntrack mark);
    /// - the node itself (through the host interface) to a backend on another node: its port
    ///   moves into the SNAT range, address kept, so that the reply is steered back;
    /// - otherwise none, unless the reply tuple is taken by another flow (the same client port
    ///   reaching the same backend through another frontend): then the client's port is
    ///   remapped, its address kept, as Linux's NAT core does for a clashing tuple.
    ///
    /// Ports come from [`snat::allocate`] within `node.snat_port_range`, skipping frontends on
    /// the SNAT address and ports whose replies another worker would receive.
    #[expect(
        clippy::too_many_arguments,
        reason = "the new flow's key, service and reply key, with the reply key's hash if known"
    )]
    fn source_nat(
        &mut self,
        t: &Tables,
        key: &FlowKey,
        nat: &Nat,
        backend_local: bool,
        reply: &mut FlowKey,
        reply_hash: Option<u64>,
        now: u64,
    ) -> Result<(Option<Snat>, u64), DropReason> {
        let hairpin = nat.backend == key.src;
        let s = &t.services[nat.service as usize];
        // A host-network backend (a node IP behind the host interface) answers a client by the
        // node's routes: only the node's own PodCIDRs and addresses come back through the
        // pair by its routes; anyone else (a remote client of a NodePort, ExternalIP or
        // LoadBalancer frontend, a pod of another node) is masqueraded to the pair's far side.
        // Except with `external_traffic_policy: Local` on an external frontend: the client's
        // address is kept (kube-proxy's contract) and the node's stack sends the answers back
        // into the pair by the connection's mark (control/src/runtime/host.rs: nftables marks
        // connections arriving from the peer, `ip rule fwmark` routes their replies to it).
        let host_backend = !hairpin
            && t.host().is_some()
            && t.is_node_ip(&nat.backend)
            && !t.on_this_node(&key.src)
            && !(s.external_local
                && s.kind != ServiceType::ClusterIP
                && t.frontend_scope(key.dst, key.dport, key.proto) != Scope::Internal);
        // The node itself (a host-network client, through the host interface) to a backend on
        // another node: its source port moves into the SNAT range (address kept), so that the
        // backend's reply to the node IP is steered to the dataplane like a masqueraded flow's
        // (an ephemeral port's reply would be passed to the kernel, which never saw the DNAT).
        // kube-proxy masquerades the node's own traffic to every service the same way:
        // pkg/proxy/iptables/proxier.go, KUBE-EXT-* "masquerade LOCAL traffic for %s external
        // destinations" (`--src-type LOCAL -j KUBE-MARK-MASQ`; nftables/proxier.go: "masquerade
        // local traffic", `fib saddr type local jump mark-for-masquerade`) even under
        // externalTrafficPolicy Local, and a ClusterIP from outside the pod CIDR.
        let host_client = !hairpin && !backend_local && t.is_node_ip(&key.src);
        // External frontends (NodePort, ExternalIP, LoadBalancer VIP) with
        // externalTrafficPolicy Cluster are masqueraded whoever the client is, pods of this
        // node included (kube-proxy: KUBE-EXT-* "masquerade traffic for %s external
        // destinations" jumps to KUBE-MARK-MASQ before any policy chain; nftables: the
        // `external-*` chain's "masquerade" rule), when the backend is on another node (a
        // local backend keeps the client's address, as Cilium keeps it: the reply comes back
        // through this node anyway). With Local, never: pods of this node are short-circuited
        // to every backend without masquerade ("pod traffic for %s external destinations" /
        // "short-circuit pod traffic" goto the cluster policy chain; `select_backend` picks
        // cluster-wide for them), the world keeps its address on local backends.
        // A ClusterIP service has internal frontends only: no scope lookup for those.
        let masquerade = !hairpin
            && !backend_local
            && !s.external_local
            && s.kind != ServiceType::ClusterIP
            && t.frontend_scope(key.dst, key.dport, key.proto) != Scope::Internal;
        let addr = if hairpin {
            key.dst
        } else if host_backend {
            snat::host_snat_addr(key.src.v6)
        } else if masquerade {
            if t.is_node_ip(&key.dst) {
                key.dst
            } else {
                t.snat_ip(key.dst.v6).ok_or(DropReason::SnatNoAddress)?
            }
        } else if host_client {
            key.src
        } else {
            // No SNAT wanted: the common case costs this one probe, which the entry's
            // creation would have made anyway (its hash is handed on).
            let h = reply_hash.unwrap_or_else(|| self.ct.hash(reply));
            debug_assert_eq!(h, self.ct.hash(reply));
            if self.ct.lookup_hashed(reply, h, now).is_none() {
                return Ok((None, h));
            }
            key.src
        };
        let (worker, workers, proto) = (self.worker, self.workers, key.proto);
        let ct = &mut self.ct;
        let mut probe = *reply;
        probe.dst = addr;
        let port = snat::allocate(
            t.snat_ports,
            key.sport,
            key.stable_hash(),
            |p| {
                crate::owner::reply_owner(&addr, p, proto, workers) == worker
                    && t.frontend(addr, p, proto).is_none()
            },
            |p| {
                probe.dport = p;
                ct.lookup(&probe, now).is_none()
            },
        )
        .map_err(|_| DropReason::SnatExhausted)?;
        reply.dst = addr;
        reply.dport = port;
        let snat = (addr != key.src || port != key.sport).then_some(Snat { addr, port });
        Ok((snat, self.ct.hash(reply)))
    }

    /// Egress policy of a local source endpoint and ingress policy of a local destination
    /// endpoint; deny from either side denies. `dst_ep` is `t.endpoint_of(&dst)` (a new flow
    /// routes by it too, so it is looked up once); `src_ep`, when `Some`, is
    /// `t.endpoint_of(&src)` (anti-spoofing looked it up), else it is looked up here if needed.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn evaluate_policy(
        &self,
        t: &Tables,
        src: Addr,
        src_ep: Option<Option<u32>>,
        src_identity: u32,
        dst: Addr,
        dst_ep: Option<u32>,
        dst_identity: u32,
        proto: u8,
        dport: u16,
    ) -> PolicyVerdict {
        let mode = self.mode();
        // Traffic to and from this node is always allowed (Kubernetes' NetworkPolicy: "traffic
        // to and from the node where a Pod is running is always allowed") once the node's
        // traffic goes through the host interface. A node-IP source is genuine then: it enters
        // from the host interface only (`process_parsed`).
        if mode == PolicyMode::AllowAll
            || (t.host().is_some() && (t.is_node_ip(&src) || t.is_node_ip(&dst)))
        {
            return PolicyVerdict::None;
        }
        let mut verdict = PolicyVerdict::None;
        let mut denied = false;
        if let Some(ep) = src_ep.unwrap_or_else(|| t.endpoint_of(&src)) {
            if let Some(p) = &t.endpoints[ep as usize].egress {
                match p.decide(dst, dst_identity, proto, dport) {
                    Decision::Allow { .. } => verdict = PolicyVerdict::Allow,
                    Decision::Deny { .. } => denied = true,
                }
            }
        }
        if let Some(ep) = dst_ep {
            if let Some(p) = &t.endpoints[ep as usize].ingress {
                match p.decide(src, src_identity, proto, dport) {
                    Decision::Allow { .. } => verdict = PolicyVerdict::Allow,
                    Decision::Deny { .. } => denied = true,
                }
            }
        }
        if denied {
            if mode == PolicyMode::Audit {
                PolicyVerdict::Audit
            } else {
                PolicyVerdict::Deny
            }
        } else {
            verdict
        }
    }

    /// For a live flow last checked under older tables: `Some(reason)` when it must end now.
    /// Re-checks (and records) at most once per flow and generation.
    fn stale_flow_verdict(&mut self, t: &Tables, slot: u32) -> Option<DropReason> {
        let e = self.ct.entry(slot);
        if e.is_ended() || e.generation() == t.generation {
            return None;
        }
        self.revalidate(t, slot).err()
    }

    /// A flow seen first under older tables: is its backend still allowed to serve it, and
    /// does policy still allow it?
    fn revalidate(&mut self, t: &Tables, slot: u32) -> Result<(), DropReason> {
        let (orig, mut nat) = {
            let e = self.ct.entry(slot);
            (e.orig(), e.nat())
        };
        if let Some(n) = nat.as_mut() {
            // The service index is re-resolved against the new tables first, so that verdicts of
            // an ended flow never name another service that took the old index.
            let svc = t.frontend(n.vip, n.vip_port, orig.proto);
            n.service = svc.unwrap_or(NO_SERVICE);
            if let Some(mut entry) = self.ct.entry_mut(slot) {
                entry.set_service(n.service);
                entry.set_generation(t.generation);
            }
            let Some(svc) = svc else {
                return Err(DropReason::BackendGone);
            };
            match t.services[svc as usize].find_backend(n.backend, n.backend_port) {
                Some(b) if b.state != BackendState::Quarantined => {}
                _ => return Err(DropReason::BackendGone),
            }
        }
        let (dst, dport) = match nat {
            Some(n) => (n.backend, n.backend_port),
            None => (orig.dst, orig.dport),
        };
        let si = t.identity_of(&orig.src);
        let di = t.identity_of(&dst);
        let dst_ep = t.endpoint_of(&dst);
        let policy =
            self.evaluate_policy(t, orig.src, None, si, dst, dst_ep, di, orig.proto, dport);
        if policy == PolicyVerdict::Deny {
            return Err(DropReason::PolicyDenied);
        }
        if let Some(mut entry) = self.ct.entry_mut(slot) {
            entry.src_identity = si;
            entry.dst_identity = di;
            entry.policy = policy;
            entry.set_generation(t.generation);
        }
        Ok(())
    }

    /// Picks a backend for a new flow: affinity first, then Maglev or random among the backends
    /// of the frontend's address family that take new flows (ready, else serving terminating),
    /// all of them or, under a `Local` traffic policy, this node's. Errors: the source is outside
    /// a VIP's source ranges; no backend here but some elsewhere (`Local`); none at all (the
    /// worker rejects those).
    /// `key_hash`: `key.stable_hash()` when the caller has it.
    fn select_backend(
        &mut self,
        t: &Tables,
        svc: u32,
        key: &FlowKey,
        key_hash: Option<u64>,
        now: u64,
    ) -> Result<u16, DropReason> {
        let s = &t.services[svc as usize];
        // Only services with a Local policy or source ranges look up the frontend's scope.
        let local = if s.internal_local || s.external_local || !s.source_ranges.is_empty() {
            match t.frontend_scope(key.dst, key.dport, key.proto) {
                Scope::Internal => s.internal_local,
                scope => {
                    if scope == Scope::LoadBalancer && !s.source_allowed(&key.src) {
                        return Err(DropReason::SourceRangeDenied);
                    }
                    // Clients on this node (its pods, the node itself) reach external
                    // frontends through every backend, as kube-proxy short-circuits them.
                    s.external_local && !t.on_this_node(&key.src)
                }
            }
        } else {
            false
        };
        let sel = s.selection_in(key.dst.v6, local);
        if sel.active.is_empty() {
            return Err(if local && !s.selection(key.dst.v6).active.is_empty() {
                DropReason::NoLocalBackend
            } else {
                DropReason::NoBackend
            });
        }
        // Only services with affinity pay for hashing their name.
        let akey = || {
            (
                crate::flow::stable_hash_bytes(s.name.as_bytes(), 7),
                key.src,
            )
        };
        if let Some(timeout) = s.affinity_ns {
            let akey = akey();
            if let Some(a) = self.affinity.get_mut(&akey) {
                if a.expires > now {
                    // The pinned backend, if it still takes new flows of this selection.
                    let hit = sel.active.iter().copied().find(|&i| {
                        let b = &s.backends[usize::from(i)];
                        b.addr == a.backend && b.port == a.port
                    });
                    if let Some(i) = hit {
                        a.expires = now + timeout;
                        return Ok(i);
                    }
                }
            }
        }
        let pick = match s.algorithm {
            // Maglev table still pending (a large change is being compiled): a plain hash of
            // the same input modulo the active backends, deterministic like Maglev.
            Algorithm::Maglev if sel.maglev.is_empty() => {
                let h = if s.affinity_ns.is_some() {
                    FlowKey {
                        src: key.src,
                        ..FlowKey::default()
                    }
                    .stable_hash()
                } else {
                    key.stable_hash()
                };
                sel.active[(h % sel.active.len() as u64) as usize]
            }
            Algorithm::Maglev => {
                // With affinity the client address alone decides, so every node and every
                // connection of the client agree even before the affinity entry exists.
                let h = if s.affinity_ns.is_some() {
                    FlowKey {
                        src: key.src,
                        ..FlowKey::default()
                    }
                    .stable_hash()
                } else {
                    key_hash.unwrap_or_else(|| key.stable_hash())
                };
                sel.active[usize::from(sel.maglev[crate::maglev::slot(h, sel.maglev.len())])]
            }
            _ => {
                // xorshift64: deterministic per worker, so replay is reproducible.
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                sel.pick_weighted(self.rng).ok_or(DropReason::NoBackend)?
            }
        };
        if let Some(timeout) = s.affinity_ns {
            let akey = akey();
            let b = &s.backends[usize::from(pick)];
            let a = Affinity {
                backend: b.addr,
                port: b.port,
                expires: now + timeout,
            };
            if self.affinity.len() < self.affinity_cap || self.affinity.contains_key(&akey) {
                self.affinity.insert(akey, a);
            } else {
                self.counters.affinity_full += 1;
            }
        }
        Ok(pick)
    }

    /// Routes by the (translated) destination, checks TTL, and rewrites TTL and MACs.
    /// Also returns the destination MAC written (for the flow's [`FastPath`]).
    fn route_and_finish(
        &self,
        t: &Tables,
        frame: &mut [u8],
        m: &mut Meta,
    ) -> (Action, u8, [u8; 6]) {
        match route(t, &m.dst, m.ttl) {
            Ok((egress, dst_mac)) => self.finish_routed(t, frame, m, egress, dst_mac, false),
            Err(a) => (a, 0, [0; 6]),
        }
    }

    /// [`Self::route_and_finish`] with the route already known (a new flow's, taken by
    /// `new_flow` for this packet's translated destination and TTL); `ttl_done`: the TTL was
    /// decremented with the NAT already.
    #[inline(always)]
    fn finish_routed(
        &self,
        t: &Tables,
        frame: &mut [u8],
        m: &mut Meta,
        egress: IfIndex,
        dst_mac: [u8; 6],
        ttl_done: bool,
    ) -> (Action, u8, [u8; 6]) {
        if !ttl_done {
            rewrite::decrement_ttl(frame, m);
        }
        let itf = &t.ifaces[usize::from(egress)];
        // Pods sit on untagged links: a frame that came in with an 802.1Q tag leaves toward a
        // pod without it. The MACs move 4 bytes up, over the tag, and the I/O layer sends the
        // frame from `l2_trim` on (no byte of the payload moves).
        let trim = if usize::from(m.l3_off) == vlan::HEADER_LEN && itf.role != InterfaceRole::Uplink
        {
            vlan::TAG_LEN as u8
        } else {
            0
        };
        rewrite::set_macs(&mut frame[usize::from(trim)..], &itf.mac, &dst_mac);
        (Action::Forward(egress), trim, dst_mac)
    }

    /// ICMP errors: find the flow by the quoted header; translate outer and quoted headers the
    /// way the flow is translated in the error's direction; fix the checksums.
    fn icmp_error(&mut self, t: &Tables, frame: &mut [u8], m: &mut Meta, now: u64) -> Outcome {
        let inner_off = usize::from(m.l4_off) + icmp::HEADER_LEN;
        let inner = match parse::parse_inner(frame, inner_off, usize::from(m.ip_end), m.v6) {
            Ok(i) if i.has_l4() || i.frag == Frag::Later => i,
            // An error quoting garbage: route it untranslated like any unknown packet.
            _ => return self.untracked_icmp(t, frame, m),
        };
        let quoted = FlowKey {
            src: inner.src,
            dst: inner.dst,
            sport: inner.sport,
            dport: inner.dport,
            proto: inner.proto,
        };
        let Some((slot, dir)) = self.ct.lookup(&quoted.reversed(), now) else {
            return self.untracked_icmp(t, frame, m);
        };
        let e = self.ct.entry(slot);
        let mut out = Outcome {
            ct: CtStatus::Related,
            policy: e.policy,
            ..Outcome::default()
        };
        let (si, di) = match dir {
            Dir::Orig => (e.src_identity, e.dst_identity),
            Dir::Reply => (e.dst_identity, e.src_identity),
        };
        out.src_identity = Some(si);
        out.dst_identity = Some(di);
        if let Some(nat) = e.nat() {
            out.service = Some(nat.service);
            out.backend = Some((nat.backend, nat.backend_port));
            let mut im = inner;
            match dir {
                // Toward the backend: the quoted packet came from the VIP (and went to the
                // client, which the backend knows by its source NAT).
                Dir::Orig => {
                    if m.dst == nat.vip {
                        rewrite::set_addr(frame, m, true, nat.backend);
                    }
                    rewrite_quoted(frame, &mut im, false, nat.backend, nat.backend_port);
                    if let Some(sn) = e.snat() {
                        rewrite_quoted(frame, &mut im, true, sn.addr, sn.port);
                    }
                }
                // Toward the client: the quoted packet went to the backend (from the source
                // NAT, which the client knows as itself).
                Dir::Reply => {
                    if m.src == nat.backend {
                        rewrite::set_addr(frame, m, false, nat.vip);
                    }
                    rewrite_quoted(frame, &mut im, true, nat.vip, nat.vip_port);
                    if let Some(sn) = e.snat() {
                        let o = e.orig();
                        if m.dst == sn.addr {
                            rewrite::set_addr(frame, m, true, o.src);
                        }
                        rewrite_quoted(frame, &mut im, false, o.src, o.sport);
                    }
                }
            }
            fix_icmp_checksum(frame, m);
        }
        (out.action, out.l2_trim, _) = self.route_and_finish(t, frame, m);
        out
    }

    /// An ICMP error about no flow we know: no translation needed; route it subject to policy.
    fn untracked_icmp(&mut self, t: &Tables, frame: &mut [u8], m: &mut Meta) -> Outcome {
        if t.is_node_ip(&m.dst) {
            return Outcome::default();
        }
        if t.service_ips.contains_key(&m.dst) {
            // About a flow to or from a service that we do not track: only a translation could
            // deliver it, and there is none (a VIP is no host to route it to).
            return Outcome::drop(DropReason::CtInvalid);
        }
        let si = t.identity_of(&m.src);
        let di = t.identity_of(&m.dst);
        let dst_ep = t.endpoint_of(&m.dst);
        let policy = self.evaluate_policy(t, m.src, None, si, m.dst, dst_ep, di, m.proto, 0);
        let mut out = Outcome {
            src_identity: Some(si),
            dst_identity: Some(di),
            policy,
            ..Outcome::default()
        };
        if policy == PolicyVerdict::Deny {
            out.action = Action::Drop(DropReason::PolicyDenied);
            return out;
        }
        if si == reserved::WORLD && t.endpoint_of(&m.dst).is_none() && !t.in_pod_cidr(&m.dst) {
            // World to world through us: not ours to forward.
            return Outcome::default();
        }
        (out.action, out.l2_trim, _) = self.route_and_finish(t, frame, m);
        out
    }
}

/// Whether an ICMP error to a node IP quotes a packet the dataplane sent from a node IP: a
/// masqueraded flow's (source port in `node.snat_port_range`: a router's "fragmentation
/// needed" or "unreachable" about it) or a NodePort flow's reply to its client (source: the
/// node port). The XDP program steers exactly these (rule 4a); conntrack decides the rest
/// (an error about no known flow is passed, `pass_dropped`). Only ICMP errors to a node IP
/// come here, so ordinary packets never pay for the quote's parse.
#[cold]
fn quotes_our_source(t: &Tables, frame: &[u8], m: &Meta) -> bool {
    let off = usize::from(m.l4_off) + icmp::HEADER_LEN;
    let Ok(inner) = parse::parse_inner(frame, off, usize::from(m.ip_end), m.v6) else {
        return false;
    };
    inner.has_l4()
        && matches!(inner.proto, PROTO_TCP | PROTO_UDP)
        && t.is_node_ip(&inner.src)
        && (t.snat_ports.contains(inner.sport)
            || t.frontend(inner.src, inner.sport, inner.proto).is_some())
}

/// Rewrites the quoted datagram inside an ICMP error: its source (`dst = false`) or
/// destination address and port, with the quoted IPv4 header checksum and the quoted L4
/// checksum (when the quote carries it) updated incrementally.
fn rewrite_quoted(frame: &mut [u8], im: &mut Meta, dst: bool, addr: Addr, port: u16) {
    let l3 = usize::from(im.l3_off);
    let end = usize::from(im.ip_end);
    let (aoff, alen) = match (im.v6, dst) {
        (false, false) => (l3 + ipv4::SRC_ADDR.start, ipv4::ADDR_LEN),
        (false, true) => (l3 + ipv4::DST_ADDR.start, ipv4::ADDR_LEN),
        (true, false) => (l3 + ipv6::SRC_ADDR.start, ipv6::ADDR_LEN),
        (true, true) => (l3 + ipv6::DST_ADDR.start, ipv6::ADDR_LEN),
    };
    let mut old = [0u8; 16];
    old[..alen].copy_from_slice(&frame[aoff..aoff + alen]);
    let new = &addr.bytes[..alen];
    if !im.v6 {
        let c = get16(frame, l3 + ipv4::CHECKSUM.start);
        put16(
            frame,
            l3 + ipv4::CHECKSUM.start,
            csum::update_bytes(c, &old[..alen], new),
        );
    }
    let l4 = usize::from(im.l4_off);
    let l4_csum = match im.proto {
        PROTO_TCP if im.has_l4() && l4 + tcp::CHECKSUM.end <= end => Some(l4 + tcp::CHECKSUM.start),
        PROTO_UDP if im.has_l4() && l4 + udp::CHECKSUM.end <= end => Some(l4 + udp::CHECKSUM.start),
        _ => None,
    };
    let ports = if dst { tcp::DST_PORT } else { tcp::SRC_PORT };
    let port_off =
        (im.has_l4() && matches!(im.proto, PROTO_TCP | PROTO_UDP) && l4 + tcp::DST_PORT.end <= end)
            .then_some(l4 + ports.start);
    if let Some(co) = l4_csum {
        let mut c = get16(frame, co);
        if !(im.proto == PROTO_UDP && !im.v6 && c == 0) {
            c = csum::update_bytes(c, &old[..alen], new);
            if let Some(po) = port_off {
                c = csum::update16(c, get16(frame, po), port);
            }
            put16(frame, co, c);
        }
    }
    frame[aoff..aoff + alen].copy_from_slice(new);
    if let Some(po) = port_off {
        put16(frame, po, port);
    }
}

/// Recomputes an ICMP(v6) message's checksum in full: the quoted bytes changed in several
/// places, and ICMP errors are rare enough that the full sum is the simpler, safer choice.
fn fix_icmp_checksum(frame: &mut [u8], m: &Meta) {
    let l4 = usize::from(m.l4_off);
    let end = usize::from(m.ip_end);
    // ICMP and ICMPv6 keep their checksum at the same place.
    put16(frame, l4 + icmp::CHECKSUM.start, 0);
    let mut acc = csum::sum(&frame[l4..end], 0);
    if m.v6 {
        acc = csum::sum(&m.src.bytes, acc);
        acc = csum::sum(&m.dst.bytes, acc);
        acc += (end - l4) as u32;
        acc += u32::from(PROTO_ICMPV6);
    }
    put16(frame, l4 + icmp::CHECKSUM.start, !csum::fold(acc));
}

/// Where a packet to `dst` leaves: a local endpoint's pod interface, the host (pass), or the
/// uplink's next hop. `Err` is the final action when it cannot be forwarded; a TTL that would
/// reach zero is checked here so no flow state is created for a packet that goes nowhere.
#[inline]
fn route(t: &Tables, dst: &Addr, ttl: u8) -> Result<Route, Action> {
    route_at(t, dst, t.endpoint_of(dst), ttl)
}

/// [`route`] with `t.endpoint_of(dst)` known.
#[inline]
fn route_at(t: &Tables, dst: &Addr, dst_ep: Option<u32>, ttl: u8) -> Result<Route, Action> {
    let r = if let Some(ep) = dst_ep {
        let ep = &t.endpoints[ep as usize];
        (ep.iface, ep.mac)
    } else if t.is_node_ip(dst) {
        // The node's own stack: through the host interface when there is one (replies to the
        // node's traffic, host-network backends), else the kernel's already.
        match t.host() {
            Some(h) => (h, t.ifaces[usize::from(h)].gateway_mac.unwrap_or([0; 6])),
            None => return Err(Action::Pass),
        }
    } else if t.in_pod_cidr(dst) {
        return Err(Action::Drop(DropReason::NoEndpoint));
    } else {
        let Some(up) = t.uplink() else {
            return Err(Action::Drop(DropReason::NoNeighbor));
        };
        match t.ifaces[usize::from(up)].gateway_mac {
            Some(mac) => (up, mac),
            None => return Err(Action::Drop(DropReason::NoNeighbor)),
        }
    };
    if ttl <= 1 {
        return Err(Action::Drop(DropReason::TtlExceeded));
    }
    Ok(r)
}

/// The established-flow fast path: a packet of a live flow, in a direction whose previous
/// packet came in on the same interface under the same tables and was forwarded, and which
/// changes no connection state (see [`Conntrack::touch_steady`]). Such a packet would pass
/// classification and route to the same place, so both are taken from the entry's
/// [`FastPath`]; accounting, timer, NAT and TTL are what [`Pipeline::flow_path`] does. Only for
/// packets [`fast_candidate`] admits: they would reach `flow_path` unchanged. `false`: take the
/// full path (nothing was changed). A free function over the pipeline's parts, so that the
/// parse is read where stage 1 left it.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the pipeline's parts, borrowed apart so the parse is read in place"
)]
fn established_fast(
    ct: &mut Conntrack,
    epoch: u32,
    t: &Tables,
    frame: &mut [u8],
    m: &Meta,
    iface: IfIndex,
    now: u64,
    out: &mut Outcome,
) -> bool {
    let key = FlowKey {
        src: m.src,
        dst: m.dst,
        sport: m.sport,
        dport: m.dport,
        proto: m.proto,
    };
    let Some((slot, dir)) = ct.find(&key) else {
        return false;
    };
    let e = ct.entry(slot);
    // The epoch implies the generation (see `lane4`).
    let fast = e.fast(dir);
    if fast.epoch != epoch
        || fast.ingress != iface
        || ct.expires(slot) <= now
        || e.is_ended()
        || m.ttl <= 1
    {
        return false;
    }
    // Valid under these tables (same epoch), so always there.
    let Some(egress) = t.ifaces.get(usize::from(fast.egress)) else {
        return false;
    };
    if !ct.touch_steady(slot, dir, m.tcp_flags, frame.len(), now) {
        return false;
    }
    let e = ct.entry(slot);
    let (service, backend) = match &e.nat() {
        Some(nat) => {
            let (to_dst, addr, port) = match dir {
                Dir::Orig => (true, nat.backend, nat.backend_port),
                Dir::Reply => (false, nat.vip, nat.vip_port),
            };
            if !rewrite::nat_v4_and_ttl_frame(frame, m, to_dst, addr, port) {
                let mut m = *m;
                rewrite::set_addr_port(frame, &mut m, to_dst, addr, port);
                rewrite::decrement_ttl(frame, &mut m);
            }
            if let Some(sn) = e.snat() {
                // The other side: the client leaves from the source NAT, replies go back to it.
                let (addr, port) = match dir {
                    Dir::Orig => (sn.addr, sn.port),
                    Dir::Reply => {
                        let o = e.orig();
                        (o.src, o.sport)
                    }
                };
                let mut m = *m;
                rewrite::set_addr_port(frame, &mut m, !to_dst, addr, port);
            }
            (Some(nat.service), Some((nat.backend, nat.backend_port)))
        }
        None => {
            rewrite::decrement_ttl_frame(frame, m);
            (None, None)
        }
    };
    let trim = if usize::from(m.l3_off) == vlan::HEADER_LEN && fast.egress_pod {
        vlan::TAG_LEN as u8
    } else {
        0
    };
    rewrite::set_macs(&mut frame[usize::from(trim)..], &egress.mac, &fast.dst_mac);
    *out = Outcome::established(fast.egress, dir, &e, service, backend, trim);
    true
}

/// Link-local and multicast: the kernel's.
fn is_link_scoped(a: &Addr) -> bool {
    if a.v6 {
        let b = a.bytes;
        b[0] == 0xff || (b[0] == 0xfe && b[1] & 0xc0 == 0x80) || b == [0; 16]
    } else {
        let b = a.bytes;
        b[0] >= 224 || (b[0] == 169 && b[1] == 254) || b[..4] == [0, 0, 0, 0] || b[..4] == [255; 4]
    }
}

/// A packet that `process_parsed` would hand to `flow_path` untouched if its flow is known:
/// not a fragment, not an ICMP error (matched by its quote instead), not link-local ICMPv6
/// control (the kernel's). Interface, classification and route come from the flow's
/// [`FastPath`], which exists only if they passed before. A TCP SYN, FIN or RST is never
/// steady ([`Conntrack::touch_steady`] refuses it), so it is not a candidate either: a new
/// connection's SYN goes straight to the full path instead of hashing and probing its key
/// twice (~170 instructions per new connection). `tcp_flags` is 0 but for TCP (`parse`).
#[inline(always)]
fn fast_candidate(m: &Meta) -> bool {
    m.frag == Frag::None
        && m.tcp_flags & (tcp::flags::SYN | tcp::flags::FIN | tcp::flags::RST) == 0
        && !parse::is_icmp_error(m)
        && !parse::is_icmpv6_link_control(m)
}

/// RFC 791: an IPv4 datagram is (src, dst, protocol, id). RFC 8200: an IPv6 one is (src, dst,
/// id); its protocol is not part of the key (a later fragment names only the header after its
/// fragment header, which need not be the first fragment's L4 protocol).
fn frag_key(m: &Meta) -> FragKey {
    FragKey {
        src: m.src,
        dst: m.dst,
        id: m.frag_id,
        proto: if m.v6 { 0 } else { m.proto },
    }
}
