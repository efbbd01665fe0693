//! Every validation rule: a state that breaks it is rejected with the expected field path and
//! reason. Each case starts from the (valid) example node and breaks one thing.

use std::net::IpAddr;

use nodeplane_state::*;

fn base() -> State {
    example::state().expect("the example is valid")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn svc<'a>(s: &'a mut State, name: &str) -> &'a mut Service {
    s.services.iter_mut().find(|x| x.name == name).unwrap()
}

fn ep<'a>(s: &'a mut State, name: &str) -> &'a mut Endpoint {
    s.endpoints.iter_mut().find(|x| x.name == name).unwrap()
}

fn pol<'a>(s: &'a mut State, name: &str) -> &'a mut Policy {
    s.policies.iter_mut().find(|x| x.endpoint == name).unwrap()
}

/// Breaks the example with `f`, expects a problem at `field` whose reason contains `reason`.
#[track_caller]
fn reject(f: impl FnOnce(&mut State), field: &str, reason: &str) {
    let mut s = base();
    f(&mut s);
    let err = validate(&s).expect_err(&format!("expected a problem at {field}"));
    assert!(
        err.has(field, reason),
        "expected {field}: ...{reason}..., got:\n{err}"
    );
    // Display carries the same problem on its own line.
    assert!(err
        .to_string()
        .lines()
        .any(|l| l.trim_start().starts_with(&format!("{field}: ")) && l.contains(reason)));
}

#[track_caller]
fn accept(f: impl FnOnce(&mut State)) {
    let mut s = base();
    f(&mut s);
    if let Err(e) = validate(&s) {
        panic!("expected the state to be valid, got:\n{e}");
    }
}

#[test]
fn node() {
    reject(
        |s| s.node.pod_cidrs[0] = "10.244.1.1/24".parse().unwrap(),
        "node.pod_cidrs[0]",
        "host bits set (did you mean 10.244.1.0/24?)",
    );
    reject(
        |s| s.node.pod_cidrs.push("10.244.0.0/16".parse().unwrap()),
        "node.pod_cidrs[2]",
        "overlaps node.pod_cidrs[0]",
    );
    reject(
        |s| s.node.node_ips.push(ip("192.168.100.2")),
        "node.node_ips[2]",
        "listed twice",
    );
    reject(
        |s| s.node.node_ips.push(ip("0.0.0.0")),
        "node.node_ips[2]",
        "unspecified",
    );
    reject(
        |s| s.node.node_ips.push(ip("ff02::1")),
        "node.node_ips[2]",
        "multicast",
    );
    reject(
        |s| s.node.maglev_table_size = 16383,
        "node.maglev_table_size",
        "not a prime",
    );
    reject(
        |s| s.node.maglev_table_size = 241,
        "node.maglev_table_size",
        "outside [251, 131071]",
    );
    reject(
        |s| s.node.maglev_table_size = 131_101,
        "node.maglev_table_size",
        "outside [251, 131071]",
    );
    reject(
        |s| s.node.name = "node 1".into(),
        "node.name",
        "without whitespace",
    );
    accept(|s| s.node.maglev_table_size = 131_071);
}

#[test]
fn maglev_table_must_outgrow_the_backends() {
    // `web` has 4 active backends: 400 slots needed.
    reject(
        |s| s.node.maglev_table_size = 397,
        "services[web].backends",
        "4 active backends need node.maglev_table_size > 400",
    );
    accept(|s| s.node.maglev_table_size = 401);
    // Only active backends count (they are the ones in the table), and only maglev services.
    accept(|s| {
        s.node.maglev_table_size = 251;
        for b in &mut svc(s, "web").backends[2..] {
            b.state = BackendState::Terminating;
        }
    });
    accept(|s| {
        s.node.maglev_table_size = 251;
        svc(s, "web").algorithm = Algorithm::Random;
    });
}

