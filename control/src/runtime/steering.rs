//! The XDP program's steering configuration, derived from the published tables.
//!
//! What the kernel program steers to the AF_XDP sockets (rules in `xdp-redirect/bpf/redirect.c`):
//! - every pod interface of the state (all their unicast IP traffic);
//! - on the uplink: the PodCIDRs and every service frontend address (ClusterIP, LB IPs);
//! - NodePorts: (node IP, protocol, port) of every NodePort/LoadBalancer service;
//! - source NAT: TCP/UDP to a node IP in `node.snat_port_range` (the replies of flows the
//!   pipeline masqueraded to that node IP, and of NodePort hairpin), on every interface,
//!   ahead of the `host_addrs` rule below; with a host interface also to the host-network
//!   masquerade sources `169.254.0.1` / `100::1` (the node's answers to remote clients of its
//!   host-network backends, arriving on the host interface);
//! - *not* steered (`host_addrs`): the node IPs and every address the node's kernel holds on
//!   the dataplane's interfaces (the pods' gateway, e.g. `10.244.1.1`), so pods reach the node
//!   itself, its DNS stub or kubelet through the kernel, and such frames never need to be
//!   re-injected from userspace. With a host interface (role `host`, runtime/host.rs) the node
//!   IPs are left out: pods' traffic to them goes through the pipeline and out of the host
//!   interface, so that the replies of the node's own flows to pods and services meet their
//!   conntrack entry; the host interface itself is steered whole.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use nodeplane_dataplane::flow::{PROTO_TCP, PROTO_UDP};
use nodeplane_dataplane::{snat, Tables};
use nodeplane_state::InterfaceRole;
use nodeplane_xdp::{NodePort, Proto, SnatAddr, SteeringConfig};

