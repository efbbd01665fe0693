//! A burst's new connections looked ahead (VPP's dual loop, for the SYNs of a burst): before the
//! burst is processed, every TCP SYN of the common frame (untagged IPv4 with a 20-byte header,
//! not a later fragment) has its frontend looked up, its Maglev hash computed and, for a plain
//! Maglev service (`Service::plain_maglev`), its backend picked, in passes over the burst's
//! SYNs. Each pass's loads are independent from one SYN to the next, so the CPU overlaps their
//! cache misses; processed one SYN after another, the chain frontend → Maglev slot → backend
//! missed in series, once per SYN (the per-service tables are cold with many services:
//! bench/RESULTS.md "New connections at 100k services"). The frontend entry
//! (`Tables::frontends4`, keyed by one word) carries the service's Maglev table and its active
//! backends' records ([`Front4`]), so that the chain is three dependent reads, not the five
//! of the frontend map, the service record, its table, its `active` list and its `backends`.
//! The last passes read the picked backend's endpoint record and its ingress policy's first
//! rule and lists, which the new flow's policy and route read next (with many endpoints, three
//! more dependent misses per SYN).
//!
//! The results are hints for the packets' own processing ([`SynHint`]): `new_flow` takes the
//! frontend and the backend (its address, port, locality and endpoint) of its key from them
//! instead of looking again (they are what its
//! lookups would give: the same key, the same tables, the same functions), and anything else (a
//! packet that turns out to belong to a live flow) ignores them. It looks only at bursts that
//! follow one that created a flow, so that established traffic pays one test per burst.

use std::hint::black_box;

use super::BURST;
use crate::conntrack::Conntrack;
use crate::flow::{Addr, FlowKey, PROTO_TCP};
use crate::maglev;
use crate::parse::LEAN4_L4;
use crate::tables::{front4_key, Front4, Tables};
use crate::wire::{at, ethernet, ipv4, tcp};
use crate::Packet;

/// No frontend matched, or no backend was picked ahead.
pub(super) const NONE: u32 = u32::MAX;

/// What the look-ahead found for one SYN: a function of its key and the tables alone, so it
/// holds for whichever frame of the burst carries that key.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SynHint {
    /// The key: IPv4 source and destination as they sit in the header, `sport << 16 | dport`.
    src: u32,
    dst: u32,
    ports: u32,
    /// The frontend's service ([`NONE`]: no frontend).
    pub svc: u32,
    /// The backend picked (an index into the service's backends), or [`NONE`]: pick as usual.
    pub pick: u32,
    /// `FlowKey::stable_hash` of the key (the Maglev input).
    pub hash: u64,
    /// The picked backend's local endpoint ([`NONE`]: none, or no pick): its record and
    /// ingress policy are read ahead too.
    pub ep: u32,
    /// The picked backend's address, port and locality (with a pick): what `new_flow` would
    /// read from its record.
    pub addr: [u8; 4],
    pub port: u16,
    pub local: bool,
    /// The conntrack hash of the key (`Conntrack::hash`), and with a pick that of the reply
    /// key the new flow probes when it needs no source NAT (the backend's address and port to
    /// the client's): computed once, here, where their index buckets are read ahead.
    pub ct_hash: u64,
    pub ct_reply: u64,
}

/// The hints of the current burst's SYNs, in frame order.
#[derive(Debug)]
pub(super) struct LookAhead {
    hints: Box<[SynHint; BURST]>,
    /// Hints held, and the first one not yet taken or passed over.
    n: usize,
    next: usize,
    /// A flow was created since the last look: the next burst is looked at. A burst that
    /// follows one of established packets only pays one test, its frames are not scanned.
    pub created: bool,
}

impl Default for LookAhead {
    fn default() -> Self {
        LookAhead {
            hints: Box::new([SynHint::default(); BURST]),
            n: 0,
            next: 0,
            created: false,
        }
    }
}

/// The 4 address bytes of an IPv4 `Addr` as one word (native order, as compared only).
#[inline(always)]
fn word(a: &Addr) -> u32 {
    u32::from_ne_bytes([a.bytes[0], a.bytes[1], a.bytes[2], a.bytes[3]])
}