#[test]
fn interfaces() {
    reject(
        |s| s.interfaces[3].name = "pod-web1".into(),
        "interfaces[pod-web1].name",
        "duplicate interface name \"pod-web1\" (also interfaces[pod-web1])",
    );
    reject(
        |s| s.interfaces[3].name = "pod-web2-too-long".into(),
        "interfaces[pod-web2-too-long].name",
        "not a Linux interface name",
    );
    reject(
        |s| s.interfaces[3].name = "pod/web2".into(),
        "interfaces[pod/web2].name",
        "not a Linux interface name",
    );
    reject(
        |s| s.interfaces[3].name = String::new(),
        "interfaces[3].name",
        "not a Linux interface name",
    );
    reject(
        |s| {
            s.interfaces[0].role = InterfaceRole::Pod;
            s.interfaces[0].gateway_mac = None;
        },
        "interfaces",
        "no interface has role uplink",
    );
    reject(
        |s| s.interfaces[1].role = InterfaceRole::Uplink,
        "interfaces[pod-client].role",
        "second uplink interface (the uplink is interfaces[uplink0])",
    );
    reject(
        |s| s.interfaces[2].gateway_mac = Some("02:00:00:00:00:fe".parse().unwrap()),
        "interfaces[pod-web1].gateway_mac",
        "only an uplink interface has a gateway MAC",
    );
    reject(
        |s| s.interfaces[2].mac = "01:00:5e:00:00:01".parse().unwrap(),
        "interfaces[pod-web1].mac",
        "unicast",
    );
    reject(
        |s| s.interfaces[2].mac = MacAddr([0; 6]),
        "interfaces[pod-web1].mac",
        "all zeros",
    );
    reject(
        |s| s.interfaces[0].gateway_mac = Some(s.interfaces[0].mac),
        "interfaces[uplink0].gateway_mac",
        "own MAC",
    );
    reject(
        |s| s.interfaces[0].gateway_mac = Some("ff:ff:ff:ff:ff:ff".parse().unwrap()),
        "interfaces[uplink0].gateway_mac",
        "unicast",
    );
    // The uplink's gateway MAC is optional (the runtime learns it from the neighbour table).
    accept(|s| s.interfaces[0].gateway_mac = None);
    // A host interface: nodeplane's end of a veth pair into the node's stack.
    let host = |s: &mut State| {
        s.interfaces.push(Interface {
            name: "nph1".into(),
            role: InterfaceRole::Host,
            mac: "02:00:00:00:00:11".parse().unwrap(),
            gateway_mac: Some("02:00:00:00:00:10".parse().unwrap()),
            peer: Some("nph0".into()),
            mtu: None,
        })
    };
    accept(host);
    reject(
        |s| {
            host(s);
            s.interfaces[4].gateway_mac = None;
        },
        "interfaces[nph1].gateway_mac",
        "a host interface needs gateway_mac",
    );
    reject(
        |s| {
            host(s);
            s.interfaces[4].peer = None;
        },
        "interfaces[nph1].peer",
        "a host interface needs peer",
    );
    reject(
        |s| {
            host(s);
            s.interfaces[4].peer = Some("pod-web1".into());
        },
        "interfaces[nph1].peer",
        "also a dataplane interface",
    );
    reject(
        |s| {
            host(s);
            host(s);
            s.interfaces[5].name = "nph2".into();
        },
        "interfaces[nph2].role",
        "a second host interface (the host interface is interfaces[nph1])",
    );
    reject(
        |s| s.interfaces[2].peer = Some("x".into()),
        "interfaces[pod-web1].peer",
        "only a host interface has a peer",
    );
    reject(
        |s| {
            host(s);
            s.endpoints[0].interface = "nph1".into();
        },
        "endpoints[client].interface",
        "has role host; endpoints sit behind pod interfaces",
    );
    // A host-network backend: a service backend on a node IP.
    accept(|s| {
        s.services[0].backends[0].ip = ip("192.168.100.2");
    });
    // No interfaces at all (and so no endpoints) is a valid, if idle, node.
    accept(|s| {
        s.interfaces.clear();
        s.endpoints.clear();
        s.policies.clear();
    });
}

