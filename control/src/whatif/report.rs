//! The what-if report: the packets of both replays side by side, grouped into flows, and every
//! flow whose verdict, drop reason or backend differs, grouped by service, identity and rule.
//!
//! A flow is the packets of one 5-tuple in either direction (the first packet's direction is
//! the flow's). The replies of a translated flow carry the backend's address, so they make a
//! flow of their own. Frames that are not IP are a flow each.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use nodeplane_dataplane::flow::{Addr, FlowKey};
use nodeplane_dataplane::parse::{self, Parsed};
use nodeplane_dataplane::worker::proto_name;
use nodeplane_dataplane::{Outcome, Tables};
use nodeplane_state::State;
use serde::{Deserialize, Serialize};

use crate::api::RuleDecision;
use crate::explain::deciding_rules;

/// One line of a replay's `verdicts.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VerdictLine {
    pub index: u64,
    pub input: String,
    pub verdict: String,
    pub reason: Option<String>,
    pub egress: Option<String>,
    pub ct: Option<String>,
    pub service: Option<String>,
    pub backend: Option<String>,
    pub src_identity: Option<u32>,
    pub dst_identity: Option<u32>,
    pub policy: String,
}

/// A flow's outcome under one state: the packet where the two states part (or the flow's first
/// packet), and the flow's packet counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    /// `forward`, `drop`, `pass` (or `held`, `none`: the replay left it undecided).
    pub verdict: String,
    pub drop_reason: Option<String>,
    pub egress: Option<String>,
    pub service: Option<String>,
    pub backend: Option<String>,
    pub policy: String,
    pub src_identity: Option<u32>,
    pub dst_identity: Option<u32>,
    /// The rules that decided (egress of the source endpoint, ingress of the destination),
    /// as `explain` names them: `web-2 ingress rule 0 (allow)`, `web-2 ingress default deny`.
    pub rules: Vec<String>,
    /// Packets of the flow forwarded / dropped under this state.
    pub forwarded: u64,
    pub dropped: u64,
}

/// A flow whose verdict, drop reason or backend differs between the two states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowChange {
    /// Ingress interface of the flow's first packet.
    pub iface: String,
    pub proto: String,
    pub src: Option<IpAddr>,
    pub sport: u16,
    pub dst: Option<IpAddr>,
    pub dport: u16,
    /// Packets of the flow in the traffic.
    pub packets: u64,
    /// Index (in the merged traffic) of the first packet whose outcome differs.
    pub first_changed: u64,
    /// What differs: `verdict`, `drop_reason`, `backend`.
    pub changed: Vec<String>,
    pub current: Side,
    pub proposed: Side,
}

/// Everything `nodeplane whatif` reports (`--json` prints it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhatifReport {
    pub packets: u64,
    pub flows: u64,
    pub changed_flows: u64,
    /// Packets whose outcome differs.
    pub changed_packets: u64,
    /// `forward -> drop (policy-denied)`, `backend 10.0.1.3:80 -> 10.0.1.4:80` ... → flows.
    pub by_change: BTreeMap<String, u64>,
    /// Service (of either state; `-` for none) → changed flows.
    pub by_service: BTreeMap<String, u64>,
    /// `SRC_ID -> DST_ID` (the current state's, else the proposed's; `?` unknown) → flows.
    pub by_identity: BTreeMap<String, u64>,
    /// `CURRENT RULES => PROPOSED RULES` → flows.
    pub by_rule: BTreeMap<String, u64>,
    pub changes: Vec<FlowChange>,
    /// Flow events not replayed (`--from-events`, `--live`), by why.
    pub skipped_events: BTreeMap<String, u64>,
}

/// A state as the report needs it: its tables (for the rules) and its source.
#[derive(Debug)]
pub struct Judged<'a> {
    pub state: &'a State,
    pub tables: &'a Tables,
}

fn tuple(frame: &[u8]) -> Option<FlowKey> {
    match parse::parse(frame) {
        Ok(Parsed::Ip(m)) => Some(FlowKey {
            src: m.src,
            dst: m.dst,
            sport: m.sport,
            dport: m.dport,
            proto: m.proto,
        }),
        _ => None,
    }
}

