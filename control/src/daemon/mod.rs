//! `nodeplane run`: the daemon. One control thread (this one) and N worker threads.
//!
//! ```text
//!                  ┌───────────── control thread (mio event loop) ─────────────┐
//!  source thread ──┤ SourceEvent (channel + Waker) → validate → build → publish ├──> workers
//!  (dir / etcd)    │ control socket: line JSON requests → answers               │   (Subscriber,
//!  SIGTERM/SIGINT ─┤ signal pipe → stop                                         │    request channel)
//!  SIGUSR1 ────────┤ signal pipe → stop, BGP graceful restart                   │
//!  SIGHUP ─────────┤ signal pipe → reload: config (log settings), state dir     │
//!  systemd <───────┤ sd_notify: READY after the first state, WATCHDOG, STATUS   │
//!                  │ accepted state → bgp::Bgp → Speaker::set_routes ───────────┼──> bgp-speaker
//!                  │ `observe` → connection handed to an np-observe thread      │    thread
//!                  └────────────────────────────────────────────────────────────┘
//!  workers ──(per-worker event queues)──> np-events fan-out ──> np-observe-N (see events.rs)
//! ```
//!
//! Stability first: a rejected state leaves the published tables untouched (logged at error
//! level, counted, shown by `nodeplane status`); a source failure never stops forwarding; the
//! emergency policy mode is a runtime override held here and needs no store.

pub mod bgp;
pub mod config;
pub mod control;
pub mod healthcheck;
pub mod log;
pub mod metrics;
pub mod overrides;
pub mod ratelimit;
pub mod service;

use std::io::Read;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{unbounded, Receiver};
use mio::{Events, Poll, Token, Waker};
use nodeplane_bgp::StopMode;

use crate::api::server::Server;
use crate::runtime::backend::IoBackend;
use crate::runtime::AfXdpBackend;
use crate::runtime::IoReport;
use crate::source::dir::DirSource;
use crate::source::{SourceEvent, StateSource};
use config::{Config, SourceChoice};
use control::Control;
use nodeplane_dataplane::replay::{ReplayIo, ReplayIoConfig};
use nodeplane_dataplane::worker::{IoStats, PacketIo};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
/// The one waker of the event loop (mio allows one per `Poll`): source events and neighbour
/// reports, each on its own channel.
const WAKE: Token = Token(2);
/// SIGUSR1: stop with BGP graceful restart (sessions closed without withdrawing).
const SIGNAL_RESTART: Token = Token(3);
/// SIGHUP: reload the config (what can change live) and re-read the state directory.
const SIGNAL_RELOAD: Token = Token(4);
const FIRST_CONN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Socket(#[from] crate::api::server::ServerError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("cannot set up the event loop: {0}")]
    Poll(#[source] std::io::Error),
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("state source: {0}")]
    Source(String),
    #[error("packet I/O: {0}")]
    Io(String),
    #[error("worker {worker}: {detail}")]
    Accounting { worker: usize, detail: String },
    #[error("worker {worker} died while running: {reason}")]
    WorkerDied { worker: usize, reason: String },
}

/// No packet I/O: the worker idles (control plane only).
#[derive(Debug, Default)]
pub struct NullIo;

impl PacketIo for NullIo {
    fn bind(&mut self, _: &Arc<nodeplane_dataplane::Tables>) {}
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
    fn idle(&mut self, max: Duration) {
        std::thread::sleep(max.max(Duration::from_millis(10)));
    }
    fn stats(&self) -> IoStats {
        IoStats::default()
    }
}

use crate::source::etcd::{EtcdConfig, EtcdSource};

fn make_source(cfg: &Config) -> Result<Box<dyn StateSource>, DaemonError> {
    match cfg.source() {
        SourceChoice::Dir(d) => Ok(Box::new(DirSource::new(d).with_limits(cfg.state.limits))),
        SourceChoice::Etcd(v) => {
            let mut ecfg: EtcdConfig = yaml_serde::from_value(v)
                .map_err(|e| DaemonError::Source(format!("state.etcd: {e}")))?;
            ecfg.limits = cfg.state.limits;
            let src = EtcdSource::new(ecfg)
                .map_err(|e| DaemonError::Source(format!("state.etcd: {e}")))?;
            Ok(Box::new(src))
        }
    }
}

/// No packet I/O: workers that idle (control plane only: state, CLI).
#[derive(Debug)]
struct NullBackend;

impl IoBackend for NullBackend {
    fn kind(&self) -> &'static str {
        "none"
    }
    fn start(
        &mut self,
        _: &Arc<nodeplane_dataplane::Tables>,
        workers: usize,
    ) -> Result<Vec<Box<dyn PacketIo>>, String> {
        Ok((0..workers)
            .map(|_| Box::new(NullIo) as Box<dyn PacketIo>)
            .collect())
    }
}

