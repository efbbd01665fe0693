//! Shared fixtures for the benchmarks: synthetic node states of any size and frames of
//! established and new connections.
//!
//! The synthetic node is the example node's shape scaled up: `services` ClusterIP services
//! (10.96.0.0/12 VIPs, TCP port 80), each with 2 backends drawn from a pool of 64 local pods
//! behind 2 pod interfaces, maglev; one client pod; an ingress policy on every backend pod
//! allowing the client's identity on 8080.
//!
//! The packet-path benchmarks need only `nodeplane-dataplane` without AF_XDP (no libxdp, no
//! clang): build with `--no-default-features`. The `harness` feature (default) adds the
//! end-to-end binaries and the etcd fleet simulation.

#[cfg(feature = "harness")]
pub mod fleet;
pub mod plot;

use std::net::{IpAddr, Ipv4Addr};

use etherparse::PacketBuilder;
use nodeplane_state::{
    Algorithm, Backend, BackendState, ConntrackSettings, Endpoint, Frontend, Interface,
    InterfaceRole, L4Proto, MacAddr, Node, Policy, PolicyMode, PortRange, Rule, RuleAction,
    RuleProto, Service, ServiceType, State,
};

pub const CLIENT: [u8; 4] = [10, 244, 0, 10];
pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 2, 10];
pub const POD_BACKENDS: u32 = 64;

/// The VIP of service `i`.
pub fn vip(i: u32) -> [u8; 4] {
    let n = (10u32 << 24 | 96 << 16) + 1 + i;
    n.to_be_bytes()
}

fn backend_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1 + (i / 200) as u8, (i % 200) as u8 + 20)
}

/// A node with `services` ClusterIP services and room for `ct_entries` flows.
pub fn state(services: u32, ct_entries: u32) -> State {
    let mut s = State {
        node: Node {
            name: "bench".into(),
            pod_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
            node_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 100, 2))],
            policy_mode: PolicyMode::Enforce,
            maglev_table_size: nodeplane_state::DEFAULT_MAGLEV_TABLE_SIZE,
            ..Default::default()
        },
        conntrack: ConntrackSettings {
            max_entries: ct_entries,
            ..Default::default()
        },
        ..Default::default()
    };
    s.interfaces = vec![
        Interface {
            name: "uplink0".into(),
            role: InterfaceRole::Uplink,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            gateway_mac: Some(MacAddr([2, 0, 0, 0, 0, 0xfe])),
            peer: None,
            mtu: None,
        },
        Interface {
            name: "pod-client".into(),
            role: InterfaceRole::Pod,
            mac: MacAddr([2, 0, 0, 0, 1, 1]),
            gateway_mac: None,
            peer: None,
            mtu: None,
        },
        Interface {
            name: "pod-web".into(),
            role: InterfaceRole::Pod,
            mac: MacAddr([2, 0, 0, 0, 1, 2]),
            gateway_mac: None,
            peer: None,
            mtu: None,
        },
    ];
    s.endpoints.push(Endpoint {
        name: "client".into(),
        ips: vec![IpAddr::V4(Ipv4Addr::from(CLIENT))],
        mac: MacAddr(CLIENT_MAC),
        interface: "pod-client".into(),
        identity: 1001,
        labels: Default::default(),
    });
    for i in 0..POD_BACKENDS {
        s.endpoints.push(Endpoint {
            name: format!("web-{i}"),
            ips: vec![IpAddr::V4(backend_ip(i))],
            mac: MacAddr([2, 0, 0, 1, 0, i as u8]),
            interface: "pod-web".into(),
            identity: 1002,
            labels: Default::default(),
        });
        s.policies.push(Policy {
            endpoint: format!("web-{i}"),
            ingress: vec![Rule {
                action: RuleAction::Allow,
                identities: vec![1001],
                cidrs: vec![],
                protocol: RuleProto::TCP,
                ports: vec![PortRange {
                    port: 8080,
                    end_port: None,
                }],
            }],
            egress: vec![],
        });
    }
    for i in 0..services {
        // Two backends per service; pairs repeat across services, as pods back many services.
        let a = i % POD_BACKENDS;
        let b = (i / POD_BACKENDS + a + 1) % POD_BACKENDS;
        s.services.push(Service {
            name: format!("svc-{i}"),
            kind: ServiceType::ClusterIP,
            frontends: vec![Frontend {
                ip: IpAddr::V4(Ipv4Addr::from(vip(i))),
                port: 80,
                protocol: L4Proto::TCP,
            }],
            node_ports: vec![],
            algorithm: Algorithm::Maglev,
            affinity: None,
            internal_traffic_policy: Default::default(),
            external_traffic_policy: Default::default(),
            health_check_node_port: None,
            load_balancer_source_ranges: Vec::new(),
            global: false,
            backends: [a, b]
                .iter()
                .map(|j| Backend {
                    ip: IpAddr::V4(backend_ip(*j)),
                    port: 8080,
                    weight: 1,
                    state: BackendState::Active,
                    ready: None,
                    serving: None,
                    terminating: None,
                })
                .collect(),
        });
    }
    s
}

/// A 64-byte-payload TCP frame from the client to service `svc` from port `sport`.
pub fn client_frame(svc: u32, sport: u16, syn: bool) -> Vec<u8> {
    client_frame_from(CLIENT, svc, sport, syn)
}

/// [`client_frame`] from another source address (the client endpoint may be given more).
pub fn client_frame_from(src: [u8; 4], svc: u32, sport: u16, syn: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, [2, 0, 0, 0, 1, 1])
        .ipv4(src, vip(svc), 64)
        .tcp(sport, 80, 1, 65535);
    b = if syn { b.syn() } else { b.ack(1) };
    let mut f = Vec::with_capacity(128);
    b.write(&mut f, &[0u8; 10]).expect("frame");
    f
}

/// [`client_frame`] with `payload` bytes of data.
pub fn client_frame_sized(svc: u32, sport: u16, syn: bool, payload: usize) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, [2, 0, 0, 0, 1, 1])
        .ipv4(CLIENT, vip(svc), 64)
        .tcp(sport, 80, 1, 65535);
    b = if syn { b.syn() } else { b.ack(1) };
    let data: Vec<u8> = (0..payload).map(|i| (i * 7 + 1) as u8).collect();
    let mut f = Vec::with_capacity(payload + 64);
    b.write(&mut f, &data).expect("frame");
    f
}

/// Turns a TCP/IPv4 frame's checksum into what a sender with TX checksum offload leaves there
/// (CHECKSUM_PARTIAL: the folded pseudo-header sum), as pods at default offloads send on veth.
pub fn make_partial(frame: &mut [u8]) {
    use nodeplane_dataplane::wire::{at, ethernet, ipv4, tcp};
    let l3 = ethernet::HEADER_LEN;
    let ihl = usize::from(frame[l3 + ipv4::VER_IHL] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes(
        frame[at(l3, ipv4::TOTAL_LEN)].try_into().expect("2 bytes"),
    ));
    let len = total - ihl;
    // The pseudo-header: both addresses as 16-bit words, the protocol, the L4 length.
    let mut s: u32 = frame[at(l3, ipv4::ADDRS)]
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    s += u32::from(frame[l3 + ipv4::PROTOCOL]) + len as u32;
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    frame[at(l3 + ihl, tcp::CHECKSUM)].copy_from_slice(&(s as u16).to_be_bytes());
}

/// A simple deterministic PRNG for spreading flows over services.
pub fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
