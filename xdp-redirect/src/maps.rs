//! The typed steering description and its encoding into the XDP program's map keys.
//!
//! Pure logic, no syscalls: [`SteeringConfig`] (what the control plane wants steered) is
//! validated and encoded into [`SteeringEntries`] (the exact key sets of the kernel maps);
//! [`SteeringEntries::stale`] gives what an update must remove once the new entries are in.
//! Key layouts mirror the structs in `bpf/redirect.c`:
//!
//! | map | key | bytes |
//! |---|---|---|
//! | `steer_v4` (LPM) | `{u32 prefixlen (host order); u8 addr[4]}` | 8 |
//! | `steer_v6` (LPM) | `{u32 prefixlen (host order); u8 addr[16]}` | 20 |
//! | `host_addrs` (hash) | `u8 addr[16]`, IPv4 as `::ffff:a.b.c.d` | 16 |
//! | `nodeports` (hash) | `{u8 addr[16]; be16 port; u8 proto; u8 0}` | 20 |
//! | `snat_addrs` (hash) | `u8 addr[16]` → `{u16 first; u16 last}` (host order) | 16 → 4 |
//! | `pod_ifaces` (hash) | `u32 ifindex` | 4 |

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use ipnet::IpNet;

/// Map sizes, as `#define NP_MAX_*` in `bpf/redirect.c` (a unit test keeps them equal).
/// What happens when a configuration exceeds them: [`SteeringConfig::encode`] rejects the
/// whole configuration, nothing is written.
pub mod limits {
    /// XSKMAP slots: total AF_XDP sockets (interface queues) across all interfaces.
    pub const MAX_XSKS: u32 = 1024;
    /// Interfaces with XDP attached; also the size of the pod interface set.
    pub const MAX_IFACES: u32 = 1024;
    /// Steered prefixes, per address family: every service VIP is one, so this bounds the
    /// services a node can hold (1M; the tries are not preallocated, so the bound costs
    /// nothing until it is used).
    pub const MAX_PREFIXES: u32 = 1 << 20;
    /// Node-owned addresses passed to the kernel.
    pub const MAX_HOST_ADDRS: u32 = 1024;
    /// (node address, protocol, port) NodePort entries.
    pub const MAX_NODEPORTS: u32 = 8192;
    /// Node addresses source NAT uses (their replies in the SNAT port range are steered).
    pub const MAX_SNAT_ADDRS: u32 = 64;
    /// Fragmented NodePort datagrams whose later fragments the program steers (an LRU map the
    /// program fills itself: past this, the least recently used datagram is forgotten and its
    /// remaining fragments go to the kernel).
    pub const MAX_FRAGS: u32 = 8192;
}

/// One reason per exit of the XDP program; index into its per-CPU `counters` map.
/// The order is the `enum np_counter` of `bpf/redirect.c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// Steered from a pod interface.
    RedirectPod,
    /// Steered from a non-pod interface: destination in a steered prefix.
    RedirectUplink,
    /// Steered: (node address, protocol, port) is a NodePort.
    RedirectNodePort,
    /// Would be steered, but the (interface, queue) has no AF_XDP socket: passed to the kernel.
    PassNoSocket,
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    PassNotIp,
    /// Truncated or malformed headers (the kernel drops and counts them).
    PassMalformed,
    /// ICMPv6 router/neighbour discovery (types 133..137).
    PassNd,
    /// Multicast, broadcast or link-local destination.
    PassMulticast,
    /// Destination is a node-owned address (not a NodePort).
    PassHost,
    /// Not ours: host traffic on the uplink (BGP, SSH, ...).
    PassNotSteered,
    /// Steered: a non-first fragment of a datagram whose first fragment went to a NodePort.
    RedirectFragment,
    /// Would be steered, no socket, and the loader asked to drop such frames (a dead worker):
    /// dropped instead of passed to the kernel unpoliced.
    DropNoSocket,
    /// Steered: TCP/UDP to a source-NAT address in its port range (the reply of a flow the
    /// dataplane source-NATed).
    RedirectSnat,
}

