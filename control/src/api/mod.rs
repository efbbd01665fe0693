//! The local control socket: a unix stream socket (mode 0600, so root only) carrying
//! line-delimited JSON. One request per line, one response line per request, in order.
//! The protocol is documented in `docs/control.md`.
//!
//! - [`Request`] / [`Response`]: the messages; the result types are shared with the CLI.
//! - [`server`]: the non-blocking server run by the control thread's mio event loop.
//! - [`client`]: the blocking client the CLI uses.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use nodeplane_bgp::SpeakerStatus;

use nodeplane_dataplane::worker::{CtFilter, CtRow, OutcomeView, WorkerStats};

/// The largest request line accepted (bytes, without the newline).
pub const MAX_REQUEST: usize = 64 * 1024;

pub const DEFAULT_SOCKET: &str = "/run/nodeplane/nodeplane.sock";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status {},
    ServiceList {},
    BackendList {},
    CtList {
        #[serde(default)]
        filter: CtFilter,
        /// Rows returned at most (default 10000); the count is always complete.
        #[serde(default)]
        limit: Option<usize>,
        /// Only the count, no rows.
        #[serde(default)]
        count_only: bool,
    },
    CtFlush {
        #[serde(default)]
        filter: CtFilter,
    },
    /// Writes the conntrack snapshot now (as the daemon does when it stops).
    CtSave {},
    IpcacheGet {
        ip: String,
    },
    IdentityList {},
    /// External workloads (VMs, bare metal) registered with labels: name, IPs, identity.
    ExternalList {},
    /// The running state as the source gave it (identities allocated), as JSON: what
    /// `nodeplane whatif` compares a proposed state with.
    StateGet {},
    PolicyGet {
        endpoint: String,
    },
    /// `enforce`, `audit`, `allow-all`, or `state` (drop the override: the state's mode).
    PolicyMode {
        mode: String,
    },
    Explain(ExplainRequest),
    /// The daemon's BGP speaker (config `bgp:`): per neighbour state, uptime, last error,
    /// announced prefixes.
    BgpStatus {},
    /// Flow events: the response line ([`crate::events::ObserveStarted`]) is followed by a
    /// stream of [`crate::events::StreamLine`]s on the same connection until it closes.
    Observe {
        #[serde(default)]
        filter: crate::events::EventFilter,
    },
    /// Frames as the workers received them on `iface`: the response line
    /// ([`crate::capture::CaptureStarted`]) is followed by [`crate::capture::CaptureLine`]s
    /// until `count` frames or `duration_ms` (at least one is required), then an `end` line.
    Capture {
        iface: String,
        #[serde(default)]
        count: Option<u64>,
        #[serde(default)]
        duration_ms: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// Ingress interface name.
    pub iface: String,
    /// `tcp`, `udp` or `icmp`.
    pub proto: String,
    /// `IP`, `IP:PORT` or `[IPv6]:PORT`.
    pub src: String,
    pub dst: String,
    /// TCP flags of the synthesized segment: `syn` (default) or `ack`.
    #[serde(default)]
    pub tcp_flags: Option<String>,
}

