//! The established fast lane of the common frame: untagged IPv4 with a 20-byte header, TCP or
//! UDP, not a fragment, full checksums ([`parse::lean4`](crate::parse::lean4)). A packet of a
//! live flow in a steady state, whose direction already passed classification and routing on
//! the same ingress interface under the same tables (the entry's
//! [`FastPath`](crate::conntrack::FastPath)), is decided here from its lean parse: one
//! conntrack probe, the steady touch, the NAT and TTL folded into one update of each checksum
//! on fixed-size header views, the MACs, the outcome. It does exactly what
//! `established_fast` (and so the full path) does for such a packet, bytes and outcome alike;
//! anything else returns `false` with nothing changed, and the caller takes the lean parse's
//! [`Meta`](crate::parse::Meta) down the general path (no second parse).
//!
//! Cost (callgrind, bench/RESULTS.md `## Fast path (issue 11)`): the lean parse, the key, the
//! hash and probe, the touch and the rewrite, with no `Meta`/`Parsed` built or stored.

use super::emc::FlowCache;
use super::Outcome;
use crate::conntrack::{Conntrack, Dir, V4Tuple};
use crate::flow::{Addr, PROTO_UDP};
use crate::parse::{Lean4, LEAN4_L3, LEAN4_L4};
use crate::rewrite;
use crate::tables::{IfIndex, Tables};
use crate::wire::{ethernet, ipv4, tcp, udp};

/// TCP flags that change a connection's state: never on the lane.
const STATE_FLAGS: u8 = tcp::flags::SYN | tcp::flags::FIN | tcp::flags::RST;

/// The established fast lane. `true`: `out` holds the outcome (always a
/// forward) and the frame is rewritten; `false`: nothing changed.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the pipeline's parts, borrowed apart so that the key is read where it was built"
)]
pub(super) fn lane4(
    ct: &mut Conntrack,
    cache: &mut FlowCache,
    epoch: u32,
    t: &Tables,
    frame: &mut [u8],
    l: &Lean4,
    iface: IfIndex,
    now: u64,
    out: &mut Outcome,
) -> bool {
    // A partial checksum is completed on the general path; state changes and TTL expiry too.
    if l.csum_partial || l.tcp_flags & STATE_FLAGS != 0 || l.ttl <= 1 {
        return false;
    }
    // The key's fields as the lean parse left them (in registers): the cache's hash and
    // confirm read them; the key is hashed for the index and built in memory only on a miss.
    let tuple = V4Tuple {
        src: l.src,
        dst: l.dst,
        sport: l.sport,
        dport: l.dport,
        proto: l.proto,
    };
    let Some((slot, dir)) = cache.find(ct, &tuple) else {
        return false;
    };
    // Egress MTU (`mtu.rs`): the lean parse took no frame longer than the node's smallest MTU
    // (`parse::lean4_within`): a longer one takes the general path, where it is checked.
    debug_assert!(frame.len() <= t.frame_limit);
    // Fixed-size views of the headers; `lean4` proved the frame holds them (TCP: the whole
    // 20-byte header; UDP: its 8 bytes), so none of these fails.
    let Some((l2l3, l4)) = frame.split_at_mut_checked(LEAN4_L4) else {
        return false;
    };
    let (eth, ip) = l2l3.split_at_mut(LEAN4_L3);
    let (Ok(eth), Ok(ip)) = (
        <&mut [u8; ethernet::HEADER_LEN]>::try_from(eth),
        <&mut [u8; ipv4::MIN_HEADER_LEN]>::try_from(ip),
    ) else {
        return false;
    };
    // One copy of the rest per L4 header size and direction: every header offset and the
    // entry's per-direction fields at constant places.
    match (l.proto == PROTO_UDP, dir) {
        (true, Dir::Orig) => match l4.first_chunk_mut::<{ udp::CHECKSUM.end }>() {
            Some(l4) => {
                finish::<_, true>(ct, slot, epoch, t, l, iface, now, eth, ip, l4, true, out)
            }
            None => false,
        },
        (true, Dir::Reply) => match l4.first_chunk_mut::<{ udp::CHECKSUM.end }>() {
            Some(l4) => {
                finish::<_, false>(ct, slot, epoch, t, l, iface, now, eth, ip, l4, true, out)
            }
            None => false,
        },
        (false, Dir::Orig) => match l4.first_chunk_mut::<{ tcp::CHECKSUM.end }>() {
            Some(l4) => {
                finish::<_, true>(ct, slot, epoch, t, l, iface, now, eth, ip, l4, false, out)
            }
            None => false,
        },
        (false, Dir::Reply) => match l4.first_chunk_mut::<{ tcp::CHECKSUM.end }>() {
            Some(l4) => {
                finish::<_, false>(ct, slot, epoch, t, l, iface, now, eth, ip, l4, false, out)
            }
            None => false,
        },
    }
}

/// The entry's checks and touch, the rewrite and the outcome of a packet in direction `ORIG`
/// (else the reply); `l4` ends with the L4 checksum field. `false`: not for the lane (nothing
/// changed).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the lane's parts, monomorphised per L4 header size and direction"
)]
fn finish<const L: usize, const ORIG: bool>(
    ct: &mut Conntrack,
    slot: u32,
    epoch: u32,
    t: &Tables,
    l: &Lean4,
    iface: IfIndex,
    now: u64,
    eth: &mut [u8; ethernet::HEADER_LEN],
    ip: &mut [u8; ipv4::MIN_HEADER_LEN],
    l4: &mut [u8; L],
    udp: bool,
    out: &mut Outcome,
) -> bool {
    let dir = if ORIG { Dir::Orig } else { Dir::Reply };
    // The epoch implies the generation: a direction's fast path is recorded only after its
    // flow was checked under these tables (see `Entry::set_fast`). Live, not ended, not
    // expired, steady: then counted and its timer renewed.
    let Some(e) = ct.touch_lane(slot, dir, epoch, iface, l.tcp_flags, now) else {
        return false;
    };
    let fast = e.fast(dir);
    // Valid under these tables (same epoch), so always there (were it not, the packet would be
    // counted again by the general path: the touch is done).
    let Some(egress) = t.ifaces.get(usize::from(fast.egress)) else {
        return false;
    };
    eth[ethernet::DST_MAC].copy_from_slice(&fast.dst_mac);
    eth[ethernet::SRC_MAC].copy_from_slice(&egress.mac);
    let nat = e.nat_v4();
    *out = Outcome::established(
        fast.egress,
        dir,
        e,
        nat.map(|n| n.service),
        nat.map(|n| (Addr::v4(n.backend), n.backend_port)),
        0,
    );
    match nat {
        Some(nat) => {
            // The original direction's destination becomes the backend; the reply's source
            // becomes the VIP again.
            let (addr, port) = if ORIG {
                (nat.backend, nat.backend_port)
            } else {
                (nat.vip, nat.vip_port)
            };
            rewrite::nat4(ip, l4, udp, ORIG, addr, port, true);
            if let Some(sn) = e.snat_v4() {
                // The other side: the client leaves from the source NAT, replies go back to it.
                let (addr, port) = if ORIG { sn } else { e.orig_src_v4() };
                rewrite::nat4(ip, l4, udp, !ORIG, addr, port, false);
            }
        }
        None => rewrite::ttl4(ip),
    }
    true
}