#[test]
fn endpoints() {
    reject(
        |s| s.endpoints[2].name = "web-1".into(),
        "endpoints[web-1].name",
        "duplicate endpoint name \"web-1\"",
    );
    reject(
        |s| s.endpoints[2].name = "web 2".into(),
        "endpoints[2].name",
        "not a valid name",
    );
    reject(
        |s| ep(s, "client").interface = "pod-nope".into(),
        "endpoints[client].interface",
        "no interface named \"pod-nope\"",
    );
    reject(
        |s| ep(s, "client").interface = "uplink0".into(),
        "endpoints[client].interface",
        "has role uplink",
    );
    reject(
        |s| ep(s, "web-2").ips[0] = ip("10.244.1.21"),
        "endpoints[web-2].ips[0]",
        "already an IP of endpoints[web-1]",
    );
    reject(
        |s| ep(s, "web-2").ips.push(ip("10.244.1.22")),
        "endpoints[web-2].ips[2]",
        "listed twice",
    );
    reject(
        |s| ep(s, "client").ips.push(ip("192.168.100.2")),
        "endpoints[client].ips[2]",
        "is a node IP",
    );
    reject(
        |s| ep(s, "client").ips[0] = ip("10.244.9.10"),
        "endpoints[client].ips[0]",
        "outside every PodCIDR",
    );
    reject(
        |s| ep(s, "client").ips[1] = ip("fd00:245::10"),
        "endpoints[client].ips[1]",
        "outside every PodCIDR",
    );
    reject(
        |s| ep(s, "client").ips[0] = ip("127.0.0.1"),
        "endpoints[client].ips[0]",
        "loopback",
    );
    reject(
        |s| ep(s, "client").ips.clear(),
        "endpoints[client].ips",
        "at least one IP",
    );
    reject(
        |s| ep(s, "client").identity = reserved::WORLD,
        "endpoints[client].identity",
        "identity 2 is reserved",
    );
    reject(
        |s| ep(s, "client").identity = 255,
        "endpoints[client].identity",
        "reserved",
    );
    // Cluster id 3, local identity 5: reserved in every cluster.
    reject(
        |s| ep(s, "client").identity = (3 << 24) | 5,
        "endpoints[client].identity",
        "low 24 bits (5) must be >= 256",
    );
    accept(|s| ep(s, "client").identity = reserved::FIRST_USER);
    accept(|s| ep(s, "client").identity = reserved::MAX);
    accept(|s| ep(s, "client").identity = (3 << 24) | 1001);
    reject(
        |s| ep(s, "client").mac = "03:00:00:00:02:0a".parse().unwrap(),
        "endpoints[client].mac",
        "unicast",
    );
    reject(
        |s| ep(s, "client").mac = "02:00:00:00:01:01".parse().unwrap(),
        "endpoints[client].mac",
        "also the MAC of interface \"pod-client\"",
    );
    reject(
        |s| {
            ep(s, "client").labels.insert(String::new(), "x".into());
        },
        "endpoints[client].labels",
        "empty",
    );
}

#[test]
fn ipcache() {
    reject(
        |s| s.ipcache[0].prefix = "10.244.2.1/24".parse().unwrap(),
        "ipcache[10.244.2.1/24].prefix",
        "host bits set (did you mean 10.244.2.0/24?)",
    );
    reject(
        |s| {
            s.ipcache.push(IpcacheEntry {
                prefix: "10.0.0.0/8".parse().unwrap(),
                identity: 4000,
            })
        },
        "ipcache[10.0.0.0/8].prefix",
        "listed twice",
    );
    reject(
        |s| s.ipcache[1].identity = 100,
        "ipcache[10.0.0.0/8].identity",
        "identity 100 is reserved",
    );
    reject(
        |s| {
            s.ipcache.push(IpcacheEntry {
                prefix: "10.244.1.10/32".parse().unwrap(),
                identity: 4000,
            })
        },
        "ipcache[10.244.1.10/32].prefix",
        "is an IP of local endpoint endpoints[client]",
    );
    reject(
        |s| {
            s.ipcache.push(IpcacheEntry {
                prefix: "fd00:100::2/128".parse().unwrap(),
                identity: 4000,
            })
        },
        "ipcache[fd00:100::2/128].prefix",
        "is a node IP",
    );
    // A remote pod's host route and an overlapping (longer) prefix are fine: longest match.
    accept(|s| {
        s.ipcache.push(IpcacheEntry {
            prefix: "10.244.2.7/32".parse().unwrap(),
            identity: 2002,
        })
    });
}

