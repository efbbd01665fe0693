//! What the control thread asks a worker between bursts ([`Request`]) and the answers'
//! types: conntrack rows and filters, explained outcomes.

use std::net::IpAddr;
use std::sync::Arc;

use crossbeam::channel::Sender;
use serde::{Deserialize, Serialize};

use super::stats::WorkerStats;
use crate::conntrack::{FlowRef, FlowState};
use crate::flow::{Addr, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use crate::pipeline::{Action, Outcome};
use crate::snapshot::SavedPart;
use crate::tables::Tables;

/// A conntrack filter (`nodeplane ct list --src .. --dst .. --port .. --proto .. --state ..`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtFilter {
    /// The flow's original source.
    #[serde(default)]
    pub src: Option<IpAddr>,
    /// The original destination (a VIP) or the backend it was translated to.
    #[serde(default)]
    pub dst: Option<IpAddr>,
    /// Any port of the flow: source, destination or backend port.
    #[serde(default)]
    pub port: Option<u16>,
    /// `tcp`, `udp`, `icmp` (ICMPv6 included).
    #[serde(default)]
    pub proto: Option<String>,
    /// A state name (`ESTABLISHED`, `SYN_SENT`, `OPEN`, ..., case-insensitive).
    #[serde(default)]
    pub state: Option<String>,
}

impl CtFilter {
    /// Checks the filter's own values (the API answers an error for a bad one).
    pub fn check(&self) -> Result<(), String> {
        if let Some(p) = &self.proto {
            if proto_number(p).is_none() {
                return Err(format!("unknown protocol {p:?} (tcp, udp or icmp)"));
            }
        }
        if let Some(s) = &self.state {
            if state_by_name(s).is_none() {
                return Err(format!(
                    "unknown conntrack state {s:?} (OPEN, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE, TIME_WAIT)"
                ));
            }
        }
        Ok(())
    }

    pub fn matches(&self, e: &FlowRef<'_>) -> bool {
        let orig = e.orig();
        if let Some(src) = self.src {
            if orig.src != Addr::from(src) {
                return false;
            }
        }
        if let Some(dst) = self.dst {
            let d = Addr::from(dst);
            if orig.dst != d && e.reply().src != d {
                return false;
            }
        }
        if let Some(port) = self.port {
            if orig.sport != port && orig.dport != port && e.reply().sport != port {
                return false;
            }
        }
        if let Some(p) = self.proto.as_deref().and_then(proto_number) {
            let ep = if orig.proto == PROTO_ICMPV6 {
                PROTO_ICMP
            } else {
                orig.proto
            };
            if ep != p {
                return false;
            }
        }
        if let Some(s) = self.state.as_deref().and_then(state_by_name) {
            if e.state != s {
                return false;
            }
        }
        true
    }
}

pub fn proto_number(p: &str) -> Option<u8> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" => Some(PROTO_TCP),
        "udp" => Some(PROTO_UDP),
        "icmp" | "icmpv6" => Some(PROTO_ICMP),
        _ => None,
    }
}

pub fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_ICMP => "icmp".into(),
        PROTO_ICMPV6 => "icmpv6".into(),
        n => n.to_string(),
    }
}

fn state_by_name(s: &str) -> Option<FlowState> {
    let all = [
        FlowState::Open,
        FlowState::SynSent,
        FlowState::SynRecv,
        FlowState::Established,
        FlowState::FinWait,
        FlowState::Close,
        FlowState::TimeWait,
    ];
    all.into_iter().find(|f| f.name().eq_ignore_ascii_case(s))
}

/// One conntrack entry as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtRow {
    pub worker: usize,
    pub proto: String,
    pub src: String,
    pub sport: u16,
    pub dst: String,
    pub dport: u16,
    pub state: String,
    /// DNAT to a service backend: (service, backend ip, backend port).
    pub service: Option<String>,
    pub backend: Option<String>,
    pub backend_port: Option<u16>,
    /// Source NAT (masquerade, hairpin, or a remapped port): the address and port the flow
    /// leaves from, where its replies come back (`ip:port`, `[ip6]:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat: Option<String>,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub policy: String,
    /// [original direction, reply direction] (entries count packets, not bytes).
    pub packets: [u64; 2],
    pub expires_in_ms: u64,
}