/// Frames from pcap captures; inputs are dealt to workers round-robin (each input feeds one
/// worker).
#[derive(Debug)]
struct ReplayBackend(ReplayIoConfig);

impl IoBackend for ReplayBackend {
    fn kind(&self) -> &'static str {
        "replay"
    }
    fn start(
        &mut self,
        _: &Arc<nodeplane_dataplane::Tables>,
        n: usize,
    ) -> Result<Vec<Box<dyn PacketIo>>, String> {
        let r = &self.0;
        let mut ios = Vec::new();
        for i in 0..n {
            let mut mine = r.clone();
            mine.inputs = r
                .inputs
                .iter()
                .enumerate()
                .filter(|(k, _)| k % n == i)
                .map(|(_, x)| x.clone())
                .collect();
            if let Some(dir) = &r.output_dir {
                mine.output_dir = Some(if n > 1 {
                    dir.join(format!("worker{i}"))
                } else {
                    dir.clone()
                });
            }
            if mine.inputs.is_empty() {
                ios.push(Box::new(NullIo) as Box<dyn PacketIo>);
                continue;
            }
            let io = ReplayIo::new(&mine).map_err(|e| format!("worker {i}: {e}"))?;
            ios.push(Box::new(io));
        }
        Ok(ios)
    }
}

fn make_io(
    cfg: &Config,
    reports: impl FnMut(IoReport) + Send + 'static,
) -> Result<Box<dyn IoBackend>, DaemonError> {
    if let Some(a) = &cfg.io.afxdp {
        return Ok(Box::new(AfXdpBackend::new(a.clone(), Box::new(reports))));
    }
    match cfg.io.replay.clone() {
        None => Ok(Box::new(NullBackend)),
        Some(r) => {
            // Check the captures now, so a bad path fails the start, not a worker.
            ReplayIo::new(&r).map_err(|e| DaemonError::Io(e.to_string()))?;
            Ok(Box::new(ReplayBackend(r)))
        }
    }
}

/// Where the operator's policy-mode override is kept across restarts: beside the control
/// socket (`/run/nodeplane/nodeplane.sock.policy-mode` by default).
pub fn mode_file(socket: &std::path::Path) -> std::path::PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".policy-mode");
    std::path::PathBuf::from(p)
}

