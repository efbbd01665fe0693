//! A worker: one pipeline, one packet I/O, run to completion over bursts.
//!
//! ```text
//!  loop {
//!    subscriber.poll()          one atomic load; new tables / policy mode between bursts
//!    events.observed()          one atomic load: is a `nodeplane observe` attached?
//!    io.burst(process)          rx ≤ 64 frames → Pipeline::process_burst → [flow events:
//!                               new flows and drops → this worker's queue, if observed]
//!                               → [RST rewrite] → tx
//!    pipeline.drain()           held fragments that became ready or timed out
//!    serve ≤ 8 control requests ct list / flush / stats / explain (bounded channel)
//!    every 1 s: full GC         (incremental GC runs inside every burst)
//!    nothing received: io.idle()
//!  }                            a panic anywhere in a turn is caught at its end (see below)
//! ```
//!
//! No panic is expected on this path, but one must not silently take the worker's queues
//! down with it: each turn runs under `catch_unwind`. A caught panic is counted
//! (`worker_panics`, and the frames of its burst in `panic_dropped`), logged at most once per
//! [`PANIC_LOG_EVERY`] per worker, and the worker goes on with the next turn. The burst's frames
//! are recycled by the I/O as the panic unwinds through it (AF_XDP: the burst's `Drop`); the
//! conntrack entry the panicking packet was updating may be left half-updated, which is the
//! price of keeping the other flows forwarding.
//!
//! The worker owns its conntrack; the control thread never touches it directly but sends
//! [`Request`]s over a bounded channel and waits (with a timeout) for the reply, so table dumps
//! happen between bursts and no lock is ever shared with the packet path.
//!
//! [`PacketIo`] is the seam for packet I/O: the AF_XDP runtime implements it over its rings;
//! [`ReplayIo`] implements it over frames from a capture, for tests and benchmarks.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Once;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};
use nodeplane_dataplane::conntrack::{CtStats, Entry, FlowState};
use nodeplane_dataplane::flow::{Addr, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use nodeplane_dataplane::parse::{self, Parsed};
use nodeplane_dataplane::tables::IfIndex;
use nodeplane_dataplane::{
    rewrite, rst, Action, CtStatus, DropReason, Outcome, Packet, Pipeline, Tables, BURST,
};
use serde::{Deserialize, Serialize};

use crate::events::{EventCounts, EventTap, FlowEvent};
use crate::publish::Subscriber;

/// What happens to a packet of a flow whose backend was removed or quarantined (the pipeline
/// drops it `backend-gone` and forgets the flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemovedFlowAction {
    /// Drop silently: the peers find out by their own timeouts.
    #[default]
    Drop,
    /// Drop, and answer a TCP segment with a reset to its sender (built in place from the
    /// dropped segment and sent back out of its ingress interface).
    Rst,
}

/// Per-interface transmit counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxCount {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IoStats {
    pub rx_packets: u64,
    /// Egress interface name → frames transmitted.
    pub tx: BTreeMap<String, TxCount>,
    /// Frames passed to the kernel (live) or discarded as "passed" (replay).
    pub passed: u64,
    /// Whether the input is exhausted (replay with a loop count).
    pub finished: bool,
    /// AF_XDP I/O: hand-off counters, per-socket ring and kernel (`XDP_STATISTICS`) counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub afxdp: Option<crate::runtime::io::AfXdpIoStats>,
}

