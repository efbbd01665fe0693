//! Partial TCP/UDP checksums, completed the way the sender's device would have.
//!
//! A Linux sender with TX checksum offload on (the default on veth; an XDP program on a veth
//! turns its peer's TSO off but leaves GSO and checksum offload on) hands the device a
//! CHECKSUM_PARTIAL frame: the L4 checksum field holds only the folded pseudo-header sum, not
//! complemented (`~csum_tcpudp_magic(saddr, daddr, len, proto, 0)`), and the device is to
//! finish it: the complement of the one's-complement sum from the start of the L4 header to the
//! end, with the field taken as it is. AF_XDP hands those bytes over raw; forwarded as they are
//! (the NAT's incremental updates keep a partial checksum partial), the receiving kernel drops
//! them (`TcpInCsumErrors`, `UdpInCsumErrors`). So the pipeline does the device's job before any
//! rewrite, and every later stage sees a full checksum.
//!
//! Which frames: parse marks [`Meta::csum_partial`] when the field equals the folded
//! pseudo-header sum (a handful of adds on words parse has loaded anyway). Only those pay for a
//! pass over the L4 bytes, and one whose full checksum already verifies (a full checksum that
//! happens to equal the pseudo-header sum, once in 65536) is left as it is. Every other frame,
//! valid or not, is untouched here and handled as it always was. Partial checksums appear only
//! on unfragmented frames: a kernel completes the checksum before it fragments.
//!
//! Cost (bench/RESULTS.md, `## Partial checksums`): detection +11 instructions per established
//! packet (720 vs 709); completion of a 1460-byte TCP segment ~680 instructions, 30-65 ns here,
//! less than one of the two copies the kernel already makes of each frame in AF_XDP copy mode.
//!
//! Why not pass the frame on as partial with AF_XDP TX metadata (`XDP_TXMD_FLAGS_CHECKSUM`,
//! honoured by copy mode since 6.8 in `xsk_skb_metadata`): the UMEM must be registered with
//! `tx_metadata_len`, which libxdp 1.6 (bundled by xsk-rs 0.11) cannot set, a zero-copy NIC
//! must implement the request, and a replayed capture would still carry partial checksums.

use crate::csum;
use crate::flow::{PROTO_TCP, PROTO_UDP};
use crate::parse::{Frag, Meta};
use crate::wire::{tcp, udp};

/// Completes the partial checksum of a frame parse marked [`Meta::csum_partial`]. `true`: the
/// field was rewritten; `false`: nothing changed (not marked, or already a valid full checksum).
#[inline]
pub fn complete(frame: &mut [u8], m: &Meta) -> bool {
    if !m.csum_partial {
        return false;
    }
    complete_marked(frame, m)
}

