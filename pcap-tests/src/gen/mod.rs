//! The case generator: one function per case (in `cases.rs`) describes the state, the packets
//! in time order with the interface each enters on, and what each packet must show. Writing is
//! deterministic: the same code writes the same bytes.
//!
//! ```text
//!                    world / other nodes / routers
//!                                 │
//!                   eth0 (uplink) 02:00:00:00:00:01, gateway 02:00:00:00:00:fe
//!                   node IPs 192.168.1.10, 192.168.2.10, fd00:192:1::10
//!          ┌──────────────────────┼──────────────────────┐
//!       veth-a                 veth-b                  veth-c
//!   pod-a 10.0.1.2          pod-b 10.0.1.3          pod-c 10.0.1.4
//!   fd00:10:1::2            fd00:10:1::3            fd00:10:1::4
//!   identity 1001           identity 1002           identity 1003
//! PodCIDR 10.0.1.0/24, fd00:10:1::/64; remote pods 10.0.2.0/24, fd00:10:2::/64 (identity 2001)
//! ```

mod cases;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use nodeplane_state as st;

use crate::pcapio::{write_pcap, EPOCH_SECS};
use crate::pkt::{IpExtras, Pkt, L4};
use crate::spec::{BackendShare, CaseSpec, Expect, Input, StateAt, Totals};

pub use cases::all_cases;

pub const UPLINK: &str = "eth0";
pub const UPLINK_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("bad IP literal {s:?}"))
}

/// Something that sends and receives frames at one interface of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The node interface the host's frames enter on.
    pub iface: &'static str,
    /// The host's MAC (source of its frames).
    pub mac: [u8; 6],
    /// The node's MAC on that interface (destination of the host's frames).
    pub node_mac: [u8; 6],
    pub v4: IpAddr,
    pub v6: IpAddr,
}

impl Host {
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.v6
        } else {
            self.v4
        }
    }
}

#[derive(Debug)]
pub struct Pod {
    pub name: &'static str,
    pub iface: &'static str,
    pub iface_mac: [u8; 6],
    pub mac: [u8; 6],
    pub v4: &'static str,
    pub v6: &'static str,
    pub identity: u32,
    pub app: &'static str,
}

pub const PODS: [Pod; 3] = [
    Pod {
        name: "pod-a",
        iface: "veth-a",
        iface_mac: [2, 0, 0, 0, 0x0a, 1],
        mac: [2, 0, 0, 0, 0x0a, 2],
        v4: "10.0.1.2",
        v6: "fd00:10:1::2",
        identity: 1001,
        app: "client",
    },
    Pod {
        name: "pod-b",
        iface: "veth-b",
        iface_mac: [2, 0, 0, 0, 0x0b, 1],
        mac: [2, 0, 0, 0, 0x0b, 2],
        v4: "10.0.1.3",
        v6: "fd00:10:1::3",
        identity: 1002,
        app: "web",
    },
    Pod {
        name: "pod-c",
        iface: "veth-c",
        iface_mac: [2, 0, 0, 0, 0x0c, 1],
        mac: [2, 0, 0, 0, 0x0c, 2],
        v4: "10.0.1.4",
        v6: "fd00:10:1::4",
        identity: 1003,
        app: "db",
    },
];

pub const ID_A: u32 = 1001;
pub const ID_B: u32 = 1002;
pub const ID_C: u32 = 1003;
pub const ID_REMOTE: u32 = 2001;
pub const NODE_IP1: &str = "192.168.1.10";
pub const NODE_IP2: &str = "192.168.2.10";
pub const NODE_IP6: &str = "fd00:192:1::10";

