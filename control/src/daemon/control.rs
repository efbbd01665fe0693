//! The control thread's state: the running state and tables, the workers, the status, and the
//! handling of source events and API requests. Everything here runs on the control thread
//! (no locks); workers are reached through their request channels only.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{bounded, Receiver, Sender};
use nodeplane_dataplane::flow::{fmt_socket, Addr};
use nodeplane_dataplane::{MaglevCache, Tables};
use nodeplane_state::{reserved, BackendState, PolicyMode, State};

use nodeplane_bgp::StopMode;

use super::bgp::Bgp;
use super::overrides::RuntimeOverrides;
use crate::api::server::Reply;
use crate::api::{
    BackendRow, CtFlushed, CtList, DeadWorker, IdentityRow, IpcacheEntry, PolicyModeSet,
    PolicyModeStatus, PolicyView, Rejection, Request, Response, ServiceRow, Status,
};
use crate::events::{EventFilter, EventHub, ObserveStarted};
use crate::runtime::backend::IoBackend;
use crate::runtime::neigh::{NeighbourReport, NeighbourStatus};
use crate::source::SourceEvent;
use nodeplane_dataplane::publish::Publisher;
use nodeplane_dataplane::worker::{
    panic_message, proto_name, Answer, Clock, CtFilter, PacketIo, Query, RemovedFlowAction,
    Request as WReq, SvcTraffic, Worker, WorkerStats,
};

/// How long the control thread waits for a worker to take and answer a request.
pub const WORKER_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_CT_LIMIT: usize = 10_000;
/// Queue depth of each worker's request channel.
const WORKER_QUEUE: usize = 16;

/// Time a state change may spend building Maglev tables before it is published (the rest are
/// built right after, in steps of `MAGLEV_STEP`, and published as the next generation).
const MAGLEV_BUDGET: Duration = Duration::from_millis(40);
const MAGLEV_STEP: Duration = Duration::from_millis(20);
/// How often a state whose packet I/O could not start is tried again.
const START_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct WorkerHandle {
    id: usize,
    tx: Sender<WReq>,
    /// `None` once the thread was joined: it died while running (see `check_workers`).
    /// The thread returns `None` when its start was called off (see `spawn_workers`).
    join: Option<JoinHandle<Option<WorkerStats>>>,
}

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
    /// Workers whose thread ended while the daemon runs (a panic the worker did not catch):
    /// their queues are not served. Shown by `nodeplane status` (state `unhealthy`).
    dead: Vec<DeadWorker>,
    /// Tests: the spawn of this worker fails (as `std::thread::Builder::spawn` can).
    #[cfg(test)]
    fail_spawn: Option<usize>,
    source: String,
    source_connected: bool,
    source_detail: String,
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

/// A mode name as `nodeplane policy mode` takes it: `Ok(None)` for `state` (no override).
fn parse_mode(mode: &str) -> Result<Option<PolicyMode>, &str> {
    match mode {
        "enforce" => Ok(Some(PolicyMode::Enforce)),
        "audit" => Ok(Some(PolicyMode::Audit)),
        "allow-all" => Ok(Some(PolicyMode::AllowAll)),
        "state" => Ok(None),
        other => Err(other),
    }
}

