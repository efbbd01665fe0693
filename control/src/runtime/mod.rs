//! The AF_XDP runtime: the XDP program on the node's interfaces, one pinned worker thread per
//! queue set running the pipeline over its AF_XDP sockets, and the control side that feeds
//! them tables (state, the uplink gateway's MAC from the kernel) and steering.
//!
//! ```text
//!   control thread (Runtime)                       worker w (pinned to core w)
//!   ────────────────────────                       ───────────────────────────
//!   state ─> effective state ─> Tables::build      loop {
//!     (uplink gateway_mac from the kernel's          version moved? take tables (Arc clone)
//!      neighbour table, refreshed)                   io.burst: rx ≤ 64 ─ owner? ─ pipeline ─ tx
//!   ─> Feed::publish (Arc swap + version)            pipeline.drain (released fragments)
//!   ─> SteeringConfig ─> Loader::apply               every 1 s: full GC; 100 ms: stats copy
//!                                                    idle: io.idle (kick, poll ≤ 1-2 ms)
//!   stop flag (SIGTERM) ──────────────────────────>  }
//! ```
//!
//! Workers own queues: worker `w` binds queue `q` of every interface where `q % workers == w`,
//! so every queue has exactly one socket (a queue without one would fall back to the kernel
//! and bypass the dataplane). With more than one worker, frames whose flow another worker owns
//! are handed off (see [`owner`] and [`io`]; why in docs/runtime.md).

pub mod io;
pub mod neigh;
pub mod owner;
pub mod steering;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nodeplane_dataplane::{Action, DropReason, MaglevCache, Pipeline, Tables};
use nodeplane_state::{InterfaceRole, MacAddr, State};
use nodeplane_xdp::{Loader, XskBinding, XskConfig, XskWorker};
use serde::Serialize;