/// The key of a frame that is a TCP SYN (no ACK, RST or FIN) in the common frame, else `None`.
/// The flags are tested first: an established packet costs one length check and one byte test.
#[inline(always)]
fn syn_key(frame: &[u8]) -> Option<FlowKey> {
    const L3: usize = ethernet::HEADER_LEN;
    const ETHERTYPE: [u8; 2] = ethernet::ETHERTYPE_IPV4.to_be_bytes();
    let h: &[u8; LEAN4_L4 + tcp::MIN_HEADER_LEN] = frame.first_chunk()?;
    if h[LEAN4_L4 + tcp::FLAGS] & SYN_TEST != tcp::flags::SYN {
        return None;
    }
    let fo = u16::from_be_bytes([h[L3 + ipv4::FLG_OFF.start], h[L3 + ipv4::FLG_OFF.start + 1]]);
    if h[ethernet::ETHERTYPE] != ETHERTYPE
        || h[L3 + ipv4::VER_IHL] != ipv4::VER_IHL_NO_OPTIONS
        || h[L3 + ipv4::PROTOCOL] != PROTO_TCP
        || fo & ipv4::OFFSET_MASK != 0
    {
        return None;
    }
    let a4 = |r: std::ops::Range<usize>| {
        Addr::v4([h[r.start], h[r.start + 1], h[r.start + 2], h[r.start + 3]])
    };
    let p16 = |r: std::ops::Range<usize>| u16::from_be_bytes([h[r.start], h[r.start + 1]]);
    Some(FlowKey {
        src: a4(at(L3, ipv4::SRC_ADDR)),
        dst: a4(at(L3, ipv4::DST_ADDR)),
        sport: p16(at(LEAN4_L4, tcp::SRC_PORT)),
        dport: p16(at(LEAN4_L4, tcp::DST_PORT)),
        proto: PROTO_TCP,
    })
}

/// The flags a SYN of a new connection has (SYN) and has not (ACK, RST, FIN).
const SYN_TEST: u8 = tcp::flags::SYN | tcp::flags::ACK | tcp::flags::RST | tcp::flags::FIN;

/// A new flow that the look-ahead would have looked at: an IPv4 TCP SYN (the frame test of
/// [`syn_key`], less the frame layout, which only decides whether it was looked at).
#[inline(always)]
pub(super) fn is_syn4(v6: bool, proto: u8, tcp_flags: u8) -> bool {
    !v6 && proto == PROTO_TCP && tcp_flags & SYN_TEST == tcp::flags::SYN
}