fn mode_name(m: PolicyMode) -> &'static str {
    match m {
        PolicyMode::Enforce => "enforce",
        PolicyMode::Audit => "audit",
        PolicyMode::AllowAll => "allow-all",
    }
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
            clock,
            started: Instant::now(),
            workers_wanted: workers,
            io,
            io_started: false,
            overrides: RuntimeOverrides::default(),
            neighbour: None,
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
            dead: Vec::new(),
            #[cfg(test)]
            fail_spawn: None,
            source,
            source_connected: true,
            source_detail: String::new(),
            origin: None,
            applied_at: None,
            last_publish_ms: None,
            publications: 0,
            rejections: 0,
            last_rejection: None,
            stale: false,
            bgp: None,
        }
    }

    /// The flow-event hub (the daemon starts its fan-out thread).
    pub fn events(&self) -> &Arc<EventHub> {
        &self.events
    }

    /// A connection the server handed over after an `observe` answer: it becomes a
    /// subscriber served on its own thread.
    pub fn attach_observer(
        &mut self,
        ticket: u64,
        stream: Option<(std::os::unix::net::UnixStream, Vec<u8>)>,
    ) {
        let filter = self.observers_pending.remove(&ticket);
        match (filter, stream) {
            (Some(f), Some((s, pending))) => {
                self.events.attach(ticket, f, s, pending, self.stop.clone())
            }
            (Some(_), None) => self.events.release(),
            (None, _) => {}
        }
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

    /// Retries a state whose I/O could not start (called by the event loop once a second).
    pub fn retry_start(&mut self) {
        if self
            .start_pending
            .as_ref()
            .is_some_and(|(_, _, at)| at.elapsed() >= START_RETRY)
        {
            if let Some((state, origin, _)) = self.start_pending.take() {
                log::info!("retrying the start of the packet I/O with the state from {origin}");
                self.apply(state, origin);
            }
        }
    }

    /// Frees the snapshots the workers switched away from (on this thread, not theirs).
    pub fn reap(&mut self) {
        if let Some(p) = &self.publisher {
            p.reap();
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn on_source(&mut self, ev: SourceEvent) {
        match ev {
            SourceEvent::Snapshot { state, origin } => self.apply(*state, origin),
            SourceEvent::Rejected { origin, error } => self.reject(origin, error),
            SourceEvent::Health { connected, detail } => {
                if connected != self.source_connected {
                    if connected {
                        log::info!("state source {} connected: {detail}", self.source);
                    } else {
                        log::error!(
                            "state source {} DISCONNECTED: {detail}; forwarding continues on generation {}",
                            self.source, self.generation
                        );
                    }
                }
                self.source_connected = connected;
                self.source_detail = detail;
            }
        }
    }

    fn reject(&mut self, origin: String, error: String) {
        self.rejections += 1;
        self.stale = true;
        log::error!(
            "REJECTED new state from {origin}; keeping generation {} (last good state): {error}",
            self.generation
        );
        self.last_rejection = Some(Rejection {
            origin,
            error,
            at: unix_now(),
        });
    }

    /// Validates a state whole, compiles it and publishes it; or rejects it.
    pub fn apply(&mut self, state: State, origin: String) {
        if let Err(e) = nodeplane_state::validate(&state) {
            self.reject(origin, e.to_string());
            return;
        }
        if let Err(e) = self.io.admit(&state) {
            self.reject(origin, e);
            return;
        }
        let t0 = Instant::now();
        self.start_pending = None;
        if let Err(e) = self.publish_generation(&state, &origin) {
            if !self.io_started {
                // Nothing runs yet: the same state is retried, so the node starts forwarding
                // once the cause (a missing interface, a busy queue) is gone.
                self.start_pending = Some((state, origin.clone(), Instant::now()));
            }
            self.reject(origin, e);
            return;
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        log::info!(
            "published generation {} from {origin}: {} services, {} endpoints, {} ipcache entries in {ms:.1} ms",
            self.generation,
            state.services.len(),
            state.endpoints.len(),
            state.ipcache.len()
        );
        if let Some(b) = &mut self.bgp {
            b.on_state(&state);
        }
        self.state = Some(Arc::new(state));
        self.origin = Some(origin);
        self.applied_at = Some(unix_now());
        self.last_publish_ms = Some(ms);
        self.stale = false;
    }

    /// Compiles `state` with the runtime overrides into the next generation, lets the I/O
    /// prepare it (start it and its workers, the first time), and publishes it. On error
    /// nothing changed: in particular a first start whose workers cannot all be started is
    /// undone whole (the I/O stopped: no steering toward sockets that nobody serves).
    fn publish_generation(&mut self, state: &State, origin: &str) -> Result<(), String> {
        let t0 = Instant::now();
        let generation = self.generation + 1;
        let effective = self.overrides.apply(state);
        // Maglev tables not built within the budget are finished by `step_completion`, so a
        // large change reaches the workers quickly (see `MaglevCache`).
        let tables = Arc::new(Tables::build_within(
            &effective,
            generation,
            &mut self.cache,
            Some(t0 + MAGLEV_BUDGET),
        ));
        if self.io_started {
            self.io.prepare(&tables)?;
            self.events.set_tables(&tables);
            if let Some(p) = &self.publisher {
                p.publish(Arc::clone(&tables));
            }
        } else {
            let ios = self.io.start(&tables, self.workers_wanted)?;
            let p = Publisher::new(Arc::clone(&tables));
            if self.mode_override.is_some() {
                p.set_policy_mode(self.mode_override);
            }
            self.events.set_tables(&tables);
            match self.spawn_workers(&p, ios) {
                Ok(workers) => {
                    self.workers = workers;
                    self.publisher = Some(p);
                    self.io_started = true;
                }
                Err(e) => {
                    self.io.stop();
                    return Err(e);
                }
            }
        }
        self.completing = tables.maglev_pending > 0;
        if self.completing {
            log::info!(
                "generation {generation}: {} Maglev tables still to build; their services hash modulo their backends until then",
                tables.maglev_pending
            );
        }
        self.note_uplink_mac(&tables);
        self.cache.prune();
        self.generation = generation;
        self.publications += 1;
        log::debug!("generation {generation} published ({origin})");
        Ok(())
    }

    /// Records which uplink gateway MAC the tables carry and where it came from.
    fn note_uplink_mac(&mut self, t: &Tables) {
        if let Some(n) = self.neighbour.as_mut() {
            let mac = t
                .uplink()
                .and_then(|u| t.ifaces[usize::from(u)].gateway_mac);
            n.mac = mac.map(|m| nodeplane_state::MacAddr(m).to_string());
            n.source = match (mac, self.overrides.uplink_gateway_mac) {
                (Some(_), Some(_)) => "kernel",
                (Some(_), None) => "state",
                (None, _) => "none",
            }
            .into();
        }
    }

    /// A reading of the neighbour watcher: a changed gateway MAC becomes a new generation of
    /// the running state (never of a rejected one).
    pub fn on_neighbour(&mut self, r: NeighbourReport) {
        let mut status = r.status;
        if let Some(old) = &self.neighbour {
            status.mac = old.mac.clone();
            status.source = old.source.clone();
        }
        self.neighbour = Some(status);
        if r.mac == self.overrides.uplink_gateway_mac {
            return;
        }
        self.overrides.uplink_gateway_mac = r.mac;
        let Some(state) = self.state.clone() else {
            return;
        };
        match self.publish_generation(&state, "neighbour") {
            Ok(()) => log::info!(
                "published generation {}: uplink gateway MAC {}",
                self.generation,
                self.neighbour
                    .as_ref()
                    .and_then(|n| n.mac.clone())
                    .unwrap_or_else(|| "none (uplink-bound packets drop no-neighbor)".into())
            ),
            Err(e) => log::error!("gateway MAC change not published: {e}"),
        }
    }

    /// Whether Maglev tables of the running state are still being built.
    pub fn completing(&self) -> bool {
        self.completing
    }

    /// Builds pending Maglev tables for a short slice of time; when all are built, publishes
    /// the complete tables as the next generation. Called by the event loop between events, so
    /// the control socket stays responsive during a long build.
    pub fn step_completion(&mut self) {
        if !self.completing {
            return;
        }
        let Some(state) = self.state.clone() else {
            self.completing = false;
            return;
        };
        if self.cache.fill(&state, Instant::now() + MAGLEV_STEP) > 0 {
            return;
        }
        let generation = self.generation + 1;
        let effective = self.overrides.apply(&state);
        let tables = Arc::new(Tables::build(&effective, generation, &mut self.cache));
        // The steering of this state is in force already; an error here is logged, and the
        // complete tables are published anyway (they steer the same destinations).
        if let Err(e) = self.io.prepare(&tables) {
            log::error!("generation {generation}: {e}");
        }
        self.note_uplink_mac(&tables);
        self.events.set_tables(&tables);
        if let Some(p) = &self.publisher {
            p.publish(tables);
        }
        self.cache.prune();
        self.generation = generation;
        self.completing = false;
        self.publications += 1;
        log::info!("published generation {generation}: every Maglev table built");
    }

    /// Starts one thread per worker I/O, all or none: each thread waits for a go before it
    /// runs, so when one cannot be spawned the others are called off (they drop their I/O,
    /// closing its sockets) and joined, and the error is returned.
    fn spawn_workers(
        &mut self,
        p: &Publisher,
        ios: Vec<Box<dyn PacketIo>>,
    ) -> Result<Vec<WorkerHandle>, String> {
        let mut started: Vec<(WorkerHandle, Sender<()>)> = Vec::new();
        let mut failed = None;
        // A start that failed before registered queues nobody fills.
        self.events.clear_queues();
        for (i, io) in ios.into_iter().enumerate() {
            let (tx, rx) = bounded(WORKER_QUEUE);
            let w = Worker::new(
                i,
                p.subscribe(),
                io,
                rx,
                self.stop.clone(),
                self.clock,
                self.removed,
            )
            .with_events(self.events.tap());
            let (go_tx, go_rx): (Sender<()>, Receiver<()>) = bounded(1);
            let body = move || go_rx.recv().ok().map(|()| w.run());
            #[cfg(test)]
            let spawned = if self.fail_spawn == Some(i) {
                Err(std::io::Error::other("injected spawn failure"))
            } else {
                std::thread::Builder::new()
                    .name(format!("np-worker-{i}"))
                    .spawn(body)
            };
            #[cfg(not(test))]
            let spawned = std::thread::Builder::new()
                .name(format!("np-worker-{i}"))
                .spawn(body);
            match spawned {
                Ok(join) => started.push((
                    WorkerHandle {
                        id: i,
                        tx,
                        join: Some(join),
                    },
                    go_tx,
                )),
                Err(e) => {
                    failed = Some(format!("cannot start worker thread {i}: {e}"));
                    break;
                }
            }
        }
        if let Some(e) = failed {
            for (h, go) in started {
                drop(go);
                if let Some(j) = h.join {
                    let _ = j.join();
                }
            }
            log::error!("{e}; the packet I/O is stopped and the start retried");
            return Err(e);
        }
        let mut workers = Vec::with_capacity(started.len());
        for (h, go) in started {
            let _ = go.send(());
            workers.push(h);
        }
        log::info!(
            "started {} worker(s) on {} I/O",
            workers.len(),
            self.io.kind()
        );
        Ok(workers)
    }

    /// Notices worker threads that ended while the daemon runs (a panic outside what a
    /// worker catches itself): logs each once, at error level, and marks the node unhealthy.
    /// Called by the event loop once a second and before every status answer.
    pub fn check_workers(&mut self) {
        if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut died = Vec::new();
        for w in &mut self.workers {
            if !w.join.as_ref().is_some_and(|j| j.is_finished()) {
                continue;
            }
            let Some(j) = w.join.take() else { continue };
            let reason = match j.join() {
                Ok(_) => "its thread exited".to_string(),
                Err(p) => format!("panicked: {}", panic_message(p.as_ref())),
            };
            log::error!(
                "worker {} DIED ({reason}): its queues are not served until nodeplane is restarted",
                w.id
            );
            self.dead.push(DeadWorker {
                worker: w.id,
                reason,
            });
            died.push(w.id);
        }
        for id in died {
            self.io.worker_died(id);
        }
    }

    /// Workers that died while the daemon ran.
    pub fn dead_workers(&self) -> &[DeadWorker] {
        &self.dead
    }

    /// Waits for the workers to stop (the stop flag is set by the caller), then stops the
    /// I/O (AF_XDP: XDP detached). A worker that panicked on its way out is logged and added
    /// to [`Control::dead_workers`].
    pub fn join_workers(&mut self) -> Vec<WorkerStats> {
        let t0 = Instant::now();
        let mut stats = Vec::new();
        for w in self.workers.drain(..) {
            drop(w.tx);
            let Some(j) = w.join else { continue };
            match j.join() {
                Ok(Some(s)) => stats.push(s),
                Ok(None) => {}
                Err(p) => {
                    let reason = format!("panicked: {}", panic_message(p.as_ref()));
                    log::error!("worker {} {reason}", w.id);
                    self.dead.push(DeadWorker {
                        worker: w.id,
                        reason,
                    });
                }
            }
        }
        let t1 = Instant::now();
        self.io.stop();
        log::info!(
            "workers stopped in {} ms, {} I/O stopped in {} ms",
            (t1 - t0).as_millis(),
            self.io.kind(),
            t1.elapsed().as_millis()
        );
        stats
    }

    /// Asks every worker; returns the answers that came in time.
    fn ask(&self, make: impl Fn() -> Query) -> Result<Vec<Answer>, String> {
        let mut pending = Vec::new();
        // Dead workers take no requests (`nodeplane status` lists them apart).
        for w in self.workers.iter().filter(|w| w.join.is_some()) {
            let i = w.id;
            let (rtx, rrx) = bounded(1);
            w.tx.send_timeout(
                WReq {
                    query: make(),
                    reply: rtx,
                },
                WORKER_TIMEOUT,
            )
            .map_err(|_| format!("worker {i} does not take requests"))?;
            pending.push((i, rrx));
        }
        let mut out = Vec::new();
        for (i, rrx) in pending {
            match rrx.recv_timeout(WORKER_TIMEOUT) {
                Ok(Answer::Error(e)) => return Err(e),
                Ok(a) => out.push(a),
                Err(_) => return Err(format!("worker {i} did not answer in time")),
            }
        }
        Ok(out)
    }

    /// Handles one request line.
    pub fn handle_line(&mut self, line: &str) -> Response {
        let req: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => return Response::err(format!("malformed request: {e}")),
        };
        self.handle(req)
    }

    /// Handles one request line of the control socket: `observe` hands the connection over
    /// (it becomes an event stream), every other request is answered by [`Control::handle`].
    pub fn serve_line(&mut self, line: &str) -> Reply {
        let req: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => return Reply::Line(Response::err(format!("malformed request: {e}"))),
        };
        let Request::Observe { filter } = req else {
            return Reply::Line(self.handle(req));
        };
        if let Err(e) = filter.check() {
            return Reply::Line(Response::err(e));
        }
        let ticket = match self.events.reserve() {
            Ok(t) => t,
            Err(e) => return Reply::Line(Response::err(e)),
        };
        self.observers_pending.insert(ticket, filter);
        Reply::HandOff(
            Response::ok(ObserveStarted {
                subscriber: ticket,
                workers: self.events.workers(),
                queue: nodeplane_dataplane::events::EVENT_QUEUE,
            }),
            ticket,
        )
    }

    pub fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Status {} => {
                self.check_workers();
                Response::ok(self.status())
            }
            Request::PolicyMode { mode } => self.set_mode(&mode),
            Request::CtList {
                filter,
                limit,
                count_only,
            } => self.ct_list(filter, limit, count_only),
            Request::CtFlush { filter } => self.ct_flush(filter),
            Request::Observe { .. } => {
                Response::err("observe streams events: send it on its own connection")
            }
            Request::BgpStatus {} => match &self.bgp {
                Some(b) => Response::ok(b.status()),
                None => Response::err(
                    "BGP is not configured: the daemon's config has no `bgp:` section",
                ),
            },
            req => {
                let (Some(state), Some(p)) = (self.state.clone(), self.publisher.clone()) else {
                    return Response::err(
                        "no valid state has been loaded yet (see `nodeplane status`)",
                    );
                };
                let tables = p.current();
                match req {
                    Request::ServiceList {} => {
                        let traffic = Self::service_traffic(&self.worker_stats());
                        Response::ok(service_rows(&tables, &traffic))
                    }
                    Request::BackendList {} => self.backend_rows(&tables),
                    Request::IpcacheGet { ip } => ipcache_get(&tables, &ip),
                    Request::IdentityList {} => Response::ok(identity_rows(&state)),
                    Request::PolicyGet { endpoint } => {
                        let mode = self.mode_status();
                        policy_get(&state, &endpoint, mode)
                    }
                    Request::Explain(e) => {
                        let answers = self.ask_explain(&e, &tables);
                        match answers {
                            Ok(x) => Response::ok(x),
                            Err(msg) => Response::err(msg),
                        }
                    }
                    _ => Response::err("unreachable request kind"),
                }
            }
        }
    }

    fn ask_explain(
        &self,
        e: &crate::api::ExplainRequest,
        tables: &Tables,
    ) -> Result<crate::api::Explanation, String> {
        let pkt = crate::explain::synthesize(e, tables)?;
        if self.workers.is_empty() {
            return Err("no worker is running".into());
        }
        let answers = self.ask(|| Query::Explain {
            frame: pkt.frame.clone(),
            iface: e.iface.clone(),
            keys: vec![pkt.key],
        })?;
        let mut found = None;
        let mut first = None;
        for (i, a) in answers.into_iter().enumerate() {
            if let Answer::Explained(x) = a {
                if x.flow.is_some() && found.is_none() {
                    found = Some((i, x));
                } else if first.is_none() {
                    first = Some((i, x));
                }
            }
        }
        let (worker, x) = found.or(first).ok_or("no worker answered")?;
        let state = self.state.clone().ok_or("no state")?;
        Ok(crate::explain::compose(e, &pkt, worker, &x, &state))
    }

    fn mode_status(&self) -> PolicyModeStatus {
        let state_mode = self
            .state
            .as_ref()
            .map(|s| s.node.policy_mode)
            .unwrap_or_default();
        PolicyModeStatus {
            state: mode_name(state_mode).into(),
            r#override: self.mode_override.map(|m| mode_name(m).to_string()),
            effective: mode_name(self.mode_override.unwrap_or(state_mode)).into(),
        }
    }

    /// Keeps the operator's policy-mode override in `path` from now on, and restores one kept
    /// there by a previous run: an emergency `allow-all` must survive a daemon restart or
    /// upgrade (the daemon keeps it beside its control socket, on /run by default, so a reboot
    /// clears it). A file that does not hold a mode is reported and ignored.
    pub fn keep_mode_at(&mut self, path: std::path::PathBuf) {
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse_mode(text.trim()) {
                Ok(Some(m)) => {
                    log::warn!(
                        "policy mode override {} restored from {} (set by the operator before a restart; `nodeplane policy mode state` clears it)",
                        mode_name(m),
                        path.display()
                    );
                    self.mode_override = Some(m);
                }
                _ => log::error!(
                    "{}: not a policy mode override ({:?}); ignored",
                    path.display(),
                    text.trim()
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::error!("cannot read {}: {e}; no override restored", path.display()),
        }
        self.mode_file = Some(path);
    }

    fn save_mode(&self) {
        let Some(path) = &self.mode_file else { return };
        let r = match self.mode_override {
            Some(m) => {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, format!("{}\n", mode_name(m)))
                    .and_then(|()| std::fs::rename(&tmp, path))
            }
            None => match std::fs::remove_file(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
        };
        if let Err(e) = r {
            log::error!(
                "cannot keep the policy mode override in {}: {e} (it holds until this daemon stops)",
                path.display()
            );
        }
    }

    fn set_mode(&mut self, mode: &str) -> Response {
        let m = match parse_mode(mode) {
            Ok(m) => m,
            Err(other) => {
                return Response::err(format!(
                    "unknown policy mode {other:?} (enforce, audit, allow-all, or state to drop the override)"
                ))
            }
        };
        self.mode_override = m;
        self.save_mode();
        if let Some(p) = &self.publisher {
            p.set_policy_mode(m);
        }
        match m {
            Some(m) => log::warn!(
                "policy mode override set to {} by the operator",
                mode_name(m)
            ),
            None => log::warn!("policy mode override cleared by the operator"),
        }
        Response::ok(PolicyModeSet {
            mode: self.mode_status(),
        })
    }

    /// Per-service traffic summed over the workers' counters.
    fn service_traffic(workers: &[WorkerStats]) -> BTreeMap<String, SvcTraffic> {
        let mut all: BTreeMap<String, SvcTraffic> = BTreeMap::new();
        for w in workers {
            if let Some(c) = &w.services {
                for (name, t) in c.by_name() {
                    all.entry(name).or_default().add(&t);
                }
            }
        }
        all
    }

    fn worker_stats(&self) -> Vec<WorkerStats> {
        match self.ask(|| Query::Stats) {
            Ok(a) => a
                .into_iter()
                .filter_map(|a| match a {
                    Answer::Stats(s) => Some(*s),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                log::warn!("status: {e}");
                Vec::new()
            }
        }
    }

    pub fn status(&self) -> Status {
        let workers = self.worker_stats();
        let service_traffic = Self::service_traffic(&workers);
        let s = self.state.as_deref();
        Status {
            node: s.map(|s| s.node.name.clone()).unwrap_or_default(),
            state: if !self.dead.is_empty() {
                "unhealthy"
            } else if s.is_none() {
                "waiting"
            } else if self.stale {
                "stale"
            } else {
                "ok"
            }
            .into(),
            generation: self.generation,
            state_origin: self.origin.clone(),
            applied_at: self.applied_at,
            last_publish_ms: self.last_publish_ms,
            publications: self.publications,
            rejections: self.rejections,
            last_rejection: self.last_rejection.clone(),
            source: self.source.clone(),
            source_connected: self.source_connected,
            source_detail: self.source_detail.clone(),
            policy_mode: self.mode_status(),
            removed_flow_action: match self.removed {
                RemovedFlowAction::Drop => "drop",
                RemovedFlowAction::Rst => "rst",
            }
            .into(),
            services: s.map(|s| s.services.len()).unwrap_or(0),
            endpoints: s.map(|s| s.endpoints.len()).unwrap_or(0),
            ipcache_entries: s.map(|s| s.ipcache.len()).unwrap_or(0),
            uptime_s: self.started.elapsed().as_secs(),
            workers,
            dead_workers: self.dead.clone(),
            io: Some({
                let mut io = self.io.status();
                io.neighbour = self.neighbour.clone();
                io
            }),
            bgp: self.bgp.as_ref().map(Bgp::summary),
            service_traffic,
            event_observers: self.events.observers(),
        }
    }

    fn ct_list(&self, filter: CtFilter, limit: Option<usize>, count_only: bool) -> Response {
        if let Err(e) = filter.check() {
            return Response::err(e);
        }
        let limit = if count_only {
            0
        } else {
            limit.unwrap_or(DEFAULT_CT_LIMIT)
        };
        match self.ask(|| Query::CtList {
            filter: filter.clone(),
            limit,
        }) {
            Ok(answers) => {
                let mut out = CtList {
                    matched: 0,
                    rows: Vec::new(),
                    truncated: false,
                };
                for a in answers {
                    if let Answer::Ct { rows, matched } = a {
                        out.matched += matched;
                        out.rows.extend(rows);
                    }
                }
                out.rows.truncate(limit);
                out.truncated = out.rows.len() < out.matched && !count_only;
                Response::ok(out)
            }
            Err(e) => Response::err(e),
        }
    }

    fn ct_flush(&self, filter: CtFilter) -> Response {
        if let Err(e) = filter.check() {
            return Response::err(e);
        }
        match self.ask(|| Query::CtFlush {
            filter: filter.clone(),
        }) {
            Ok(answers) => {
                let flushed = answers
                    .into_iter()
                    .map(|a| match a {
                        Answer::Flushed(n) => n,
                        _ => 0,
                    })
                    .sum();
                log::warn!("conntrack flush by the operator: {flushed} flows removed");
                Response::ok(CtFlushed { flushed })
            }
            Err(e) => Response::err(e),
        }
    }

    fn backend_rows(&self, t: &Tables) -> Response {
        // Live flows per backend, from every worker's conntrack.
        let mut flows: BTreeMap<(Addr, u16), usize> = BTreeMap::new();
        if let Ok(answers) = self.ask(|| Query::CtList {
            filter: CtFilter::default(),
            limit: usize::MAX,
        }) {
            for a in answers {
                if let Answer::Ct { rows, .. } = a {
                    for r in rows {
                        if let (Some(b), Some(p)) = (&r.backend, r.backend_port) {
                            if let Ok(ip) = b.parse::<IpAddr>() {
                                *flows.entry((Addr::from(ip), p)).or_default() += 1;
                            }
                        }
                    }
                }
            }
        }
        let mut rows = Vec::new();
        for s in &t.services {
            for b in &s.backends {
                rows.push(BackendRow {
                    service: s.name.clone(),
                    ip: b.addr.to_string(),
                    port: b.port,
                    weight: b.weight,
                    state: backend_state_name(b.state).into(),
                    flows: flows.get(&(b.addr, b.port)).copied().unwrap_or(0),
                });
            }
        }
        Response::ok(rows)
    }
}

pub fn backend_state_name(s: BackendState) -> &'static str {
    match s {
        BackendState::Active => "active",
        BackendState::Terminating => "terminating",
        BackendState::Quarantined => "quarantined",
    }
}

