//! The AF_XDP packet I/O of the daemon (`io: { afxdp: ... }` in its config): the XDP program on
//! the node's interfaces, one AF_XDP socket per interface queue, worker I/O that the daemon's
//! workers ([`nodeplane_dataplane::worker::Worker`]) run the pipeline over, the steering maps re-derived from
//! every publication, and the uplink gateway's MAC watched in the kernel's neighbour table.
//!
//! ```text
//!   control thread (daemon event loop)                   worker w (pinned to core w % cores)
//!   ──────────────────────────────────                   ───────────────────────────────────
//!   source ─> validate ─> admit (same interfaces?)       Worker::turn (worker.rs) {
//!     ─> state + overrides (gateway MAC) ─> Tables         subscriber.poll: new tables?
//!     ─> AfXdpBackend::prepare: SteeringConfig             AfXdpIo::burst: rx ≤ 64 ─ owner? ─
//!          ─> Loader::apply (XDP maps)                       pipeline ─ tx (io.rs)
//!     ─> Publisher::publish ──────────────────────────>    drain, control requests, GC
//!   neighbour watcher thread ─(report + Waker)─> overrides   idle: kick rings, poll ≤ 1-2 ms }
//! ```
//!
//! Worker `w` binds an AF_XDP socket on queue `q` of **every** interface where
//! `q % workers == w` (all of a worker's sockets share one UMEM, so forwarding moves a
//! descriptor, no copy). Every queue has exactly one socket: a queue without one would make the
//! XDP program fall back to the kernel, which would forward the pod's traffic itself and bypass
//! policy. With more than one worker, frames whose flow another worker owns are handed off (see
//! [`owner`] and [`io`]; why in docs/runtime.md).
//!
//! The interfaces are fixed when the backend starts (the first published state): a later state
//! with other interfaces is rejected whole (sockets and UMEMs cannot be added to a running
//! worker); restart to attach to new interfaces.

pub mod backend;
pub mod host;
pub mod neigh;
pub mod steering;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nodeplane_dataplane::afxdp::{AfXdpIo, XskBinding, XskConfig, XskWorker};
use nodeplane_dataplane::handoff::Handoff;
use nodeplane_dataplane::worker::PacketIo;
use nodeplane_dataplane::Tables;
use nodeplane_state::{InterfaceRole, State};
use nodeplane_xdp::Loader;
use serde::Deserialize;

use self::backend::{IoBackend, IoStatus};
use self::neigh::NeighbourReport;
pub use self::neigh::NeighbourStatus;

/// `io.afxdp` of the daemon's config (docs/config.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AfXdpConfig {
    /// Worker threads (the daemon's `workers`; either key may set it, not both differently).
    pub workers: Option<usize>,
    /// Pin worker `w` to core `w % cores`.
    pub pin: bool,
    /// Size of every AF_XDP ring (power of two).
    pub ring_size: u32,
    /// UMEM frames per socket (at least `ring_size`).
    pub frames_per_socket: u32,
    /// UMEM frame size, 2048 or 4096 bytes: the largest frame received is `frame_size - 256`
    /// (4096 for interface MTUs above 1778, up to veth's XDP limit of 3506 without frags).
    pub frame_size: u32,
    /// Seconds between reads of the uplink gateway's neighbour entry.
    pub neigh_refresh: f64,
    /// Hand-off queue depth per worker (frames).
    pub handoff_depth: usize,
    /// What the XDP program does with steered traffic that finds no socket: the queues of a
    /// dead worker, and everything while no daemon runs (stopped, crashed, restarting) when
    /// the program is pinned. `dead_worker` is the key's former name.
    #[serde(alias = "dead_worker")]
    pub no_socket: NoSocketAction,
    /// bpffs directory where the XDP links are pinned, so that the program stays attached
    /// (doing `no_socket`) while no daemon runs and the next daemon takes it over in place.
    /// `null`: not pinned, the program goes with the process (the kernel then forwards
    /// steered traffic without policy while no daemon runs).
    pub pin_dir: Option<PathBuf>,
    /// Microseconds a worker keeps polling its rings after the last frame before it sleeps
    /// in `poll()` (0: sleep at once).
    pub busy_poll_us: u32,
}

