//! Whole-state validation: every problem is reported with the file it came from (when the state
//! was loaded from files), the field path and the reason. Validation never stops at the first
//! problem: an operator fixes a bad directory in one round, not one error per run.
//!
//! Field paths name list items by their key where they have one, because that is what an
//! operator can search for in a directory of files: `services[web].backends[2].port`,
//! `policies[web-1].ingress[4].ports[0].end_port`, `ipcache[10.0.0.0/8].identity`. An item
//! whose name is empty or unusable as a key is named by its index in its own file instead
//! (`services[3]`).
//!
//! Cross-item problems (a duplicate name, two services claiming one frontend) are reported on
//! the later item, and the reason names the earlier one and its file.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::model::{
    reserved, Algorithm, BackendState, ConntrackSettings, Identity, InterfaceRole, L4Proto,
    MacAddr, Rule, RuleProto, Service, ServiceType, State, TrafficPolicy,
};

/// The smallest interface MTU a state may name: IPv6's minimum link MTU.
const MIN_MTU: u16 = 1280;

/// Smallest accepted `conntrack.max_entries`.
pub const MIN_CT_ENTRIES: u32 = 1024;
/// Largest accepted `conntrack.max_entries` (16 Mi entries per worker table).
pub const MAX_CT_ENTRIES: u32 = 16 * 1024 * 1024;
/// Smallest accepted `node.maglev_table_size`.
pub const MIN_MAGLEV_TABLE_SIZE: u32 = 251;
/// Largest accepted `node.maglev_table_size`.
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 131_071;
/// A maglev table must have more than this many slots per active backend (Cilium's rule:
/// it keeps the load imbalance between backends under about 1 %).
pub const MAGLEV_SLOTS_PER_BACKEND: u32 = 100;
/// Largest accepted session affinity timeout (Kubernetes' limit).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;
/// Identity bits that carry the cluster-local identity; the high 8 bits are the cluster id.
pub const LOCAL_IDENTITY_MASK: Identity = 0x00FF_FFFF;

/// One problem found in a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the offending item came from; `None` for states not loaded from files and for
    /// problems of the state as a whole (e.g. "no uplink interface").
    pub file: Option<PathBuf>,
    /// Field path, e.g. `services[web].backends[2].port`.
    pub field: String,
    /// What is wrong, in words.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every problem of a rejected state. `Display` prints a header line, then one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// Never empty.
    pub problems: Vec<Problem>,
}

impl ValidationError {
    /// Is there a problem at exactly this field path whose reason contains `reason_part`?
    /// (For tests and tools that react to one kind of problem.)
    pub fn has(&self, field: &str, reason_part: &str) -> bool {
        self.problems
            .iter()
            .any(|p| p.field == field && p.reason.contains(reason_part))
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid state: {n} problem{}",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// Checks a whole state; returns every problem found.
pub fn validate(state: &State) -> Result<(), ValidationError> {
    validate_with_origins(state, None)
}

/// The top-level lists of a [`State`] whose items are tracked to their file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Interfaces = 0,
    Endpoints = 1,
    Ipcache = 2,
    Services = 3,
    Policies = 4,
    External = 5,
}

impl Section {
    fn key(self) -> &'static str {
        match self {
            Section::Interfaces => "interfaces",
            Section::Endpoints => "endpoints",
            Section::Ipcache => "ipcache",
            Section::Services => "services",
            Section::Policies => "policies",
            Section::External => "external_workloads",
        }
    }
}

/// Where each part of a merged state came from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origins {
    pub files: Vec<PathBuf>,
    /// File index of the file that set `node` / `conntrack`.
    pub node: Option<usize>,
    pub conntrack: Option<usize>,
    /// Per [`Section`]: for each item of the merged list, (file index, index within that file).
    pub items: [Vec<(usize, usize)>; 6],
}

pub(crate) fn validate_with_origins(
    state: &State,
    origins: Option<&Origins>,
) -> Result<(), ValidationError> {
    let mut c = Checker {
        s: state,
        origins,
        problems: Vec::new(),
    };
    c.node();
    c.interfaces();
    c.endpoints();
    c.ipcache();
    c.external_workloads();
    c.services();
    c.policies();
    c.conntrack();
    if c.problems.is_empty() {
        Ok(())
    } else {
        Err(ValidationError {
            problems: c.problems,
        })
    }
}

struct Checker<'a> {
    s: &'a State,
    origins: Option<&'a Origins>,
    problems: Vec<Problem>,
}

/// Local endpoint IP → the first endpoint holding it: one hash lookup per ipcache entry or
/// frontend instead of a scan of every endpoint (100k entries against 65 endpoints took ~20 ms).
fn endpoint_ips(s: &State) -> HashMap<IpAddr, usize> {
    let mut m = HashMap::new();
    for (j, ep) in s.endpoints.iter().enumerate() {
        for ip in &ep.ips {
            m.entry(*ip).or_insert(j);
        }
    }
    m
}

/// A name usable inside `[...]` of a field path.
fn plain_key(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c == '[' || c == ']' || c.is_whitespace() || c.is_control())
}

fn canonical(net: &IpNet) -> bool {
    net.trunc() == *net
}

/// Why an address cannot be a node, endpoint, frontend or backend address (`None`: it can).
fn unusable(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("is the unspecified address")
    } else if ip.is_multicast() {
        Some("is a multicast address")
    } else if ip.is_loopback() {
        Some("is a loopback address")
    } else if ip == IpAddr::from([255, 255, 255, 255]) {
        Some("is the broadcast address")
    } else {
        None
    }
}

