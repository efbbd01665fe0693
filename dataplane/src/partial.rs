//! Partial TCP/UDP checksums, completed the way the sender's device would have.
//!
//! A Linux sender with TX checksum offload on (the default on veth; an XDP program on a veth
//! turns its peer's TSO off but leaves GSO and checksum offload on) hands the device a
//! CHECKSUM_PARTIAL frame: the L4 checksum field holds only the folded pseudo-header sum, not
//! complemented (`~csum_tcpudp_magic(saddr, daddr, len, proto, 0)`), and the device is to
//! finish it: the complement of the one's-complement sum from the start of the L4 header to the
//! end, with the field taken as it is. AF_XDP hands those bytes over raw; forwarded as they are
//! (the NAT's incremental updates are made for a full checksum: applied to a partial field they
//! leave neither a valid full nor a valid partial one), the receiving kernel drops them
//! (`TcpInCsumErrors`, `UdpInCsumErrors`). So the pipeline does the device's job before any
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
//! Or passed on partial (`io.afxdp.tx_checksum_offload`, the default on AF_XDP): the pipeline
//! then leaves the field alone and marks the outcome ([`crate::Outcome::csum_partial`]); its
//! rewrites update the field as if it were a full checksum, which is wrong for a partial one
//! (a partial field holds the pseudo-header sum itself, not its complement, and ports are
//! not in it), so the I/O writes the field afresh from the frame as it leaves:
//! [`offload_request`] puts the new pseudo-header sum in and returns where the kernel is to
//! finish it (AF_XDP TX metadata, `XDP_TXMD_FLAGS_CHECKSUM`: the skb leaves CHECKSUM_PARTIAL,
//! and the receiving kernel neither computes nor verifies it in software), and
//! [`complete_frame`] completes it where the frame cannot carry that request.

use std::ops::Range;

use crate::csum;
use crate::flow::{PROTO_TCP, PROTO_UDP};
use crate::parse::{Frag, Meta, Parsed};
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
    let Some((seg, field, udp)) = segment(frame, m) else {
        return false;
    };
    if udp && !m.v6 && seg[field.clone()] == [0, 0] {
        // UDP over IPv4 sent without a checksum (0): nothing to complete.
        return false;
    }
    let pseudo = csum::pseudo_header(&m.src.bytes, &m.dst.bytes, m.v6, m.proto, seg.len());
    let s = csum::sum_folded(seg);
    if csum::fold64(pseudo + u64::from(s)) == 0xffff {
        // Already a full checksum that verifies: leave its bytes alone.
        return false;
    }
    // The field holds the pseudo-header sum: the segment's sum is the whole sum.
    put_checksum(seg, field, udp, !s);
    true
}

/// The L4 segment of an unfragmented TCP/UDP packet (from its header to the IP packet's end),
/// the checksum field's range in it, and whether it is UDP; None for anything else, or a
/// segment too short to hold the field. Parse proved `l4_off + header ≤ ip_end ≤
/// frame.len()`; checked again here, never trusted.
#[inline]
fn segment<'a>(frame: &'a mut [u8], m: &Meta) -> Option<(&'a mut [u8], Range<usize>, bool)> {
    let (field, udp) = match m.proto {
        PROTO_TCP => (tcp::CHECKSUM, false),
        PROTO_UDP => (udp::CHECKSUM, true),
        _ => return None,
    };
    if m.frag != Frag::None || !m.has_l4() {
        return None;
    }
    let seg = frame.get_mut(usize::from(m.l4_off)..usize::from(m.ip_end))?;
    (seg.len() >= field.end).then_some((seg, field, udp))
}

/// Writes checksum `c` into the field; RFC 768: a computed UDP checksum of zero is sent as all
/// ones (0 means "none").
#[inline]
fn put_checksum(seg: &mut [u8], field: Range<usize>, udp: bool, c: u16) {
    let c = if udp && c == 0 { 0xffff } else { c };
    seg[field].copy_from_slice(&c.to_be_bytes());
}

/// The L4 span of a TCP/UDP frame that can carry a checksum request: `(l4_off, ip_end,
/// checksum field offset in L4, meta)`. Not for fragments, or frames with bytes after the IP
/// packet (the kernel checksums to the end of the frame).
fn l4_of(frame: &[u8]) -> Option<(usize, usize, usize, Meta)> {
    let Ok(Parsed::Ip(m)) = crate::parse::parse(frame) else {
        return None;
    };
    let field = match m.proto {
        PROTO_TCP => tcp::CHECKSUM.start,
        PROTO_UDP => udp::CHECKSUM.start,
        _ => return None,
    };
    let (l4, end) = (usize::from(m.l4_off), usize::from(m.ip_end));
    if m.frag != Frag::None || !m.has_l4() || end != frame.len() || end < l4 + field + 2 {
        return None;
    }
    Some((l4, end, field, m))
}