/// `io.afxdp.no_socket`: steered traffic without a socket to take it (a worker that ended;
/// no daemon running while the program is pinned; the start before the sockets are bound).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoSocketAction {
    /// The XDP program drops it (`drop_no_socket`): fail closed, nothing crosses the node
    /// without policy; NodePort clients see silence (and retransmit), not a reset.
    #[default]
    Drop,
    /// The XDP program passes it to the kernel (`pass_no_socket`), which forwards pod traffic
    /// by its own routes: without policy and without service NAT (fail open).
    Pass,
}

/// The former name of [`NoSocketAction`] (`io.afxdp.dead_worker`).
pub type DeadWorkerAction = NoSocketAction;

/// Default `io.afxdp.pin_dir`.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/nodeplane";

impl Default for AfXdpConfig {
    fn default() -> Self {
        AfXdpConfig {
            workers: None,
            pin: true,
            ring_size: 2048,
            frames_per_socket: 4096,
            frame_size: 2048,
            neigh_refresh: 2.0,
            handoff_depth: 1024,
            no_socket: NoSocketAction::Drop,
            pin_dir: Some(PathBuf::from(DEFAULT_PIN_DIR)),
            busy_poll_us: 50,
        }
    }
}

impl AfXdpConfig {
    /// Checks the values (the config loader reports the error with the field).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !self.ring_size.is_power_of_two() || !(64..=16384).contains(&self.ring_size) {
            return Err((
                "io.afxdp.ring_size",
                format!("{} is not a power of two in 64..=16384", self.ring_size),
            ));
        }
        if self.frames_per_socket < self.ring_size {
            return Err((
                "io.afxdp.frames_per_socket",
                format!(
                    "{} cannot fill a ring of {}",
                    self.frames_per_socket, self.ring_size
                ),
            ));
        }
        if self.frame_size != 2048 && self.frame_size != 4096 {
            return Err((
                "io.afxdp.frame_size",
                format!("{} is not 2048 or 4096", self.frame_size),
            ));
        }
        if !(0.1..=3600.0).contains(&self.neigh_refresh) {
            return Err((
                "io.afxdp.neigh_refresh",
                format!("{} is not in 0.1..=3600 seconds", self.neigh_refresh),
            ));
        }
        if self.busy_poll_us > 100_000 {
            return Err((
                "io.afxdp.busy_poll_us",
                format!("{} is not in 0..=100000 µs", self.busy_poll_us),
            ));
        }
        if !(1..=65536).contains(&self.handoff_depth) {
            return Err((
                "io.afxdp.handoff_depth",
                format!("{} is not in 1..=65536", self.handoff_depth),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid AF_XDP setting: {0}")]
    Config(String),
    #[error("interface {iface}: {reason}")]
    Interface { iface: String, reason: String },
    #[error(transparent)]
    Load(#[from] nodeplane_xdp::LoadError),
    #[error(transparent)]
    Attach(#[from] nodeplane_xdp::AttachError),
    #[error("XDP steering maps: {0}")]
    Steering(#[from] nodeplane_xdp::SteeringError),
    #[error("worker {worker}: {source}")]
    Xsk {
        worker: usize,
        #[source]
        source: nodeplane_dataplane::afxdp::XskError,
    },
    #[error(transparent)]
    Register(#[from] nodeplane_xdp::XskRegisterError),
    #[error("cannot start the neighbour watcher: {0}")]
    Spawn(#[source] std::io::Error),
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

fn uplink_of(state_ifaces: impl IntoIterator<Item = (String, InterfaceRole)>) -> Option<String> {
    state_ifaces
        .into_iter()
        .find(|(_, r)| *r == InterfaceRole::Uplink)
        .map(|(n, _)| n)
}

/// Where the neighbour watcher's reports go (the daemon: a channel plus its event loop's
/// waker).
pub type NeighbourSink = Box<dyn FnMut(NeighbourReport) + Send>;

/// Calls the sink of a watcher (shared, so the backend keeps it across a failed or stopped
/// start; locked once per reading, by one thread at a time, never on the packet path).
fn deliver(sink: &Mutex<NeighbourSink>, r: NeighbourReport) {
    let mut s = sink
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (*s)(r);
}

/// The AF_XDP I/O backend: owns the XDP program (the [`Loader`]), creates the workers' sockets
/// when the first state is published, applies the steering of every publication, and runs
/// the neighbour watcher. Dropping it (after the workers stopped) detaches XDP.
pub struct AfXdpBackend {
    cfg: AfXdpConfig,
    loader: Option<Loader>,
    /// Interface names attached (fixed at start).
    ifaces: Vec<String>,
    uplink: Option<String>,
    /// Shared with the running watcher; never taken, so every start gets a watcher.
    sink: Arc<Mutex<NeighbourSink>>,
    watcher_stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
    /// The pin directory in effect (None: the program goes with the process).
    pinned: Option<PathBuf>,
    /// The host interface and the kernel routes and rules installed for it (host.rs).
    host: Option<(host::HostIface, host::Installed)>,
}

impl std::fmt::Debug for AfXdpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpBackend")
            .field("cfg", &self.cfg)
            .field("ifaces", &self.ifaces)
            .finish_non_exhaustive()
    }
}

impl AfXdpBackend {
    /// `sink` receives the neighbour watcher's reports (from its own thread).
    pub fn new(cfg: AfXdpConfig, sink: NeighbourSink) -> AfXdpBackend {
        AfXdpBackend {
            cfg,
            loader: None,
            ifaces: Vec::new(),
            uplink: None,
            sink: Arc::new(Mutex::new(sink)),
            watcher_stop: Arc::new(AtomicBool::new(false)),
            watcher: None,
            pinned: None,
            host: None,
        }
    }

    /// `io.afxdp.pin_dir`, made to exist on a bpffs. A pin directory that cannot be had is
    /// logged, and the program then goes with the process: forwarding does not depend on it.
    fn pin_dir(&self) -> Option<PathBuf> {
        let dir = self.cfg.pin_dir.clone()?;
        match nodeplane_xdp::pin::ensure_pin_dir(&dir) {
            Ok(mounted) => {
                if mounted {
                    log::info!(
                        "AF_XDP: mounted a bpffs at {} for the XDP pins",
                        nodeplane_xdp::pin::BPFFS_ROOT
                    );
                }
                Some(dir)
            }
            Err(e) => {
                log::error!(
                    "AF_XDP: XDP links NOT pinned ({e}): the program goes with this process, and \
                     while no daemon runs the node's kernel forwards steered traffic without \
                     policy or service NAT (io.afxdp.no_socket does not apply then)"
                );
                None
            }
        }
    }

    fn apply_steering(&mut self, t: &Tables) -> Result<(), RuntimeError> {
        let (cfg, missing) = steering::steering_config(t, if_index, &kernel_addrs(&self.ifaces));
        if let Some(m) = missing.first() {
            return Err(RuntimeError::Interface {
                iface: m.clone(),
                reason: "pod interface of the state does not exist".into(),
            });
        }
        if let Some(l) = self.loader.as_mut() {
            l.apply(&cfg)?;
        }
        if let Some((h, installed)) = self.host.as_mut() {
            let plan = host::plan(t, h, &kernel_addrs(&self.ifaces));
            installed
                .sync(&plan)
                .map_err(|e| RuntimeError::Config(format!("host interface routes: {e}")))?;
        }
        Ok(())
    }

    fn start_inner(
        &mut self,
        tables: &Arc<Tables>,
        workers: usize,
    ) -> Result<Vec<Box<dyn PacketIo>>, RuntimeError> {
        if workers == 0 || workers > 64 {
            return Err(RuntimeError::Config(format!(
                "workers: {workers} is not in 1..=64"
            )));
        }
        let ifaces: Vec<String> = tables.ifaces.iter().map(|i| i.name.clone()).collect();
        let t0 = Instant::now();
        // Pinned: the program and maps of the previous daemon of this build are reused (no
        // load, no verifier; the program may be live: every step below is safe on it).
        self.pinned = self.pin_dir();
        let mut loader = match &self.pinned {
            Some(dir) => Loader::load_pinned(dir)?,
            None => Loader::load()?,
        };
        // Before anything can go live: what steered traffic without a socket gets (the start
        // until the sockets are registered, a dead worker, the time after this daemon).
        loader
            .set_no_socket_drop(self.cfg.no_socket == NoSocketAction::Drop)
            .map_err(|e| RuntimeError::Config(format!("XDP config map: {e}")))?;
        let t_load = t0.elapsed();
        if let Some(h) = host::host_iface(tables) {
            // The pair exists before the XDP program is attached to its nodeplane end.
            host::ensure_pair(&h, workers as u32).map_err(|reason| RuntimeError::Interface {
                iface: h.name.clone(),
                reason,
            })?;
        }
        let mut queues = Vec::new();
        for name in &ifaces {
            if if_index(name).is_none() {
                return Err(RuntimeError::Interface {
                    iface: name.clone(),
                    reason: "no such interface in this network namespace".into(),
                });
            }
            let q = rx_queues(name)?;
            if (q as usize) < workers {
                return Err(RuntimeError::Interface {
                    iface: name.clone(),
                    reason: format!(
                        "has {q} RX queues, fewer than the {workers} workers (each worker owns whole queues)"
                    ),
                });
            }
            loader.reserve(name, q)?;
            // Nothing to take over: attach at once, before the sockets are bound, as the
            // runtime always did (steered traffic does `no_socket` until they are registered).
            // Binding the sockets first and attaching after left a worker hung at about one
            // such start in 25 on the lab (veth), so that order is kept for takeovers only.
            if !loader.has_pinned_link(name) {
                loader.link(name)?;
            }
            queues.push(q);
        }
        self.ifaces = ifaces;
        self.loader = Some(loader);
        // On any error below the loader is dropped with `self.loader = None` by the caller,
        // which detaches what it attached and did not pin.
        self.apply_steering(tables)?;

        let t1 = Instant::now();
        let xsk_cfg = XskConfig {
            ring_size: self.cfg.ring_size,
            frames_per_socket: self.cfg.frames_per_socket,
            frame_size: self.cfg.frame_size,
            ..XskConfig::default()
        };
        let handoff = Handoff::new(workers, self.cfg.handoff_depth);
        let cores = if self.cfg.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        // One worker after the other: building two workers' sockets at the same time (libxdp,
        // on threads of their own) left a hung worker (`status: worker 0 did not answer in
        // time`) in about one lab start in four, for a reason not found yet; so it is not done.
        let mut ios: Vec<Box<dyn PacketIo>> = Vec::new();
        for w in 0..workers {
            let bindings: Vec<XskBinding<'_>> = self
                .ifaces
                .iter()
                .zip(&queues)
                .flat_map(|(iface, &q)| {
                    (0..q)
                        .filter(move |q| *q as usize % workers == w)
                        .map(move |queue| XskBinding { iface, queue })
                })
                .collect();
            let xsk = XskWorker::new(&xsk_cfg, &bindings)
                .map_err(|source| RuntimeError::Xsk { worker: w, source })?;
            if let Some(l) = self.loader.as_mut() {
                l.register_sockets(xsk.registrations())?;
            }
            let core = (!cores.is_empty()).then(|| cores[w % cores.len()]);
            ios.push(Box::new(
                AfXdpIo::new(w, workers, xsk, Arc::clone(&handoff), core)
                    .with_busy_poll(Duration::from_micros(u64::from(self.cfg.busy_poll_us))),
            ));
        }
        let t_sockets = t1.elapsed();

        // Pinned links of the previous daemon are taken over only now: the program that goes
        // live on them (a new build's) already holds every socket in its XSKMAP.
        let t2 = Instant::now();
        if let Some(l) = self.loader.as_mut() {
            for name in &self.ifaces {
                if !l.is_linked(name) {
                    l.link(name)?;
                }
            }
        }
        let t_link = t2.elapsed();
        if let Some(h) = host::host_iface(tables) {
            // Only now, with every socket bound, does the node's traffic go through the pair.
            let plan = host::plan(tables, &h, &kernel_addrs(&self.ifaces));
            let installed = host::Installed::start(&plan)
                .map_err(|e| RuntimeError::Config(format!("host interface routes: {e}")))?;
            log::info!(
                "host interface {} (peer {}): {} route(s), {} rule(s): the node's traffic to services, node ports and pods goes through nodeplane",
                h.name,
                h.peer,
                plan.routes.len(),
                plan.rules.len()
            );
            self.host = Some((h, installed));
        }
        if let Some(dir) = &self.pinned {
            let n = nodeplane_xdp::pin::remove_other_versions(dir, &nodeplane_xdp::object_tag());
            if n > 0 {
                log::info!("AF_XDP: removed {n} program/map pin(s) of an earlier build");
            }
        }
        let reused = self.loader.as_ref().is_some_and(Loader::reused);
        log::info!(
            "AF_XDP start: XDP program {} in {} ms, {} socket(s) of {workers} worker(s) bound and registered in {} ms, XDP linked in {} ms",
            if reused { "reused from its pin" } else { "loaded" },
            t_load.as_millis(),
            queues.iter().sum::<u32>(),
            t_sockets.as_millis(),
            t_link.as_millis(),
        );

        self.uplink = uplink_of(tables.ifaces.iter().map(|i| (i.name.clone(), i.role)));
        if let Some(up) = self.uplink.clone() {
            let ifindex = if_index(&up).ok_or_else(|| RuntimeError::Interface {
                iface: up.clone(),
                reason: "no such interface in this network namespace".into(),
            })?;
            let refresh = Duration::from_secs_f64(self.cfg.neigh_refresh);
            let stop = Arc::clone(&self.watcher_stop);
            let sink = Arc::clone(&self.sink);
            let h = std::thread::Builder::new()
                .name("np-neigh".into())
                .spawn(move || {
                    neigh::watch(up, ifindex, refresh, &stop, |r| deliver(&sink, r));
                })
                .map_err(RuntimeError::Spawn)?;
            self.watcher = Some(h);
        }
        if let Some(l) = &self.loader {
            log::info!(
                "AF_XDP: XDP attached to {}; {workers} worker(s)",
                l.attached()
                    .into_iter()
                    .map(|a| format!("{} ({}, {} queues)", a.iface, a.mode, a.queues))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(ios)
    }
}

impl IoBackend for AfXdpBackend {
    fn kind(&self) -> &'static str {
        "afxdp"
    }

    fn admit(&self, state: &State) -> Result<(), String> {
        if self.loader.is_none() {
            return Ok(());
        }
        let have: BTreeSet<&str> = self.ifaces.iter().map(String::as_str).collect();
        let want: BTreeSet<&str> = state.interfaces.iter().map(|i| i.name.as_str()).collect();
        let up = uplink_of(state.interfaces.iter().map(|i| (i.name.clone(), i.role)));
        if have != want || up != self.uplink {
            return Err(format!(
                "the dataplane's interfaces changed ({} uplink {} -> {} uplink {}); the AF_XDP sockets are bound at start: restart nodeplane to attach to new interfaces",
                self.ifaces.join(","),
                self.uplink.as_deref().unwrap_or("-"),
                want.into_iter().collect::<Vec<_>>().join(","),
                up.as_deref().unwrap_or("-"),
            ));
        }
        Ok(())
    }

    fn start(
        &mut self,
        tables: &Arc<Tables>,
        workers: usize,
    ) -> Result<Vec<Box<dyn PacketIo>>, String> {
        match self.start_inner(tables, workers) {
            Ok(ios) => Ok(ios),
            Err(e) => {
                // Detach whatever was attached; a later state retries from scratch.
                self.stop();
                Err(format!("AF_XDP start failed: {e}"))
            }
        }
    }

    fn prepare(&mut self, tables: &Tables) -> Result<(), String> {
        self.apply_steering(tables).map_err(|e| e.to_string())
    }

    fn worker_died(&mut self, worker: usize) {
        if self.loader.is_none() {
            return;
        }
        // `no_socket_drop` was set at start, so the program already does what the setting says.
        match self.cfg.no_socket {
            NoSocketAction::Pass => log::error!(
                "AF_XDP: worker {worker} died: the kernel now forwards its queues' traffic \
                 WITHOUT policy or service NAT (io.afxdp.no_socket: pass); restart nodeplane"
            ),
            NoSocketAction::Drop => log::error!(
                "AF_XDP: worker {worker} died: its queues' steered traffic is now DROPPED \
                 (XDP drop_no_socket) rather than forwarded by the kernel without policy \
                 (io.afxdp.no_socket: drop); restart nodeplane"
            ),
        }
    }

    fn status(&self) -> IoStatus {
        let mut st = IoStatus {
            kind: "afxdp".into(),
            ..IoStatus::default()
        };
        if let Some(l) = &self.loader {
            if let Ok(c) = l.counters() {
                for (k, v) in c.iter() {
                    st.xdp.insert(k.name().to_string(), v);
                }
            }
            st.attached = l
                .attached()
                .into_iter()
                .map(|a| {
                    format!(
                        "{} ({}, {} queues{})",
                        a.iface,
                        a.mode,
                        a.queues,
                        if a.pinned.is_some() { ", pinned" } else { "" }
                    )
                })
                .collect();
        }
        st
    }

    /// Stops the watcher and detaches XDP. The backend can be started again afterwards (the
    /// daemon does so when a first start was undone because its workers could not start).
    fn stop(&mut self) {
        let t0 = std::time::Instant::now();
        self.watcher_stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.watcher.take() {
            h.thread().unpark();
            if h.join().is_err() {
                log::error!("AF_XDP: the neighbour watcher panicked");
            }
        }
        self.watcher_stop.store(false, Ordering::Relaxed);
        let t1 = std::time::Instant::now();
        // The workers have stopped and closed their sockets (the kernel took them out of the
        // XSKMAP); dropping the loader detaches what it did not pin.
        if self.loader.take().is_some() {
            match &self.pinned {
                Some(dir) => log::info!(
                    "AF_XDP: XDP left attached to {} (pinned in {}): steered traffic is {} until \
                     the next start takes it over (`nodeplane detach` removes it) (neighbour \
                     watcher stopped in {} ms)",
                    self.ifaces.join(", "),
                    dir.display(),
                    match self.cfg.no_socket {
                        NoSocketAction::Drop => "DROPPED (io.afxdp.no_socket: drop)",
                        NoSocketAction::Pass =>
                            "passed to the kernel, WITHOUT policy (io.afxdp.no_socket: pass)",
                    },
                    (t1 - t0).as_millis()
                ),
                None => log::info!(
                    "AF_XDP: XDP detached from {} in {} ms (neighbour watcher stopped in {} ms)",
                    self.ifaces.join(", "),
                    t1.elapsed().as_millis(),
                    (t1 - t0).as_millis()
                ),
            }
        }
        if let Some((h, _)) = self.host.take() {
            if self.pinned.is_some() {
                log::info!(
                    "host interface {}: routes and rules left in place: the node's traffic to services and pods is dropped until the next start (`nodeplane detach` removes them)",
                    h.name
                );
            } else if let Err(e) = host::teardown() {
                log::error!("host interface {}: removing routes and rules: {e}", h.name);
            } else {
                log::info!(
                    "host interface {}: routes and rules removed: the node's traffic takes the kernel's own paths",
                    h.name
                );
            }
        }
        self.pinned = None;
        self.ifaces.clear();
        self.uplink = None;
    }
}

impl Drop for AfXdpBackend {
    fn drop(&mut self) {
        self.stop();
    }
}
