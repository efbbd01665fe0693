//! The egress MTU, as a router checks it (Linux `ip_forward` → `ip_exceeds_mtu`, IPv6
//! `ip6_forward` → `ip6_pkt_too_big`): a forwarded packet whose IP length exceeds its egress
//! interface's MTU does not leave. IPv4 with DF and every IPv6 packet is dropped `frag-needed`
//! and answered with an ICMP fragmentation-needed (type 3 code 4, next-hop MTU) / ICMPv6
//! packet-too-big (type 2, MTU) back to its sender, so that the sender's kernel lowers its path
//! MTU; IPv4 without DF is dropped `mtu-exceeded` (not fragmented: see below).
//!
//! Cost on the per-packet path: one compare of the frame's length against
//! [`Tables::frame_limit`] (the smallest MTU of the node plus an Ethernet header); on the
//! established lane not even that: the lean parse's own length check takes the limit
//! (`parse::lean4_within`), so a longer frame goes to the general path. Only a frame
//! longer than that (a jumbo pod's) has the front of its bytes kept ([`MtuErrors::save`], before
//! the pipeline rewrites it) and its egress MTU looked up after the pipeline decided it.
//!
//! What the sender sees, as with the kernel's forwarding and its NAT
//! (`nf_nat_icmp_reply_translation`): the error quotes the packet **as the sender sent it**
//! (a pod dialling a ClusterIP sees its own packet to the VIP quoted, not the backend it was
//! translated to), and comes from the address the sender sent the packet to when the
//! pipeline translated that destination (the VIP, or the node IP a masqueraded reply was
//! addressed to), else from the node's first address of the family (a router's own address),
//! else again from the packet's destination. It leaves through the interface the packet came in
//! on, MACs swapped (a VLAN tag kept), like a reject (`crate::reject`).
//!
//! Rate limit: a token bucket per worker (`reject::Bucket`: 1000 per second, burst 50, no lock).
//! Linux exempts PMTU messages from its ICMP limits; a worker answering a bulk sender at line
//! rate would send one per packet, and one is all a sender needs, so they are limited here and
//! the ones not sent are counted (`suppressed`).
//!
//! Why no fragmentation of IPv4 without DF: a Linux sender (the pods) sets DF on every packet
//! it did not fragment itself (`IP_PMTUDISC_WANT`, the default: a datagram above the path MTU
//! is fragmented by the sender, below it carries DF), so a non-DF packet above the uplink's MTU
//! comes only from senders that turned path MTU discovery off; it is counted
//! (`mtu-exceeded`) instead of being cut into up to 45 copies on the worker.
//!
//! Not checked: held fragments released later (`Pipeline::drain`): fragments come from a
//! sender that already fragmented to its own MTU.

use crate::csum::get16;
use crate::drop::DropReason;
use crate::flow::{Addr, PROTO_ICMP, PROTO_ICMPV6};
use crate::reject::{error_headers, Bucket, REJECT_MAX};
use crate::tables::{IfIndex, Tables};
use crate::wire::{at, ethernet, icmp, icmpv6, ipv4, ipv6, vlan};

/// Bytes of a frame's front kept before the pipeline rewrites it: the L2 header (with a VLAN
/// tag), the IP header with options or extension headers, and the L4 header whose ports and
/// checksum NAT and checksum completion change. Bytes beyond are never rewritten.
pub const HEAD: usize = 256;
/// Answers per burst at most (beyond: counted as suppressed).
pub const SLOTS: usize = 16;
/// ICMPv4 errors stay within 576 bytes of IP datagram (RFC 1812 §4.3.2.3); ICMPv6 errors within
/// the IPv6 minimum MTU (RFC 4443 §2.4(c)).
const ICMPV4_MAX: usize = 576;
const ICMPV6_MAX: usize = 1280;
/// ICMPv6 packet too big (RFC 4443 §3.2).
const PACKET_TOO_BIG: u8 = 2;
/// Code of ICMP destination unreachable: fragmentation needed and DF set (RFC 792, RFC 1191).
const FRAG_NEEDED: u8 = 4;

/// The header facts of a frame's kept front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    l3: usize,
    v6: bool,
    /// IP datagram length (header included).
    ip_len: usize,
    df: bool,
}

