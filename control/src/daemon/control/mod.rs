//! The control thread's state: the running state and tables, the workers, the status, and the
//! handling of source events and API requests. Everything here runs on the control thread
//! (no locks); workers are reached through their request channels only.
//!
//! One job per module: `apply` takes a new state (validation, compilation, publication of a
//! generation, the neighbour watcher's MAC, Maglev completion), `workers` starts, supervises,
//! asks and joins the worker threads, `policy_mode` is the operator's emergency allow-all /
//! audit override, `snapshot` saves and restores the workers' flows across a restart, `handlers`
//! answers the control socket's requests.

mod apply;
mod handlers;
mod policy_mode;
mod snapshot;
mod workers;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nodeplane_dataplane::MaglevCache;
use nodeplane_state::{PolicyMode, State};

use nodeplane_bgp::StopMode;

use super::bgp::Bgp;
use super::overrides::RuntimeOverrides;
use crate::api::{DeadWorker, Rejection};
use crate::events::{EventFilter, EventHub};
use crate::runtime::backend::IoBackend;
use crate::runtime::neigh::NeighbourStatus;
use nodeplane_dataplane::publish::Publisher;
use nodeplane_dataplane::worker::{Clock, RemovedFlowAction};
use workers::WorkerHandle;

pub use handlers::{backend_state_name, identity_source};
pub use workers::WORKER_TIMEOUT;

