//! The immutable lookup tables compiled from a validated [`State`]. Workers read them through an
//! `Arc<Tables>` that the control thread swaps between bursts; nothing here changes after
//! [`Tables::build`], so readers need no lock.

use std::sync::Arc;
use std::time::Instant;

use std::collections::HashSet;
use std::net::IpAddr;

use hashbrown::HashMap;
use nodeplane_state::{
    reserved, Algorithm, BackendState, Identity, InterfaceRole, L4Proto, MacAddr, PolicyMode,
    ServiceType, State, TrafficPolicy,
};

use crate::flow::{fmt_socket, Addr, PROTO_TCP, PROTO_UDP};
use crate::lpm::Lpm;
use crate::maglev;
use crate::policy::DirPolicy;

pub type IfIndex = u16;

#[derive(Debug, Clone)]
pub struct Iface {
    pub name: String,
    pub role: InterfaceRole,
    pub mac: [u8; 6],
    pub gateway_mac: Option<[u8; 6]>,
    /// Host interface: its peer in the node's stack (for the runtime, which creates the pair).
    pub peer: Option<String>,
    /// The interface's MTU (the state's, or the kernel's through the runtime's overrides);
    /// 0: unknown, no check. See [`Tables::frame_limit`].
    pub mtu: u16,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub ips: Vec<Addr>,
    pub mac: [u8; 6],
    pub iface: IfIndex,
    pub identity: Identity,
    pub ingress: Option<DirPolicy>,
    pub egress: Option<DirPolicy>,
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub addr: Addr,
    pub port: u16,
    pub weight: u16,
    pub state: BackendState,
    /// EndpointSlice conditions (see `nodeplane_state::Conditions`).
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node: its address is a local endpoint's or a node IP.
    pub local: bool,
    /// The local endpoint with this address (`Tables::endpoint_of`), found at publication: a new
    /// flow to this backend routes and checks ingress policy by it without a lookup.
    pub endpoint: Option<u32>,
}

impl Backend {
    /// The condition in one word, for listings: `ready`, `serving-terminating` (takes new flows
    /// only while no backend is ready), `terminating` (draining), `not-ready`, `quarantined`.
    pub fn condition_name(&self) -> &'static str {
        match (self.state, self.ready, self.serving, self.terminating) {
            (BackendState::Quarantined, ..) => "quarantined",
            (_, true, ..) => "ready",
            (_, false, true, true) => "serving-terminating",
            (_, false, _, true) => "terminating",
            _ => "not-ready",
        }
    }
}

/// Per address family (and traffic scope): the backends that may take new flows, and their
/// Maglev table. Those are the ready backends, or when none is ready the serving terminating
/// ones (KEP-1669), chosen at publication so a new flow pays nothing for the fallback.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Indexes into [`Service::backends`] of the backends of this family that take new flows.
    pub active: Vec<u16>,
    /// Maglev slots: indexes into `active`. Empty when the algorithm is random or nothing is
    /// active.
    pub maglev: Arc<[u16]>,
    /// Running sums of the weights of `active`: `cum_weight[i]` is the weight of `active[..=i]`
    /// (built at publication, so the weighted random pick allocates nothing).
    pub cum_weight: Vec<u64>,
}

impl Selection {
    /// Builds the selection of these active backends (indexes into `backends`).
    pub fn new(active: Vec<u16>, maglev: Arc<[u16]>, backends: &[Backend]) -> Selection {
        let mut sum = 0u64;
        let cum_weight = active
            .iter()
            .map(|&i| {
                sum += u64::from(backends[usize::from(i)].weight);
                sum
            })
            .collect();
        Selection {
            active,
            maglev,
            cum_weight,
        }
    }

    /// Weighted random pick: the active backend whose weight interval holds `r` modulo the total
    /// weight. Each backend is picked with probability weight / total (the modulo bias is at
    /// most total / 2^64, total < 2^32). With weights all 1 this is `active[r % len]`, the
    /// unweighted pick it replaces, so equal-weight services keep their sequence. Cost: one
    /// division and a binary search over the active backends (log2 n compares), per new flow.
    /// `None` when nothing is active.
    #[inline]
    pub fn pick_weighted(&self, r: u64) -> Option<u16> {
        let total = *self.cum_weight.last()?;
        if total == 0 {
            return None;
        }
        let x = r % total;
        let i = self.cum_weight.partition_point(|&c| c <= x);
        self.active.get(i).copied()
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub kind: ServiceType,
    pub algorithm: Algorithm,
    /// ClientIP affinity timeout in nanoseconds.
    pub affinity_ns: Option<u64>,
    pub backends: Vec<Backend>,
    pub v4: Selection,
    pub v6: Selection,
    /// The same over the backends on this node only (built when a traffic policy is `Local`).
    pub v4_local: Selection,
    pub v6_local: Selection,
    /// `internal_traffic_policy: Local`: cluster IP frontends use the local selections.
    pub internal_local: bool,
    /// `external_traffic_policy: Local`: node ports, external IPs and VIPs use the local
    /// selections for clients from outside the node (the client address is kept).
    pub external_local: bool,
    /// `load_balancer_source_ranges`: the clients allowed to LoadBalancer VIP frontends (empty:
    /// any).
    pub source_ranges: Vec<(Addr, u8)>,
    pub health_check_node_port: Option<u16>,
}

impl Service {
    pub fn selection(&self, v6: bool) -> &Selection {
        if v6 {
            &self.v6
        } else {
            &self.v4
        }
    }