#[inline(never)]
fn complete_marked(frame: &mut [u8], m: &Meta) -> bool {
    let (field, udp) = match m.proto {
        PROTO_TCP => (tcp::CHECKSUM, false),
        PROTO_UDP => (udp::CHECKSUM, true),
        _ => return false,
    };
    if m.frag != Frag::None || !m.has_l4() {
        return false;
    }
    // Parse proved `l4_off + header ≤ ip_end ≤ frame.len()`; checked again, never trusted.
    let Some(seg) = frame.get_mut(usize::from(m.l4_off)..usize::from(m.ip_end)) else {
        return false;
    };
    if seg.len() < field.end || (udp && !m.v6 && seg[field.clone()] == [0, 0]) {
        // Too short, or UDP over IPv4 sent without a checksum (0): nothing to complete.
        return false;
    }
    let pseudo = csum::pseudo_header(&m.src.bytes, &m.dst.bytes, m.v6, m.proto, seg.len());
    let s = csum::sum_folded(seg);
    if csum::fold64(pseudo + u64::from(s)) == 0xffff {
        // Already a full checksum that verifies: leave its bytes alone.
        return false;
    }
    let mut c = !s;
    // RFC 768: a computed UDP checksum of zero is sent as all ones (0 means "none").
    if udp && c == 0 {
        c = 0xffff;
    }
    seg[field].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse, Parsed};
    use crate::wire::{ethernet, ipv4};

    const L3: usize = ethernet::HEADER_LEN;
    use etherparse::PacketBuilder;
    use smoltcp::wire::{IpAddress, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

    const V6A: [u8; 16] = [0xfd, 0, 2, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21];
    const V6B: [u8; 16] = [0xfd, 0, 2, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];

    fn meta(f: &[u8]) -> Meta {
        match parse(f).unwrap() {
            Parsed::Ip(m) => m,
            Parsed::NotIp => panic!("not ip"),
        }
    }

    fn frame(v6: bool, tcp: bool, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6]);
        let b = if v6 {
            b.ipv6(V6A, V6B, 64)
        } else {
            b.ipv4([10, 244, 1, 10], [10, 244, 2, 20], 64)
        };
        let mut f = Vec::new();
        if tcp {
            b.tcp(40000, 80, 7, 1000)
                .ack(9)
                .write(&mut f, payload)
                .unwrap();
        } else {
            b.udp(5353, 33000).write(&mut f, payload).unwrap();
        }
        f
    }

    /// What a Linux sender with checksum offload leaves in the field.
    fn make_partial(f: &mut [u8]) {
        let m = meta(f);
        let field = if m.proto == PROTO_TCP {
            tcp::CHECKSUM
        } else {
            udp::CHECKSUM
        };
        let off = usize::from(m.l4_off) + field.start;
        let len = usize::from(m.ip_end - m.l4_off);
        let p = csum::pseudo_header(&m.src.bytes, &m.dst.bytes, m.v6, m.proto, len);
        csum::put16(f, off, csum::fold64(p));
    }

    /// Recomputes the IPv4 header checksum of an untagged frame after an edit.
    fn fix_ip_checksum(f: &mut [u8]) {
        csum::put16(f, L3 + ipv4::CHECKSUM.start, 0);
        let c = csum::checksum(&f[L3..L3 + ipv4::MIN_HEADER_LEN]);
        csum::put16(f, L3 + ipv4::CHECKSUM.start, c);
    }

    /// smoltcp as the independent oracle.
    fn l4_verifies(f: &[u8]) -> bool {
        let m = meta(f);
        let l3 = &f[usize::from(m.l3_off)..usize::from(m.ip_end)];
        let (s, d, payload) = if m.v6 {
            let ip = Ipv6Packet::new_checked(l3).unwrap();
            (
                IpAddress::Ipv6(ip.src_addr()),
                IpAddress::Ipv6(ip.dst_addr()),
                ip.payload(),
            )
        } else {
            let ip = Ipv4Packet::new_checked(l3).unwrap();
            (
                IpAddress::Ipv4(ip.src_addr()),
                IpAddress::Ipv4(ip.dst_addr()),
                ip.payload(),
            )
        };
        match m.proto {
            PROTO_TCP => TcpPacket::new_checked(payload)
                .unwrap()
                .verify_checksum(&s, &d),
            _ => UdpPacket::new_checked(payload)
                .unwrap()
                .verify_checksum(&s, &d),
        }
    }

    #[test]
    fn partial_checksums_are_completed() {
        let big: Vec<u8> = (0..1460u32).map(|i| (i * 7 + 3) as u8).collect();
        for v6 in [false, true] {
            for tcp in [false, true] {
                for payload in [&b""[..], b"x", b"hello", &big[..1001], &big] {
                    let mut f = frame(v6, tcp, payload);
                    make_partial(&mut f);
                    assert!(!l4_verifies(&f), "a partial checksum does not verify");
                    let m = meta(&f);
                    assert!(m.csum_partial, "v6 {v6} tcp {tcp} len {}", payload.len());
                    assert!(complete(&mut f, &m));
                    assert!(l4_verifies(&f), "v6 {v6} tcp {tcp} len {}", payload.len());
                    assert!(!meta(&f).csum_partial);
                }
            }
        }
    }

    #[test]
    fn full_and_garbage_checksums_are_left_alone() {
        for v6 in [false, true] {
            for tcp in [false, true] {
                let f = frame(v6, tcp, b"some payload");
                let m = meta(&f);
                assert!(!m.csum_partial);
                let mut g = f.clone();
                assert!(!complete(&mut g, &m));
                assert_eq!(f, g, "a valid checksum stays byte-identical");
                let off = usize::from(m.l4_off) + if tcp { 16 } else { 6 };
                g[off] ^= 0x5a;
                let m = meta(&g);
                assert!(!m.csum_partial);
                let h = g.clone();
                assert!(!complete(&mut g, &m));
                assert_eq!(g, h, "a bad checksum is not ours to fix");
            }
        }
    }

    /// The 1/65536 coincidence: a full, valid checksum equal to the pseudo-header sum.
    #[test]
    fn a_valid_checksum_equal_to_the_pseudo_sum_is_kept() {
        // Find a payload word that makes the valid checksum equal the pseudo-header fold.
        let mut f = frame(false, false, &[0, 0]);
        let m = meta(&f);
        let off = usize::from(m.l4_off) + udp::CHECKSUM.start;
        let len = usize::from(m.ip_end - m.l4_off);
        let p = csum::fold64(csum::pseudo_header(
            &m.src.bytes,
            &m.dst.bytes,
            false,
            m.proto,
            len,
        ));
        let pay = usize::from(m.l4_off) + udp::HEADER_LEN;
        let found = (0..=u16::MAX).find(|w| {
            csum::put16(&mut f, pay, *w);
            csum::put16(&mut f, off, 0);
            let s = csum::sum(&f[usize::from(m.l4_off)..usize::from(m.ip_end)], 0);
            let c = !csum::fold(
                s + csum::fold64(csum::pseudo_header(
                    &m.src.bytes,
                    &m.dst.bytes,
                    false,
                    m.proto,
                    len,
                )) as u32,
            );
            c == p
        });
        let w = found.expect("some payload word gives it");
        csum::put16(&mut f, pay, w);
        csum::put16(&mut f, off, p);
        assert!(l4_verifies(&f));
        let m = meta(&f);
        assert!(m.csum_partial, "looks partial");
        let g = f.clone();
        assert!(!complete(&mut f, &m));
        assert_eq!(f, g);
    }

    #[test]
    fn udp_v4_without_checksum_is_not_completed() {
        // Addresses and payload chosen so that the pseudo-header sum is ≡ 0 (fold 0xffff):
        // a field of 0 then looks partial but means "no checksum" over IPv4.
        for payload in [&b"x"[..], b"xy"] {
            let mut f = frame(false, false, payload);
            let m = meta(&f);
            let len = usize::from(m.ip_end - m.l4_off);
            let p = csum::pseudo_header(&m.src.bytes, &m.dst.bytes, false, m.proto, len);
            // Move the destination address so the sum becomes 0xffff.
            let need = 0xffff - csum::fold64(p);
            let d = usize::from(m.l3_off) + ipv4::DST_ADDR.start + 2;
            let w = csum::get16(&f, d);
            let w2 = csum::fold(u32::from(w) + u32::from(need));
            csum::put16(&mut f, d, w2);
            fix_ip_checksum(&mut f);
            csum::put16(&mut f, usize::from(m.l4_off) + udp::CHECKSUM.start, 0);
            let m = meta(&f);
            let p = csum::pseudo_header(&m.src.bytes, &m.dst.bytes, false, m.proto, len);
            assert_eq!(csum::fold64(p), 0xffff);
            assert!(m.csum_partial, "0 is the other zero");
            let g = f.clone();
            assert!(!complete(&mut f, &m));
            assert_eq!(f, g);
        }
    }

    #[test]
    fn first_fragments_are_never_partial() {
        let mut f = frame(false, true, &[1; 64]);
        make_partial(&mut f);
        // More fragments (and a fixed header checksum): the common path defers, the general
        // one sees a first fragment.
        f[L3 + ipv4::FLG_OFF.start] |= (ipv4::FLAG_MF >> 8) as u8;
        fix_ip_checksum(&mut f);
        let m = meta(&f);
        assert_eq!(m.frag, Frag::First);
        assert!(!m.csum_partial);
    }
}
