//! Every golden case. Each function returns one case: the state, the packets, and what each
//! packet must show (checked by `tests/golden.rs` on top of the byte-for-byte goldens).

use std::net::IpAddr;

use etherparse::{icmpv4, icmpv6, Icmpv4Type, Icmpv6Type};
use nodeplane_state as st;
use st::{BackendState::*, L4Proto, RuleAction, ServiceType};

use super::*;
use crate::pkt::{self, Flags, ACK, FINACK, L4, PSHACK, RST, SYN, SYNACK};
use crate::spec::{BackendShare, Expect};
use crate::wire::endpoint;

pub fn all_cases() -> Vec<Case> {
    vec![
        clusterip_tcp_v4(),
        clusterip_tcp_remote_backend(false),
        clusterip_tcp_v6(),
        clusterip_tcp_remote_backend(true),
        clusterip_udp(false),
        clusterip_udp(true),
        nodeport(false),
        nodeport(true),
        nodeport_remote_snat(false),
        nodeport_remote_snat(true),
        snat_port_clash(false),
        snat_port_clash(true),
        hairpin(false),
        hairpin(true),
        host_interface(false),
        host_interface(true),
        host_network_nodeport(false),
        host_network_nodeport(true),
        masquerade_parity(false),
        masquerade_parity(true),
        externalip(),
        loadbalancer(),
        maglev_weights(false),
        maglev_weights(true),
        random_algorithm(false),
        random_algorithm(true),
        random_weights(false),
        random_weights(true),
        affinity_clientip(false),
        affinity_clientip(true),
        backend_terminating_midflow(false),
        backend_terminating_midflow(true),
        backend_quarantined(false),
        backend_quarantined(true),
        no_backend(),
        reject_rate_limit(),
        terminating_fallback(),
        traffic_policy_local(),
        lb_source_ranges(),
        service_removed_midflow(false),
        service_removed_midflow(true),
        policy_ingress_ports(),
        policy_port_range(),
        policy_cidr(),
        policy_egress(),
        policy_deny_wins(),
        policy_audit(),
        policy_allow_all(),
        policy_stateful_replies(),
        policy_change_midflow(false),
        policy_change_midflow(true),
        policy_service_backend(false),
        policy_service_backend(true),
        pod_to_pod(),
        partial_checksums(false),
        partial_checksums(true),
        pod_to_remote(),
        egress_mtu(),
        anti_spoofing(),
        ttl(),
        icmp_echo(false),
        icmp_echo(true),
        icmp_error_v4(),
        icmp_error_v6(),
        icmp_error_masqueraded(false),
        icmp_error_masqueraded(true),
        frag_in_order(false),
        frag_in_order(true),
        frag_out_of_order(false),
        frag_out_of_order(true),
        frag_timeout(false),
        frag_timeout(true),
        vlan_tagged(),
        ipv4_options(),
        ipv6_ext_headers(),
        malformed(),
        udp_length(false),
        udp_length(true),
        ct_full(false),
        ct_full(true),
        ct_timeouts(false),
        ct_timeouts(true),
        non_ip_pass(),
        uplink_host_pass(),
        backend_removed_rst(false),
        backend_removed_rst(true),
        service_counters(),
        flow_events(),
    ]
}

// ---- flows ----

/// A TCP or UDP conversation: the client addresses `dst`; `server` answers from `sip:sport`
/// (the backend after DNAT, or `dst` itself without a service).
#[derive(Debug, Clone)]
pub struct Conn {
    pub client: Host,
    pub cip: IpAddr,
    pub cport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub server: Host,
    pub sip: IpAddr,
    pub sport: u16,
    pub udp: bool,
    /// Source NAT: the server sees the client as this address and port.
    pub snat: Option<(IpAddr, u16)>,
    cseq: u32,
    sseq: u32,
}

impl Conn {
    pub fn new(
        client: &Host,
        cip: IpAddr,
        cport: u16,
        dst: (IpAddr, u16),
        server: &Host,
        s: (IpAddr, u16),
    ) -> Conn {
        Conn {
            client: client.clone(),
            cip,
            cport,
            dst: dst.0,
            dport: dst.1,
            server: server.clone(),
            sip: s.0,
            sport: s.1,
            udp: false,
            snat: None,
            cseq: 0x1000_0000 + u32::from(cport) * 977,
            sseq: 0x5000_0000 + u32::from(cport) * 131,
        }
    }
    pub fn udp(mut self) -> Conn {
        self.udp = true;
        self
    }
    /// The flow is source-NATed to `addr:port` (the server answers there).
    pub fn snat(mut self, addr: IpAddr, port: u16) -> Conn {
        self.snat = Some((addr, port));
        self
    }
    /// The client as the server sees it.
    pub fn seen_client(&self) -> (IpAddr, u16) {
        self.snat.unwrap_or((self.cip, self.cport))
    }
    /// The port the pipeline's allocator gives this flow's source NAT, with `taken` ports
    /// already holding the reply tuple (one worker: every port is the worker's).
    pub fn snat_port(&self, taken: &[u16]) -> u16 {
        use nodeplane_dataplane::flow::{Addr, FlowKey};
        use nodeplane_dataplane::snat::{allocate, PortRange};
        let key = FlowKey {
            src: Addr::from(self.cip),
            dst: Addr::from(self.dst),
            sport: self.cport,
            dport: self.dport,
            proto: if self.udp { 17 } else { 6 },
        };
        allocate(
            PortRange::default(),
            self.cport,
            key.stable_hash(),
            |_| true,
            |p| !taken.contains(&p),
        )
        .expect("a free port")
    }
    fn is_service(&self) -> bool {
        (self.dst, self.dport) != (self.sip, self.sport)
    }
    pub fn client_ep(&self) -> String {
        endpoint(self.cip, Some(self.cport))
    }
    pub fn frontend_ep(&self) -> String {
        endpoint(self.dst, Some(self.dport))
    }
    pub fn backend_ep(&self) -> String {
        endpoint(self.sip, Some(self.sport))
    }

    fn l4(&self, from_client: bool, flags: Flags) -> L4 {
        let (sport, dport, seq, ack) = if from_client {
            (self.cport, self.dport, self.cseq, self.sseq)
        } else {
            (self.sport, self.cport, self.sseq, self.cseq)
        };
        if self.udp {
            L4::Udp { sport, dport }
        } else {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
            }
        }
    }

    fn advance(seq: &mut u32, flags: Flags, len: usize) {
        *seq = seq
            .wrapping_add(len as u32)
            .wrapping_add(u32::from(flags.syn) + u32::from(flags.fin));
    }

    /// Client → frontend.
    pub fn c(&mut self, case: &mut Case, flags: Flags, len: usize, e: Expect) -> usize {
        let l4 = self.l4(true, flags);
        let idx = case.send(&self.client.clone(), self.cip, self.dst, l4, len, e);
        Self::advance(&mut self.cseq, flags, len);
        idx
    }

    /// Server (backend) → client (or its source NAT).
    pub fn s(&mut self, case: &mut Case, flags: Flags, len: usize, e: Expect) -> usize {
        let mut l4 = self.l4(false, flags);
        let (to, to_port) = self.seen_client();
        match &mut l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = to_port,
            _ => {}
        }
        let idx = case.send(&self.server.clone(), self.sip, to, l4, len, e);
        Self::advance(&mut self.sseq, flags, len);
        idx
    }

    /// Expectation for a forwarded client packet.
    pub fn fc(&self, what: &str, ct: &str) -> Expect {
        let (seen, seen_port) = self.seen_client();
        let mut e = x(what)
            .fwd(self.server.iface)
            .ct(ct)
            .out_src(&endpoint(seen, Some(seen_port)))
            .out_dst(&self.backend_ep());
        if self.is_service() {
            e = e.backend(&self.backend_ep());
            e.has_service = Some(true);
        } else {
            e.backend_none = Some(true);
        }
        e
    }

    /// Expectation for a forwarded reply.
    pub fn fs(&self, what: &str) -> Expect {
        x(what)
            .fwd(self.client.iface)
            .ct("reply")
            .out_src(&self.frontend_ep())
            .out_dst(&self.client_ep())
    }

    /// SYN, SYN-ACK, ACK, all forwarded.
    pub fn handshake(&mut self, case: &mut Case) -> Vec<usize> {
        let e = self.fc("SYN", "new");
        let a = self.c(case, SYN, 0, e);
        let e = self.fs("SYN-ACK");
        let b = self.s(case, SYNACK, 0, e);
        let e = self.fc("ACK", "established");
        let c = self.c(case, ACK, 0, e);
        vec![a, b, c]
    }

    /// Request and response data with their ACKs.
    pub fn data(&mut self, case: &mut Case, req: usize, resp: usize) -> Vec<usize> {
        let e = self.fc("request data", "established");
        let a = self.c(case, PSHACK, req, e);
        let e = self.fs("ACK of request");
        let b = self.s(case, ACK, 0, e);
        let e = self.fs("response data");
        let c = self.s(case, PSHACK, resp, e);
        let e = self.fc("ACK of response", "established");
        let d = self.c(case, ACK, 0, e);
        vec![a, b, c, d]
    }

    /// FIN from the client, FIN-ACK from the server, last ACK.
    pub fn close(&mut self, case: &mut Case) -> Vec<usize> {
        let e = self.fc("FIN", "established");
        let a = self.c(case, FINACK, 0, e);
        let e = self.fs("FIN-ACK");
        let b = self.s(case, FINACK, 0, e);
        let e = self.fc("last ACK", "established");
        let c = self.c(case, ACK, 0, e);
        vec![a, b, c]
    }

    /// The whole conversation: 10 packets.
    pub fn exchange(&mut self, case: &mut Case) {
        self.handshake(case);
        self.data(case, 120, 900);
        self.close(case);
    }
}

fn v(v6: bool) -> &'static str {
    if v6 {
        "v6"
    } else {
        "v4"
    }
}

/// The address literal of the case's family.
fn pick(v6: bool, v4_addr: &'static str, v6_addr: &'static str) -> &'static str {
    if v6 {
        v6_addr
    } else {
        v4_addr
    }
}

/// A case that exists in both families: the IPv4 one keeps its original name, the IPv6 one gets
/// `-v6`.
fn v6_suffixed(name: &str, v6: bool) -> String {
    if v6 {
        format!("{name}-v6")
    } else {
        name.to_string()
    }
}

/// `IPv6: ` before the description of an IPv6 variant whose text names no address.
fn v6_prefix(v6: bool) -> &'static str {
    if v6 {
        "IPv6: "
    } else {
        ""
    }
}

fn state_with(services: Vec<st::Service>) -> st::State {
    let mut s = base_state();
    s.services = services;
    s
}

fn fwd_any(what: &str) -> Expect {
    let mut e = x(what);
    e.verdict = Some("forward".into());
    e
}

// ---- services ----

fn clusterip_tcp_v4() -> Case {
    let svc = service(
        "web",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[("10.96.0.10", 80)],
        vec![active("10.0.1.3", 8080)],
    );
    let mut c = Case::new(
        "clusterip-tcp-v4",
        "pod-a opens a TCP connection to the ClusterIP 10.96.0.10:80 whose only backend is the local \
         pod-b 10.0.1.3:8080: handshake, request/response, FIN close. Every client packet is DNATed to \
         the backend and leaves on veth-b (dst MAC = pod-b's MAC); every reply leaves on veth-a with its \
         source restored to 10.96.0.10:80. TTL is decremented, checksums stay valid. A second connection \
         from another source port gets the same backend.",
        state_with(vec![svc]),
    );
    let mut f = Conn::new(
        &pod_a(),
        ip("10.0.1.2"),
        40000,
        (ip("10.96.0.10"), 80),
        &pod_b(),
        (ip("10.0.1.3"), 8080),
    );
    f.exchange(&mut c);
    let mut g = Conn::new(
        &pod_a(),
        ip("10.0.1.2"),
        40001,
        (ip("10.96.0.10"), 80),
        &pod_b(),
        (ip("10.0.1.3"), 8080),
    );
    g.handshake(&mut c);
    c
}

fn clusterip_tcp_remote_backend(v6: bool) -> Case {
    let vip = pick(v6, "10.96.0.10", "fd00:96::10");
    let r = remote_pod();
    let svc = service(
        "web",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[(vip, 80)],
        vec![active(&r.ip(v6).to_string(), 8080)],
    );
    let mut c = Case::new(
        &format!("clusterip-tcp-{}-remote-backend", v(v6)),
        &format!(
            "pod-a connects to ClusterIP {} whose backend {} lives on another node. \
             Client packets are DNATed and leave on the uplink eth0 with dst MAC = gateway_mac; the \
             backend's replies enter on eth0 and leave on veth-a with source {}.",
            ep(vip, 80),
            endpoint(r.ip(v6), Some(8080)),
            ep(vip, 80)
        ),
        state_with(vec![svc]),
    );
    let a = pod_a();
    let mut f = Conn::new(&a, a.ip(v6), 40000, (ip(vip), 80), &r, (r.ip(v6), 8080));
    f.exchange(&mut c);
    c
}

fn clusterip_tcp_v6() -> Case {
    let svc = service(
        "web6",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[("fd00:96::10", 80)],
        vec![active("fd00:10:1::3", 8080)],
    );
    let mut c = Case::new(
        "clusterip-tcp-v6",
        "IPv6: pod-a connects to ClusterIP [fd00:96::10]:80, backend pod-b [fd00:10:1::3]:8080: full \
         exchange; requests DNATed to veth-b, replies restored to the VIP on veth-a; hop limit \
         decremented, TCP checksum (IPv6 pseudo-header) valid.",
        state_with(vec![svc]),
    );
    let mut f = Conn::new(
        &pod_a(),
        ip("fd00:10:1::2"),
        40000,
        (ip("fd00:96::10"), 80),
        &pod_b(),
        (ip("fd00:10:1::3"), 8080),
    );
    f.exchange(&mut c);
    c
}

fn clusterip_udp(v6: bool) -> Case {
    let (vip, be) = if v6 {
        ("fd00:96::53", "fd00:10:1::4")
    } else {
        ("10.96.0.53", "10.0.1.4")
    };
    let svc = service(
        "dns",
        ServiceType::ClusterIP,
        L4Proto::UDP,
        &[(vip, 53)],
        vec![active(be, 5353)],
    );
    let mut c = Case::new(
        &format!("clusterip-udp-{}", v(v6)),
        &format!(
            "UDP service {vip} port 53 → pod-c {be} port 5353. Two queries from pod-a (two source ports), \
             each answered: queries DNATed to veth-c (ct new), responses restored to the VIP on veth-a \
             (ct reply). A second query on the first flow is ct established."
        ),
        state_with(vec![svc]),
    );
    let a = pod_a();
    for port in [50000, 50001] {
        let mut f = Conn::new(&a, a.ip(v6), port, (ip(vip), 53), &pod_c(), (ip(be), 5353)).udp();
        let e = f.fc("query", "new");
        f.c(&mut c, ACK, 40, e);
        let e = f.fs("response");
        f.s(&mut c, ACK, 120, e);
        if port == 50000 {
            let e = f.fc("second query, same flow", "established");
            f.c(&mut c, ACK, 40, e);
            let e = f.fs("second response");
            f.s(&mut c, ACK, 120, e);
        }
    }
    c
}

fn nodeport(v6: bool) -> Case {
    let mut svc = service(
        "web-np",
        ServiceType::NodePort,
        L4Proto::TCP,
        &[(if v6 { "fd00:96::11" } else { "10.96.0.11" }, 80)],
        vec![active(if v6 { "fd00:10:1::3" } else { "10.0.1.3" }, 8080)],
    );
    svc.node_ports = vec![st::NodePort {
        port: 30080,
        protocol: L4Proto::TCP,
    }];
    let node_ips: Vec<&str> = if v6 {
        vec![NODE_IP6]
    } else {
        vec![NODE_IP1, NODE_IP2]
    };
    let mut c = Case::new(
        &format!("nodeport-{}", v(v6)),
        &format!(
            "NodePort 30080 (TCP) on every node IP ({}) → pod-b port 8080. A world client connects \
             from the uplink to each node IP: DNAT to pod-b on veth-b; pod-b's replies leave on eth0 \
             (dst MAC = gateway) with the source restored to that node IP:30080. Then packets to a \
             port that is no NodePort on a node IP, and to the NodePort on an address that is not a \
             node IP, are passed to the kernel.",
            node_ips.join(", ")
        ),
        state_with(vec![svc]),
    );
    let w = world();
    let be = pod_b().ip(v6);
    for (i, nip) in node_ips.iter().enumerate() {
        let mut f = Conn::new(
            &w,
            w.ip(v6),
            51000 + i as u16,
            (ip(nip), 30080),
            &pod_b(),
            (be, 8080),
        );
        f.handshake(&mut c);
        f.data(&mut c, 80, 300);
    }
    let other_port = if v6 { NODE_IP6 } else { NODE_IP1 };
    c.send(
        &w,
        w.ip(v6),
        ip(other_port),
        L4::Tcp {
            sport: 51100,
            dport: 30081,
            seq: 1,
            ack: 0,
            flags: SYN,
        },
        0,
        x("SYN to node IP port 30081 (no NodePort): host traffic").pass(),
    );
    let not_node = if v6 {
        "2001:db8:99::1"
    } else {
        "198.51.100.99"
    };
    c.send(
        &w,
        w.ip(v6),
        ip(not_node),
        L4::Tcp {
            sport: 51101,
            dport: 30080,
            seq: 1,
            ack: 0,
            flags: SYN,
        },
        0,
        x("SYN to port 30080 of an address that is no node IP").pass(),
    );
    c
}

/// A NodePort service whose only backend is a pod on another node (issue 14 item 1).
fn nodeport_remote_service(v6: bool) -> st::Service {
    let mut svc = service(
        "web-np",
        ServiceType::NodePort,
        L4Proto::TCP,
        &[(pick(v6, "10.96.0.11", "fd00:96::11"), 80)],
        vec![active(pick(v6, "10.0.2.5", "fd00:10:2::5"), 8080)],
    );
    svc.node_ports = vec![st::NodePort {
        port: 30080,
        protocol: L4Proto::TCP,
    }];
    svc
}

fn nodeport_remote_snat(v6: bool) -> Case {
    let nip = pick(v6, NODE_IP1, NODE_IP6);
    let rp = remote_pod();
    let be = rp.ip(v6);
    let mut c = Case::new(
        &format!("nodeport-remote-snat-{}", v(v6)),
        &format!(
            "NodePort 30080 with externalTrafficPolicy Cluster whose only backend is {be}:8080 on \
             another node (Kubernetes: \"should be able to create a functioning NodePort service\" \
             with a remote endpoint). A world client connecting to {nip}:30080 is DNATed to the \
             backend and masqueraded to the node IP, so the backend answers this node: the first \
             connection from port 61234 (inside node.snat_port_range) keeps its port, the second \
             from 51000 gets a port of the range. The backend's replies to {nip} arrive on eth0 \
             and are reverse-translated (source {nip}:30080, destination the client) and sent \
             back to the gateway. A pod of this node reaching the ClusterIP of the same service \
             keeps its source (no SNAT inside the cluster)."
        ),
        state_with(vec![nodeport_remote_service(v6)]),
    );
    let w = world();
    for cport in [61234, 51000] {
        let mut f = Conn::new(&w, w.ip(v6), cport, (ip(nip), 30080), &rp, (be, 8080));
        let port = f.snat_port(&[]);
        f = f.snat(ip(nip), port);
        if cport == 61234 {
            assert_eq!(port, cport, "the original port comes first");
            f.exchange(&mut c);
        } else {
            f.handshake(&mut c);
            f.data(&mut c, 100, 700);
        }
    }
    let a = pod_a();
    let mut g = Conn::new(
        &a,
        a.ip(v6),
        40000,
        (ip(pick(v6, "10.96.0.11", "fd00:96::11")), 80),
        &rp,
        (be, 8080),
    );
    g.handshake(&mut c);
    c
}

