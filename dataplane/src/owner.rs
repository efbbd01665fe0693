//! Which worker owns a packet's flow (symmetric steering for per-worker conntrack).
//!
//! The NIC (or veth) picks a receive queue per packet, independently for a request and its
//! reply, so with more than one worker a flow's two directions land on different workers half
//! of the time. Conntrack is owned per worker (the [`Pipeline`](crate::Pipeline)
//! holds it), so every packet is processed by its flow's *owner*: the worker chosen by a hash
//! of a value that both directions carry unchanged, through NAT. A packet received by another
//! worker is handed off to the owner (see `io.rs`).
//!
//! The value is the **client endpoint** (address, port), which DNAT never rewrites:
//!
//! | packet | rule | key |
//! |---|---|---|
//! | client → VIP:port (ClusterIP / NodePort / LB frontend) | 1. dst is a frontend | src |
//! | backend:port → client (reply, reverse-NATed by the owner) | 2. src is a backend | dst |
//! | client → backend:port (direct, no service) | 3. dst is a backend | src |
//! | anything else (pod ↔ pod, pod ↔ world, ICMP echo) | 4. | sorted (src, dst) pair |
//!
//! Rules are tried in order. Rules 1-3 give the same key for both directions of every service
//! flow; rule 4 is symmetric by construction. ICMP errors are owned by the flow they quote
//! (the rules are applied to the quoted header). Known corner (documented in docs/runtime.md):
//! a flow between two backend ports with no service in between (`web1:8080 → web2:8080`)
//! hashes its directions differently by rules 2 and 3; such a reply reaches a worker without
//! the flow and is treated as a new flow.
//!
//! Non-first IP fragments carry no ports. The worker that receives a first fragment (which has
//! them) records its owner in [`FragOwners`], shared by all workers, under the datagram's
//! identity; later fragments, wherever they arrive, go to that owner. A later fragment whose
//! first fragment was not seen yet (out of order, or its record overwritten) falls back to its
//! addresses alone.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::flow::{mix, Addr, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use crate::parse::{self, Frag, Meta, Parsed};
use crate::wire::icmp;
use crate::{DropReason, Tables};
use hashbrown::HashSet;

/// The service endpoints of one table snapshot, for the ownership rules. Built when tables
/// are published (allocates), read per packet (does not).
#[derive(Debug, Default, Clone)]
pub struct OwnerIndex {
    /// (address, port, protocol) of every backend of every service.
    backends: HashSet<(Addr, u16, u8)>,
}

impl OwnerIndex {
    pub fn new(t: &Tables) -> OwnerIndex {
        let mut backends = HashSet::new();
        for (key, &svc) in &t.frontends {
            if let Some(s) = t.services.get(svc as usize) {
                for b in &s.backends {
                    backends.insert((b.addr, b.port, key.proto));
                }
            }
        }
        OwnerIndex { backends }
    }

    fn is_backend(&self, a: Addr, port: u16, proto: u8) -> bool {
        !self.backends.is_empty() && self.backends.contains(&(a, port, proto))
    }
}

#[inline]
fn endpoint_hash(a: &Addr, port: u16, proto: u8) -> u64 {
    let lo = u64::from_le_bytes(a.bytes[..8].try_into().unwrap_or([0; 8]));
    let hi = u64::from_le_bytes(a.bytes[8..].try_into().unwrap_or([0; 8]));
    mix(mix(lo ^ u64::from(proto) << 56) ^ hi ^ u64::from(port) << 40)
}

/// The worker among `workers` that receives the replies of a flow whose reply goes to
/// `addr:port` (rule 2: a backend's reply is owned by its destination endpoint). Source NAT
/// allocates only ports whose replies come back to the allocating worker (see `snat.rs`).
#[inline]
pub fn reply_owner(addr: &Addr, port: u16, proto: u8, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    owner_of(endpoint_hash(addr, port, proto), workers)
}