impl Counter {
    /// All counters, in map index order.
    pub const ALL: [Counter; 13] = [
        Counter::RedirectPod,
        Counter::RedirectUplink,
        Counter::RedirectNodePort,
        Counter::PassNoSocket,
        Counter::PassNotIp,
        Counter::PassMalformed,
        Counter::PassNd,
        Counter::PassMulticast,
        Counter::PassHost,
        Counter::PassNotSteered,
        Counter::RedirectFragment,
        Counter::DropNoSocket,
        Counter::RedirectSnat,
    ];

    /// Index in the `counters` map.
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Stable snake_case name (metrics label).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::RedirectPod => "redirect_pod",
            Counter::RedirectUplink => "redirect_uplink",
            Counter::RedirectNodePort => "redirect_nodeport",
            Counter::PassNoSocket => "pass_no_socket",
            Counter::PassNotIp => "pass_not_ip",
            Counter::PassMalformed => "pass_malformed",
            Counter::PassNd => "pass_nd",
            Counter::PassMulticast => "pass_multicast",
            Counter::PassHost => "pass_host",
            Counter::PassNotSteered => "pass_not_steered",
            Counter::RedirectFragment => "redirect_fragment",
            Counter::DropNoSocket => "drop_no_socket",
            Counter::RedirectSnat => "redirect_snat",
        }
    }

    /// Whether this exit is `XDP_DROP`.
    pub const fn is_drop(self) -> bool {
        matches!(self, Counter::DropNoSocket)
    }

    /// Whether this exit is `XDP_REDIRECT` (else `XDP_PASS`, or `XDP_DROP`: [`Self::is_drop`]).
    pub const fn is_redirect(self) -> bool {
        matches!(
            self,
            Counter::RedirectPod
                | Counter::RedirectUplink
                | Counter::RedirectNodePort
                | Counter::RedirectFragment
                | Counter::RedirectSnat
        )
    }
}

/// Summed (over CPUs) values of the XDP program's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    values: [u64; Counter::ALL.len()],
}

impl Counters {
    /// Builds from values in [`Counter::ALL`] order.
    pub const fn from_values(values: [u64; Counter::ALL.len()]) -> Self {
        Counters { values }
    }

    /// The value of one counter.
    pub const fn get(&self, c: Counter) -> u64 {
        self.values[c as usize]
    }

    /// Frames handed to AF_XDP sockets.
    pub fn redirected(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.is_redirect())
            .map(|&c| self.get(c))
            .sum()
    }

    /// Frames passed to the kernel.
    pub fn passed(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| !c.is_redirect() && !c.is_drop())
            .map(|&c| self.get(c))
            .sum()
    }

    /// Frames dropped by the program (only on request: see [`Counter::DropNoSocket`]).
    pub fn dropped(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.is_drop())
            .map(|&c| self.get(c))
            .sum()
    }

    /// (counter, value) pairs in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(|&c| (c, self.get(c)))
    }
}

/// L4 protocol of a NodePort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl Proto {
    /// IANA protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        })
    }
}

/// A NodePort: traffic to `addr` (a node address) on (`proto`, `port`) is steered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodePort {
    /// Node address the port is open on.
    pub addr: IpAddr,
    /// L4 protocol.
    pub proto: Proto,
    /// Destination port (non-zero).
    pub port: u16,
}