fn snat_port_clash(v6: bool) -> Case {
    let nip = pick(v6, NODE_IP1, NODE_IP6);
    let vip = pick(v6, "10.96.0.11", "fd00:96::11");
    let mut svc = service(
        "web-np",
        ServiceType::NodePort,
        L4Proto::TCP,
        &[(vip, 80)],
        vec![active(pick(v6, "10.0.1.3", "fd00:10:1::3"), 8080)],
    );
    svc.node_ports = vec![st::NodePort {
        port: 30080,
        protocol: L4Proto::TCP,
    }];
    let a = pod_a();
    let b = pod_b();
    let mut c = Case::new(
        &format!("snat-port-clash-{}", v(v6)),
        &format!(
            "pod-a reaches the local backend pod-b:8080 through the ClusterIP {vip}:80 and then, \
             from the same source port 40000, through the NodePort {nip}:30080. Both flows would \
             have the reply tuple pod-b:8080 → pod-a:40000: the second one's source port is \
             remapped (address kept), as Linux's NAT does for a clashing tuple, instead of the \
             flow being dropped ct-invalid. Both connections exchange data; pod-b's replies on the \
             remapped port are restored to {nip}:30080 → pod-a:40000."
        ),
        state_with(vec![svc]),
    );
    let bip = b.ip(v6);
    let mut f = Conn::new(&a, a.ip(v6), 40000, (ip(vip), 80), &b, (bip, 8080));
    f.handshake(&mut c);
    let mut g = Conn::new(&a, a.ip(v6), 40000, (ip(nip), 30080), &b, (bip, 8080));
    let port = g.snat_port(&[40000]);
    g = g.snat(a.ip(v6), port);
    g.handshake(&mut c);
    f.data(&mut c, 80, 300);
    g.data(&mut c, 90, 400);
    c
}

fn hairpin(v6: bool) -> Case {
    let vip = pick(v6, "10.96.0.10", "fd00:96::10");
    let a = pod_a();
    let svc = service(
        "web",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[(vip, 80)],
        vec![active(pick(v6, "10.0.1.2", "fd00:10:1::2"), 8080)],
    );
    let mut c = Case::new(
        &format!("hairpin-{}", v(v6)),
        &format!(
            "pod-a reaches itself through its service (Kubernetes: \"should allow pods to hairpin \
             back to themselves through services\"): the ClusterIP {vip}:80's only backend is \
             pod-a:8080. The SYN is DNATed to pod-a and source-NATed to the service IP (a port \
             of node.snat_port_range), so pod-a's answer goes to the service IP, back through \
             the dataplane, and is restored to {vip}:80 → pod-a:40000. All on veth-a."
        ),
        state_with(vec![svc]),
    );
    let mut f = Conn::new(&a, a.ip(v6), 40000, (ip(vip), 80), &a, (a.ip(v6), 8080));
    let port = f.snat_port(&[]);
    f = f.snat(ip(vip), port);
    f.exchange(&mut c);
    c
}

/// The node's own stack behind the host interface (`nph1` here; its kernel end `nph0` has the
/// node IPs).
fn node_stack() -> Host {
    Host {
        iface: "nph1",
        mac: [2, 0, 0, 0, 0x0b, 0],
        node_mac: [2, 0, 0, 0, 0x0b, 1],
        v4: ip(NODE_IP1),
        v6: ip(NODE_IP6),
    }
}

fn host_interface(v6: bool) -> Case {
    let vip = pick(v6, "10.96.0.10", "fd00:96::10");
    let hvip = pick(v6, "10.96.0.11", "fd00:96::11");
    let (a, b, n) = (pod_a(), pod_b(), node_stack());
    let mut state = state_with(vec![
        service(
            "web",
            ServiceType::ClusterIP,
            L4Proto::TCP,
            &[(vip, 80)],
            vec![active(pick(v6, "10.0.1.2", "fd00:10:1::2"), 8080)],
        ),
        service(
            "host-web",
            ServiceType::ClusterIP,
            L4Proto::TCP,
            &[(hvip, 80)],
            vec![active(pick(v6, NODE_IP1, NODE_IP6), 8080)],
        ),
    ]);
    state.interfaces.push(st::Interface {
        name: n.iface.into(),
        role: st::InterfaceRole::Host,
        mac: st::MacAddr(n.node_mac),
        gateway_mac: Some(st::MacAddr(n.mac)),
        peer: Some("nph0".into()),
        mtu: None,
    });
    let mut c = Case::new(
        &format!("host-interface-{}", v(v6)),
        &format!(
            "The node's own traffic through the host interface nph1 (Kubernetes: \"should function \
             for node-Service: http\" and \"should function for service endpoints using \
             hostNetwork\"). The node ({node}) reaches the ClusterIP {vip}:80: DNAT to pod-a, \
             pod-a's answers go back out nph1 restored to {vip}:80. pod-b reaches {hvip}:80, whose \
             backend is the node itself ({node}:8080, a host-network pod): DNAT out nph1 into the \
             node's stack, its answers back to pod-b. A frame on nph1 from an address that is not \
             a node IP, and one on the uplink claiming a node IP, are dropped `spoofed-source`.",
            node = n.ip(v6),
        ),
        state,
    );
    let mut f = Conn::new(&n, n.ip(v6), 45000, (ip(vip), 80), &a, (a.ip(v6), 8080));
    f.exchange(&mut c);
    let mut g = Conn::new(&b, b.ip(v6), 41000, (ip(hvip), 80), &n, (n.ip(v6), 8080));
    g.exchange(&mut c);
    let other = pick(v6, "10.0.1.3", "fd00:10:1::3");
    c.send(
        &n,
        ip(other),
        ip(vip),
        syn(45001, 80),
        0,
        x(&format!("nph1 frame with source {other}")).drop_("spoofed-source"),
    );
    let w = world();
    c.send(
        &w,
        n.ip(v6),
        a.ip(v6),
        syn(45002, 8080),
        0,
        x("uplink frame claiming the node's address").drop_("spoofed-source"),
    );
    c
}

/// The host-network masquerade source of a family (`snat::HOST_SNAT_V4` / `HOST_SNAT_V6`).
fn host_snat(v6: bool) -> IpAddr {
    nodeplane_dataplane::snat::host_snat_addr(v6).to_ip()
}

fn host_network_nodeport(v6: bool) -> Case {
    let nip = pick(v6, NODE_IP1, NODE_IP6);
    let lb = pick(v6, "198.51.100.20", "2001:db8:100::20");
    let (a, n) = (pod_a(), node_stack());
    let mut np = service(
        "host-np",
        ServiceType::NodePort,
        L4Proto::TCP,
        &[(pick(v6, "10.96.0.11", "fd00:96::11"), 80)],
        vec![active(nip, 8080)],
    );
    np.node_ports = vec![
        st::NodePort {
            port: 30080,
            protocol: L4Proto::TCP,
        },
        st::NodePort {
            port: 30081,
            protocol: L4Proto::UDP,
        },
    ];
    let mut lbs = service(
        "host-lb",
        ServiceType::LoadBalancer,
        L4Proto::TCP,
        &[(pick(v6, "10.96.0.13", "fd00:96::13"), 80), (lb, 80)],
        vec![active(nip, 8081)],
    );
    lbs.external_traffic_policy = st::TrafficPolicy::Local;
    let mut state = state_with(vec![np, lbs]);
    state.interfaces.push(st::Interface {
        name: n.iface.into(),
        role: st::InterfaceRole::Host,
        mac: st::MacAddr(n.node_mac),
        gateway_mac: Some(st::MacAddr(n.mac)),
        peer: Some("nph0".into()),
        mtu: None,
    });
    let hs = host_snat(v6);
    let mut c = Case::new(
        &format!("host-network-nodeport-{}", v(v6)),
        &format!(
            "A remote client reaches a host-network backend (Kubernetes: \"should be able to \
             create a functioning NodePort service\" with an endpoint in the node's network \
             namespace). NodePort {nip}:30080's only backend is the node itself ({nip}:8080, \
             behind the host interface nph1). A world client's connection is DNATed to it and \
             masqueraded to {hs} (the host interface's far side, a port of node.snat_port_range): \
             the node's stack answers {hs} through nph1 (table 7600), never the client directly, \
             and the answers are restored to {nip}:30080 → the client and sent to the gateway. \
             The LoadBalancer VIP {lb}:80 with externalTrafficPolicy Local and the node as \
             backend ({nip}:8081) keeps the client's address (DNAT only, as kube-proxy): the \
             node's stack routes the answers of connections that came from the pair back into \
             it by their conntrack mark, and they are restored to {lb}:80 → the client. pod-a \
             reaching the \
             NodePort keeps its address (the node answers this node's pods through the pair). \
             A UDP datagram to node port 30081 (nothing listens on {nip}:8080/UDP) is \
             masqueraded the same way; the node's port unreachable to {hs}, arriving on nph1, \
             is translated back to the client: outer destination and quoted packet (client → \
             {nip}:30081)."
        ),
        state,
    );
    let w = world();
    let mut f = Conn::new(&w, w.ip(v6), 51000, (ip(nip), 30080), &n, (ip(nip), 8080));
    let port = f.snat_port(&[]);
    f = f.snat(hs, port);
    f.exchange(&mut c);
    let mut g = Conn::new(&w, w.ip(v6), 51001, (ip(lb), 80), &n, (ip(nip), 8081));
    g.handshake(&mut c);
    g.data(&mut c, 100, 700);
    let mut p = Conn::new(&a, a.ip(v6), 41000, (ip(nip), 30080), &n, (ip(nip), 8080));
    p.handshake(&mut c);
    let mut u = Conn::new(&w, w.ip(v6), 51002, (ip(nip), 30081), &n, (ip(nip), 8080)).udp();
    let port = u.snat_port(&[]);
    u = u.snat(hs, port);
    let e = u.fc("UDP datagram to a node port nothing listens behind", "new");
    u.c(&mut c, ACK, 40, e);
    // The datagram as the node's stack received it.
    let mut seen = c.pkt(
        &w,
        hs,
        ip(nip),
        L4::Udp {
            sport: port,
            dport: 8080,
        },
        40,
    );
    seen.ttl -= 1;
    let unreachable = if v6 {
        L4::Icmpv6(Icmpv6Type::DestinationUnreachable(
            icmpv6::DestUnreachableCode::Port,
        ))
    } else {
        L4::Icmpv4(Icmpv4Type::DestinationUnreachable(
            icmpv4::DestUnreachableHeader::Port,
        ))
    };
    let mut e = x("the node's port unreachable to the masquerade source")
        .fwd(UPLINK)
        .ct("related")
        .out_src(nip);
    e.out_dst = Some(w.ip(v6).to_string());
    e.out_inner_src = Some(endpoint(w.ip(v6), Some(51002)));
    e.out_inner_dst = Some(ep(nip, 30081));
    let mut icmp = c.pkt(&n, ip(nip), hs, unreachable, 0);
    icmp.payload = quote(&seen, false);
    c.raw(n.iface, icmp.build(), e);
    c
}

/// Which external-frontend flows are masqueraded, as kube-proxy's KUBE-EXT-* chains decide
/// (issue 14): backends on another node only.
fn masquerade_parity(v6: bool) -> Case {
    let nip = pick(v6, NODE_IP1, NODE_IP6);
    let rp = remote_pod();
    let be = rp.ip(v6);
    let (a, n) = (pod_a(), node_stack());
    let vip = pick(v6, "10.96.0.11", "fd00:96::11");
    let lb_cluster = pick(v6, "198.51.100.20", "2001:db8:100::20");
    let lb_local = pick(v6, "198.51.100.21", "2001:db8:100::21");
    let web = service(
        "web",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[(vip, 80)],
        vec![active(&be.to_string(), 8080)],
    );
    let lbc = service(
        "lb-cluster",
        ServiceType::LoadBalancer,
        L4Proto::TCP,
        &[(lb_cluster, 80)],
        vec![active(&be.to_string(), 8080)],
    );
    let mut lbl = service(
        "lb-local",
        ServiceType::LoadBalancer,
        L4Proto::TCP,
        &[(lb_local, 80)],
        vec![active(&be.to_string(), 8080)],
    );
    lbl.external_traffic_policy = st::TrafficPolicy::Local;
    let mut state = state_with(vec![web, lbc, lbl]);
    state.interfaces.push(st::Interface {
        name: n.iface.into(),
        role: st::InterfaceRole::Host,
        mac: st::MacAddr(n.node_mac),
        gateway_mac: Some(st::MacAddr(n.mac)),
        peer: Some("nph0".into()),
        mtu: None,
    });
    let mut c = Case::new(
        &format!("masquerade-parity-{}", v(v6)),
        &format!(
            "Source NAT of flows to a backend on another node ({be}:8080) as kube-proxy's \
             KUBE-EXT-* chains decide it. (1) pod-a → LoadBalancer VIP {lb_cluster}:80, \
             externalTrafficPolicy Cluster: masqueraded to the node IP {nip} (\"masquerade \
             traffic for external destinations\", pods included). (2) pod-a → LoadBalancer VIP \
             {lb_local}:80, externalTrafficPolicy Local: short-circuited to the cluster-wide \
             backend, pod-a's address kept (\"pod traffic for external destinations\"). (3) The \
             node itself (through the host interface nph1) → the same Local VIP and (4) → the \
             ClusterIP {vip}:80: the node IP kept, its port moved into node.snat_port_range \
             (\"masquerade LOCAL traffic\"), so that the backend's replies to {nip} are the \
             dataplane's; the replies come in on eth0 and go out nph1 restored."
        ),
        state,
    );
    let mut f = Conn::new(&a, a.ip(v6), 40000, (ip(lb_cluster), 80), &rp, (be, 8080));
    let port = f.snat_port(&[]);
    f = f.snat(ip(nip), port);
    f.handshake(&mut c);
    f.data(&mut c, 100, 300);
    let mut g = Conn::new(&a, a.ip(v6), 40001, (ip(lb_local), 80), &rp, (be, 8080));
    g.handshake(&mut c);
    g.data(&mut c, 100, 300);
    for (cport, dst) in [(45000, lb_local), (45001, vip)] {
        let mut h = Conn::new(&n, n.ip(v6), cport, (ip(dst), 80), &rp, (be, 8080));
        let port = h.snat_port(&[]);
        assert_ne!(port, cport, "an ephemeral port moves into the range");
        h = h.snat(n.ip(v6), port);
        h.handshake(&mut c);
        h.data(&mut c, 100, 300);
    }
    c
}

fn externalip() -> Case {
    let svc = service(
        "web-ext",
        ServiceType::ExternalIP,
        L4Proto::TCP,
        &[
            ("10.96.0.12", 443),
            ("198.51.100.10", 443),
            ("2001:db8:e::10", 443),
        ],
        vec![active("10.0.1.3", 8443), active("fd00:10:1::3", 8443)],
    );
    let mut c = Case::new(
        "externalip",
        "ExternalIP frontends 198.51.100.10:443 and [2001:db8:e::10]:443 (plus ClusterIP 10.96.0.12) → \
         pod-b port 8443. World clients connect from the uplink over IPv4 and IPv6: DNAT to pod-b \
         (same family), replies restored to the external IP and sent to the gateway.",
        state_with(vec![svc]),
    );
    let w = world();
    let mut f = Conn::new(
        &w,
        w.v4,
        52000,
        (ip("198.51.100.10"), 443),
        &pod_b(),
        (pod_b().v4, 8443),
    );
    f.handshake(&mut c);
    f.data(&mut c, 200, 1200);
    let mut g = Conn::new(
        &w,
        w.v6,
        52001,
        (ip("2001:db8:e::10"), 443),
        &pod_b(),
        (pod_b().v6, 8443),
    );
    g.handshake(&mut c);
    g.data(&mut c, 200, 1200);
    c
}

fn loadbalancer() -> Case {
    let mut svc = service(
        "web-lb",
        ServiceType::LoadBalancer,
        L4Proto::TCP,
        &[("10.96.0.13", 80), ("198.51.100.20", 80)],
        vec![active("10.0.1.3", 8080)],
    );
    svc.node_ports = vec![st::NodePort {
        port: 30090,
        protocol: L4Proto::TCP,
    }];
    let mut svc6 = service(
        "web-lb6",
        ServiceType::LoadBalancer,
        L4Proto::TCP,
        &[("fd00:96::13", 80), ("2001:db8:100::20", 80)],
        vec![active("fd00:10:1::4", 8080)],
    );
    svc6.node_ports = vec![st::NodePort {
        port: 30091,
        protocol: L4Proto::TCP,
    }];
    let mut c = Case::new(
        "loadbalancer",
        "LoadBalancer services: VIP 198.51.100.20:80 (+ NodePort 30090) → pod-b:8080, and IPv6 VIP \
         [2001:db8:100::20]:80 (+ NodePort 30091) → pod-c:8080. World clients reach the LB VIP and the \
         NodePort from the uplink; replies are restored to whichever frontend the client used.",
        state_with(vec![svc, svc6]),
    );
    let w = world();
    for (i, (fe, port)) in [("198.51.100.20", 80), (NODE_IP1, 30090)]
        .into_iter()
        .enumerate()
    {
        let mut f = Conn::new(
            &w,
            w.v4,
            53000 + i as u16,
            (ip(fe), port),
            &pod_b(),
            (pod_b().v4, 8080),
        );
        f.handshake(&mut c);
        f.data(&mut c, 64, 512);
    }
    for (i, (fe, port)) in [("2001:db8:100::20", 80), (NODE_IP6, 30091)]
        .into_iter()
        .enumerate()
    {
        let mut f = Conn::new(
            &w,
            w.v6,
            53100 + i as u16,
            (ip(fe), port),
            &pod_c(),
            (pod_c().v6, 8080),
        );
        f.handshake(&mut c);
        f.data(&mut c, 64, 512);
    }
    c
}

#[expect(
    clippy::too_many_arguments,
    reason = "a case-building helper; named call sites read better than a struct"
)]
fn many_syns(
    c: &mut Case,
    client: &Host,
    cip: IpAddr,
    vip: (IpAddr, u16),
    n: u16,
    first_port: u16,
    retransmits: u16,
    backends: &[String],
    egress: Option<&str>,
) {
    let mut firsts = Vec::new();
    for i in 0..n {
        let mut e = match egress {
            Some(eg) => x("SYN of a new flow").fwd(eg),
            None => fwd_any("SYN of a new flow"),
        };
        e.ct = Some("new".into());
        e.backend_in = Some(backends.to_vec());
        e.out_dst = Some("backend".into());
        let idx = c.send(
            client,
            cip,
            vip.0,
            L4::Tcp {
                sport: first_port + i,
                dport: vip.1,
                seq: u32::from(i) * 7919,
                ack: 0,
                flags: SYN,
            },
            0,
            e,
        );
        firsts.push(idx);
    }
    for i in 0..retransmits {
        let mut e = match egress {
            Some(eg) => x("SYN retransmit: same backend").fwd(eg),
            None => fwd_any("SYN retransmit: same backend"),
        };
        e.backend_same_as = Some(firsts[usize::from(i)]);
        e.out_dst = Some("backend".into());
        c.send(
            client,
            cip,
            vip.0,
            L4::Tcp {
                sport: first_port + i,
                dport: vip.1,
                seq: u32::from(i) * 7919,
                ack: 0,
                flags: SYN,
            },
            0,
            e,
        );
    }
}