#[test]
fn service_shapes() {
    reject(
        |s| s.services[1].name = "web".into(),
        "services[web].name",
        "duplicate service name \"web\"",
    );
    reject(
        |s| s.services[1].name = String::new(),
        "services[1].name",
        "not a valid name",
    );
    reject(
        |s| svc(s, "dns").frontends.clear(),
        "services[dns].frontends",
        "a ClusterIP service needs at least one frontend",
    );
    reject(
        |s| {
            svc(s, "web").node_ports.push(NodePort {
                port: 30999,
                protocol: L4Proto::TCP,
            })
        },
        "services[web].node_ports",
        "only NodePort and LoadBalancer services open node ports",
    );
    reject(
        |s| {
            let d = svc(s, "dns");
            d.kind = ServiceType::ExternalIP;
            d.node_ports.push(NodePort {
                port: 30999,
                protocol: L4Proto::UDP,
            });
        },
        "services[dns].node_ports",
        "this one is ExternalIP",
    );
    reject(
        |s| svc(s, "web-nodeport").node_ports.clear(),
        "services[web-nodeport].node_ports",
        "a NodePort service needs at least one node port",
    );
    reject(
        |s| svc(s, "web-lb").frontends.clear(),
        "services[web-lb].frontends",
        "a LoadBalancer service needs at least one frontend",
    );
    reject(
        |s| {
            let d = svc(s, "dns");
            d.kind = ServiceType::ExternalIP;
            d.frontends.clear();
        },
        "services[dns].frontends",
        "an ExternalIP service needs at least one frontend",
    );
    reject(
        |s| s.node.node_ips.clear(),
        "services[web-nodeport].node_ports",
        "node.node_ips is empty",
    );
    // A NodePort service needs no cluster IP; a LoadBalancer may open node ports too.
    accept(|s| svc(s, "web-nodeport").frontends.clear());
    accept(|s| {
        svc(s, "web-lb").node_ports.push(NodePort {
            port: 30081,
            protocol: L4Proto::TCP,
        })
    });
    // A service without backends is valid (new flows to it find no backend).
    accept(|s| svc(s, "dns").backends.clear());
}

#[test]
fn service_frontends() {
    reject(
        |s| svc(s, "web-lb").frontends[0].ip = ip("10.96.0.10"),
        "services[web-lb].frontends[0]",
        "10.96.0.10:80/TCP is already a frontend of services[web]",
    );
    reject(
        |s| {
            let f = svc(s, "web").frontends[1].clone();
            svc(s, "web").frontends.push(f);
        },
        "services[web].frontends[2]",
        "[fd00:96::10]:80/TCP is listed twice (also frontends[1])",
    );
    // Same address and port, other protocol: a different frontend.
    accept(|s| {
        svc(s, "dns").frontends.push(Frontend {
            ip: ip("10.96.0.10"),
            port: 80,
            protocol: L4Proto::UDP,
        })
    });
    reject(
        |s| {
            svc(s, "web-lb").node_ports.push(NodePort {
                port: 30080,
                protocol: L4Proto::TCP,
            })
        },
        "services[web-lb].node_ports[0]",
        "node port 30080/TCP is already opened by services[web-nodeport]",
    );
    reject(
        |s| {
            let np = svc(s, "web-nodeport");
            np.node_ports[1].port = 30080;
            np.node_ports[1].protocol = L4Proto::TCP;
        },
        "services[web-nodeport].node_ports[1]",
        "listed twice (also node_ports[0])",
    );
    accept(|s| svc(s, "web-nodeport").node_ports[1].port = 30080); // 30080/UDP next to /TCP
    reject(
        |s| svc(s, "web").frontends[0].ip = ip("192.168.100.2"),
        "services[web].frontends[0].ip",
        "is a node IP; a cluster IP must be a virtual address",
    );
    reject(
        |s| svc(s, "web").frontends[0].port = 0,
        "services[web].frontends[0].port",
        "port 0",
    );
    reject(
        |s| svc(s, "web").frontends[0].ip = ip("224.0.0.1"),
        "services[web].frontends[0].ip",
        "multicast",
    );
    reject(
        |s| svc(s, "web").frontends[0].ip = ip("10.244.1.200"),
        "services[web].frontends[0].ip",
        "inside the node's PodCIDR",
    );
    reject(
        |s| svc(s, "web").frontends[0].ip = ip("10.244.1.21"),
        "services[web].frontends[0].ip",
        "is an IP of endpoint endpoints[web-1]",
    );
    // An external IP may be a node IP, unless a node port already takes that port there.
    accept(|s| {
        let d = svc(s, "dns");
        d.kind = ServiceType::ExternalIP;
        d.frontends[0].ip = ip("192.168.100.2");
    });
    reject(
        |s| {
            let d = svc(s, "dns");
            d.kind = ServiceType::ExternalIP;
            d.frontends[0] = Frontend {
                ip: ip("fd00:100::2"),
                port: 30053,
                protocol: L4Proto::UDP,
            };
        },
        "services[dns].frontends[0]",
        "[fd00:100::2]:30053/UDP collides with node port 30053/UDP of services[web-nodeport]",
    );
}