/// Runs the daemon until SIGTERM, SIGINT or SIGUSR1. `config_path` is the file `cfg` came
/// from, read again at SIGHUP (none: the defaults, nothing to re-read).
pub fn run(cfg: Config, config_path: Option<std::path::PathBuf>) -> Result<(), DaemonError> {
    let mut cfg = cfg;
    let mut notifier = service::Notifier::from_env();
    // Panics on worker threads are caught, counted and logged by the workers (worker.rs).
    nodeplane_dataplane::worker::install_panic_hook();
    let mut poll = Poll::new().map_err(DaemonError::Poll)?;
    let stop = Arc::new(AtomicBool::new(false));

    // Signals arrive as bytes on a socket pair the event loop watches.
    let (sig_r, sig_w) = StdUnixStream::pair().map_err(DaemonError::Signals)?;
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let w = sig_w.try_clone().map_err(DaemonError::Signals)?;
        signal_hook::low_level::pipe::register(sig, w).map_err(DaemonError::Signals)?;
    }
    sig_r.set_nonblocking(true).map_err(DaemonError::Signals)?;
    let mut sig_r = mio::net::UnixStream::from_std(sig_r);
    poll.registry()
        .register(&mut sig_r, SIGNALS, mio::Interest::READABLE)
        .map_err(DaemonError::Poll)?;
    // Its own pipe, so the event loop knows which stop was asked for.
    let (usr1_r, usr1_w) = StdUnixStream::pair().map_err(DaemonError::Signals)?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGUSR1, usr1_w)
        .map_err(DaemonError::Signals)?;
    usr1_r.set_nonblocking(true).map_err(DaemonError::Signals)?;
    let mut usr1_r = mio::net::UnixStream::from_std(usr1_r);
    poll.registry()
        .register(&mut usr1_r, SIGNAL_RESTART, mio::Interest::READABLE)
        .map_err(DaemonError::Poll)?;
    let (hup_r, hup_w) = StdUnixStream::pair().map_err(DaemonError::Signals)?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, hup_w)
        .map_err(DaemonError::Signals)?;
    hup_r.set_nonblocking(true).map_err(DaemonError::Signals)?;
    let mut hup_r = mio::net::UnixStream::from_std(hup_r);
    poll.registry()
        .register(&mut hup_r, SIGNAL_RELOAD, mio::Interest::READABLE)
        .map_err(DaemonError::Poll)?;

    let mut server = Server::bind(&cfg.control_socket, poll.registry(), LISTENER, FIRST_CONN)?;
    let metrics = match cfg.metrics_listen {
        Some(addr) => {
            let m = metrics::MetricsServer::start(addr)?;
            ::log::info!("metrics on http://{}/metrics", m.addr());
            Some(m)
        }
        None => None,
    };
    let source = make_source(&cfg)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).map_err(DaemonError::Poll)?);
    // Neighbour and link watchers (AF_XDP) → channel → this event loop.
    let io_waker = waker.clone();
    let (io_tx, io_rx) = unbounded::<IoReport>();
    let io = make_io(&cfg, move |r| {
        if io_tx.send(r).is_ok() {
            let _ = io_waker.wake();
        }
    })?;
    let mut control = Control::new(
        source.name(),
        cfg.workers,
        io,
        cfg.removed_flow_action,
        stop.clone(),
    );
    if let Some(b) = &cfg.bgp {
        control.set_bgp(bgp::Bgp::new(b.clone()));
    }
    let events_thread = control
        .events()
        .start(stop.clone())
        .map_err(|e| DaemonError::Io(format!("cannot start the flow-event thread: {e}")))?;
    control.keep_mode_at(mode_file(&cfg.control_socket));
    if let Some(path) = &cfg.conntrack_snapshot {
        control.keep_snapshot_at(path.clone());
    }

    // Source thread → channel → forwarder → control channel + wake the event loop.
    let (src_tx, src_rx) = unbounded::<SourceEvent>();
    let (ctl_tx, ctl_rx): (_, Receiver<SourceEvent>) = unbounded();
    let src_stop = stop.clone();
    let source_thread = std::thread::Builder::new()
        .name("np-source".into())
        .spawn(move || source.run(src_tx, src_stop))
        .map_err(|e| DaemonError::Source(e.to_string()))?;
    let w = waker.clone();
    let forwarder = std::thread::Builder::new()
        .name("np-source-fwd".into())
        .spawn(move || {
            for ev in src_rx {
                if ctl_tx.send(ev).is_err() {
                    break;
                }
                let _ = w.wake();
            }
        })
        .map_err(|e| DaemonError::Source(e.to_string()))?;

    ::log::info!(
        "nodeplane running: state from {}, control socket {}, {} worker(s), I/O {}, BGP {}",
        control_source_name(&cfg),
        server.path().display(),
        cfg.workers,
        if cfg.io.afxdp.is_some() {
            "afxdp"
        } else if cfg.io.replay.is_some() {
            "replay"
        } else {
            "none"
        },
        match &cfg.bgp {
            Some(b) => format!(
                "AS {} with {} neighbour(s) (starts at the first accepted state)",
                b.local_as,
                b.neighbors.len()
            ),
            None => "off".into(),
        }
    );
    let mut events = Events::with_capacity(64);
    let mut last_sweep = Instant::now();
    let mut bgp_stop = StopMode::Withdraw;
    'outer: loop {
        // While Maglev tables are being finished, poll without waiting and build in between.
        let wait = if control.completing() {
            Duration::ZERO
        } else {
            notifier.max_wait()
        };
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            ::log::error!("event loop: {e}");
            break;
        }
        for ev in events.iter() {
            match ev.token() {
                SIGNALS => {
                    let mut b = [0u8; 16];
                    while matches!(sig_r.read(&mut b), Ok(n) if n > 0) {}
                    ::log::info!("signal received: stopping");
                    break 'outer;
                }
                SIGNAL_RESTART => {
                    let mut b = [0u8; 16];
                    while matches!(usr1_r.read(&mut b), Ok(n) if n > 0) {}
                    ::log::info!(
                        "SIGUSR1 received: stopping for a restart (BGP sessions closed without withdrawing: graceful restart)"
                    );
                    bgp_stop = StopMode::Restart;
                    break 'outer;
                }
                SIGNAL_RELOAD => {
                    let mut b = [0u8; 16];
                    while matches!(hup_r.read(&mut b), Ok(n) if n > 0) {}
                    notifier.reloading();
                    reload(&mut cfg, config_path.as_deref(), &mut control);
                    notifier.reloaded();
                }
                WAKE => {
                    while let Ok(ev) = ctl_rx.try_recv() {
                        control.on_source(ev);
                    }
                    while let Ok(r) = io_rx.try_recv() {
                        match r {
                            IoReport::Neighbour(r) => control.on_neighbour(r),
                            IoReport::Link(e) => control.on_link(Some(&e)),
                        }
                    }
                }
                t if server.owns(t) => {
                    server.ready(poll.registry(), t, &mut |line| control.serve_line(line));
                    for (ticket, stream) in server.take_handed() {
                        control.attach_observer(ticket, stream);
                    }
                }
                _ => {}
            }
        }
        control.step_completion();
        notifier.tick(control.generation() > 0, control.summary());
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            server.sweep(poll.registry());
            control.reap();
            control.check_workers();
            control.on_link(None);
            control.retry_start();
            control.tick_bgp();
            ratelimit::flush();
            if let Some(m) = &metrics {
                m.publish(metrics::render(&control.status()));
            }
            last_sweep = Instant::now();
        }
    }

    notifier.stopping();
    let t0 = Instant::now();
    // Routes first: routers move traffic away while the workers still forward it.
    control.stop_bgp(bgp_stop);
    let t_bgp = t0.elapsed();
    // Flows saved while the workers still run (they stop right after): the next start
    // restores them, so established connections survive the restart.
    if cfg.conntrack_snapshot.is_some() {
        if let Err(e) = control.save_snapshot() {
            ::log::error!("{e}: established connections will not survive this restart");
        }
    }
    let t_snapshot = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let stats = control.join_workers();
    let t_workers = t0.elapsed();
    let mut broken = None;
    for s in &stats {
        let acct = s.io.afxdp.as_ref().and_then(|a| a.accounting.clone());
        ::log::info!(
            "worker {} stopped: {} packets, {} forwarded, {} dropped{}",
            s.worker,
            s.packets,
            s.forwarded,
            s.dropped,
            acct.as_deref()
                .map(|a| format!(", UMEM frame accounting {a}"))
                .unwrap_or_default()
        );
        if let Some(a) = acct.filter(|a| a != "ok") {
            broken.get_or_insert((s.worker, a));
        }
    }
    drop(server);
    // The flow-event fan-out, the source and its forwarder see `stop` at their next check (up
    // to 100 ms away: the directory source's inotify wait) and hold nothing the exit must
    // release (an inotify watch, a connection to etcd): they are not waited for, the process
    // ends them. (A daemon that waited here spent most of a quiet stop on it.)
    drop((events_thread, source_thread, forwarder));
    ::log::info!(
        "stopped in {} ms (BGP {} ms, conntrack snapshot {} ms, workers and I/O {} ms)",
        t0.elapsed().as_millis(),
        t_bgp.as_millis(),
        (t_snapshot - t_bgp).as_millis(),
        (t_workers - t_snapshot).as_millis()
    );
    if let Some(d) = control.dead_workers().first() {
        return Err(DaemonError::WorkerDied {
            worker: d.worker,
            reason: d.reason.clone(),
        });
    }
    match broken {
        Some((worker, detail)) => Err(DaemonError::Accounting { worker, detail }),
        None => Ok(()),
    }
}