fn maglev_weights(v6: bool) -> Case {
    let r = |n: u8| remote(&format!("10.0.2.{n}"), &format!("fd00:10:2::{n}")).ip(v6);
    let bips = [r(5), r(6), r(7)];
    let vip = ip(pick(v6, "10.96.0.30", "fd00:96::30"));
    let backends = bips
        .iter()
        .zip([1, 1, 2])
        .map(|(b, w)| backend(&b.to_string(), 8080, w, Active))
        .collect();
    let svc = service(
        "web-weighted",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[(&vip.to_string(), 80)],
        backends,
    );
    let mut c = Case::new(
        &v6_suffixed("maglev-weights", v6),
        &format!(
            "Maglev with weights 1:1:2 over three remote backends. 300 new flows (SYNs from pod-a, source \
             ports 20000..20299) to {}: each gets one of the backends, and the shares of new \
             flows are 25% / 25% / 50% within ±8 points. 20 SYN retransmits of earlier flows get the same \
             backend as their first SYN. All leave on eth0.",
            endpoint(vip, Some(80))
        ),
        state_with(vec![svc]),
    );
    let bes: Vec<String> = bips.iter().map(|b| endpoint(*b, Some(8080))).collect();
    many_syns(
        &mut c,
        &pod_a(),
        pod_a().ip(v6),
        (vip, 80),
        300,
        20000,
        20,
        &bes,
        Some(UPLINK),
    );
    c.backend_share = Some(BackendShare {
        shares: [
            (bes[0].clone(), 0.25),
            (bes[1].clone(), 0.25),
            (bes[2].clone(), 0.5),
        ]
        .into_iter()
        .collect(),
        tolerance: 0.08,
    });
    c
}

fn random_algorithm(v6: bool) -> Case {
    let vip = ip(pick(v6, "10.96.0.31", "fd00:96::31"));
    let (b, cc) = (pod_b().ip(v6), pod_c().ip(v6));
    let mut svc = service(
        "web-random",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[(&vip.to_string(), 80)],
        vec![active(&b.to_string(), 8080), active(&cc.to_string(), 8080)],
    );
    svc.algorithm = st::Algorithm::Random;
    // The IPv6 case came first and keeps its name.
    let name = if v6 {
        "random-algorithm"
    } else {
        "random-algorithm-v4"
    };
    let mut c = Case::new(
        name,
        &format!(
            "Random backend selection (IPv{} service {} → pod-b and pod-c port 8080): 200 new \
             flows from pod-a split about evenly (each backend 50% ±15 points; the replay's random source is \
             seeded so the output is reproducible), and 20 SYN retransmits stick to their flow's backend.",
            if v6 { 6 } else { 4 },
            endpoint(vip, Some(80))
        ),
        state_with(vec![svc]),
    );
    let bes: Vec<String> = [b, cc].iter().map(|b| endpoint(*b, Some(8080))).collect();
    many_syns(
        &mut c,
        &pod_a(),
        pod_a().ip(v6),
        (vip, 80),
        200,
        21000,
        20,
        &bes,
        None,
    );
    c.backend_share = Some(BackendShare {
        shares: [(bes[0].clone(), 0.5), (bes[1].clone(), 0.5)]
            .into_iter()
            .collect(),
        tolerance: 0.15,
    });
    c
}

/// Issue 13 item 1: `random` is weighted random, not uniform over the active backends.
fn random_weights(v6: bool) -> Case {
    let r = |n: u8| remote(&format!("10.0.2.{n}"), &format!("fd00:10:2::{n}")).ip(v6);
    let bips = [r(5), r(6), r(7)];
    let vip = ip(pick(v6, "10.96.0.32", "fd00:96::32"));
    let backends = bips
        .iter()
        .zip([1, 1, 2])
        .map(|(b, w)| backend(&b.to_string(), 8080, w, Active))
        .collect();
    let mut svc = service(
        "web-random-weighted",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[(&vip.to_string(), 80)],
        backends,
    );
    svc.algorithm = st::Algorithm::Random;
    let mut c = Case::new(
        &v6_suffixed("random-weights", v6),
        &format!(
            "Weighted random selection: weights 1:1:2 over three remote backends. 400 new flows \
             (SYNs from pod-a, source ports 22000..22399) to {}: the shares of new flows are \
             25% / 25% / 50% within ±8 points (a uniform pick would give a third each). 20 SYN \
             retransmits of earlier flows get the same backend as their first SYN. All leave on eth0.",
            endpoint(vip, Some(80))
        ),
        state_with(vec![svc]),
    );
    let bes: Vec<String> = bips.iter().map(|b| endpoint(*b, Some(8080))).collect();
    many_syns(
        &mut c,
        &pod_a(),
        pod_a().ip(v6),
        (vip, 80),
        400,
        22000,
        20,
        &bes,
        Some(UPLINK),
    );
    c.backend_share = Some(BackendShare {
        shares: [
            (bes[0].clone(), 0.25),
            (bes[1].clone(), 0.25),
            (bes[2].clone(), 0.5),
        ]
        .into_iter()
        .collect(),
        tolerance: 0.08,
    });
    c
}

fn affinity_clientip(v6: bool) -> Case {
    let r = |n: u8| remote(&format!("10.0.2.{n}"), &format!("fd00:10:2::{n}")).ip(v6);
    let bips = [r(5), r(6), r(7)];
    let vip = ip(pick(v6, "10.96.0.40", "fd00:96::40"));
    let mut svc = service(
        "web-sticky",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[(&vip.to_string(), 80)],
        bips.iter().map(|b| active(&b.to_string(), 8080)).collect(),
    );
    svc.affinity = Some(st::Affinity {
        kind: st::AffinityType::ClientIP,
        timeout_seconds: 600,
    });
    let mut c = Case::new(
        &v6_suffixed("affinity-clientip", v6),
        &format!(
            "ClientIP session affinity over three remote backends: pod-a and pod-c each open 15 \
             connections (interleaved, distinct source ports) to {}. Every connection of one \
             client address gets the same backend (checked over all packets), and all leave on eth0.",
            endpoint(vip, Some(80))
        ),
        state_with(vec![svc]),
    );
    c.affinity_by_client = true;
    let bes: Vec<String> = bips.iter().map(|b| endpoint(*b, Some(8080))).collect();
    let (a, cc) = (pod_a(), pod_c());
    let mut first = [None, None];
    for i in 0..15u16 {
        for (k, h) in [&a, &cc].into_iter().enumerate() {
            let mut e = x("SYN").fwd(UPLINK).ct("new");
            e.backend_in = Some(bes.clone());
            e.backend_same_as = first[k];
            e.out_dst = Some("backend".into());
            let idx = c.send(
                h,
                h.ip(v6),
                vip,
                L4::Tcp {
                    sport: 30000 + i,
                    dport: 80,
                    seq: 1,
                    ack: 0,
                    flags: SYN,
                },
                0,
                e,
            );
            first[k].get_or_insert(idx);
        }
    }
    c
}

fn backend_terminating_midflow(v6: bool) -> Case {
    let vip = pick(v6, "10.96.0.50", "fd00:96::50");
    let (r5, r6) = (
        remote("10.0.2.5", "fd00:10:2::5"),
        remote("10.0.2.6", "fd00:10:2::6"),
    );
    let (b5, b6) = (r5.ip(v6).to_string(), r6.ip(v6).to_string());
    let s0 = state_with(vec![service(
        "web",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[(vip, 80)],
        vec![active(&b5, 8080)],
    )]);
    let s1 = state_with(vec![service(
        "web",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[(vip, 80)],
        vec![backend(&b5, 8080, 1, Terminating), active(&b6, 8080)],
    )]);
    let mut c = Case::new(
        &v6_suffixed("backend-terminating-midflow", v6),
        &format!(
            "A flow is established to the only backend {}. At 1 s (`--state-at`) that backend \
             becomes terminating and {} is added. The existing flow keeps its backend through \
             data and close; ten new flows after the change all go to {b6}.",
            ep(&b5, 8080),
            ep(&b6, 8080)
        ),
        s0,
    );
    c.state_at(1.0, "state-terminating.yaml", s1);
    let a = pod_a();
    let mut f = Conn::new(&a, a.ip(v6), 40000, (ip(vip), 80), &r5, (ip(&b5), 8080));
    f.handshake(&mut c);
    c.at(2.0);
    f.data(&mut c, 100, 400);
    for i in 0..10 {
        let mut g = Conn::new(&a, a.ip(v6), 41000 + i, (ip(vip), 80), &r6, (ip(&b6), 8080));
        let e = g.fc("SYN of a new flow after the change", "new");
        g.c(&mut c, SYN, 0, e);
    }
    f.close(&mut c);
    c
}

fn backend_quarantined(v6: bool) -> Case {
    let vip = pick(v6, "10.96.0.51", "fd00:96::51");
    let r6 = remote("10.0.2.6", "fd00:10:2::6");
    let r5 = remote("10.0.2.5", "fd00:10:2::5");
    let (b5, b6) = (r5.ip(v6).to_string(), r6.ip(v6).to_string());
    let s0 = state_with(vec![service(
        "web",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[(vip, 80)],
        vec![backend(&b5, 8080, 1, Quarantined), active(&b6, 8080)],
    )]);
    let s1 = state_with(vec![service(
        "web",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[(vip, 80)],
        vec![active(&b5, 8080), backend(&b6, 8080, 1, Quarantined)],
    )]);
    let mut c = Case::new(
        &v6_suffixed("backend-quarantined", v6),
        &format!(
            "Backend {b5} is quarantined, {b6} active: ten new flows all go to {b6}, one of \
             them is established. At 1 s the roles swap ({b6} quarantined): the established flow's next \
             packet must not reach {b6} any more (quarantined backends get nothing: the flow ends, \
             dropped `backend-gone`), and new flows go to {b5}."
        ),
        s0,
    );
    c.state_at(1.0, "state-swapped.yaml", s1);
    let a = pod_a();
    let mut f = Conn::new(&a, a.ip(v6), 40000, (ip(vip), 80), &r6, (ip(&b6), 8080));
    f.handshake(&mut c);
    for i in 1..10 {
        let mut g = Conn::new(&a, a.ip(v6), 40000 + i, (ip(vip), 80), &r6, (ip(&b6), 8080));
        let e = g.fc("SYN of a new flow", "new");
        g.c(&mut c, SYN, 0, e);
    }
    c.at(2.0);
    // The flow ends: dropped `backend-gone`, the verdict still naming its (quarantined) backend.
    let mut e = x("data on the flow whose backend is now quarantined").drop_("backend-gone");
    e.backend = Some(ep(&b6, 8080));
    f.c(&mut c, PSHACK, 100, e);
    for i in 0..5 {
        let mut g = Conn::new(&a, a.ip(v6), 42000 + i, (ip(vip), 80), &r5, (ip(&b5), 8080));
        let e = g.fc("SYN of a new flow after the swap", "new");
        g.c(&mut c, SYN, 0, e);
    }
    c.sticky_flows = false;
    c
}

fn no_backend() -> Case {
    let svcs = vec![
        service(
            "empty",
            ServiceType::ClusterIP,
            L4Proto::TCP,
            &[("10.96.0.60", 80)],
            vec![],
        ),
        service(
            "draining",
            ServiceType::ClusterIP,
            L4Proto::TCP,
            &[("10.96.0.61", 80)],
            vec![backend("10.0.2.5", 8080, 1, Terminating)],
        ),
        service(
            "sick",
            ServiceType::ClusterIP,
            L4Proto::TCP,
            &[("10.96.0.62", 80)],
            vec![backend("10.0.2.5", 8080, 1, Quarantined)],
        ),
        service(
            "empty-udp",
            ServiceType::ClusterIP,
            L4Proto::UDP,
            &[("10.96.0.63", 53)],
            vec![],
        ),
        service(
            "empty6",
            ServiceType::ClusterIP,
            L4Proto::TCP,
            &[("fd00:96::60", 80)],
            vec![],
        ),
        service(
            "empty6-udp",
            ServiceType::ClusterIP,
            L4Proto::UDP,
            &[("fd00:96::63", 53)],
            vec![],
        ),
        service(
            "ok",
            ServiceType::ClusterIP,
            L4Proto::TCP,
            &[("10.96.0.64", 80)],
            vec![active("10.0.1.3", 8080)],
        ),
    ];
    let mut c = Case::new(
        "no-backend",
        "New flows to services without a usable backend are dropped with `no-backend` and rejected, \
         as kube-proxy does (Kubernetes e2e \"should be rejected when no endpoints exist\"): a TCP \
         SYN is answered with a reset, a UDP datagram with an ICMP (ICMPv6) port unreachable quoting \
         it, sent back out of its input interface from the service address. No backends at all \
         (TCP, UDP, IPv6 TCP and UDP), only a terminating backend, only a quarantined backend. A \
         service with an active backend in the same state still works.",
        state_with(svcs),
    );
    let a = pod_a();
    for (vip, port, udp, what) in [
        ("10.96.0.60", 80, false, "SYN to a service without backends"),
        (
            "10.96.0.61",
            80,
            false,
            "SYN to a service whose only backend is terminating",
        ),
        (
            "10.96.0.62",
            80,
            false,
            "SYN to a service whose only backend is quarantined",
        ),
        ("10.96.0.63", 53, true, "UDP to a service without backends"),
        (
            "fd00:96::60",
            80,
            false,
            "IPv6 SYN to a service without backends",
        ),
        (
            "fd00:96::63",
            53,
            true,
            "IPv6 UDP to a service without backends",
        ),
    ] {
        let vip = ip(vip);
        let l4 = if udp {
            L4::Udp {
                sport: 50000,
                dport: port,
            }
        } else {
            L4::Tcp {
                sport: 40000,
                dport: port,
                seq: 1,
                ack: 0,
                flags: SYN,
            }
        };
        let mut e = x(what).rejected();
        e.has_service = Some(true);
        c.send(
            &a,
            a.ip(vip.is_ipv6()),
            vip,
            l4,
            if udp { 30 } else { 0 },
            e,
        );
    }
    let mut f = Conn::new(
        &a,
        a.v4,
        40001,
        (ip("10.96.0.64"), 80),
        &pod_b(),
        (ip("10.0.1.3"), 8080),
    );
    let e = f.fc("SYN to a service with an active backend", "new");
    f.c(&mut c, SYN, 0, e);
    c
}

fn service_removed_midflow(v6: bool) -> Case {
    let vip = pick(v6, "10.96.0.70", "fd00:96::70");
    let (a, b) = (pod_a(), pod_b());
    let s0 = state_with(vec![service(
        "web",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[(vip, 80)],
        vec![active(&b.ip(v6).to_string(), 8080)],
    )]);
    let s1 = state_with(vec![]);
    let mut c = Case::new(
        &v6_suffixed("service-removed-midflow", v6),
        &format!(
            "A flow to {} (→ pod-b) is established; at 1 s the service is removed. A new flow \
             to the old VIP afterwards gets no service and no backend (it must not be DNATed to pod-b). \
             What happens to the established flow's later packets is pinned by the golden only.",
            ep(vip, 80)
        ),
        s0,
    );
    c.state_at(1.0, "state-removed.yaml", s1);
    let mut f = Conn::new(&a, a.ip(v6), 40000, (ip(vip), 80), &b, (b.ip(v6), 8080));
    f.handshake(&mut c);
    c.at(2.0);
    f.c(
        &mut c,
        PSHACK,
        100,
        x("data on the established flow after removal (golden only)"),
    );
    f.s(&mut c, ACK, 0, x("its ACK from pod-b (golden only)"));
    let mut e = x("SYN of a new flow to the removed VIP");
    e.backend_none = Some(true);
    e.has_service = Some(false);
    c.send(
        &a,
        a.ip(v6),
        ip(vip),
        L4::Tcp {
            sport: 40001,
            dport: 80,
            seq: 1,
            ack: 0,
            flags: SYN,
        },
        0,
        e,
    );
    c.sticky_flows = false;
    c
}

// ---- policy ----

fn policy_state(mode: st::PolicyMode, policies: Vec<st::Policy>) -> st::State {
    let mut s = base_state();
    s.node.policy_mode = mode;
    s.policies = policies;
    s
}

fn ingress(endpoint: &str, rules: Vec<st::Rule>) -> st::Policy {
    st::Policy {
        endpoint: endpoint.into(),
        ingress: rules,
        egress: vec![],
    }
}

fn allow_ids(ids: &[u32], proto: st::RuleProto, ports: &[(u16, Option<u16>)]) -> st::Rule {
    st::Rule {
        action: RuleAction::Allow,
        identities: ids.to_vec(),
        cidrs: vec![],
        protocol: proto,
        ports: ports
            .iter()
            .map(|(p, e)| st::PortRange {
                port: *p,
                end_port: *e,
            })
            .collect(),
    }
}

fn syn(sport: u16, dport: u16) -> L4 {
    L4::Tcp {
        sport,
        dport,
        seq: 1,
        ack: 0,
        flags: SYN,
    }
}

/// A SYN from `from` to `to:port`; forwarded with `policy` or dropped `policy-denied`.
fn pol(
    c: &mut Case,
    from: &Host,
    to: &Host,
    v6: bool,
    l4: L4,
    allowed: Option<&str>,
    what: &str,
) -> usize {
    let e = match allowed {
        Some(p) => x(what)
            .fwd(to.iface)
            .policy(p)
            .out_dst(&to.ip(v6).to_string()),
        None => x(what).drop_("policy-denied"),
    };
    c.send(from, from.ip(v6), to.ip(v6), l4, 0, e)
}

fn policy_ingress_ports() -> Case {
    let p = ingress(
        "pod-b",
        vec![allow_ids(&[ID_A], st::RuleProto::TCP, &[(8080, None)])],
    );
    let mut c = Case::new(
        "policy-ingress-ports",
        "pod-b allows ingress only from identity 1001 (pod-a) on TCP 8080, so it is default-deny \
         for everything else: pod-a → pod-b:8080 is allowed (v4 and v6, src identity 1001, dst 1002), \
         pod-a → pod-b:9090, pod-a → pod-b UDP 8080 and pod-c → pod-b:8080 are dropped \
         `policy-denied`; pod-b's reply to the allowed flow is forwarded (ct reply). pod-c has no \
         policy: pod-a → pod-c is forwarded.",
        policy_state(st::PolicyMode::Enforce, vec![p]),
    );
    let (a, b, cc) = (pod_a(), pod_b(), pod_c());
    for v6 in [false, true] {
        let i = pol(
            &mut c,
            &a,
            &b,
            v6,
            syn(40000, 8080),
            Some("allow"),
            "pod-a → pod-b:8080",
        );
        c.expect_mut(i).src_identity = Some(ID_A);
        c.expect_mut(i).dst_identity = Some(ID_B);
        c.send(
            &b,
            b.ip(v6),
            a.ip(v6),
            L4::Tcp {
                sport: 8080,
                dport: 40000,
                seq: 5,
                ack: 2,
                flags: SYNACK,
            },
            0,
            x("pod-b's SYN-ACK").fwd(a.iface).ct("reply"),
        );
        pol(
            &mut c,
            &a,
            &b,
            v6,
            syn(40001, 9090),
            None,
            "pod-a → pod-b:9090 (port not allowed)",
        );
        let i = c.send(
            &a,
            a.ip(v6),
            b.ip(v6),
            L4::Udp {
                sport: 40002,
                dport: 8080,
            },
            20,
            x("pod-a → pod-b UDP 8080 (protocol not allowed)").drop_("policy-denied"),
        );
        let _ = i;
        let i = pol(
            &mut c,
            &cc,
            &b,
            v6,
            syn(40003, 8080),
            None,
            "pod-c → pod-b:8080 (identity not allowed)",
        );
        c.expect_mut(i).src_identity = Some(ID_C);
        pol(
            &mut c,
            &a,
            &cc,
            v6,
            syn(40004, 5432),
            Some("none"),
            "pod-a → pod-c (pod-c has no policy)",
        );
        c.expect_mut(c.len() - 1).policy = None;
    }
    c
}