use self::io::{AfXdpIo, Handoff, IoCounters};

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Worker threads (each owns the queues `q % workers == w` of every interface).
    pub workers: usize,
    /// Pin worker `w` to core `w % cores`.
    pub pin: bool,
    pub xsk: XskConfig,
    /// How often the uplink gateway's neighbour entry is read (and re-triggered).
    pub neigh_refresh: Duration,
    /// Hand-off queue depth per worker.
    pub handoff_depth: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 1,
            pin: true,
            xsk: XskConfig::default(),
            neigh_refresh: Duration::from_secs(2),
            handoff_depth: 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid runtime setting: {0}")]
    Config(String),
    #[error("state rejected: {0}")]
    State(String),
    #[error("interface {iface}: {reason}")]
    Interface { iface: String, reason: String },
    #[error(transparent)]
    Load(#[from] nodeplane_xdp::LoadError),
    #[error(transparent)]
    Attach(#[from] nodeplane_xdp::AttachError),
    #[error(transparent)]
    Steering(#[from] nodeplane_xdp::SteeringError),
    #[error("worker {worker}: {source}")]
    Xsk {
        worker: usize,
        #[source]
        source: nodeplane_xdp::XskError,
    },
    #[error(transparent)]
    Register(#[from] nodeplane_xdp::XskRegisterError),
    #[error("cannot start worker thread {worker}: {source}")]
    Spawn {
        worker: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Table publication to the workers: an `Arc` swapped under a mutex held for a pointer swap,
/// and a version a worker checks with one atomic load per burst.
#[derive(Debug)]
pub struct Feed {
    version: AtomicU64,
    slot: Mutex<Arc<Tables>>,
}

impl Feed {
    pub fn new(t: Arc<Tables>) -> Arc<Feed> {
        Arc::new(Feed {
            version: AtomicU64::new(1),
            slot: Mutex::new(t),
        })
    }
    pub fn publish(&self, t: Arc<Tables>) {
        let old = std::mem::replace(&mut *self.slot.lock().unwrap_or_else(|p| p.into_inner()), t);
        // Pairs with the Acquire load in `poll`: a worker seeing the new version finds the new
        // tables (or newer) in the slot.
        self.version.fetch_add(1, Ordering::Release);
        drop(old);
    }
    pub fn current(&self) -> Arc<Tables> {
        Arc::clone(&self.slot.lock().unwrap_or_else(|p| p.into_inner()))
    }
    fn poll(&self, seen: &mut u64) -> Option<Arc<Tables>> {
        let v = self.version.load(Ordering::Acquire);
        if v == *seen {
            return None;
        }
        *seen = v;
        Some(self.current())
    }
}

/// One worker's counters as the control side sees them (copied every 100 ms).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerSnapshot {
    pub worker: usize,
    pub core: Option<usize>,
    pub generation: u64,
    pub packets: u64,
    pub forwarded: u64,
    pub passed: u64,
    pub dropped: u64,
    pub held: u64,
    /// Drop reason name → count (non-zero only).
    pub drops: std::collections::BTreeMap<String, u64>,
    pub ct_entries: usize,
    pub io: IoCounters,
    /// Frame accounting of the UMEM at the last check (`ok` or the error).
    pub accounting: String,
}

/// What the control side knows about the uplink's next hop.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NeighbourStatus {
    pub uplink: Option<String>,
    pub gateway: Option<IpAddr>,
    /// The MAC in the published tables (kernel's, else the state's static value).
    pub mac: Option<String>,
    /// Where `mac` came from: `kernel`, `state` or `none`.
    pub source: String,
    pub kernel_state: u16,
    pub lookups: u64,
    pub lookup_errors: u64,
    pub triggers: u64,
    pub unresolved: u64,
}

/// Everything `nodeplane run-xdp` reports (stats file, exit summary).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuntimeStats {
    pub generation: u64,
    pub workers: Vec<WorkerSnapshot>,
    pub neighbour: NeighbourStatus,
    /// XDP program counters (name → value).
    pub xdp: std::collections::BTreeMap<String, u64>,
    pub attached: Vec<String>,
}

/// The running AF_XDP dataplane. Dropping it stops the workers and detaches XDP.
#[derive(Debug)]
pub struct Runtime {
    cfg: RuntimeConfig,
    loader: Option<Loader>,
    feed: Arc<Feed>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    snapshots: Vec<Arc<Mutex<WorkerSnapshot>>>,
    state: State,
    generation: u64,
    cache: MaglevCache,
    neighbour: NeighbourStatus,
    uplink_ifindex: Option<u32>,
    kernel_mac: Option<[u8; 6]>,
    last_neigh: Option<Instant>,
    ifaces: Vec<String>,
}

fn if_index(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// RX queues of an interface (from sysfs of the calling process's network namespace).
fn rx_queues(iface: &str) -> Result<u32, RuntimeError> {
    let dir = format!("/sys/class/net/{iface}/queues");
    let rd = std::fs::read_dir(&dir).map_err(|e| RuntimeError::Interface {
        iface: iface.to_owned(),
        reason: format!("cannot read {dir}: {e}"),
    })?;
    let n = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count() as u32;
    Ok(n.max(1))
}

/// Addresses the kernel holds on the given interfaces (not link-local): traffic to them stays
/// with the kernel.
fn kernel_addrs(ifaces: &[String]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if !ifaces.contains(&a.interface_name) {
                continue;
            }
            let Some(sa) = a.address else { continue };
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            let link_local = match ip {
                IpAddr::V4(v) => v.is_link_local(),
                IpAddr::V6(v) => v.segments()[0] & 0xffc0 == 0xfe80,
            };
            if !link_local {
                out.push(ip);
            }
        }
    }
    out
}

impl Runtime {
    /// Attaches XDP to every interface of the state, starts the workers and publishes the
    /// state's tables (with the kernel's gateway MAC for the uplink when it has one).
    pub fn start(state: State, cfg: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        if cfg.workers == 0 || cfg.workers > 64 {
            return Err(RuntimeError::Config(format!(
                "workers: {} is not in 1..=64",
                cfg.workers
            )));
        }
        nodeplane_state::validate(&state).map_err(|e| RuntimeError::State(e.to_string()))?;
        let ifaces: Vec<String> = state.interfaces.iter().map(|i| i.name.clone()).collect();
        let uplink = state
            .interfaces
            .iter()
            .find(|i| i.role == InterfaceRole::Uplink)
            .map(|i| i.name.clone());
        let uplink_ifindex = uplink.as_deref().and_then(if_index);
        let mut rt = Runtime {
            feed: Feed::new(Arc::new(Tables::build(
                &state,
                1,
                &mut MaglevCache::default(),
            ))),
            cfg,
            loader: None,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            snapshots: Vec::new(),
            state,
            generation: 0,
            cache: MaglevCache::default(),
            neighbour: NeighbourStatus {
                uplink,
                ..NeighbourStatus::default()
            },
            uplink_ifindex,
            kernel_mac: None,
            last_neigh: None,
            ifaces,
        };
        rt.refresh_neighbour(true);
        let tables = rt.build_tables();
        rt.feed.publish(Arc::clone(&tables));

        let mut loader = Loader::load()?;
        let mut queues = Vec::new();
        for name in &rt.ifaces {
            if if_index(name).is_none() {
                return Err(RuntimeError::Interface {
                    iface: name.clone(),
                    reason: "no such interface in this network namespace".into(),
                });
            }
            let q = rx_queues(name)?;
            if (q as usize) < rt.cfg.workers {
                return Err(RuntimeError::Interface {
                    iface: name.clone(),
                    reason: format!(
                        "has {q} RX queues, fewer than the {} workers (each worker owns whole queues)",
                        rt.cfg.workers
                    ),
                });
            }
            loader.attach(name, q)?;
            queues.push(q);
        }
        Self::apply_steering(&mut loader, &tables, &rt.ifaces)?;

        let workers = rt.cfg.workers;
        let handoff = Handoff::new(workers, rt.cfg.handoff_depth);
        let cores = if rt.cfg.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut ios = Vec::new();
        for w in 0..workers {
            let bindings: Vec<XskBinding<'_>> = rt
                .ifaces
                .iter()
                .zip(&queues)
                .flat_map(|(iface, &q)| {
                    (0..q)
                        .filter(move |q| *q as usize % workers == w)
                        .map(move |queue| XskBinding { iface, queue })
                })
                .collect();
            let xsk = XskWorker::new(&rt.cfg.xsk, &bindings)
                .map_err(|source| RuntimeError::Xsk { worker: w, source })?;
            loader.register_worker(&xsk)?;
            ios.push(AfXdpIo::new(w, workers, xsk, Arc::clone(&handoff)));
        }
        rt.loader = Some(loader);
        for (w, io) in ios.into_iter().enumerate() {
            let core = (!cores.is_empty()).then(|| cores[w % cores.len()]);
            let snap = Arc::new(Mutex::new(WorkerSnapshot {
                worker: w,
                core: core.map(|c| c.id),
                ..WorkerSnapshot::default()
            }));
            rt.snapshots.push(Arc::clone(&snap));
            let (feed, stop) = (Arc::clone(&rt.feed), Arc::clone(&rt.stop));
            let h = std::thread::Builder::new()
                .name(format!("np-worker-{w}"))
                .spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    run_worker(w, io, &feed, &stop, &snap);
                })
                .map_err(|source| RuntimeError::Spawn { worker: w, source })?;
            rt.threads.push(h);
        }
        Ok(rt)
    }

    fn apply_steering(
        loader: &mut Loader,
        t: &Tables,
        ifaces: &[String],
    ) -> Result<(), RuntimeError> {
        let (cfg, missing) = steering::steering_config(t, if_index, &kernel_addrs(ifaces));
        if let Some(m) = missing.first() {
            return Err(RuntimeError::Interface {
                iface: m.clone(),
                reason: "pod interface of the state does not exist".into(),
            });
        }
        loader.apply(&cfg)?;
        Ok(())
    }

    /// The state with the uplink's gateway MAC from the kernel (when it has one).
    fn effective_state(&self) -> State {
        let mut s = self.state.clone();
        if let Some(mac) = self.kernel_mac {
            for i in &mut s.interfaces {
                if i.role == InterfaceRole::Uplink {
                    i.gateway_mac = Some(MacAddr(mac));
                }
            }
        }
        s
    }

    fn build_tables(&mut self) -> Arc<Tables> {
        self.generation += 1;
        let s = self.effective_state();
        let t = Arc::new(Tables::build(&s, self.generation, &mut self.cache));
        self.cache.prune();
        let up = t.uplink().map(|u| &t.ifaces[usize::from(u)]);
        let mac = up.and_then(|u| u.gateway_mac);
        self.neighbour.mac = mac.map(|m| MacAddr(m).to_string());
        self.neighbour.source = match (mac, self.kernel_mac) {
            (Some(_), Some(_)) => "kernel",
            (Some(_), None) => "state",
            (None, _) => "none",
        }
        .into();
        t
    }

    /// Replaces the desired state (a SIGHUP reload, a new snapshot): validated whole, then
    /// tables and steering are updated. On error nothing changes.
    pub fn set_state(&mut self, state: State) -> Result<(), RuntimeError> {
        nodeplane_state::validate(&state).map_err(|e| RuntimeError::State(e.to_string()))?;
        let names: Vec<String> = state.interfaces.iter().map(|i| i.name.clone()).collect();
        if names != self.ifaces {
            return Err(RuntimeError::State(format!(
                "the interfaces changed ({} → {}); restart to attach to new interfaces",
                self.ifaces.join(","),
                names.join(",")
            )));
        }
        let old = std::mem::replace(&mut self.state, state);
        let t = self.build_tables();
        if let Some(loader) = self.loader.as_mut() {
            if let Err(e) = Self::apply_steering(loader, &t, &self.ifaces) {
                self.state = old;
                return Err(e);
            }
        }
        self.feed.publish(t);
        Ok(())
    }

    /// Reads the kernel's neighbour entry for the uplink gateway (at most every
    /// `neigh_refresh`), triggers resolution when needed, and publishes new tables when the MAC
    /// changed. Call periodically from the control loop.
    pub fn tick(&mut self) {
        if self.refresh_neighbour(false) {
            let t = self.build_tables();
            self.feed.publish(t);
        }
    }

    /// Returns whether the kernel MAC changed.
    fn refresh_neighbour(&mut self, force: bool) -> bool {
        if !force
            && self
                .last_neigh
                .is_some_and(|t| t.elapsed() < self.cfg.neigh_refresh)
        {
            return false;
        }
        self.last_neigh = Some(Instant::now());
        let Some(up) = self.uplink_ifindex else {
            return false;
        };
        self.neighbour.lookups += 1;
        let st = match neigh::query_gateway(up) {
            Ok(st) => st,
            Err(e) => {
                self.neighbour.lookup_errors += 1;
                log::warn!("neighbour lookup for the uplink gateway failed: {e}");
                return false;
            }
        };
        self.neighbour.gateway = st.gateway;
        self.neighbour.kernel_state = st.state;
        if st.mac.is_none() {
            self.neighbour.unresolved += 1;
        }
        if st.needs_trigger() {
            if let Some(gw) = st.gateway {
                self.neighbour.triggers += 1;
                if let Err(e) = neigh::trigger_resolution(gw) {
                    log::debug!("resolution trigger toward {gw} failed: {e}");
                }
            }
        }
        // A failed or missing entry keeps the last known kernel MAC out: the state's static
        // value (if any) applies, else uplink traffic drops `no-neighbor`.
        let changed = st.mac != self.kernel_mac;
        if changed {
            log::info!(
                "uplink gateway {:?}: MAC {} (kernel state {:#x})",
                st.gateway,
                st.mac
                    .map(|m| MacAddr(m).to_string())
                    .unwrap_or_else(|| "unresolved".into()),
                st.state
            );
        }
        self.kernel_mac = st.mac;
        changed
    }

    /// The tables the workers run now.
    pub fn tables(&self) -> Arc<Tables> {
        self.feed.current()
    }

    pub fn stats(&self) -> RuntimeStats {
        let workers = self
            .snapshots
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        let mut xdp = std::collections::BTreeMap::new();
        let mut attached = Vec::new();
        if let Some(l) = &self.loader {
            if let Ok(c) = l.counters() {
                for (k, v) in c.iter() {
                    xdp.insert(k.name().to_string(), v);
                }
            }
            attached = l
                .attached()
                .into_iter()
                .map(|a| format!("{} ({}, {} queues)", a.iface, a.mode, a.queues))
                .collect();
        }
        RuntimeStats {
            generation: self.generation,
            workers,
            neighbour: self.neighbour.clone(),
            xdp,
            attached,
        }
    }

    /// Stops the workers (each exits within one idle wait), closes the sockets and detaches
    /// XDP. Returns the final counters.
    pub fn stop(mut self) -> RuntimeStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            if h.join().is_err() {
                log::error!("a worker thread panicked");
            }
        }
        // Sockets are closed by the workers' exit; dropping the loader detaches XDP.
        if let Some(l) = self.loader.take() {
            drop(l);
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

const FULL_GC_EVERY: Duration = Duration::from_secs(1);
const SNAPSHOT_EVERY: Duration = Duration::from_millis(100);

/// Monotonic nanoseconds, starting at 1 s so no timestamp is 0.
fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64 + 1_000_000_000
}