fn head_of(f: &[u8]) -> Option<Head> {
    let mut l3 = ethernet::HEADER_LEN;
    let mut et = get16(f.get(..l3)?, ethernet::ETHERTYPE.start);
    if et == ethernet::ETHERTYPE_VLAN {
        l3 = vlan::HEADER_LEN;
        et = get16(f.get(..l3)?, l3 - 2);
    }
    match et {
        ethernet::ETHERTYPE_IPV4 => {
            let ip = f.get(l3..l3 + ipv4::MIN_HEADER_LEN)?;
            Some(Head {
                l3,
                v6: false,
                ip_len: usize::from(get16(ip, ipv4::TOTAL_LEN.start)),
                df: get16(ip, ipv4::FLG_OFF.start) & ipv4::FLAG_DF != 0,
            })
        }
        ethernet::ETHERTYPE_IPV6 => {
            let ip = f.get(l3..l3 + ipv6::HEADER_LEN)?;
            Some(Head {
                l3,
                v6: true,
                ip_len: ipv6::HEADER_LEN + usize::from(get16(ip, ipv6::PAYLOAD_LEN.start)),
                df: true,
            })
        }
        _ => None,
    }
}

/// The worker's egress-MTU state: the kept front of the current frame, the answers of the
/// burst, the rate limit and the counters. Nothing here allocates after [`MtuErrors::new`].
#[derive(Debug)]
pub struct MtuErrors {
    head: [u8; HEAD],
    head_len: usize,
    bufs: Box<[[u8; REJECT_MAX]]>,
    /// (egress interface, time, length) of each pending answer.
    pending: [(IfIndex, u64, u16); SLOTS],
    n: usize,
    bucket: Bucket,
    /// ICMP fragmentation-needed / packet-too-big sent, and not sent (rate limit, or more than
    /// [`SLOTS`] in one burst).
    pub sent: u64,
    pub suppressed: u64,
}

impl Default for MtuErrors {
    fn default() -> Self {
        Self::new()
    }
}

impl MtuErrors {
    pub fn new() -> MtuErrors {
        Self::with_bufs(vec![[0u8; REJECT_MAX]; SLOTS].into_boxed_slice())
    }

    /// A fresh one on the answer buffers of another ([`MtuErrors::into_bufs`]): nothing pending,
    /// a full bucket, counters at 0; only the 20 KiB of buffers are not allocated again.
    pub fn with_bufs(bufs: Box<[[u8; REJECT_MAX]]>) -> MtuErrors {
        MtuErrors {
            head: [0; HEAD],
            head_len: 0,
            bufs,
            pending: [(0, 0, 0); SLOTS],
            n: 0,
            bucket: Bucket::default(),
            sent: 0,
            suppressed: 0,
        }
    }

    /// Its answer buffers, for [`MtuErrors::with_bufs`].
    pub fn into_bufs(self) -> Box<[[u8; REJECT_MAX]]> {
        self.bufs
    }

    /// Keeps the front of `frame` as it arrived (call before the pipeline rewrites it).
    #[inline]
    pub fn save(&mut self, frame: &[u8]) {
        let n = frame.len().min(HEAD);
        self.head[..n].copy_from_slice(&frame[..n]);
        self.head_len = n;
    }

    /// `frame` (rewritten by the pipeline, its front kept by [`Self::save`]) is to leave on an
    /// interface of MTU `mtu`: `None` if it fits, else the drop reason, with the answer queued
    /// (rate limit allowing) to leave on `iface`, the packet's ingress, at `ts`.
    pub fn check(
        &mut self,
        t: &Tables,
        frame: &[u8],
        iface: IfIndex,
        ts: u64,
        mtu: u16,
    ) -> Option<DropReason> {
        let h = head_of(&self.head[..self.head_len])?;
        if h.ip_len <= usize::from(mtu) {
            return None;
        }
        if !h.df {
            return Some(DropReason::MtuExceeded);
        }
        if self.answerable(&h) {
            if self.n == SLOTS || !self.bucket.take(ts) {
                self.suppressed += 1;
            } else if let Some(len) = self.build(t, frame, &h, mtu) {
                self.pending[self.n] = (iface, ts, len as u16);
                self.n += 1;
            }
        }
        Some(DropReason::FragNeeded)
    }