pub fn pod(i: usize) -> Host {
    let p = &PODS[i];
    Host {
        iface: p.iface,
        mac: p.mac,
        node_mac: p.iface_mac,
        v4: ip(p.v4),
        v6: ip(p.v6),
    }
}
pub fn pod_a() -> Host {
    pod(0)
}
pub fn pod_b() -> Host {
    pod(1)
}
pub fn pod_c() -> Host {
    pod(2)
}
/// A host behind the uplink (another node's pod, a client in the world, a router).
pub fn remote(v4: &str, v6: &str) -> Host {
    Host {
        iface: UPLINK,
        mac: GATEWAY_MAC,
        node_mac: UPLINK_MAC,
        v4: ip(v4),
        v6: ip(v6),
    }
}
/// A pod on node-2 (remote PodCIDR).
pub fn remote_pod() -> Host {
    remote("10.0.2.5", "fd00:10:2::5")
}
/// A client in the world.
pub fn world() -> Host {
    remote("203.0.113.7", "2001:db8:cafe::7")
}

fn mac(m: [u8; 6]) -> st::MacAddr {
    st::MacAddr(m)
}

/// The node's state shared by every case: interfaces, endpoints, ipcache; no services, no policy.
pub fn base_state() -> st::State {
    let mut s = st::State {
        node: st::Node {
            name: "node-1".into(),
            pod_cidrs: vec![
                "10.0.1.0/24".parse().unwrap(),
                "fd00:10:1::/64".parse().unwrap(),
            ],
            node_ips: vec![ip(NODE_IP1), ip(NODE_IP2), ip(NODE_IP6)],
            policy_mode: st::PolicyMode::Enforce,
            maglev_table_size: st::DEFAULT_MAGLEV_TABLE_SIZE,
            ..Default::default()
        },
        ..Default::default()
    };
    s.interfaces.push(st::Interface {
        name: UPLINK.into(),
        role: st::InterfaceRole::Uplink,
        mac: mac(UPLINK_MAC),
        gateway_mac: Some(mac(GATEWAY_MAC)),
        peer: None,
        mtu: None,
    });
    for p in &PODS {
        s.interfaces.push(st::Interface {
            name: p.iface.into(),
            role: st::InterfaceRole::Pod,
            mac: mac(p.iface_mac),
            gateway_mac: None,
            peer: None,
            mtu: None,
        });
        s.endpoints.push(st::Endpoint {
            name: p.name.into(),
            ips: vec![ip(p.v4), ip(p.v6)],
            mac: mac(p.mac),
            interface: p.iface.into(),
            identity: p.identity,
            labels: [("app".to_string(), p.app.to_string())]
                .into_iter()
                .collect(),
        });
    }
    for (prefix, id) in [
        ("10.0.2.0/24", ID_REMOTE),
        ("fd00:10:2::/64", ID_REMOTE),
        ("10.0.3.0/24", 2002),
        ("fd00:10:3::/64", 2002),
    ] {
        s.ipcache.push(st::IpcacheEntry {
            prefix: prefix.parse().unwrap(),
            identity: id,
        });
    }
    s
}

pub fn backend(ip_s: &str, port: u16, weight: u16, state: st::BackendState) -> st::Backend {
    st::Backend {
        ip: ip(ip_s),
        port,
        weight,
        state,
        ready: None,
        serving: None,
        terminating: None,
    }
}
pub fn active(ip_s: &str, port: u16) -> st::Backend {
    backend(ip_s, port, 1, st::BackendState::Active)
}

/// A service with frontends `(ip, port)` of protocol `proto`.
pub fn service(
    name: &str,
    kind: st::ServiceType,
    proto: st::L4Proto,
    frontends: &[(&str, u16)],
    backends: Vec<st::Backend>,
) -> st::Service {
    st::Service {
        name: name.into(),
        kind,
        frontends: frontends
            .iter()
            .map(|(i, p)| st::Frontend {
                ip: ip(i),
                port: *p,
                protocol: proto,
            })
            .collect(),
        node_ports: vec![],
        algorithm: st::Algorithm::Maglev,
        affinity: None,
        internal_traffic_policy: Default::default(),
        external_traffic_policy: Default::default(),
        health_check_node_port: None,
        load_balancer_source_ranges: Vec::new(),
        global: false,
        backends,
    }
}

