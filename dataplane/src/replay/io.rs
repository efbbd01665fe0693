//! Packet I/O over frames of pcap captures ([`ReplayIo`]), in two timings:
//!
//! - **live** ([`ReplayIo::new`], the daemon's `io: replay`): the inputs one after the other,
//!   looped, paced or as fast as possible, every frame stamped with the worker's clock;
//! - **capture** ([`ReplayIo::capture`], `nodeplane replay`): the inputs merged in timestamp
//!   order (ties: input order, then file order), one pass, every frame at its capture time, and
//!   the worker's time is the capture's clock, so that a replay is deterministic bit for bit.
//!   A burst ends early where a state switch falls ([`ReplayIo::set_switches`]); each decided
//!   frame gets a verdict line and is counted (`verdicts.jsonl`, [`ReplayCounts`]).
//!
//! Either way each burst copies its frames into fixed buffers (as a NIC would DMA them into
//! UMEM frames) and the pipeline rewrites those; forwarded frames go to `<dir>/<egress>.pcap`
//! when an output directory is given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::output::{verdict_of, PcapOut, ReplayCounts, Verdicts};
use super::pcap::{read_ethernet, CaptureError};
use crate::parse::{self, Parsed};
use crate::pipeline::{Action, Outcome, Packet, Released, BURST};
use crate::rewrite;
use crate::tables::{IfIndex, Tables};
use crate::worker::{Clock, IoStats, PacketIo, TxCount};

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
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("cannot write {path}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Pcap {
        path: PathBuf,
        #[source]
        source: pcap_file::PcapError,
    },
}

/// The smallest frame buffer of a replay (like an AF_XDP frame of 4096 bytes); a capture with
/// longer frames gets buffers of its longest frame.
pub const REPLAY_FRAME: usize = 4096;

/// One frame of the inputs.
#[derive(Debug)]
struct InFrame {
    input: usize,
    ts: u64,
    data: Vec<u8>,
}

/// Packet I/O over frames loaded from pcap captures (see the module docs for the two timings).
#[derive(Debug)]
pub struct ReplayIo {
    frames: Vec<InFrame>,
    /// Capture timing (`nodeplane replay`): capture clock, verdict lines, state switches.
    capture: bool,
    /// Capture times at which a state switch falls (sorted): a burst never spans one.
    switches: Vec<u64>,
    input_ifaces: Vec<String>,
    /// Per input: its interface's index in the bound tables (`IfIndex::MAX`: unknown).
    input_index: Vec<IfIndex>,
    bufs: Vec<Vec<u8>>,
    pos: usize,
    pass: u64,
    loops: Option<u64>,
    rate: Option<u64>,
    vary_ports: bool,
    started: Option<Instant>,
    received: u64,
    passed: u64,
    tables: Option<Arc<Tables>>,
    /// Index = IfIndex of the bound tables.
    egress_names: Vec<String>,
    tx: BTreeMap<String, TxCount>,
    tx_by_index: Vec<TxCount>,
    pcaps: Option<PcapOut>,
    verdicts: Option<Verdicts>,
    counts: ReplayCounts,
    pipeline_time: Duration,
    /// The first output error (capture timing: the replay fails with it).
    error: Option<ReplayIoError>,
}

impl ReplayIo {
    /// Live timing (the daemon's `io: replay`).
    pub fn new(cfg: &ReplayIoConfig) -> Result<ReplayIo, ReplayIoError> {
        let mut frames = Vec::new();
        for (i, input) in cfg.inputs.iter().enumerate() {
            for f in read_ethernet(&input.file)? {
                frames.push(InFrame {
                    input: i,
                    ts: f.ts,
                    data: f.data,
                });
            }
        }
        let pcaps = cfg.output_dir.as_deref().map(PcapOut::create).transpose()?;
        let mut io = ReplayIo::with_frames(frames, &cfg.inputs, false);
        io.loops = cfg.loops.filter(|n| *n > 0);
        io.rate = cfg.rate_pps.filter(|n| *n > 0);
        io.vary_ports = cfg.vary_ports;
        io.pcaps = pcaps;
        Ok(io)
    }