fn policy_port_range() -> Case {
    let p = ingress(
        "pod-b",
        vec![allow_ids(&[], st::RuleProto::TCP, &[(8000, Some(8100))])],
    );
    let mut c = Case::new(
        "policy-port-range",
        "pod-b allows TCP ports 8000-8100 from any peer: 7999 and 8101 are denied, 8000, 8050 and 8100 \
         are allowed (range ends inclusive), UDP 8050 is denied (protocol).",
        policy_state(st::PolicyMode::Enforce, vec![p]),
    );
    let (a, b) = (pod_a(), pod_b());
    for (i, (port, ok)) in [
        (7999, false),
        (8000, true),
        (8050, true),
        (8100, true),
        (8101, false),
    ]
    .into_iter()
    .enumerate()
    {
        pol(
            &mut c,
            &a,
            &b,
            false,
            syn(40000 + i as u16, port),
            ok.then_some("allow"),
            &format!("pod-a → pod-b TCP {port}"),
        );
    }
    c.send(
        &a,
        a.v4,
        b.v4,
        L4::Udp {
            sport: 40010,
            dport: 8050,
        },
        20,
        x("pod-a → pod-b UDP 8050").drop_("policy-denied"),
    );
    pol(
        &mut c,
        &a,
        &b,
        true,
        syn(40011, 8050),
        Some("allow"),
        "IPv6 pod-a → pod-b TCP 8050",
    );
    pol(
        &mut c,
        &a,
        &b,
        true,
        syn(40012, 8101),
        None,
        "IPv6 pod-a → pod-b TCP 8101",
    );
    c
}

fn policy_cidr() -> Case {
    let rule = st::Rule {
        action: RuleAction::Allow,
        identities: vec![],
        cidrs: vec![
            "203.0.113.0/24".parse().unwrap(),
            "2001:db8:cafe::/48".parse().unwrap(),
        ],
        protocol: st::RuleProto::TCP,
        ports: vec![st::PortRange {
            port: 8080,
            end_port: None,
        }],
    };
    let mut c = Case::new(
        "policy-cidr",
        "pod-b allows TCP 8080 from 203.0.113.0/24 and 2001:db8:cafe::/48 only. From the uplink: \
         203.0.113.7 and 2001:db8:cafe::7 are allowed (src identity world = 2), 198.51.100.7 and \
         2001:db8:beef::7 are denied; a remote pod (10.0.2.5, identity 2001) is denied too.",
        policy_state(st::PolicyMode::Enforce, vec![ingress("pod-b", vec![rule])]),
    );
    let b = pod_b();
    for (src, ok) in [
        ("203.0.113.7", true),
        ("198.51.100.7", false),
        ("2001:db8:cafe::7", true),
        ("2001:db8:beef::7", false),
        ("10.0.2.5", false),
    ] {
        let h = remote(
            if src.contains(':') { "192.0.2.1" } else { src },
            if src.contains(':') {
                src
            } else {
                "2001:db8::1"
            },
        );
        let v6 = src.contains(':');
        let i = pol(
            &mut c,
            &h,
            &b,
            v6,
            syn(45000, 8080),
            ok.then_some("allow"),
            &format!("{src} → pod-b:8080"),
        );
        c.expect_mut(i).src_identity = Some(if src == "10.0.2.5" {
            ID_REMOTE
        } else {
            st::reserved::WORLD
        });
    }
    c
}

fn policy_egress() -> Case {
    let p = st::Policy {
        endpoint: "pod-a".into(),
        ingress: vec![],
        egress: vec![
            allow_ids(&[ID_B], st::RuleProto::Any, &[]),
            st::Rule {
                action: RuleAction::Allow,
                identities: vec![],
                cidrs: vec!["10.0.2.0/24".parse().unwrap()],
                protocol: st::RuleProto::TCP,
                ports: vec![st::PortRange {
                    port: 8080,
                    end_port: None,
                }],
            },
        ],
    };
    let mut c = Case::new(
        "policy-egress",
        "pod-a's egress policy allows identity 1002 (pod-b, any port) and 10.0.2.0/24 on TCP 8080, so \
         pod-a is default-deny on egress: pod-a → pod-b:80 and → 10.0.2.5:8080 (eth0) are allowed; \
         pod-a → pod-c:5432, → 10.0.2.5:9090 and → 8.8.8.8 UDP 53 are denied. pod-a has no ingress \
         policy: pod-b → pod-a is forwarded.",
        policy_state(st::PolicyMode::Enforce, vec![p]),
    );
    let (a, b, cc) = (pod_a(), pod_b(), pod_c());
    pol(
        &mut c,
        &a,
        &b,
        false,
        syn(40000, 80),
        Some("allow"),
        "pod-a → pod-b:80",
    );
    pol(
        &mut c,
        &a,
        &b,
        true,
        syn(40001, 80),
        Some("allow"),
        "IPv6 pod-a → pod-b:80",
    );
    pol(
        &mut c,
        &a,
        &cc,
        false,
        syn(40002, 5432),
        None,
        "pod-a → pod-c:5432",
    );
    pol(
        &mut c,
        &a,
        &remote_pod(),
        false,
        syn(40003, 8080),
        Some("allow"),
        "pod-a → 10.0.2.5:8080",
    );
    pol(
        &mut c,
        &a,
        &remote_pod(),
        false,
        syn(40004, 9090),
        None,
        "pod-a → 10.0.2.5:9090",
    );
    c.send(
        &a,
        a.v4,
        ip("8.8.8.8"),
        L4::Udp {
            sport: 40005,
            dport: 53,
        },
        30,
        x("pod-a → 8.8.8.8 UDP 53").drop_("policy-denied"),
    );
    let i = pol(
        &mut c,
        &b,
        &a,
        false,
        syn(40006, 7000),
        Some("none"),
        "pod-b → pod-a:7000 (no ingress policy on pod-a)",
    );
    c.expect_mut(i).policy = None;
    c
}

fn policy_deny_wins() -> Case {
    let deny_c = st::Rule {
        action: RuleAction::Deny,
        identities: vec![ID_C],
        ..rule(RuleAction::Deny)
    };
    let deny_22 = st::Rule {
        action: RuleAction::Deny,
        protocol: st::RuleProto::TCP,
        ports: vec![st::PortRange {
            port: 22,
            end_port: None,
        }],
        ..rule(RuleAction::Deny)
    };
    let p = ingress("pod-b", vec![rule(RuleAction::Allow), deny_c, deny_22]);
    let mut c = Case::new(
        "policy-deny-wins",
        "pod-b allows everything from everyone, but also denies identity 1003 (pod-c) and TCP port 22 \
         from anyone. Deny wins: pod-c → pod-b:8080 and pod-a → pod-b:22 are dropped; pod-a → \
         pod-b:8080 and a remote pod (via eth0) → pod-b:8080 are allowed.",
        policy_state(st::PolicyMode::Enforce, vec![p]),
    );
    let (a, b, cc) = (pod_a(), pod_b(), pod_c());
    pol(
        &mut c,
        &a,
        &b,
        false,
        syn(40000, 8080),
        Some("allow"),
        "pod-a → pod-b:8080",
    );
    pol(
        &mut c,
        &cc,
        &b,
        false,
        syn(40001, 8080),
        None,
        "pod-c → pod-b:8080 (denied identity)",
    );
    pol(
        &mut c,
        &a,
        &b,
        false,
        syn(40002, 22),
        None,
        "pod-a → pod-b:22 (denied port)",
    );
    pol(
        &mut c,
        &cc,
        &b,
        true,
        syn(40003, 8080),
        None,
        "IPv6 pod-c → pod-b:8080",
    );
    pol(
        &mut c,
        &remote_pod(),
        &b,
        false,
        syn(40004, 8080),
        Some("allow"),
        "10.0.2.5 → pod-b:8080",
    );
    c
}

fn policy_audit() -> Case {
    let p = ingress(
        "pod-b",
        vec![
            allow_ids(&[ID_A], st::RuleProto::TCP, &[(8080, None)]),
            st::Rule {
                identities: vec![ID_REMOTE],
                ..rule(RuleAction::Deny)
            },
        ],
    );
    let mut c = Case::new(
        "policy-audit",
        "Policy mode `audit`: pod-b allows only pod-a on TCP 8080 and denies identity 2001. Allowed \
         traffic is forwarded with policy `allow`; what enforcement would drop (pod-c → 8080, pod-a → \
         9999, 10.0.2.5 → 8080 by the deny rule) is forwarded too, marked `audit`.",
        policy_state(st::PolicyMode::Audit, vec![p]),
    );
    let (a, b, cc) = (pod_a(), pod_b(), pod_c());
    pol(
        &mut c,
        &a,
        &b,
        false,
        syn(40000, 8080),
        Some("allow"),
        "pod-a → pod-b:8080",
    );
    pol(
        &mut c,
        &cc,
        &b,
        false,
        syn(40001, 8080),
        Some("audit"),
        "pod-c → pod-b:8080 (would be denied)",
    );
    pol(
        &mut c,
        &a,
        &b,
        false,
        syn(40002, 9999),
        Some("audit"),
        "pod-a → pod-b:9999 (would be denied)",
    );
    pol(
        &mut c,
        &remote_pod(),
        &b,
        false,
        syn(40003, 8080),
        Some("audit"),
        "10.0.2.5 → pod-b:8080 (deny rule)",
    );
    pol(
        &mut c,
        &cc,
        &b,
        true,
        syn(40004, 8080),
        Some("audit"),
        "IPv6 pod-c → pod-b:8080",
    );
    c
}

fn policy_allow_all() -> Case {
    let p = ingress(
        "pod-b",
        vec![
            st::Rule {
                identities: vec![ID_C],
                ..rule(RuleAction::Deny)
            },
            allow_ids(&[ID_A], st::RuleProto::TCP, &[(8080, None)]),
        ],
    );
    let mut c = Case::new(
        "policy-allow-all",
        "Emergency policy mode `allow-all`: pod-b's policy (deny pod-c, allow pod-a on 8080) is \
         skipped entirely; every packet is forwarded with policy `none`.",
        policy_state(st::PolicyMode::AllowAll, vec![p]),
    );
    let (a, b, cc) = (pod_a(), pod_b(), pod_c());
    pol(
        &mut c,
        &cc,
        &b,
        false,
        syn(40000, 8080),
        Some("none"),
        "pod-c → pod-b:8080 (denied in enforce mode)",
    );
    pol(
        &mut c,
        &a,
        &b,
        false,
        syn(40001, 9999),
        Some("none"),
        "pod-a → pod-b:9999",
    );
    pol(
        &mut c,
        &a,
        &b,
        false,
        syn(40002, 8080),
        Some("none"),
        "pod-a → pod-b:8080",
    );
    pol(
        &mut c,
        &cc,
        &b,
        true,
        syn(40003, 8080),
        Some("none"),
        "IPv6 pod-c → pod-b:8080",
    );
    c
}

/// pod-a is default-deny on ingress (it allows only identity 4242, which nobody has).
fn pod_a_closed() -> st::Policy {
    ingress("pod-a", vec![allow_ids(&[4242], st::RuleProto::Any, &[])])
}

fn policy_stateful_replies() -> Case {
    let mut c = Case::new(
        "policy-stateful-replies",
        "pod-a is default-deny on ingress (its only rule allows identity 4242). Replies to flows pod-a \
         opened are still allowed (ct reply): a TCP exchange with pod-b and a UDP query to 10.0.2.5 \
         with its response. New flows towards pod-a are dropped `policy-denied`: pod-b → pod-a:7000, \
         and an unsolicited UDP packet from 10.0.2.5:53 to a pod-a port that never sent.",
        policy_state(st::PolicyMode::Enforce, vec![pod_a_closed()]),
    );
    let (a, b) = (pod_a(), pod_b());
    let mut f = Conn::new(&a, a.v4, 40000, (b.v4, 8080), &b, (b.v4, 8080));
    f.exchange(&mut c);
    let r = remote_pod();
    let mut u = Conn::new(&a, a.v4, 50000, (r.v4, 53), &r, (r.v4, 53)).udp();
    let e = u.fc("UDP query to 10.0.2.5:53", "new");
    u.c(&mut c, ACK, 30, e);
    let e = u.fs("its response");
    u.s(&mut c, ACK, 90, e);
    pol(
        &mut c,
        &b,
        &a,
        false,
        syn(7001, 7000),
        None,
        "pod-b → pod-a:7000 (new flow into pod-a)",
    );
    c.send(
        &r,
        r.v4,
        a.v4,
        L4::Udp {
            sport: 53,
            dport: 50001,
        },
        90,
        x("unsolicited UDP 10.0.2.5:53 → pod-a:50001").drop_("policy-denied"),
    );
    let mut f6 = Conn::new(&a, a.v6, 40001, (b.v6, 8080), &b, (b.v6, 8080));
    f6.handshake(&mut c);
    c
}

fn policy_change_midflow(v6: bool) -> Case {
    let s0 = policy_state(
        st::PolicyMode::Enforce,
        vec![ingress(
            "pod-b",
            vec![allow_ids(&[ID_A], st::RuleProto::TCP, &[(8080, None)])],
        )],
    );
    let s1 = policy_state(
        st::PolicyMode::Enforce,
        vec![ingress(
            "pod-b",
            vec![allow_ids(&[ID_C], st::RuleProto::TCP, &[(8080, None)])],
        )],
    );
    let mut c = Case::new(
        &v6_suffixed("policy-change-midflow", v6),
        &format!(
            "{}pod-b first allows pod-a on TCP 8080; pod-a establishes a flow. At 1 s the policy changes to \
             allow only pod-c. New flows from pod-a are then denied and new flows from pod-c allowed. The \
             established flow's later packets are pinned by the golden only.",
            v6_prefix(v6)
        ),
        s0,
    );
    c.state_at(1.0, "state-pod-c-only.yaml", s1);
    let (a, b, cc) = (pod_a(), pod_b(), pod_c());
    pol(
        &mut c,
        &cc,
        &b,
        v6,
        syn(39999, 8080),
        None,
        "pod-c → pod-b:8080 before the change",
    );
    let mut f = Conn::new(&a, a.ip(v6), 40000, (b.ip(v6), 8080), &b, (b.ip(v6), 8080));
    f.handshake(&mut c);
    c.at(2.0);
    f.c(
        &mut c,
        PSHACK,
        50,
        x("data on the established flow after the change (golden only)"),
    );
    pol(
        &mut c,
        &a,
        &b,
        v6,
        syn(40001, 8080),
        None,
        "new pod-a → pod-b:8080 after the change",
    );
    pol(
        &mut c,
        &cc,
        &b,
        v6,
        syn(40002, 8080),
        Some("allow"),
        "new pod-c → pod-b:8080 after the change",
    );
    c
}

fn policy_service_backend(v6: bool) -> Case {
    let vip = pick(v6, "10.96.0.80", "fd00:96::80");
    let mut s = policy_state(
        st::PolicyMode::Enforce,
        vec![ingress(
            "pod-b",
            vec![allow_ids(&[ID_C], st::RuleProto::TCP, &[(8080, None)])],
        )],
    );
    s.services = vec![service(
        "web",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[(vip, 80)],
        vec![active(&pod_b().ip(v6).to_string(), 8080)],
    )];
    let mut c = Case::new(
        &v6_suffixed("policy-service-backend", v6),
        &format!(
            "Policy applies to the backend after DNAT: service {} → pod-b:8080, and pod-b allows \
             only pod-c on TCP 8080. pod-a → VIP is dropped `policy-denied`; pod-c → VIP is forwarded to \
             pod-b (policy allow, dst identity 1002) and pod-b's reply comes back from the VIP.",
            ep(vip, 80)
        ),
        s,
    );
    let (a, b, cc) = (pod_a(), pod_b(), pod_c());
    c.send(
        &a,
        a.ip(v6),
        ip(vip),
        syn(40000, 80),
        0,
        x("pod-a → VIP (backend denies pod-a)").drop_("policy-denied"),
    );
    let mut f = Conn::new(&cc, cc.ip(v6), 40001, (ip(vip), 80), &b, (b.ip(v6), 8080));
    let mut e = f.fc("pod-c → VIP", "new").policy("allow");
    e.dst_identity = Some(ID_B);
    e.src_identity = Some(ID_C);
    f.c(&mut c, SYN, 0, e);
    let e = f.fs("pod-b's SYN-ACK");
    f.s(&mut c, SYNACK, 0, e);
    c
}

// ---- forwarding basics ----

fn pod_to_pod() -> Case {
    let mut c = Case::new(
        "pod-to-pod",
        "Direct pod-to-pod traffic without services or policy: a TCP exchange pod-a ↔ pod-b over IPv4, \
         a UDP exchange pod-b ↔ pod-c over IPv6. Addresses and ports are unchanged; MACs are rewritten \
         (src = egress interface MAC, dst = the destination pod's MAC), TTL/hop limit decremented.",
        base_state(),
    );
    let (a, b, cc) = (pod_a(), pod_b(), pod_c());
    let mut f = Conn::new(&a, a.v4, 40000, (b.v4, 8080), &b, (b.v4, 8080));
    f.exchange(&mut c);
    let mut u = Conn::new(&b, b.v6, 50000, (cc.v6, 5000), &cc, (cc.v6, 5000)).udp();
    for k in 0..2 {
        let e = u.fc("UDP request", if k == 0 { "new" } else { "established" });
        u.c(&mut c, ACK, 200, e);
        let e = u.fs("UDP response");
        u.s(&mut c, ACK, 700, e);
    }
    c
}

/// Pods at default offloads: every TCP/UDP packet arrives with a partial checksum.
fn partial_checksums(v6: bool) -> Case {
    let (web_vip, dns_vip) = if v6 {
        ("fd00:96::10", "fd00:96::53")
    } else {
        ("10.96.0.10", "10.96.0.53")
    };
    let (a, b, cc) = (pod_a(), pod_b(), pod_c());
    let web = service(
        "web",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[(web_vip, 80)],
        vec![active(&b.ip(v6).to_string(), 8080)],
    );
    let dns = service(
        "dns",
        ServiceType::ClusterIP,
        L4Proto::UDP,
        &[(dns_vip, 53)],
        vec![active(&cc.ip(v6).to_string(), 5353)],
    );
    let mut c = Case::new(
        &format!("partial-checksums-{}", v(v6)),
        &format!(
            "Pods at Linux's default offloads on veth send TCP and UDP with partial checksums \
             (CHECKSUM_PARTIAL: the field holds only the folded pseudo-header sum, for the device \
             to finish). Every TCP/UDP input here carries one: a TCP exchange with 1400-byte \
             segments through the ClusterIP {} (DNAT to pod-b, reverse NAT of the replies), UDP \
             queries through {} (pod-c), and pod-to-pod TCP and UDP without translation. nodeplane \
             completes each checksum before rewriting: every output carries a valid TCP/UDP \
             checksum.",
            ep(web_vip, 80),
            ep(dns_vip, 53)
        ),
        state_with(vec![web, dns]),
    );
    c.partial_checksums = true;
    let mut f = Conn::new(&a, a.ip(v6), 40000, (ip(web_vip), 80), &b, (b.ip(v6), 8080));
    f.handshake(&mut c);
    f.data(&mut c, 1400, 1400);
    f.close(&mut c);
    let mut u = Conn::new(
        &a,
        a.ip(v6),
        50000,
        (ip(dns_vip), 53),
        &cc,
        (cc.ip(v6), 5353),
    )
    .udp();
    for k in 0..2 {
        let e = u.fc("query", if k == 0 { "new" } else { "established" });
        u.c(&mut c, ACK, 40, e);
        let e = u.fs("response");
        u.s(&mut c, ACK, 1200, e);
    }
    let mut p = Conn::new(&a, a.ip(v6), 41000, (b.ip(v6), 8080), &b, (b.ip(v6), 8080));
    p.handshake(&mut c);
    p.data(&mut c, 1400, 1400);
    let mut q = Conn::new(
        &b,
        b.ip(v6),
        51000,
        (cc.ip(v6), 5000),
        &cc,
        (cc.ip(v6), 5000),
    )
    .udp();
    let e = q.fc("UDP request", "new");
    q.c(&mut c, ACK, 1000, e);
    let e = q.fs("UDP response");
    q.s(&mut c, ACK, 1000, e);
    c
}