    /// The selection of one family and scope (`local`: this node's backends only).
    #[inline]
    pub fn selection_in(&self, v6: bool, local: bool) -> &Selection {
        match (v6, local) {
            (false, false) => &self.v4,
            (true, false) => &self.v6,
            (false, true) => &self.v4_local,
            (true, true) => &self.v6_local,
        }
    }

    /// A service whose IPv4 backend depends on the Maglev hash alone: no affinity, no `Local`
    /// traffic policy, no source ranges, its table built (what `select_backend` does for it is
    /// `v4.active[v4.maglev[slot]]`).
    #[inline]
    pub fn plain_maglev(&self) -> bool {
        self.algorithm == Algorithm::Maglev
            && self.affinity_ns.is_none()
            && !self.internal_local
            && !self.external_local
            && self.source_ranges.is_empty()
            && !self.v4.maglev.is_empty()
    }

    /// A client address is inside the source ranges (always, without ranges).
    #[inline]
    pub fn source_allowed(&self, a: &Addr) -> bool {
        self.source_ranges.is_empty()
            || self
                .source_ranges
                .iter()
                .any(|(net, len)| net.v6 == a.v6 && a.masked(*len) == *net)
    }

    /// Ready backends on this node, one per endpoint address family pair at most counted once
    /// per distinct address: what the health check node port reports (`localEndpoints`).
    /// Serving terminating backends do not count, so load balancers drain a node whose local
    /// backends are all terminating (KEP-1669).
    pub fn local_ready(&self) -> usize {
        let mut seen: Vec<Addr> = Vec::new();
        for b in &self.backends {
            if b.local && b.ready && b.state != BackendState::Quarantined && !seen.contains(&b.addr)
            {
                seen.push(b.addr);
            }
        }
        seen.len()
    }

    /// The backend with this address and port, if the service still has it.
    pub fn find_backend(&self, addr: Addr, port: u16) -> Option<&Backend> {
        self.backends
            .iter()
            .find(|b| b.addr == addr && b.port == port)
    }
}

/// Which kind of address a frontend is, for the traffic policies and source ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A cluster IP (`ClusterIP` and `NodePort` services' frontends): internal traffic policy.
    Internal,
    /// A node port or an `ExternalIP` service's frontend: external traffic policy.
    External,
    /// A `LoadBalancer` service's VIP: external traffic policy and source ranges.
    LoadBalancer,
}

/// A service frontend: (address, port, L4 protocol number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
}

/// An IPv4 frontend as one word (the key of [`Tables::frontends4`]): the address as it sits in
/// the header (native order), the port, the protocol.
#[inline(always)]
pub fn front4_key(addr: [u8; 4], port: u16, proto: u8) -> u64 {
    u64::from(u32::from_ne_bytes(addr)) | u64::from(port) << 32 | u64::from(proto) << 48
}

/// An IPv4 frontend with what a new connection's backend pick reads, in one place: the
/// service, and for a service whose backend is a function of the Maglev hash alone
/// ([`Service::plain_maglev`]) its IPv4 Maglev table and, per index of `v4.active`, the backend
/// that index names ([`Pick4`]). The pick is then `picks[maglev[slot]]`: two dependent reads
/// after this entry, where the service record, `active` and `backends` took four.
#[derive(Debug, Clone)]
pub struct Front4 {
    pub svc: u32,
    /// The service's `v4.maglev` (shared), empty when it is not a plain Maglev service.
    pub maglev: Arc<[u16]>,
    /// `picks[i]` is `backends[v4.active[i]]`, reduced to what a new flow reads.
    pub picks: Arc<[Pick4]>,
}

/// A backend as a new IPv4 flow reads it ([`Front4::picks`]).
#[derive(Debug, Clone, Copy)]
pub struct Pick4 {
    /// Its index in the service's backends.
    pub backend: u16,
    pub port: u16,
    pub addr: [u8; 4],
    /// [`Backend::endpoint`], `u32::MAX` for none.
    pub endpoint: u32,
    pub local: bool,
}