fn service_rows(t: &Tables, traffic: &BTreeMap<String, SvcTraffic>) -> Vec<ServiceRow> {
    let mut fronts: Vec<Vec<String>> = vec![Vec::new(); t.services.len()];
    let mut keys: Vec<_> = t.frontends.iter().collect();
    keys.sort_by_key(|(k, _)| (k.addr, k.port, k.proto));
    for (k, idx) in keys {
        if let Some(f) = fronts.get_mut(*idx as usize) {
            f.push(format!(
                "{}/{}",
                fmt_socket(k.addr, k.port),
                proto_name(k.proto)
            ));
        }
    }
    t.services
        .iter()
        .zip(fronts)
        .map(|(s, frontends)| {
            let count = |st| s.backends.iter().filter(|b| b.state == st).count();
            ServiceRow {
                name: s.name.clone(),
                kind: format!("{:?}", s.kind),
                frontends,
                algorithm: format!("{:?}", s.algorithm).to_lowercase(),
                affinity_s: s.affinity_ns.map(|n| n / 1_000_000_000),
                backends: s.backends.len(),
                active: count(BackendState::Active),
                terminating: count(BackendState::Terminating),
                quarantined: count(BackendState::Quarantined),
                traffic: traffic.get(&s.name).copied().unwrap_or_default(),
            }
        })
        .collect()
}