#[test]
fn service_backends_and_affinity() {
    reject(
        |s| svc(s, "dns").backends[1].ip = ip("10.244.1.21"),
        "services[dns].backends[1]",
        "backend 10.244.1.21:5353 is listed twice (also backends[0])",
    );
    // Same IP, other port: another backend.
    accept(|s| {
        svc(s, "dns").backends[1] = Backend {
            ip: ip("10.244.1.21"),
            port: 5354,
            weight: 1,
            state: BackendState::Active,
            ready: None,
            serving: None,
            terminating: None,
        }
    });
    reject(
        |s| svc(s, "dns").backends[0].weight = 0,
        "services[dns].backends[0].weight",
        "weight must be >= 1",
    );
    reject(
        |s| svc(s, "dns").backends[0].port = 0,
        "services[dns].backends[0].port",
        "port 0",
    );
    reject(
        |s| svc(s, "dns").backends[0].ip = ip("::"),
        "services[dns].backends[0].ip",
        "unspecified",
    );
    reject(
        |s| svc(s, "dns").backends[0].ip = ip("10.96.0.53"),
        "services[dns].backends[0].ip",
        "is a frontend of this same service",
    );
    reject(
        |s| {
            svc(s, "web-nodeport")
                .affinity
                .as_mut()
                .unwrap()
                .timeout_seconds = 0
        },
        "services[web-nodeport].affinity.timeout_seconds",
        "0 is outside [1, 86400]",
    );
    reject(
        |s| {
            svc(s, "web-nodeport")
                .affinity
                .as_mut()
                .unwrap()
                .timeout_seconds = 86_401
        },
        "services[web-nodeport].affinity.timeout_seconds",
        "86401 is outside [1, 86400]",
    );
    accept(|s| {
        svc(s, "web-nodeport")
            .affinity
            .as_mut()
            .unwrap()
            .timeout_seconds = 86_400
    });
    // Backends outside the node (remote pods, host-network pods on node IPs) are fine.
    accept(|s| {
        svc(s, "dns").backends[0].ip = ip("10.244.2.5");
        svc(s, "dns").backends[1].ip = ip("192.168.100.2");
    });
}