/// What the XDP program steers to the AF_XDP sockets (see `bpf/redirect.c` for the rule order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SteeringConfig {
    /// Pod interfaces: all their unicast IP traffic is steered (except to `host_addrs`).
    pub pod_ifindexes: Vec<u32>,
    /// Destination prefixes steered on every interface: PodCIDRs, service VIPs, LB IPs.
    /// Host bits are ignored (`10.244.1.5/24` is `10.244.1.0/24`).
    pub prefixes: Vec<IpNet>,
    /// Node-owned addresses (node IPs, pod gateway addresses): traffic to them goes to the
    /// kernel unless it matches a NodePort. Checked before `prefixes`, so a gateway inside a
    /// PodCIDR still reaches the kernel.
    pub host_addrs: Vec<IpAddr>,
    /// NodePorts on node addresses.
    pub nodeports: Vec<NodePort>,
    /// Addresses source NAT uses, with its port range: TCP/UDP to one of them in the range
    /// is steered (before `host_addrs`), on every interface.
    pub snat: Vec<SnatAddr>,
}

/// A source-NAT address: the replies of flows source-NATed to `addr` come back to a port in
/// `first..=last` (`node.snat_port_range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnatAddr {
    /// A node address.
    pub addr: IpAddr,
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (inclusive).
    pub last: u16,
}

/// A configuration the XDP maps cannot hold; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// More entries than the map holds.
    #[error("steering config has {count} {what}, more than the XDP map holds ({max})")]
    TooMany {
        /// Which set.
        what: &'static str,
        /// Entries requested.
        count: usize,
        /// Map capacity.
        max: u32,
    },
    /// NodePort 0 cannot match: the program uses 0 for "no port".
    #[error("steering config has NodePort {addr} {proto}/0: port 0 is not a valid NodePort")]
    ZeroPort {
        /// Address of the entry.
        addr: IpAddr,
        /// Protocol of the entry.
        proto: Proto,
    },
    /// Interface index 0 does not exist.
    #[error("steering config lists pod interface index 0, which no interface has")]
    ZeroIfindex,
    /// A source-NAT port range that is empty or includes port 0.
    #[error("steering config has source-NAT range {first}-{last} on {addr}: it must be non-empty and exclude port 0")]
    BadSnatRange {
        /// Address of the entry.
        addr: IpAddr,
        /// First port.
        first: u16,
        /// Last port.
        last: u16,
    },
}

/// LPM key of `steer_v4`.
pub type Lpm4Key = (u8, [u8; 4]);
/// LPM key of `steer_v6`.
pub type Lpm6Key = (u8, [u8; 16]);

/// The exact key sets of the steering maps for one configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SteeringEntries {
    /// `pod_ifaces` keys.
    pub pods: BTreeSet<u32>,
    /// `steer_v4` keys (prefix length, network address).
    pub v4: BTreeSet<Lpm4Key>,
    /// `steer_v6` keys.
    pub v6: BTreeSet<Lpm6Key>,
    /// `host_addrs` keys.
    pub hosts: BTreeSet<[u8; 16]>,
    /// `nodeports` keys.
    pub nodeports: BTreeSet<[u8; 20]>,
    /// `snat_addrs` keys and values (`[first, last]`): one range per address; a changed range
    /// is an upsert of the same key.
    pub snat: BTreeMap<[u8; 16], [u16; 2]>,
}

/// An address as the 16-byte key the program compares: IPv6 as is, IPv4 as `::ffff:a.b.c.d`.
pub fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr.to_canonical() {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The `nodeports` key of one NodePort.
pub fn nodeport_key(np: &NodePort) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&addr16(np.addr));
    k[16..18].copy_from_slice(&np.port.to_be_bytes());
    k[18] = np.proto.number();
    k
}

/// Decodes a `nodeports` key (for dumps).
pub fn decode_nodeport_key(k: &[u8; 20]) -> Option<NodePort> {
    let mut a = [0u8; 16];
    a.copy_from_slice(&k[..16]);
    let addr = IpAddr::V6(Ipv6Addr::from(a)).to_canonical();
    let port = u16::from_be_bytes([k[16], k[17]]);
    let proto = match k[18] {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        132 => Proto::Sctp,
        _ => return None,
    };
    Some(NodePort { addr, proto, port })
}