/// The owner hash of a (src, sport, dst, dport, proto) tuple, by the rules of the module docs.
#[inline]
pub fn owner_hash(
    t: &Tables,
    idx: &OwnerIndex,
    src: Addr,
    sport: u16,
    dst: Addr,
    dport: u16,
    proto: u8,
) -> u64 {
    if matches!(proto, PROTO_TCP | PROTO_UDP) {
        if t.frontend(dst, dport, proto).is_some() {
            return endpoint_hash(&src, sport, proto);
        }
        if idx.is_backend(src, sport, proto) {
            return endpoint_hash(&dst, dport, proto);
        }
        if idx.is_backend(dst, dport, proto) {
            return endpoint_hash(&src, sport, proto);
        }
    }
    let proto = if proto == PROTO_ICMPV6 {
        PROTO_ICMP
    } else {
        proto
    };
    let a = endpoint_hash(&src, sport, proto);
    let b = endpoint_hash(&dst, dport, proto);
    // Symmetric: the same for (a, b) and (b, a).
    mix(a.min(b) ^ a.max(b).rotate_left(17))
}

/// The owner hash of a frame, or `None` when any worker may take it (not IP, malformed: the
/// pipeline decides those without flow state).
pub fn frame_owner_hash(t: &Tables, idx: &OwnerIndex, frame: &[u8]) -> Option<u64> {
    let m: Meta = match parse::parse(frame) {
        Ok(Parsed::Ip(m)) => m,
        _ => return None,
    };
    Some(meta_owner_hash(t, idx, frame, &m))
}

/// [`frame_owner_hash`] of a parsed frame (a later fragment: by its addresses alone).
fn meta_owner_hash(t: &Tables, idx: &OwnerIndex, frame: &[u8], m: &Meta) -> u64 {
    if m.frag == Frag::Later {
        return owner_hash(t, idx, m.src, 0, m.dst, 0, 0);
    }
    if parse::is_icmp_error(m) && m.has_l4() {
        // The quoted datagram follows the 8-byte ICMP(v6) header.
        let off = usize::from(m.l4_off) + icmp::HEADER_LEN;
        if let Ok(inner) = parse::parse_inner(frame, off, usize::from(m.ip_end), m.v6) {
            if inner.has_l4() {
                return owner_hash(
                    t,
                    idx,
                    inner.src,
                    inner.sport,
                    inner.dst,
                    inner.dport,
                    inner.proto,
                );
            }
        }
    }
    owner_hash(t, idx, m.src, m.sport, m.dst, m.dport, m.proto)
}

/// Owners of recent fragmented datagrams: a fixed table of atomic slots shared by the workers
/// (written by the worker that receives a first fragment, read by the one that receives a
/// later fragment). No lock and no allocation per packet; a slot holds a tag of the datagram's
/// identity and its owner, and a newer datagram hashing to the same slot overwrites it.
#[derive(Debug)]
pub struct FragOwners {
    slots: Box<[AtomicU64]>,
}