#[test]
fn policies() {
    reject(
        |s| pol(s, "client").endpoint = "nobody".into(),
        "policies[nobody].endpoint",
        "no endpoint named \"nobody\"",
    );
    reject(
        |s| {
            let p = pol(s, "web-1").clone();
            s.policies.push(p);
        },
        "policies[web-1].endpoint",
        "endpoint \"web-1\" already has a policy (policies[web-1])",
    );
    reject(
        |s| pol(s, "web-1").ingress[4].ports[0].end_port = Some(8999),
        "policies[web-1].ingress[4].ports[0].end_port",
        "end_port 8999 is below port 9000",
    );
    reject(
        |s| pol(s, "web-1").ingress[0].ports[0].port = 0,
        "policies[web-1].ingress[0].ports[0].port",
        "port 0",
    );
    reject(
        |s| pol(s, "client").egress[1].protocol = RuleProto::ICMP,
        "policies[client].egress[1].ports",
        "ports need protocol TCP or UDP (this rule's protocol is ICMP)",
    );
    reject(
        |s| pol(s, "client").egress[1].protocol = RuleProto::Any,
        "policies[client].egress[1].ports",
        "this rule's protocol is any",
    );
    reject(
        |s| pol(s, "web-2").ingress[2].cidrs[0] = "10.1.2.3/8".parse().unwrap(),
        "policies[web-2].ingress[2].cidrs[0]",
        "host bits set (did you mean 10.0.0.0/8?)",
    );
    reject(
        |s| pol(s, "web-2").ingress[0].identities.push(0),
        "policies[web-2].ingress[0].identities[1]",
        "identity 0 is reserved and never assigned",
    );
    reject(
        |s| pol(s, "web-2").ingress[0].identities[0] = 3,
        "policies[web-2].ingress[0].identities[0]",
        "identity 3 is reserved",
    );
    // Host, world, single ports (end_port == port), ICMP without ports, empty policies: fine.
    accept(|s| {
        let p = pol(s, "client");
        p.ingress.push(Rule {
            action: RuleAction::Allow,
            identities: vec![reserved::HOST, reserved::WORLD],
            cidrs: vec![],
            protocol: RuleProto::ICMP,
            ports: vec![],
        });
        p.egress[1].ports[0].end_port = Some(8443);
        pol(s, "web-1").ingress.clear();
    });
}

#[test]
fn conntrack() {
    reject(
        |s| s.conntrack.max_entries = 1023,
        "conntrack.max_entries",
        "1023 is outside [1024, 16777216]",
    );
    reject(
        |s| s.conntrack.max_entries = 16 * 1024 * 1024 + 1,
        "conntrack.max_entries",
        "outside",
    );
    accept(|s| s.conntrack.max_entries = 1024);
    accept(|s| s.conntrack.max_entries = 16 * 1024 * 1024);
    reject(
        |s| s.conntrack.max_held_fragments = 0,
        "conntrack.max_held_fragments",
        "must be > 0",
    );
    reject(
        |s| s.conntrack.max_fragment_ids = 0,
        "conntrack.max_fragment_ids",
        "must be > 0",
    );
    type Field = fn(&mut Timeouts) -> &mut u32;
    let timeouts: [(&str, Field); 9] = [
        ("tcp_syn_sent", |t| &mut t.tcp_syn_sent),
        ("tcp_syn_recv", |t| &mut t.tcp_syn_recv),
        ("tcp_established", |t| &mut t.tcp_established),
        ("tcp_fin_wait", |t| &mut t.tcp_fin_wait),
        ("tcp_close", |t| &mut t.tcp_close),
        ("tcp_time_wait", |t| &mut t.tcp_time_wait),
        ("udp", |t| &mut t.udp),
        ("icmp", |t| &mut t.icmp),
        ("fragment", |t| &mut t.fragment),
    ];
    for (name, field) in timeouts {
        reject(
            |s| *field(&mut s.conntrack.timeouts) = 0,
            &format!("conntrack.timeouts.{name}"),
            "must be > 0",
        );
    }
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let mut s = base();
    s.node.maglev_table_size = 1000;
    s.interfaces[2].gateway_mac = Some("02:00:00:00:00:fe".parse().unwrap());
    ep(&mut s, "client").identity = 7;
    s.ipcache[0].prefix = "10.244.2.9/24".parse().unwrap();
    svc(&mut s, "dns").backends[0].weight = 0;
    pol(&mut s, "web-1").ingress[4].ports[0].end_port = Some(1);
    s.conntrack.timeouts.udp = 0;
    let err = validate(&s).unwrap_err();
    let expected = [
        "node.maglev_table_size",
        "interfaces[pod-web1].gateway_mac",
        "endpoints[client].identity",
        "ipcache[10.244.2.9/24].prefix",
        "services[dns].backends[0].weight",
        "policies[web-1].ingress[4].ports[0].end_port",
        "conntrack.timeouts.udp",
    ];
    let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, expected, "{err}");
    assert_eq!(err.to_string().lines().count(), 1 + expected.len());
    assert!(err.to_string().starts_with("invalid state: 7 problems\n"));
    // Not loaded from files: no file is named.
    assert!(err.problems.iter().all(|p| p.file.is_none()));
}

