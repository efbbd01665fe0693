//! `nodeplane explain`: the path a packet would take, decided by the pipeline itself.
//!
//! The control thread synthesizes the frame (Ethernet + IP + L4 header, as the given ingress
//! interface would receive it) and sends it to the workers; each runs it through
//! [`Pipeline::scratch`](nodeplane_dataplane::Pipeline::scratch) — a copy with the live tables,
//! policy-mode override and a read-only copy of the packet's flow — so the answer is the exact
//! decision the worker would make, and the live conntrack is not touched. The rule that decided
//! is found by asking the same compiled per-endpoint policy (`DirPolicy::decide`) the pipeline
//! asked, with the same inputs (identities and the translated destination).

use std::net::{IpAddr, SocketAddr};

use etherparse::PacketBuilder;
use nodeplane_dataplane::flow::{fmt_socket, Addr, FlowKey, PROTO_ICMP, PROTO_ICMPV6};
use nodeplane_dataplane::parse::{self, Parsed};
use nodeplane_dataplane::policy::Decision;
use nodeplane_dataplane::Tables;
use nodeplane_state::{InterfaceRole, PolicyMode, State};

use crate::api::{ExplainRequest, Explanation, IdentityInfo, RuleDecision};
use crate::daemon::control::{backend_state_name, identity_source};
use nodeplane_dataplane::worker::{proto_number, Explained};

/// A synthesized packet and its flow key.
#[derive(Debug, Clone)]
pub struct Synth {
    pub frame: Vec<u8>,
    pub key: FlowKey,
    pub text: String,
}

/// `IP`, `IP:PORT`, `[IPv6]:PORT`.
pub fn parse_endpoint(s: &str) -> Result<(IpAddr, u16), String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip(), sa.port()));
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| (ip, 0))
        .map_err(|_| format!("{s:?} is not IP, IP:PORT or [IPv6]:PORT"))
}