/// Conntrack sizing and timeouts in nanoseconds.
#[derive(Debug, Clone)]
pub struct CtConfig {
    pub max_entries: u32,
    pub max_held_fragments: u32,
    pub max_fragment_ids: u32,
    pub syn_sent: u64,
    pub syn_recv: u64,
    pub established: u64,
    pub fin_wait: u64,
    pub close: u64,
    pub time_wait: u64,
    pub udp: u64,
    pub icmp: u64,
    pub fragment: u64,
}

const NS: u64 = 1_000_000_000;

impl CtConfig {
    pub fn from_state(s: &nodeplane_state::ConntrackSettings) -> CtConfig {
        let t = &s.timeouts;
        CtConfig {
            max_entries: s.max_entries.max(1),
            max_held_fragments: s.max_held_fragments,
            max_fragment_ids: s.max_fragment_ids,
            syn_sent: u64::from(t.tcp_syn_sent) * NS,
            syn_recv: u64::from(t.tcp_syn_recv) * NS,
            established: u64::from(t.tcp_established) * NS,
            fin_wait: u64::from(t.tcp_fin_wait) * NS,
            close: u64::from(t.tcp_close) * NS,
            time_wait: u64::from(t.tcp_time_wait) * NS,
            udp: u64::from(t.udp) * NS,
            icmp: u64::from(t.icmp) * NS,
            fragment: u64::from(t.fragment) * NS,
        }
    }
}

/// Maglev tables keyed by (backend names and weights, M): services with the same backend set
/// share one table, and a rebuild after a state change reuses the tables of unchanged services.
///
/// Building is the expensive part of compiling a state (~0.1 ms per distinct backend set at
/// M = 16381). With a deadline, tables not built by then are left *pending*: their services
/// select by a plain hash of the flow modulo the active backends (deterministic, so still the
/// same on every node and in replay) until [`MaglevCache::fill`] has built them and the control
/// thread publishes again. That keeps a large change reaching the workers within the deadline.
#[derive(Debug, Default)]
pub struct MaglevCache {
    tables: HashMap<MaglevKey, Arc<[u16]>>,
    deadline: Option<Instant>,
    pending: usize,
    /// The keys the last build left pending, for [`MaglevCache::fill`] to build in order
    /// (not by walking every service again: at 100k services that walk alone outlasts a step).
    todo: Vec<MaglevKey>,
}

/// (backend `ip:port` names with weights, in order; table size M).
type MaglevKey = (Vec<(String, u16)>, u32);

impl MaglevCache {
    fn get(&mut self, key: Vec<(String, u16)>, m: u32) -> Arc<[u16]> {
        let key = (key, m);
        if let Some(t) = self.tables.get(&key) {
            return t.clone();
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.pending += 1;
            self.todo.push(key);
            return Arc::from(Vec::new());
        }
        self.build(key)
    }

    fn build(&mut self, key: MaglevKey) -> Arc<[u16]> {
        let named: Vec<(&[u8], u16)> = key.0.iter().map(|(n, w)| (n.as_bytes(), *w)).collect();
        let t: Arc<[u16]> = maglev::build(&named, key.1).into();
        self.tables.insert(key, t.clone());
        t
    }

    /// Drops tables no longer referenced by any published snapshot.
    pub fn prune(&mut self) {
        self.tables.retain(|_, t| Arc::strong_count(t) > 1);
    }

    /// Builds the tables the last build left pending until `deadline` (at least one per call,
    /// so that every call makes progress); returns how many are still missing.
    pub fn fill(&mut self, deadline: Instant) -> usize {
        let mut built = false;
        while let Some(key) = self.todo.pop() {
            if self.tables.contains_key(&key) {
                continue; // services sharing a backend set left it pending more than once
            }
            if built && Instant::now() >= deadline {
                self.todo.push(key);
                break;
            }
            self.build(key);
            built = true;
        }
        self.todo.len()
    }
}

/// The backends of one family (and, with `local`, on this node) that take new flows: the ready
/// ones, or when none is ready the serving terminating ones (KEP-1669; kube-proxy's
/// `CategorizeEndpoints` applies the fallback to the cluster and the local set each).
fn chosen(
    backends: &[nodeplane_state::Backend],
    v6: bool,
    local: Option<&HashSet<IpAddr>>,
) -> Vec<u16> {
    let of = |f: &dyn Fn(&nodeplane_state::Backend) -> bool| -> Vec<u16> {
        backends
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                b.ip.is_ipv6() == v6 && b.weight > 0 && local.is_none_or(|l| l.contains(&b.ip))
            })
            .filter(|(_, b)| f(b))
            .map(|(i, _)| i as u16)
            .collect()
    };
    let ready = of(&|b| b.is_ready());
    if ready.is_empty() {
        of(&|b| b.is_serving_terminating())
    } else {
        ready
    }
}