fn mac_problem(mac: MacAddr) -> Option<&'static str> {
    if mac.0 == [0; 6] {
        Some("must not be all zeros")
    } else if mac.0[0] & 1 != 0 {
        Some("must be a unicast MAC (the low bit of the first octet is the multicast bit)")
    } else {
        None
    }
}

/// Endpoint and ipcache identities: a cluster-scoped user identity.
fn user_identity_problem(id: Identity) -> Option<String> {
    let local = id & LOCAL_IDENTITY_MASK;
    if local < reserved::FIRST_USER {
        Some(format!(
            "identity {id} is reserved: its low 24 bits ({local}) must be >= {} (1 host and 2 \
             world are assigned implicitly)",
            reserved::FIRST_USER
        ))
    } else {
        None
    }
}

/// Policy peers: a user identity or one of the reserved ones a rule may name.
fn rule_identity_problem(id: Identity) -> Option<String> {
    if id == reserved::HOST || id == reserved::WORLD {
        None
    } else if id & LOCAL_IDENTITY_MASK < reserved::FIRST_USER {
        Some(format!(
            "identity {id} is reserved and never assigned: use 1 (host), 2 (world) or a user \
             identity (low 24 bits >= {})",
            reserved::FIRST_USER
        ))
    } else {
        None
    }
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

fn proto_name(p: L4Proto) -> &'static str {
    match p {
        L4Proto::TCP => "TCP",
        L4Proto::UDP => "UDP",
        L4Proto::SCTP => "SCTP",
    }
}

/// Why SCTP frontends and node ports are refused (issue 14).
const SCTP_UNSUPPORTED: &str = "SCTP is not supported: the dataplane parses, tracks and \
     translates only TCP and UDP; SCTP needs association tracking across several addresses \
     (multi-homing) and a CRC32c checksum recomputed on every rewrite. Serve SCTP services with a \
     kernel proxy on the nodes that need them";