pub struct Control {
    clock: Clock,
    started: Instant,
    workers_wanted: usize,
    io: Box<dyn IoBackend>,
    /// Whether `io.start` succeeded (the workers' I/O exists).
    io_started: bool,
    /// Inputs the control thread merges into the source's state before compiling it (the
    /// uplink gateway's MAC from the kernel).
    overrides: RuntimeOverrides,
    /// The neighbour watcher's last report (AF_XDP).
    neighbour: Option<NeighbourStatus>,
    /// The uplink gateway MAC the published tables carry and where it came from (`kernel`,
    /// `state`, `none`): shown with the watcher's report.
    uplink_mac: (Option<String>, &'static str),
    /// A valid state whose I/O could not start (e.g. an interface not there yet), retried
    /// every `START_RETRY` until the I/O starts or a newer state arrives.
    start_pending: Option<(State, String, Instant)>,
    removed: RemovedFlowAction,
    stop: Arc<AtomicBool>,
    cache: MaglevCache,
    /// Maglev tables of the running state are still being built (see `step_completion`).
    completing: bool,
    generation: u64,
    state: Option<Arc<State>>,
    publisher: Option<Publisher>,
    mode_override: Option<PolicyMode>,
    /// Where the override is kept across daemon restarts (see [`Control::keep_mode_at`]).
    mode_file: Option<std::path::PathBuf>,
    workers: Vec<WorkerHandle>,
    /// The conntrack snapshot file (config `conntrack_snapshot`; see `snapshot`).
    snapshot_path: Option<std::path::PathBuf>,
    /// A snapshot read at start, restored when the workers start.
    pending_restore: Option<nodeplane_dataplane::snapshot::Snapshot>,
    restore_report: Option<crate::api::CtRestore>,
    /// Workers whose thread ended while the daemon runs (a panic the worker did not catch):
    /// their queues are not served. Shown by `nodeplane status` (state `unhealthy`).
    dead: Vec<DeadWorker>,
    /// Tests: the spawn of this worker fails (as `std::thread::Builder::spawn` can).
    #[cfg(test)]
    fail_spawn: Option<usize>,
    source: String,
    source_connected: bool,
    source_detail: String,
    /// `SourceEvent::Attempt`s and `SourceEvent::Synced`s since start.
    source_attempts: u64,
    source_syncs: u64,
    origin: Option<String>,
    applied_at: Option<u64>,
    last_publish_ms: Option<f64>,
    publications: u64,
    rejections: u64,
    last_rejection: Option<Rejection>,
    /// The last change was rejected (cleared by the next good one).
    stale: bool,
    /// The BGP speaker (config `bgp:`), fed the routes of every accepted state.
    bgp: Option<Bgp>,
    /// Flow events: the workers' queues, the tables to name events, the subscribers.
    events: Arc<EventHub>,
    /// `observe` requests answered whose connection the server has yet to hand over.
    observers_pending: std::collections::HashMap<u64, EventFilter>,
    /// Health check node ports of `external_traffic_policy: Local` services.
    health: super::healthcheck::HealthChecks,
    /// `nodeplane capture`: the workers' capture rings, one capture at a time.
    capture: Arc<crate::capture::CaptureHub>,
    /// `capture` requests answered whose connection the server has yet to hand over.
    captures_pending: std::collections::HashMap<u64, crate::capture::CaptureSpec>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("generation", &self.generation)
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Control {
    pub fn new(
        source: String,
        workers: usize,
        io: Box<dyn IoBackend>,
        removed: RemovedFlowAction,
        stop: Arc<AtomicBool>,
    ) -> Control {
        let clock = Clock::new();
        Control {
            events: EventHub::new(clock),
            observers_pending: std::collections::HashMap::new(),
            capture: crate::capture::CaptureHub::new(clock),
            captures_pending: std::collections::HashMap::new(),
            clock,
            started: Instant::now(),
            workers_wanted: workers,
            io,
            io_started: false,
            overrides: RuntimeOverrides::default(),
            neighbour: None,
            uplink_mac: (None, "none"),
            start_pending: None,
            removed,
            stop,
            cache: MaglevCache::default(),
            completing: false,
            generation: 0,
            state: None,
            publisher: None,
            mode_override: None,
            mode_file: None,
            workers: Vec::new(),
            snapshot_path: None,
            pending_restore: None,
            restore_report: None,
            dead: Vec::new(),
            #[cfg(test)]
            fail_spawn: None,
            source,
            source_connected: true,
            source_detail: String::new(),
            source_attempts: 0,
            source_syncs: 0,
            origin: None,
            applied_at: None,
            last_publish_ms: None,
            publications: 0,
            rejections: 0,
            last_rejection: None,
            stale: false,
            bgp: None,
            health: super::healthcheck::HealthChecks::default(),
        }
    }

    /// The flow-event hub (the daemon starts its fan-out thread).
    pub fn events(&self) -> &Arc<EventHub> {
        &self.events
    }

    /// Runs a BGP speaker (started at the first accepted state; see `daemon::bgp`).
    pub fn set_bgp(&mut self, bgp: Bgp) {
        self.bgp = Some(bgp);
    }

    /// Once a second: BGP start retries and liveness.
    pub fn tick_bgp(&mut self) {
        if let Some(b) = &mut self.bgp {
            b.tick();
        }
    }

    /// Stops the BGP speaker (withdraw, or graceful restart); before the workers stop, so
    /// routers move traffic away while it is still forwarded.
    pub fn stop_bgp(&mut self, mode: StopMode) {
        if let Some(b) = &mut self.bgp {
            b.stop(mode);
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// One line for the service manager's status (`systemctl status`): what runs, or what the
    /// daemon waits for.
    pub fn summary(&self) -> String {
        if self.generation == 0 {
            let why = self
                .last_rejection
                .as_ref()
                .map(|r| {
                    let first = r.error.lines().next().unwrap_or_default();
                    format!(
                        ": last state rejected: {}",
                        first.chars().take(200).collect::<String>()
                    )
                })
                .unwrap_or_default();
            return format!(
                "waiting for the first valid state from {}{why}",
                self.source
            );
        }
        format!(
            "generation {} from {}{}{}",
            self.generation,
            self.origin.as_deref().unwrap_or("?"),
            if self.stale {
                "; the last change was REJECTED (nodeplane status)"
            } else {
                ""
            },
            if self.dead.is_empty() {
                String::new()
            } else {
                format!("; {} worker(s) DEAD", self.dead.len())
            }
        )
    }
}

#[cfg(test)]
mod tests;