/// The identity of an address and where it comes from (shared with `explain`).
pub fn identity_source(t: &Tables, a: &Addr) -> (u32, Option<String>, String) {
    if let Some(ep) = t.endpoint_of(a) {
        let e = &t.endpoints[ep as usize];
        let len = if a.v6 { 128 } else { 32 };
        return (
            e.identity,
            Some(format!("{a}/{len}")),
            format!("endpoint {}", e.name),
        );
    }
    match t.ipcache.lookup(a) {
        Some((id, len)) => {
            let src = if id == reserved::HOST && t.is_node_ip(a) {
                "node".to_string()
            } else {
                "ipcache".to_string()
            };
            (id, Some(format!("{}/{len}", a.masked(len))), src)
        }
        None => (reserved::WORLD, None, "world".into()),
    }
}

fn ipcache_get(t: &Tables, ip: &str) -> Response {
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return Response::err(format!("{ip:?} is not an IP address"));
    };
    let a = Addr::from(addr);
    let (identity, prefix, source) = identity_source(t, &a);
    Response::ok(IpcacheEntry {
        ip: addr.to_string(),
        identity,
        prefix,
        source,
    })
}

fn identity_rows(s: &State) -> Vec<IdentityRow> {
    let mut by_id: BTreeMap<u32, (String, Vec<String>)> = BTreeMap::new();
    by_id.insert(
        reserved::HOST,
        (
            "reserved:host".into(),
            s.node.node_ips.iter().map(|ip| ip.to_string()).collect(),
        ),
    );
    by_id.insert(
        reserved::WORLD,
        (
            "reserved:world".into(),
            vec!["0.0.0.0/0".into(), "::/0".into()],
        ),
    );
    for e in &s.endpoints {
        let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let member = if labels.is_empty() {
            e.name.clone()
        } else {
            format!("{} ({})", e.name, labels.join(","))
        };
        let entry = by_id
            .entry(e.identity)
            .or_insert_with(|| ("endpoint".into(), Vec::new()));
        entry.1.push(member);
    }
    for c in &s.ipcache {
        let entry = by_id
            .entry(c.identity)
            .or_insert_with(|| ("ipcache".into(), Vec::new()));
        entry.1.push(c.prefix.to_string());
    }
    by_id
        .into_iter()
        .map(|(identity, (kind, members))| IdentityRow {
            identity,
            cluster: identity >> 24,
            kind,
            members,
        })
        .collect()
}