fn addr(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

fn sock(ip: IpAddr, port: u16, proto: L4Proto) -> String {
    format!("{}/{}", addr(ip, port), proto_name(proto))
}

impl Checker<'_> {
    fn origin(&self, sec: Section, idx: usize) -> Option<(usize, usize)> {
        self.origins
            .and_then(|o| o.items[sec as usize].get(idx).copied())
    }

    fn file_of(&self, sec: Section, idx: usize) -> Option<&Path> {
        let (f, _) = self.origin(sec, idx)?;
        self.origins.map(|o| o.files[f].as_path())
    }

    fn item_name(&self, sec: Section, idx: usize) -> String {
        let s = self.s;
        match sec {
            Section::Interfaces => s.interfaces[idx].name.clone(),
            Section::Endpoints => s.endpoints[idx].name.clone(),
            Section::Services => s.services[idx].name.clone(),
            Section::Policies => s.policies[idx].endpoint.clone(),
            Section::Ipcache => s.ipcache[idx].prefix.to_string(),
            Section::External => s.external_workloads[idx].name.clone(),
        }
    }

    /// `services[web]`, or `services[3]` (index in its own file) when the name is unusable.
    fn item(&self, sec: Section, idx: usize) -> String {
        let name = self.item_name(sec, idx);
        if plain_key(&name) {
            format!("{}[{name}]", sec.key())
        } else {
            let local = self.origin(sec, idx).map_or(idx, |(_, i)| i);
            format!("{}[{local}]", sec.key())
        }
    }

    /// How a reason refers to another item: `services[web]`, plus its file if that differs
    /// from the file of the item the problem is reported on.
    fn other(&self, sec: Section, idx: usize, from: (Section, usize)) -> String {
        let item = self.item(sec, idx);
        match self.file_of(sec, idx) {
            Some(f) if Some(f) != self.file_of(from.0, from.1) => {
                format!("{item} in {}", f.display())
            }
            _ => item,
        }
    }

    fn at(&mut self, sec: Section, idx: usize, rest: &str, reason: impl Into<String>) {
        let field = format!("{}{rest}", self.item(sec, idx));
        self.problems.push(Problem {
            file: self.file_of(sec, idx).map(Path::to_path_buf),
            field,
            reason: reason.into(),
        });
    }

    fn at_node(&mut self, rest: &str, reason: impl Into<String>) {
        let file = self
            .origins
            .and_then(|o| o.node.map(|f| o.files[f].clone()));
        self.problems.push(Problem {
            file,
            field: format!("node{rest}"),
            reason: reason.into(),
        });
    }

    fn at_ct(&mut self, rest: &str, reason: impl Into<String>) {
        let file = self
            .origins
            .and_then(|o| o.conntrack.map(|f| o.files[f].clone()));
        self.problems.push(Problem {
            file,
            field: format!("conntrack{rest}"),
            reason: reason.into(),
        });
    }

    fn global(&mut self, field: &str, reason: impl Into<String>) {
        self.problems.push(Problem {
            file: None,
            field: field.to_string(),
            reason: reason.into(),
        });
    }

    /// Traffic policies, the health check node port and source ranges of service `i`.
    fn traffic_policies(&mut self, i: usize, svc: &Service) {
        let kind = svc.kind;
        let lb = kind == ServiceType::LoadBalancer;
        if svc.external_traffic_policy == TrafficPolicy::Local && kind == ServiceType::ClusterIP {
            self.at(
                Section::Services,
                i,
                ".external_traffic_policy",
                "a ClusterIP service has no external traffic (node ports, external IPs, \
                 load-balancer VIPs); use internal_traffic_policy",
            );
        }
        if let Some(p) = svc.health_check_node_port {
            if !lb || svc.external_traffic_policy != TrafficPolicy::Local {
                self.at(
                    Section::Services,
                    i,
                    ".health_check_node_port",
                    "only a LoadBalancer service with external_traffic_policy: Local has a \
                     health check node port (as in Kubernetes)",
                );
            }
            if p == 0 {
                self.at(
                    Section::Services,
                    i,
                    ".health_check_node_port",
                    "port 0 is not a valid port",
                );
            }
            for (j, other) in self.s.services.iter().enumerate() {
                let clash = other
                    .node_ports
                    .iter()
                    .any(|np| np.port == p && np.protocol == L4Proto::TCP)
                    || (j < i && other.health_check_node_port == Some(p));
                if clash {
                    let o = self.other(Section::Services, j, (Section::Services, i));
                    self.at(
                        Section::Services,
                        i,
                        ".health_check_node_port",
                        format!("port {p}/TCP is already a node port or health check port of {o}"),
                    );
                }
            }
        }
        if !svc.load_balancer_source_ranges.is_empty() && !lb {
            self.at(
                Section::Services,
                i,
                ".load_balancer_source_ranges",
                format!("only a LoadBalancer service has source ranges (this one is {kind:?})"),
            );
        }
        for (k, net) in svc.load_balancer_source_ranges.iter().enumerate() {
            if !canonical(net) {
                self.at(
                    Section::Services,
                    i,
                    &format!(".load_balancer_source_ranges[{k}]"),
                    format!("{net} has host bits set (did you mean {}?)", net.trunc()),
                );
            }
        }
    }

    fn in_pod_cidr(&self, ip: IpAddr) -> bool {
        self.s.node.pod_cidrs.iter().any(|n| n.contains(&ip))
    }

    /// An uplink's or a host interface's `gateway_mac`: a usable unicast MAC, not its own.
    fn gateway_mac(&mut self, i: usize, gw: MacAddr, own: MacAddr) {
        if let Some(why) = mac_problem(gw) {
            self.at(
                Section::Interfaces,
                i,
                ".gateway_mac",
                format!("{gw} {why}"),
            );
        } else if gw == own {
            self.at(
                Section::Interfaces,
                i,
                ".gateway_mac",
                format!("{gw} is the interface's own MAC"),
            );
        }
    }

    fn is_node_ip(&self, ip: IpAddr) -> bool {
        self.s.node.node_ips.contains(&ip)
    }

    fn node(&mut self) {
        let n = &self.s.node;
        if n.name.len() > 253 || n.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.at_node(
                ".name",
                "must be at most 253 characters without whitespace (a Kubernetes node name)",
            );
        }
        for (i, net) in n.pod_cidrs.iter().enumerate() {
            if !canonical(net) {
                self.at_node(
                    &format!(".pod_cidrs[{i}]"),
                    format!("{net} has host bits set (did you mean {}?)", net.trunc()),
                );
            }
            for (j, other) in n.pod_cidrs[..i].iter().enumerate() {
                if other.contains(&net.network()) || net.contains(&other.network()) {
                    self.at_node(
                        &format!(".pod_cidrs[{i}]"),
                        format!("{net} overlaps node.pod_cidrs[{j}] ({other})"),
                    );
                }
            }
        }
        for (i, ip) in n.node_ips.iter().enumerate() {
            if let Some(why) = unusable(*ip) {
                self.at_node(&format!(".node_ips[{i}]"), format!("{ip} {why}"));
            }
            if let Some(j) = n.node_ips[..i].iter().position(|o| o == ip) {
                self.at_node(
                    &format!(".node_ips[{i}]"),
                    format!("{ip} is listed twice (also node.node_ips[{j}])"),
                );
            }
        }
        let m = n.maglev_table_size;
        if !(MIN_MAGLEV_TABLE_SIZE..=MAX_MAGLEV_TABLE_SIZE).contains(&m) {
            self.at_node(
                ".maglev_table_size",
                format!("{m} is outside [{MIN_MAGLEV_TABLE_SIZE}, {MAX_MAGLEV_TABLE_SIZE}]"),
            );
        } else if !is_prime(m) {
            self.at_node(
                ".maglev_table_size",
                format!("{m} is not a prime (Maglev needs a prime table size, e.g. 16381)"),
            );
        }
        let [lo, hi] = n.snat_port_range;
        if lo < 1024 || lo > hi {
            self.at_node(
                ".snat_port_range",
                format!(
                    "[{lo}, {hi}] is not a range of ports within [1024, 65535] (first <= last)"
                ),
            );
        }
        for (i, svc) in self.s.services.iter().enumerate() {
            for (k, np) in svc.node_ports.iter().enumerate() {
                if (lo..=hi).contains(&np.port) {
                    self.at(
                        Section::Services,
                        i,
                        &format!(".node_ports[{k}]"),
                        format!(
                            "node port {} is inside node.snat_port_range [{lo}, {hi}] (SNAT \
                             allocates source ports there)",
                            np.port
                        ),
                    );
                }
            }
        }
    }

    fn interfaces(&mut self) {
        let s = self.s;
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut first_uplink: Option<usize> = None;
        let mut first_host: Option<usize> = None;
        for (i, itf) in s.interfaces.iter().enumerate() {
            let n = itf.name.as_str();
            if n.is_empty()
                || n.len() > 15
                || n == "."
                || n == ".."
                || n.chars()
                    .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
            {
                self.at(
                    Section::Interfaces,
                    i,
                    ".name",
                    format!(
                        "{n:?} is not a Linux interface name (1-15 bytes, no '/', ':' or \
                         whitespace)"
                    ),
                );
            }
            if let Some(&j) = names.get(n) {
                let other = self.other(Section::Interfaces, j, (Section::Interfaces, i));
                self.at(
                    Section::Interfaces,
                    i,
                    ".name",
                    format!("duplicate interface name {n:?} (also {other})"),
                );
            } else {
                names.insert(n, i);
            }
            if let Some(why) = mac_problem(itf.mac) {
                self.at(Section::Interfaces, i, ".mac", format!("{} {why}", itf.mac));
            }
            match itf.role {
                InterfaceRole::Uplink => {
                    if let Some(j) = first_uplink {
                        let other = self.other(Section::Interfaces, j, (Section::Interfaces, i));
                        self.at(
                            Section::Interfaces,
                            i,
                            ".role",
                            format!("a second uplink interface (the uplink is {other}); exactly one interface may have role uplink"),
                        );
                    } else {
                        first_uplink = Some(i);
                    }
                    if let Some(gw) = itf.gateway_mac {
                        self.gateway_mac(i, gw, itf.mac);
                    }
                }
                InterfaceRole::Pod => {
                    if itf.gateway_mac.is_some() {
                        self.at(
                            Section::Interfaces,
                            i,
                            ".gateway_mac",
                            "only an uplink interface has a gateway MAC (and a host \
                             interface, its peer's; a pod interface delivers to its \
                             endpoints' MACs)",
                        );
                    }
                }
                InterfaceRole::Host => {
                    if let Some(j) = first_host {
                        let other = self.other(Section::Interfaces, j, (Section::Interfaces, i));
                        self.at(
                            Section::Interfaces,
                            i,
                            ".role",
                            format!("a second host interface (the host interface is {other}); at most one interface may have role host"),
                        );
                    } else {
                        first_host = Some(i);
                    }
                    match itf.gateway_mac {
                        None => self.at(
                            Section::Interfaces,
                            i,
                            ".gateway_mac",
                            "a host interface needs gateway_mac: the MAC of its peer, the \
                             node's end of the pair",
                        ),
                        Some(gw) => self.gateway_mac(i, gw, itf.mac),
                    }
                }
            }
            if let Some(mtu) = itf.mtu {
                if mtu < MIN_MTU {
                    self.at(
                        Section::Interfaces,
                        i,
                        ".mtu",
                        format!("{mtu} is below {MIN_MTU}, the IPv6 minimum link MTU (RFC 8200)"),
                    );
                }
            }
            match (&itf.peer, itf.role) {
                (None, InterfaceRole::Host) => self.at(
                    Section::Interfaces,
                    i,
                    ".peer",
                    "a host interface needs peer: the name of the pair's end in the node's stack",
                ),
                (Some(_), InterfaceRole::Uplink | InterfaceRole::Pod) => self.at(
                    Section::Interfaces,
                    i,
                    ".peer",
                    "only a host interface has a peer",
                ),
                (Some(p), InterfaceRole::Host) => {
                    if p.is_empty()
                        || p.len() > 15
                        || p == &itf.name
                        || p.chars()
                            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
                    {
                        self.at(
                            Section::Interfaces,
                            i,
                            ".peer",
                            format!(
                                "{p:?} is not a Linux interface name other than the interface's \
                                 own (1-15 bytes, no '/', ':' or whitespace)"
                            ),
                        );
                    }
                    if s.interfaces.iter().any(|o| &o.name == p) {
                        self.at(
                            Section::Interfaces,
                            i,
                            ".peer",
                            format!("{p:?} is also a dataplane interface; the peer stays with the kernel"),
                        );
                    }
                }
                (None, _) => {}
            }
        }
        if !s.interfaces.is_empty() && first_uplink.is_none() {
            self.global(
                "interfaces",
                "no interface has role uplink; exactly one is required when interfaces are listed",
            );
        }
    }

    fn endpoints(&mut self) {
        let s = self.s;
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut ips: HashMap<IpAddr, usize> = HashMap::new();
        for (i, ep) in s.endpoints.iter().enumerate() {
            let n = ep.name.as_str();
            if !plain_key(n) || n.len() > 253 {
                self.at(
                    Section::Endpoints,
                    i,
                    ".name",
                    format!(
                        "{n:?} is not a valid name (1-253 characters, no whitespace or brackets)"
                    ),
                );
            }
            if let Some(&j) = names.get(n) {
                let other = self.other(Section::Endpoints, j, (Section::Endpoints, i));
                self.at(
                    Section::Endpoints,
                    i,
                    ".name",
                    format!("duplicate endpoint name {n:?} (also {other})"),
                );
            } else {
                names.insert(n, i);
            }
            if ep.ips.is_empty() {
                self.at(
                    Section::Endpoints,
                    i,
                    ".ips",
                    "an endpoint needs at least one IP",
                );
            }
            for (k, ip) in ep.ips.iter().enumerate() {
                let f = format!(".ips[{k}]");
                if let Some(why) = unusable(*ip) {
                    self.at(Section::Endpoints, i, &f, format!("{ip} {why}"));
                    continue;
                }
                if self.is_node_ip(*ip) {
                    self.at(
                        Section::Endpoints,
                        i,
                        &f,
                        format!(
                            "{ip} is a node IP (node.node_ips); endpoints need their own addresses"
                        ),
                    );
                }
                if !self.in_pod_cidr(*ip) {
                    self.at(
                        Section::Endpoints,
                        i,
                        &f,
                        format!(
                            "{ip} is outside every PodCIDR of the node (node.pod_cidrs); traffic \
                             to it would not be steered to the dataplane"
                        ),
                    );
                }
                match ips.get(ip) {
                    Some(&j) if j == i => {
                        self.at(Section::Endpoints, i, &f, format!("{ip} is listed twice"))
                    }
                    Some(&j) => {
                        let other = self.other(Section::Endpoints, j, (Section::Endpoints, i));
                        self.at(
                            Section::Endpoints,
                            i,
                            &f,
                            format!("{ip} is already an IP of {other}"),
                        );
                    }
                    None => {
                        ips.insert(*ip, i);
                    }
                }
            }
            if let Some(why) = mac_problem(ep.mac) {
                self.at(Section::Endpoints, i, ".mac", format!("{} {why}", ep.mac));
            }
            match s.interfaces.iter().find(|itf| itf.name == ep.interface) {
                None => self.at(
                    Section::Endpoints,
                    i,
                    ".interface",
                    format!("no interface named {:?}", ep.interface),
                ),
                Some(itf) if itf.role != InterfaceRole::Pod => self.at(
                    Section::Endpoints,
                    i,
                    ".interface",
                    format!(
                        "interface {:?} has role {}; endpoints sit behind pod interfaces \
                         (a host-network backend is a service backend on a node IP)",
                        ep.interface,
                        if itf.role == InterfaceRole::Uplink {
                            "uplink"
                        } else {
                            "host"
                        }
                    ),
                ),
                Some(itf) if itf.mac == ep.mac => self.at(
                    Section::Endpoints,
                    i,
                    ".mac",
                    format!(
                        "{} is also the MAC of interface {:?}; the endpoint needs its own",
                        ep.mac, itf.name
                    ),
                ),
                Some(_) => {}
            }
            if let Some(why) = user_identity_problem(ep.identity) {
                self.at(Section::Endpoints, i, ".identity", why);
            }
            for key in ep.labels.keys() {
                if key.is_empty() {
                    self.at(Section::Endpoints, i, ".labels", "a label key is empty");
                }
            }
        }
    }

    fn ipcache(&mut self) {
        let s = self.s;
        let mut seen: HashMap<IpNet, usize> = HashMap::with_capacity(s.ipcache.len());
        let endpoint_ips = endpoint_ips(s);
        for (i, e) in s.ipcache.iter().enumerate() {
            if !canonical(&e.prefix) {
                self.at(
                    Section::Ipcache,
                    i,
                    ".prefix",
                    format!(
                        "{} has host bits set (did you mean {}?)",
                        e.prefix,
                        e.prefix.trunc()
                    ),
                );
            }
            let key = e.prefix.trunc();
            if let Some(&j) = seen.get(&key) {
                let other = self.other(Section::Ipcache, j, (Section::Ipcache, i));
                self.at(
                    Section::Ipcache,
                    i,
                    ".prefix",
                    format!("prefix {key} is listed twice (also {other})"),
                );
            } else {
                seen.insert(key, i);
            }
            if let Some(why) = user_identity_problem(e.identity) {
                self.at(Section::Ipcache, i, ".identity", why);
            }
            if key.prefix_len() == key.max_prefix_len() {
                let ip = key.addr();
                if self.is_node_ip(ip) {
                    self.at(
                        Section::Ipcache,
                        i,
                        ".prefix",
                        format!("{ip} is a node IP, which has identity 1 (host) implicitly"),
                    );
                }
                if let Some(&j) = endpoint_ips.get(&ip) {
                    let other = self.other(Section::Endpoints, j, (Section::Ipcache, i));
                    self.at(
                        Section::Ipcache,
                        i,
                        ".prefix",
                        format!(
                            "{ip} is an IP of local endpoint {other}, which has that endpoint's identity implicitly"
                        ),
                    );
                }
            }
        }
    }

    /// Names unique, at least one IP each, IPs usable and nobody else's (node, local
    /// endpoint, another external workload, an ipcache host entry), a user identity.
    fn external_workloads(&mut self) {
        let s = self.s;
        let sec = Section::External;
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut ips: HashMap<IpAddr, usize> = HashMap::new();
        let endpoint_ips = endpoint_ips(s);
        let host_entries: HashMap<IpAddr, usize> = s
            .ipcache
            .iter()
            .enumerate()
            .filter(|(_, e)| e.prefix.prefix_len() == e.prefix.max_prefix_len())
            .map(|(j, e)| (e.prefix.addr(), j))
            .collect();
        for (i, w) in s.external_workloads.iter().enumerate() {
            let n = w.name.as_str();
            if !plain_key(n) || n.len() > 253 {
                self.at(
                    sec,
                    i,
                    ".name",
                    format!(
                        "{n:?} is not a valid name (1-253 characters, no whitespace or brackets)"
                    ),
                );
            }
            if let Some(&j) = names.get(n) {
                let other = self.other(sec, j, (sec, i));
                self.at(
                    sec,
                    i,
                    ".name",
                    format!("duplicate external workload name {n:?} (also {other})"),
                );
            } else {
                names.insert(n, i);
            }
            if w.ips.is_empty() {
                self.at(sec, i, ".ips", "an external workload needs at least one IP");
            }
            for (k, ip) in w.ips.iter().enumerate() {
                let f = format!(".ips[{k}]");
                if let Some(why) = unusable(*ip) {
                    self.at(sec, i, &f, format!("{ip} {why}"));
                    continue;
                }
                if self.is_node_ip(*ip) {
                    self.at(sec, i, &f, format!("{ip} is a node IP (node.node_ips)"));
                }
                if let Some(&j) = endpoint_ips.get(ip) {
                    let other = self.other(Section::Endpoints, j, (sec, i));
                    self.at(
                        sec,
                        i,
                        &f,
                        format!("{ip} is an IP of local endpoint {other}"),
                    );
                }
                if let Some(&j) = host_entries.get(ip) {
                    let other = self.other(Section::Ipcache, j, (sec, i));
                    self.at(sec, i, &f, format!("{ip} is also ipcache entry {other}"));
                }
                match ips.get(ip) {
                    Some(&j) if j == i => self.at(sec, i, &f, format!("{ip} is listed twice")),
                    Some(&j) => {
                        let other = self.other(sec, j, (sec, i));
                        self.at(sec, i, &f, format!("{ip} is already an IP of {other}"));
                    }
                    None => {
                        ips.insert(*ip, i);
                    }
                }
            }
            if let Some(why) = user_identity_problem(w.identity) {
                self.at(sec, i, ".identity", why);
            }
        }
    }

    fn services(&mut self) {
        let s = self.s;
        let mut names: HashMap<&str, usize> = HashMap::new();
        // (ip, port, proto) → (service, frontend index)
        let mut frontends: HashMap<(IpAddr, u16, L4Proto), (usize, usize)> = HashMap::new();
        // (port, proto) → (service, node_port index)
        let mut node_ports: HashMap<(u16, L4Proto), (usize, usize)> = HashMap::new();
        let endpoint_ips = endpoint_ips(s);
        let me = |i| (Section::Services, i);

        for (i, svc) in s.services.iter().enumerate() {
            let n = svc.name.as_str();
            if !plain_key(n) || n.len() > 253 {
                self.at(
                    Section::Services,
                    i,
                    ".name",
                    format!(
                        "{n:?} is not a valid name (1-253 characters, no whitespace or brackets)"
                    ),
                );
            }
            if let Some(&j) = names.get(n) {
                let other = self.other(Section::Services, j, me(i));
                self.at(
                    Section::Services,
                    i,
                    ".name",
                    format!("duplicate service name {n:?} (also {other})"),
                );
            } else {
                names.insert(n, i);
            }

            // Type-specific shape.
            let kind = svc.kind;
            let needs_frontend = match kind {
                ServiceType::ClusterIP => Some("a ClusterIP service needs at least one frontend (its cluster IP)"),
                ServiceType::ExternalIP => Some("an ExternalIP service needs at least one frontend (its external IP)"),
                ServiceType::LoadBalancer => Some("a LoadBalancer service needs at least one frontend (its VIP); without one, declare it as NodePort"),
                ServiceType::NodePort => None,
            };
            if let Some(why) = needs_frontend {
                if svc.frontends.is_empty() {
                    self.at(Section::Services, i, ".frontends", why);
                }
            }
            let node_ports_allowed =
                matches!(kind, ServiceType::NodePort | ServiceType::LoadBalancer);
            if !node_ports_allowed && !svc.node_ports.is_empty() {
                self.at(
                    Section::Services,
                    i,
                    ".node_ports",
                    format!("only NodePort and LoadBalancer services open node ports (this one is {kind:?})"),
                );
            }
            if kind == ServiceType::NodePort && svc.node_ports.is_empty() {
                self.at(
                    Section::Services,
                    i,
                    ".node_ports",
                    "a NodePort service needs at least one node port",
                );
            }
            if node_ports_allowed && !svc.node_ports.is_empty() && s.node.node_ips.is_empty() {
                self.at(
                    Section::Services,
                    i,
                    ".node_ports",
                    "node ports listen on the node IPs, but node.node_ips is empty",
                );
            }

            for (k, fe) in svc.frontends.iter().enumerate() {
                let f = format!(".frontends[{k}]");
                if let Some(why) = unusable(fe.ip) {
                    self.at(
                        Section::Services,
                        i,
                        &format!("{f}.ip"),
                        format!("{} {why}", fe.ip),
                    );
                }
                if fe.port == 0 {
                    self.at(
                        Section::Services,
                        i,
                        &format!("{f}.port"),
                        "port 0 is not a valid port",
                    );
                }
                if fe.protocol == L4Proto::SCTP {
                    self.at(
                        Section::Services,
                        i,
                        &format!("{f}.protocol"),
                        SCTP_UNSUPPORTED,
                    );
                }
                if kind == ServiceType::ClusterIP && self.is_node_ip(fe.ip) {
                    self.at(
                        Section::Services,
                        i,
                        &format!("{f}.ip"),
                        format!(
                            "{} is a node IP; a cluster IP must be a virtual address",
                            fe.ip
                        ),
                    );
                }
                if self.in_pod_cidr(fe.ip) {
                    self.at(
                        Section::Services,
                        i,
                        &format!("{f}.ip"),
                        format!(
                            "{} is inside the node's PodCIDR; service VIPs need their own range",
                            fe.ip
                        ),
                    );
                }
                if let Some(&j) = endpoint_ips.get(&fe.ip) {
                    let other = self.other(Section::Endpoints, j, me(i));
                    self.at(
                        Section::Services,
                        i,
                        &format!("{f}.ip"),
                        format!("{} is an IP of endpoint {other}", fe.ip),
                    );
                }
                let key = (fe.ip, fe.port, fe.protocol);
                match frontends.get(&key) {
                    Some(&(j, l)) if j == i => self.at(
                        Section::Services,
                        i,
                        &f,
                        format!(
                            "{} is listed twice (also frontends[{l}])",
                            sock(fe.ip, fe.port, fe.protocol)
                        ),
                    ),
                    Some(&(j, _)) => {
                        let other = self.other(Section::Services, j, me(i));
                        self.at(
                            Section::Services,
                            i,
                            &f,
                            format!(
                                "{} is already a frontend of {other}",
                                sock(fe.ip, fe.port, fe.protocol)
                            ),
                        );
                    }
                    None => {
                        frontends.insert(key, (i, k));
                    }
                }
            }

            for (k, np) in svc.node_ports.iter().enumerate() {
                let f = format!(".node_ports[{k}]");
                if np.protocol == L4Proto::SCTP {
                    self.at(
                        Section::Services,
                        i,
                        &format!("{f}.protocol"),
                        SCTP_UNSUPPORTED,
                    );
                }
                if np.port == 0 {
                    self.at(
                        Section::Services,
                        i,
                        &format!("{f}.port"),
                        "port 0 is not a valid port",
                    );
                }
                let key = (np.port, np.protocol);
                let what = format!("node port {}/{}", np.port, proto_name(np.protocol));
                match node_ports.get(&key) {
                    Some(&(j, l)) if j == i => self.at(
                        Section::Services,
                        i,
                        &f,
                        format!("{what} is listed twice (also node_ports[{l}])"),
                    ),
                    Some(&(j, _)) => {
                        let other = self.other(Section::Services, j, me(i));
                        self.at(
                            Section::Services,
                            i,
                            &f,
                            format!("{what} is already opened by {other}"),
                        );
                    }
                    None => {
                        node_ports.insert(key, (i, k));
                    }
                }
            }

            if let Some(aff) = &svc.affinity {
                let t = aff.timeout_seconds;
                if t == 0 || t > MAX_AFFINITY_TIMEOUT {
                    self.at(
                        Section::Services,
                        i,
                        ".affinity.timeout_seconds",
                        format!("{t} is outside [1, {MAX_AFFINITY_TIMEOUT}] seconds"),
                    );
                }
            }

            let mut backends: HashMap<(IpAddr, u16), usize> = HashMap::new();
            for (k, be) in svc.backends.iter().enumerate() {
                let f = format!(".backends[{k}]");
                if let Some(why) = unusable(be.ip) {
                    self.at(
                        Section::Services,
                        i,
                        &format!("{f}.ip"),
                        format!("{} {why}", be.ip),
                    );
                }
                if be.port == 0 {
                    self.at(
                        Section::Services,
                        i,
                        &format!("{f}.port"),
                        "port 0 is not a valid port",
                    );
                }
                if be.weight == 0 {
                    self.at(
                        Section::Services,
                        i,
                        &format!("{f}.weight"),
                        "weight must be >= 1 (to take a backend out of rotation, set state: terminating)",
                    );
                }
                if be.state == BackendState::Terminating && be.has_conditions() {
                    self.at(
                        Section::Services,
                        i,
                        &format!("{f}.state"),
                        "state: terminating is the old spelling of the conditions terminating: true, \
                         serving: false; write one or the other, not both",
                    );
                }
                if be.ready == Some(true) && be.terminating == Some(true) {
                    self.at(
                        Section::Services,
                        i,
                        &format!("{f}.ready"),
                        "a terminating backend is never ready (EndpointSlice conditions); \
                         write serving: true to let it take new flows while no backend is ready",
                    );
                }
                if svc.frontends.iter().any(|fe| fe.ip == be.ip) {
                    self.at(
                        Section::Services,
                        i,
                        &format!("{f}.ip"),
                        format!("{} is a frontend of this same service", be.ip),
                    );
                }
                if let Some(&l) = backends.get(&(be.ip, be.port)) {
                    self.at(
                        Section::Services,
                        i,
                        &f,
                        format!(
                            "backend {} is listed twice (also backends[{l}])",
                            addr(be.ip, be.port)
                        ),
                    );
                } else {
                    backends.insert((be.ip, be.port), k);
                }
            }

            self.traffic_policies(i, svc);

            if svc.algorithm == Algorithm::Maglev {
                // A Maglev table holds the ready backends, or the serving terminating ones
                // when none is ready.
                let ready = svc.backends.iter().filter(|b| b.is_ready()).count() as u64;
                let fallback = svc
                    .backends
                    .iter()
                    .filter(|b| b.is_serving_terminating())
                    .count() as u64;
                let active = ready.max(fallback);
                let m = u64::from(s.node.maglev_table_size);
                if active * u64::from(MAGLEV_SLOTS_PER_BACKEND) >= m {
                    self.at(
                        Section::Services,
                        i,
                        ".backends",
                        format!(
                            "{active} active backends need node.maglev_table_size > {} \
                             ({MAGLEV_SLOTS_PER_BACKEND} slots per backend), it is {m}",
                            active * u64::from(MAGLEV_SLOTS_PER_BACKEND)
                        ),
                    );
                }
            }
        }

        // An explicit frontend on a node IP must not take a port that a node port opens there.
        for (i, svc) in s.services.iter().enumerate() {
            for (k, fe) in svc.frontends.iter().enumerate() {
                if !self.is_node_ip(fe.ip) {
                    continue;
                }
                if let Some(&(j, _)) = node_ports.get(&(fe.port, fe.protocol)) {
                    let other = self.other(Section::Services, j, me(i));
                    self.at(
                        Section::Services,
                        i,
                        &format!(".frontends[{k}]"),
                        format!(
                            "{} collides with node port {}/{} of {other}, which listens on every node IP",
                            sock(fe.ip, fe.port, fe.protocol),
                            fe.port,
                            proto_name(fe.protocol)
                        ),
                    );
                }
            }
        }
    }

    fn policies(&mut self) {
        let s = self.s;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let endpoints: HashSet<&str> = s.endpoints.iter().map(|e| e.name.as_str()).collect();
        for (i, pol) in s.policies.iter().enumerate() {
            let n = pol.endpoint.as_str();
            if !endpoints.contains(n) {
                self.at(
                    Section::Policies,
                    i,
                    ".endpoint",
                    format!("no endpoint named {n:?}"),
                );
            }
            if let Some(&j) = seen.get(n) {
                let other = self.other(Section::Policies, j, (Section::Policies, i));
                self.at(
                    Section::Policies,
                    i,
                    ".endpoint",
                    format!("endpoint {n:?} already has a policy ({other}); merge the rules into one policy"),
                );
            } else {
                seen.insert(n, i);
            }
            for (k, r) in pol.ingress.iter().enumerate() {
                self.rule(i, &format!(".ingress[{k}]"), r);
            }
            for (k, r) in pol.egress.iter().enumerate() {
                self.rule(i, &format!(".egress[{k}]"), r);
            }
        }
    }

    fn rule(&mut self, i: usize, at: &str, r: &Rule) {
        for (k, id) in r.identities.iter().enumerate() {
            if let Some(why) = rule_identity_problem(*id) {
                self.at(Section::Policies, i, &format!("{at}.identities[{k}]"), why);
            }
        }
        for (k, net) in r.cidrs.iter().enumerate() {
            if !canonical(net) {
                self.at(
                    Section::Policies,
                    i,
                    &format!("{at}.cidrs[{k}]"),
                    format!("{net} has host bits set (did you mean {}?)", net.trunc()),
                );
            }
        }
        if !r.ports.is_empty() && !matches!(r.protocol, RuleProto::TCP | RuleProto::UDP) {
            let p = match r.protocol {
                RuleProto::Any => "any",
                _ => "ICMP",
            };
            self.at(
                Section::Policies,
                i,
                &format!("{at}.ports"),
                format!("ports need protocol TCP or UDP (this rule's protocol is {p})"),
            );
        }
        for (k, pr) in r.ports.iter().enumerate() {
            if pr.port == 0 {
                self.at(
                    Section::Policies,
                    i,
                    &format!("{at}.ports[{k}].port"),
                    "port 0 is not a valid port (omit ports to match every port)",
                );
            }
            if let Some(end) = pr.end_port {
                if end < pr.port {
                    self.at(
                        Section::Policies,
                        i,
                        &format!("{at}.ports[{k}].end_port"),
                        format!("end_port {end} is below port {}", pr.port),
                    );
                }
            }
        }
    }

    fn conntrack(&mut self) {
        let ct: &ConntrackSettings = &self.s.conntrack;
        if !(MIN_CT_ENTRIES..=MAX_CT_ENTRIES).contains(&ct.max_entries) {
            self.at_ct(
                ".max_entries",
                format!(
                    "{} is outside [{MIN_CT_ENTRIES}, {MAX_CT_ENTRIES}]",
                    ct.max_entries
                ),
            );
        }
        if ct.max_held_fragments == 0 {
            self.at_ct(".max_held_fragments", "must be > 0");
        }
        if ct.max_fragment_ids == 0 {
            self.at_ct(".max_fragment_ids", "must be > 0");
        }
        let t = &ct.timeouts;
        let all = [
            ("tcp_syn_sent", t.tcp_syn_sent),
            ("tcp_syn_recv", t.tcp_syn_recv),
            ("tcp_established", t.tcp_established),
            ("tcp_fin_wait", t.tcp_fin_wait),
            ("tcp_close", t.tcp_close),
            ("tcp_time_wait", t.tcp_time_wait),
            ("udp", t.udp),
            ("icmp", t.icmp),
            ("fragment", t.fragment),
        ];
        for (name, v) in all {
            if v == 0 {
                self.at_ct(
                    &format!(".timeouts.{name}"),
                    "a timeout must be > 0 seconds",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        let ps: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(ps, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(16381));
        assert!(is_prime(131_071));
        assert!(is_prime(251));
        assert!(!is_prime(16383));
        assert!(!is_prime(65536));
    }

    #[test]
    fn identities() {
        assert!(user_identity_problem(256).is_none());
        assert!(user_identity_problem(255).is_some());
        assert!(user_identity_problem(2).is_some());
        assert!(user_identity_problem((7 << 24) | 300).is_none());
        assert!(user_identity_problem((7 << 24) | 2).is_some());
        assert!(user_identity_problem(u32::MAX).is_none());
        assert!(rule_identity_problem(1).is_none());
        assert!(rule_identity_problem(2).is_none());
        assert!(rule_identity_problem(0).is_some());
        assert!(rule_identity_problem(3).is_some());
        assert!(rule_identity_problem(1001).is_none());
    }

    #[test]
    fn keys() {
        assert!(plain_key("web-1"));
        assert!(plain_key("default/web"));
        assert!(!plain_key(""));
        assert!(!plain_key("a b"));
        assert!(!plain_key("a[0]"));
    }

    #[test]
    fn display_lists_every_problem() {
        let e = ValidationError {
            problems: vec![
                Problem {
                    file: Some("a.yaml".into()),
                    field: "services[web].backends[0].port".into(),
                    reason: "port 0 is not a valid port".into(),
                },
                Problem {
                    file: None,
                    field: "interfaces".into(),
                    reason: "no uplink".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "invalid state: 2 problems\n  a.yaml: services[web].backends[0].port: port 0 is \
             not a valid port\n  interfaces: no uplink"
        );
    }
}
