//! Rejecting a new flow to a service that has no usable endpoint, as kube-proxy's REJECT rule
//! does (Kubernetes e2e "should be rejected when no endpoints exist"): a TCP segment is answered
//! with a reset, anything else (UDP) with an ICMP / ICMPv6 port unreachable, so the client
//! fails at once instead of after its timeouts.
//!
//! The pipeline drops such a frame `no-backend` (counted as ever); the worker then builds the
//! answer from it into a per-worker buffer ([`Rejects`]) and the I/O sends it as a copy after the
//! burst, out of the interface the frame came in on. An ICMP error is longer than the datagram
//! it quotes, so it cannot be written over a short frame: building it apart keeps the frames of
//! the burst (and the hot path) as they are. Nothing here allocates after [`Rejects::new`].
//!
//! Rate limit: a token bucket per worker (no lock), 1000 answers per second with a burst of 50,
//! the defaults of Linux's own ICMP limit (`net.ipv4.icmp_msgs_per_sec`, `icmp_msgs_burst`).
//! Answers over the limit are not sent and are counted (`rejects_suppressed`).

use crate::csum::{self, put16};
use crate::flow::{Addr, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP};
use crate::parse::{self, Frag, Parsed};
use crate::rst;
use crate::wire::{at, ethernet, icmp, icmpv6, ipv4, ipv6};
use crate::BURST;

/// Answers per second per worker, and how many may go at once.
pub const REJECTS_PER_SEC: u64 = 1000;
pub const REJECT_BURST: u64 = 50;

/// Largest answer: an ICMPv6 error fills at most the IPv6 minimum MTU (RFC 4443 §2.4(c)), plus
/// the frame's L2 header (with a VLAN tag).
pub const REJECT_MAX: usize = 18 + 1280;
/// An ICMPv4 error's IP datagram stays within 576 bytes (RFC 1812 §4.3.2.3).
const ICMPV4_MAX: usize = 576;
const ICMPV6_MAX: usize = 1280;
/// TTL / hop limit of an answer.
pub(crate) const REJECT_TTL: u8 = 64;
/// Type of service of an ICMPv4 error: precedence "internetwork control", as Linux sends them.
pub(crate) const ICMP_TOS: u8 = 0xc0;

/// Builds the answer rejecting `frame` into `out`: a reset for TCP, a port unreachable
/// otherwise. `None` when nothing may be sent (RFC 1122 §3.2.2, RFC 4443 §2.4(e)): a reset or
/// an ICMP error itself, a later fragment, a source that is not unicast, a destination that is
/// multicast or broadcast, a malformed frame.
pub fn build(frame: &[u8], out: &mut [u8]) -> Option<usize> {
    let m = match parse::parse(frame) {
        Ok(Parsed::Ip(m)) => m,
        _ => return None,
    };
    if !unicast(&m.src) || !unicast(&m.dst) || matches!(m.frag, Frag::Later) {
        return None;
    }
    if m.proto == PROTO_TCP {
        return rst::reset_into(frame, out);
    }
    if m.proto == PROTO_ICMP || m.proto == PROTO_ICMPV6 {
        // Never answer an ICMP message with an error (errors about errors loop; echo requests
        // never reach a service frontend: frontends are TCP and UDP).
        return None;
    }
    port_unreachable(frame, &m, out)
}

fn unicast(a: &Addr) -> bool {
    let ip = a.to_ip();
    !(ip.is_unspecified() || ip.is_multicast() || ip.is_loopback())
        && ip != std::net::IpAddr::from([255, 255, 255, 255])
}

fn port_unreachable(frame: &[u8], m: &parse::Meta, out: &mut [u8]) -> Option<usize> {
    let l3 = usize::from(m.l3_off);
    let end = usize::from(m.ip_end);
    let (ip_len, max) = if m.v6 {
        (ipv6::HEADER_LEN, ICMPV6_MAX)
    } else {
        (ipv4::MIN_HEADER_LEN, ICMPV4_MAX)
    };
    // The error quotes as much of the datagram as fits (at least its IP header and 8 bytes of
    // L4, which the parse guarantees for an unfragmented TCP/UDP datagram).
    let quote = (end - l3).min(max - ip_len - icmp::HEADER_LEN);
    let l4 = l3 + ip_len;
    let q = l4 + icmp::HEADER_LEN;
    let len = q + quote;
    let out = out.get_mut(..len)?;
    out[q..].copy_from_slice(&frame[l3..l3 + quote]);
    // L2: the frame's header (its VLAN tag kept), back to the sender.
    out[..l3].copy_from_slice(&frame[..l3]);
    let (a, b) = out[ethernet::MACS].split_at_mut(ethernet::SRC_MAC.start);
    a.swap_with_slice(b);
    let (src, dst) = (m.dst.octets(), m.src.octets());
    let (ty, code) = if m.v6 {
        (icmpv6::DEST_UNREACHABLE, icmpv6::PORT_UNREACHABLE)
    } else {
        (icmp::DEST_UNREACHABLE, icmp::PORT_UNREACHABLE)
    };
    error_headers(out, l3, m.v6, (src, dst), (ty, code, [0; 4]));
    Some(len)
}

