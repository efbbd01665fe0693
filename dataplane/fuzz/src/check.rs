//! An independent reading of a frame's IP layer, to check what the pipeline transmits: the
//! IPv4 header checksum, the TCP/UDP/ICMP checksum, the TTL. Written apart from the dataplane's
//! own parser and checksum code (`parse.rs`, `csum.rs`) on purpose: a check that shares the
//! code under test cannot find its bugs.

const ETH_HEADER: usize = 14;
const VLAN_TAG: usize = 4;

/// The IP layer of a frame.
#[derive(Debug, Clone, Copy)]
pub struct Ip<'a> {
    pub v6: bool,
    /// The IP header (IPv4: with its options; IPv6: the fixed 40 bytes).
    pub header: &'a [u8],
    /// The upper-layer protocol and its bytes (up to the datagram's end).
    pub proto: u8,
    pub l4: &'a [u8],
    /// A fragment of a larger datagram (its L4 checksum covers bytes not in this frame).
    pub fragment: bool,
    /// TTL or hop limit.
    pub ttl: u8,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The IP layer of an Ethernet frame (VLAN tags skipped), or `None` for anything that is not a
/// well-formed IPv4 or IPv6 datagram.
pub fn ip_of(frame: &[u8]) -> Option<Ip<'_>> {
    let mut off = ETH_HEADER;
    let mut ethertype = be16(frame.get(..ETH_HEADER)?, 12);
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = be16(frame.get(off..off + VLAN_TAG)?, 2);
        off += VLAN_TAG;
    }
    let b = &frame[off..];
    match ethertype {
        0x0800 => {
            let ihl = usize::from(*b.first()? & 0x0f) * 4;
            if b[0] >> 4 != 4 || ihl < 20 || b.len() < ihl {
                return None;
            }
            let total = usize::from(be16(b, 2));
            if total < ihl || total > b.len() {
                return None;
            }
            let flags_offset = be16(b, 6);
            Some(Ip {
                v6: false,
                header: &b[..ihl],
                proto: b[9],
                l4: &b[ihl..total],
                fragment: flags_offset & 0x3fff != 0,
                ttl: b[8],
            })
        }
        0x86dd => {
            if b.len() < 40 || b[0] >> 4 != 6 {
                return None;
            }
            let end = 40 + usize::from(be16(b, 4));
            if end > b.len() {
                return None;
            }
            let (mut next, mut at, mut fragment) = (b[6], 40, false);
            loop {
                match next {
                    // Hop-by-hop, routing, destination options: (next, length in 8 bytes).
                    0 | 43 | 60 => {
                        let h = b.get(at..at + 2).filter(|_| at + 2 <= end)?;
                        next = h[0];
                        at += (usize::from(h[1]) + 1) * 8;
                    }
                    44 => {
                        let h = b.get(at..at + 8).filter(|_| at + 8 <= end)?;
                        // Offset or M set (the 2 bits between are reserved).
                        fragment |= be16(h, 2) & 0xfff9 != 0;
                        next = h[0];
                        at += 8;
                    }
                    _ => break,
                }
                if at > end {
                    return None;
                }
            }
            Some(Ip {
                v6: true,
                header: &b[..40],
                proto: next,
                l4: &b[at..end],
                fragment,
                ttl: b[7],
            })
        }
        _ => None,
    }
}

/// The ones' complement sum of `b` (odd length: padded with a zero byte), not folded.
fn sum(b: &[u8]) -> u64 {
    let mut s = 0u64;
    let mut words = b.chunks_exact(2);
    for w in &mut words {
        s += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        s += u64::from(*last) << 8;
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The IPv4 header checksum is right (`None`: an IPv6 datagram).
pub fn ipv4_header_ok(ip: &Ip<'_>) -> Option<bool> {
    (!ip.v6).then(|| fold(sum(ip.header)) == 0xffff)
}

/// Whether the TCP, UDP, ICMP or ICMPv6 checksum is right; `None` where it cannot be told from
/// this frame (a fragment, another protocol, a header cut short). A UDP-over-IPv4 checksum of 0
/// ("none") counts as right; over IPv6 it is wrong (RFC 8200 §8.1).
pub fn l4_ok(ip: &Ip<'_>) -> Option<bool> {
    if ip.fragment {
        return None;
    }
    let min = match ip.proto {
        6 => 20,
        17 => 8,
        1 | 58 => 4,
        _ => return None,
    };
    if ip.l4.len() < min {
        return None;
    }
    let pseudo = |proto: u8| -> u64 {
        let len = ip.l4.len() as u64;
        let addrs = if ip.v6 {
            &ip.header[8..40]
        } else {
            &ip.header[12..20]
        };
        sum(addrs) + u64::from(proto) + (len & 0xffff) + (len >> 16)
    };
    Some(match ip.proto {
        17 if be16(ip.l4, 6) == 0 => !ip.v6,
        1 if !ip.v6 => fold(sum(ip.l4)) == 0xffff,
        1 => return None,
        58 if !ip.v6 => return None,
        p => fold(pseudo(p) + sum(ip.l4)) == 0xffff,
    })
}

/// A TCP segment with the RST flag.
pub fn is_tcp_rst(ip: &Ip<'_>) -> bool {
    ip.proto == 6 && !ip.fragment && ip.l4.len() >= 20 && ip.l4[13] & 0x04 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame with right checksums.
    fn udp4() -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f.extend([
            0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 1, 2, 10, 0, 1, 3, // IPv4
            0x9c, 0x40, 0x00, 0x35, 0, 12, 0, 0, b'a', b'b', b'c', b'd', // UDP
        ]);
        let ip = fold(sum(&f[14..34]));
        f[24..26].copy_from_slice(&(!ip).to_be_bytes());
        let p = sum(&f[26..34]) + 17 + 12 + sum(&f[34..46]);
        f[40..42].copy_from_slice(&(!fold(p)).to_be_bytes());
        f
    }

    #[test]
    fn a_right_frame_checks_and_one_flipped_bit_does_not() {
        let f = udp4();
        let ip = ip_of(&f).expect("ipv4");
        assert_eq!((ip.proto, ip.ttl, ip.l4.len()), (17, 64, 12));
        assert_eq!(ipv4_header_ok(&ip), Some(true));
        assert_eq!(l4_ok(&ip), Some(true));
        let mut g = f.clone();
        g[44] ^= 1; // payload
        assert_eq!(l4_ok(&ip_of(&g).expect("ipv4")), Some(false));
        let mut h = f.clone();
        h[22] ^= 1; // TTL
        assert_eq!(ipv4_header_ok(&ip_of(&h).expect("ipv4")), Some(false));
        let mut fragment = f;
        fragment[20] = 0x20; // MF
        assert_eq!(l4_ok(&ip_of(&fragment).expect("ipv4")), None);
    }
}