fn check_len(what: &'static str, count: usize, max: u32) -> Result<(), ConfigError> {
    if count > max as usize {
        return Err(ConfigError::TooMany { what, count, max });
    }
    Ok(())
}

impl SteeringConfig {
    /// Validates and encodes into map keys. Duplicates collapse; the whole configuration is
    /// rejected if any part is invalid or does not fit.
    pub fn encode(&self) -> Result<SteeringEntries, ConfigError> {
        let mut e = SteeringEntries::default();
        for &ifindex in &self.pod_ifindexes {
            if ifindex == 0 {
                return Err(ConfigError::ZeroIfindex);
            }
            e.pods.insert(ifindex);
        }
        for net in &self.prefixes {
            // The kernel's LPM trie treats keys equal on their first `prefixlen` bits as the
            // same entry; truncating here keeps our stale-entry diff in agreement with it.
            match net.trunc() {
                IpNet::V4(n) => {
                    e.v4.insert((n.prefix_len(), n.network().octets()));
                }
                IpNet::V6(n) => {
                    e.v6.insert((n.prefix_len(), n.network().octets()));
                }
            }
        }
        for &a in &self.host_addrs {
            e.hosts.insert(addr16(a));
        }
        for np in &self.nodeports {
            if np.port == 0 {
                return Err(ConfigError::ZeroPort {
                    addr: np.addr,
                    proto: np.proto,
                });
            }
            e.nodeports.insert(nodeport_key(np));
        }
        for sa in &self.snat {
            if sa.first == 0 || sa.first > sa.last {
                return Err(ConfigError::BadSnatRange {
                    addr: sa.addr,
                    first: sa.first,
                    last: sa.last,
                });
            }
            e.snat.insert(addr16(sa.addr), [sa.first, sa.last]);
        }
        check_len("pod interfaces", e.pods.len(), limits::MAX_IFACES)?;
        check_len("IPv4 prefixes", e.v4.len(), limits::MAX_PREFIXES)?;
        check_len("IPv6 prefixes", e.v6.len(), limits::MAX_PREFIXES)?;
        check_len("host addresses", e.hosts.len(), limits::MAX_HOST_ADDRS)?;
        check_len("NodePorts", e.nodeports.len(), limits::MAX_NODEPORTS)?;
        check_len("source-NAT addresses", e.snat.len(), limits::MAX_SNAT_ADDRS)?;
        Ok(e)
    }
}

impl SteeringEntries {
    /// Entries of `self` (the old state) that `new` no longer has: what to remove after
    /// inserting `new`.
    pub fn stale(&self, new: &SteeringEntries) -> SteeringEntries {
        SteeringEntries {
            pods: self.pods.difference(&new.pods).copied().collect(),
            v4: self.v4.difference(&new.v4).copied().collect(),
            v6: self.v6.difference(&new.v6).copied().collect(),
            hosts: self.hosts.difference(&new.hosts).copied().collect(),
            nodeports: self.nodeports.difference(&new.nodeports).copied().collect(),
            snat: self
                .snat
                .iter()
                .filter(|(k, _)| !new.snat.contains_key(*k))
                .map(|(k, v)| (*k, *v))
                .collect(),
        }
    }

    /// Union (what the maps may hold after a failed update that could not be rolled back).
    pub fn union(&self, other: &SteeringEntries) -> SteeringEntries {
        SteeringEntries {
            pods: self.pods.union(&other.pods).copied().collect(),
            v4: self.v4.union(&other.v4).copied().collect(),
            v6: self.v6.union(&other.v6).copied().collect(),
            hosts: self.hosts.union(&other.hosts).copied().collect(),
            nodeports: self.nodeports.union(&other.nodeports).copied().collect(),
            snat: self
                .snat
                .iter()
                .chain(&other.snat)
                .map(|(k, v)| (*k, *v))
                .collect(),
        }
    }

