//! Stage: rewrite. In-place header changes with RFC 1624 incremental checksum updates: each
//! changed address or port costs a few adds, independent of the packet's size.
//!
//! Which checksums an address change touches: the IPv4 header checksum (IPv4 only), and the L4
//! checksum wherever it covers a pseudo-header (TCP, UDP, ICMPv6; not ICMPv4). A UDP-over-IPv4
//! checksum of 0 means "none" and stays 0. Non-first fragments carry no L4 header, so only the
//! IP header changes (the datagram's L4 checksum was fixed in the first fragment).

use crate::csum::{apply, delta, delta16, get16, put16, update16};
use crate::flow::{Addr, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use crate::parse::Meta;
use crate::wire::{ethernet, icmpv6, ipv4, ipv6, tcp, udp, Field};

/// Offset of the L4 checksum field for protocols with a pseudo-header, if the frame has it.
#[inline]
fn l4_csum_off(m: &Meta) -> Option<usize> {
    if !m.has_l4() {
        return None;
    }
    let l4 = usize::from(m.l4_off);
    match m.proto {
        PROTO_TCP => Some(l4 + tcp::CHECKSUM.start),
        PROTO_UDP => Some(l4 + udp::CHECKSUM.start),
        PROTO_ICMPV6 => Some(l4 + icmpv6::CHECKSUM.start),
        _ => None,
    }
}

#[inline]
fn fix_l4(frame: &mut [u8], m: &Meta, delta: u64) {
    if let Some(off) = l4_csum_off(m) {
        let c = get16(frame, off);
        if m.proto == PROTO_UDP && !m.v6 && c == 0 {
            return;
        }
        let mut n = apply(c, delta);
        if m.proto == PROTO_UDP && n == 0 {
            n = 0xffff;
        }
        put16(frame, off, n);
    }
}

/// Where the TCP/UDP source (`dst = false`) or destination port sits in the L4 header (the
/// same place in both).
#[inline(always)]
fn port_field(dst: bool) -> Field {
    if dst {
        tcp::DST_PORT
    } else {
        tcp::SRC_PORT
    }
}

/// The big-endian 16-bit word at `i` of a header view.
#[inline(always)]
fn be16(h: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([h[i], h[i + 1]])
}

#[inline]
fn addr_range(m: &Meta, dst: bool) -> (usize, usize) {
    let l3 = usize::from(m.l3_off);
    match (m.v6, dst) {
        (false, false) => (l3 + ipv4::SRC_ADDR.start, ipv4::ADDR_LEN),
        (false, true) => (l3 + ipv4::DST_ADDR.start, ipv4::ADDR_LEN),
        (true, false) => (l3 + ipv6::SRC_ADDR.start, ipv6::ADDR_LEN),
        (true, true) => (l3 + ipv6::DST_ADDR.start, ipv6::ADDR_LEN),
    }
}

/// Replaces the source (`dst = false`) or destination address and TCP/UDP port together,
/// folding both changes into one update of each checksum (the NAT fast path).
#[inline]
pub fn set_addr_port(frame: &mut [u8], m: &mut Meta, dst: bool, addr: Addr, port: u16) {
    let (off, len) = addr_range(m, dst);
    let new_b = &addr.bytes[..len];
    let d_addr = delta(&frame[off..off + len], new_b);
    if !m.v6 {
        let l3 = usize::from(m.l3_off);
        let c = get16(frame, l3 + ipv4::CHECKSUM.start);
        put16(frame, l3 + ipv4::CHECKSUM.start, apply(c, d_addr));
    }
    let mut d_l4 = d_addr;
    let ports = m.has_l4() && (m.proto == PROTO_TCP || m.proto == PROTO_UDP);
    let port_off = usize::from(m.l4_off) + port_field(dst).start;
    if ports {
        d_l4 += delta16(get16(frame, port_off), port);
    }
    fix_l4(frame, m, d_l4);
    frame[off..off + len].copy_from_slice(new_b);
    if ports {
        put16(frame, port_off, port);
    }
    if dst {
        m.dst = addr;
        if ports {
            m.dport = port;
        }
    } else {
        m.src = addr;
        if ports {
            m.sport = port;
        }
    }
}

/// Replaces the source (`dst = false`) or destination address.
#[inline]
pub fn set_addr(frame: &mut [u8], m: &mut Meta, dst: bool, new: Addr) {
    let l3 = usize::from(m.l3_off);
    let (off, len) = addr_range(m, dst);
    let new_b = &new.bytes[..len];
    let d = delta(&frame[off..off + len], new_b);
    if !m.v6 {
        let c = get16(frame, l3 + ipv4::CHECKSUM.start);
        put16(frame, l3 + ipv4::CHECKSUM.start, apply(c, d));
    }
    fix_l4(frame, m, d);
    frame[off..off + len].copy_from_slice(new_b);
    if dst {
        m.dst = new;
    } else {
        m.src = new;
    }
}

/// Replaces the TCP/UDP source or destination port.
#[inline]
pub fn set_port(frame: &mut [u8], m: &mut Meta, dst: bool, new: u16) {
    if !m.has_l4() || !(m.proto == PROTO_TCP || m.proto == PROTO_UDP) {
        return;
    }
    let off = usize::from(m.l4_off) + port_field(dst).start;
    let old = get16(frame, off);
    if old == new {
        return;
    }
    fix_l4(frame, m, delta16(old, new));
    put16(frame, off, new);
    if dst {
        m.dport = new;
    } else {
        m.sport = new;
    }
}

/// [`set_addr_port`] then [`decrement_ttl`] on an IPv4 TCP/UDP packet (the established NAT fast
/// path), with the same resulting bytes: the address, port and TTL changes go into one update of
/// each checksum (one's-complement sums are order-free, and both ways end in a non-zero sum, so
/// even the representation of zero agrees). Works on fixed-size views of the headers: ~40
/// instructions instead of ~230. Returns `false`, with nothing changed, for any other packet.
/// The caller checked that the TTL is > 1.
#[inline]
pub fn nat_v4_and_ttl(frame: &mut [u8], m: &mut Meta, dst: bool, addr: Addr, port: u16) -> bool {
    if !nat_v4_and_ttl_frame(frame, m, dst, addr, port) {
        return false;
    }
    if dst {
        m.dst = addr;
        m.dport = port;
    } else {
        m.src = addr;
        m.sport = port;
    }
    m.ttl -= 1;
    true
}

/// [`nat_v4_and_ttl`] on the frame alone, `m` left as parsed (the established fast path reads
/// nothing of the packet after its rewrite).
#[inline(always)]
pub fn nat_v4_and_ttl_frame(frame: &mut [u8], m: &Meta, dst: bool, addr: Addr, port: u16) -> bool {
    let check = match m.proto {
        PROTO_TCP => tcp::CHECKSUM,
        PROTO_UDP => udp::CHECKSUM,
        _ => return false,
    };
    if m.v6 || !m.has_l4() {
        return false;
    }
    let l3 = usize::from(m.l3_off);
    let l4 = usize::from(m.l4_off);
    if l4 < l3 + ipv4::MIN_HEADER_LEN || l4 > frame.len() {
        return false;
    }
    let (head, tail) = frame.split_at_mut(l4);
    let Some(Ok(ip)) = head
        .get_mut(l3..l3 + ipv4::MIN_HEADER_LEN)
        .map(<&mut [u8; ipv4::MIN_HEADER_LEN]>::try_from)
    else {
        return false;
    };
    let Some(l4h) = tail.get_mut(..check.end) else {
        return false;
    };
    let aoff = if dst {
        ipv4::DST_ADDR.start
    } else {
        ipv4::SRC_ADDR.start
    };
    let old_addr = u32::from_be_bytes([ip[aoff], ip[aoff + 1], ip[aoff + 2], ip[aoff + 3]]);
    let new = [addr.bytes[0], addr.bytes[1], addr.bytes[2], addr.bytes[3]];
    let d_addr = u64::from(!old_addr) + u64::from(u32::from_be_bytes(new));
    let ttl_old = be16(ip, ipv4::TTL_PROTOCOL.start);
    let ttl_new = ttl_old.wrapping_sub(0x100);
    let ipc = be16(ip, ipv4::CHECKSUM.start);
    let ipc = apply(ipc, d_addr + delta16(ttl_old, ttl_new));
    ip[aoff..aoff + ipv4::ADDR_LEN].copy_from_slice(&new);
    ip[ipv4::TTL] = (ttl_new >> 8) as u8;
    ip[ipv4::CHECKSUM].copy_from_slice(&ipc.to_be_bytes());

    let ports = port_field(dst);
    let old_port = be16(l4h, ports.start);
    let c = be16(l4h, check.start);
    if !(m.proto == PROTO_UDP && c == 0) {
        let mut n = apply(c, d_addr + delta16(old_port, port));
        if m.proto == PROTO_UDP && n == 0 {
            n = 0xffff;
        }
        l4h[check].copy_from_slice(&n.to_be_bytes());
    }
    l4h[ports].copy_from_slice(&port.to_be_bytes());
    true
}

/// The established fast lane's rewrite of a lean IPv4 frame (`parse::lean4`), on fixed-size
/// views: `ip` the 20-byte IPv4 header, `l4` the first `L` bytes of the TCP (`L` = 18) or UDP
/// (`L` = 8) header, the checksum field in its last two bytes; every index is a constant, so no
/// bounds check is left. Replaces the destination (`dst`) or source address and port with
/// `addr:port` and, with `ttl`, decrements the TTL, folding the changes into one update of each
/// checksum: the same bytes as [`nat_v4_and_ttl_frame`] (with `ttl`) or [`set_addr_port`]
/// (without). The caller checked that the TTL is > 1.
///
/// Every word is read and every checksum stored in the machine's byte order: the
/// one's-complement sum is byte-order independent (RFC 1071 §2(B): swapping the bytes of every
/// 16-bit word swaps those of the sum), so this gives the bytes of the big-endian computation
/// with no byte swap but the port's.
#[inline(always)]
pub fn nat4<const L: usize>(
    ip: &mut [u8; ipv4::MIN_HEADER_LEN],
    l4: &mut [u8; L],
    udp: bool,
    dst: bool,
    addr: [u8; 4],
    port: u16,
    ttl: bool,
) {
    let aoff = if dst {
        ipv4::DST_ADDR.start
    } else {
        ipv4::SRC_ADDR.start
    };
    let old_addr = u32::from_ne_bytes([ip[aoff], ip[aoff + 1], ip[aoff + 2], ip[aoff + 3]]);
    let d_addr = u64::from(!old_addr) + u64::from(u32::from_ne_bytes(addr));
    let mut d_ip = d_addr;
    if ttl {
        d_ip += TTL_DEC;
        ip[ipv4::TTL] -= 1;
    }
    let ipc = apply(ne16(ip, ipv4::CHECKSUM.start), d_ip);
    ip[aoff..aoff + ipv4::ADDR_LEN].copy_from_slice(&addr);
    ip[ipv4::CHECKSUM].copy_from_slice(&ipc.to_ne_bytes());

    let ports = port_field(dst);
    let ck = L - 2;
    let wire_port = port.to_be_bytes();
    let old_port = ne16(l4, ports.start);
    let c = ne16(l4, ck);
    // Both representations of zero read the same in either byte order.
    if !(udp && c == 0) {
        let mut n = apply(c, d_addr + delta16(old_port, u16::from_ne_bytes(wire_port)));
        if udp && n == 0 {
            n = 0xffff;
        }
        l4[ck..ck + 2].copy_from_slice(&n.to_ne_bytes());
    }
    l4[ports].copy_from_slice(&wire_port);
}

/// The lane's TTL decrement as a checksum delta (RFC 1624 eq. 3's `~m + m'` for the TTL/protocol
/// word): a TTL > 0 minus one changes that word by exactly the TTL byte's unit (no borrow), so
/// `~m + m' = 0xffff - unit` whatever the TTL and protocol: a constant, in the machine's byte
/// order as [`nat4`] reads words (the TTL is the word's first byte).
const TTL_DEC: u64 = 0xffff - u16::from_ne_bytes([1, 0]) as u64;

/// The native-endian 16-bit word at `i` of a header view (see [`nat4`]).
#[inline(always)]
fn ne16(h: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([h[i], h[i + 1]])
}

/// The fast lane's TTL decrement of a flow without NAT: the same bytes as
/// [`decrement_ttl_frame`] (in the machine's byte order, as [`nat4`]). The caller checked
/// that the TTL is > 1.
#[inline(always)]
pub fn ttl4(ip: &mut [u8; ipv4::MIN_HEADER_LEN]) {
    ip[ipv4::TTL] -= 1;
    let c = apply(ne16(ip, ipv4::CHECKSUM.start), TTL_DEC);
    ip[ipv4::CHECKSUM].copy_from_slice(&c.to_ne_bytes());
}

/// Decrements TTL / hop limit (the caller checked it is > 1).
#[inline]
pub fn decrement_ttl(frame: &mut [u8], m: &mut Meta) {
    decrement_ttl_frame(frame, m);
    m.ttl -= 1;
}

/// [`decrement_ttl`] on the frame alone, `m` left as parsed.
#[inline]
pub fn decrement_ttl_frame(frame: &mut [u8], m: &Meta) {
    let l3 = usize::from(m.l3_off);
    if let (false, Some(ip)) = (m.v6, frame.get_mut(l3..l3 + ipv4::CHECKSUM.end)) {
        // Fixed offsets in one bounds-checked view.
        let word_old = be16(ip, ipv4::TTL_PROTOCOL.start);
        ip[ipv4::TTL] -= 1;
        let c = be16(ip, ipv4::CHECKSUM.start);
        let c = update16(c, word_old, be16(ip, ipv4::TTL_PROTOCOL.start));
        ip[ipv4::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        return;
    }
    if m.v6 {
        frame[l3 + ipv6::HOP_LIMIT] -= 1;
    } else {
        let ttl = l3 + ipv4::TTL_PROTOCOL.start;
        let check = l3 + ipv4::CHECKSUM.start;
        let word_old = get16(frame, ttl);
        frame[l3 + ipv4::TTL] -= 1;
        let c = get16(frame, check);
        put16(frame, check, update16(c, word_old, get16(frame, ttl)));
    }
}

#[inline]
pub fn set_macs(frame: &mut [u8], src: &[u8; 6], dst: &[u8; 6]) {
    frame[ethernet::DST_MAC].copy_from_slice(dst);
    frame[ethernet::SRC_MAC].copy_from_slice(src);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse, Parsed};
    use etherparse::PacketBuilder;
    use smoltcp::wire::{IpAddress, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

    fn meta(f: &[u8]) -> Meta {
        match parse(f).unwrap() {
            Parsed::Ip(m) => m,
            Parsed::NotIp => panic!("not ip"),
        }
    }

    /// Independent verification with smoltcp's full checksum computation.
    fn verify(f: &[u8], m: &Meta) {
        let l3 = &f[usize::from(m.l3_off)..usize::from(m.ip_end)];
        if m.v6 {
            let ip = Ipv6Packet::new_checked(l3).unwrap();
            let (s, d) = (
                IpAddress::Ipv6(ip.src_addr()),
                IpAddress::Ipv6(ip.dst_addr()),
            );
            match m.proto {
                PROTO_TCP => assert!(TcpPacket::new_checked(ip.payload())
                    .unwrap()
                    .verify_checksum(&s, &d)),
                PROTO_UDP => assert!(UdpPacket::new_checked(ip.payload())
                    .unwrap()
                    .verify_checksum(&s, &d)),
                _ => {}
            }
        } else {
            let ip = Ipv4Packet::new_checked(l3).unwrap();
            assert!(ip.verify_checksum());
            let (s, d) = (
                IpAddress::Ipv4(ip.src_addr()),
                IpAddress::Ipv4(ip.dst_addr()),
            );
            match m.proto {
                PROTO_TCP => assert!(TcpPacket::new_checked(ip.payload())
                    .unwrap()
                    .verify_checksum(&s, &d)),
                PROTO_UDP => assert!(UdpPacket::new_checked(ip.payload())
                    .unwrap()
                    .verify_checksum(&s, &d)),
                _ => {}
            }
        }
    }

    #[test]
    fn dnat_v4_tcp_keeps_checksums_valid() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 244, 1, 10], [10, 96, 0, 10], 64)
            .tcp(40000, 80, 7, 1000)
            .syn()
            .write(&mut f, b"hello")
            .unwrap();
        let mut m = meta(&f);
        set_addr_port(&mut f, &mut m, true, Addr::v4([10, 244, 1, 21]), 8080);
        decrement_ttl(&mut f, &mut m);
        verify(&f, &meta(&f));
        let m2 = meta(&f);
        assert_eq!(
            (m2.dst, m2.dport, m2.ttl),
            (Addr::v4([10, 244, 1, 21]), 8080, 63)
        );
    }

    #[test]
    fn snat_v6_udp_keeps_checksums_valid() {
        let mut f = Vec::new();
        let a = [0xfd, 0, 2, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21];
        let b = [0xfd, 0, 2, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv6(a, b, 64)
            .udp(5353, 33000)
            .write(&mut f, b"answer")
            .unwrap();
        let mut m = meta(&f);
        let mut vip = [0u8; 16];
        vip[0] = 0xfd;
        vip[15] = 0x53;
        set_addr(&mut f, &mut m, false, Addr::v6(vip));
        set_port(&mut f, &mut m, false, 53);
        verify(&f, &meta(&f));
    }

    /// The combined fast NAT gives the same bytes as the two separate steps.
    #[test]
    fn combined_nat_and_ttl_equals_separate_steps() {
        let mut frames = Vec::new();
        for ttl in [2u8, 64, 255] {
            for payload in [&b""[..], b"hello", b"\xff\xff\xff\xff\xff\xff"] {
                let mut f = Vec::new();
                PacketBuilder::ethernet2([1; 6], [2; 6])
                    .ipv4([10, 244, 1, 10], [10, 96, 0, 10], ttl)
                    .tcp(40000, 80, 7, 1000)
                    .ack(9)
                    .write(&mut f, payload)
                    .unwrap();
                frames.push(f);
                let mut f = Vec::new();
                PacketBuilder::ethernet2([1; 6], [2; 6])
                    .ipv4([10, 244, 1, 10], [255, 255, 255, 255], ttl)
                    .udp(65535, 0)
                    .write(&mut f, payload)
                    .unwrap();
                frames.push(f.clone());
                let l4 = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN;
                put16(&mut f, l4 + udp::CHECKSUM.start, 0); // "no checksum"
                frames.push(f);
            }
        }
        let targets = [
            (Addr::v4([10, 244, 1, 21]), 8080),
            (Addr::v4([0, 0, 0, 0]), 0),
            (Addr::v4([255, 255, 255, 255]), 65535),
        ];
        for f in &frames {
            for dst in [false, true] {
                for (addr, port) in targets {
                    let mut a = f.clone();
                    let mut ma = meta(&a);
                    set_addr_port(&mut a, &mut ma, dst, addr, port);
                    decrement_ttl(&mut a, &mut ma);
                    let mut b = f.clone();
                    let mut mb = meta(&b);
                    assert!(nat_v4_and_ttl(&mut b, &mut mb, dst, addr, port));
                    assert_eq!(a, b, "dst {dst} {addr}:{port}");
                    assert_eq!(format!("{ma:?}"), format!("{mb:?}"));
                }
            }
        }
    }

    /// The lane's fixed-view rewrite (`nat4` with the TTL, `ttl4`) gives the bytes of the
    /// general steps for every TTL it takes (> 1) and both directions: its TTL delta is a
    /// constant.
    #[test]
    fn lane_rewrite_equals_general_steps_for_every_ttl() {
        const L3: usize = ethernet::HEADER_LEN;
        const L4: usize = L3 + ipv4::MIN_HEADER_LEN;
        for ttl in 2u8..=255 {
            for (proto_udp, payload) in [(false, &b"hello"[..]), (true, b"\xff\xff\x00")] {
                let mut f = Vec::new();
                let b = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4(
                    [10, 244, 1, ttl],
                    [10, 96, 0, 10],
                    ttl,
                );
                if proto_udp {
                    b.udp(40000, 53).write(&mut f, payload).unwrap();
                } else {
                    b.tcp(40000, 80, 7, 1000)
                        .ack(9)
                        .write(&mut f, payload)
                        .unwrap();
                }
                for dst in [false, true] {
                    let (addr, port) = ([10, 244, 2, ttl], 8080 + u16::from(ttl));
                    let mut a = f.clone();
                    let mut ma = meta(&a);
                    set_addr_port(&mut a, &mut ma, dst, Addr::v4(addr), port);
                    decrement_ttl(&mut a, &mut ma);
                    let mut b = f.clone();
                    let (l2l3, l4) = b.split_at_mut(L4);
                    let ip: &mut [u8; ipv4::MIN_HEADER_LEN] = (&mut l2l3[L3..]).try_into().unwrap();
                    if proto_udp {
                        let l4 = l4.first_chunk_mut::<{ udp::CHECKSUM.end }>().unwrap();
                        nat4(ip, l4, true, dst, addr, port, true);
                    } else {
                        let l4 = l4.first_chunk_mut::<{ tcp::CHECKSUM.end }>().unwrap();
                        nat4(ip, l4, false, dst, addr, port, true);
                    }
                    assert_eq!(a, b, "ttl {ttl} udp {proto_udp} dst {dst}");
                    verify(&b, &meta(&b));
                }
                let mut a = f.clone();
                let mut ma = meta(&a);
                decrement_ttl(&mut a, &mut ma);
                let mut b = f.clone();
                let ip: &mut [u8; ipv4::MIN_HEADER_LEN] = (&mut b[L3..L4]).try_into().unwrap();
                ttl4(ip);
                assert_eq!(a, b, "ttl4, ttl {ttl}");
            }
        }
    }

    #[test]
    fn udp_v4_without_checksum_stays_without() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut f, b"x")
            .unwrap();
        let m0 = meta(&f);
        put16(&mut f, usize::from(m0.l4_off) + udp::CHECKSUM.start, 0);
        let mut m = meta(&f);
        set_addr(&mut f, &mut m, true, Addr::v4([10, 0, 0, 3]));
        assert_eq!(get16(&f, usize::from(m.l4_off) + udp::CHECKSUM.start), 0);
    }
}
