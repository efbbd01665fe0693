//! Packet I/O over frames of pcap captures ([`ReplayIo`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::pcap::load_pcap;
use crate::parse::{self, Parsed};
use crate::pipeline::{Action, Outcome, Packet, BURST};
use crate::rewrite;
use crate::tables::{IfIndex, Tables};
use crate::worker::{IoStats, PacketIo, TxCount};

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