impl CtRow {
    pub fn from_entry(worker: usize, e: &FlowRef<'_>, expires: u64, t: &Tables, now: u64) -> CtRow {
        let orig = e.orig();
        let service = e.nat().map(|n| {
            // The index is from the generation the flow was last checked against; the frontend
            // lookup gives the current name.
            t.frontend(n.vip, n.vip_port, orig.proto)
                .and_then(|i| t.services.get(i as usize))
                .map(|s| s.name.clone())
                .unwrap_or_else(|| "(removed)".to_string())
        });
        CtRow {
            worker,
            proto: proto_name(orig.proto),
            src: orig.src.to_string(),
            sport: orig.sport,
            dst: orig.dst.to_string(),
            dport: orig.dport,
            state: e.state.name().to_string(),
            service,
            backend: e.nat().map(|n| n.backend.to_string()),
            backend_port: e.nat().map(|n| n.backend_port),
            snat: e.snat().map(|sn| crate::flow::fmt_socket(sn.addr, sn.port)),
            src_identity: e.src_identity,
            dst_identity: e.dst_identity,
            policy: e.policy.name().to_string(),
            packets: e.packets().map(u64::from),
            expires_in_ms: expires.saturating_sub(now) / 1_000_000,
        }
    }
}

/// A pipeline outcome with names instead of indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeView {
    /// `forward`, `pass`, `drop` or `held`.
    pub verdict: String,
    pub egress: Option<String>,
    pub reason: Option<String>,
    pub ct: Option<String>,
    pub service: Option<String>,
    pub backend: Option<String>,
    pub backend_port: Option<u16>,
    pub src_identity: Option<u32>,
    pub dst_identity: Option<u32>,
    pub policy: String,
}

impl OutcomeView {
    pub fn new(o: &Outcome, t: &Tables) -> OutcomeView {
        let (verdict, egress, reason) = match o.action {
            Action::Forward(e) => (
                "forward",
                t.ifaces.get(usize::from(e)).map(|i| i.name.clone()),
                None,
            ),
            Action::Pass => ("pass", None, None),
            Action::Drop(r) => ("drop", None, Some(r.name().to_string())),
            Action::Held => ("held", None, None),
        };
        OutcomeView {
            verdict: verdict.into(),
            egress,
            reason,
            ct: o.ct.name().map(str::to_string),
            service: o
                .service
                .and_then(|s| t.services.get(s as usize))
                .map(|s| s.name.clone()),
            backend: o.backend.map(|(a, _)| a.to_string()),
            backend_port: o.backend.map(|(_, p)| p),
            src_identity: o.src_identity,
            dst_identity: o.dst_identity,
            policy: o.policy.name().to_string(),
        }
    }
}

/// What the control thread asks a worker.
#[derive(Debug)]
pub enum Query {
    CtList {
        filter: CtFilter,
        /// Rows to return at most (the count is always complete).
        limit: usize,
    },
    CtFlush {
        filter: CtFilter,
    },
    Stats,
    /// This worker's flows and affinity entries for a snapshot (`nodeplane ct save`, stop).
    Save,
    /// Runs `frame` through a scratch copy of the pipeline (see `Pipeline::scratch`).
    Explain {
        frame: Vec<u8>,
        iface: String,
        keys: Vec<FlowKey>,
    },
}

#[derive(Debug)]
pub enum Answer {
    Ct { rows: Vec<CtRow>, matched: usize },
    Flushed(usize),
    Stats(Box<WorkerStats>),
    Saved(Box<SavedPart>),
    Explained(Box<Explained>),
    Error(String),
}

#[derive(Debug, Clone)]
pub struct Explained {
    /// The live flow of this packet, if this worker has it.
    pub flow: Option<CtRow>,
    pub outcome: Outcome,
    pub view: OutcomeView,
    /// The frame as the pipeline left it (rewritten).
    pub frame_after: Vec<u8>,
    pub tables: Arc<Tables>,
    pub policy_mode_override: Option<nodeplane_state::PolicyMode>,
}

#[derive(Debug)]
pub struct Request {
    pub query: Query,
    pub reply: Sender<Answer>,
}