pub fn synthesize(e: &ExplainRequest, t: &Tables) -> Result<Synth, String> {
    let proto = proto_number(&e.proto)
        .ok_or_else(|| format!("unknown protocol {:?} (tcp, udp or icmp)", e.proto))?;
    let (src, sport) = parse_endpoint(&e.src)?;
    let (dst, dport) = parse_endpoint(&e.dst)?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err("source and destination must be of the same address family".into());
    }
    let Some(idx) = t.iface_index(&e.iface) else {
        return Err(format!(
            "interface {:?} is not in the running state (known: {})",
            e.iface,
            t.ifaces
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let itf = &t.ifaces[usize::from(idx)];
    let src_a = Addr::from(src);
    // The sender's MAC: the endpoint's on a pod interface, the router's on the uplink.
    let src_mac = match itf.role {
        InterfaceRole::Pod => t
            .endpoint_of(&src_a)
            .map(|i| t.endpoints[i as usize].mac)
            .unwrap_or([2, 0, 0, 0, 0, 0x99]),
        InterfaceRole::Uplink | InterfaceRole::Host => {
            itf.gateway_mac.unwrap_or([2, 0, 0, 0, 0, 0xfe])
        }
    };
    let eth = PacketBuilder::ethernet2(src_mac, itf.mac);
    let payload: &[u8] = b"nodeplane explain";
    let mut frame = Vec::new();
    let flags = e.tcp_flags.as_deref().unwrap_or("syn");
    macro_rules! l4 {
        ($ip:expr) => {{
            let ip = $ip;
            let r = match proto {
                nodeplane_dataplane::flow::PROTO_TCP => {
                    let b = ip.tcp(sport, dport, 1000, 64240);
                    let b = match flags {
                        "syn" => b.syn(),
                        "ack" => b.ack(1),
                        other => return Err(format!("tcp flags {other:?}: syn or ack")),
                    };
                    b.write(&mut frame, payload)
                }
                nodeplane_dataplane::flow::PROTO_UDP => {
                    ip.udp(sport, dport).write(&mut frame, payload)
                }
                _ => {
                    if src.is_ipv4() {
                        ip.icmpv4_echo_request(sport, 1).write(&mut frame, payload)
                    } else {
                        ip.icmpv6_echo_request(sport, 1).write(&mut frame, payload)
                    }
                }
            };
            r.map_err(|e| format!("cannot build the packet: {e}"))?;
        }};
    }
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => l4!(eth.ipv4(s.octets(), d.octets(), 64)),
        (IpAddr::V6(s), IpAddr::V6(d)) => l4!(eth.ipv6(s.octets(), d.octets(), 64)),
        _ => return Err("address family mismatch".into()),
    }
    // The key exactly as the pipeline forms it.
    let key = match parse::parse(&frame) {
        Ok(Parsed::Ip(m)) => FlowKey {
            src: m.src,
            dst: m.dst,
            sport: m.sport,
            dport: m.dport,
            proto: m.proto,
        },
        _ => return Err("the synthesized packet does not parse (bug)".into()),
    };
    let pname = match proto {
        PROTO_ICMP if !src.is_ipv4() => "icmpv6",
        PROTO_ICMP | PROTO_ICMPV6 => "icmp",
        nodeplane_dataplane::flow::PROTO_TCP => "tcp",
        _ => "udp",
    };
    let text = format!(
        "{pname} {} -> {}",
        fmt_socket(src_a, sport),
        fmt_socket(Addr::from(dst), dport)
    );
    Ok(Synth { frame, key, text })
}

/// What the XDP program does with the packet: pod interfaces are redirected whole; on the
/// uplink only the steered prefixes (PodCIDRs, service addresses, node frontends) are.
fn steering(t: &Tables, iface: &str, key: &FlowKey) -> String {
    let Some(i) = t.iface_index(iface) else {
        return "unknown interface".into();
    };
    match t.ifaces[usize::from(i)].role {
        InterfaceRole::Pod => "redirect (pod interface: every frame goes to a worker)".into(),
        InterfaceRole::Host => {
            "redirect (host interface: the node's own traffic, every frame goes to a worker)".into()
        }
        InterfaceRole::Uplink => {
            if t.in_pod_cidr(&key.dst) {
                "redirect (destination in a PodCIDR)".into()
            } else if t.service_ips.contains_key(&key.dst) {
                "redirect (destination is a service address)".into()
            } else if t.is_node_ip(&key.dst) {
                "redirect (node IP: the worker passes what is not a NodePort)".into()
            } else {
                "pass (not ours: the kernel handles it)".into()
            }
        }
    }
}

fn info(t: &Tables, state: &State, a: &Addr) -> IdentityInfo {
    let (identity, prefix, source) = identity_source(t, a);
    let ip = a.to_ip();
    let external = state
        .external_workloads
        .iter()
        .find(|w| w.ips.contains(&ip) && w.identity == identity);
    IdentityInfo {
        identity,
        source: match (prefix, external) {
            (_, Some(w)) if source == "ipcache" => format!("external {}", w.name),
            (Some(p), _) if source == "ipcache" => format!("ipcache {p}"),
            _ => source,
        },
    }
}

fn decision(state: &State, endpoint: &str, direction: &str, d: Decision) -> RuleDecision {
    let rules = state
        .policies
        .iter()
        .find(|p| p.endpoint == endpoint)
        .map(|p| {
            if direction == "ingress" {
                &p.ingress
            } else {
                &p.egress
            }
        });
    let (decision, idx) = match d {
        Decision::Allow { rule } => ("allow", Some(rule)),
        Decision::Deny { rule } => ("deny", rule),
    };
    RuleDecision {
        endpoint: endpoint.into(),
        direction: direction.into(),
        decision: decision.into(),
        rule_index: idx,
        rule: idx.and_then(|i| rules.and_then(|r| r.get(i)).cloned()),
    }
}

/// The egress and ingress rules that decide a flow whose first packet had outcome `o`: the
/// same compiled per-endpoint policy (`DirPolicy::decide`) the pipeline asked, with the same
/// inputs (identities and the translated destination). `explain` and `whatif` name rules so.
pub fn deciding_rules(
    t: &Tables,
    state: &State,
    mode: PolicyMode,
    key: &FlowKey,
    o: &nodeplane_dataplane::Outcome,
) -> (Option<RuleDecision>, Option<RuleDecision>) {
    let (dst, dport) = o.backend.unwrap_or((key.dst, key.dport));
    let mut egress_rule = None;
    let mut ingress_rule = None;
    if mode == PolicyMode::AllowAll {
        return (None, None);
    }
    if let (Some(si), Some(di)) = (o.src_identity, o.dst_identity) {
        if let Some(ep) = t.endpoint_of(&key.src) {
            let ep = &t.endpoints[ep as usize];
            if let Some(p) = &ep.egress {
                let d = p.decide(dst, di, key.proto, dport);
                egress_rule = Some(decision(state, &ep.name, "egress", d));
            }
        }
        if let Some(ep) = t.endpoint_of(&dst) {
            let ep = &t.endpoints[ep as usize];
            if let Some(p) = &ep.ingress {
                let d = p.decide(key.src, si, key.proto, dport);
                ingress_rule = Some(decision(state, &ep.name, "ingress", d));
            }
        }
    }
    (egress_rule, ingress_rule)
}

pub fn compose(
    req: &ExplainRequest,
    pkt: &Synth,
    worker: usize,
    x: &Explained,
    state: &State,
) -> Explanation {
    let t: &Tables = &x.tables;
    let o = &x.outcome;
    let role = t
        .iface_index(&req.iface)
        .map(|i| match t.ifaces[usize::from(i)].role {
            InterfaceRole::Pod => "pod",
            InterfaceRole::Uplink => "uplink",
            InterfaceRole::Host => "host",
        })
        .unwrap_or("unknown");
    let key = pkt.key;
    let (svc_front, backend_state) = match (o.service, o.backend) {
        (Some(s), Some((addr, port))) => {
            let svc = t.services.get(s as usize);
            (
                Some(format!(
                    "{}/{}",
                    fmt_socket(key.dst, key.dport),
                    nodeplane_dataplane::worker::proto_name(key.proto)
                )),
                svc.and_then(|s| s.find_backend(addr, port))
                    .map(|b| backend_state_name(b).to_string()),
            )
        }
        _ => (None, None),
    };
    let mode = x.policy_mode_override.unwrap_or(t.policy_mode);
    let (dst, _) = o.backend.unwrap_or((key.dst, key.dport));
    let (egress_rule, ingress_rule) = deciding_rules(t, state, mode, &key, o);
    let output = match (o.action, parse::parse(&x.frame_after)) {
        (nodeplane_dataplane::Action::Forward(_), Ok(Parsed::Ip(m))) => Some(format!(
            "{} -> {}",
            fmt_socket(m.src, m.sport),
            fmt_socket(m.dst, m.dport)
        )),
        _ => None,
    };
    Explanation {
        iface: req.iface.clone(),
        iface_role: role.into(),
        packet: pkt.text.clone(),
        steering: steering(t, &req.iface, &key),
        worker,
        flow: x.flow.clone(),
        outcome: x.view.clone(),
        service_frontend: svc_front,
        backend_state,
        src_identity: o.src_identity.map(|_| info(t, state, &key.src)),
        dst_identity: o.dst_identity.map(|_| info(t, state, &dst)),
        policy_mode: match mode {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Audit => "audit",
            PolicyMode::AllowAll => "allow-all",
        }
        .into(),
        egress_rule,
        ingress_rule,
        output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("10.0.0.1:80").unwrap(),
            ("10.0.0.1".parse().unwrap(), 80)
        );
        assert_eq!(
            parse_endpoint("10.0.0.1").unwrap(),
            ("10.0.0.1".parse().unwrap(), 0)
        );
        assert_eq!(
            parse_endpoint("[fd00::1]:443").unwrap(),
            ("fd00::1".parse().unwrap(), 443)
        );
        assert_eq!(
            parse_endpoint("fd00::1").unwrap(),
            ("fd00::1".parse().unwrap(), 0)
        );
        assert!(parse_endpoint("10.0.0.1:99999").is_err());
        assert!(parse_endpoint("nope").is_err());
    }
}