fn policy_get(s: &State, endpoint: &str, mode: PolicyModeStatus) -> Response {
    let Some(ep) = s.endpoints.iter().find(|e| e.name == endpoint) else {
        let known: Vec<&str> = s.endpoints.iter().map(|e| e.name.as_str()).collect();
        return Response::err(format!(
            "no local endpoint {endpoint:?} (known: {})",
            known.join(", ")
        ));
    };
    let p = s.policies.iter().find(|p| p.endpoint == endpoint);
    let ingress = p.map(|p| p.ingress.clone()).unwrap_or_default();
    let egress = p.map(|p| p.egress.clone()).unwrap_or_default();
    let default = |r: &Vec<nodeplane_state::Rule>| {
        if r.is_empty() {
            "default-allow"
        } else {
            "default-deny"
        }
        .to_string()
    };
    Response::ok(PolicyView {
        endpoint: ep.name.clone(),
        identity: ep.identity,
        ips: ep.ips.iter().map(|i| i.to_string()).collect(),
        mode,
        ingress_default: default(&ingress),
        egress_default: default(&egress),
        ingress,
        egress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    /// What the control thread asked of the I/O, and switches to make it fail.
    #[derive(Debug, Default)]
    struct Calls {
        started: usize,
        stopped: usize,
        prepared: Vec<u64>,
        fail_prepare: bool,
        veto: Option<String>,
        /// The I/O of this worker panics when its thread starts (outside the turn's catch).
        die: Option<usize>,
        /// `worker_died` calls.
        died: Vec<usize>,
    }

    /// Panics on its worker's thread before the loop: the thread dies.
    struct DyingIo;

    impl PacketIo for DyingIo {
        fn start(&mut self) {
            panic!("injected: the I/O cannot start");
        }
        fn bind(&mut self, _: &Arc<Tables>) {}
        fn burst(
            &mut self,
            _: u64,
            _: &mut dyn FnMut(
                &mut [nodeplane_dataplane::Packet<'_>],
                &mut [nodeplane_dataplane::Outcome],
            ),
        ) -> usize {
            0
        }
        fn send(&mut self, _: u16, _: &[u8]) {}
        fn idle(&mut self, _: Duration) {}
        fn stats(&self) -> nodeplane_dataplane::worker::IoStats {
            nodeplane_dataplane::worker::IoStats::default()
        }
    }

    struct TestBackend(Arc<Mutex<Calls>>);

    impl IoBackend for TestBackend {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn admit(&self, _: &State) -> Result<(), String> {
            match &self.0.lock().unwrap().veto {
                Some(v) => Err(v.clone()),
                None => Ok(()),
            }
        }
        fn start(
            &mut self,
            _: &Arc<Tables>,
            workers: usize,
        ) -> Result<Vec<Box<dyn PacketIo>>, String> {
            let mut c = self.0.lock().unwrap();
            c.started += 1;
            Ok((0..workers)
                .map(|i| {
                    if c.die == Some(i) {
                        Box::new(DyingIo) as Box<dyn PacketIo>
                    } else {
                        Box::new(super::super::NullIo) as Box<dyn PacketIo>
                    }
                })
                .collect())
        }
        fn stop(&mut self) {
            self.0.lock().unwrap().stopped += 1;
        }
        fn worker_died(&mut self, worker: usize) {
            self.0.lock().unwrap().died.push(worker);
        }
        fn prepare(&mut self, t: &Tables) -> Result<(), String> {
            let mut c = self.0.lock().unwrap();
            if c.fail_prepare {
                return Err("steering maps full".into());
            }
            c.prepared.push(t.generation);
            Ok(())
        }
    }

    fn uplink_mac(c: &Control) -> Option<[u8; 6]> {
        let t = c.publisher.as_ref().unwrap().current();
        t.uplink()
            .and_then(|u| t.ifaces[usize::from(u)].gateway_mac)
    }

    fn report(mac: Option<[u8; 6]>) -> NeighbourReport {
        NeighbourReport {
            mac,
            status: NeighbourStatus {
                uplink: Some("uplink0".into()),
                lookups: 1,
                ..NeighbourStatus::default()
            },
        }
    }

    #[test]
    fn overrides_io_veto_and_steering_errors() {
        let calls = Arc::new(Mutex::new(Calls::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut c = Control::new(
            "test".into(),
            1,
            Box::new(TestBackend(calls.clone())),
            RemovedFlowAction::Drop,
            stop.clone(),
        );
        let state = nodeplane_state::example::state().unwrap();
        let static_mac = state
            .interfaces
            .iter()
            .find_map(|i| i.gateway_mac)
            .map(|m| m.0);
        c.apply(state.clone(), "s1".into());
        assert_eq!(c.generation(), 1);
        assert_eq!(calls.lock().unwrap().started, 1, "I/O started once");
        assert_eq!(uplink_mac(&c), static_mac, "no kernel MAC yet: the state's");

        // The kernel resolved the gateway: a new generation carries its MAC.
        let k = [2, 0, 0, 0, 0, 0xfe];
        c.on_neighbour(report(Some(k)));
        assert_eq!(c.generation(), 2);
        assert_eq!(uplink_mac(&c), Some(k));
        let n = c.status().io.unwrap().neighbour.unwrap();
        assert_eq!((n.source.as_str(), n.lookups), ("kernel", 1));
        // The same MAC again: nothing to publish.
        c.on_neighbour(report(Some(k)));
        assert_eq!(c.generation(), 2);
        assert_eq!(
            calls.lock().unwrap().prepared,
            vec![2],
            "steering re-applied"
        );
        // A new source state keeps the kernel's MAC.
        c.apply(state.clone(), "s2".into());
        assert_eq!((c.generation(), uplink_mac(&c)), (3, Some(k)));
        // The I/O vetoes a state (interfaces changed): rejected whole, last good kept.
        calls.lock().unwrap().veto = Some("interfaces changed".into());
        c.apply(state.clone(), "s3".into());
        assert_eq!(c.generation(), 3);
        let st = c.status();
        assert_eq!(st.state, "stale");
        assert!(st
            .last_rejection
            .unwrap()
            .error
            .contains("interfaces changed"));
        calls.lock().unwrap().veto = None;
        // Steering cannot be applied: rejected, nothing published.
        calls.lock().unwrap().fail_prepare = true;
        c.apply(state.clone(), "s4".into());
        assert_eq!(c.generation(), 3);
        assert!(c
            .status()
            .last_rejection
            .unwrap()
            .error
            .contains("steering"));
        calls.lock().unwrap().fail_prepare = false;
        // The kernel lost the entry: back to the state's static MAC.
        c.on_neighbour(report(None));
        assert_eq!((c.generation(), uplink_mac(&c)), (4, static_mac));
        assert_eq!(c.status().io.unwrap().neighbour.unwrap().source, "state");
        assert_eq!(calls.lock().unwrap().started, 1, "never restarted");

        stop.store(true, Ordering::Relaxed);
        assert_eq!(c.join_workers().len(), 1);
    }

    fn control(calls: &Arc<Mutex<Calls>>, workers: usize) -> (Control, Arc<AtomicBool>) {
        let stop = Arc::new(AtomicBool::new(false));
        let c = Control::new(
            "test".into(),
            workers,
            Box::new(TestBackend(calls.clone())),
            RemovedFlowAction::Drop,
            stop.clone(),
        );
        (c, stop)
    }

    #[test]
    fn a_worker_that_cannot_be_spawned_undoes_the_start() {
        let calls = Arc::new(Mutex::new(Calls::default()));
        let (mut c, stop) = control(&calls, 3);
        c.fail_spawn = Some(2);
        let state = nodeplane_state::example::state().unwrap();
        c.apply(state.clone(), "s1".into());
        // Workers 0 and 1 were spawned and called off; the I/O was stopped (AF_XDP: XDP
        // detached, so no queue is steered to a socket nobody serves); nothing published.
        assert_eq!(c.generation(), 0);
        assert!(c.workers.is_empty() && c.publisher.is_none());
        let c1 = calls.lock().unwrap();
        assert_eq!((c1.started, c1.stopped), (1, 1));
        drop(c1);
        let st = c.status();
        assert_eq!(st.state, "waiting");
        assert!(st
            .last_rejection
            .unwrap()
            .error
            .contains("cannot start worker thread 2"));
        // The start is retried with the same state and then succeeds.
        c.fail_spawn = None;
        assert!(c.start_pending.is_some());
        c.start_pending.as_mut().unwrap().2 -= START_RETRY;
        c.retry_start();
        assert_eq!(c.generation(), 1);
        assert_eq!(calls.lock().unwrap().started, 2);
        assert_eq!(c.status().workers.len(), 3);
        stop.store(true, Ordering::Relaxed);
        assert_eq!(c.join_workers().len(), 3);
        assert_eq!(calls.lock().unwrap().stopped, 2);
    }

    #[test]
    fn a_worker_thread_that_died_makes_the_node_unhealthy() {
        let calls = Arc::new(Mutex::new(Calls {
            die: Some(1),
            ..Calls::default()
        }));
        let (mut c, stop) = control(&calls, 2);
        c.apply(nodeplane_state::example::state().unwrap(), "s1".into());
        assert_eq!(c.generation(), 1);
        // The status request notices the dead thread (the event loop also checks every second).
        let t0 = Instant::now();
        let st = loop {
            let Response { ok, result, error } = c.handle(Request::Status {});
            assert!(ok, "{error:?}");
            let st: Status = serde_json::from_value(result.unwrap()).unwrap();
            if !st.dead_workers.is_empty() || t0.elapsed() > Duration::from_secs(5) {
                break st;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(st.state, "unhealthy");
        assert_eq!(st.dead_workers.len(), 1);
        assert_eq!(st.dead_workers[0].worker, 1);
        assert!(
            st.dead_workers[0]
                .reason
                .contains("injected: the I/O cannot start"),
            "{:?}",
            st.dead_workers
        );
        // The live worker still answers.
        assert_eq!(st.workers.len(), 1);
        assert_eq!(st.workers[0].worker, 0);
        assert_eq!(
            calls.lock().unwrap().died,
            vec![1],
            "the I/O was told once (AF_XDP: drop its queues' traffic)"
        );
        stop.store(true, Ordering::Relaxed);
        assert_eq!(c.join_workers().len(), 1);
        assert_eq!(c.dead_workers().len(), 1, "listed once");
        assert_eq!(calls.lock().unwrap().died, vec![1], "not again at stop");
    }
}