/// Packet I/O of one worker. Live: AF_XDP sockets (RX/TX/fill/completion rings over a UMEM).
/// Tests and benchmarks: [`ReplayIo`].
pub trait PacketIo: Send {
    /// Called once on the worker's own thread before its loop (e.g. to pin it to a core).
    fn start(&mut self) {}
    /// Called with every new snapshot: resolve interface names to the snapshot's indexes.
    fn bind(&mut self, tables: &Arc<Tables>);
    /// One burst: receive up to [`BURST`] frames with their ingress interface and time `now`,
    /// hand them to `process` (which decides every frame's [`Outcome`] and may rewrite and
    /// shorten frames in place), then transmit each `Action::Forward(egress)` frame — its
    /// current `data.len()` bytes — on `egress` and recycle the others (pass to the kernel
    /// where that applies). Returns how many frames were received; 0 means idle.
    fn burst(
        &mut self,
        now: u64,
        process: &mut dyn FnMut(&mut [Packet<'_>], &mut [Outcome]),
    ) -> usize;
    /// Transmits a copy of a frame that is not part of the current burst (a released fragment).
    fn send(&mut self, egress: IfIndex, frame: &[u8]);
    /// Nothing was received: wait for traffic, at most `max`.
    fn idle(&mut self, max: Duration);
    fn stats(&self) -> IoStats;
    /// The input is exhausted (replay with a loop count); live I/O never is.
    fn finished(&self) -> bool {
        false
    }
    /// Flush any buffered output, check resources (called when the worker stops).
    fn finish(&mut self) {}
}

/// The control thread's side of a packet I/O kind: creates the workers' [`PacketIo`]s when the
/// first state is published, may veto a state it cannot run (the AF_XDP sockets are bound to
/// fixed interfaces), prepares every publication (the XDP steering maps) and reports its own
/// status. Everything here runs on the control thread, never on the packet path.
pub trait IoBackend {
    /// `afxdp`, `replay` or `none`.
    fn kind(&self) -> &'static str;
    /// Whether a validated state can be published with this I/O (an error rejects it whole).
    fn admit(&self, _state: &nodeplane_state::State) -> Result<(), String> {
        Ok(())
    }
    /// Creates the I/O of `workers` workers for the first published tables. An error rejects
    /// that state; the next state tries again.
    fn start(
        &mut self,
        tables: &Arc<Tables>,
        workers: usize,
    ) -> Result<Vec<Box<dyn PacketIo>>, String>;
    /// Called with every later snapshot before the workers get it (an error rejects it).
    fn prepare(&mut self, _tables: &Tables) -> Result<(), String> {
        Ok(())
    }
    fn status(&self) -> IoStatus {
        IoStatus {
            kind: self.kind().into(),
            ..IoStatus::default()
        }
    }
    /// A worker thread ended while the daemon runs (its queues have no socket any more).
    fn worker_died(&mut self, _worker: usize) {}
    /// Called after the workers stopped (AF_XDP: detach XDP).
    fn stop(&mut self) {}
}

/// What an [`IoBackend`] reports in `nodeplane status` (besides the per-worker counters).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IoStatus {
    /// `afxdp`, `replay` or `none`.
    pub kind: String,
    /// Interfaces with the XDP program: `name (mode, N queues)`.
    #[serde(default)]
    pub attached: Vec<String>,
    /// The XDP program's counters (name → value).
    #[serde(default)]
    pub xdp: BTreeMap<String, u64>,
    /// The uplink gateway's next hop (AF_XDP).
    #[serde(default)]
    pub neighbour: Option<crate::runtime::neigh::NeighbourStatus>,
}

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

