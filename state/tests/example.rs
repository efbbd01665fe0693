//! The example node of `examples/state/`: other crates' tests and the lab rely on its exact
//! topology, so it is pinned here field by field.

use std::net::IpAddr;
use std::path::Path;

use nodeplane_state::*;

fn example_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/state"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

#[test]
fn directory_and_embedded_copies_agree() {
    let from_dir = load_dir(example_dir()).expect("examples/state loads");
    let embedded = example::state().expect("embedded example loads");
    assert_eq!(from_dir, embedded);
    assert_eq!(load_path(example_dir()).unwrap(), from_dir);

    // The embedded list names exactly the directory's YAML files, in merge order.
    let mut names: Vec<String> = std::fs::read_dir(example_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    names.sort();
    let embedded_names: Vec<&str> = example::FILES.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, embedded_names);
}

#[test]
fn round_trips_through_yaml() {
    let s = example::state().unwrap();
    let yaml = s.to_yaml_string().unwrap();
    let back = State::from_yaml_str(&yaml).expect("serialized example parses and validates");
    assert_eq!(back, s);
    // And once more, byte for byte.
    assert_eq!(back.to_yaml_string().unwrap(), yaml);
}

#[test]
fn node_and_interfaces() {
    let s = example::state().unwrap();
    assert_eq!(s.node.name, "node-1");
    assert_eq!(
        s.node.pod_cidrs,
        [
            "10.244.1.0/24".parse().unwrap(),
            "fd00:244:1::/64".parse().unwrap()
        ]
    );
    assert_eq!(s.node.node_ips, [ip("192.168.100.2"), ip("fd00:100::2")]);
    assert_eq!(s.node.policy_mode, PolicyMode::Enforce);
    assert_eq!(s.node.maglev_table_size, DEFAULT_MAGLEV_TABLE_SIZE);
    assert_eq!(s.conntrack, ConntrackSettings::default());

    let itf: Vec<(&str, InterfaceRole, MacAddr, Option<MacAddr>)> = s
        .interfaces
        .iter()
        .map(|i| (i.name.as_str(), i.role, i.mac, i.gateway_mac))
        .collect();
    assert_eq!(
        itf,
        [
            (
                "uplink0",
                InterfaceRole::Uplink,
                mac("02:00:00:00:00:01"),
                Some(mac("02:00:00:00:00:fe"))
            ),
            (
                "pod-client",
                InterfaceRole::Pod,
                mac("02:00:00:00:01:01"),
                None
            ),
            (
                "pod-web1",
                InterfaceRole::Pod,
                mac("02:00:00:00:01:02"),
                None
            ),
            (
                "pod-web2",
                InterfaceRole::Pod,
                mac("02:00:00:00:01:03"),
                None
            ),
        ]
    );
}

/// (name, ips, mac, interface, identity, app label)
type EndpointRow<'a> = (
    &'a str,
    Vec<IpAddr>,
    MacAddr,
    &'a str,
    Identity,
    Option<&'a str>,
);

#[test]
fn endpoints_and_ipcache() {
    let s = example::state().unwrap();
    let eps: Vec<EndpointRow<'_>> = s
        .endpoints
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                e.ips.clone(),
                e.mac,
                e.interface.as_str(),
                e.identity,
                e.labels.get("app").map(String::as_str),
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            (
                "client",
                vec![ip("10.244.1.10"), ip("fd00:244:1::10")],
                mac("02:00:00:00:02:0a"),
                "pod-client",
                1001,
                Some("client")
            ),
            (
                "web-1",
                vec![ip("10.244.1.21"), ip("fd00:244:1::21")],
                mac("02:00:00:00:02:15"),
                "pod-web1",
                1002,
                Some("web")
            ),
            (
                "web-2",
                vec![ip("10.244.1.22"), ip("fd00:244:1::22")],
                mac("02:00:00:00:02:16"),
                "pod-web2",
                1002,
                Some("web")
            ),
        ]
    );
    for e in &s.endpoints {
        assert_eq!(e.labels.len(), 1, "{} has only the app label", e.name);
    }
    let ipc: Vec<(String, Identity)> = s
        .ipcache
        .iter()
        .map(|e| (e.prefix.to_string(), e.identity))
        .collect();
    assert_eq!(
        ipc,
        [
            ("10.244.2.0/24".to_string(), 2001),
            ("10.0.0.0/8".to_string(), 3000)
        ]
    );
}

fn svc<'a>(s: &'a State, name: &str) -> &'a Service {
    s.services.iter().find(|x| x.name == name).unwrap()
}

fn backends(s: &Service) -> Vec<(IpAddr, u16, u16, BackendState)> {
    s.backends
        .iter()
        .map(|b| (b.ip, b.port, b.weight, b.state))
        .collect()
}