#[test]
fn from_yaml_str_validates() {
    let err = State::from_yaml_str(
        "interfaces:\n  - name: pod-a\n    role: pod\n    mac: 02:00:00:00:00:01\n",
    )
    .unwrap_err();
    assert!(
        matches!(&err, LoadError::Invalid(v) if v.has("interfaces", "no interface has role uplink")),
        "{err}"
    );
    // An empty document is the empty (valid) state with the documented defaults.
    let empty = State::from_yaml_str("").unwrap();
    assert_eq!(empty, State::default());
    assert_eq!(empty.node.maglev_table_size, DEFAULT_MAGLEV_TABLE_SIZE);
    assert_eq!(empty.conntrack.max_entries, 262_144);
}

#[test]
fn yaml_type_errors_name_the_field_and_line() {
    let cases = [
        (
            "node:\n  name: n\n  nmae: typo\n",
            "node: unknown field `nmae`",
            3,
        ),
        ("services:\n  - name: a\n    type: ClusterIp\n", "services[0].type: unknown variant `ClusterIp`", 3),
        (
            "interfaces:\n  - name: up\n    role: uplink\n    mac: 02:00:00:00:00\n",
            "fewer than 6 octets",
            4,
        ),
        (
            "ipcache:\n  - prefix: 10.0.0.0/8\n    identity: 4294967296\n",
            "ipcache[0].identity: invalid value",
            3,
        ),
        (
            "services:\n  - name: a\n    type: ClusterIP\n    frontends: [{ip: 10.96.0.1, port: 70000}]\n",
            "services[0].frontends[0].port: invalid value: integer `70000`",
            4,
        ),
        ("node:\n  policy_mode: allow_all\n", "unknown variant `allow_all`", 2),
        ("conntrack:\n  timeouts:\n    udp: -1\n", "conntrack.timeouts.udp", 3),
        ("policies: [\n", "did not find expected node content", 2),
    ];
    for (yaml, msg, line) in cases {
        let err = State::from_yaml_str(yaml).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(msg), "{yaml:?}: expected {msg:?} in {text:?}");
        assert_eq!(
            err.yaml_location().map(|(l, _)| l),
            Some(line),
            "{yaml:?}: {text}"
        );
        assert!(text.contains(&format!("line {line}")), "{text}");
    }
}