impl LookAhead {
    /// Looks ahead at the SYNs of `chunk` (at most [`BURST`] frames), if armed.
    #[inline(always)]
    pub(super) fn look(&mut self, t: &Tables, ct: &Conntrack, chunk: &[Packet<'_>]) {
        self.n = 0;
        self.next = 0;
        if std::mem::take(&mut self.created) {
            self.look_at(t, ct, chunk);
        }
    }

    #[inline(never)]
    fn look_at(&mut self, t: &Tables, ct: &Conntrack, chunk: &[Packet<'_>]) {
        let hints = &mut self.hints;
        // Each SYN's frontend entry, for the passes after the first (no allocation).
        let mut fronts: [Option<&Front4>; BURST] = [None; BURST];
        // Pass 1: which frames are SYNs; their frontend entry (`Tables::frontends4`), Maglev
        // hash and, for a plain Maglev service, slot (kept in `pick` for now: the table's
        // length is in the entry).
        let mut n = 0;
        for p in chunk.iter().take(BURST) {
            if let Some(k) = syn_key(p.data) {
                let dst = [
                    k.dst.bytes[0],
                    k.dst.bytes[1],
                    k.dst.bytes[2],
                    k.dst.bytes[3],
                ];
                let f = t.frontends4.get(&front4_key(dst, k.dport, PROTO_TCP));
                let hash = k.stable_hash();
                let pick = match f {
                    Some(f) if !f.maglev.is_empty() => maglev::slot(hash, f.maglev.len()) as u32,
                    _ => NONE,
                };
                let j = n & (BURST - 1);
                fronts[j] = f;
                hints[j] = SynHint {
                    src: word(&k.src),
                    dst: word(&k.dst),
                    ports: u32::from(k.sport) << 16 | u32::from(k.dport),
                    svc: f.map_or(NONE, |f| f.svc),
                    pick,
                    hash,
                    ep: NONE,
                    addr: [0; 4],
                    port: 0,
                    local: false,
                    ct_hash: ct.hash(&k),
                    ct_reply: 0,
                };
                n += 1;
            }
        }
        self.n = n;
        let hints = &mut hints[..n.min(BURST)];
        // Pass 2: the Maglev slot: the index of the active backend (kept in `pick` for now).
        for (h, f) in hints.iter_mut().zip(fronts.iter()) {
            if let (true, Some(f)) = (h.pick != NONE, f) {
                h.pick = f
                    .maglev
                    .get(h.pick as usize)
                    .map_or(NONE, |&a| u32::from(a));
            }
        }
        // Pass 3: the backend that index names: the pick, with what the new flow reads of it.
        for (h, f) in hints.iter_mut().zip(fronts.iter()) {
            if let (true, Some(f)) = (h.pick != NONE, f) {
                match f.picks.get(h.pick as usize) {
                    Some(b) => {
                        h.pick = u32::from(b.backend);
                        h.addr = b.addr;
                        h.port = b.port;
                        h.local = b.local;
                        h.ep = b.endpoint;
                    }
                    None => h.pick = NONE,
                }
            }
        }
        // Pass 4: the conntrack index's buckets of the key (the new flow's probe and insert)
        // and, with a pick, of its reply key (the probe for a clash, and the insert): two
        // misses per SYN with many flows, whatever the number of services.
        for h in hints.iter_mut() {
            let mut w = ct.warm(h.ct_hash);
            if h.pick != NONE {
                let reply = FlowKey {
                    src: Addr::v4(h.addr),
                    dst: Addr::v4(h.src.to_ne_bytes()),
                    sport: h.port,
                    dport: (h.ports >> 16) as u16,
                    proto: PROTO_TCP,
                };
                h.ct_reply = ct.hash(&reply);
                w ^= ct.warm(h.ct_reply);
            }
            black_box(w);
        }
        // Passes 5-7: a local backend's endpoint record (identity, interface, MAC: policy and
        // route read them), then its ingress policy's first rule, then that rule's lists. With
        // many endpoints each is a miss that the decision would otherwise take in series.
        for h in hints.iter() {
            if let Some(e) = t.endpoints.get(h.ep as usize) {
                black_box((e.identity, e.iface, e.ingress.is_some()));
            }
        }
        for step in 0..2 {
            for h in hints.iter() {
                if let Some(p) = t
                    .endpoints
                    .get(h.ep as usize)
                    .and_then(|e| e.ingress.as_ref())
                {
                    black_box(p.warm(step));
                }
            }
        }
    }

    /// The hint for `key` (a new flow for which [`is_syn4`] holds), if this burst's look-ahead
    /// found one. Hints are taken in frame order; those passed over belonged to frames that
    /// did not start a flow (a retransmitted SYN of a live one).
    #[inline(always)]
    pub(super) fn take(&mut self, key: &FlowKey) -> Option<SynHint> {
        let (src, dst) = (word(&key.src), word(&key.dst));
        let ports = u32::from(key.sport) << 16 | u32::from(key.dport);
        let n = self.n.min(BURST);
        let mut j = self.next;
        while j < n {
            let h = self.hints[j];
            j += 1;
            if h.ports == ports && h.src == src && h.dst == dst {
                self.next = j;
                return Some(h);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn(flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[12] = 0x08;
        f[14] = 0x45;
        f[14 + 9] = PROTO_TCP;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 96, 0, 1]);
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        f[47] = flags;
        f
    }

    #[test]
    fn only_plain_syns_of_the_common_frame_are_looked_at() {
        let k = syn_key(&syn(tcp::flags::SYN)).expect("a SYN");
        assert_eq!(k.src, Addr::v4([10, 0, 0, 1]));
        assert_eq!(k.dst, Addr::v4([10, 96, 0, 1]));
        assert_eq!((k.sport, k.dport, k.proto), (40000, 80, PROTO_TCP));
        assert!(syn_key(&syn(tcp::flags::SYN | tcp::flags::ACK)).is_none());
        assert!(syn_key(&syn(tcp::flags::ACK)).is_none());
        assert!(syn_key(&syn(tcp::flags::SYN | tcp::flags::RST)).is_none());
        let mut later = syn(tcp::flags::SYN);
        later[14 + 7] = 1; // fragment offset 8
        assert!(syn_key(&later).is_none());
        let mut udp = syn(tcp::flags::SYN);
        udp[14 + 9] = 17;
        assert!(syn_key(&udp).is_none());
        let mut opts = syn(tcp::flags::SYN);
        opts[14] = 0x46;
        assert!(syn_key(&opts).is_none());
        assert!(syn_key(&syn(tcp::flags::SYN)[..40]).is_none());
    }
}