fn pod_to_remote() -> Case {
    let mut c = Case::new(
        "pod-to-remote",
        "Traffic between local pods and pods of another node (10.0.2.0/24, fd00:10:2::/64) through the \
         uplink: pod-a's TCP exchange with 10.0.2.5 (out on eth0 to the gateway MAC, replies in on \
         eth0 to veth-a), an IPv6 ping from pod-a to fd00:10:2::5 with its reply, and a new flow from \
         10.0.2.5 into pod-c.",
        base_state(),
    );
    let (a, cc, r) = (pod_a(), pod_c(), remote_pod());
    let mut f = Conn::new(&a, a.v4, 40000, (r.v4, 8080), &r, (r.v4, 8080));
    f.exchange(&mut c);
    c.send(
        &a,
        a.v6,
        r.v6,
        L4::EchoRequest { id: 7, seq: 1 },
        56,
        x("IPv6 echo request")
            .fwd(UPLINK)
            .ct("new")
            .out_dst(&r.v6.to_string()),
    );
    c.send(
        &r,
        r.v6,
        a.v6,
        L4::EchoReply { id: 7, seq: 1 },
        56,
        x("IPv6 echo reply")
            .fwd(a.iface)
            .ct("reply")
            .out_src(&r.v6.to_string()),
    );
    let mut g = Conn::new(&r, r.v4, 45000, (cc.v4, 5432), &cc, (cc.v4, 5432));
    g.handshake(&mut c);
    c
}

/// Interface MTUs of the `egress-mtu` case: jumbo pods a and c, pod b and the uplink at 1500.
fn with_mtus(mut s: st::State) -> st::State {
    for i in &mut s.interfaces {
        i.mtu = Some(match i.name.as_str() {
            "veth-a" | "veth-c" => 9000,
            _ => 1500,
        });
    }
    s
}

fn egress_mtu() -> Case {
    let svcs = vec![
        service(
            "web",
            ServiceType::ClusterIP,
            L4Proto::TCP,
            &[("10.96.0.80", 80)],
            vec![active("10.0.1.3", 8080)],
        ),
        service(
            "web6",
            ServiceType::ClusterIP,
            L4Proto::TCP,
            &[("fd00:96::80", 80)],
            vec![active("fd00:10:1::3", 8080)],
        ),
    ];
    let mut c = Case::new(
        "egress-mtu",
        "Interface MTUs: veth-a and veth-c 9000 (jumbo pods), veth-b and the uplink eth0 1500. A \
         packet whose IP length exceeds its egress interface's MTU does not leave: IPv4 with DF \
         and IPv6 are dropped `frag-needed` and answered with an ICMP fragmentation-needed / \
         ICMPv6 packet-too-big announcing 1500, back out of the input interface, quoting the \
         packet as pod-a sent it: through the ClusterIP (DNAT to pod-b) the quote keeps the VIP \
         as destination and the error comes from the VIP, as the kernel's NAT translates it; \
         routed without translation (to a remote pod through the uplink) it comes from the \
         node's first address of the family. IPv4 without DF is dropped `mtu-exceeded`, \
         unanswered. Packets that fit (1440 bytes to pod-b, 4028 bytes to pod-c at 9000, pod-b's \
         4040-byte reply to pod-a at 9000) are forwarded.",
        with_mtus(state_with(svcs)),
    );
    let (a, b, cc, r) = (pod_a(), pod_b(), pod_c(), remote_pod());
    // IPv4 through the ClusterIP.
    let mut f = Conn::new(&a, a.v4, 40000, (ip("10.96.0.80"), 80), &b, (b.v4, 8080));
    f.handshake(&mut c);
    let seg = |c: &Case, dst: IpAddr, dport: u16, len: usize, df: bool| {
        let l4 = L4::Tcp {
            sport: 40000,
            dport,
            seq: 0x1000_0000 + 40000 * 977 + 1,
            ack: 1,
            flags: PSHACK,
        };
        let mut p = c.pkt(&a, a.ip(dst.is_ipv6()), dst, l4, len);
        p.extras.dont_fragment = df;
        p.build()
    };
    let vip4 = ip("10.96.0.80");
    let fr = seg(&c, vip4, 80, 4000, true);
    c.raw(
        a.iface,
        fr,
        x("4040-byte segment with DF to the VIP, pod-b's interface at 1500")
            .frag_needed(1500, "10.96.0.80"),
    );
    let fr = seg(&c, vip4, 80, 1400, true);
    let mut e = f.fc("1440-byte segment with DF: fits", "established");
    e.out_src = None;
    c.raw(a.iface, fr, e);
    let fr = seg(&c, vip4, 80, 4000, false);
    c.raw(
        a.iface,
        fr,
        x("4040-byte segment without DF: not fragmented").drop_("mtu-exceeded"),
    );
    let e = f.fs("pod-b's 4040-byte reply: fits pod-a's 9000");
    f.s(&mut c, PSHACK, 4000, e);
    // IPv6 through the ClusterIP.
    let mut g = Conn::new(&a, a.v6, 40000, (ip("fd00:96::80"), 80), &b, (b.v6, 8080));
    g.handshake(&mut c);
    let fr = seg(&c, ip("fd00:96::80"), 80, 3000, true);
    c.raw(
        a.iface,
        fr,
        x("3060-byte IPv6 segment to the VIP").frag_needed(1500, "fd00:96::80"),
    );
    // Routed, no translation: UDP to pod-c (fits) and to a remote pod (the uplink).
    for (to, fits, what, from) in [
        (cc.v4, true, "4028-byte UDP datagram to pod-c at 9000", ""),
        (
            r.v4,
            false,
            "4028-byte UDP datagram with DF to a remote pod, uplink at 1500",
            "192.168.1.10",
        ),
        (
            r.v6,
            false,
            "4048-byte IPv6 UDP datagram to a remote pod",
            "fd00:192:1::10",
        ),
    ] {
        let l4 = L4::Udp {
            sport: 50000,
            dport: 5353,
        };
        let mut p = c.pkt(&a, a.ip(to.is_ipv6()), to, l4, 4000);
        p.extras.dont_fragment = true;
        let fr = p.build();
        let e = if fits {
            x(what).fwd(cc.iface).ct("new")
        } else {
            x(what).frag_needed(1500, from)
        };
        c.raw(a.iface, fr, e);
    }
    c
}

fn anti_spoofing() -> Case {
    let svc = service(
        "web",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[("10.96.0.10", 80)],
        vec![active("10.0.1.3", 8080)],
    );
    let mut c = Case::new(
        "anti-spoofing",
        "A packet entering on a pod interface must carry that endpoint's own address: from veth-a, \
         sources 10.0.1.3 (pod-b's), 10.0.1.99 (unassigned, inside the PodCIDR), 203.0.113.7 (world) \
         and fd00:10:1::3 (pod-b's IPv6) are dropped `spoofed-source`, also when sent to a service VIP. \
         pod-a's own v4 and v6 sources are forwarded.",
        state_with(vec![svc]),
    );
    let (a, b) = (pod_a(), pod_b());
    for src in ["10.0.1.3", "10.0.1.99", "203.0.113.7", "fd00:10:1::3"] {
        let dst = if src.contains(':') {
            b.v6
        } else {
            ip("10.0.1.4")
        };
        c.send(
            &a,
            ip(src),
            dst,
            syn(40000, 8080),
            0,
            x(&format!("veth-a frame with source {src}")).drop_("spoofed-source"),
        );
    }
    c.send(
        &a,
        ip("10.0.1.4"),
        ip("10.96.0.10"),
        syn(40001, 80),
        0,
        x("veth-a frame with pod-c's source to the VIP").drop_("spoofed-source"),
    );
    c.send(
        &a,
        a.v4,
        b.v4,
        syn(40002, 8080),
        0,
        x("pod-a's own IPv4 source").fwd(b.iface),
    );
    c.send(
        &a,
        a.v6,
        b.v6,
        syn(40003, 8080),
        0,
        x("pod-a's own IPv6 source").fwd(b.iface),
    );
    c
}

fn ttl() -> Case {
    let mut c = Case::new(
        "ttl",
        "TTL and hop limit: a packet that arrives with TTL 1 or 0 (or hop limit 1) cannot be forwarded \
         and is dropped `ttl-exceeded`, from a pod and from the uplink; TTL 2 is forwarded with TTL 1, \
         hop limit 255 with 254.",
        base_state(),
    );
    let (a, b, r) = (pod_a(), pod_b(), remote_pod());
    for (from, to, v6, ttl, ok) in [
        (&a, &b, false, 1u8, false),
        (&a, &b, false, 0, false),
        (&a, &b, false, 2, true),
        (&a, &b, true, 1, false),
        (&a, &b, true, 255, true),
        (&r, &a, false, 1, false),
        (&r, &a, false, 64, true),
    ] {
        let mut p = c.pkt(
            from,
            from.ip(v6),
            to.ip(v6),
            syn(40000 + u16::from(ttl), 8080),
            0,
        );
        p.ttl = ttl;
        let what = format!(
            "{} {} {ttl} from {}",
            if v6 { "IPv6" } else { "IPv4" },
            if v6 { "hop limit" } else { "TTL" },
            from.iface
        );
        let e = if ok {
            x(&what).fwd(to.iface)
        } else {
            x(&what).drop_("ttl-exceeded")
        };
        c.raw(from.iface, p.build(), e);
    }
    // The flow whose SYN died of TTL 1 left no conntrack entry behind: its retry is new.
    let e = x("retry of the TTL-1 flow with TTL 64: no entry was left")
        .fwd(b.iface)
        .ct("new");
    c.send(&a, a.v4, b.v4, syn(40001, 8080), 0, e);
    c
}

// ---- ICMP ----

fn icmp_echo(v6: bool) -> Case {
    let mut c = Case::new(
        &format!("icmp-echo-{}", v(v6)),
        "ICMP echo is tracked by its identifier. pod-a is default-deny on ingress, so only tracked \
         replies reach it: pod-a pings 10.0.2.5 (id 100, two requests) and pod-b (id 200); the replies \
         with those ids are forwarded (ct reply). A reply with an id pod-a never used (101) and an echo \
         request from 10.0.2.5 to pod-a are new flows into pod-a: dropped `policy-denied`.",
        policy_state(st::PolicyMode::Enforce, vec![pod_a_closed()]),
    );
    if v6 {
        c.readme = c.readme.replace("10.0.2.5", "fd00:10:2::5");
    }
    let (a, b, r) = (pod_a(), pod_b(), remote_pod());
    for seq in 1..=2 {
        let ct = if seq == 1 { "new" } else { "established" };
        c.send(
            &a,
            a.ip(v6),
            r.ip(v6),
            L4::EchoRequest { id: 100, seq },
            56,
            x("echo request to the remote pod").fwd(UPLINK).ct(ct),
        );
        c.send(
            &r,
            r.ip(v6),
            a.ip(v6),
            L4::EchoReply { id: 100, seq },
            56,
            x("its echo reply").fwd(a.iface).ct("reply"),
        );
    }
    c.send(
        &a,
        a.ip(v6),
        b.ip(v6),
        L4::EchoRequest { id: 200, seq: 1 },
        56,
        x("echo request to pod-b").fwd(b.iface).ct("new"),
    );
    c.send(
        &b,
        b.ip(v6),
        a.ip(v6),
        L4::EchoReply { id: 200, seq: 1 },
        56,
        x("pod-b's echo reply").fwd(a.iface).ct("reply"),
    );
    c.send(
        &r,
        r.ip(v6),
        a.ip(v6),
        L4::EchoReply { id: 101, seq: 1 },
        56,
        x("echo reply with an unknown id").drop_("policy-denied"),
    );
    c.send(
        &r,
        r.ip(v6),
        a.ip(v6),
        L4::EchoRequest { id: 300, seq: 1 },
        56,
        x("echo request into pod-a").drop_("policy-denied"),
    );
    c
}

/// Bytes an ICMP error quotes: the whole packet, or (v4, `short`) the IP header + 8 bytes.
fn quote(p: &pkt::Pkt, short: bool) -> Vec<u8> {
    let b = p.ip_bytes();
    if short {
        let ihl = usize::from(b[0] & 0x0f) * 4;
        b[..ihl + 8].to_vec()
    } else {
        b
    }
}

fn icmp_error_v4() -> Case {
    let s = state_with(vec![
        service(
            "web",
            ServiceType::ClusterIP,
            L4Proto::TCP,
            &[("10.96.0.10", 80)],
            vec![active("10.0.2.5", 8080)],
        ),
        service(
            "dns",
            ServiceType::ClusterIP,
            L4Proto::UDP,
            &[("10.96.0.53", 53)],
            vec![active("10.0.2.6", 5353)],
        ),
    ]);
    let mut c = Case::new(
        "icmp-error-v4",
        "ICMPv4 errors about DNATed flows are matched by the quoted header and reverse-NATed. (1) pod-a's \
         TCP flow to 10.96.0.10:80 → 10.0.2.5:8080; a router (192.168.1.1) answers a 1400-byte DF segment \
         with frag-needed (MTU 1280) quoting 10.0.1.2:40000 → 10.0.2.5:8080: it reaches veth-a as ct \
         related, the quoted destination restored to 10.96.0.10:80 (quoted IPv4 header checksum and \
         the ICMP checksum valid). (2) pod-a's UDP query to 10.96.0.53:53 → 10.0.2.6:5353; the backend \
         answers port-unreachable: outer source restored to 10.96.0.53 and quoted destination to \
         10.96.0.53:53. (3) A router's time-exceeded for the UDP flow: quoted destination restored.",
        s,
    );
    let (a, r) = (pod_a(), remote_pod());
    let router = remote("192.168.1.1", "fd00:192:1::1");
    let mut f = Conn::new(
        &a,
        a.v4,
        40000,
        (ip("10.96.0.10"), 80),
        &r,
        (ip("10.0.2.5"), 8080),
    );
    f.handshake(&mut c);
    let e = f.fc("1400-byte data segment, DF", "established");
    let mut big = c.pkt(&a, a.v4, ip("10.96.0.10"), f.l4(true, PSHACK), 1400);
    big.extras.dont_fragment = true;
    c.raw(a.iface, big.build(), e);
    // What the router saw: after DNAT, TTL decremented.
    let mut seen = big.clone();
    seen.dst = ip("10.0.2.5");
    seen.ttl = 63;
    if let L4::Tcp { dport, .. } = &mut seen.l4 {
        *dport = 8080;
    }
    let mut e = x("router's frag-needed quoting the DNATed segment")
        .fwd(a.iface)
        .ct("related");
    e.out_dst = Some(a.v4.to_string());
    e.out_inner_src = Some(ep("10.0.1.2", 40000));
    e.out_inner_dst = Some(ep("10.96.0.10", 80));
    let icmp = L4::Icmpv4(Icmpv4Type::DestinationUnreachable(
        icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
    ));
    let mut p = c.pkt(&router, router.v4, a.v4, icmp, 0);
    p.payload = quote(&seen, true);
    c.raw(UPLINK, p.build(), e);

    let r6 = remote("10.0.2.6", "fd00:10:2::6");
    let mut u = Conn::new(
        &a,
        a.v4,
        50000,
        (ip("10.96.0.53"), 53),
        &r6,
        (ip("10.0.2.6"), 5353),
    )
    .udp();
    let e = u.fc("UDP query", "new");
    u.c(&mut c, ACK, 30, e);
    let mut seen = c.pkt(
        &a,
        a.v4,
        ip("10.0.2.6"),
        L4::Udp {
            sport: 50000,
            dport: 5353,
        },
        30,
    );
    seen.ttl = 63;
    let mut e = x("backend's port-unreachable")
        .fwd(a.iface)
        .ct("related")
        .out_src("10.96.0.53");
    e.out_inner_src = Some(ep("10.0.1.2", 50000));
    e.out_inner_dst = Some(ep("10.96.0.53", 53));
    let icmp = L4::Icmpv4(Icmpv4Type::DestinationUnreachable(
        icmpv4::DestUnreachableHeader::Port,
    ));
    let mut p = c.pkt(&r6, r6.v4, a.v4, icmp, 0);
    p.payload = quote(&seen, false);
    c.raw(UPLINK, p.build(), e);
    let mut e = x("router's time-exceeded for the UDP flow")
        .fwd(a.iface)
        .ct("related");
    e.out_inner_dst = Some(ep("10.96.0.53", 53));
    let icmp = L4::Icmpv4(Icmpv4Type::TimeExceeded(
        icmpv4::TimeExceededCode::TtlExceededInTransit,
    ));
    let mut p = c.pkt(&router, router.v4, a.v4, icmp, 0);
    p.payload = quote(&seen, true);
    c.raw(UPLINK, p.build(), e);
    c
}