impl FragOwners {
    /// `slots` is rounded up to a power of two.
    pub fn new(slots: usize) -> FragOwners {
        let n = slots.max(2).next_power_of_two();
        FragOwners {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The datagram's identity: (src, dst, id, protocol) for IPv4; (src, dst, id) for IPv6,
    /// whose fragments the pipeline keys without the protocol.
    fn key(m: &Meta) -> u64 {
        let proto = if m.v6 { 0 } else { m.proto };
        let a = endpoint_hash(&m.src, 0, proto);
        let b = endpoint_hash(&m.dst, 0, 0);
        mix(a ^ b.rotate_left(29) ^ u64::from(m.frag_id) << 8)
    }

    fn slot(&self, k: u64) -> &AtomicU64 {
        &self.slots[(k as usize) & (self.slots.len() - 1)]
    }

    /// A first fragment was received: its datagram belongs to `owner`.
    pub fn record(&self, m: &Meta, owner: usize) {
        let k = Self::key(m);
        let v = (k & !0xffff) | (owner as u64 & 0x7fff) | 0x8000;
        self.slot(k).store(v, Ordering::Relaxed);
    }

    /// The owner recorded for a later fragment's datagram.
    pub fn lookup(&self, m: &Meta) -> Option<usize> {
        let k = Self::key(m);
        let v = self.slot(k).load(Ordering::Relaxed);
        (v & 0x8000 != 0 && v & !0xffff == k & !0xffff).then_some((v & 0x7fff) as usize)
    }
}

/// The worker that owns a frame's flow among `workers`, or `None` when any worker may take
/// it (see [`frame_owner_hash`]). Fragments: a first fragment records its owner in `frags`,
/// a later fragment goes to the owner recorded for its datagram (see the module docs).
///
/// `parsed` is the frame's parse: the I/O parses each frame once, and the parse travels with
/// the frame to its owner's pipeline.
pub fn frame_owner(
    t: &Tables,
    idx: &OwnerIndex,
    frags: &FragOwners,
    frame: &[u8],
    parsed: &Result<Parsed, DropReason>,
    workers: usize,
) -> Option<usize> {
    let m: Meta = match parsed {
        Ok(Parsed::Ip(m)) => *m,
        _ => return None,
    };
    match m.frag {
        Frag::Later => Some(
            frags
                .lookup(&m)
                .filter(|&w| w < workers)
                .unwrap_or_else(|| owner_of(meta_owner_hash(t, idx, frame, &m), workers)),
        ),
        Frag::First => {
            let w = owner_of(meta_owner_hash(t, idx, frame, &m), workers);
            frags.record(&m, w);
            Some(w)
        }
        Frag::None => Some(owner_of(meta_owner_hash(t, idx, frame, &m), workers)),
    }
}

/// The worker index for a hash.
#[inline]
pub fn owner_of(hash: u64, workers: usize) -> usize {
    if workers <= 1 {
        0
    } else {
        // Multiply-shift: uniform over `workers` without a division.
        ((u128::from(hash) * workers as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{at, ethernet, ipv4, udp};
    use crate::MaglevCache;
    use std::net::IpAddr;

    fn tables() -> Tables {
        let state = nodeplane_state::example::state().expect("example state");
        Tables::build(&state, 1, &mut MaglevCache::default())
    }

    fn a(s: &str) -> Addr {
        Addr::from(s.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn both_directions_of_service_flows_share_an_owner() {
        let t = tables();
        let idx = OwnerIndex::new(&t);
        let client = a("10.244.1.10");
        let world = a("192.168.100.1");
        let node = a("192.168.100.2");
        let web1 = a("10.244.1.21");
        // (request src, sport, request dst, dport, backend, backend port, proto)
        let cases = [
            (client, 40001, a("10.96.0.10"), 80, web1, 8080, PROTO_TCP),
            (
                client,
                40002,
                a("10.96.0.53"),
                53,
                a("10.244.1.22"),
                5353,
                PROTO_UDP,
            ),
            (world, 50000, node, 30080, web1, 8080, PROTO_TCP),
            (world, 50001, node, 30053, web1, 8080, PROTO_UDP),
            (world, 50002, a("203.0.113.10"), 80, web1, 8080, PROTO_TCP),
            (
                a("fd00:244:1::10"),
                40003,
                a("fd00:96::10"),
                80,
                a("fd00:244:1::22"),
                8080,
                PROTO_TCP,
            ),
            // Direct to a backend port, no service.
            (client, 40004, web1, 8080, web1, 8080, PROTO_TCP),
            // Pod to pod, not a service port at all; pod to world.
            (client, 40005, web1, 9999, web1, 9999, PROTO_TCP),
            (client, 40006, world, 443, world, 443, PROTO_TCP),
            // ICMP echo: id in sport for the request, in dport for the reply.
            (client, 7, web1, 0, web1, 0, PROTO_ICMP),
        ];
        for (src, sport, dst, dport, be, bport, proto) in cases {
            let req = owner_hash(&t, &idx, src, sport, dst, dport, proto);
            let rep = owner_hash(&t, &idx, be, bport, src, sport, proto);
            assert_eq!(req, rep, "{src}:{sport} -> {dst}:{dport} via {be}:{bport}");
        }
    }

    /// An untagged IPv4 fragment: `first` has MF and the UDP header (ports), a later one has
    /// an offset and only payload.
    fn v4_fragment(src: [u8; 4], dst: [u8; 4], id: u16, first: bool, ports: (u16, u16)) -> Vec<u8> {
        const L3: usize = ethernet::HEADER_LEN;
        const L4: usize = L3 + ipv4::MIN_HEADER_LEN;
        let mut f = vec![0u8; L4 + 16];
        f[ethernet::ETHERTYPE].copy_from_slice(&ethernet::ETHERTYPE_IPV4.to_be_bytes());
        let ip = &mut f[L3..L4];
        ip[ipv4::VER_IHL] = ipv4::VER_IHL_NO_OPTIONS;
        ip[ipv4::TOTAL_LEN].copy_from_slice(&36u16.to_be_bytes());
        ip[ipv4::IDENT].copy_from_slice(&id.to_be_bytes());
        // More fragments, or offset 1480 bytes (in 8-byte units).
        let frag: u16 = if first { ipv4::FLAG_MF } else { 1480 / 8 };
        ip[ipv4::FLG_OFF].copy_from_slice(&frag.to_be_bytes());
        ip[ipv4::TTL] = 64;
        ip[ipv4::PROTOCOL] = PROTO_UDP;
        ip[ipv4::SRC_ADDR].copy_from_slice(&src);
        ip[ipv4::DST_ADDR].copy_from_slice(&dst);
        let mut sum = 0u32;
        for c in ip.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        ip[ipv4::CHECKSUM].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        if first {
            f[at(L4, udp::SRC_PORT)].copy_from_slice(&ports.0.to_be_bytes());
            f[at(L4, udp::DST_PORT)].copy_from_slice(&ports.1.to_be_bytes());
            f[at(L4, udp::LENGTH)].copy_from_slice(&3000u16.to_be_bytes());
        }
        f
    }

    #[test]
    fn later_fragments_follow_the_owner_of_their_first_fragment() {
        let t = tables();
        let idx = OwnerIndex::new(&t);
        let frags = FragOwners::new(4096);
        let (world, node) = ([192, 168, 100, 1], [192, 168, 100, 2]);
        let workers = 4;
        let mut moved = 0;
        for i in 0..200u16 {
            // A fragmented NodePort request (dns-nodeport, 30054/udp) from many client ports.
            let first = v4_fragment(world, node, 1000 + i, true, (20_000 + i, 30054));
            let later = v4_fragment(world, node, 1000 + i, false, (0, 0));
            let by_addresses = frame_owner(
                &t,
                &idx,
                &FragOwners::new(2),
                &later,
                &parse::parse(&later),
                workers,
            );
            let w =
                frame_owner(&t, &idx, &frags, &first, &parse::parse(&first), workers).expect("IP");
            // The first fragment's owner is its flow's: the unfragmented reply's owner.
            let reply = owner_hash(
                &t,
                &idx,
                a("10.244.1.21"),
                5353,
                a("192.168.100.1"),
                20_000 + i,
                PROTO_UDP,
            );
            assert_eq!(w, owner_of(reply, workers));
            assert_eq!(
                frame_owner(&t, &idx, &frags, &later, &parse::parse(&later), workers),
                Some(w)
            );
            moved += usize::from(by_addresses != Some(w));
        }
        // Without the record most later fragments would have gone elsewhere (by addresses
        // alone: one worker for all of them).
        assert!(moved > 100, "{moved} of 200 datagrams needed the record");

        // Unknown datagram: by addresses, as before. Another id in the same slot is no match.
        let stray = v4_fragment(world, node, 999, false, (0, 0));
        assert_eq!(
            frame_owner(&t, &idx, &frags, &stray, &parse::parse(&stray), workers),
            frame_owner(
                &t,
                &idx,
                &FragOwners::new(2),
                &stray,
                &parse::parse(&stray),
                workers
            )
        );
    }

    #[test]
    fn flows_spread_over_workers() {
        let t = tables();
        let idx = OwnerIndex::new(&t);
        let vip = a("10.96.0.10");
        let mut per = [0usize; 2];
        for port in 0..10_000u16 {
            let h = owner_hash(&t, &idx, a("10.0.0.1"), 1024 + port, vip, 80, PROTO_TCP);
            per[owner_of(h, 2)] += 1;
        }
        assert!(per[0] > 4500 && per[1] > 4500, "{per:?}");
        assert_eq!(owner_of(u64::MAX, 1), 0);
        assert_eq!(owner_of(u64::MAX, 3), 2);
        assert_eq!(owner_of(0, 3), 0);
    }
}
