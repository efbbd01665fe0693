//! Turning a TCP segment into the RST that answers it, in place (RFC 9293 §3.10.7.1, "reset
//! generation"): used when a flow's backend is removed and the node is set to end such flows
//! with a reset rather than a silent drop, so the sender learns at once instead of after its
//! retransmission timeout.
//!
//! The reset goes back out of the interface the segment came in on: MACs, addresses and ports
//! swapped, options and payload stripped, checksums recomputed in full (a reset is rare; the
//! full sum is the simpler and safer choice). Nothing is allocated.

use crate::csum::{self, get16, put16};
use crate::flow::PROTO_TCP;
use crate::parse::{self, Frag, Parsed};
use crate::wire::tcp::flags as F;
use crate::wire::{at, ethernet, ipv4, ipv6, tcp};

/// TTL / hop limit of a generated reset.
const RESET_TTL: u8 = 64;

/// Rewrites `frame` (an Ethernet frame carrying a TCP segment) into the reset answering it and
/// returns the reset's length (the frame's first bytes; the rest is to be ignored). `None` when
/// no reset may be sent: not TCP, a fragment, an RST itself (never answer a reset), an IPv6
/// datagram with extension headers, or a malformed frame. On `None` the frame is unchanged.
pub fn reset_in_place(frame: &mut [u8]) -> Option<usize> {
    let r = Reset::of(frame)?;
    r.write(frame);
    Some(r.len)
}

/// [`reset_in_place`] into another buffer: `out` receives the reset answering `frame` (which is
/// left alone). Used to reject a new flow to a service without endpoints, whose frame is dropped
/// while the reset goes out as a copy. `None` as for [`reset_in_place`], or when `out` is too
/// short for the headers.
pub fn reset_into(frame: &[u8], out: &mut [u8]) -> Option<usize> {
    let r = Reset::of(frame)?;
    let out = out.get_mut(..r.len)?;
    out.copy_from_slice(&frame[..r.len]);
    r.write(out);
    Some(r.len)
}

/// What a reset needs from the segment it answers, read before any byte is rewritten.
#[derive(Clone, Copy)]
struct Reset {
    v6: bool,
    l3: usize,
    l4: usize,
    /// The reset's length: the segment's headers up to 20 bytes of TCP.
    len: usize,
    payload: u32,
    seq: u32,
    ack: u32,
    flags: u8,
}

impl Reset {
    fn of(frame: &[u8]) -> Option<Reset> {
        let m = match parse::parse(frame) {
            Ok(Parsed::Ip(m)) => m,
            _ => return None,
        };
        if m.proto != PROTO_TCP || !m.has_l4() || m.frag != Frag::None || m.tcp_flags & F::RST != 0
        {
            return None;
        }
        let l3 = usize::from(m.l3_off);
        let l4 = usize::from(m.l4_off);
        let end = usize::from(m.ip_end);
        if m.v6 && l4 != l3 + ipv6::HEADER_LEN {
            return None;
        }
        if l4 + tcp::MIN_HEADER_LEN > end {
            return None;
        }
        let doff = usize::from(frame[l4 + tcp::DATA_OFF] >> 4) * 4;
        let be32 = |f: &[u8], i: usize| u32::from_be_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
        Some(Reset {
            v6: m.v6,
            l3,
            l4,
            len: l4 + tcp::MIN_HEADER_LEN,
            payload: end.saturating_sub(l4 + doff) as u32,
            seq: be32(frame, l4 + tcp::SEQ_NUM.start),
            ack: be32(frame, l4 + tcp::ACK_NUM.start),
            flags: m.tcp_flags,
        })
    }