/// Builds the steering configuration. `ifindex` resolves an interface name (in the node's
/// network namespace); `kernel_addrs` are the addresses the kernel holds on the dataplane's
/// interfaces. Interfaces that do not resolve are left out and returned by name.
pub fn steering_config(
    t: &Tables,
    ifindex: impl Fn(&str) -> Option<u32>,
    kernel_addrs: &[IpAddr],
) -> (SteeringConfig, Vec<String>) {
    let mut missing = Vec::new();
    let mut pods = BTreeSet::new();
    for i in &t.ifaces {
        // The host interface is steered whole, like a pod interface.
        if i.role != InterfaceRole::Uplink {
            match ifindex(&i.name) {
                Some(x) => {
                    pods.insert(x);
                }
                None => missing.push(i.name.clone()),
            }
        }
    }
    let mut prefixes: BTreeSet<IpNet> = BTreeSet::new();
    for (net, len) in &t.pod_cidrs {
        if let Ok(n) = IpNet::new(net.to_ip(), *len) {
            prefixes.insert(n.trunc());
        }
    }
    for a in t.service_ips.keys() {
        prefixes.insert(IpNet::from(a.to_ip()));
    }
    let mut hosts: BTreeSet<IpAddr> = t.node_ips.iter().map(|a| a.to_ip()).collect();
    hosts.extend(kernel_addrs.iter().map(|a| a.to_canonical()));
    if t.host().is_some() {
        // The node IPs are steered from the pod interfaces then (the pipeline forwards the
        // pods' traffic to the node out of the host interface, where the replies of the node's
        // own flows to pods and services come back in); on the uplink nothing steers them but
        // the node ports.
        for a in &t.node_ips {
            hosts.remove(&a.to_ip());
        }
    }
    let mut nodeports = BTreeSet::new();
    for k in t.frontends.keys() {
        if !t.is_node_ip(&k.addr) {
            continue;
        }
        let proto = match k.proto {
            PROTO_TCP => Proto::Tcp,
            PROTO_UDP => Proto::Udp,
            _ => continue,
        };
        nodeports.insert((k.addr.to_ip(), proto, k.port));
    }
    // Every address the pipeline source-NATs to is a node IP (or a service VIP, for hairpin
    // through a ClusterIP: steered as a prefix already), and with a host interface the
    // host-network masquerade sources of the node IPs' families, whose replies the node sends
    // to the host interface (the XDP program checks `snat_addrs` before it passes link-local).
    let mut snat_ips: Vec<IpAddr> = t.node_ips.iter().map(|a| a.to_ip()).collect();
    if t.host().is_some() {
        for v6 in [false, true] {
            if t.node_ips.iter().any(|a| a.v6 == v6) {
                snat_ips.push(snat::host_snat_addr(v6).to_ip());
            }
        }
    }
    let snat = snat_ips
        .into_iter()
        .map(|addr| SnatAddr {
            addr,
            first: t.snat_ports.first,
            last: t.snat_ports.last,
        })
        .collect();
    let cfg = SteeringConfig {
        pod_ifindexes: pods.into_iter().collect(),
        prefixes: prefixes.into_iter().collect(),
        host_addrs: hosts.into_iter().collect(),
        nodeports: nodeports
            .into_iter()
            .map(|(addr, proto, port)| NodePort { addr, proto, port })
            .collect(),
        snat,
    };
    (cfg, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeplane_dataplane::MaglevCache;

    #[test]
    fn example_node_steering() {
        let state = nodeplane_state::example::state().unwrap();
        let t = Tables::build(&state, 1, &mut MaglevCache::default());
        let idx = |n: &str| match n {
            "pod-client" => Some(11),
            "pod-web1" => Some(12),
            "uplink0" => Some(10),
            _ => None,
        };
        let gw: IpAddr = "10.244.1.1".parse().unwrap();
        let (cfg, missing) = steering_config(&t, idx, &[gw]);
        assert_eq!(missing, vec!["pod-web2".to_string()]);
        assert_eq!(cfg.pod_ifindexes, vec![11, 12]);
        let p: Vec<String> = cfg.prefixes.iter().map(|p| p.to_string()).collect();
        for want in [
            "10.244.1.0/24",
            "fd00:244:1::/64",
            "10.96.0.10/32",
            "10.96.0.53/32",
            "10.96.0.11/32",
            "203.0.113.10/32",
            "fd00:96::10/128",
        ] {
            assert!(p.contains(&want.to_string()), "{want} in {p:?}");
        }
        // Node IPs are hosts, never steered prefixes.
        assert!(!p.iter().any(|x| x.starts_with("192.168.100.2")));
        let h: Vec<String> = cfg.host_addrs.iter().map(|a| a.to_string()).collect();
        assert_eq!(h, vec!["10.244.1.1", "192.168.100.2", "fd00:100::2"]);
        let np: Vec<String> = cfg
            .nodeports
            .iter()
            .map(|n| format!("{} {} {}", n.addr, n.proto, n.port))
            .collect();
        assert_eq!(
            np,
            vec![
                "192.168.100.2 tcp 30080",
                "192.168.100.2 udp 30053",
                "192.168.100.2 udp 30054",
                "fd00:100::2 tcp 30080",
                "fd00:100::2 udp 30053",
                "fd00:100::2 udp 30054",
            ]
        );
        let s: Vec<String> = cfg
            .snat
            .iter()
            .map(|s| format!("{} {}-{}", s.addr, s.first, s.last))
            .collect();
        assert_eq!(
            s,
            vec!["192.168.100.2 61000-65535", "fd00:100::2 61000-65535"]
        );
        cfg.encode().expect("the XDP maps hold it");
    }

    /// With a host interface, the host-network masquerade sources of the node IPs' families
    /// join the node IPs in `snat_addrs`.
    #[test]
    fn host_interface_steers_the_masquerade_sources() {
        let mut state = nodeplane_state::example::state().unwrap();
        state.interfaces.push(nodeplane_state::Interface {
            name: "nph1".into(),
            role: InterfaceRole::Host,
            mac: nodeplane_state::MacAddr([2, 0, 0, 0, 0, 0x11]),
            gateway_mac: Some(nodeplane_state::MacAddr([2, 0, 0, 0, 0, 0x10])),
            peer: Some("nph0".into()),
            mtu: None,
        });
        let t = Tables::build(&state, 1, &mut MaglevCache::default());
        assert!(t.host().is_some());
        let (cfg, _) = steering_config(&t, |_| Some(1), &[]);
        let s: Vec<String> = cfg.snat.iter().map(|s| s.addr.to_string()).collect();
        assert_eq!(
            s,
            vec!["192.168.100.2", "fd00:100::2", "169.254.0.1", "100::1"]
        );
        cfg.encode().expect("the XDP maps hold it");
    }
}