fn icmp_error_v6() -> Case {
    let s = state_with(vec![
        service(
            "web6",
            ServiceType::ClusterIP,
            L4Proto::TCP,
            &[("fd00:96::10", 80)],
            vec![active("fd00:10:2::5", 8080)],
        ),
        service(
            "dns6",
            ServiceType::ClusterIP,
            L4Proto::UDP,
            &[("fd00:96::53", 53)],
            vec![active("fd00:10:2::6", 5353)],
        ),
    ]);
    let mut c = Case::new(
        "icmp-error-v6",
        "ICMPv6 errors about DNATed flows. (1) pod-a's TCP flow to [fd00:96::10]:80 → \
         [fd00:10:2::5]:8080; the backend answers a 1400-byte segment with Packet Too Big (MTU 1280) \
         quoting the segment: forwarded to veth-a as ct related, outer source restored to fd00:96::10, \
         quoted destination to [fd00:96::10]:80, ICMPv6 checksum valid. (2) A router's time-exceeded \
         for pod-a's UDP query to [fd00:96::53]:53 → [fd00:10:2::6]:5353: quoted destination restored.",
        s,
    );
    let (a, r) = (pod_a(), remote_pod());
    let router = remote("192.168.1.1", "fd00:192:1::1");
    let mut f = Conn::new(
        &a,
        a.v6,
        40000,
        (ip("fd00:96::10"), 80),
        &r,
        (ip("fd00:10:2::5"), 8080),
    );
    f.handshake(&mut c);
    let e = f.fc("1400-byte data segment", "established");
    let big = c.pkt(&a, a.v6, ip("fd00:96::10"), f.l4(true, PSHACK), 1400);
    c.raw(a.iface, big.build(), e);
    let mut seen = big.clone();
    seen.dst = ip("fd00:10:2::5");
    seen.ttl = 63;
    if let L4::Tcp { dport, .. } = &mut seen.l4 {
        *dport = 8080;
    }
    let mut e = x("backend's Packet Too Big")
        .fwd(a.iface)
        .ct("related")
        .out_src("fd00:96::10");
    e.out_inner_src = Some(ep("fd00:10:1::2", 40000));
    e.out_inner_dst = Some(ep("fd00:96::10", 80));
    let mut p = c.pkt(
        &r,
        r.v6,
        a.v6,
        L4::Icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 }),
        0,
    );
    let mut q = quote(&seen, false);
    q.truncate(1280 - 40 - 8);
    p.payload = q;
    c.raw(UPLINK, p.build(), e);

    let r6 = remote("10.0.2.6", "fd00:10:2::6");
    let mut u = Conn::new(
        &a,
        a.v6,
        50000,
        (ip("fd00:96::53"), 53),
        &r6,
        (ip("fd00:10:2::6"), 5353),
    )
    .udp();
    let e = u.fc("UDP query", "new");
    u.c(&mut c, ACK, 30, e);
    let mut seen = c.pkt(
        &a,
        a.v6,
        ip("fd00:10:2::6"),
        L4::Udp {
            sport: 50000,
            dport: 5353,
        },
        30,
    );
    seen.ttl = 63;
    let mut e = x("router's time-exceeded for the UDP flow")
        .fwd(a.iface)
        .ct("related");
    e.out_inner_dst = Some(ep("fd00:96::53", 53));
    let mut p = c.pkt(
        &router,
        router.v6,
        a.v6,
        L4::Icmpv6(Icmpv6Type::TimeExceeded(
            icmpv6::TimeExceededCode::HopLimitExceeded,
        )),
        0,
    );
    p.payload = quote(&seen, false);
    c.raw(UPLINK, p.build(), e);
    c
}

/// ICMP errors about masqueraded flows (issue 14): a world client's connection to NodePort
/// 30080 whose backend is on another node leaves from the node IP and a port of the SNAT range.
fn icmp_error_masqueraded(v6: bool) -> Case {
    let nip = pick(v6, NODE_IP1, NODE_IP6);
    let rp = remote_pod();
    let be = rp.ip(v6);
    let w = world();
    let router = remote("192.168.1.1", "fd00:192:1::1");
    let mut c = Case::new(
        &format!("icmp-error-masqueraded-{}", v(v6)),
        &format!(
            "ICMP errors about a masqueraded flow reach the dataplane and are reverse-translated to \
             the client, as the kernel's conntrack does for kube-proxy. A world client's connection \
             to NodePort {nip}:30080 is DNATed to {be}:8080 on another node and masqueraded to \
             {nip} with a port of node.snat_port_range. (1) A router on the way to the backend \
             answers a 1400-byte segment with {too_big} quoting it ({nip}:<snat port> → \
             {be}:8080): forwarded to the client as ct related, outer destination restored to the \
             client, quoted packet to client → {nip}:30080 (checksums valid). (2) The same \
             router's time-exceeded: the same. (3) A router on the client's side answers the \
             backend's reply ({nip}:30080 → client) with {too_big}: forwarded to the backend, \
             outer destination the backend, quoted packet {be}:8080 → {nip}:<snat port>. (4) An \
             error quoting a port of the node IP below the SNAT range (the node's own connection) \
             stays the kernel's: passed.",
            too_big = if v6 { "Packet Too Big" } else { "fragmentation needed" },
        ),
        state_with(vec![nodeport_remote_service(v6)]),
    );
    let mut f = Conn::new(&w, w.ip(v6), 51000, (ip(nip), 30080), &rp, (be, 8080));
    let port = f.snat_port(&[]);
    f = f.snat(ip(nip), port);
    f.handshake(&mut c);
    let e = f.fc("1400-byte data segment", "established");
    let mut big = c.pkt(&w, w.ip(v6), ip(nip), f.l4(true, PSHACK), 1400);
    big.extras.dont_fragment = !v6;
    c.raw(UPLINK, big.build(), e);
    // What the router on the backend's side saw: DNAT, SNAT, TTL decremented.
    let mut seen = big.clone();
    seen.src = ip(nip);
    seen.dst = be;
    seen.ttl -= 1;
    if let L4::Tcp { sport, dport, .. } = &mut seen.l4 {
        *sport = port;
        *dport = 8080;
    }
    let (too_big, exceeded) = if v6 {
        (
            L4::Icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 }),
            L4::Icmpv6(Icmpv6Type::TimeExceeded(
                icmpv6::TimeExceededCode::HopLimitExceeded,
            )),
        )
    } else {
        (
            L4::Icmpv4(Icmpv4Type::DestinationUnreachable(
                icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
            )),
            L4::Icmpv4(Icmpv4Type::TimeExceeded(
                icmpv4::TimeExceededCode::TtlExceededInTransit,
            )),
        )
    };
    let client = w.ip(v6).to_string();
    for (what, l4) in [
        (
            "router's error about the masqueraded segment",
            too_big.clone(),
        ),
        ("router's time-exceeded about it", exceeded),
    ] {
        let mut e = x(what).fwd(UPLINK).ct("related");
        e.out_dst = Some(client.clone());
        e.out_inner_src = Some(endpoint(w.ip(v6), Some(51000)));
        e.out_inner_dst = Some(ep(nip, 30080));
        let mut p = c.pkt(&router, router.ip(v6), ip(nip), l4, 0);
        let mut q = quote(&seen, !v6);
        q.truncate(1280 - 48);
        p.payload = q;
        c.raw(UPLINK, p.build(), e);
    }
    // The backend's reply as the client's side saw it: reverse-translated.
    let e = f.fs("1400-byte response");
    let mut resp = c.pkt(&rp, be, ip(nip), f.l4(false, PSHACK), 1400);
    if let L4::Tcp { dport, .. } = &mut resp.l4 {
        *dport = port;
    }
    resp.extras.dont_fragment = !v6;
    c.raw(UPLINK, resp.build(), e);
    let mut seen = resp.clone();
    seen.src = ip(nip);
    seen.dst = w.ip(v6);
    seen.ttl -= 1;
    if let L4::Tcp { sport, dport, .. } = &mut seen.l4 {
        *sport = 30080;
        *dport = 51000;
    }
    let mut e = x("client-side router's error about the reply")
        .fwd(UPLINK)
        .ct("related");
    e.out_dst = Some(be.to_string());
    e.out_inner_src = Some(ep(&be.to_string(), 8080));
    e.out_inner_dst = Some(ep(nip, port));
    let mut p = c.pkt(&router, router.ip(v6), ip(nip), too_big.clone(), 0);
    let mut q = quote(&seen, !v6);
    q.truncate(1280 - 48);
    p.payload = q;
    c.raw(UPLINK, p.build(), e);
    // An error about the node's own connection (source port below the range).
    let mut own = seen.clone();
    if let L4::Tcp { sport, .. } = &mut own.l4 {
        *sport = 40000;
    }
    let mut p = c.pkt(&router, router.ip(v6), ip(nip), too_big, 0);
    let mut q = quote(&own, !v6);
    q.truncate(1280 - 48);
    p.payload = q;
    c.raw(
        UPLINK,
        p.build(),
        x("error about the node's own connection: the kernel's").pass(),
    );
    c
}

// ---- fragments ----

fn frag_state(v6: bool, frag_timeout: Option<u32>) -> (st::State, &'static str, &'static str) {
    let (vip, be) = if v6 {
        ("fd00:96::53", "fd00:10:1::4")
    } else {
        ("10.96.0.53", "10.0.1.4")
    };
    let mut s = state_with(vec![service(
        "dns",
        ServiceType::ClusterIP,
        L4Proto::UDP,
        &[(vip, 53)],
        vec![active(be, 5353)],
    )]);
    if let Some(t) = frag_timeout {
        s.conntrack.timeouts.fragment = t;
    }
    (s, vip, be)
}

/// A fragmented UDP datagram from `from` (`sport` → `dst:dport`), `len` bytes of payload split
/// into fragments of at most 1000 bytes.
#[expect(
    clippy::too_many_arguments,
    reason = "a case-building helper; named call sites read better than a struct"
)]
fn frags(
    c: &Case,
    from: &Host,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    len: usize,
    id: u32,
) -> Vec<Vec<u8>> {
    let p = c.pkt(from, src, dst, L4::Udp { sport, dport }, len);
    pkt::fragment(&p.build(), 1000, id)
}

fn frag_expect(
    what: &str,
    first: bool,
    egress: &str,
    src: Option<String>,
    dst: Option<String>,
) -> Expect {
    let mut e = x(what).fwd(egress);
    e.out_src = src;
    e.out_dst = dst;
    if !first {
        // Later fragments carry no ports: only addresses are compared.
        e.out_src = e.out_src.map(|s| strip_port(&s));
        e.out_dst = e.out_dst.map(|s| strip_port(&s));
    }
    e
}

fn strip_port(s: &str) -> String {
    if let Some(rest) = s.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest).to_string()
    } else {
        s.split(':').next().unwrap_or(s).to_string()
    }
}

fn frag_in_order(v6: bool) -> Case {
    let (s, vip, be) = frag_state(v6, None);
    let mut c = Case::new(
        &format!("frag-{}-in-order", v(v6)),
        &format!(
            "A 2400-byte UDP datagram from pod-a to the service {vip} port 53 arrives as three fragments \
             in order: the first fragment's ports pick the backend ({be} port 5353), the later ones follow \
             it by fragment id. All three are DNATed and leave on veth-c; the reassembled datagram's UDP \
             checksum is valid. The backend's fragmented 2400-byte response is reverse-NATed fragment by \
             fragment back to pod-a."
        ),
        s,
    );
    let (a, cc) = (pod_a(), pod_c());
    for (i, f) in frags(&c, &a, a.ip(v6), ip(vip), 50000, 53, 2400, 0x4242)
        .into_iter()
        .enumerate()
    {
        let mut e = frag_expect(
            "request fragment",
            i == 0,
            cc.iface,
            Some(endpoint(a.ip(v6), Some(50000))),
            Some(ep(be, 5353)),
        );
        if i == 0 {
            e.backend = Some(ep(be, 5353));
        }
        c.raw(a.iface, f, e);
    }
    for (i, f) in frags(&c, &cc, ip(be), a.ip(v6), 5353, 50000, 2400, 0x4343)
        .into_iter()
        .enumerate()
    {
        let e = frag_expect(
            "response fragment",
            i == 0,
            a.iface,
            Some(ep(vip, 53)),
            Some(endpoint(a.ip(v6), Some(50000))),
        );
        c.raw(cc.iface, f, e);
    }
    c
}

fn frag_out_of_order(v6: bool) -> Case {
    let (s, vip, be) = frag_state(v6, None);
    let mut c = Case::new(
        &format!("frag-{}-out-of-order", v(v6)),
        &format!(
            "Two fragmented UDP datagrams from pod-a to {vip}:53. The first arrives last fragment first, \
             then the middle one, then the first fragment: the early fragments are held until the first \
             fragment decides the backend, then all three are DNATed to {be} port 5353 (none is lost). \
             The second datagram interleaves its fragments with the first's. Every datagram reassembles \
             with a valid UDP checksum on veth-c."
        ),
        s,
    );
    let (a, cc) = (pod_a(), pod_c());
    let d1 = frags(&c, &a, a.ip(v6), ip(vip), 50000, 53, 2400, 0x5001);
    let d2 = frags(&c, &a, a.ip(v6), ip(vip), 50001, 53, 1800, 0x5002);
    let src1 = Some(endpoint(a.ip(v6), Some(50000)));
    let src2 = Some(endpoint(a.ip(v6), Some(50001)));
    let seq: Vec<(usize, usize)> = vec![(1, 2), (1, 1), (2, 1), (1, 0), (2, 0)];
    for (d, i) in seq {
        let (f, src) = if d == 1 {
            (d1[i].clone(), src1.clone())
        } else {
            (d2[i].clone(), src2.clone())
        };
        let mut e = frag_expect(
            &format!("datagram {d} fragment {i}"),
            i == 0,
            cc.iface,
            src,
            Some(ep(be, 5353)),
        );
        if i == 0 {
            e.backend = Some(ep(be, 5353));
        }
        c.raw(a.iface, f, e);
    }
    c.ordered_output = false;
    c
}

fn frag_timeout(v6: bool) -> Case {
    let (s, vip, _be) = frag_state(v6, Some(2));
    let mut c = Case::new(
        &format!("frag-{}-timeout", v(v6)),
        &format!(
            "Fragment timeout 2 s. Two non-first fragments of a datagram to {vip}:53 whose first fragment \
             never comes are held, then dropped `frag-timeout` once 2 s pass (a later packet at 5 s moves \
             the clock), never silently. A last orphan fragment at the end of the capture is dropped \
             `frag-timeout` too when the replay ends. The unrelated packets are forwarded."
        ),
        s,
    );
    let (a, b) = (pod_a(), pod_b());
    let d = frags(&c, &a, a.ip(v6), ip(vip), 50000, 53, 2400, 0x6001);
    c.raw(
        a.iface,
        d[2].clone(),
        x("last fragment, first never arrives").drop_("frag-timeout"),
    );
    c.raw(
        a.iface,
        d[1].clone(),
        x("middle fragment, first never arrives").drop_("frag-timeout"),
    );
    c.at(5.0);
    c.send(
        &a,
        a.ip(v6),
        b.ip(v6),
        syn(40000, 8080),
        0,
        x("unrelated SYN at 5 s").fwd(b.iface),
    );
    let d2 = frags(&c, &a, a.ip(v6), ip(vip), 50001, 53, 2400, 0x6002);
    c.at(6.0);
    c.raw(
        a.iface,
        d2[1].clone(),
        x("orphan fragment at the end of the capture").drop_("frag-timeout"),
    );
    c.ordered_output = false;
    c
}

// ---- parsing ----

fn vlan_tagged() -> Case {
    let mut svc = service(
        "web-np",
        ServiceType::NodePort,
        L4Proto::TCP,
        &[("10.96.0.11", 80)],
        vec![active("10.0.1.3", 8080)],
    );
    svc.node_ports = vec![st::NodePort {
        port: 30080,
        protocol: L4Proto::TCP,
    }];
    let mut c = Case::new(
        "vlan-tagged",
        "Frames carrying one 802.1Q tag are parsed past the tag: a world client's SYN to NodePort \
         192.168.1.10:30080 tagged VLAN 100 on the uplink is DNATed to pod-b; an IPv6 SYN tagged VLAN \
         100 from the uplink to pod-c is forwarded; a VLAN-tagged ARP request is passed. Whether the \
         tag is kept on output is pinned by the golden.",
        state_with(vec![svc]),
    );
    let w = world();
    let mut p = c.pkt(&w, w.v4, ip(NODE_IP1), syn(51000, 30080), 0);
    p.vlan = Some(100);
    let mut e = x("VLAN 100 SYN to the NodePort")
        .fwd("veth-b")
        .ct("new")
        .backend(&ep("10.0.1.3", 8080));
    e.out_dst = Some(ep("10.0.1.3", 8080));
    c.raw(UPLINK, p.build(), e);
    let r = remote_pod();
    let mut p = c.pkt(&r, r.v6, pod_c().v6, syn(51001, 5432), 0);
    p.vlan = Some(100);
    c.raw(
        UPLINK,
        p.build(),
        x("VLAN 100 IPv6 SYN to pod-c").fwd("veth-c"),
    );
    let mut arp = arp_frame(
        GATEWAY_MAC,
        [0xff; 6],
        [192, 168, 1, 1],
        [192, 168, 1, 10],
        1,
    );
    arp.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
    c.raw(UPLINK, arp, x("VLAN 100 ARP request").pass());
    c
}

fn ipv4_options() -> Case {
    let svc = service(
        "web",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[("10.96.0.10", 80)],
        vec![active("10.0.1.3", 8080)],
    );
    let mut c = Case::new(
        "ipv4-options",
        "IPv4 headers with options (IHL > 5) are handled: pod-a's SYN to 10.96.0.10:80 carries a \
         Router Alert option, its ACK a Record Route option, pod-b's SYN-ACK a NOP/EOL padding option. \
         L4 is found after the options; DNAT, reverse NAT and checksums are right.",
        state_with(vec![svc]),
    );
    let (a, b) = (pod_a(), pod_b());
    let mut f = Conn::new(&a, a.v4, 40000, (ip("10.96.0.10"), 80), &b, (b.v4, 8080));
    let opts: [Vec<u8>; 3] = [
        vec![148, 4, 0, 0],
        vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![1, 1, 1, 0],
    ];
    for (i, (flags, from_client)) in [(SYN, true), (SYNACK, false), (ACK, true)]
        .into_iter()
        .enumerate()
    {
        let o = if from_client { &opts[i] } else { &opts[2] };
        let (host, src, dst) = if from_client {
            (&a, a.v4, ip("10.96.0.10"))
        } else {
            (&b, b.v4, a.v4)
        };
        let mut p = c.pkt(host, src, dst, f.l4(from_client, flags), 0);
        p.extras.ipv4_options = o.clone();
        let e = if from_client {
            f.fc(
                "segment with IPv4 options",
                if i == 0 { "new" } else { "established" },
            )
        } else {
            f.fs("SYN-ACK with IPv4 options")
        };
        c.raw(host.iface, p.build(), e);
        if from_client {
            Conn::advance(&mut f.cseq, flags, 0);
        } else {
            Conn::advance(&mut f.sseq, flags, 0);
        }
    }
    c
}

fn ipv6_ext_headers() -> Case {
    let svc = service(
        "web6",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[("fd00:96::10", 80)],
        vec![active("fd00:10:1::3", 8080)],
    );
    let mut c = Case::new(
        "ipv6-ext-headers",
        "IPv6 extension headers (hop-by-hop options, then destination options) are skipped to find \
         L4: pod-a's SYN to [fd00:96::10]:80 and pod-b's SYN-ACK carry both and are DNATed / \
         reverse-NATed; a UDP datagram pod-a → pod-c with the same headers is forwarded; checksums \
         valid.",
        state_with(vec![svc]),
    );
    let (a, b, cc) = (pod_a(), pod_b(), pod_c());
    let mut f = Conn::new(&a, a.v6, 40000, (ip("fd00:96::10"), 80), &b, (b.v6, 8080));
    let mut p = c.pkt(&a, a.v6, ip("fd00:96::10"), f.l4(true, SYN), 0);
    p.extras.ipv6_opts = true;
    let e = f.fc("SYN with HBH + dest opts", "new");
    c.raw(a.iface, p.build(), e);
    Conn::advance(&mut f.cseq, SYN, 0);
    let mut p = c.pkt(&b, b.v6, a.v6, f.l4(false, SYNACK), 0);
    p.extras.ipv6_opts = true;
    let e = f.fs("SYN-ACK with HBH + dest opts");
    c.raw(b.iface, p.build(), e);
    let mut p = c.pkt(
        &a,
        a.v6,
        cc.v6,
        L4::Udp {
            sport: 50000,
            dport: 5000,
        },
        100,
    );
    p.extras.ipv6_opts = true;
    c.raw(
        a.iface,
        p.build(),
        x("UDP with HBH + dest opts to pod-c")
            .fwd(cc.iface)
            .out_dst(&ep("fd00:10:1::4", 5000)),
    );
    c
}