    pub fn matches(&self, e: &Entry) -> bool {
        if let Some(src) = self.src {
            if e.orig.src != Addr::from(src) {
                return false;
            }
        }
        if let Some(dst) = self.dst {
            let d = Addr::from(dst);
            if e.orig.dst != d && e.reply.src != d {
                return false;
            }
        }
        if let Some(port) = self.port {
            if e.orig.sport != port && e.orig.dport != port && e.reply.sport != port {
                return false;
            }
        }
        if let Some(p) = self.proto.as_deref().and_then(proto_number) {
            let ep = if e.orig.proto == PROTO_ICMPV6 {
                PROTO_ICMP
            } else {
                e.orig.proto
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
    pub src_identity: u32,
    pub dst_identity: u32,
    pub policy: String,
    /// [original direction, reply direction].
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub age_ms: u64,
    pub expires_in_ms: u64,
}

impl CtRow {
    pub fn from_entry(worker: usize, e: &Entry, t: &Tables, now: u64) -> CtRow {
        let service = e.nat.map(|n| {
            // The index is from the generation the flow was last checked against; the frontend
            // lookup gives the current name.
            t.frontend(n.vip, n.vip_port, e.orig.proto)
                .and_then(|i| t.services.get(i as usize))
                .map(|s| s.name.clone())
                .unwrap_or_else(|| "(removed)".to_string())
        });
        CtRow {
            worker,
            proto: proto_name(e.orig.proto),
            src: e.orig.src.to_string(),
            sport: e.orig.sport,
            dst: e.orig.dst.to_string(),
            dport: e.orig.dport,
            state: e.state.name().to_string(),
            service,
            backend: e.nat.map(|n| n.backend.to_string()),
            backend_port: e.nat.map(|n| n.backend_port),
            src_identity: e.src_identity,
            dst_identity: e.dst_identity,
            policy: e.policy.name().to_string(),
            packets: e.packets,
            bytes: e.bytes,
            age_ms: now.saturating_sub(e.created) / 1_000_000,
            expires_in_ms: e.expires.saturating_sub(now) / 1_000_000,
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

/// Traffic of one service (DESIGN §3.8): what the pipeline decided for frames of its flows,
/// both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvcTraffic {
    /// Frames forwarded (requests to a frontend and replies from its backends).
    pub packets: u64,
    /// Bytes of those frames as received.
    pub bytes: u64,
    /// New flows forwarded to a backend.
    pub flows: u64,
    /// Frames of its flows dropped (any reason: policy, no backend, backend gone, ...).
    pub dropped: u64,
}

impl SvcTraffic {
    pub fn add(&mut self, o: &SvcTraffic) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.flows += o.flows;
        self.dropped += o.dropped;
    }

    fn is_zero(&self) -> bool {
        *self == SvcTraffic::default()
    }
}

/// A worker's per-service counters, indexed like the services of the tables they were counted
/// under. The worker increments them per frame (an indexed add, no lookup); names are resolved
/// off the worker, by the control thread ([`ServiceCounts::by_name`]).
#[derive(Debug, Clone)]
pub struct ServiceCounts {
    tables: Arc<Tables>,
    counts: Vec<SvcTraffic>,
}

impl ServiceCounts {
    fn new(tables: &Arc<Tables>) -> ServiceCounts {
        ServiceCounts {
            tables: Arc::clone(tables),
            counts: vec![SvcTraffic::default(); tables.services.len()],
        }
    }

    /// New tables: counters move to the service of the same name (services that are gone take
    /// theirs with them, as a Prometheus series of a deleted object ends). Once per
    /// publication; looks up only the services that saw traffic.
    fn rebind(&mut self, tables: &Arc<Tables>) {
        if Arc::ptr_eq(&self.tables, tables) {
            return;
        }
        let mut next = vec![SvcTraffic::default(); tables.services.len()];
        for (i, c) in self.counts.iter().enumerate() {
            if c.is_zero() {
                continue;
            }
            let name = &self.tables.services[i].name;
            if let Some(&j) = tables.service_by_name.get(name.as_str()) {
                next[j as usize].add(c);
            }
        }
        self.tables = Arc::clone(tables);
        self.counts = next;
    }

    #[inline]
    fn count(&mut self, o: &Outcome, len: usize) {
        let Some(c) = o.service.and_then(|s| self.counts.get_mut(s as usize)) else {
            return;
        };
        match o.action {
            Action::Forward(_) => {
                c.packets += 1;
                c.bytes += len as u64;
                c.flows += u64::from(o.ct == CtStatus::New);
            }
            Action::Drop(_) => c.dropped += 1,
            Action::Pass | Action::Held => {}
        }
    }

    /// Service name → traffic (services that saw any).
    pub fn by_name(&self) -> BTreeMap<String, SvcTraffic> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.is_zero())
            .map(|(i, c)| (self.tables.services[i].name.clone(), *c))
            .collect()
    }
}

/// A snapshot of a worker's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerStats {
    pub worker: usize,
    pub generation: u64,
    pub packets: u64,
    pub forwarded: u64,
    pub passed: u64,
    pub dropped: u64,
    pub held: u64,
    /// Drop reason name → count (non-zero only).
    pub drops: BTreeMap<String, u64>,
    pub rst_sent: u64,
    /// Partial TCP/UDP checksums completed (frames from senders with TX checksum offload on).
    #[serde(default)]
    pub csum_completed: u64,
    pub ct_entries: usize,
    pub ct_capacity: usize,
    pub ct_created: u64,
    pub ct_expired: u64,
    pub ct_evicted: u64,
    pub ct_full_drops: u64,
    /// Turns whose processing panicked (caught: the worker went on).
    #[serde(default)]
    pub worker_panics: u64,
    /// Frames of the bursts that panicked (recycled, not forwarded).
    #[serde(default)]
    pub panic_dropped: u64,
    pub io: IoStats,
    /// Flow events recorded and lost (queue full) by this worker.
    #[serde(default)]
    pub events: EventCounts,
    /// Per-service counters, by index (named by the control thread: `services` of `Status`).
    #[serde(skip)]
    pub services: Option<ServiceCounts>,
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

/// Monotonic nanoseconds since a shared epoch (every worker and the control thread agree).
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Clock {
        Clock(Instant::now())
    }
    /// Starts at 1 s so no timestamp is 0.
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64 + 1_000_000_000
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Requests served per loop turn at most (a flood of CLI calls cannot starve the packets).
const REQUESTS_PER_TURN: usize = 8;
/// A worker logs a caught panic at most this often (the count says how many were not logged).
pub const PANIC_LOG_EVERY: Duration = Duration::from_secs(10);

thread_local! {
    /// Set on a worker's own thread: the panic hook records the panic instead of printing it.
    static WORKER_THREAD: Cell<bool> = const { Cell::new(false) };
    /// The last panic on this thread, `message at file:line`, for the worker's own log line.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that leaves panics on worker threads to the
/// worker, which catches, counts and logs them rate-limited; other threads' panics go to the
/// previous hook as before.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if WORKER_THREAD.with(Cell::get) {
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
            } else {
                prev(info);
            }
        }));
    });
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".into()
    }
}
const FULL_GC_EVERY: Duration = Duration::from_secs(1);
const IDLE_WAIT: Duration = Duration::from_millis(2);