pub fn rule(action: st::RuleAction) -> st::Rule {
    st::Rule {
        action,
        identities: vec![],
        cidrs: vec![],
        protocol: st::RuleProto::Any,
        ports: vec![],
    }
}

/// `ip:port` / `[ip6]:port` as the verdicts write it.
pub fn ep(ip_s: &str, port: u16) -> String {
    crate::wire::endpoint(ip(ip_s), Some(port))
}

/// One case under construction.
#[derive(Debug)]
pub struct Case {
    pub name: String,
    pub readme: String,
    states: Vec<(String, st::State)>,
    state_at: Vec<StateAt>,
    /// (time in µs after the first packet, interface, frame)
    packets: Vec<(u64, String, Vec<u8>)>,
    expects: Vec<Expect>,
    /// Current clock (µs after the first packet).
    pub now: u64,
    pub ordered_output: bool,
    pub checksums_valid: bool,
    /// Every unfragmented TCP/UDP packet added gets a partial checksum ([`Case::raw`]).
    pub partial_checksums: bool,
    pub sticky_flows: bool,
    pub affinity_by_client: bool,
    pub backend_share: Option<BackendShare>,
    /// `--removed-flow-action` of the replay (see [`Case::removed_flow_action`]).
    removed_flow_action: Option<String>,
    /// The replay writes flow events (see [`Case::events`]).
    events: bool,
    /// The summary pins per-service counters (see [`Case::services`]).
    services: bool,
    /// Set when some packet's verdict is not fixed in advance (no totals then).
    verdicts_open: bool,
}

/// Step between consecutive packets unless a case moves the clock.
const STEP_US: u64 = 1000;

impl Case {
    pub fn new(name: &str, readme: &str, state: st::State) -> Case {
        Case {
            name: name.into(),
            readme: readme.trim().to_string(),
            states: vec![("state.yaml".into(), state)],
            state_at: vec![],
            packets: vec![],
            expects: vec![],
            now: 0,
            ordered_output: true,
            checksums_valid: true,
            partial_checksums: false,
            sticky_flows: true,
            affinity_by_client: false,
            backend_share: None,
            removed_flow_action: None,
            events: false,
            services: false,
            verdicts_open: false,
        }
    }

    /// Replays with `--removed-flow-action rst`: segments of flows whose backend was removed
    /// are answered with a TCP reset (expect those with [`ExpectExt::rst`]).
    pub fn removed_flow_action(&mut self, action: &str) {
        self.removed_flow_action = Some(action.into());
    }

    /// Replays with `--events`: `events.jsonl` is checked against the verdicts and pinned.
    pub fn events(&mut self) {
        self.events = true;
    }

    /// Pins the per-service counters (and resets sent) in `summary.json`, checked against
    /// the verdicts.
    pub fn services(&mut self) {
        self.services = true;
    }

    /// Switches to `state` at `seconds` after the first packet (`--state-at`).
    pub fn state_at(&mut self, seconds: f64, file: &str, state: st::State) {
        self.states.push((file.into(), state));
        self.state_at.push(StateAt {
            seconds,
            state: file.into(),
        });
    }

    /// Moves the clock to `seconds` after the first packet.
    pub fn at(&mut self, seconds: f64) {
        let t = (seconds * 1e6).round() as u64;
        assert!(
            self.packets.is_empty() || t > self.packets.last().unwrap().0,
            "{}: time goes backwards",
            self.name
        );
        self.now = t;
    }

