//! `nodeplane replay`: the daemon's worker loop over pcap files instead of AF_XDP sockets.
//!
//! A [`Worker`] runs with the replay I/O in capture timing
//! ([`ReplayIo::capture`](nodeplane_dataplane::replay::ReplayIo::capture)): packets of all
//! inputs are merged in timestamp order (ties: input order, then file order) and enter on their
//! input's interface, in bursts of up to [`BURST`](nodeplane_dataplane::BURST) frames, exactly
//! as a live worker would see them; time is the capture's clock, so a replay is deterministic
//! bit for bit. Every step of the live worker runs: the pipeline, per-service counters, flow
//! events, the RST reply to flows of removed backends, held fragments, GC.
//! `--state-at` is a publication like any other: when the capture clock reaches the offset,
//! the new tables are published and the worker picks them up between bursts (a burst never
//! spans a switch).

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::bounded;
use nodeplane_dataplane::events::{EventTap, FlowEvent, EVENT_QUEUE};
use nodeplane_dataplane::publish::Publisher;
use nodeplane_dataplane::replay::{ReplayInput, ReplayIo, ReplayIoError};
use nodeplane_dataplane::worker::{Clock, PacketIo, RemovedFlowAction, SvcTraffic, Worker};
use nodeplane_dataplane::{MaglevCache, Tables};
use nodeplane_state::State;

use crate::events::{resolve, TABLES_KEPT};

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// State file or directory.
    pub state: PathBuf,
    /// (interface name, capture file).
    pub inputs: Vec<(String, PathBuf)>,
    pub output_dir: PathBuf,
    /// (seconds after the first packet, state path).
    pub state_at: Vec<(f64, PathBuf)>,
    /// Write flow events (the records `nodeplane observe --json` prints) to this file.
    pub events: Option<PathBuf>,
    /// What the worker does with a segment of a flow whose backend was removed (the daemon's
    /// `removed_flow_action`).
    pub removed_flow_action: RemovedFlowAction,
}