/// Prepares a frame that left the pipeline partial ([`crate::Outcome::csum_partial`]) for the
/// kernel to finish: writes the pseudo-header sum of its headers as they are now into the L4
/// checksum field and returns the request `(csum_start, csum_offset)` (from the frame's first
/// byte; 16 for TCP, 6 for UDP). `None`, changing nothing: not a frame that can carry one
/// (complete it with [`complete_frame`]).
pub fn offload_request(frame: &mut [u8]) -> Option<(u16, u16)> {
    let (l4, end, field, m) = l4_of(frame)?;
    let pseudo = csum::pseudo_header(&m.src.bytes, &m.dst.bytes, m.v6, m.proto, end - l4);
    csum::put16(frame, l4 + field, csum::fold64(pseudo));
    Some((l4 as u16, field as u16))
}

/// Completes the checksum of a frame that left the pipeline partial, whatever its field holds
/// now (the pipeline's rewrites updated it as a full one): the full checksum computed afresh.
/// `false`: not a TCP/UDP frame it applies to (left as it is).
pub fn complete_frame(frame: &mut [u8]) -> bool {
    let Ok(Parsed::Ip(m)) = crate::parse::parse(frame) else {
        return false;
    };
    let Some((seg, field, udp)) = segment(frame, &m) else {
        return false;
    };
    seg[field.clone()].copy_from_slice(&[0, 0]);
    let pseudo = csum::pseudo_header(&m.src.bytes, &m.dst.bytes, m.v6, m.proto, seg.len());
    put_checksum(
        seg,
        field,
        udp,
        !csum::fold64(pseudo + u64::from(csum::sum_folded(seg))),
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse, Parsed};
    use crate::wire::{ethernet, ipv4, ipv6};

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

    /// What the kernel does with a checksum request (`skb_checksum_help`): the complement of
    /// the sum from `start` to the end, stored at `start + off`.
    fn device_finishes(f: &mut [u8], start: usize, off: usize) {
        let c = !csum::sum_folded(&f[start..]);
        let c = if c == 0 && off == udp::CHECKSUM.start {
            0xffff
        } else {
            c
        };
        csum::put16(f, start + off, c);
    }

    /// A NAT-like rewrite the way the pipeline does it to a frame it left partial: new
    /// addresses and ports, the field updated as if it held a full checksum (wrong for a
    /// partial one: the I/O writes it afresh).
    fn rewrite(f: &mut [u8], tcp: bool) {
        let m = meta(f);
        let l4 = usize::from(m.l4_off);
        let field = l4
            + if tcp {
                tcp::CHECKSUM.start
            } else {
                udp::CHECKSUM.start
            };
        let old = csum::get16(f, field);
        let l3 = usize::from(m.l3_off);
        if m.v6 {
            f[l3 + ipv6::DST_ADDR.end - 1] ^= 0x33;
        } else {
            f[l3 + ipv4::DST_ADDR.end - 1] = 99; // 10.244.2.99
            fix_ip_checksum(f);
        }
        csum::put16(f, l4 + tcp::DST_PORT.start, 8080);
        csum::put16(f, field, old ^ 0x1234); // what an update for a full one would leave
    }

    #[test]
    fn partial_frames_left_partial_leave_right_after_a_rewrite() {
        let big: Vec<u8> = (0..1460u32).map(|i| (i * 13 + 1) as u8).collect();
        for v6 in [false, true] {
            for tcp in [false, true] {
                let mut f = frame(v6, tcp, &big);
                make_partial(&mut f);
                assert!(meta(&f).csum_partial);
                rewrite(&mut f, tcp);
                assert!(!l4_verifies(&f));
                // Offloaded: the field is the new pseudo-header sum, the kernel finishes it.
                let mut g = f.clone();
                let (start, off) = offload_request(&mut g).expect("a TCP/UDP frame");
                assert_eq!(usize::from(start), usize::from(meta(&g).l4_off));
                let field = if tcp { tcp::CHECKSUM } else { udp::CHECKSUM };
                assert_eq!(usize::from(off), field.start);
                assert!(
                    meta(&g).csum_partial,
                    "the field holds the pseudo-header sum"
                );
                device_finishes(&mut g, usize::from(start), usize::from(off));
                assert!(l4_verifies(&g), "v6 {v6} tcp {tcp}: finished by the kernel");
                // Completed by the I/O instead: the same bytes.
                let mut h = f.clone();
                assert!(complete_frame(&mut h));
                assert!(l4_verifies(&h), "v6 {v6} tcp {tcp}: completed");
                assert_eq!(g, h);
            }
        }
    }

    #[test]
    fn offload_requests_only_for_frames_that_can_carry_them() {
        let mut f = frame(false, true, b"x");
        make_partial(&mut f);
        // Bytes after the IP packet (padding): the kernel would sum them too.
        let mut padded = f.clone();
        padded.extend_from_slice(&[0xab; 8]);
        let before = padded.clone();
        assert_eq!(offload_request(&mut padded), None);
        assert_eq!(padded, before, "nothing changed");
        assert!(complete_frame(&mut padded));
        assert!(l4_verifies(&padded));
        // Not TCP/UDP, or not IP: nothing.
        let mut arp = vec![0u8; 42];
        arp[ethernet::ETHERTYPE].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(offload_request(&mut arp), None);
        assert!(!complete_frame(&mut arp));
    }
}
