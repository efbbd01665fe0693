//! The typed model. Field names are the YAML keys (snake_case); enums use the spellings operators
//! know from Kubernetes (`ClusterIP`, `TCP`) or kebab-case for our own (`allow-all`).
//! See `docs/state-schema.md` for the full schema and `examples/state/` for a complete node.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Numeric security identity: 24 bits of identity, cluster id in the high 8 bits.
pub type Identity = u32;

/// Reserved identities (Cilium's numbering, so operators read them the same way).
pub mod reserved {
    use super::Identity;
    /// The node itself (traffic from or to a node IP).
    pub const HOST: Identity = 1;
    /// Anything outside the cluster: an address that no ipcache prefix covers.
    pub const WORLD: Identity = 2;
    /// Identities below this are reserved and may not be assigned to endpoints or prefixes.
    pub const FIRST_USER: Identity = 256;
    /// Largest identity value (24 bits of identity + 8 bits of cluster id).
    pub const MAX: Identity = u32::MAX;
}

/// The whole desired state of a node. A directory of YAML files is merged into one `State`
/// (lists are concatenated, `node` and `conntrack` may appear in one file only).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub node: Node,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub ipcache: Vec<IpcacheEntry>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// Workloads outside the cluster (VMs, bare metal): their IPs get the identity of their
    /// labels in the ipcache, so policy treats them like pods (docs/external.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_workloads: Vec<ExternalWorkload>,
    #[serde(default)]
    pub conntrack: ConntrackSettings,
}

/// A host outside the cluster registered with labels (a VM, a bare-metal server). Its IPs map
/// to its identity in the ipcache (as host routes), so rules that name the identity allow or
/// deny traffic from and to it exactly as for a pod. `identity: 0` (etcd mode) asks the
/// identity allocator for the identity of its labels, as for endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalWorkload {
    pub name: String,
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub identity: Identity,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    #[serde(default)]
    pub name: String,
    /// The node's PodCIDRs (at most one IPv4 and one IPv6 in practice; more are allowed).
    #[serde(default)]
    pub pod_cidrs: Vec<IpNet>,
    /// The node's own addresses: NodePort frontends listen on every one of them.
    #[serde(default)]
    pub node_ips: Vec<IpAddr>,
    #[serde(default)]
    pub policy_mode: PolicyMode,
    /// Maglev lookup table size for every service (a prime; default 16381, like Cilium).
    #[serde(default = "default_maglev_table_size")]
    pub maglev_table_size: u32,
    /// Source ports that SNAT may allocate on node IPs and service addresses, `[first, last]`
    /// (inclusive). Replies to a node IP in this range are the dataplane's, so it must not
    /// overlap the kernel's `net.ipv4.ip_local_port_range` (default 32768-60999) nor any node
    /// port; the default is the 4536 ports above the kernel's default range.
    #[serde(
        default = "default_snat_port_range",
        skip_serializing_if = "is_default_snat_port_range"
    )]
    pub snat_port_range: [u16; 2],
}

pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16381;

/// Written out (not derived) so that a state without a `node` section gets the same
/// `maglev_table_size` as one whose `node` section omits the key.
impl Default for Node {
    fn default() -> Self {
        Node {
            name: String::new(),
            pod_cidrs: Vec::new(),
            node_ips: Vec::new(),
            policy_mode: PolicyMode::default(),
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            snat_port_range: DEFAULT_SNAT_PORT_RANGE,
        }
    }
}

/// Above Linux's default `ip_local_port_range` (32768-60999) and the NodePort range.
pub const DEFAULT_SNAT_PORT_RANGE: [u16; 2] = [61000, 65535];

fn default_snat_port_range() -> [u16; 2] {
    DEFAULT_SNAT_PORT_RANGE
}

fn is_default_snat_port_range(r: &[u16; 2]) -> bool {
    *r == DEFAULT_SNAT_PORT_RANGE
}