    /// Rewrites the first `self.len` bytes of `frame` (the segment's, or a copy of them).
    fn write(&self, frame: &mut [u8]) {
        let Reset {
            v6,
            l3,
            l4,
            len: new_end,
            payload,
            seq,
            ack,
            flags,
        } = *self;

        // Ethernet: back to the sender.
        let (a, b) = frame[ethernet::MACS].split_at_mut(ethernet::SRC_MAC.start);
        a.swap_with_slice(b);

        // IP: swap the addresses, strip everything past 20 bytes of TCP.
        if v6 {
            let (s, d) = frame[at(l3, ipv6::ADDRS)].split_at_mut(ipv6::ADDR_LEN);
            s.swap_with_slice(d);
            put16(
                frame,
                l3 + ipv6::PAYLOAD_LEN.start,
                tcp::MIN_HEADER_LEN as u16,
            );
            frame[l3 + ipv6::HOP_LIMIT] = RESET_TTL;
        } else {
            let (s, d) = frame[at(l3, ipv4::ADDRS)].split_at_mut(ipv4::ADDR_LEN);
            s.swap_with_slice(d);
            put16(frame, l3 + ipv4::TOTAL_LEN.start, (new_end - l3) as u16);
            // A fresh datagram: no fragmentation fields, our TTL.
            put16(frame, l3 + ipv4::FLG_OFF.start, ipv4::FLAG_DF);
            frame[l3 + ipv4::TTL] = RESET_TTL;
            put16(frame, l3 + ipv4::CHECKSUM.start, 0);
            let c = csum::checksum(&frame[l3..l4]);
            put16(frame, l3 + ipv4::CHECKSUM.start, c);
        }

        // TCP: RFC 9293 — if the segment had ACK, the reset takes its sequence number from that
        // ACK; otherwise it acknowledges everything the segment occupied (SYN and FIN count one).
        let sport = get16(frame, l4 + tcp::SRC_PORT.start);
        let dport = get16(frame, l4 + tcp::DST_PORT.start);
        put16(frame, l4 + tcp::SRC_PORT.start, dport);
        put16(frame, l4 + tcp::DST_PORT.start, sport);
        let (rseq, rack, rflags) = if flags & F::ACK != 0 {
            (ack, 0, F::RST)
        } else {
            let len = payload + u32::from(flags & F::SYN != 0) + u32::from(flags & F::FIN != 0);
            (0, seq.wrapping_add(len), F::RST | F::ACK)
        };
        frame[at(l4, tcp::SEQ_NUM)].copy_from_slice(&rseq.to_be_bytes());
        frame[at(l4, tcp::ACK_NUM)].copy_from_slice(&rack.to_be_bytes());
        // Data offset in 32-bit words: no options.
        frame[l4 + tcp::DATA_OFF] = ((tcp::MIN_HEADER_LEN / 4) << 4) as u8;
        frame[l4 + tcp::FLAGS] = rflags;
        put16(frame, l4 + tcp::WINDOW.start, 0);
        put16(frame, l4 + tcp::CHECKSUM.start, 0); // computed below
        put16(frame, l4 + tcp::URGENT.start, 0);
        let mut acc = csum::sum(&frame[l4..new_end], 0);
        let (src, dst) = if v6 {
            (at(l3, ipv6::SRC_ADDR), at(l3, ipv6::DST_ADDR))
        } else {
            (at(l3, ipv4::SRC_ADDR), at(l3, ipv4::DST_ADDR))
        };
        acc = csum::sum(&frame[src], acc);
        acc = csum::sum(&frame[dst], acc);
        acc += u32::from(PROTO_TCP) + tcp::MIN_HEADER_LEN as u32;
        put16(frame, l4 + tcp::CHECKSUM.start, !csum::fold(acc));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    fn tcp4(syn: bool, ack: Option<u32>, payload: &[u8]) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 1], [10, 96, 0, 10], 63)
            .tcp(40000, 80, 1000, 65000);
        if syn {
            b = b.syn();
        }
        if let Some(a) = ack {
            b = b.ack(a);
        }
        let mut f = Vec::new();
        b.write(&mut f, payload).unwrap();
        f
    }

    /// Parses the reset and checks every checksum; returns (seq, ack, rst, ack flag).
    fn check(f: &[u8]) -> (u32, u32, bool, bool) {
        let p = SlicedPacket::from_ethernet(f).unwrap();
        let eth = p.link.as_ref().unwrap().to_header().unwrap();
        let eth = match eth {
            etherparse::LinkHeader::Ethernet2(e) => e,
            _ => panic!("not ethernet"),
        };
        assert_eq!((eth.source, eth.destination), (B, A), "MACs swapped");
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("not tcp")
        };
        assert_eq!((t.source_port(), t.destination_port()), (80, 40000));
        assert!(t.payload().is_empty());
        match &p.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum());
                assert_eq!(h.source, [10, 96, 0, 10]);
                assert_eq!(h.destination, [10, 0, 0, 1]);
                let th = t.to_header();
                assert_eq!(th.checksum, th.calc_checksum_ipv4(&h, &[]).unwrap());
            }
            Some(NetSlice::Ipv6(ip)) => {
                let h = ip.header().to_header();
                let th = t.to_header();
                assert_eq!(th.checksum, th.calc_checksum_ipv6(&h, &[]).unwrap());
            }
            _ => panic!("no ip"),
        }
        (
            t.sequence_number(),
            t.acknowledgment_number(),
            t.rst(),
            t.ack(),
        )
    }

    #[test]
    fn segment_with_ack_gets_rst_at_its_ack_number() {
        let mut f = tcp4(false, Some(777), b"hello");
        let n = reset_in_place(&mut f).unwrap();
        assert_eq!(
            n,
            ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + tcp::MIN_HEADER_LEN
        );
        assert_eq!(check(&f[..n]), (777, 0, true, false));
    }

    #[test]
    fn syn_gets_rst_ack_covering_the_syn_and_payload() {
        let mut f = tcp4(true, None, b"abc");
        let n = reset_in_place(&mut f).unwrap();
        // seq 1000 + 3 bytes + SYN.
        assert_eq!(check(&f[..n]), (0, 1004, true, true));
    }

    #[test]
    fn ipv6_reset() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv6([1; 16], [2; 16], 64)
            .tcp(40000, 80, 5, 1000)
            .ack(9)
            .write(&mut f, b"xy")
            .unwrap();
        let n = reset_in_place(&mut f).unwrap();
        assert_eq!(
            n,
            ethernet::HEADER_LEN + ipv6::HEADER_LEN + tcp::MIN_HEADER_LEN
        );
        assert_eq!(check(&f[..n]), (9, 0, true, false));
    }

    #[test]
    fn no_reset_for_resets_udp_or_garbage() {
        let mut f = tcp4(false, Some(1), b"");
        let l4 = crate::wire::ethernet::HEADER_LEN + crate::wire::ipv4::MIN_HEADER_LEN;
        f[l4 + crate::wire::tcp::FLAGS] |= F::RST;
        let before = f.clone();
        assert_eq!(reset_in_place(&mut f), None);
        assert_eq!(f, before, "unchanged on None");
        let mut u = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut u, b"x")
            .unwrap();
        assert_eq!(reset_in_place(&mut u), None);
        assert_eq!(reset_in_place(&mut [0u8; 10]), None);
        assert_eq!(reset_in_place(&mut []), None);
    }
}