#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    pub packets: u64,
    pub forwarded: u64,
    pub passed: u64,
    pub dropped: u64,
    /// Drop reason name → count.
    pub drops: BTreeMap<String, u64>,
    /// Egress interface name → packets written.
    pub transmitted: BTreeMap<String, u64>,
    /// Service name → its traffic (the worker's per-service counters, as `service list`).
    pub services: BTreeMap<String, SvcTraffic>,
    /// TCP resets sent for flows of removed backends.
    pub rst_sent: u64,
    /// New flows to services without endpoints answered with a reset or an ICMP port
    /// unreachable, and those the rate limit kept from an answer.
    pub rejects_sent: u64,
    pub rejects_suppressed: u64,
    /// Packets larger than their egress MTU answered with ICMP fragmentation-needed /
    /// packet-too-big, and those the rate limit kept from an answer.
    pub mtu_icmp_sent: u64,
    pub mtu_icmp_suppressed: u64,
    /// Flow events written (`--events`).
    pub events: u64,
    /// Time spent processing bursts (excludes file I/O and JSON).
    pub pipeline_time: Duration,
    pub total_time: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot load state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: nodeplane_state::LoadError,
    },
    #[error(transparent)]
    Io(#[from] ReplayIoError),
    #[error("input interface {name:?} is not an interface of the state (known: {known})")]
    UnknownInterface { name: String, known: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--state-at offset {0} is not a finite number of seconds >= 0")]
    BadOffset(f64),
}

fn load_state(path: &Path) -> Result<State, ReplayError> {
    nodeplane_state::load_path(path).map_err(|source| ReplayError::State {
        path: path.to_path_buf(),
        source,
    })
}

/// Flow events of the replay, named as `nodeplane observe` names them.
struct EventsOut {
    path: PathBuf,
    out: BufWriter<File>,
    queue: Arc<crossbeam::queue::ArrayQueue<FlowEvent>>,
    /// The tables of the last publications, to name events of their generation.
    kept: VecDeque<Arc<Tables>>,
    written: u64,
}

impl EventsOut {
    fn drain(&mut self) -> Result<(), ReplayError> {
        while let Some(ev) = self.queue.pop() {
            // Capture time is the event's time: no wall-clock offset.
            let rec = resolve(&ev, &self.kept, 0);
            let line = serde_json::to_string(&rec).map_err(std::io::Error::other);
            line.and_then(|l| writeln!(self.out, "{l}"))
                .map_err(|source| ReplayError::Write {
                    path: self.path.clone(),
                    source,
                })?;
            self.written += 1;
        }
        Ok(())
    }

    fn keep(&mut self, t: &Arc<Tables>) {
        self.kept.push_back(Arc::clone(t));
        while self.kept.len() > TABLES_KEPT {
            self.kept.pop_front();
        }
    }
}

/// Runs a replay and writes its outputs. Returns the summary (also printed by the CLI).
pub fn run(opts: &ReplayOptions) -> Result<ReplaySummary, ReplayError> {
    let state = load_state(&opts.state)?;
    let mut states_at = Vec::new();
    for (secs, path) in &opts.state_at {
        if !secs.is_finite() || *secs < 0.0 {
            return Err(ReplayError::BadOffset(*secs));
        }
        states_at.push(((*secs * 1e9) as u64, load_state(path)?));
    }
    run_states(opts, &state, states_at)
}

/// [`run`] with the states already loaded (`opts.state` and `opts.state_at` are not read):
/// `state` first, then each of `states_at` (nanoseconds after the first packet, state).
/// `nodeplane whatif` replays states it got from the daemon so.
pub fn run_states(
    opts: &ReplayOptions,
    state: &State,
    mut states_at: Vec<(u64, State)>,
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    states_at.sort_by_key(|(at, _)| *at);

    let mut cache = MaglevCache::default();
    let mut generation = 1;
    let tables = Arc::new(Tables::build(state, generation, &mut cache));

    // Inputs: every interface must exist in the first state.
    for (name, _) in &opts.inputs {
        if tables.iface_index(name).is_none() {
            return Err(ReplayError::UnknownInterface {
                name: name.clone(),
                known: tables
                    .ifaces
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let inputs: Vec<ReplayInput> = opts
        .inputs
        .iter()
        .map(|(iface, file)| ReplayInput {
            iface: iface.clone(),
            file: file.clone(),
        })
        .collect();
    std::fs::create_dir_all(&opts.output_dir).map_err(|source| ReplayError::Write {
        path: opts.output_dir.clone(),
        source,
    })?;
    let mut io = ReplayIo::capture(&inputs, &opts.output_dir)?;
    let t0 = io.first_ts();
    io.set_switches(
        states_at
            .iter()
            .map(|(at, _)| t0.saturating_add(*at))
            .collect(),
    );

    let publisher = Publisher::new(Arc::clone(&tables));
    // Nobody sends requests to a replay's worker: a closed channel.
    let (_, requests) = bounded(1);
    let mut worker = Worker::new(
        0,
        publisher.subscribe(),
        io,
        requests,
        Arc::new(AtomicBool::new(false)),
        Clock::new(),
        opts.removed_flow_action,
    );
    let mut events = match &opts.events {
        Some(path) => {
            let f = File::create(path).map_err(|source| ReplayError::Write {
                path: path.clone(),
                source,
            })?;
            let (tap, observers, queue) = EventTap::standalone(EVENT_QUEUE);
            observers.store(1, Ordering::Relaxed);
            worker = worker.with_events(tap);
            let mut e = EventsOut {
                path: path.clone(),
                out: BufWriter::new(f),
                queue,
                kept: VecDeque::new(),
                written: 0,
            };
            e.keep(&tables);
            Some(e)
        }
        None => None,
    };

    let mut next_state = 0;
    loop {
        let next = worker.io().next_ts();
        // Publish any state whose time has come, between bursts.
        while let Some(ts) = next {
            let Some((at, s)) = states_at.get(next_state) else {
                break;
            };
            if ts < t0.saturating_add(*at) {
                break;
            }
            generation += 1;
            let t = Arc::new(Tables::build(s, generation, &mut cache));
            publisher.publish(Arc::clone(&t));
            if let Some(e) = &mut events {
                e.keep(&t);
            }
            cache.prune();
            next_state += 1;
        }
        // One more turn once the input is exhausted: held fragments time out in it.
        worker.turn();
        if let Some(e) = &mut events {
            e.drain()?;
        }
        if let Some(err) = worker.io_mut().take_error() {
            return Err(err.into());
        }
        if next.is_none() {
            break;
        }
    }
    worker.io_mut().finish();
    if let Some(err) = worker.io_mut().take_error() {
        return Err(err.into());
    }
    let events_written = match events {
        Some(mut e) => {
            e.out.flush().map_err(|source| ReplayError::Write {
                path: e.path.clone(),
                source,
            })?;
            e.written
        }
        None => 0,
    };
    let stats = worker.stats();
    let c = worker.io().counts();
    Ok(ReplaySummary {
        packets: c.packets,
        forwarded: c.forwarded,
        passed: c.passed,
        dropped: c.dropped,
        drops: c.drops.clone(),
        transmitted: c.transmitted.clone(),
        services: stats.services.map(|s| s.by_name()).unwrap_or_default(),
        rst_sent: stats.rst_sent,
        rejects_sent: stats.rejects_sent,
        rejects_suppressed: stats.rejects_suppressed,
        mtu_icmp_sent: stats.mtu_icmp_sent,
        mtu_icmp_suppressed: stats.mtu_icmp_suppressed,
        events: events_written,
        pipeline_time: worker.io().pipeline_time(),
        total_time: started.elapsed(),
    })
}

impl ReplaySummary {
    /// The human summary the CLI prints to stderr.
    pub fn render(&self) -> String {
        let mut s = format!(
            "replayed {} packets: {} forwarded, {} passed, {} dropped\n",
            self.packets, self.forwarded, self.passed, self.dropped
        );
        for (iface, n) in &self.transmitted {
            s += &format!("  tx {iface:<16} {n}\n");
        }
        for (reason, n) in &self.drops {
            s += &format!("  drop {reason:<20} {n}\n");
        }
        for (name, t) in &self.services {
            s += &format!(
                "  service {name:<17} {} flows, {} packets, {} bytes, {} dropped\n",
                t.flows, t.packets, t.bytes, t.dropped
            );
        }
        if self.rst_sent > 0 {
            s += &format!("  rst sent {}\n", self.rst_sent);
        }
        if self.rejects_sent + self.rejects_suppressed > 0 {
            s += &format!(
                "  rejects sent {} (suppressed by the rate limit {})\n",
                self.rejects_sent, self.rejects_suppressed
            );
        }
        if self.mtu_icmp_sent + self.mtu_icmp_suppressed > 0 {
            s += &format!(
                "  ICMP frag-needed / packet-too-big sent {} (suppressed by the rate limit {})\n",
                self.mtu_icmp_sent, self.mtu_icmp_suppressed
            );
        }
        if self.events > 0 {
            s += &format!("  flow events {}\n", self.events);
        }
        let secs = self.pipeline_time.as_secs_f64();
        if secs > 0.0 {
            s += &format!(
                "pipeline: {:.0} pkts/s ({:.1} ns/packet); total {:.3} s\n",
                self.packets as f64 / secs,
                secs * 1e9 / self.packets.max(1) as f64,
                self.total_time.as_secs_f64()
            );
        }
        s
    }

    /// Per-verdict and per-reason counts as JSON (golden tests compare this).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "packets": self.packets,
            "forward": self.forwarded,
            "pass": self.passed,
            "drop": self.dropped,
            "drops": self.drops,
            "transmitted": self.transmitted,
            "services": self.services,
            "rst_sent": self.rst_sent,
            "rejects_sent": self.rejects_sent,
            "rejects_suppressed": self.rejects_suppressed,
            "mtu_icmp_sent": self.mtu_icmp_sent,
            "mtu_icmp_suppressed": self.mtu_icmp_suppressed,
            "events": self.events,
        })
    }
}