/// Flow identity: the unordered tuple.
fn flow_id(k: &FlowKey) -> (u8, (Addr, u16), (Addr, u16)) {
    let a = (k.src, k.sport);
    let b = (k.dst, k.dport);
    if (a.0.to_ip(), a.1) <= (b.0.to_ip(), b.1) {
        (k.proto, a, b)
    } else {
        (k.proto, b, a)
    }
}

fn rule_text(d: &RuleDecision) -> String {
    match d.rule_index {
        Some(i) => format!("{} {} rule {i} ({})", d.endpoint, d.direction, d.decision),
        None => format!("{} {} default {}", d.endpoint, d.direction, d.decision),
    }
}

fn side(
    j: &Judged<'_>,
    key: Option<&FlowKey>,
    v: Option<&VerdictLine>,
    counts: (u64, u64),
) -> Side {
    let Some(v) = v else {
        return Side {
            verdict: "none".into(),
            drop_reason: None,
            egress: None,
            service: None,
            backend: None,
            policy: "none".into(),
            src_identity: None,
            dst_identity: None,
            rules: Vec::new(),
            forwarded: counts.0,
            dropped: counts.1,
        };
    };
    let mut rules = Vec::new();
    let first_packet = matches!(v.ct.as_deref(), None | Some("new"));
    if !first_packet {
        // Rules decide a flow at its first packet; later packets and replies follow conntrack.
        rules.push(format!(
            "{} packet of a flow",
            v.ct.as_deref().unwrap_or("?")
        ));
    } else if let Some(k) = key {
        let backend = v
            .backend
            .as_deref()
            .and_then(|b| b.parse::<SocketAddr>().ok())
            .map(|s| (Addr::from(s.ip()), s.port()));
        let o = Outcome {
            backend,
            src_identity: v.src_identity,
            dst_identity: v.dst_identity,
            ..Outcome::default()
        };
        let (e, i) = deciding_rules(j.tables, j.state, j.tables.policy_mode, k, &o);
        rules.extend(e.iter().chain(i.iter()).map(rule_text));
    }
    Side {
        verdict: v.verdict.clone(),
        drop_reason: v.reason.clone(),
        egress: v.egress.clone(),
        service: v.service.clone(),
        backend: v.backend.clone(),
        policy: v.policy.clone(),
        src_identity: v.src_identity,
        dst_identity: v.dst_identity,
        rules,
        forwarded: counts.0,
        dropped: counts.1,
    }
}

/// What decides whether a packet changed: verdict, drop reason, backend.
fn differs(a: Option<&VerdictLine>, b: Option<&VerdictLine>) -> Vec<&'static str> {
    let f = |v: Option<&VerdictLine>| {
        v.map(|v| (v.verdict.clone(), v.reason.clone(), v.backend.clone()))
            .unwrap_or_default()
    };
    let (a, b) = (f(a), f(b));
    let mut d = Vec::new();
    if a.0 != b.0 {
        d.push("verdict");
    }
    if a.1 != b.1 {
        d.push("drop_reason");
    }
    if a.2 != b.2 {
        d.push("backend");
    }
    d
}