/// The Maglev key of the chosen backends (indexes into `backends`).
fn maglev_key(backends: &[nodeplane_state::Backend], chosen: &[u16]) -> Vec<(String, u16)> {
    chosen
        .iter()
        .map(|&i| &backends[usize::from(i)])
        .map(|b| (fmt_socket(Addr::from(b.ip), b.port), b.weight))
        .collect()
}

/// Addresses on this node: local endpoints' and node IPs (a backend there is "local" for the
/// traffic policies).
fn local_ips(state: &State) -> HashSet<IpAddr> {
    state
        .endpoints
        .iter()
        .flat_map(|e| e.ips.iter().copied())
        .chain(state.node.node_ips.iter().copied())
        .collect()
}

/// The scopes whose selections a service needs: cluster always, local with a `Local` policy.
fn scopes(svc: &nodeplane_state::Service) -> &'static [bool] {
    if svc.internal_traffic_policy == TrafficPolicy::Local
        || svc.external_traffic_policy == TrafficPolicy::Local
    {
        &[false, true]
    } else {
        &[false]
    }
}

#[derive(Debug)]
pub struct Tables {
    /// Increases with every published state; flows re-check policy and backends when it moves.
    pub generation: u64,
    /// Frames up to this length fit every interface's MTU (the smallest known MTU plus an
    /// Ethernet header; `usize::MAX` when no MTU is known): the one compare the pipeline makes
    /// per packet before it looks at an egress interface's MTU (`crate::mtu`).
    pub frame_limit: usize,
    pub node_name: String,
    pub node_ips: Vec<Addr>,
    pub pod_cidrs: Vec<(Addr, u8)>,
    pub policy_mode: PolicyMode,
    pub maglev_m: u32,
    pub ifaces: Vec<Iface>,
    /// The host interface's index ([`Tables::host`]), found once at build: new flows ask.
    host_iface: Option<IfIndex>,
    pub endpoints: Vec<Endpoint>,
    pub endpoint_by_ip: HashMap<Addr, u32>,
    /// The IPv4 entries of `endpoint_by_ip` by the address as one word (native order):
    /// [`Tables::endpoint_of`] of an IPv4 address hashes and compares one word, not two and
    /// 17 bytes (anti-spoofing looks up every new flow's source).
    endpoint4: HashMap<u32, u32>,
    pub ipcache: Lpm<Identity>,
    pub services: Vec<Service>,
    /// Service name → index in `services` (per-service counters follow a service across
    /// publications by name).
    pub service_by_name: HashMap<String, u32>,
    pub frontends: HashMap<FrontendKey, u32>,
    /// The IPv4 entries of `frontends` by [`front4_key`], each with what a new connection's
    /// backend pick reads (see [`Front4`]): the SYN look-ahead's one lookup per SYN.
    pub frontends4: HashMap<u64, Front4>,
    /// The frontends that are not cluster IPs ([`Scope::External`], [`Scope::LoadBalancer`]);
    /// looked up only for new flows of services with a `Local` policy or source ranges.
    pub frontend_scopes: HashMap<FrontendKey, Scope>,
    /// Every frontend address (not node IPs): a packet to one of these that matches no
    /// frontend is dropped `no-service` instead of being routed.
    pub service_ips: HashMap<Addr, ()>,
    pub ct: CtConfig,
    /// Source ports that source NAT allocates (`node.snat_port_range`).
    pub snat_ports: crate::snat::PortRange,
    /// Maglev tables left to build (their services hash modulo the backend count meanwhile).
    pub maglev_pending: usize,
}

/// The [`Front4`] of a frontend of service `svc`.
fn front4(services: &[Service], svc: u32) -> Front4 {
    let s = &services[svc as usize];
    if !s.plain_maglev() {
        return Front4 {
            svc,
            maglev: Arc::from(Vec::new()),
            picks: Arc::from(Vec::new()),
        };
    }
    let picks: Vec<Pick4> =
        s.v4.active
            .iter()
            .map(|&i| {
                let b = &s.backends[usize::from(i)];
                Pick4 {
                    backend: i,
                    port: b.port,
                    addr: [
                        b.addr.bytes[0],
                        b.addr.bytes[1],
                        b.addr.bytes[2],
                        b.addr.bytes[3],
                    ],
                    endpoint: b.endpoint.unwrap_or(u32::MAX),
                    local: b.local,
                }
            })
            .collect();
    Front4 {
        svc,
        maglev: Arc::clone(&s.v4.maglev),
        picks: Arc::from(picks),
    }
}