#[derive(Debug)]
pub struct Worker<I: PacketIo> {
    pub id: usize,
    pipeline: Pipeline,
    sub: Subscriber,
    io: I,
    requests: Receiver<Request>,
    stop: Arc<AtomicBool>,
    clock: Clock,
    removed: RemovedFlowAction,
    rst_sent: u64,
    last_gc: Instant,
    panics: u64,
    panic_dropped: u64,
    /// When a caught panic was last logged, and how many were caught since without a log.
    panic_logged: Option<Instant>,
    panics_unlogged: u64,
    services: ServiceCounts,
    /// Flow events: checked once per burst (see `crate::events`).
    events: EventTap,
}

impl<I: PacketIo> Worker<I> {
    pub fn new(
        id: usize,
        sub: Subscriber,
        mut io: I,
        requests: Receiver<Request>,
        stop: Arc<AtomicBool>,
        clock: Clock,
        removed: RemovedFlowAction,
    ) -> Worker<I> {
        let tables = sub.current();
        io.bind(&tables);
        let services = ServiceCounts::new(&tables);
        Worker {
            id,
            pipeline: Pipeline::new(tables),
            sub,
            io,
            requests,
            stop,
            clock,
            removed,
            rst_sent: 0,
            last_gc: Instant::now(),
            panics: 0,
            panic_dropped: 0,
            panic_logged: None,
            panics_unlogged: 0,
            services,
            events: EventTap::detached(),
        }
    }

    /// Records flow events into `tap` (the daemon's hub; see `crate::events`).
    pub fn with_events(mut self, tap: EventTap) -> Worker<I> {
        self.events = tap;
        self
    }

    /// Runs until `stop` is set. Returns the final counters.
    pub fn run(mut self) -> WorkerStats {
        WORKER_THREAD.with(|w| w.set(true));
        self.io.start();
        while !self.stop.load(Ordering::Relaxed) {
            self.turn();
        }
        self.io.finish();
        self.stats()
    }

    /// One loop turn: pick up tables, one burst, drain, requests, full GC when due, idle.
    /// A panic inside is caught, counted and logged (module docs); the turn then returns the
    /// frames of its burst. Public for tests and benchmarks that drive a worker without a
    /// thread. Returns the frames taken in (0: idle).
    pub fn turn(&mut self) -> usize {
        let mut taken = 0;
        match panic::catch_unwind(AssertUnwindSafe(|| self.turn_inner(&mut taken))) {
            Ok(n) => n,
            Err(p) => {
                self.contained(p.as_ref(), taken);
                taken
            }
        }
    }

    /// Counts a caught panic and logs it, at most once per [`PANIC_LOG_EVERY`].
    fn contained(&mut self, p: &(dyn std::any::Any + Send), frames: usize) {
        self.panics += 1;
        self.panic_dropped += frames as u64;
        let due = self
            .panic_logged
            .is_none_or(|t| t.elapsed() >= PANIC_LOG_EVERY);
        if !due {
            self.panics_unlogged += 1;
            return;
        }
        let what = LAST_PANIC
            .with(|l| l.borrow_mut().take())
            .unwrap_or_else(|| panic_message(p));
        log::error!(
            "worker {}: PANIC caught ({what}); {frames} frames of the burst dropped, the worker goes on ({} panics in all, {} more since the last log line)",
            self.id,
            self.panics,
            self.panics_unlogged
        );
        self.panic_logged = Some(Instant::now());
        self.panics_unlogged = 0;
    }