/// One response line: `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Response {
        match serde_json::to_value(result) {
            Ok(v) => Response {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Response::err(format!("cannot encode the result: {e}")),
        }
    }
    pub fn err(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }
    /// The response as one line (with its newline).
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"ok":false,"error":"cannot encode the response"}"#.to_string());
        s.push('\n');
        s
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rejection {
    pub origin: String,
    pub error: String,
    /// Unix seconds.
    pub at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyModeStatus {
    /// The mode the state sets.
    pub state: String,
    /// The operator's runtime override (`nodeplane policy mode`), if any.
    pub r#override: Option<String>,
    pub effective: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    /// `waiting` (no valid state yet), `ok`, `stale` (the last change was rejected: the
    /// dataplane runs on the last good state), or `unhealthy` (a worker died: see
    /// `dead_workers`).
    pub state: String,
    pub generation: u64,
    pub state_origin: Option<String>,
    /// Unix seconds of the last publication.
    pub applied_at: Option<u64>,
    /// Compile + publish time of the last publication.
    pub last_publish_ms: Option<f64>,
    pub publications: u64,
    pub rejections: u64,
    pub last_rejection: Option<Rejection>,
    pub source: String,
    pub source_connected: bool,
    pub source_detail: String,
    /// Attempts to reach the store since start (etcd: connections tried; the directory
    /// source: 0). Bounded by the reconnect schedule while the store is down.
    #[serde(default)]
    pub source_attempts: u64,
    /// Whole reads of the store since start (etcd: one per successful reconnect).
    #[serde(default)]
    pub source_syncs: u64,
    pub policy_mode: PolicyModeStatus,
    pub removed_flow_action: String,
    pub services: usize,
    pub endpoints: usize,
    pub ipcache_entries: usize,
    pub uptime_s: u64,
    pub workers: Vec<WorkerStats>,
    /// Workers whose thread ended while the daemon runs: their queues are not served.
    #[serde(default)]
    pub dead_workers: Vec<DeadWorker>,
    /// The packet I/O: kind, XDP attachment and counters, the uplink's neighbour (AF_XDP).
    #[serde(default)]
    pub io: Option<crate::runtime::backend::IoStatus>,
    /// The BGP speaker's sessions (none: no `bgp:` section in the config).
    #[serde(default)]
    pub bgp: Option<BgpSummary>,
    /// Per-service traffic summed over the workers (services that saw any), since the daemon
    /// started.
    #[serde(default)]
    pub service_traffic: BTreeMap<String, nodeplane_dataplane::worker::SvcTraffic>,
    /// `nodeplane observe` sessions the flow-event fan-out serves now (workers record events
    /// only while this is not 0; their counters are `workers[].events`).
    #[serde(default)]
    pub event_observers: usize,
    /// The conntrack snapshot found at start, if any (config `conntrack_snapshot`).
    #[serde(default)]
    pub conntrack_restore: Option<CtRestore>,
    /// The health check node ports served now (services with `external_traffic_policy: Local`
    /// and a `health_check_node_port`).
    #[serde(default)]
    pub health_checks: Vec<HealthCheckPort>,
    /// The MTU of each interface of the state, as the pipeline enforces it.
    #[serde(default)]
    pub mtus: Vec<InterfaceMtu>,
}

/// One interface's MTU as `nodeplane status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceMtu {
    pub iface: String,
    /// None: no MTU known, no MTU check on this interface.
    pub mtu: Option<u16>,
    /// Where it came from: `kernel` (read from the interface; wins), `state`, or `none`.
    pub source: String,
}

/// One health check node port as `nodeplane status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckPort {
    pub port: u16,
    pub service: String,
    /// Ready local backends: the port answers 200 while this is not 0 (and every worker runs).
    pub local_endpoints: usize,
    /// False while the port cannot be bound (tried again at every publication).
    pub listening: bool,
}

/// What `nodeplane bgp status` shows: the speaker's own status plus whether it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BgpStatus {
    /// `waiting` (no accepted state yet), `running`, or `failed` (not running: see `error`;
    /// started again with backoff).
    pub speaker: String,
    pub error: Option<String>,
    /// Graceful restart's F bit in the OPENs of this start: the daemon restored a conntrack
    /// snapshot, so forwarding survived the restart (false after a crash).
    #[serde(default)]
    pub forwarding_preserved: bool,
    #[serde(flatten)]
    pub status: SpeakerStatus,
}

/// The BGP lines of `nodeplane status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BgpSummary {
    pub speaker: String,
    pub error: Option<String>,
    pub local_as: u32,
    /// Prefixes the last accepted state asks to announce.
    pub routes: usize,
    pub neighbors: Vec<BgpNeighborSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BgpNeighborSummary {
    pub name: String,
    pub address: std::net::IpAddr,
    pub remote_as: u32,
    pub state: nodeplane_bgp::fsm::State,
    pub established_since_unix_ms: Option<u64>,
    /// Prefixes in our Adj-RIB-Out towards it.
    pub announced: usize,
    pub last_error: Option<String>,
}