/// The 4 bytes of an IPv4 address as one word (native order; an IPv4 `Addr`'s other 12 bytes
/// are zero).
#[inline(always)]
fn v4_word(a: &Addr) -> u32 {
    u32::from_ne_bytes([a.bytes[0], a.bytes[1], a.bytes[2], a.bytes[3]])
}

fn mac(m: MacAddr) -> [u8; 6] {
    m.0
}

fn proto_num(p: L4Proto) -> u8 {
    match p {
        L4Proto::TCP => PROTO_TCP,
        L4Proto::UDP => PROTO_UDP,
        // Refused by validation; a number that matches nothing the parser hands over.
        L4Proto::SCTP => 132,
    }
}

impl Tables {
    /// Compiles a validated state. Entries that reference unknown names are skipped (validation
    /// rejects such states before they get here).
    pub fn build(state: &State, generation: u64, cache: &mut MaglevCache) -> Tables {
        Self::build_within(state, generation, cache, None)
    }

    /// [`Tables::build`], leaving Maglev tables not built by `deadline` pending (see
    /// [`MaglevCache`]); [`Tables::maglev_pending`] counts them.
    pub fn build_within(
        state: &State,
        generation: u64,
        cache: &mut MaglevCache,
        deadline: Option<Instant>,
    ) -> Tables {
        cache.deadline = deadline;
        cache.pending = 0;
        cache.todo.clear();
        let mut t = Self::compile(state, generation, cache);
        t.maglev_pending = cache.pending;
        cache.deadline = None;
        t
    }