    /// RFC 1122 §3.2.2 / RFC 4443 §2.4(e): no error about an ICMP error, nor to a source that
    /// is not a unicast address.
    fn answerable(&self, h: &Head) -> bool {
        let ip = &self.head[h.l3..self.head_len];
        let (src, proto, l4) = if h.v6 {
            let mut s = [0u8; 16];
            s.copy_from_slice(&ip[ipv6::SRC_ADDR]);
            (
                std::net::IpAddr::from(s),
                ip[ipv6::NEXT_HEADER],
                ipv6::HEADER_LEN,
            )
        } else {
            let mut s = [0u8; 4];
            s.copy_from_slice(&ip[ipv4::SRC_ADDR]);
            (
                std::net::IpAddr::from(s),
                ip[ipv4::PROTOCOL],
                usize::from(ip[ipv4::VER_IHL] & 0x0f) * 4,
            )
        };
        if src.is_unspecified()
            || src.is_multicast()
            || src.is_loopback()
            || src == std::net::IpAddr::from([255, 255, 255, 255])
        {
            return false;
        }
        let ty = ip.get(l4).copied();
        match proto {
            PROTO_ICMP if !h.v6 => matches!(
                ty,
                Some(icmp::ECHO_REPLY | icmp::ECHO_REQUEST) | Some(13..=18)
            ),
            PROTO_ICMPV6 if h.v6 => ty.is_some_and(|t| t >= icmpv6::ECHO_REQUEST),
            _ => true,
        }
    }

    /// Builds the answer into the next buffer; its length.
    fn build(&mut self, t: &Tables, frame: &[u8], h: &Head, mtu: u16) -> Option<usize> {
        let (l3, head_len) = (h.l3, self.head_len);
        let head = &self.head[..head_len];
        let out = &mut self.bufs[self.n];
        let (ip_hlen, max) = if h.v6 {
            (ipv6::HEADER_LEN, ICMPV6_MAX)
        } else {
            (ipv4::MIN_HEADER_LEN, ICMPV4_MAX)
        };
        let quote = h
            .ip_len
            .min(max - ip_hlen - icmp::HEADER_LEN)
            .min(frame.len().checked_sub(l3)?);
        let l4 = l3 + ip_hlen;
        let q = l4 + icmp::HEADER_LEN;
        let len = q + quote;
        let out = out.get_mut(..len)?;
        // The quote: the packet as it arrived (its kept front, then the bytes no rewrite
        // touches).
        let from_head = quote.min(head_len - l3);
        out[q..q + from_head].copy_from_slice(&head[l3..l3 + from_head]);
        out[q + from_head..].copy_from_slice(&frame[l3 + from_head..l3 + quote]);
        // L2: the frame's header as it arrived (a VLAN tag kept), back to the sender.
        out[..l3].copy_from_slice(&head[..l3]);
        let (a, b) = out[ethernet::MACS].split_at_mut(ethernet::SRC_MAC.start);
        a.swap_with_slice(b);
        // Addresses: to the sender, from what it sent to when that was translated, else from
        // the node (see the module docs).
        let (sf, df) = if h.v6 {
            (ipv6::SRC_ADDR, ipv6::DST_ADDR)
        } else {
            (ipv4::SRC_ADDR, ipv4::DST_ADDR)
        };
        let orig_dst = head.get(at(l3, df.clone()))?;
        let sender = head.get(at(l3, sf))?;
        let translated = frame.get(at(l3, df))? != orig_dst;
        let node: Option<Addr> = if translated { None } else { t.snat_ip(h.v6) };
        let src: &[u8] = match &node {
            Some(a) => a.octets(),
            None => orig_dst,
        };
        let (ty, code, rest) = if h.v6 {
            (PACKET_TOO_BIG, 0, u32::from(mtu).to_be_bytes())
        } else {
            let [hi, lo] = mtu.to_be_bytes();
            (icmp::DEST_UNREACHABLE, FRAG_NEEDED, [0, 0, hi, lo])
        };
        error_headers(out, l3, h.v6, (src, sender), (ty, code, rest));
        Some(len)
    }

    /// Hands every pending answer to `send(egress, time, frame)` and forgets them.
    pub fn flush(&mut self, mut send: impl FnMut(IfIndex, u64, &[u8])) {
        for k in 0..self.n {
            let (iface, ts, len) = self.pending[k];
            send(iface, ts, &self.bufs[k][..usize::from(len)]);
            self.sent += 1;
        }
        self.n = 0;
    }
}