/// SIGHUP: the config file read and validated again, then applied if only what can change
/// live changed (the log settings); otherwise rejected whole, the running config kept. Then
/// the state directory is read again and applied as if it had changed (etcd: the source's
/// watch is live already, nothing to re-read).
fn reload(cfg: &mut Config, path: Option<&std::path::Path>, control: &mut Control) {
    match path {
        None => ::log::info!("SIGHUP: no config file (defaults); nothing to reload"),
        Some(path) => match Config::load(path) {
            Err(e) => ::log::error!("config reload REJECTED, keeping the running config: {e}"),
            Ok(new) => {
                let keys = cfg.restart_needed(&new);
                if keys.is_empty() {
                    log::set_level(&new.log_level);
                    log::set_format(new.log_format);
                    ::log::info!(
                        "config reloaded from {}: log_level {}, log_format {:?}",
                        path.display(),
                        new.log_level,
                        new.log_format
                    );
                    *cfg = new;
                } else {
                    ::log::error!(
                        "config reload REJECTED, keeping the running config: {} changed in {} (only log_level and log_format are applied live: restart nodeplane for the rest)",
                        keys.join(", "),
                        path.display()
                    );
                }
            }
        },
    }
    match cfg.source() {
        SourceChoice::Dir(d) => {
            let origin = format!("dir {} (reload)", d.display());
            match nodeplane_state::load_path_limited(&d, &cfg.state.limits) {
                Ok(state) => control.apply(state, origin),
                Err(e) => control.on_source(crate::source::SourceEvent::Rejected {
                    origin,
                    error: e.to_string(),
                }),
            }
        }
        SourceChoice::Etcd(_) => {
            ::log::info!("SIGHUP: the etcd source's watch is live; no state to re-read")
        }
    }
}

fn control_source_name(cfg: &Config) -> String {
    match cfg.source() {
        SourceChoice::Dir(d) => format!("dir {}", d.display()),
        SourceChoice::Etcd(_) => "etcd".into(),
    }
}