    /// Adds a raw frame entering on `iface`; returns its verdict index. In a
    /// `partial_checksums` case a TCP/UDP frame's checksum is replaced by its partial value.
    pub fn raw(&mut self, iface: &str, mut frame: Vec<u8>, mut e: Expect) -> usize {
        if self.partial_checksums {
            if let Some((off, v)) = crate::wire::partial_checksum(&frame) {
                frame[off..off + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
        let idx = self.packets.len();
        if let Some((t, _, _)) = self.packets.last() {
            assert!(self.now > *t, "{}: two packets at one time", self.name);
        }
        self.packets.push((self.now, iface.into(), frame));
        self.now += STEP_US;
        e.index = idx;
        if e.verdict.is_none() {
            self.verdicts_open = true;
        }
        self.expects.push(e);
        idx
    }

    /// Builds and adds a packet from `from` (entering on its interface).
    pub fn send(
        &mut self,
        from: &Host,
        src: IpAddr,
        dst: IpAddr,
        l4: L4,
        len: usize,
        e: Expect,
    ) -> usize {
        let p = Pkt {
            src_mac: from.mac,
            dst_mac: from.node_mac,
            vlan: None,
            src,
            dst,
            ttl: 64,
            l4,
            payload: crate::pkt::payload(len, self.packets.len() as u8),
            extras: IpExtras {
                ipv4_id: self.packets.len() as u16,
                ..Default::default()
            },
        };
        let frame = p.build();
        self.raw(from.iface, frame, e)
    }

    /// A `Pkt` template from `from` (for cases that tweak fields before building).
    pub fn pkt(&self, from: &Host, src: IpAddr, dst: IpAddr, l4: L4, len: usize) -> Pkt {
        Pkt {
            src_mac: from.mac,
            dst_mac: from.node_mac,
            vlan: None,
            src,
            dst,
            ttl: 64,
            l4,
            payload: crate::pkt::payload(len, self.packets.len() as u8),
            extras: IpExtras {
                ipv4_id: self.packets.len() as u16,
                ..Default::default()
            },
        }
    }

    /// Refines the expectation of an already added packet.
    pub fn expect_mut(&mut self, idx: usize) -> &mut Expect {
        &mut self.expects[idx]
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    fn spec(&self) -> CaseSpec {
        let mut ifaces: Vec<&str> = self.packets.iter().map(|p| p.1.as_str()).collect();
        ifaces.sort();
        ifaces.dedup();
        let totals = (!self.verdicts_open).then(|| {
            let count = |v: &str| {
                self.expects
                    .iter()
                    .filter(|e| e.verdict.as_deref() == Some(v))
                    .count() as u64
            };
            let mut drops = BTreeMap::new();
            let mut exact = true;
            for e in &self.expects {
                if e.verdict.as_deref() == Some("drop") {
                    match &e.reason {
                        Some(r) => *drops.entry(r.clone()).or_insert(0) += 1,
                        None => exact = false,
                    }
                }
            }
            Totals {
                packets: self.packets.len() as u64,
                forward: count("forward"),
                pass: count("pass"),
                drop: count("drop"),
                drops: exact.then_some(drops),
            }
        });
        CaseSpec {
            name: self.name.clone(),
            state: "state.yaml".into(),
            inputs: ifaces
                .iter()
                .map(|i| Input {
                    iface: i.to_string(),
                    file: format!("in-{i}.pcap"),
                })
                .collect(),
            state_at: self.state_at.clone(),
            ordered_output: self.ordered_output,
            checksums_valid: self.checksums_valid,
            partial_checksums: self.partial_checksums,
            sticky_flows: self.sticky_flows,
            affinity_by_client: self.affinity_by_client,
            backend_share: self.backend_share.clone(),
            totals,
            expect: self.expects.clone(),
            removed_flow_action: self.removed_flow_action.clone(),
            events: self.events,
            services: self.services,
        }
    }

    /// Writes the case directory (everything but `expected/`).
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        std::fs::create_dir_all(dir).map_err(io)?;
        // Files of an older version of the case go; `expected/` stays.
        for e in std::fs::read_dir(dir).map_err(io)?.flatten() {
            if e.path().is_file() {
                std::fs::remove_file(e.path()).map_err(io)?;
            }
        }
        let spec = self.spec();
        for (file, state) in &self.states {
            st::validate(state).map_err(|e| format!("{}: {file}: {e}", self.name))?;
            let yaml = yaml_serde::to_string(state).map_err(|e| format!("{}: {e}", self.name))?;
            // Round trip through the real loader: the file must load as written.
            let back = st::State::from_yaml_str(&yaml)
                .map_err(|e| format!("{}: {file}: {e}", self.name))?;
            if &back != state {
                return Err(format!("{}: {file} does not round-trip", self.name));
            }
            let text = format!(
                "# Generated by `cargo run -p nodeplane-pcap-tests --bin gen-cases`; edit the generator.\n{yaml}"
            );
            std::fs::write(dir.join(file), text).map_err(io)?;
        }
        for input in &spec.inputs {
            let frames: Vec<(Duration, Vec<u8>)> = self
                .packets
                .iter()
                .filter(|p| p.1 == input.iface)
                .map(|(t, _, f)| {
                    (
                        Duration::from_secs(EPOCH_SECS) + Duration::from_micros(*t),
                        f.clone(),
                    )
                })
                .collect();
            write_pcap(&dir.join(&input.file), &frames).map_err(io)?;
        }
        let json = serde_json::to_string_pretty(&spec).map_err(|e| e.to_string())? + "\n";
        std::fs::write(dir.join("case.json"), json).map_err(io)?;
        let mut flags = Vec::new();
        if let Some(a) = &self.removed_flow_action {
            flags.push(format!("`--removed-flow-action {a}`"));
        }
        if self.events {
            flags.push("`--events` (flow events pinned in `expected/events.jsonl`)".to_string());
        }
        if self.services {
            flags.push("per-service counters pinned in `expected/summary.json`".to_string());
        }
        let mut readme = format!("# {}\n\n{}\n\n", self.name, self.readme);
        if !flags.is_empty() {
            readme += &format!("Replay: {}.\n\n", flags.join("; "));
        }
        readme += "## Packets\n\n";
        readme += "| # | t (s) | in | what | expected |\n|---|---|---|---|---|\n";
        for (e, (t, iface, _)) in self.expects.iter().zip(&self.packets) {
            readme += &format!(
                "| {} | {:.3} | {} | {} | {} |\n",
                e.index,
                *t as f64 / 1e6,
                iface,
                e.what,
                summarize(e)
            );
        }
        if !self.state_at.is_empty() {
            readme += "\n## State changes\n\n";
            for s in &self.state_at {
                readme += &format!("- at {} s: `{}`\n", s.seconds, s.state);
            }
        }
        std::fs::write(dir.join("README.md"), readme).map_err(io)?;
        Ok(())
    }
}

fn summarize(e: &Expect) -> String {
    let mut parts = Vec::new();
    if let Some(v) = &e.verdict {
        parts.push(v.clone());
    }
    if let Some(v) = &e.verdict_not {
        parts.push(format!("not {v}"));
    }
    if let Some(v) = &e.reason {
        parts.push(format!("`{v}`"));
    }
    if let Some(v) = &e.reason_prefix {
        parts.push(format!("`{v}*`"));
    }
    if let Some(v) = &e.egress {
        parts.push(format!("→ {v}"));
    }
    if e.rst == Some(true) {
        parts.push("as a TCP reset to its sender".into());
    }
    if e.rejected == Some(true) {
        parts.push("rejected: a TCP reset or ICMP port unreachable back to its sender".into());
    }
    if let (Some(mtu), Some(from)) = (e.frag_needed, &e.frag_needed_from) {
        parts.push(format!(
            "answered: ICMP frag-needed / packet-too-big (MTU {mtu}) from {from} back to its sender"
        ));
    }
    if let Some(v) = &e.ct {
        parts.push(format!("ct {v}"));
    }
    if let Some(v) = &e.backend {
        parts.push(format!("backend {v}"));
    }
    if let Some(v) = &e.backend_in {
        parts.push(format!("backend one of {}", v.join(", ")));
    }
    if let Some(v) = &e.backend_not {
        parts.push(format!("backend not {v}"));
    }
    if let Some(v) = e.backend_same_as {
        parts.push(format!("backend as #{v}"));
    }
    if e.backend_none == Some(true) {
        parts.push("no backend".into());
    }
    if let Some(v) = &e.policy {
        parts.push(format!("policy {v}"));
    }
    if let Some(v) = &e.out_src {
        parts.push(format!("out src {v}"));
    }
    if let Some(v) = &e.out_dst {
        parts.push(format!("out dst {v}"));
    }
    if let Some(v) = &e.out_inner_src {
        parts.push(format!("quoted src {v}"));
    }
    if let Some(v) = &e.out_inner_dst {
        parts.push(format!("quoted dst {v}"));
    }
    parts.join(", ")
}

/// Writes every case under `root` (one directory per case), leaving `expected/` alone.
pub fn generate(root: &Path) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for case in all_cases() {
        case.write(&root.join(&case.name))?;
        names.push(case.name.clone());
    }
    Ok(names)
}

// ---- expectation shorthands ----

pub fn x(what: &str) -> Expect {
    Expect {
        what: what.into(),
        ..Default::default()
    }
}

/// Builder methods on `Expect` for terse case code.
pub trait ExpectExt {
    fn fwd(self, egress: &str) -> Self;
    fn pass(self) -> Self;
    fn drop_(self, reason: &str) -> Self;
    /// Answered by a TCP reset sent back out of `ingress` (its input interface).
    fn rst(self, ingress: &str) -> Self;
    /// Dropped `no-backend` and answered with a reject (reset or port unreachable).
    fn rejected(self) -> Self;
    /// Dropped `frag-needed` and answered with an ICMP frag-needed / packet-too-big announcing
    /// `mtu`, from `from`.
    fn frag_needed(self, mtu: u16, from: &str) -> Self;
    fn ct(self, ct: &str) -> Self;
    fn backend(self, b: &str) -> Self;
    fn policy(self, p: &str) -> Self;
    fn out_src(self, s: &str) -> Self;
    fn out_dst(self, s: &str) -> Self;
}

impl ExpectExt for Expect {
    fn fwd(mut self, egress: &str) -> Self {
        self.verdict = Some("forward".into());
        self.egress = Some(egress.into());
        self
    }
    fn pass(mut self) -> Self {
        self.verdict = Some("pass".into());
        self
    }
    fn drop_(mut self, reason: &str) -> Self {
        self.verdict = Some("drop".into());
        if let Some(p) = reason.strip_suffix('*') {
            self.reason_prefix = Some(p.into());
        } else {
            self.reason = Some(reason.into());
        }
        self
    }
    fn rst(mut self, ingress: &str) -> Self {
        self = self.fwd(ingress);
        self.rst = Some(true);
        self
    }
    fn rejected(mut self) -> Self {
        self = self.drop_("no-backend");
        self.rejected = Some(true);
        self
    }
    fn frag_needed(mut self, mtu: u16, from: &str) -> Self {
        self = self.drop_("frag-needed");
        self.frag_needed = Some(mtu);
        self.frag_needed_from = Some(from.into());
        self
    }
    fn ct(mut self, ct: &str) -> Self {
        self.ct = Some(ct.into());
        self
    }
    fn backend(mut self, b: &str) -> Self {
        self.backend = Some(b.into());
        self
    }
    fn policy(mut self, p: &str) -> Self {
        self.policy = Some(p.into());
        self
    }
    fn out_src(mut self, s: &str) -> Self {
        self.out_src = Some(s.into());
        self
    }
    fn out_dst(mut self, s: &str) -> Self {
        self.out_dst = Some(s.into());
        self
    }
}