/// Writes the IP header (no options, from `src` to `dst`) and the ICMP or ICMPv6 header
/// (`ty`, `code`, `rest`: the 4 bytes after the checksum) of an error whose quote already sits
/// after them in `out` (the whole error from `l3` on), with both checksums. Shared by the
/// reject answers here and the egress MTU's errors (`mtu.rs`).
pub(crate) fn error_headers(
    out: &mut [u8],
    l3: usize,
    v6: bool,
    (src, dst): (&[u8], &[u8]),
    (ty, code, rest): (u8, u8, [u8; 4]),
) {
    let len = out.len();
    let l4 = l3
        + if v6 {
            ipv6::HEADER_LEN
        } else {
            ipv4::MIN_HEADER_LEN
        };
    if v6 {
        out[l3..l3 + 4].copy_from_slice(&[0x60, 0, 0, 0]);
        put16(out, l3 + ipv6::PAYLOAD_LEN.start, (len - l4) as u16);
        out[l3 + ipv6::NEXT_HEADER] = PROTO_ICMPV6;
        out[l3 + ipv6::HOP_LIMIT] = REJECT_TTL;
        out[at(l3, ipv6::SRC_ADDR)].copy_from_slice(src);
        out[at(l3, ipv6::DST_ADDR)].copy_from_slice(dst);
    } else {
        out[l3 + ipv4::VER_IHL] = ipv4::VER_IHL_NO_OPTIONS;
        out[l3 + ipv4::DSCP_ECN] = ICMP_TOS;
        put16(out, l3 + ipv4::TOTAL_LEN.start, (len - l3) as u16);
        put16(out, l3 + ipv4::IDENT.start, 0);
        put16(out, l3 + ipv4::FLG_OFF.start, 0);
        out[l3 + ipv4::TTL] = REJECT_TTL;
        out[l3 + ipv4::PROTOCOL] = PROTO_ICMP;
        put16(out, l3 + ipv4::CHECKSUM.start, 0);
        out[at(l3, ipv4::SRC_ADDR)].copy_from_slice(src);
        out[at(l3, ipv4::DST_ADDR)].copy_from_slice(dst);
        let c = csum::checksum(&out[l3..l4]);
        put16(out, l3 + ipv4::CHECKSUM.start, c);
    }
    // ICMP and ICMPv6 share the header's layout (type, code, checksum, 4 bytes).
    out[l4 + icmp::TYPE] = ty;
    out[l4 + icmp::CODE] = code;
    put16(out, l4 + icmp::CHECKSUM.start, 0);
    out[l4 + 4..l4 + icmp::HEADER_LEN].copy_from_slice(&rest);
    let c = if v6 {
        let mut acc = csum::sum(&out[l4..len], 0);
        acc = csum::sum(src, acc);
        acc = csum::sum(dst, acc);
        acc += u32::from(PROTO_ICMPV6) + (len - l4) as u32;
        !csum::fold(acc)
    } else {
        csum::checksum(&out[l4..len])
    };
    put16(out, l4 + icmp::CHECKSUM.start, c);
}

/// A token bucket on the worker's clock (nanoseconds): [`REJECTS_PER_SEC`], at most
/// [`REJECT_BURST`] at once. One owner, no lock.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Tokens in thousandths of an answer (a refill of 1 per ms at 1000/s needs no division
    /// finer than this).
    milli: u64,
    last: Option<u64>,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            milli: REJECT_BURST * 1000,
            last: None,
        }
    }
}

impl Bucket {
    /// Takes one token at time `now`; `false` when the limit is reached.
    pub fn take(&mut self, now: u64) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_sub(last);
            // Tokens (in thousandths) earned since `last`: rate × elapsed s × 1000.
            let earned = (u128::from(elapsed) * u128::from(REJECTS_PER_SEC) / 1_000_000) as u64;
            self.milli = self.milli.saturating_add(earned).min(REJECT_BURST * 1000);
        }
        if self.last.is_none_or(|l| now > l) {
            self.last = Some(now);
        }
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// The answers of one burst, built while its frames are still there and sent after it.
#[derive(Debug)]
pub struct Rejects {
    bufs: Box<[[u8; REJECT_MAX]]>,
    /// (egress interface, time, length) of each pending answer.
    pending: [(u16, u64, u16); BURST],
    n: usize,
    bucket: Bucket,
    pub sent: u64,
    pub suppressed: u64,
}

impl Default for Rejects {
    fn default() -> Self {
        Self::new()
    }
}

impl Rejects {
    pub fn new() -> Rejects {
        Rejects {
            bufs: vec![[0u8; REJECT_MAX]; BURST].into_boxed_slice(),
            pending: [(0, 0, 0); BURST],
            n: 0,
            bucket: Bucket::default(),
            sent: 0,
            suppressed: 0,
        }
    }