/// Issue 13 item 2: the UDP length field against the IP datagram, to a UDP service.
fn udp_length(v6: bool) -> Case {
    let (vip, be) = if v6 {
        ("fd00:96::54", "fd00:10:1::4")
    } else {
        ("10.96.0.54", "10.0.1.4")
    };
    let svc = service(
        "dns",
        ServiceType::ClusterIP,
        L4Proto::UDP,
        &[(vip, 53)],
        vec![active(be, 5353)],
    );
    let mut c = Case::new(
        &format!("udp-length-{}", v(v6)),
        &format!(
            "The UDP length field, checked as the kernel checks it (udp_rcv, nf_conntrack_udp), \
             on queries from pod-a to the UDP service {vip} port 53 → pod-c {be} port 5353 (28 \
             bytes of UDP: header and 20 bytes of data). Lengths 0 and 7 (below the header), 29 \
             (one byte beyond the datagram) and 65535 are dropped `malformed-l4`, neither DNATed \
             nor tracked. Length 18 (shorter than the datagram, at least the header) is legal: the \
             kernel accepts it and the receiver trims the surplus, so it is DNATed and forwarded \
             unchanged (its checksum covers the 18 bytes). A well-formed query from the source \
             port of the first dropped one is then a new flow (nothing was tracked)."
        ),
        state_with(vec![svc]),
    );
    let a = pod_a();
    let udp = |sport| L4::Udp { sport, dport: 53 };
    for (sport, ulen, what) in [
        (50000, 0, "UDP length 0"),
        (50001, 7, "UDP length 7 (< 8-byte header)"),
        (50002, 29, "UDP length 29 > 28 bytes of datagram"),
        (50003, u16::MAX, "UDP length 65535"),
    ] {
        let mut f = c.pkt(&a, a.ip(v6), ip(vip), udp(sport), 20).build();
        pkt::set_udp_length(&mut f, ulen);
        c.raw(a.iface, f, x(what).drop_("malformed-l4"));
    }
    let mut f = c.pkt(&a, a.ip(v6), ip(vip), udp(50004), 20).build();
    pkt::set_udp_length(&mut f, 18);
    let b = ep(be, 5353);
    c.raw(
        a.iface,
        f,
        x("UDP length 18 < 28 bytes of datagram: legal")
            .fwd(pod_c().iface)
            .ct("new")
            .backend(&b)
            .out_dst(&b),
    );
    c.send(
        &a,
        a.ip(v6),
        ip(vip),
        udp(50000),
        20,
        x("well-formed query from port 50000: a new flow")
            .fwd(pod_c().iface)
            .ct("new")
            .backend(&b)
            .out_dst(&b),
    );
    c
}

fn malformed() -> Case {
    let mut c = Case::new(
        "malformed",
        "Malformed frames are dropped with a `malformed-*` reason and never crash the pipeline or \
         disturb later packets: cut Ethernet header, cut VLAN tag, cut IPv4 header, IHL < 5, IPv4 \
         total length beyond the frame, total length < header, version 6 in an IPv4 frame, cut TCP \
         header, TCP data offset < 5, cut UDP header, cut ICMP header, cut IPv6 header, IPv6 payload \
         length beyond the frame, cut IPv6 extension header. A well-formed packet after them is \
         forwarded, on the pod interface and the uplink.",
        base_state(),
    );
    let (a, b, r) = (pod_a(), pod_b(), remote_pod());
    let tcp4 = c.pkt(&a, a.v4, b.v4, syn(40000, 8080), 0).build();
    let udp4 = c
        .pkt(
            &a,
            a.v4,
            b.v4,
            L4::Udp {
                sport: 40000,
                dport: 53,
            },
            20,
        )
        .build();
    let icmp4 = c
        .pkt(&a, a.v4, b.v4, L4::EchoRequest { id: 1, seq: 1 }, 0)
        .build();
    let tcp6 = c.pkt(&a, a.v6, b.v6, syn(40000, 8080), 0).build();
    let mut m: Vec<(&str, Vec<u8>)> = Vec::new();
    m.push(("10-byte frame (cut Ethernet header)", tcp4[..10].to_vec()));
    let mut v = tcp4[..14].to_vec();
    v[12] = 0x81;
    v[13] = 0x00;
    v.extend_from_slice(&[0x00, 0x05]);
    m.push(("VLAN tag cut after 2 bytes", v));
    m.push(("IPv4 header cut at 12 bytes", tcp4[..14 + 12].to_vec()));
    let mut v = tcp4.clone();
    v[14] = 0x44;
    m.push(("IPv4 IHL 4", v));
    let mut v = tcp4.clone();
    v[16..18].copy_from_slice(&1000u16.to_be_bytes());
    pkt::fix_ipv4_header_checksum(&mut v);
    m.push(("IPv4 total length 1000 in a 54-byte frame", v));
    let mut v = tcp4.clone();
    v[16..18].copy_from_slice(&12u16.to_be_bytes());
    pkt::fix_ipv4_header_checksum(&mut v);
    m.push(("IPv4 total length 12 < header length", v));
    let mut v = tcp4.clone();
    v[14] = 0x65;
    m.push(("version 6 in an IPv4 (0x0800) frame", v));
    let mut v = tcp4[..14 + 20 + 10].to_vec();
    v[16..18].copy_from_slice(&30u16.to_be_bytes());
    pkt::fix_ipv4_header_checksum(&mut v);
    m.push(("TCP header cut at 10 bytes", v));
    let mut v = tcp4.clone();
    v[14 + 20 + 12] = 0x40;
    m.push(("TCP data offset 4", v));
    let mut v = udp4[..14 + 20 + 4].to_vec();
    v[16..18].copy_from_slice(&24u16.to_be_bytes());
    pkt::fix_ipv4_header_checksum(&mut v);
    m.push(("UDP header cut at 4 bytes", v));
    let mut v = icmp4[..14 + 20 + 3].to_vec();
    v[16..18].copy_from_slice(&23u16.to_be_bytes());
    pkt::fix_ipv4_header_checksum(&mut v);
    m.push(("ICMP header cut at 3 bytes", v));
    m.push(("IPv6 header cut at 30 bytes", tcp6[..14 + 30].to_vec()));
    let mut v = tcp6.clone();
    v[18..20].copy_from_slice(&1000u16.to_be_bytes());
    m.push(("IPv6 payload length 1000 beyond the frame", v));
    // IPv6 with a hop-by-hop header claiming 64 bytes, frame ends after 16.
    let mut v = tcp6[..54].to_vec();
    v[20] = 0; // next header: hop-by-hop
    v[18..20].copy_from_slice(&16u16.to_be_bytes());
    v.extend_from_slice(&[6, 7, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    m.push(("IPv6 hop-by-hop header longer than the packet", v));
    for (what, frame) in m {
        c.raw(a.iface, frame, x(what).drop_("malformed*"));
    }
    let mut v = c.pkt(&r, r.v4, a.v4, syn(45000, 80), 0).build();
    v.truncate(14 + 20 + 8);
    v[16..18].copy_from_slice(&28u16.to_be_bytes());
    pkt::fix_ipv4_header_checksum(&mut v);
    c.raw(
        UPLINK,
        v,
        x("uplink: TCP header cut at 8 bytes").drop_("malformed*"),
    );
    c.send(
        &a,
        a.v4,
        b.v4,
        syn(40001, 8080),
        0,
        x("well-formed SYN pod-a → pod-b").fwd(b.iface).ct("new"),
    );
    c.send(
        &r,
        r.v4,
        a.v4,
        syn(45001, 80),
        0,
        x("well-formed SYN 10.0.2.5 → pod-a").fwd(a.iface).ct("new"),
    );
    c
}

// ---- conntrack ----

fn ct_full(v6: bool) -> Case {
    let mut s = base_state();
    s.conntrack.max_entries = 1024; // the smallest table the state allows
    s.conntrack.timeouts.udp = 5;
    let mut c = Case::new(
        &v6_suffixed("ct-full", v6),
        &format!(
            "{}Conntrack capacity 1024 entries (the minimum; UDP timeout 5 s), pod-to-pod flows (one entry \
             each). Three established TCP flows pod-a → pod-b and 1021 UDP flows pod-a → pod-c fill the \
             table. A new flow is dropped `ct-full` while the established flows keep working. Flow 2 \
             closes (FIN, FIN-ACK, ACK); a new flow then evicts it (oldest closing entry) and is \
             forwarded; the next new flow finds nothing to evict: `ct-full`. At 10 s the UDP entries have \
             expired: a new flow reclaims one and is forwarded, and flow 3 still works.",
            v6_prefix(v6)
        ),
        s,
    );
    let (a, b, cc) = (pod_a(), pod_b(), pod_c());
    let mut flows: Vec<Conn> = (0..3)
        .map(|i| {
            Conn::new(
                &a,
                a.ip(v6),
                40000 + i,
                (b.ip(v6), 8080),
                &b,
                (b.ip(v6), 8080),
            )
        })
        .collect();
    for f in flows.iter_mut() {
        f.handshake(&mut c);
    }
    for i in 0..1021u16 {
        let e = x("filler UDP flow").fwd(cc.iface).ct("new");
        c.send(
            &a,
            a.ip(v6),
            cc.ip(v6),
            L4::Udp {
                sport: 10000 + i,
                dport: 53,
            },
            20,
            e,
        );
    }
    let e = x("new flow: table full").drop_("ct-full");
    c.send(&a, a.ip(v6), b.ip(v6), syn(40100, 8080), 0, e);
    flows[0].data(&mut c, 100, 200);
    flows[1].close(&mut c);
    let mut f5 = Conn::new(&a, a.ip(v6), 40101, (b.ip(v6), 8080), &b, (b.ip(v6), 8080));
    let e = f5.fc("new flow evicts the closed flow 2", "new");
    f5.c(&mut c, SYN, 0, e);
    let e = f5.fs("its SYN-ACK");
    f5.s(&mut c, SYNACK, 0, e);
    let e = x("another new flow: nothing to evict").drop_("ct-full");
    c.send(&a, a.ip(v6), b.ip(v6), syn(40102, 8080), 0, e);
    c.at(10.0);
    let mut f6 = Conn::new(&a, a.ip(v6), 40103, (b.ip(v6), 8080), &b, (b.ip(v6), 8080));
    let e = f6.fc("new flow reclaims an expired UDP entry", "new");
    f6.c(&mut c, SYN, 0, e);
    let e = flows[2].fc("flow 3 still works", "established");
    flows[2].c(&mut c, PSHACK, 10, e);
    c
}

fn ct_timeouts(v6: bool) -> Case {
    let mut s = policy_state(st::PolicyMode::Enforce, vec![pod_a_closed()]);
    let t = &mut s.conntrack.timeouts;
    t.tcp_syn_sent = 5;
    t.tcp_established = 10;
    t.tcp_time_wait = 5;
    t.tcp_fin_wait = 5;
    t.tcp_close = 3;
    t.udp = 5;
    t.icmp = 5;
    let mut c = Case::new(
        &v6_suffixed("ct-timeouts", v6),
        &format!(
            "{}Per-state conntrack timeouts (SYN_SENT 5 s, ESTABLISHED 10 s, TIME_WAIT 5 s, CLOSE 3 s, UDP \
             5 s, ICMP 5 s), measured in capture time. pod-a is default-deny on ingress, so a reply that \
             arrives after its entry expired is a new flow into pod-a and is dropped `policy-denied`, while \
             one that arrives in time is forwarded as ct reply. Covered: a SYN-ACK after SYN_SENT expiry; \
             data from the server 5 s after the last packet (kept) and 18 s after (expired); an ACK in \
             TIME_WAIT (kept) and after it (expired); a packet after RST + CLOSE timeout; UDP and ICMP \
             replies in time and late.",
            v6_prefix(v6)
        ),
        s,
    );
    let (a, b) = (pod_a(), pod_b());
    let late = |what: &str| x(what).drop_("policy-denied");
    // SYN_SENT
    let mut f1 = Conn::new(&a, a.ip(v6), 40001, (b.ip(v6), 8080), &b, (b.ip(v6), 8080));
    let e = f1.fc("SYN", "new");
    f1.c(&mut c, SYN, 0, e);
    c.at(6.0);
    f1.s(
        &mut c,
        SYNACK,
        0,
        late("SYN-ACK 6 s later (SYN_SENT expired)"),
    );
    // ESTABLISHED
    c.at(7.0);
    let mut f2 = Conn::new(&a, a.ip(v6), 40002, (b.ip(v6), 8080), &b, (b.ip(v6), 8080));
    f2.handshake(&mut c);
    c.at(12.0);
    let e = f2.fs("server data 5 s after the last packet");
    f2.s(&mut c, PSHACK, 100, e);
    c.at(30.0);
    f2.s(
        &mut c,
        PSHACK,
        100,
        late("server data 18 s idle (ESTABLISHED expired)"),
    );
    // TIME_WAIT
    c.at(31.0);
    let mut f3 = Conn::new(&a, a.ip(v6), 40003, (b.ip(v6), 8080), &b, (b.ip(v6), 8080));
    f3.handshake(&mut c);
    f3.close(&mut c);
    c.at(33.0);
    let e = f3.fs("server ACK 2 s into TIME_WAIT");
    f3.s(&mut c, ACK, 0, e);
    c.at(40.0);
    f3.s(&mut c, ACK, 0, late("server ACK after TIME_WAIT expired"));
    // CLOSE after RST
    c.at(41.0);
    let mut f4 = Conn::new(&a, a.ip(v6), 40004, (b.ip(v6), 8080), &b, (b.ip(v6), 8080));
    f4.handshake(&mut c);
    let e = f4.fc("RST from the client", "established");
    f4.c(&mut c, RST, 0, e);
    c.at(50.0);
    f4.s(&mut c, ACK, 0, late("server packet after CLOSE expired"));
    // UDP
    c.at(51.0);
    let mut u = Conn::new(&a, a.ip(v6), 50000, (b.ip(v6), 53), &b, (b.ip(v6), 53)).udp();
    let e = u.fc("UDP query", "new");
    u.c(&mut c, ACK, 30, e);
    c.at(52.0);
    let e = u.fs("UDP response after 1 s");
    u.s(&mut c, ACK, 30, e);
    c.at(60.0);
    u.s(&mut c, ACK, 30, late("UDP response 8 s idle (expired)"));
    // ICMP
    c.at(61.0);
    c.send(
        &a,
        a.ip(v6),
        b.ip(v6),
        L4::EchoRequest { id: 9, seq: 1 },
        8,
        x("echo request").fwd(b.iface).ct("new"),
    );
    c.at(62.0);
    c.send(
        &b,
        b.ip(v6),
        a.ip(v6),
        L4::EchoReply { id: 9, seq: 1 },
        8,
        x("echo reply after 1 s").fwd(a.iface).ct("reply"),
    );
    c.at(70.0);
    c.send(
        &b,
        b.ip(v6),
        a.ip(v6),
        L4::EchoReply { id: 9, seq: 2 },
        8,
        late("echo reply 8 s idle (expired)"),
    );
    c
}

// ---- not ours ----

fn arp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], spa: [u8; 4], tpa: [u8; 4], op: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&if op == 1 { [0; 6] } else { dst_mac });
    f.extend_from_slice(&tpa);
    f.resize(60, 0);
    f
}

fn non_ip_pass() -> Case {
    let mut c = Case::new(
        "non-ip-pass",
        "Non-IP frames go to the kernel (pass): ARP request and reply on the uplink, pod-a's ARP \
         request for its gateway on veth-a, an LLDP frame on the uplink, and an unknown ethertype \
         (0x88b5, local experimental) on veth-b.",
        base_state(),
    );
    c.raw(
        UPLINK,
        arp_frame(
            GATEWAY_MAC,
            [0xff; 6],
            [192, 168, 1, 1],
            [192, 168, 1, 10],
            1,
        ),
        x("ARP who-has 192.168.1.10 from the gateway").pass(),
    );
    c.raw(
        UPLINK,
        arp_frame(
            GATEWAY_MAC,
            UPLINK_MAC,
            [192, 168, 1, 1],
            [192, 168, 1, 10],
            2,
        ),
        x("ARP reply from the gateway").pass(),
    );
    c.raw(
        "veth-a",
        arp_frame(PODS[0].mac, [0xff; 6], [10, 0, 1, 2], [10, 0, 1, 1], 1),
        x("pod-a's ARP request for its gateway").pass(),
    );
    let mut lldp = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
    lldp.extend_from_slice(&GATEWAY_MAC);
    lldp.extend_from_slice(&[
        0x88, 0xcc, 0x02, 0x07, 0x04, 2, 0, 0, 0, 0, 0xfe, 0x04, 0x03, 0x05, b'e', b'1', 0x06,
        0x02, 0, 120, 0, 0,
    ]);
    lldp.resize(60, 0);
    c.raw(UPLINK, lldp, x("LLDP").pass());
    let mut exp = vec![0xff; 6];
    exp.extend_from_slice(&PODS[1].mac);
    exp.extend_from_slice(&[0x88, 0xb5]);
    exp.extend_from_slice(&pkt::payload(46, 3));
    c.raw("veth-b", exp, x("ethertype 0x88b5").pass());
    c
}

fn uplink_host_pass() -> Case {
    let mut svc = service(
        "web-np",
        ServiceType::NodePort,
        L4Proto::TCP,
        &[("10.96.0.11", 80)],
        vec![active("10.0.1.3", 8080)],
    );
    svc.node_ports = vec![st::NodePort {
        port: 30080,
        protocol: L4Proto::TCP,
    }];
    let mut c = Case::new(
        "uplink-host-pass",
        "Uplink traffic that is not ours (not to the PodCIDR, a service frontend or a NodePort) is \
         passed to the kernel untouched: SSH and BGP to a node IP, a ping of a node IP, UDP 53 to a \
         node IP, IPv6 SSH to the IPv6 node IP, traffic to another host's address, and an IPv6 \
         neighbour solicitation. Control: a packet to a local pod on the same uplink is forwarded, and \
         one to the NodePort is DNATed.",
        state_with(vec![svc]),
    );
    let router = remote("192.168.1.1", "fd00:192:1::1");
    let w = world();
    c.send(
        &w,
        w.v4,
        ip(NODE_IP1),
        syn(55000, 22),
        0,
        x("SSH SYN to node IP").pass(),
    );
    c.send(
        &router,
        router.v4,
        ip(NODE_IP1),
        syn(55001, 179),
        0,
        x("BGP SYN from the router").pass(),
    );
    c.send(
        &w,
        w.v4,
        ip(NODE_IP2),
        L4::EchoRequest { id: 1, seq: 1 },
        56,
        x("ping the second node IP").pass(),
    );
    c.send(
        &w,
        w.v4,
        ip(NODE_IP1),
        L4::Udp {
            sport: 55002,
            dport: 53,
        },
        30,
        x("UDP 53 to node IP").pass(),
    );
    c.send(
        &w,
        w.v6,
        ip(NODE_IP6),
        syn(55003, 22),
        0,
        x("IPv6 SSH SYN to the node IP").pass(),
    );
    c.send(
        &w,
        w.v4,
        ip("192.168.1.99"),
        syn(55004, 80),
        0,
        x("SYN to another host's address").pass(),
    );
    let mut ns = c.pkt(
        &router,
        router.v6,
        ip("ff02::1:ff00:10"),
        L4::Icmpv6(Icmpv6Type::Unknown {
            type_u8: 135,
            code_u8: 0,
            bytes5to8: [0; 4],
        }),
        0,
    );
    ns.dst_mac = [0x33, 0x33, 0xff, 0, 0, 0x10];
    ns.ttl = 255;
    let mut target = ip(NODE_IP6)
        .to_string()
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets()
        .to_vec();
    target.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 0xfe]);
    ns.payload = target;
    c.raw(
        UPLINK,
        ns.build(),
        x("IPv6 neighbour solicitation for the node IP").pass(),
    );
    let r = remote_pod();
    c.send(
        &r,
        r.v4,
        pod_a().v4,
        syn(55005, 80),
        0,
        x("control: SYN to pod-a").fwd("veth-a"),
    );
    let mut e = x("control: SYN to the NodePort")
        .fwd("veth-b")
        .backend(&ep("10.0.1.3", 8080));
    e.out_dst = Some(ep("10.0.1.3", 8080));
    c.send(&w, w.v4, ip(NODE_IP1), syn(55006, 30080), 0, e);
    c
}