fn run_worker(
    id: usize,
    mut io: AfXdpIo,
    feed: &Feed,
    stop: &AtomicBool,
    snap: &Mutex<WorkerSnapshot>,
) {
    let mut seen = 0u64;
    let first = feed.current();
    let mut pipeline = Pipeline::new(Arc::clone(&first));
    io.bind(&first);
    let epoch = Instant::now();
    let mut last_gc = Instant::now();
    let mut last_snap = Instant::now();
    let _ = feed.poll(&mut seen);
    while !stop.load(Ordering::Relaxed) {
        if let Some(t) = feed.poll(&mut seen) {
            pipeline.set_tables(Arc::clone(&t));
            io.bind(&t);
        }
        let now = now_ns(epoch);
        let n = io.burst(now, &mut |p, o| pipeline.process_burst(p, o));
        pipeline.drain(now, |r| {
            if let Action::Forward(e) = r.outcome.action {
                io.send(e, r.data);
            }
        });
        if n == 0 {
            io.idle(Duration::from_millis(2));
        }
        if last_gc.elapsed() >= FULL_GC_EVERY {
            pipeline.gc(now_ns(epoch));
            last_gc = Instant::now();
        }
        if last_snap.elapsed() >= SNAPSHOT_EVERY {
            publish_snapshot(id, &pipeline, &mut io, snap, false);
            last_snap = Instant::now();
        }
    }
    publish_snapshot(id, &pipeline, &mut io, snap, true);
}

fn publish_snapshot(
    id: usize,
    p: &Pipeline,
    io: &mut AfXdpIo,
    snap: &Mutex<WorkerSnapshot>,
    check: bool,
) {
    let c = p.counters();
    let accounting = if check {
        match io.check_accounting() {
            Ok(()) => "ok".to_string(),
            Err(e) => e,
        }
    } else {
        String::new()
    };
    let mut s = snap.lock().unwrap_or_else(|e| e.into_inner());
    s.worker = id;
    s.generation = p.tables().generation;
    s.packets = c.packets;
    s.forwarded = c.forwarded;
    s.passed = c.passed;
    s.dropped = c.dropped;
    s.held = c.held;
    s.drops = DropReason::ALL
        .iter()
        .filter(|r| c.drops[**r as usize] > 0)
        .map(|r| (r.name().to_string(), c.drops[*r as usize]))
        .collect();
    s.ct_entries = p.conntrack().len();
    s.io = io.counters().clone();
    if check {
        s.accounting = accounting;
    }
}