    /// Total number of entries.
    pub fn len(&self) -> usize {
        self.pods.len()
            + self.v4.len()
            + self.v6.len()
            + self.hosts.len()
            + self.nodeports.len()
            + self.snat.len()
    }

    /// No entries at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const REDIRECT_C: &str = include_str!("../bpf/redirect.c");

    fn c_define(name: &str) -> u32 {
        let line = REDIRECT_C
            .lines()
            .find(|l| l.starts_with(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("{name} not defined in redirect.c"));
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    }

    #[test]
    fn counters_match_the_c_enum() {
        let body = REDIRECT_C
            .split("enum np_counter {")
            .nth(1)
            .unwrap()
            .split("};")
            .next()
            .unwrap();
        let c_names: Vec<(String, u32)> = body
            .lines()
            .filter_map(|l| {
                let l = l.trim().trim_end_matches(',');
                let (name, val) = l.split_once(" = ")?;
                Some((name.to_owned(), val.parse().ok()?))
            })
            .filter(|(n, _)| n != "NP_COUNTER_MAX")
            .collect();
        assert_eq!(c_names.len(), Counter::ALL.len());
        for (c, (name, val)) in Counter::ALL.iter().zip(&c_names) {
            assert_eq!(c.index(), *val, "{name}");
            assert_eq!(format!("NP_{}", c.name().to_uppercase()), *name);
        }
        assert_eq!(c_define_enum_max(), Counter::ALL.len() as u32);
    }

    fn c_define_enum_max() -> u32 {
        let l = REDIRECT_C
            .lines()
            .find(|l| l.trim().starts_with("NP_COUNTER_MAX = "))
            .unwrap();
        l.trim()
            .trim_start_matches("NP_COUNTER_MAX = ")
            .trim_end_matches(',')
            .parse()
            .unwrap()
    }

    #[test]
    fn limits_match_the_c_defines() {
        assert_eq!(c_define("NP_MAX_XSKS"), limits::MAX_XSKS);
        assert_eq!(c_define("NP_MAX_IFACES"), limits::MAX_IFACES);
        assert_eq!(c_define("NP_MAX_PREFIXES"), limits::MAX_PREFIXES);
        assert_eq!(c_define("NP_MAX_HOST_ADDRS"), limits::MAX_HOST_ADDRS);
        assert_eq!(c_define("NP_MAX_NODEPORTS"), limits::MAX_NODEPORTS);
        assert_eq!(c_define("NP_MAX_FRAGS"), limits::MAX_FRAGS);
        assert_eq!(c_define("NP_MAX_SNAT_ADDRS"), limits::MAX_SNAT_ADDRS);
    }

    #[test]
    fn nodeport_key_layout() {
        let np = NodePort {
            addr: IpAddr::V4(Ipv4Addr::new(192, 168, 100, 2)),
            proto: Proto::Tcp,
            port: 30080,
        };
        let k = nodeport_key(&np);
        assert_eq!(
            k,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 100, 2, 0x75, 0x80, 6, 0]
        );
        assert_eq!(decode_nodeport_key(&k), Some(np));
        let v6 = NodePort {
            addr: "fd00:100::2".parse().unwrap(),
            proto: Proto::Udp,
            port: 30053,
        };
        assert_eq!(decode_nodeport_key(&nodeport_key(&v6)), Some(v6));
    }