// ---- the worker's own steps: resets, per-service counters, flow events ----

fn backend_removed_rst(v6: bool) -> Case {
    let vip = pick(v6, "10.96.0.54", "fd00:96::54");
    let r5 = remote("10.0.2.5", "fd00:10:2::5");
    let r6 = remote("10.0.2.6", "fd00:10:2::6");
    let (b5, b6) = (r5.ip(v6).to_string(), r6.ip(v6).to_string());
    let web = |b: &str| {
        state_with(vec![service(
            "web",
            ServiceType::ClusterIP,
            L4Proto::TCP,
            &[(vip, 80)],
            vec![active(b, 8080)],
        )])
    };
    let mut c = Case::new(
        &v6_suffixed("backend-removed-rst", v6),
        &format!(
            "Replayed with `--removed-flow-action rst`. A flow from pod-a to {} is established \
             with backend {b6}; at 1 s {b6} is removed ({b5} replaces it). The client's next data \
             segment and its FIN are each answered by a TCP reset built from the segment and sent \
             back out of veth-a (verdict forward, egress veth-a): MACs, addresses and ports \
             swapped (from the VIP to the client), no payload, RST with the segment's ACK number \
             as its sequence number. The flow event of such a segment is the drop it was \
             (`backend-gone`), and the service counts it as dropped. A new flow goes to {b5}.",
            ep(vip, 80)
        ),
        web(&b6),
    );
    c.state_at(1.0, "state-removed.yaml", web(&b5));
    c.removed_flow_action("rst");
    c.events();
    c.services();
    let a = pod_a();
    let mut f = Conn::new(&a, a.ip(v6), 40000, (ip(vip), 80), &r6, (ip(&b6), 8080));
    f.handshake(&mut c);
    f.data(&mut c, 200, 1000);
    c.at(2.0);
    for (flags, len, what) in [
        (PSHACK, 100, "data on the flow whose backend was removed"),
        (FINACK, 0, "the client's FIN on that flow"),
    ] {
        let mut e = x(what)
            .rst(a.iface)
            .ct("established")
            .backend(&ep(&b6, 8080))
            .out_src(&f.frontend_ep())
            .out_dst(&f.client_ep());
        e.has_service = Some(true);
        f.c(&mut c, flags, len, e);
    }
    let mut g = Conn::new(&a, a.ip(v6), 40001, (ip(vip), 80), &r5, (ip(&b5), 8080));
    g.handshake(&mut c);
    c
}

fn service_counters() -> Case {
    let web = service(
        "web",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[("10.96.0.90", 80), ("fd00:96::90", 80)],
        vec![active("10.0.2.5", 8080), active("fd00:10:2::5", 8080)],
    );
    let dns = service(
        "dns",
        ServiceType::ClusterIP,
        L4Proto::UDP,
        &[("10.96.0.91", 53)],
        vec![active(PODS[2].v4, 5353)],
    );
    let empty = service(
        "empty",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[("10.96.0.92", 80)],
        vec![],
    );
    let mut s = policy_state(
        st::PolicyMode::Enforce,
        vec![ingress(
            "pod-c",
            vec![allow_ids(&[ID_A], st::RuleProto::UDP, &[(5353, None)])],
        )],
    );
    s.services = vec![web, dns, empty];
    let mut c = Case::new(
        "service-counters",
        "Per-service counters of the worker, pinned in `summary.json`: `web` (TCP, v4 and v6 \
         frontends, remote backends) carries one whole v4 conversation and one v6 handshake; `dns` \
         (UDP → pod-c:5353, pod-c admits only pod-a) gets two queries from pod-a with replies and \
         one query from pod-b dropped `policy-denied`; `empty` has no backend (two SYNs dropped \
         `no-backend`). pod-a → pod-b without a service counts nowhere. Per service: flows = \
         forwarded new flows, packets and bytes = forwarded frames both ways (bytes as received), \
         dropped = its dropped frames.",
        s,
    );
    c.services();
    let (a, b, cc) = (pod_a(), pod_b(), pod_c());
    let r5 = remote_pod();
    let mut f = Conn::new(&a, a.v4, 40000, (ip("10.96.0.90"), 80), &r5, (r5.v4, 8080));
    f.exchange(&mut c);
    let mut g = Conn::new(&a, a.v6, 40001, (ip("fd00:96::90"), 80), &r5, (r5.v6, 8080));
    g.handshake(&mut c);
    for port in [41000, 41001] {
        let mut q = Conn::new(&a, a.v4, port, (ip("10.96.0.91"), 53), &cc, (cc.v4, 5353)).udp();
        let e = q.fc("DNS query", "new").policy("allow");
        q.c(&mut c, ACK, 40, e);
        let e = q.fs("DNS answer");
        q.s(&mut c, ACK, 120, e);
    }
    let mut e = x("DNS query from pod-b (pod-c does not admit it)").drop_("policy-denied");
    e.has_service = Some(true);
    c.send(
        &b,
        b.v4,
        ip("10.96.0.91"),
        L4::Udp {
            sport: 41002,
            dport: 53,
        },
        40,
        e,
    );
    for port in [42000, 42001] {
        let mut e = x("SYN to the service without backends (rejected)").rejected();
        e.has_service = Some(true);
        c.send(&a, a.v4, ip("10.96.0.92"), syn(port, 80), 0, e);
    }
    let mut e = x("pod-a → pod-b, no service").fwd(b.iface).ct("new");
    e.has_service = Some(false);
    c.send(&a, a.v4, b.v4, syn(43000, 8080), 0, e);
    c
}

fn flow_events() -> Case {
    let mut s = policy_state(
        st::PolicyMode::Enforce,
        vec![ingress(
            "pod-b",
            vec![allow_ids(&[ID_A], st::RuleProto::TCP, &[(8080, None)])],
        )],
    );
    s.services = vec![
        service(
            "web",
            ServiceType::ClusterIP,
            L4Proto::TCP,
            &[("10.96.0.95", 80), ("fd00:96::95", 80)],
            vec![active(PODS[1].v4, 8080), active(PODS[1].v6, 8080)],
        ),
        service(
            "empty",
            ServiceType::ClusterIP,
            L4Proto::TCP,
            &[("10.96.0.96", 80)],
            vec![],
        ),
    ];
    let mut c = Case::new(
        "flow-events",
        "Flow events (`--events`, the records `nodeplane observe --json` prints), pinned in \
         `events.jsonl`: one per new flow, whatever its verdict, and one per dropped frame; \
         established and reply frames and passed frames make none. Service `web` → pod-b:8080, \
         which admits only pod-a on TCP 8080. Events: pod-a → web (v4 and v6, forwarded, policy \
         allow), pod-c → web (dropped `policy-denied`), pod-a → pod-c UDP (forwarded, no \
         service), pod-a → `empty` (dropped `no-backend`), a spoofed source (dropped \
         `spoofed-source`). No events: SYN-ACK, ACK, data, an ARP request. Event times are the \
         capture's clock (the time of the burst's first frame).",
        s,
    );
    c.events();
    let (a, b, cc) = (pod_a(), pod_b(), pod_c());
    for v6 in [false, true] {
        let vip = pick(v6, "10.96.0.95", "fd00:96::95");
        let mut f = Conn::new(&a, a.ip(v6), 40000, (ip(vip), 80), &b, (b.ip(v6), 8080));
        f.handshake(&mut c);
        c.expect_mut(c.len() - 3).policy = Some("allow".into());
        let e = f.fc("request data", "established");
        f.c(&mut c, PSHACK, 60, e);
        let mut e = x("pod-c → web (pod-b does not admit pod-c)").drop_("policy-denied");
        e.has_service = Some(true);
        c.send(&cc, cc.ip(v6), ip(vip), syn(40001, 80), 0, e);
    }
    let mut e = x("pod-a → pod-c UDP, no service").fwd(cc.iface).ct("new");
    e.has_service = Some(false);
    c.send(
        &a,
        a.v4,
        cc.v4,
        L4::Udp {
            sport: 40002,
            dport: 5353,
        },
        30,
        e,
    );
    let mut e = x("SYN to the service without backends (rejected)").rejected();
    e.has_service = Some(true);
    c.send(&a, a.v4, ip("10.96.0.96"), syn(40003, 80), 0, e);
    c.send(
        &a,
        ip("10.0.1.99"),
        cc.v4,
        syn(40004, 5432),
        0,
        x("veth-a frame with a source that is not pod-a's").drop_("spoofed-source"),
    );
    c.raw(
        "veth-a",
        arp_frame(PODS[0].mac, [0xff; 6], [10, 0, 1, 2], [10, 0, 1, 1], 1),
        x("pod-a's ARP request (passed: no event)").pass(),
    );
    c
}

/// A backend with EndpointSlice conditions.
fn cond(ip_s: &str, port: u16, ready: bool, serving: bool, terminating: bool) -> st::Backend {
    let mut b = active(ip_s, port);
    b.ready = Some(ready);
    b.serving = Some(serving);
    b.terminating = Some(terminating);
    b
}

/// A SYN from `from` to a frontend, with its expectation.
fn syn_to(c: &mut Case, from: &Host, v6: bool, fe: (&str, u16), sport: u16, e: Expect) {
    let mut e = e;
    e.has_service = Some(true);
    c.send(from, from.ip(v6), ip(fe.0), syn(sport, fe.1), 0, e);
}

fn terminating_fallback() -> Case {
    let b = pod_b();
    let fallback = service(
        "fallback",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[("10.96.0.80", 80), ("fd00:96::80", 80)],
        vec![
            cond("10.0.1.3", 8080, false, true, true),
            cond("10.0.2.5", 8080, false, false, true),
            cond("fd00:10:1::3", 8080, false, true, true),
        ],
    );
    let ready_first = service(
        "ready-first",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[("10.96.0.81", 80)],
        vec![
            cond("10.0.1.3", 8080, true, true, false),
            cond("10.0.1.4", 8080, false, true, true),
        ],
    );
    let none_serving = service(
        "none-serving",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[("10.96.0.82", 80)],
        vec![cond("10.0.1.3", 8080, false, false, true)],
    );
    let legacy = service(
        "legacy",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[("10.96.0.83", 80)],
        vec![backend("10.0.1.3", 8080, 1, Terminating)],
    );
    let mut c = Case::new(
        "terminating-fallback",
        "KEP-1669 (Kubernetes e2e \"should fallback to terminating endpoints when there are no \
         ready endpoints\"): backends carry EndpointSlice conditions. `fallback` has no ready \
         backend: new flows go to its serving terminating backend pod-b (IPv4 and IPv6), never to \
         the terminating backend that no longer serves (10.0.2.5). `ready-first` has a ready \
         backend (pod-b) and a serving terminating one (pod-c): every new flow goes to the ready \
         one. `none-serving` (terminating, not serving) and `legacy` (the old `state: terminating`, \
         read as the same) take no new flows: their SYNs are rejected.",
        state_with(vec![fallback, ready_first, none_serving, legacy]),
    );
    let a = pod_a();
    for v6 in [false, true] {
        let vip = pick(v6, "10.96.0.80", "fd00:96::80");
        let mut f = Conn::new(&a, a.ip(v6), 40000, (ip(vip), 80), &b, (b.ip(v6), 8080));
        f.handshake(&mut c);
        f.data(&mut c, 64, 256);
    }
    for port in [40001, 40002, 40003] {
        let mut f = Conn::new(&a, a.v4, port, (ip("10.96.0.81"), 80), &b, (b.v4, 8080));
        f.handshake(&mut c);
    }
    syn_to(
        &mut c,
        &a,
        false,
        ("10.96.0.82", 80),
        40004,
        x("SYN to a service whose only backend is terminating and not serving").rejected(),
    );
    syn_to(
        &mut c,
        &a,
        false,
        ("10.96.0.83", 80),
        40005,
        x("SYN to a service whose only backend is `state: terminating`").rejected(),
    );
    c
}

fn traffic_policy_local() -> Case {
    let (b, cc) = (pod_b(), pod_c());
    let mut lb_local = service(
        "lb-local",
        ServiceType::LoadBalancer,
        L4Proto::TCP,
        &[("198.51.100.30", 80), ("2001:db8:100::30", 80)],
        vec![
            active("10.0.1.3", 8080),
            active("10.0.2.5", 8080),
            active("fd00:10:1::3", 8080),
            active("fd00:10:2::5", 8080),
        ],
    );
    lb_local.node_ports = vec![st::NodePort {
        port: 30100,
        protocol: L4Proto::TCP,
    }];
    lb_local.external_traffic_policy = st::TrafficPolicy::Local;
    lb_local.health_check_node_port = Some(30101);
    let mut lb_remote = service(
        "lb-remote",
        ServiceType::LoadBalancer,
        L4Proto::TCP,
        &[("198.51.100.31", 80)],
        vec![active("10.0.2.6", 8080)],
    );
    lb_remote.external_traffic_policy = st::TrafficPolicy::Local;
    let mut cip_local = service(
        "cip-local",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[("10.96.0.70", 80)],
        vec![active("10.0.2.7", 8080), active("10.0.1.4", 8080)],
    );
    cip_local.internal_traffic_policy = st::TrafficPolicy::Local;
    let mut cip_remote = service(
        "cip-remote",
        ServiceType::ClusterIP,
        L4Proto::TCP,
        &[("10.96.0.71", 80)],
        vec![active("10.0.2.8", 8080)],
    );
    cip_remote.internal_traffic_policy = st::TrafficPolicy::Local;
    let mut c = Case::new(
        "traffic-policy-local",
        "Traffic policies (Kubernetes e2e \"should work for type=LoadBalancer\" with \
         externalTrafficPolicy: Local, \"should respect internalTrafficPolicy=Local Pod to Pod\"). \
         `lb-local` (externalTrafficPolicy: Local; backends pod-b and a pod on node-2, both \
         families): world clients reach the VIP and node port 30100 on pod-b only, the client \
         address kept. `lb-remote` (Local, its only backend on node-2): a world client's SYN is \
         dropped `no-local-backend`, not rejected, while pod-a on this node still reaches the \
         node-2 backend (clients on the node use every backend, as kube-proxy short-circuits \
         them). `cip-local` (internalTrafficPolicy: Local): pod-a's flows go to pod-c, never to \
         the node-2 backend. `cip-remote` (Local, no backend here): dropped `no-local-backend`.",
        state_with(vec![lb_local, lb_remote, cip_local, cip_remote]),
    );
    let (w, a) = (world(), pod_a());
    for (i, (fe, port)) in [
        ("198.51.100.30", 80),
        ("198.51.100.30", 80),
        ("198.51.100.30", 80),
        (NODE_IP1, 30100),
    ]
    .into_iter()
    .enumerate()
    {
        let mut f = Conn::new(&w, w.v4, 53000 + i as u16, (ip(fe), port), &b, (b.v4, 8080));
        f.handshake(&mut c);
    }
    let mut f = Conn::new(
        &w,
        w.v6,
        53010,
        (ip("2001:db8:100::30"), 80),
        &b,
        (b.v6, 8080),
    );
    f.handshake(&mut c);
    syn_to(
        &mut c,
        &w,
        false,
        ("198.51.100.31", 80),
        53020,
        x("world SYN to lb-remote (no local backend)").drop_("no-local-backend"),
    );
    let r6 = remote("10.0.2.6", "fd00:10:2::6");
    let mut f = Conn::new(
        &a,
        a.v4,
        40000,
        (ip("198.51.100.31"), 80),
        &r6,
        (r6.v4, 8080),
    );
    f.handshake(&mut c);
    for port in [40001, 40002] {
        let mut f = Conn::new(&a, a.v4, port, (ip("10.96.0.70"), 80), &cc, (cc.v4, 8080));
        f.handshake(&mut c);
    }
    syn_to(
        &mut c,
        &a,
        false,
        ("10.96.0.71", 80),
        40003,
        x("SYN to cip-remote (no local backend)").drop_("no-local-backend"),
    );
    c
}

fn lb_source_ranges() -> Case {
    let b = pod_b();
    let mut svc = service(
        "lb-ranges",
        ServiceType::LoadBalancer,
        L4Proto::TCP,
        &[("198.51.100.40", 80), ("2001:db8:100::40", 80)],
        vec![active("10.0.1.3", 8080), active("fd00:10:1::3", 8080)],
    );
    svc.node_ports = vec![st::NodePort {
        port: 30110,
        protocol: L4Proto::TCP,
    }];
    svc.load_balancer_source_ranges = vec![
        "203.0.113.0/24".parse().unwrap(),
        "2001:db8:cafe::/48".parse().unwrap(),
    ];
    let mut c = Case::new(
        "lb-source-ranges",
        "loadBalancerSourceRanges (Kubernetes e2e \"should only allow access from service \
         loadbalancer source ranges\"): the VIPs of `lb-ranges` admit clients in 203.0.113.0/24 \
         and 2001:db8:cafe::/48 only; a client outside them is dropped `source-range-denied`. The \
         ranges restrict the load-balancer VIPs, not the node port (as kube-proxy).",
        state_with(vec![svc]),
    );
    let (w, o) = (world(), remote("198.18.0.9", "2001:db8:beef::9"));
    for v6 in [false, true] {
        let vip = pick(v6, "198.51.100.40", "2001:db8:100::40");
        let mut f = Conn::new(&w, w.ip(v6), 53000, (ip(vip), 80), &b, (b.ip(v6), 8080));
        f.handshake(&mut c);
        syn_to(
            &mut c,
            &o,
            v6,
            (vip, 80),
            53001,
            x("SYN from outside the source ranges").drop_("source-range-denied"),
        );
    }
    let mut f = Conn::new(&o, o.v4, 53002, (ip(NODE_IP1), 30110), &b, (b.v4, 8080));
    f.handshake(&mut c);
    c
}

fn reject_rate_limit() -> Case {
    let svc = service(
        "empty-udp",
        ServiceType::ClusterIP,
        L4Proto::UDP,
        &[("10.96.0.63", 53)],
        vec![],
    );
    let mut c = Case::new(
        "reject-rate-limit",
        "Rejects are rate-limited per worker (1000 per second, a burst of 50: Linux's ICMP \
         defaults): 60 UDP datagrams to a service without backends, 10 µs apart, get 50 ICMP port \
         unreachables; the other 10 are dropped `no-backend` without an answer and counted as \
         suppressed (`summary.json`). 20 ms later the bucket has refilled: the next datagram is \
         answered again.",
        state_with(vec![svc]),
    );
    let a = pod_a();
    let udp = |sport| L4::Udp { sport, dport: 53 };
    for k in 0..60u16 {
        c.at(f64::from(k) * 10e-6);
        let mut e = if k < 50 {
            x("UDP to a service without backends: answered").rejected()
        } else {
            x("UDP to a service without backends: over the limit, not answered").drop_("no-backend")
        };
        e.has_service = Some(true);
        c.send(&a, a.v4, ip("10.96.0.63"), udp(50000 + k), 16, e);
    }
    c.at(0.020_6);
    let mut e = x("20 ms later: answered again").rejected();
    e.has_service = Some(true);
    c.send(&a, a.v4, ip("10.96.0.63"), udp(50100), 16, e);
    c
}