    fn turn_inner(&mut self, taken: &mut usize) -> usize {
        if self.sub.poll(&mut self.pipeline) {
            self.io.bind(self.pipeline.tables());
            self.services.rebind(self.pipeline.tables());
        }
        let now = self.clock.now();
        let id = self.id as u16;
        let Worker {
            pipeline,
            io,
            removed,
            rst_sent,
            services,
            events,
            ..
        } = self;
        let removed = *removed;
        // The only cost of flow events while nobody observes: this load, once per turn.
        let observed = events.observed();
        let generation = pipeline.tables().generation;
        let n = io.burst(now, &mut |pkts, outs| {
            *taken = pkts.len();
            if observed {
                // Events before the RST rewrite below: a dropped frame shows as dropped.
                for (pc, oc) in pkts.chunks_mut(BURST).zip(outs.chunks_mut(BURST)) {
                    pipeline.process_burst(pc, oc);
                    let parsed = pipeline.parsed(pc.len());
                    events.record_burst(id, generation, now, pc, oc, parsed);
                }
            } else {
                pipeline.process_burst(pkts, outs);
            }
            for (p, o) in pkts.iter().zip(outs.iter()) {
                services.count(o, p.data.len());
            }
            if removed == RemovedFlowAction::Rst {
                for (p, o) in pkts.iter_mut().zip(outs.iter_mut()) {
                    if o.action == Action::Drop(DropReason::BackendGone) {
                        if let Some(len) = rst::reset_in_place(p.data) {
                            let data = std::mem::take(&mut p.data);
                            p.data = &mut data[..len];
                            o.action = Action::Forward(p.iface);
                            *rst_sent += 1;
                        }
                    }
                }
            }
        });
        pipeline.drain(now, |r| {
            services.count(&r.outcome, r.data.len());
            if observed && FlowEvent::wanted(&r.outcome) {
                // Released fragments are rare: parse again here (off the burst loop).
                let parsed = parse::parse(r.data);
                events.push(FlowEvent::new(
                    id, generation, r.iface, now, &parsed, &r.outcome,
                ));
            }
            if let Action::Forward(e) = r.outcome.action {
                io.send(e, r.data);
            }
        });
        *taken = 0;
        for _ in 0..REQUESTS_PER_TURN {
            match self.requests.try_recv() {
                Ok(req) => self.serve(req),
                Err(_) => break,
            }
        }
        if self.last_gc.elapsed() >= FULL_GC_EVERY {
            self.pipeline.gc(self.clock.now());
            self.last_gc = Instant::now();
        }
        if n == 0 {
            if self.io.finished() {
                // Input exhausted (replay): wait for requests instead of spinning.
                match self.requests.recv_timeout(Duration::from_millis(20)) {
                    Ok(req) => self.serve(req),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
                }
            } else {
                self.io.idle(IDLE_WAIT);
            }
        }
        n
    }

    fn serve(&mut self, req: Request) {
        let now = self.clock.now();
        let answer = match req.query {
            Query::CtList { filter, limit } => {
                let t = Arc::clone(self.pipeline.tables());
                let mut rows = Vec::new();
                let mut matched = 0;
                for e in self.pipeline.conntrack().iter() {
                    if e.expires > now && filter.matches(e) {
                        matched += 1;
                        if rows.len() < limit {
                            rows.push(CtRow::from_entry(self.id, e, &t, now));
                        }
                    }
                }
                Answer::Ct { rows, matched }
            }
            Query::CtFlush { filter } => {
                let ct = self.pipeline.conntrack_mut();
                let before = ct.len();
                if filter == CtFilter::default() {
                    ct.flush();
                    Answer::Flushed(before)
                } else {
                    let keys: Vec<FlowKey> = ct
                        .iter()
                        .filter(|e| filter.matches(e))
                        .map(|e| e.orig)
                        .collect();
                    for k in &keys {
                        if let Some((slot, _)) = ct.lookup(k, now) {
                            ct.remove(slot);
                        }
                    }
                    Answer::Flushed(before - ct.len())
                }
            }
            Query::Stats => Answer::Stats(Box::new(self.stats())),
            Query::Explain { frame, iface, keys } => self.explain(frame, &iface, &keys, now),
        };
        // The control thread may have given up waiting: nothing to do then.
        let _ = req.reply.try_send(answer);
    }

