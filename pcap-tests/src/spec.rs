//! `case.json`: how a case is replayed and what it must show, independent of the goldens.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseSpec {
    pub name: String,
    /// The initial state file (relative to the case directory).
    pub state: String,
    pub inputs: Vec<Input>,
    #[serde(default)]
    pub state_at: Vec<StateAt>,
    /// Output packets on each interface come in the order of the forward verdicts that name
    /// that interface (false where fragments are held and released later).
    pub ordered_output: bool,
    /// Every output packet must carry valid checksums.
    pub checksums_valid: bool,
    /// Every unfragmented TCP/UDP input packet carries a partial checksum, as a Linux sender
    /// with TX checksum offload (the veth default) leaves it; the outputs must be complete.
    #[serde(default, skip_serializing_if = "is_false")]
    pub partial_checksums: bool,
    /// Every packet of one 5-tuple that got a backend got the same backend.
    pub sticky_flows: bool,
    /// Every service packet of one client address got the same backend (ClientIP affinity).
    #[serde(default)]
    pub affinity_by_client: bool,
    /// Expected share of new flows per backend (weights), with an absolute tolerance.
    #[serde(default)]
    pub backend_share: Option<BackendShare>,
    /// Expected totals, when every packet's verdict is known in advance.
    #[serde(default)]
    pub totals: Option<Totals>,
    /// Per-packet expectations (by verdict index).
    pub expect: Vec<Expect>,
    /// `--removed-flow-action` of the replay (`rst`); absent: the default (drop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_flow_action: Option<String>,
    /// The replay writes flow events (`--events events.jsonl`), pinned like the other outputs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub events: bool,
    /// `summary.json` also pins the per-service counters (`services`) and, with
    /// `removed_flow_action`, the resets sent (`rst_sent`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub services: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub iface: String,
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateAt {
    pub seconds: f64,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendShare {
    /// backend ("ip:port") → expected fraction of new flows.
    pub shares: BTreeMap<String, f64>,
    pub tolerance: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub packets: u64,
    pub forward: u64,
    pub pass: u64,
    pub drop: u64,
    /// reason → count (exact reason names only; absent when a case only knows prefixes).
    #[serde(default)]
    pub drops: Option<BTreeMap<String, u64>>,
}

/// What one input packet must show. Absent fields are not checked.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub index: usize,
    /// A few words saying what this packet is.
    pub what: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Anything but this verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict_not: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ct: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ct_not: Option<String>,
    /// The verdict names a service (true) or none (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_service: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_in: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_not: Option<String>,
    /// The same backend as the packet with this index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_same_as: Option<usize>,
    /// No backend at all (null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_none: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_identity: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_identity: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The transmitted packet (forward only; ordered_output cases): source and destination as
    /// `ip`, `ip:port` or `[ip6]:port`; "backend" in out_dst means the verdict's backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_dst: Option<String>,
    /// ICMP errors: the quoted packet's source and destination after rewriting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_inner_src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_inner_dst: Option<String>,
    /// The packet is answered by a TCP reset (`removed_flow_action: rst`): the transmitted
    /// packet is that reset, sent back out of the input interface to the packet's sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rst: Option<bool>,
    /// The packet is dropped `no-backend` and answered with a reject sent back out of its input
    /// interface (with its timestamp): a TCP reset, or an ICMP / ICMPv6 port unreachable
    /// quoting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<bool>,
    /// The packet exceeds its egress interface's MTU (this value): dropped `frag-needed` and
    /// answered with an ICMP fragmentation-needed / ICMPv6 packet-too-big announcing it, sent
    /// back out of its input interface (with its timestamp) from `frag_needed_from`, quoting the
    /// packet as it arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frag_needed: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frag_needed_from: Option<String>,
}