    #[test]
    fn mapped_v6_input_is_the_same_key_as_v4() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(addr16(v4), addr16(mapped));
    }

    fn example() -> SteeringConfig {
        SteeringConfig {
            pod_ifindexes: vec![5, 6, 7],
            prefixes: vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:244:1::/64".parse().unwrap(),
                "10.96.0.10/32".parse().unwrap(),
                "203.0.113.10/32".parse().unwrap(),
            ],
            host_addrs: vec![
                "192.168.100.2".parse().unwrap(),
                "10.244.1.1".parse().unwrap(),
            ],
            nodeports: vec![
                NodePort {
                    addr: "192.168.100.2".parse().unwrap(),
                    proto: Proto::Tcp,
                    port: 30080,
                },
                NodePort {
                    addr: "192.168.100.2".parse().unwrap(),
                    proto: Proto::Udp,
                    port: 30053,
                },
            ],
            snat: vec![SnatAddr {
                addr: "192.168.100.2".parse().unwrap(),
                first: 61000,
                last: 65535,
            }],
        }
    }

    #[test]
    fn encode_truncates_host_bits_and_dedups() {
        let mut cfg = example();
        cfg.prefixes.push("10.244.1.77/24".parse().unwrap());
        cfg.pod_ifindexes.push(5);
        let e = cfg.encode().unwrap();
        assert_eq!(e.pods.len(), 3);
        assert_eq!(e.v4.len(), 3);
        assert!(e.v4.contains(&(24, [10, 244, 1, 0])));
        assert_eq!(e.v6.len(), 1);
        assert_eq!(e.hosts.len(), 2);
        assert_eq!(e.nodeports.len(), 2);
        assert_eq!(e.snat.len(), 1);
        assert_eq!(e.len(), 3 + 3 + 1 + 2 + 2 + 1);
    }

    #[test]
    fn encode_rejects_bad_input_whole() {
        let mut cfg = example();
        cfg.nodeports[1].port = 0;
        assert!(matches!(cfg.encode(), Err(ConfigError::ZeroPort { .. })));
        let mut cfg = example();
        cfg.pod_ifindexes.push(0);
        assert_eq!(cfg.encode(), Err(ConfigError::ZeroIfindex));
        let mut cfg = example();
        cfg.host_addrs = (0..=limits::MAX_HOST_ADDRS)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let err = cfg.encode().unwrap_err();
        assert_eq!(
            err.to_string(),
            "steering config has 1025 host addresses, more than the XDP map holds (1024)"
        );
    }

    #[test]
    fn stale_is_old_minus_new() {
        let old = example().encode().unwrap();
        let mut cfg = example();
        cfg.prefixes.remove(3); // LB IP withdrawn
        cfg.pod_ifindexes = vec![5, 6, 8]; // pod 7 gone, pod 8 new
        let new = cfg.encode().unwrap();
        let stale = old.stale(&new);
        assert_eq!(stale.pods, BTreeSet::from([7]));
        assert_eq!(stale.v4, BTreeSet::from([(32, [203, 0, 113, 10])]));
        assert!(stale.v6.is_empty() && stale.hosts.is_empty() && stale.nodeports.is_empty());
        assert!(stale.snat.is_empty());
        assert!(new.stale(&new).is_empty());
        assert_eq!(old.union(&new).pods, BTreeSet::from([5, 6, 7, 8]));
    }

    #[test]
    fn snat_range_change_is_an_upsert_never_a_removal() {
        let old = example().encode().unwrap();
        let mut cfg = example();
        cfg.snat[0].first = 50000;
        let new = cfg.encode().unwrap();
        // Same key, new value: nothing to remove after inserting (removing would unsteer it).
        assert!(old.stale(&new).snat.is_empty());
        let k = addr16("192.168.100.2".parse().unwrap());
        assert_eq!(new.snat[&k], [50000, 65535]);
        cfg.snat.clear();
        assert_eq!(new.stale(&cfg.encode().unwrap()).snat.len(), 1);
    }

    #[test]
    fn snat_range_must_be_non_empty_without_port_0() {
        for (first, last) in [(0, 10), (62000, 61000)] {
            let mut cfg = example();
            cfg.snat[0].first = first;
            cfg.snat[0].last = last;
            assert!(
                matches!(cfg.encode(), Err(ConfigError::BadSnatRange { .. })),
                "{first}-{last}"
            );
        }
    }
}