    fn compile(state: &State, generation: u64, cache: &mut MaglevCache) -> Tables {
        let ifaces: Vec<Iface> = state
            .interfaces
            .iter()
            .map(|i| Iface {
                name: i.name.clone(),
                role: i.role,
                mac: mac(i.mac),
                gateway_mac: i.gateway_mac.map(mac),
                peer: i.peer.clone(),
                mtu: i.mtu.unwrap_or(0),
            })
            .collect();
        let node_ips: Vec<Addr> = state.node.node_ips.iter().map(|a| Addr::from(*a)).collect();

        let mut ipcache = Lpm::new();
        for e in &state.ipcache {
            ipcache.insert(
                Addr::from(e.prefix.network()),
                e.prefix.prefix_len(),
                e.identity,
            );
        }
        // External workloads (VMs, bare metal): host routes with the identity of their labels,
        // so policy names them like pods.
        for w in &state.external_workloads {
            for ip in &w.ips {
                let a = Addr::from(*ip);
                ipcache.insert(a, if a.v6 { 128 } else { 32 }, w.identity);
            }
        }
        for ip in &node_ips {
            ipcache.insert(*ip, if ip.v6 { 128 } else { 32 }, reserved::HOST);
        }

        let mut endpoints = Vec::new();
        let mut endpoint_by_ip = HashMap::new();
        for ep in &state.endpoints {
            let Some(iface) = ifaces.iter().position(|i| i.name == ep.interface) else {
                continue;
            };
            let policy = state.policies.iter().find(|p| p.endpoint == ep.name);
            let idx = endpoints.len() as u32;
            let ips: Vec<Addr> = ep.ips.iter().map(|a| Addr::from(*a)).collect();
            for ip in &ips {
                endpoint_by_ip.insert(*ip, idx);
                ipcache.insert(*ip, if ip.v6 { 128 } else { 32 }, ep.identity);
            }
            endpoints.push(Endpoint {
                name: ep.name.clone(),
                ips,
                mac: mac(ep.mac),
                iface: iface as IfIndex,
                identity: ep.identity,
                ingress: policy.and_then(|p| DirPolicy::compile(&p.ingress)),
                egress: policy.and_then(|p| DirPolicy::compile(&p.egress)),
            });
        }

        let m = state.node.maglev_table_size;
        let locals = local_ips(state);
        let mut services = Vec::new();
        let mut frontends = HashMap::new();
        let mut frontend_scopes = HashMap::new();
        let mut service_ips = HashMap::new();
        for svc in &state.services {
            let idx = services.len() as u32;
            let backends: Vec<Backend> = svc
                .backends
                .iter()
                .map(|b| {
                    let c = b.conditions();
                    let addr = Addr::from(b.ip);
                    // Only a local address can be an endpoint's: remote backends cost no probe.
                    let local = locals.contains(&b.ip);
                    Backend {
                        addr,
                        port: b.port,
                        weight: b.weight,
                        state: b.state,
                        ready: c.ready,
                        serving: c.serving,
                        terminating: c.terminating,
                        local,
                        endpoint: if local {
                            endpoint_by_ip.get(&addr).copied()
                        } else {
                            None
                        },
                    }
                })
                .collect();
            let selection = |v6: bool, local: bool, cache: &mut MaglevCache| {
                let active = chosen(&svc.backends, v6, local.then_some(&locals));
                let maglev = if svc.algorithm == Algorithm::Maglev && !active.is_empty() {
                    cache.get(maglev_key(&svc.backends, &active), m)
                } else {
                    Arc::from(Vec::new())
                };
                Selection::new(active, maglev, &backends)
            };
            let v4 = selection(false, false, cache);
            let v6 = selection(true, false, cache);
            let (v4_local, v6_local) = if scopes(svc).len() > 1 {
                (selection(false, true, cache), selection(true, true, cache))
            } else {
                (Selection::default(), Selection::default())
            };
            let fe_scope = match svc.kind {
                ServiceType::ClusterIP | ServiceType::NodePort => Scope::Internal,
                ServiceType::ExternalIP => Scope::External,
                ServiceType::LoadBalancer => Scope::LoadBalancer,
            };
            for f in &svc.frontends {
                let addr = Addr::from(f.ip);
                let key = FrontendKey {
                    addr,
                    port: f.port,
                    proto: proto_num(f.protocol),
                };
                frontends.insert(key, idx);
                if fe_scope != Scope::Internal {
                    frontend_scopes.insert(key, fe_scope);
                }
                service_ips.insert(addr, ());
            }
            if matches!(svc.kind, ServiceType::NodePort | ServiceType::LoadBalancer) {
                for np in &svc.node_ports {
                    for ip in &node_ips {
                        let key = FrontendKey {
                            addr: *ip,
                            port: np.port,
                            proto: proto_num(np.protocol),
                        };
                        frontends.insert(key, idx);
                        frontend_scopes.insert(key, Scope::External);
                    }
                }
            }
            services.push(Service {
                name: svc.name.clone(),
                kind: svc.kind,
                algorithm: svc.algorithm,
                affinity_ns: svc
                    .affinity
                    .as_ref()
                    .map(|a| u64::from(a.timeout_seconds) * NS),
                backends,
                v4,
                v6,
                v4_local,
                v6_local,
                internal_local: svc.internal_traffic_policy == TrafficPolicy::Local,
                external_local: svc.external_traffic_policy == TrafficPolicy::Local,
                source_ranges: svc
                    .load_balancer_source_ranges
                    .iter()
                    .map(|n| (Addr::from(n.network()), n.prefix_len()))
                    .collect(),
                health_check_node_port: svc.health_check_node_port,
            });
        }
        // Node IPs are never "service IPs": unmatched ports there belong to the host.
        for ip in &node_ips {
            service_ips.remove(ip);
        }

        let frontends4 = frontends
            .iter()
            .filter(|(k, _)| !k.addr.v6)
            .map(|(k, &svc)| {
                let b = k.addr.bytes;
                let key = front4_key([b[0], b[1], b[2], b[3]], k.port, k.proto);
                (key, front4(&services, svc))
            })
            .collect();
        let frame_limit = ifaces
            .iter()
            .filter(|i| i.mtu != 0)
            .map(|i| usize::from(i.mtu) + crate::wire::ethernet::HEADER_LEN)
            .min()
            .unwrap_or(usize::MAX);
        Tables {
            generation,
            frame_limit,
            node_name: state.node.name.clone(),
            node_ips,
            pod_cidrs: state
                .node
                .pod_cidrs
                .iter()
                .map(|c| (Addr::from(c.network()), c.prefix_len()))
                .collect(),
            policy_mode: state.node.policy_mode,
            maglev_m: m,
            host_iface: ifaces
                .iter()
                .position(|i| i.role == InterfaceRole::Host)
                .map(|i| i as IfIndex),
            ifaces,
            endpoints,
            endpoint4: endpoint_by_ip
                .iter()
                .filter(|(a, _)| !a.v6)
                .map(|(a, &ep)| (v4_word(a), ep))
                .collect(),
            endpoint_by_ip,
            ipcache,
            service_by_name: services
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.clone(), i as u32))
                .collect(),
            services,
            frontends,
            frontends4,
            frontend_scopes,
            service_ips,
            ct: CtConfig::from_state(&state.conntrack),
            snat_ports: crate::snat::PortRange::new(
                state.node.snat_port_range[0],
                state.node.snat_port_range[1],
            ),
            maglev_pending: 0,
        }
    }

    pub fn iface_index(&self, name: &str) -> Option<IfIndex> {
        self.ifaces
            .iter()
            .position(|i| i.name == name)
            .map(|i| i as IfIndex)
    }

    /// The uplink interface, if the node has one.
    pub fn uplink(&self) -> Option<IfIndex> {
        self.ifaces
            .iter()
            .position(|i| i.role == InterfaceRole::Uplink)
            .map(|i| i as IfIndex)
    }

    /// The host interface (nodeplane's end of the veth pair into the node's stack), if any.
    #[inline]
    pub fn host(&self) -> Option<IfIndex> {
        self.host_iface
    }

    #[inline]
    pub fn is_node_ip(&self, a: &Addr) -> bool {
        self.node_ips.iter().any(|n| n == a)
    }

    /// The node IP that masqueraded flows of this family leave from: the first of
    /// `node.node_ips` of the family.
    #[inline]
    pub fn snat_ip(&self, v6: bool) -> Option<Addr> {
        self.node_ips.iter().find(|a| a.v6 == v6).copied()
    }

    /// A source on this node: one of its pods (inside its PodCIDRs) or the node itself.
    #[inline]
    pub fn on_this_node(&self, a: &Addr) -> bool {
        self.in_pod_cidr(a) || self.is_node_ip(a)
    }

    #[inline]
    pub fn in_pod_cidr(&self, a: &Addr) -> bool {
        self.pod_cidrs
            .iter()
            .any(|(net, len)| net.v6 == a.v6 && a.masked(*len) == *net)
    }

    /// The identity of a remote address: local endpoint, node, ipcache prefix, else world.
    #[inline]
    pub fn identity_of(&self, a: &Addr) -> Identity {
        match self.ipcache.lookup(a) {
            Some((id, _)) => id,
            None => reserved::WORLD,
        }
    }

    /// [`Self::identity_of`] for an address whose endpoint (`ep = endpoint_of(a)`) is known:
    /// the endpoint's identity, no LPM lookup. The same value: `build` inserts every endpoint
    /// address into the ipcache as a host route with its endpoint's identity, after every
    /// other entry (the last insert of an address wins in both maps).
    #[inline]
    pub fn identity_at(&self, a: &Addr, ep: Option<u32>) -> Identity {
        match ep.and_then(|ep| self.endpoints.get(ep as usize)) {
            Some(e) => e.identity,
            None => self.identity_of(a),
        }
    }

    #[inline(always)]
    pub fn endpoint_of(&self, a: &Addr) -> Option<u32> {
        if a.v6 {
            self.endpoint_by_ip.get(a).copied()
        } else {
            self.endpoint4.get(&v4_word(a)).copied()
        }
    }

    /// The kind of address a frontend is ([`Scope::Internal`] unless listed otherwise).
    #[inline]
    pub fn frontend_scope(&self, addr: Addr, port: u16, proto: u8) -> Scope {
        self.frontend_scopes
            .get(&FrontendKey { addr, port, proto })
            .copied()
            .unwrap_or(Scope::Internal)
    }

    #[inline]
    pub fn frontend(&self, addr: Addr, port: u16, proto: u8) -> Option<u32> {
        self.frontends
            .get(&FrontendKey { addr, port, proto })
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut a new flow takes for local endpoints gives what the ipcache says, for every
    /// endpoint address of the example node, and falls back to the ipcache otherwise.
    #[test]
    fn endpoint_identity_is_the_ipcache_identity() {
        let s = nodeplane_state::example::state().expect("example state");
        let t = Tables::build(&s, 1, &mut MaglevCache::default());
        assert!(!t.endpoints.is_empty());
        for e in &t.endpoints {
            for a in &e.ips {
                let ep = t.endpoint_of(a);
                assert!(ep.is_some());
                // The IPv4 word map agrees with the address map.
                assert_eq!(ep, t.endpoint_by_ip.get(a).copied(), "{a}");
                assert_eq!(t.identity_at(a, ep), t.identity_of(a), "{a}");
                assert_eq!(t.identity_at(a, ep), e.identity, "{a}");
            }
        }
        let world = Addr::v4([203, 0, 113, 9]);
        assert_eq!(t.endpoint_of(&world), None);
        assert_eq!(t.identity_at(&world, None), t.identity_of(&world));
    }

    /// The endpoint a backend records is the one `endpoint_of` finds for its address (the
    /// example node has backends on local pods and elsewhere).
    #[test]
    fn backend_endpoint_is_the_endpoint_of_its_address() {
        let s = nodeplane_state::example::state().expect("example state");
        let t = Tables::build(&s, 1, &mut MaglevCache::default());
        let mut local = 0;
        for b in t.services.iter().flat_map(|s| &s.backends) {
            assert_eq!(b.endpoint, t.endpoint_of(&b.addr), "{}", b.addr);
            local += usize::from(b.endpoint.is_some());
        }
        assert!(local > 0, "no backend on a local endpoint in the example");
    }

    /// Every IPv4 frontend has its [`Front4`], naming the service `frontend` finds; for a plain
    /// Maglev service it holds the service's table and `picks[i]` is `backends[v4.active[i]]`
    /// (so `picks[maglev[slot]]` is the backend `select_backend` picks), for any other service
    /// nothing (the new flow picks as usual).
    #[test]
    fn front4_is_the_frontend_with_its_selection() {
        let s = nodeplane_state::example::state().expect("example state");
        let t = Tables::build(&s, 1, &mut MaglevCache::default());
        let (mut plain, mut other) = (0, 0);
        for (k, &svc) in &t.frontends {
            let b = k.addr.bytes;
            let f = t
                .frontends4
                .get(&front4_key([b[0], b[1], b[2], b[3]], k.port, k.proto));
            if k.addr.v6 {
                continue;
            }
            let f = f.expect("an IPv4 frontend has its entry");
            assert_eq!(f.svc, svc);
            let s = &t.services[svc as usize];
            if !s.plain_maglev() {
                assert!(f.maglev.is_empty() && f.picks.is_empty(), "{}", s.name);
                other += 1;
                continue;
            }
            plain += 1;
            assert!(Arc::ptr_eq(&f.maglev, &s.v4.maglev), "{}", s.name);
            assert_eq!(f.picks.len(), s.v4.active.len());
            for (p, &i) in f.picks.iter().zip(&s.v4.active) {
                let be = &s.backends[usize::from(i)];
                assert_eq!(p.backend, i);
                assert_eq!(Addr::v4(p.addr), be.addr);
                assert_eq!(p.port, be.port);
                assert_eq!(p.local, be.local);
                assert_eq!(p.endpoint, be.endpoint.unwrap_or(u32::MAX));
            }
        }
        assert!(plain > 0, "no plain Maglev service in the example");
        assert_eq!(
            t.frontends4.len(),
            t.frontends.keys().filter(|k| !k.addr.v6).count()
        );
        let _ = other;
    }

    fn selection(weights: &[u16]) -> Selection {
        let backends: Vec<Backend> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Backend {
                addr: Addr::from(std::net::IpAddr::from([10, 0, 0, i as u8 + 1])),
                port: 80,
                weight: w,
                state: BackendState::Active,
                ready: true,
                serving: true,
                terminating: false,
                local: false,
                endpoint: None,
            })
            .collect();
        let active = (0..weights.len() as u16).collect();
        Selection::new(active, Arc::from(Vec::new()), &backends)
    }

    /// `n` picks driven by the pipeline's xorshift64 from its seed: hits per backend.
    fn picks(sel: &Selection, n: usize) -> Vec<usize> {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut hits = vec![0; sel.active.len()];
        for _ in 0..n {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            hits[usize::from(sel.pick_weighted(rng).unwrap())] += 1;
        }
        hits
    }

    /// Each count within 5 standard deviations of its binomial expectation.
    fn assert_shares(weights: &[u16], n: usize) {
        let hits = picks(&selection(weights), n);
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        for (w, h) in weights.iter().zip(&hits) {
            let p = f64::from(*w) / total;
            let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
            assert!(
                (*h as f64 - mean).abs() <= 5.0 * sd,
                "weights {weights:?}: hits {hits:?}, expected {mean:.0} ± {:.0} for weight {w}",
                5.0 * sd
            );
        }
    }

    #[test]
    fn random_pick_follows_the_weights() {
        assert_shares(&[1, 1, 2], 2000);
        assert_shares(&[1, 1, 2], 100_000);
        assert_shares(&[1, 1, 100], 2000);
        assert_shares(&[1, 1, 100], 100_000);
        assert_shares(&[65535, 1, 65535, 7], 100_000);
    }

    #[test]
    fn weights_of_one_pick_like_the_unweighted_modulo() {
        let sel = selection(&[1, 1, 1]);
        for r in [0u64, 1, 2, 3, 5, u64::MAX, 0x2545_f491_4f6c_dd1d] {
            assert_eq!(sel.pick_weighted(r), Some((r % 3) as u16));
        }
    }

    #[test]
    fn interval_edges_and_empty() {
        let sel = selection(&[2, 3]);
        let got: Vec<u16> = (0..5).map(|r| sel.pick_weighted(r).unwrap()).collect();
        assert_eq!(got, [0, 0, 1, 1, 1]);
        assert_eq!(Selection::default().pick_weighted(7), None);
    }
}