/// A worker thread that ended while the daemon ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadWorker {
    pub worker: usize,
    /// `panicked: MESSAGE` or `its thread exited`.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRow {
    pub name: String,
    pub kind: String,
    /// `ip:port/proto`, including NodePort frontends on every node IP.
    pub frontends: Vec<String>,
    pub algorithm: String,
    pub affinity_s: Option<u64>,
    pub backends: usize,
    pub active: usize,
    pub terminating: usize,
    pub quarantined: usize,
    /// Traffic since the daemon started (all workers).
    #[serde(default)]
    pub traffic: nodeplane_dataplane::worker::SvcTraffic,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendRow {
    pub service: String,
    pub ip: String,
    pub port: u16,
    pub weight: u16,
    pub state: String,
    /// Live conntrack flows to this backend (all workers).
    pub flows: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CtList {
    pub matched: usize,
    pub rows: Vec<CtRow>,
    /// More rows matched than were returned.
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CtFlushed {
    pub flushed: usize,
}

/// A conntrack snapshot written (`nodeplane ct save`, and at every stop).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtSaved {
    pub path: String,
    pub flows: usize,
    pub affinity: usize,
    pub bytes: usize,
    pub ms: f64,
}

/// What the daemon did with the conntrack snapshot it found when it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtRestore {
    pub path: String,
    /// `pending` (read, waiting for the workers to start), `restored`, or `ignored` (the file
    /// was bad: see `error`; it was renamed to `<path>.bad`).
    pub result: String,
    pub error: Option<String>,
    /// The version of the build that wrote it.
    pub writer: Option<String>,
    /// Seconds between the save and the read.
    pub age_s: Option<f64>,
    /// Flows in the file, and those restored into the workers (the others had expired
    /// meanwhile, conflicted, or found no room).
    pub flows_saved: usize,
    pub flows_restored: usize,
    /// Affinity entries inserted, summed over the workers (each goes into every worker).
    pub affinity_restored: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpcacheEntry {
    pub ip: String,
    pub identity: u32,
    /// The prefix that matched (`A/LEN`), or none (world).
    pub prefix: Option<String>,
    /// `endpoint NAME`, `node`, `ipcache` or `world`.
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityRow {
    pub identity: u32,
    pub cluster: u32,
    /// `reserved:host`, `endpoint`, `ipcache`...
    pub kind: String,
    /// Endpoint names (with labels) or prefixes that carry the identity.
    pub members: Vec<String>,
}

/// One external workload (`external-list`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExternalRow {
    pub name: String,
    pub ips: Vec<String>,
    pub identity: u32,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyView {
    pub endpoint: String,
    pub identity: u32,
    pub ips: Vec<String>,
    pub mode: PolicyModeStatus,
    /// Rules as in the state, in order (the index is what `explain` names).
    pub ingress: Vec<nodeplane_state::Rule>,
    pub egress: Vec<nodeplane_state::Rule>,
    /// `default-allow` (no rule in that direction) or `default-deny`.
    pub ingress_default: String,
    pub egress_default: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyModeSet {
    pub mode: PolicyModeStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityInfo {
    pub identity: u32,
    /// Where it comes from: `endpoint NAME`, `node`, `ipcache PREFIX`, `world`.
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleDecision {
    pub endpoint: String,
    pub direction: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// Index into the endpoint's rules in that direction; none = default deny.
    pub rule_index: Option<usize>,
    pub rule: Option<nodeplane_state::Rule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explanation {
    pub iface: String,
    pub iface_role: String,
    pub packet: String,
    /// What the XDP program does with it: `redirect` (to the worker) or `pass` (kernel).
    pub steering: String,
    /// The worker whose conntrack was consulted (the one holding the flow, else worker 0).
    pub worker: usize,
    /// The live flow this packet belongs to, if any.
    pub flow: Option<CtRow>,
    pub outcome: OutcomeView,
    pub service_frontend: Option<String>,
    pub backend_state: Option<String>,
    pub src_identity: Option<IdentityInfo>,
    pub dst_identity: Option<IdentityInfo>,
    pub policy_mode: String,
    /// The source endpoint's egress decision and the destination endpoint's ingress decision
    /// (none: no local endpoint on that side, or not evaluated).
    pub egress_rule: Option<RuleDecision>,
    pub ingress_rule: Option<RuleDecision>,
    /// The packet as it would leave (`src -> dst` after translation), if forwarded.
    pub output: Option<String>,
}