    fn explain(&self, mut frame: Vec<u8>, iface: &str, keys: &[FlowKey], now: u64) -> Answer {
        let tables = Arc::clone(self.pipeline.tables());
        let Some(idx) = tables.iface_index(iface) else {
            return Answer::Error(format!(
                "interface {iface:?} is not in the running state (known: {})",
                tables
                    .ifaces
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let flow = keys
            .iter()
            .find_map(|k| self.pipeline.conntrack().peek(k, now))
            .map(|(e, _)| CtRow::from_entry(self.id, e, &tables, now));
        let mut scratch = self.pipeline.scratch(keys, now);
        let outcome = scratch.process_one(&mut frame, idx, now);
        Answer::Explained(Box::new(Explained {
            flow,
            view: OutcomeView::new(&outcome, &tables),
            outcome,
            frame_after: frame,
            policy_mode_override: self.pipeline.policy_mode_override(),
            tables,
        }))
    }

    pub fn stats(&self) -> WorkerStats {
        let c = self.pipeline.counters();
        let ct = self.pipeline.conntrack();
        let s: CtStats = ct.stats;
        WorkerStats {
            worker: self.id,
            generation: self.pipeline.tables().generation,
            packets: c.packets,
            forwarded: c.forwarded,
            passed: c.passed,
            dropped: c.dropped,
            held: c.held,
            drops: DropReason::ALL
                .iter()
                .filter(|r| c.drops[**r as usize] > 0)
                .map(|r| (r.name().to_string(), c.drops[*r as usize]))
                .collect(),
            rst_sent: self.rst_sent,
            csum_completed: c.csum_completed,
            ct_entries: ct.len(),
            ct_capacity: ct.capacity(),
            ct_created: s.created,
            ct_expired: s.expired,
            ct_evicted: s.evicted,
            ct_full_drops: s.full_drops,
            worker_panics: self.panics,
            panic_dropped: self.panic_dropped,
            io: self.io.stats(),
            events: self.events.counts(),
            services: Some(self.services.clone()),
        }
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub fn io(&self) -> &I {
        &self.io
    }
}

/// One input of a [`ReplayIo`]: frames of a capture entering on an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayInput {
    pub iface: String,
    pub file: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayIoConfig {
    pub inputs: Vec<ReplayInput>,
    /// Passes over the captures; `None` (or 0) = forever.
    pub loops: Option<u64>,
    /// Packets per second; `None` (or 0) = as fast as possible.
    pub rate_pps: Option<u64>,
    /// From the second pass on, add the pass number to TCP/UDP source ports, so every pass
    /// opens new flows (and new state applies to new traffic).
    pub vary_ports: bool,
    /// Write transmitted frames to `<dir>/<egress>.pcap`.
    pub output_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayIoError {
    #[error("cannot read capture {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: pcap_file::PcapError,
    },
    #[error("cannot open capture {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("capture {path}: link type {link:?} is not Ethernet")]
    LinkType {
        path: PathBuf,
        link: pcap_file::DataLink,
    },
    #[error("capture {path}: frame {index} is {len} bytes, more than the {max}-byte frame size")]
    TooLong {
        path: PathBuf,
        index: usize,
        len: usize,
        max: usize,
    },
    #[error("cannot create {path}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The largest frame a replay buffer holds (like an AF_XDP frame of 4096 bytes).
pub const REPLAY_FRAME: usize = 4096;

/// Packet I/O over frames loaded from pcap captures: looped, paced or as fast as possible,
/// with per-egress counters and optional pcap output. Each burst copies its frames into
/// fixed buffers (as a NIC would DMA them into UMEM frames) and the pipeline rewrites those.
#[derive(Debug)]
pub struct ReplayIo {
    /// (input index, frame), in capture order, inputs concatenated.
    frames: Vec<(usize, Vec<u8>)>,
    input_ifaces: Vec<String>,
    /// Per input: its interface's index in the bound tables (`u16::MAX`: unknown).
    input_index: Vec<IfIndex>,
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    pos: usize,
    pass: u64,
    loops: Option<u64>,
    rate: Option<u64>,
    vary_ports: bool,
    started: Option<Instant>,
    received: u64,
    passed: u64,
    /// Index = IfIndex of the bound tables.
    egress_names: Vec<String>,
    tx: BTreeMap<String, TxCount>,
    tx_by_index: Vec<TxCount>,
    output_dir: Option<PathBuf>,
    writers: BTreeMap<String, pcap_file::pcap::PcapWriter<BufWriter<File>>>,
}

impl ReplayIo {
    pub fn new(cfg: &ReplayIoConfig) -> Result<ReplayIo, ReplayIoError> {
        let mut frames = Vec::new();
        for (i, input) in cfg.inputs.iter().enumerate() {
            for f in load_pcap(&input.file)? {
                frames.push((i, f));
            }
        }
        if let Some(dir) = &cfg.output_dir {
            std::fs::create_dir_all(dir).map_err(|source| ReplayIoError::Output {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(ReplayIo {
            frames,
            input_ifaces: cfg.inputs.iter().map(|i| i.iface.clone()).collect(),
            input_index: vec![IfIndex::MAX; cfg.inputs.len()],
            bufs: (0..BURST).map(|_| vec![0u8; REPLAY_FRAME]).collect(),
            lens: vec![0; BURST],
            pos: 0,
            pass: 0,
            loops: cfg.loops.filter(|n| *n > 0),
            rate: cfg.rate_pps.filter(|n| *n > 0),
            vary_ports: cfg.vary_ports,
            started: None,
            received: 0,
            passed: 0,
            egress_names: Vec::new(),
            tx: BTreeMap::new(),
            tx_by_index: Vec::new(),
            output_dir: cfg.output_dir.clone(),
            writers: BTreeMap::new(),
        })
    }

    /// Folds the per-index counters into the by-name totals (before a rebind and for stats).
    fn fold_tx(&mut self) {
        for (i, c) in self.tx_by_index.iter_mut().enumerate() {
            if c.packets > 0 {
                let t = self.tx.entry(self.egress_names[i].clone()).or_default();
                t.packets += c.packets;
                t.bytes += c.bytes;
                *c = TxCount::default();
            }
        }
    }

    fn transmit(&mut self, egress: IfIndex, frame: &[u8]) {
        let Some(c) = self.tx_by_index.get_mut(usize::from(egress)) else {
            return;
        };
        c.packets += 1;
        c.bytes += frame.len() as u64;
        if let Some(dir) = &self.output_dir {
            let name = &self.egress_names[usize::from(egress)];
            if !self.writers.contains_key(name) {
                let path = dir.join(format!("{name}.pcap"));
                let w = File::create(&path).ok().and_then(|f| {
                    let header = pcap_file::pcap::PcapHeader {
                        datalink: pcap_file::DataLink::ETHERNET,
                        ..Default::default()
                    };
                    pcap_file::pcap::PcapWriter::with_header(BufWriter::new(f), header).ok()
                });
                match w {
                    Some(w) => {
                        self.writers.insert(name.clone(), w);
                    }
                    None => {
                        log::error!("cannot write {}; replay output disabled", path.display());
                        self.output_dir = None;
                        return;
                    }
                }
            }
            if let Some(w) = self.writers.get_mut(name) {
                let ts = self.started.map(|s| s.elapsed()).unwrap_or_default();
                let p = pcap_file::pcap::PcapPacket::new(ts, frame.len() as u32, frame);
                let _ = w.write_packet(&p);
            }
        }
    }
}

fn load_pcap(path: &Path) -> Result<Vec<Vec<u8>>, ReplayIoError> {
    let f = File::open(path).map_err(|source| ReplayIoError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let read = |source| ReplayIoError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut r = pcap_file::pcap::PcapReader::new(std::io::BufReader::new(f)).map_err(read)?;
    let link = r.header().datalink;
    if link != pcap_file::DataLink::ETHERNET {
        return Err(ReplayIoError::LinkType {
            path: path.to_path_buf(),
            link,
        });
    }
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.map_err(read)?;
        if p.data.len() > REPLAY_FRAME {
            return Err(ReplayIoError::TooLong {
                path: path.to_path_buf(),
                index: out.len(),
                len: p.data.len(),
                max: REPLAY_FRAME,
            });
        }
        out.push(p.data.into_owned());
    }
    Ok(out)
}

impl PacketIo for ReplayIo {
    fn bind(&mut self, tables: &Arc<Tables>) {
        self.fold_tx();
        self.input_index = self
            .input_ifaces
            .iter()
            .map(|n| tables.iface_index(n).unwrap_or(IfIndex::MAX))
            .collect();
        self.egress_names = tables.ifaces.iter().map(|i| i.name.clone()).collect();
        self.tx_by_index = vec![TxCount::default(); self.egress_names.len()];
    }

    fn burst(
        &mut self,
        now: u64,
        process: &mut dyn FnMut(&mut [Packet<'_>], &mut [Outcome]),
    ) -> usize {
        if self.finished() {
            return 0;
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        let mut budget = BURST;
        if let Some(rate) = self.rate {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            budget = budget.min(due.saturating_sub(self.received) as usize);
        }
        let mut n = 0;
        let mut ifaces = [IfIndex::MAX; BURST];
        while n < budget && !self.finished() {
            let (input, f) = &self.frames[self.pos];
            let buf = &mut self.bufs[n];
            buf[..f.len()].copy_from_slice(f);
            self.lens[n] = f.len();
            ifaces[n] = self.input_index[*input];
            if self.vary_ports && self.pass > 0 {
                if let Ok(Parsed::Ip(mut m)) = parse::parse(&buf[..f.len()]) {
                    let sport = m.sport.wrapping_add(self.pass as u16);
                    rewrite::set_port(&mut buf[..f.len()], &mut m, false, sport);
                }
            }
            n += 1;
            self.pos += 1;
            if self.pos == self.frames.len() {
                self.pos = 0;
                self.pass += 1;
            }
        }
        if n == 0 {
            return 0;
        }
        self.received += n as u64;
        let mut outs = [Outcome::default(); BURST];
        let mut lens = [0usize; BURST];
        {
            let mut pkts: [Packet<'_>; BURST] = std::array::from_fn(|_| Packet {
                data: Default::default(),
                iface: 0,
                ts: now,
                tag: 0,
            });
            for (i, (p, buf)) in pkts
                .iter_mut()
                .zip(self.bufs.iter_mut())
                .take(n)
                .enumerate()
            {
                p.data = &mut buf[..self.lens[i]];
                p.iface = ifaces[i];
            }
            process(&mut pkts[..n], &mut outs[..n]);
            for (l, p) in lens.iter_mut().zip(pkts.iter()).take(n) {
                *l = p.data.len();
            }
        }
        for i in 0..n {
            match outs[i].action {
                Action::Forward(e) => {
                    let len = lens[i];
                    let frame = std::mem::take(&mut self.bufs[i]);
                    self.transmit(e, &frame[..len]);
                    self.bufs[i] = frame;
                }
                Action::Pass => self.passed += 1,
                Action::Drop(_) | Action::Held => {}
            }
        }
        n
    }

    fn send(&mut self, egress: IfIndex, frame: &[u8]) {
        self.transmit(egress, frame);
    }

    fn finished(&self) -> bool {
        self.frames.is_empty() || self.loops.is_some_and(|n| self.pass >= n)
    }

    fn idle(&mut self, max: Duration) {
        let wait = match (self.rate, self.finished()) {
            (_, true) => max,
            (Some(rate), false) => max.min(Duration::from_secs_f64(1.0 / rate as f64)),
            (None, false) => Duration::ZERO,
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    fn stats(&self) -> IoStats {
        let mut tx = self.tx.clone();
        for (i, c) in self.tx_by_index.iter().enumerate() {
            if c.packets > 0 {
                let t = tx.entry(self.egress_names[i].clone()).or_default();
                t.packets += c.packets;
                t.bytes += c.bytes;
            }
        }
        IoStats {
            rx_packets: self.received,
            tx,
            passed: self.passed,
            finished: self.finished(),
            afxdp: None,
        }
    }

    fn finish(&mut self) {
        for (_, w) in std::mem::take(&mut self.writers) {
            let _ = w.into_writer().into_inner();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Publisher;
    use crossbeam::channel::bounded;
    use nodeplane_dataplane::MaglevCache;

    /// Three frames per burst; panics in the bursts listed in `panic_after` (after the
    /// pipeline ran) and `panic_before` (before it ran).
    struct FlakyIo {
        iface: IfIndex,
        bursts: u64,
        panic_after: Vec<u64>,
        panic_before: Vec<u64>,
        completed: u64,
    }

    impl PacketIo for FlakyIo {
        fn bind(&mut self, t: &Arc<Tables>) {
            self.iface = t.iface_index("pod-client").expect("pod-client");
        }
        fn burst(
            &mut self,
            now: u64,
            process: &mut dyn FnMut(&mut [Packet<'_>], &mut [Outcome]),
        ) -> usize {
            self.bursts += 1;
            assert!(
                !self.panic_before.contains(&self.bursts),
                "injected panic before burst {}",
                self.bursts
            );
            let mut bufs = [[0u8; 60]; 3];
            let mut outs = [Outcome::default(); 3];
            let mut pkts: Vec<Packet<'_>> = bufs
                .iter_mut()
                .map(|b| Packet {
                    data: &mut b[..],
                    iface: self.iface,
                    ts: now,
                    tag: 0,
                })
                .collect();
            process(&mut pkts, &mut outs);
            assert!(
                !self.panic_after.contains(&self.bursts),
                "injected panic in burst {}",
                self.bursts
            );
            self.completed += 1;
            3
        }
        fn send(&mut self, _: IfIndex, _: &[u8]) {}
        fn idle(&mut self, _: Duration) {}
        fn stats(&self) -> IoStats {
            IoStats::default()
        }
    }

    #[test]
    fn a_panic_in_a_burst_is_counted_and_the_worker_goes_on() {
        let s = nodeplane_state::example::state().unwrap();
        let p = Publisher::new(Arc::new(Tables::build(&s, 1, &mut MaglevCache::default())));
        let (_tx, rx) = bounded(1);
        let io = FlakyIo {
            iface: 0,
            bursts: 0,
            panic_after: vec![1, 4],
            panic_before: vec![3],
            completed: 0,
        };
        let mut w = Worker::new(
            0,
            p.subscribe(),
            io,
            rx,
            Arc::new(AtomicBool::new(false)),
            Clock::new(),
            RemovedFlowAction::Drop,
        );
        let taken: Vec<usize> = (0..5).map(|_| w.turn()).collect();
        // Bursts 1 and 4 panicked after taking 3 frames, burst 3 before taking any.
        assert_eq!(taken, [3, 3, 0, 3, 3]);
        let st = w.stats();
        assert_eq!((st.worker_panics, st.panic_dropped), (3, 6));
        assert_eq!(w.io().completed, 2, "bursts 2 and 5 completed");
        assert_eq!(st.packets, 12, "the pipeline saw every burst it was given");
        // The counters reach `nodeplane status` (JSON).
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["worker_panics"], 3);
    }
}