    /// Answers `frame` (dropped `no-backend`, entered on `iface` at `ts`) if the rate limit
    /// allows and an answer may be sent; it goes out with [`Rejects::flush`].
    pub fn add(&mut self, frame: &[u8], iface: u16, ts: u64) {
        if self.n == BURST {
            self.suppressed += 1;
            return;
        }
        if !self.bucket.take(ts) {
            self.suppressed += 1;
            return;
        }
        if let Some(len) = build(frame, &mut self.bufs[self.n]) {
            self.pending[self.n] = (iface, ts, len as u16);
            self.n += 1;
        }
    }

    /// Hands every pending answer to `send(egress, time, frame)` and forgets them.
    pub fn flush(&mut self, mut send: impl FnMut(u16, u64, &[u8])) {
        for k in 0..self.n {
            let (iface, ts, len) = self.pending[k];
            send(iface, ts, &self.bufs[k][..usize::from(len)]);
            self.sent += 1;
        }
        self.n = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, SlicedPacket, TransportSlice};

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    fn udp4(payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 1, 2], [10, 96, 0, 53], 64)
            .udp(40000, 53)
            .write(&mut f, payload)
            .unwrap();
        f
    }

    #[test]
    fn short_udp_gets_a_port_unreachable_quoting_it_whole() {
        let f = udp4(b"hi");
        let mut out = [0u8; REJECT_MAX];
        let n = build(&f, &mut out).unwrap();
        assert_eq!(
            n,
            f.len() + 28,
            "IP header + ICMP header in front of the datagram"
        );
        let p = SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!((h.source, h.destination), ([10, 96, 0, 53], [10, 0, 1, 2]));
        let Some(TransportSlice::Icmpv4(i)) = &p.transport else {
            panic!("not ICMP")
        };
        assert!(matches!(
            i.icmp_type(),
            Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port)
        ));
        let hdr = i.header();
        assert_eq!(hdr.checksum, hdr.icmp_type.calc_checksum(i.payload()));
        assert_eq!(i.payload(), &f[14..], "the datagram quoted");
        assert_eq!(&out[..6], &A, "back to the sender");
    }

    #[test]
    fn ipv6_udp_gets_an_icmpv6_port_unreachable_within_1280_bytes() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv6([1; 16], [2; 16], 64)
            .udp(40000, 53)
            .write(&mut f, &[7u8; 1400])
            .unwrap();
        let mut out = [0u8; REJECT_MAX];
        let n = build(&f, &mut out).unwrap();
        assert_eq!(n, 14 + 1280);
        let p = SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6")
        };
        let h = ip.header().to_header();
        assert_eq!((h.source, h.destination), ([2; 16], [1; 16]));
        let Some(TransportSlice::Icmpv6(i)) = &p.transport else {
            panic!("not ICMPv6")
        };
        assert!(matches!(
            i.icmp_type(),
            Icmpv6Type::DestinationUnreachable(etherparse::icmpv6::DestUnreachableCode::Port)
        ));
        let hdr = i.header();
        assert_eq!(
            hdr.checksum,
            hdr.icmp_type
                .calc_checksum(h.source, h.destination, i.payload())
                .unwrap()
        );
        assert_eq!(i.payload(), &f[14..14 + 1280 - 48]);
    }

    #[test]
    fn tcp_gets_a_reset_and_errors_or_broadcasts_get_nothing() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 1, 2], [10, 96, 0, 10], 64)
            .tcp(40000, 80, 1, 1000)
            .syn()
            .write(&mut f, &[])
            .unwrap();
        let mut out = [0u8; REJECT_MAX];
        let n = build(&f, &mut out).unwrap();
        let p = SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("not TCP")
        };
        assert!(t.rst() && t.ack() && t.acknowledgment_number() == 2);

        let mut e = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 1, 2], [10, 96, 0, 10], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut e, &[])
            .unwrap();
        assert_eq!(build(&e, &mut out), None, "no answer to ICMP");
        let mut b = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 1, 2], [255, 255, 255, 255], 64)
            .udp(1, 2)
            .write(&mut b, &[])
            .unwrap();
        assert_eq!(build(&b, &mut out), None, "no answer to a broadcast");
        assert_eq!(build(&[0u8; 5], &mut out), None);
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut b = Bucket::default();
        let ok = (0..200).filter(|_| b.take(0)).count();
        assert_eq!(ok as u64, REJECT_BURST);
        // 10 ms later: 10 more at 1000/s.
        let ok = (0..200).filter(|_| b.take(10_000_000)).count();
        assert_eq!(ok, 10);
        // A long pause refills to the burst, no more.
        let ok = (0..200).filter(|_| b.take(60_000_000_000)).count();
        assert_eq!(ok as u64, REJECT_BURST);
    }

    #[test]
    fn rejects_over_the_limit_are_counted_not_sent() {
        let mut r = Rejects::new();
        let f = udp4(b"x");
        for _ in 0..BURST {
            r.add(&f, 3, 5);
        }
        let mut got = Vec::new();
        r.flush(|e, ts, fr| got.push((e, ts, fr.len())));
        assert_eq!(got.len() as u64, REJECT_BURST);
        assert_eq!(got[0], (3, 5, f.len() + 28));
        assert_eq!(
            (r.sent, r.suppressed),
            (REJECT_BURST, BURST as u64 - REJECT_BURST)
        );
    }
}