    /// Capture timing (`nodeplane replay`): one pass over the inputs merged by timestamp,
    /// writing `verdicts.jsonl` and `<egress>.pcap` into `output_dir`.
    pub fn capture(inputs: &[ReplayInput], output_dir: &Path) -> Result<ReplayIo, ReplayIoError> {
        let mut frames = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            for f in read_ethernet(&input.file)? {
                frames.push(InFrame {
                    input: i,
                    ts: f.ts,
                    data: f.data,
                });
            }
        }
        // Stable: equal timestamps keep input order, then file order.
        frames.sort_by_key(|f| (f.ts, f.input));
        let pcaps = PcapOut::create(output_dir)?;
        let verdicts = Verdicts::create(output_dir)?;
        let mut io = ReplayIo::with_frames(frames, inputs, true);
        io.loops = Some(1);
        io.pcaps = Some(pcaps);
        io.verdicts = Some(verdicts);
        Ok(io)
    }

    fn with_frames(frames: Vec<InFrame>, inputs: &[ReplayInput], capture: bool) -> ReplayIo {
        let size = frames
            .iter()
            .map(|f| f.data.len())
            .max()
            .unwrap_or(0)
            .max(REPLAY_FRAME);
        ReplayIo {
            frames,
            capture,
            switches: Vec::new(),
            input_ifaces: inputs.iter().map(|i| i.iface.clone()).collect(),
            input_index: vec![IfIndex::MAX; inputs.len()],
            bufs: (0..BURST).map(|_| vec![0u8; size]).collect(),
            pos: 0,
            pass: 0,
            loops: None,
            rate: None,
            vary_ports: false,
            started: None,
            received: 0,
            passed: 0,
            tables: None,
            egress_names: Vec::new(),
            tx: BTreeMap::new(),
            tx_by_index: Vec::new(),
            pcaps: None,
            verdicts: None,
            counts: ReplayCounts::default(),
            pipeline_time: Duration::ZERO,
            error: None,
        }
    }

    /// Capture timing: the capture times at which states switch; no burst spans one.
    pub fn set_switches(&mut self, mut at: Vec<u64>) {
        at.sort_unstable();
        self.switches = at;
    }

    /// The capture time of the first frame (0 without frames).
    pub fn first_ts(&self) -> u64 {
        self.frames.first().map(|f| f.ts).unwrap_or(0)
    }

    /// The capture time of the next frame to enter, if any is left.
    pub fn next_ts(&self) -> Option<u64> {
        if self.finished() {
            None
        } else {
            self.frames.get(self.pos).map(|f| f.ts)
        }
    }

    /// Per-verdict counts (capture timing).
    pub fn counts(&self) -> &ReplayCounts {
        &self.counts
    }

    /// Time spent processing bursts (the pipeline and the worker's steps; no file I/O).
    pub fn pipeline_time(&self) -> Duration {
        self.pipeline_time
    }

    /// The first output error, if one happened (it stopped the outputs).
    pub fn take_error(&mut self) -> Option<ReplayIoError> {
        self.error.take()
    }

    fn fail(&mut self, e: ReplayIoError) {
        if self.error.is_none() {
            log::error!("replay output stopped: {e}");
            self.error = Some(e);
        }
        self.pcaps = None;
        self.verdicts = None;
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

    /// A decided frame leaves: counters, verdict line (capture timing), pcap when forwarded.
    fn emit(&mut self, index: u64, input: usize, ts: u64, frame: &[u8], o: &Outcome) {
        match o.action {
            Action::Held => return,
            Action::Pass => self.passed += 1,
            Action::Forward(e) => {
                let frame = &frame[usize::from(o.l2_trim).min(frame.len())..];
                if let Some(c) = self.tx_by_index.get_mut(usize::from(e)) {
                    c.packets += 1;
                    c.bytes += frame.len() as u64;
                }
                if let (Some(p), Some(name)) =
                    (&mut self.pcaps, self.egress_names.get(usize::from(e)))
                {
                    if let Err(err) = p.write(name, ts, frame) {
                        self.fail(err);
                    }
                }
            }
            Action::Drop(_) => {}
        }
        if !self.capture {
            return;
        }
        let Some(tables) = self.tables.clone() else {
            return;
        };
        let (_, _, egress) = verdict_of(&tables, o);
        self.counts.count(o, egress);
        let input_name = self
            .input_ifaces
            .get(input)
            .map(String::as_str)
            .unwrap_or("?");
        if let Some(v) = &mut self.verdicts {
            if let Err(err) = v.write(&tables, index, input_name, o) {
                self.fail(err);
            }
        }
    }
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
        self.tables = Some(Arc::clone(tables));
    }

    fn now(&self, clock: &Clock) -> u64 {
        if !self.capture {
            return clock.now();
        }
        // The capture's clock: the next frame's time, or the last frame's once all entered.
        match self.frames.get(self.pos).filter(|_| !self.finished()) {
            Some(f) => f.ts,
            None => self.frames.last().map(|f| f.ts).unwrap_or(0),
        }
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
        // Capture timing: the burst ends before the next state switch.
        let limit = if self.capture {
            let first = self.frames[self.pos].ts;
            self.switches
                .iter()
                .copied()
                .find(|&s| s > first)
                .unwrap_or(u64::MAX)
        } else {
            u64::MAX
        };
        let mut n = 0;
        let mut meta = [(0usize, 0u64, 0u64, IfIndex::MAX, 0usize); BURST];
        while n < budget && !self.finished() {
            let f = &self.frames[self.pos];
            if n > 0 && f.ts >= limit {
                break;
            }
            let len = f.data.len();
            let buf = &mut self.bufs[n];
            buf[..len].copy_from_slice(&f.data);
            let ts = if self.capture { f.ts } else { now };
            meta[n] = (f.input, ts, self.pos as u64, self.input_index[f.input], len);
            if self.vary_ports && self.pass > 0 {
                if let Ok(Parsed::Ip(mut m)) = parse::parse(&buf[..len]) {
                    let sport = m.sport.wrapping_add(self.pass as u16);
                    rewrite::set_port(&mut buf[..len], &mut m, false, sport);
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
        let t = Instant::now();
        {
            let mut pkts: [Packet<'_>; BURST] = std::array::from_fn(|_| Packet {
                data: Default::default(),
                iface: 0,
                ts: now,
                tag: 0,
                parsed: None,
            });
            for (i, (p, buf)) in pkts
                .iter_mut()
                .zip(self.bufs.iter_mut())
                .take(n)
                .enumerate()
            {
                let (_, ts, tag, iface, len) = meta[i];
                p.data = &mut buf[..len];
                p.iface = iface;
                p.ts = ts;
                p.tag = tag;
            }
            process(&mut pkts[..n], &mut outs[..n]);
            for (l, p) in lens.iter_mut().zip(pkts.iter()).take(n) {
                *l = p.data.len();
            }
        }
        self.pipeline_time += t.elapsed();
        for i in 0..n {
            let (input, ts, tag, _, _) = meta[i];
            let frame = std::mem::take(&mut self.bufs[i]);
            self.emit(tag, input, ts, &frame[..lens[i]], &outs[i]);
            self.bufs[i] = frame;
        }
        n
    }

    fn send(&mut self, egress: IfIndex, frame: &[u8]) {
        let o = Outcome {
            action: Action::Forward(egress),
            ..Outcome::default()
        };
        let ts = self
            .started
            .map(|s| s.elapsed().as_nanos() as u64)
            .unwrap_or(0);
        self.emit(0, usize::MAX, ts, frame, &o);
    }

    /// A reject answering a frame of the last burst: transmitted at that frame's time, with no
    /// verdict line of its own (the frame's line says `no-backend`).
    fn reply(&mut self, egress: IfIndex, ts: u64, frame: &[u8]) {
        if let Some(c) = self.tx_by_index.get_mut(usize::from(egress)) {
            c.packets += 1;
            c.bytes += frame.len() as u64;
        }
        if let (Some(p), Some(name)) = (&mut self.pcaps, self.egress_names.get(usize::from(egress)))
        {
            if let Err(err) = p.write(name, ts, frame) {
                self.fail(err);
            }
        }
    }

    fn released(&mut self, r: &Released<'_>) {
        let input = self
            .frames
            .get(r.tag as usize)
            .map(|f| f.input)
            .unwrap_or(usize::MAX);
        self.emit(r.tag, input, r.ts, r.data, &r.outcome);
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
        let mut errors = Vec::new();
        if let Some(v) = self.verdicts.take() {
            if let Err(e) = v.finish() {
                errors.push(e);
            }
        }
        if let Some(p) = self.pcaps.take() {
            if let Err(e) = p.finish() {
                errors.push(e);
            }
        }
        for e in errors {
            self.fail(e);
        }
    }
}