/// Issue 14: EndpointSlice conditions, traffic policies, health check node ports, source
/// ranges, SCTP.
#[test]
fn kubernetes_service_semantics() {
    // Conditions: the old `state: terminating` and the conditions are one or the other.
    reject(
        |s| {
            let b = &mut svc(s, "web-lb").backends[1];
            b.serving = Some(true);
        },
        "services[web-lb].backends[1].state",
        "old spelling of the conditions",
    );
    reject(
        |s| {
            let b = &mut svc(s, "web").backends[0];
            b.ready = Some(true);
            b.terminating = Some(true);
        },
        "services[web].backends[0].ready",
        "a terminating backend is never ready",
    );
    accept(|s| {
        let b = &mut svc(s, "web").backends[0];
        b.serving = Some(true);
        b.terminating = Some(true);
    });
    // Defaults: ready unless terminating, serving = ready.
    let b = &base().services[0].backends[0];
    assert_eq!(
        b.conditions(),
        Conditions {
            ready: true,
            serving: true,
            terminating: false
        }
    );
    let legacy = &svc(&mut base(), "web-lb").backends[1].clone();
    assert!(!legacy.is_ready() && !legacy.is_serving_terminating());

    // Traffic policies and what goes with them.
    reject(
        |s| svc(s, "web").external_traffic_policy = TrafficPolicy::Local,
        "services[web].external_traffic_policy",
        "a ClusterIP service has no external traffic",
    );
    accept(|s| svc(s, "web").internal_traffic_policy = TrafficPolicy::Local);
    reject(
        |s| svc(s, "web-lb").health_check_node_port = Some(31000),
        "services[web-lb].health_check_node_port",
        "only a LoadBalancer service with external_traffic_policy: Local",
    );
    accept(|s| {
        let lb = svc(s, "web-lb");
        lb.external_traffic_policy = TrafficPolicy::Local;
        lb.health_check_node_port = Some(31000);
    });
    reject(
        |s| {
            let lb = svc(s, "web-lb");
            lb.external_traffic_policy = TrafficPolicy::Local;
            lb.health_check_node_port = Some(30080);
        },
        "services[web-lb].health_check_node_port",
        "port 30080/TCP is already a node port or health check port of services[web-nodeport]",
    );
    reject(
        |s| {
            svc(s, "web-nodeport").load_balancer_source_ranges = vec!["10.0.0.0/8".parse().unwrap()]
        },
        "services[web-nodeport].load_balancer_source_ranges",
        "only a LoadBalancer service has source ranges",
    );
    reject(
        |s| svc(s, "web-lb").load_balancer_source_ranges = vec!["10.0.0.1/8".parse().unwrap()],
        "services[web-lb].load_balancer_source_ranges[0]",
        "did you mean 10.0.0.0/8?",
    );
    accept(|s| svc(s, "web-lb").load_balancer_source_ranges = vec!["10.0.0.0/8".parse().unwrap()]);

    // SCTP: refused, with the reason.
    reject(
        |s| svc(s, "dns").frontends[0].protocol = L4Proto::SCTP,
        "services[dns].frontends[0].protocol",
        "SCTP is not supported",
    );
    reject(
        |s| svc(s, "dns-nodeport").node_ports[0].protocol = L4Proto::SCTP,
        "services[dns-nodeport].node_ports[0].protocol",
        "SCTP is not supported",
    );
}

/// The new keys read from YAML, and an unknown condition key is refused.
#[test]
fn conditions_and_policies_from_yaml() {
    let yaml = r#"
node: { node_ips: [192.168.1.10], pod_cidrs: [10.244.1.0/24] }
services:
  - name: web
    type: LoadBalancer
    frontends: [{ ip: 203.0.113.10, port: 80 }]
    external_traffic_policy: Local
    internal_traffic_policy: Local
    health_check_node_port: 31000
    load_balancer_source_ranges: [203.0.113.0/24]
    backends:
      - { ip: 10.244.2.5, port: 8080, ready: false, serving: true, terminating: true }
      - { ip: 10.244.2.6, port: 8080, state: terminating }
"#;
    let dir = std::env::temp_dir().join(format!("np-f-yaml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("s.yaml");
    std::fs::write(&f, yaml).unwrap();
    let s = load_file(&f).expect("valid");
    let web = &s.services[0];
    assert_eq!(web.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(web.health_check_node_port, Some(31000));
    assert!(web.backends[0].is_serving_terminating());
    assert!(!web.backends[1].is_serving_terminating());
    std::fs::write(&f, yaml.replace("serving: true", "servng: true")).unwrap();
    let e = load_file(&f).expect_err("unknown key").to_string();
    assert!(e.contains("servng"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn snat_port_range() {
    accept(|s| s.node.snat_port_range = [40000, 40999]);
    reject(
        |s| s.node.snat_port_range = [1000, 2000],
        "node.snat_port_range",
        "within [1024, 65535]",
    );
    reject(
        |s| s.node.snat_port_range = [62000, 61000],
        "node.snat_port_range",
        "first <= last",
    );
    // A node port inside the range: SNAT would hand its port out as a source port.
    reject(
        |s| s.node.snat_port_range = [30000, 30100],
        "services[web-nodeport].node_ports[0]",
        "inside node.snat_port_range",
    );
    // The default leaves the state file untouched when written back.
    let yaml = yaml_serde::to_string(&base().node).unwrap();
    assert!(!yaml.contains("snat_port_range"), "{yaml}");
}