fn default_maglev_table_size() -> u32 {
    DEFAULT_MAGLEV_TABLE_SIZE
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyMode {
    /// Policies are enforced: denied packets are dropped.
    #[default]
    Enforce,
    /// Policies are evaluated, denials are forwarded and marked `audit`.
    Audit,
    /// Emergency: policy is skipped entirely.
    AllowAll,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    pub role: InterfaceRole,
    /// Our MAC on this interface: the source MAC of frames we transmit on it.
    pub mac: MacAddr,
    /// Uplink: the next hop's MAC (from state here; the AF_XDP runtime refreshes it from the
    /// kernel's neighbour table). Host: the MAC of `peer`, the node's own end of the pair.
    #[serde(default)]
    pub gateway_mac: Option<MacAddr>,
    /// Host only: the name of the veth pair's other end, which stays in the node's stack (the
    /// AF_XDP runtime creates the pair when it is missing; docs/runtime.md "The node's own
    /// traffic").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The interface's MTU (bytes of IP datagram), when the state knows it; the AF_XDP runtime
    /// reads the kernel's value, which wins. A packet forwarded out of the interface whose IP
    /// length exceeds it is dropped and answered with an ICMP fragmentation-needed / ICMPv6
    /// packet-too-big (docs/runtime.md "Jumbo pod MTUs"). None: no check (replay, tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InterfaceRole {
    Uplink,
    Pod,
    /// nodeplane's end of a veth pair into the node's own stack: the node's traffic to
    /// services, node ports and pods enters here, and frames for the node (replies, and
    /// service traffic to host-network backends) leave here.
    Host,
}

/// A pod (or other workload) attached to this node through a pod interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub mac: MacAddr,
    /// The pod interface (by name) the endpoint sits behind.
    pub interface: String,
    pub identity: Identity,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One prefix → identity mapping of the ipcache. Local endpoints' IPs are added implicitly
/// (as host routes with the endpoint's identity); node IPs map to [`reserved::HOST`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpcacheEntry {
    pub prefix: IpNet,
    pub identity: Identity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ServiceType,
    /// Virtual IP frontends (the ClusterIP, external IPs, load-balancer VIPs).
    #[serde(default)]
    pub frontends: Vec<Frontend>,
    /// NodePort / LoadBalancer: ports opened on every node IP.
    #[serde(default)]
    pub node_ports: Vec<NodePort>,
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub affinity: Option<Affinity>,
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Traffic to the cluster IP frontends (Kubernetes' `internalTrafficPolicy`): `Local` uses
    /// only the backends on this node.
    #[serde(default, skip_serializing_if = "TrafficPolicy::is_cluster")]
    pub internal_traffic_policy: TrafficPolicy,
    /// Traffic to node ports, external IPs and load-balancer VIPs from outside the node
    /// (`externalTrafficPolicy`): `Local` uses only the backends on this node, keeping the
    /// client's address.
    #[serde(default, skip_serializing_if = "TrafficPolicy::is_cluster")]
    pub external_traffic_policy: TrafficPolicy,
    /// LoadBalancer with `external_traffic_policy: Local`: the port on every node IP (and
    /// 0.0.0.0) where an HTTP health check answers 200 while the node has a ready local backend,
    /// 503 otherwise (kube-proxy's `healthCheckNodePort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<u16>,
    /// LoadBalancer only: the client prefixes allowed to reach the VIP frontends (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// Several clusters (docs/multicluster.md): the service is exported to the other clusters
    /// of a mesh, and its backends here are merged with those of every remote cluster that
    /// exports a global service of the same name (etcd mode, through `nodeplane mesh`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub global: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `Cluster` (every backend) or `Local` (the backends on this node), as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

impl TrafficPolicy {
    pub fn is_cluster(&self) -> bool {
        *self == TrafficPolicy::Cluster
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    ExternalIP,
    LoadBalancer,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frontend {
    pub ip: IpAddr,
    pub port: u16,
    #[serde(default)]
    pub protocol: L4Proto,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePort {
    pub port: u16,
    #[serde(default)]
    pub protocol: L4Proto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum L4Proto {
    #[default]
    TCP,
    UDP,
    /// Accepted by the parser so validation can refuse it with a reason (the dataplane does
    /// not translate SCTP).
    SCTP,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    #[default]
    Maglev,
    Random,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Affinity {
    /// Only `ClientIP` exists (as in Kubernetes' `sessionAffinity`).
    #[serde(rename = "type")]
    pub kind: AffinityType,
    /// Seconds a client stays pinned to its backend after its last new connection.
    #[serde(default = "default_affinity_timeout")]
    pub timeout_seconds: u32,
}

fn default_affinity_timeout() -> u32 {
    10800
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AffinityType {
    ClientIP,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u16,
    /// The first spelling of a backend's condition (`active`, `terminating` = draining,
    /// `quarantined`); `quarantined` is nodeplane's own and composes with the conditions below.
    #[serde(default)]
    pub state: BackendState,
    /// Kubernetes' EndpointSlice conditions (KEP-1669). Unset: `ready` is true unless
    /// `terminating`, `serving` equals `ready`, `terminating` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

fn default_weight() -> u16 {
    1
}

/// A backend's EndpointSlice conditions, with the defaults applied and the old `state` mapped:
/// `active` = ready and serving; `terminating` (draining) = terminating, neither ready nor
/// serving (existing flows only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conditions {
    /// Takes new flows.
    pub ready: bool,
    /// Could take new flows (a terminating endpoint still serving); used for new flows only
    /// when no endpoint of the service is ready (KEP-1669 fallback).
    pub serving: bool,
    pub terminating: bool,
}

impl Backend {
    /// The backend's conditions (see [`Conditions`]).
    pub fn conditions(&self) -> Conditions {
        if self.state == BackendState::Terminating {
            return Conditions {
                ready: false,
                serving: false,
                terminating: true,
            };
        }
        let terminating = self.terminating.unwrap_or(false);
        let ready = self.ready.unwrap_or(!terminating);
        Conditions {
            ready,
            serving: self.serving.unwrap_or(ready),
            terminating,
        }
    }

    /// Any of the EndpointSlice condition keys is written.
    pub fn has_conditions(&self) -> bool {
        self.ready.is_some() || self.serving.is_some() || self.terminating.is_some()
    }

    /// Takes new flows: ready and not quarantined.
    pub fn is_ready(&self) -> bool {
        self.state != BackendState::Quarantined && self.conditions().ready
    }

    /// Takes new flows when no backend is ready: serving, terminating, not quarantined.
    pub fn is_serving_terminating(&self) -> bool {
        let c = self.conditions();
        self.state != BackendState::Quarantined && !c.ready && c.serving && c.terminating
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendState {
    /// Receives new and existing flows (subject to the conditions).
    #[default]
    Active,
    /// Draining: keeps its existing flows, receives no new ones (the conditions
    /// `terminating: true, serving: false`; not to be combined with them).
    Terminating,
    /// Failed health checks: receives nothing, existing flows end.
    Quarantined,
}

/// The policy of one local endpoint. An endpoint with at least one rule in a direction is
/// default-deny in that direction; deny rules win over allow rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The local endpoint (by name) this policy applies to.
    pub endpoint: String,
    #[serde(default)]
    pub ingress: Vec<Rule>,
    #[serde(default)]
    pub egress: Vec<Rule>,
}

/// One rule: it matches when the remote peer matches (any listed identity or CIDR; both lists
/// empty = any peer), the protocol matches and the destination port is in one of the ranges
/// (no ranges = any port).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub action: RuleAction,
    #[serde(default)]
    pub identities: Vec<Identity>,
    #[serde(default)]
    pub cidrs: Vec<IpNet>,
    #[serde(default)]
    pub protocol: RuleProto,
    #[serde(default)]
    pub ports: Vec<PortRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleAction {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RuleProto {
    #[default]
    #[serde(rename = "any")]
    Any,
    TCP,
    UDP,
    ICMP,
}

/// `port` alone, or `port`..=`end_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    pub port: u16,
    #[serde(default)]
    pub end_port: Option<u16>,
}

impl PortRange {
    pub fn end(&self) -> u16 {
        self.end_port.unwrap_or(self.port)
    }
    pub fn contains(&self, port: u16) -> bool {
        port >= self.port && port <= self.end()
    }
}

/// Conntrack sizing and timeouts (seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackSettings {
    /// Entries per worker table. When full: expired entries are reclaimed, then the oldest
    /// closing TCP entry is evicted, else the new flow is dropped (`ct-full`).
    pub max_entries: u32,
    /// Fragments of one datagram that arrive before its first fragment are held (at most this
    /// many in total per worker) until the first fragment arrives or `frag_timeout` passes.
    pub max_held_fragments: u32,
    /// Datagrams whose first fragment was seen and whose later fragments may still come.
    pub max_fragment_ids: u32,
    pub timeouts: Timeouts,
}

impl Default for ConntrackSettings {
    fn default() -> Self {
        ConntrackSettings {
            max_entries: 262_144,
            max_held_fragments: 256,
            max_fragment_ids: 8192,
            timeouts: Timeouts::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    pub tcp_fin_wait: u32,
    pub tcp_close: u32,
    pub tcp_time_wait: u32,
    pub udp: u32,
    pub icmp: u32,
    pub fragment: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        // Linux nf_conntrack defaults, except established (6 h instead of 5 days: a dead
        // peer should not hold a slot for days on a node with bounded tables).
        Timeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 21_600,
            tcp_fin_wait: 120,
            tcp_close: 10,
            tcp_time_wait: 120,
            udp: 60,
            icmp: 30,
            fragment: 30,
        }
    }
}

/// An Ethernet MAC address, written `02:00:00:00:00:01` in YAML.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts
                .next()
                .ok_or_else(|| format!("MAC address {s:?} has fewer than 6 octets"))?;
            if p.len() != 2 {
                return Err(format!(
                    "MAC address {s:?}: octet {p:?} is not two hex digits"
                ));
            }
            *b = u8::from_str_radix(p, 16)
                .map_err(|_| format!("MAC address {s:?}: octet {p:?} is not hex"))?;
        }
        if parts.next().is_some() {
            return Err(format!("MAC address {s:?} has more than 6 octets"));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor (rather than `String::deserialize` then parse) so the error is raised while
        // the YAML parser still sits on the scalar: the message then carries the field path
        // and the scalar's line and column.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MacAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a MAC address like 02:00:00:00:00:01")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<MacAddr, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}