#[test]
fn services() {
    let s = example::state().unwrap();
    let names: Vec<&str> = s.services.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(
        names,
        ["web", "dns", "web-nodeport", "web-lb", "dns-nodeport"]
    );
    let active = BackendState::Active;

    let web = svc(&s, "web");
    assert_eq!(web.kind, ServiceType::ClusterIP);
    assert_eq!(
        web.frontends,
        [
            Frontend {
                ip: ip("10.96.0.10"),
                port: 80,
                protocol: L4Proto::TCP
            },
            Frontend {
                ip: ip("fd00:96::10"),
                port: 80,
                protocol: L4Proto::TCP
            },
        ]
    );
    assert!(web.node_ports.is_empty());
    assert_eq!(web.algorithm, Algorithm::Maglev);
    assert_eq!(web.affinity, None);
    assert_eq!(
        backends(web),
        [
            (ip("10.244.1.21"), 8080, 1, active),
            (ip("10.244.1.22"), 8080, 1, active),
            (ip("fd00:244:1::21"), 8080, 1, active),
            (ip("fd00:244:1::22"), 8080, 1, active),
        ]
    );

    let dns = svc(&s, "dns");
    assert_eq!(dns.kind, ServiceType::ClusterIP);
    assert_eq!(
        dns.frontends,
        [Frontend {
            ip: ip("10.96.0.53"),
            port: 53,
            protocol: L4Proto::UDP
        }]
    );
    assert_eq!(dns.algorithm, Algorithm::Random);
    assert_eq!(
        backends(dns),
        [
            (ip("10.244.1.21"), 5353, 1, active),
            (ip("10.244.1.22"), 5353, 1, active)
        ]
    );

    let np = svc(&s, "web-nodeport");
    assert_eq!(np.kind, ServiceType::NodePort);
    assert_eq!(
        np.frontends,
        [Frontend {
            ip: ip("10.96.0.11"),
            port: 80,
            protocol: L4Proto::TCP
        }]
    );
    assert_eq!(
        np.node_ports,
        [
            NodePort {
                port: 30080,
                protocol: L4Proto::TCP
            },
            NodePort {
                port: 30053,
                protocol: L4Proto::UDP
            },
        ]
    );
    assert_eq!(
        np.affinity,
        Some(Affinity {
            kind: AffinityType::ClientIP,
            timeout_seconds: 300
        })
    );
    assert_eq!(np.algorithm, Algorithm::Maglev);
    assert_eq!(
        backends(np),
        [
            (ip("10.244.1.21"), 8080, 1, active),
            (ip("10.244.1.22"), 8080, 1, active)
        ]
    );

    let lb = svc(&s, "web-lb");
    assert_eq!(lb.kind, ServiceType::LoadBalancer);
    assert_eq!(
        lb.frontends,
        [Frontend {
            ip: ip("203.0.113.10"),
            port: 80,
            protocol: L4Proto::TCP
        }]
    );
    assert!(lb.node_ports.is_empty());
    assert_eq!(
        backends(lb),
        [
            (ip("10.244.1.21"), 8080, 1, active),
            (ip("10.244.1.22"), 8080, 1, BackendState::Terminating),
        ]
    );

    let dns_np = svc(&s, "dns-nodeport");
    assert_eq!(dns_np.kind, ServiceType::NodePort);
    assert!(dns_np.frontends.is_empty());
    assert_eq!(
        dns_np.node_ports,
        [NodePort {
            port: 30054,
            protocol: L4Proto::UDP
        }]
    );
    assert_eq!(dns_np.algorithm, Algorithm::Random);
    assert_eq!(backends(dns_np), backends(dns));
}

fn rule(
    action: RuleAction,
    identities: &[Identity],
    cidrs: &[&str],
    protocol: RuleProto,
    ports: &[(u16, Option<u16>)],
) -> Rule {
    Rule {
        action,
        identities: identities.to_vec(),
        cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        protocol,
        ports: ports
            .iter()
            .map(|&(port, end_port)| PortRange { port, end_port })
            .collect(),
    }
}

#[test]
fn policies() {
    use RuleAction::{Allow, Deny};
    let s = example::state().unwrap();
    let web_ingress = vec![
        rule(Allow, &[1001], &[], RuleProto::TCP, &[(8080, None)]),
        rule(Allow, &[1001], &[], RuleProto::UDP, &[(5353, None)]),
        rule(Allow, &[], &["10.0.0.0/8"], RuleProto::TCP, &[(8080, None)]),
        rule(
            Allow,
            &[reserved::WORLD],
            &[],
            RuleProto::TCP,
            &[(8080, None)],
        ),
        rule(Deny, &[1001], &[], RuleProto::TCP, &[(9000, Some(9100))]),
        rule(
            Allow,
            &[reserved::WORLD],
            &[],
            RuleProto::UDP,
            &[(5353, None)],
        ),
    ];
    assert_eq!(
        s.policies,
        [
            Policy {
                endpoint: "web-1".into(),
                ingress: web_ingress.clone(),
                egress: vec![]
            },
            Policy {
                endpoint: "web-2".into(),
                ingress: web_ingress,
                egress: vec![]
            },
            Policy {
                endpoint: "client".into(),
                ingress: vec![],
                egress: vec![
                    rule(Allow, &[], &[], RuleProto::Any, &[]),
                    rule(Deny, &[], &[], RuleProto::TCP, &[(8443, None)]),
                ],
            },
        ]
    );
}

#[test]
fn schema_doc_example_is_valid_and_is_the_example() {
    // docs/state-schema.md carries the example as one document; it must stay loadable and
    // equal to examples/state/.
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/state-schema.md"
    ))
    .unwrap();
    let start = doc
        .find("<!-- example:begin -->")
        .expect("docs/state-schema.md has an example:begin marker");
    let end = doc
        .find("<!-- example:end -->")
        .expect("example:end marker");
    let block = &doc[start..end];
    let yaml_start = block.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let yaml_end = block[yaml_start..].find("```").unwrap() + yaml_start;
    let s = State::from_yaml_str(&block[yaml_start..yaml_end]).expect("doc example validates");
    assert_eq!(s, example::state().unwrap());
}