/// Compares two replays of the same traffic. `frames[i]` = (input interface, frame) of the
/// merged traffic's packet `i` (the verdict lines' `index`).
pub fn compare(
    frames: &[(String, Vec<u8>)],
    current: (&Judged<'_>, &[VerdictLine]),
    proposed: (&Judged<'_>, &[VerdictLine]),
) -> WhatifReport {
    let by_index = |lines: &[VerdictLine]| -> HashMap<u64, VerdictLine> {
        lines
            .iter()
            .filter(|l| l.input != "?")
            .map(|l| (l.index, l.clone()))
            .collect()
    };
    let (cur, pro) = (by_index(current.1), by_index(proposed.1));
    // Flows: packets of one tuple (either direction) ...
    let keys: Vec<Option<FlowKey>> = frames.iter().map(|(_, f)| tuple(f)).collect();
    let mut slot_of = Vec::with_capacity(frames.len());
    let mut ids = HashMap::new();
    let mut slots = 0usize;
    for k in &keys {
        let slot = match k {
            Some(k) => *ids.entry(flow_id(k)).or_insert_with(|| {
                slots += 1;
                slots - 1
            }),
            None => {
                slots += 1;
                slots - 1
            }
        };
        slot_of.push(slot);
    }
    // ... and the replies of a translated flow (backend -> client) joined to it, as either
    // state's conntrack saw them.
    let mut parent: Vec<usize> = (0..slots).collect();
    fn root(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    for side in [&cur, &pro] {
        let mut translated = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            let (Some(k), Some(l)) = (k, side.get(&(i as u64))) else {
                continue;
            };
            let Some(b) = l
                .backend
                .as_deref()
                .and_then(|b| b.parse::<SocketAddr>().ok())
            else {
                continue;
            };
            let b = (Addr::from(b.ip()), b.port());
            match l.ct.as_deref() {
                Some("new") => {
                    translated.insert((k.proto, (k.src, k.sport), b), slot_of[i]);
                }
                Some("reply") if (k.src, k.sport) == b => {
                    if let Some(&s) = translated.get(&(k.proto, (k.dst, k.dport), b)) {
                        let (a, z) = (root(&mut parent, s), root(&mut parent, slot_of[i]));
                        if a != z {
                            parent[z.max(a)] = z.min(a);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    // In order of their first packet.
    let mut order: Vec<Vec<u64>> = Vec::new();
    let mut index_of_root = HashMap::new();
    for (i, &slot) in slot_of.iter().enumerate() {
        let r = root(&mut parent, slot);
        let o = *index_of_root.entry(r).or_insert_with(|| {
            order.push(Vec::new());
            order.len() - 1
        });
        order[o].push(i as u64);
    }
    let mut r = WhatifReport {
        packets: frames.len() as u64,
        flows: order.len() as u64,
        ..WhatifReport::default()
    };
    let count = |m: &HashMap<u64, VerdictLine>, pkts: &[u64]| {
        pkts.iter().fold((0, 0), |(f, d), i| match m.get(i) {
            Some(v) if v.verdict == "forward" => (f + 1, d),
            Some(v) if v.verdict == "drop" => (f, d + 1),
            _ => (f, d),
        })
    };
    for pkts in &order {
        let mut first = None;
        let mut what: Vec<&str> = Vec::new();
        for i in pkts {
            let d = differs(cur.get(i), pro.get(i));
            if !d.is_empty() {
                r.changed_packets += 1;
                first.get_or_insert(*i);
                for x in d {
                    if !what.contains(&x) {
                        what.push(x);
                    }
                }
            }
        }
        let Some(at) = first else {
            continue;
        };
        let k = keys[at as usize].as_ref();
        let c = side(current.0, k, cur.get(&at), count(&cur, pkts));
        let p = side(proposed.0, k, pro.get(&at), count(&pro, pkts));
        let head = pkts[0] as usize;
        let hk = keys[head].as_ref();
        let ip = |a: Addr| (hk.is_some()).then(|| a.to_ip());
        let change = FlowChange {
            iface: frames[head].0.clone(),
            proto: hk
                .map(|k| proto_name(k.proto))
                .unwrap_or_else(|| "-".into()),
            src: hk.and_then(|k| ip(k.src)),
            sport: hk.map(|k| k.sport).unwrap_or(0),
            dst: hk.and_then(|k| ip(k.dst)),
            dport: hk.map(|k| k.dport).unwrap_or(0),
            packets: pkts.len() as u64,
            first_changed: at,
            changed: what.iter().map(|s| s.to_string()).collect(),
            current: c,
            proposed: p,
        };
        r.changed_flows += 1;
        *r.by_change.entry(change_text(&change)).or_default() += 1;
        let svc = change
            .current
            .service
            .clone()
            .or_else(|| change.proposed.service.clone())
            .unwrap_or_else(|| "-".into());
        *r.by_service.entry(svc).or_default() += 1;
        let id = |x: Option<u32>| x.map(|i| i.to_string()).unwrap_or_else(|| "?".into());
        let (si, di) = (
            change.current.src_identity.or(change.proposed.src_identity),
            change.current.dst_identity.or(change.proposed.dst_identity),
        );
        *r.by_identity
            .entry(format!("{} -> {}", id(si), id(di)))
            .or_default() += 1;
        let rules = |s: &Side| {
            if s.rules.is_empty() {
                "no rule".to_string()
            } else {
                s.rules.join(", ")
            }
        };
        *r.by_rule
            .entry(format!(
                "{} => {}",
                rules(&change.current),
                rules(&change.proposed)
            ))
            .or_default() += 1;
        r.changes.push(change);
    }
    r
}

fn outcome_text(s: &Side) -> String {
    match (&s.drop_reason, s.verdict.as_str()) {
        (Some(reason), _) => format!("{} ({reason})", s.verdict),
        (None, v) => v.to_string(),
    }
}

/// `forward -> drop (policy-denied)`, or the backend move when the verdict stays.
fn change_text(c: &FlowChange) -> String {
    let (a, b) = (outcome_text(&c.current), outcome_text(&c.proposed));
    if a != b {
        return format!("{a} -> {b}");
    }
    let be = |s: &Side| s.backend.clone().unwrap_or_else(|| "none".into());
    format!("{a}, backend {} -> {}", be(&c.current), be(&c.proposed))
}

impl FlowChange {
    fn line(&self) -> String {
        let sock = |ip: Option<IpAddr>, port: u16| match ip {
            None => "?".to_string(),
            Some(ip) if matches!(self.proto.as_str(), "tcp" | "udp") => {
                SocketAddr::new(ip, port).to_string()
            }
            Some(ip) => ip.to_string(),
        };
        format!(
            "{} {} {} -> {} ({} packet{})",
            self.iface,
            self.proto,
            sock(self.src, self.sport),
            sock(self.dst, self.dport),
            self.packets,
            if self.packets == 1 { "" } else { "s" }
        )
    }
}

fn side_text(s: &Side) -> String {
    let mut t = outcome_text(s);
    if let Some(e) = &s.egress {
        let _ = write!(t, " to {e}");
    }
    if let Some(svc) = &s.service {
        let _ = write!(t, ", service {svc}");
    }
    if let Some(b) = &s.backend {
        let _ = write!(t, " => {b}");
    }
    if s.policy != "none" {
        let _ = write!(t, ", policy {}", s.policy);
    }
    if !s.rules.is_empty() {
        let _ = write!(t, " [{}]", s.rules.join(", "));
    }
    let _ = write!(t, "; {} forwarded, {} dropped", s.forwarded, s.dropped);
    t
}

impl WhatifReport {
    /// The report for a person: totals, the groups, then every changed flow.
    pub fn render(&self, current: &str, proposed: &str) -> String {
        let mut s = format!(
            "whatif: {} packets in {} flows, replayed against current ({current}) and proposed ({proposed})\n",
            self.packets, self.flows
        );
        for (why, n) in &self.skipped_events {
            let _ = writeln!(s, "  {n} flow events not replayed: {why}");
        }
        if self.changed_flows == 0 {
            s += "no flow changes its verdict, drop reason or backend\n";
            return s;
        }
        let _ = writeln!(
            s,
            "{} flow{} change ({} packets)",
            self.changed_flows,
            if self.changed_flows == 1 { "" } else { "s" },
            self.changed_packets
        );
        let group = |s: &mut String, title: &str, m: &BTreeMap<String, u64>| {
            let _ = writeln!(s, "\nby {title}:");
            let mut v: Vec<_> = m.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (k, n) in v {
                let _ = writeln!(s, "  {n:>6}  {k}");
            }
        };
        group(&mut s, "change", &self.by_change);
        group(&mut s, "service", &self.by_service);
        group(&mut s, "identity", &self.by_identity);
        group(&mut s, "rule (current => proposed)", &self.by_rule);
        s += "\nflows:\n";
        for c in &self.changes {
            let _ = writeln!(s, "  {}", c.line());
            let _ = writeln!(s, "    current:  {}", side_text(&c.current));
            let _ = writeln!(s, "    proposed: {}", side_text(&c.proposed));
        }
        s
    }
}
