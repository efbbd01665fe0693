//! `nodeplane replay`: the worker pipeline over pcap files instead of AF_XDP sockets.
//!
//! Packets of all inputs are merged in timestamp order (ties: input order, then file order) and
//! enter on their input's interface, in bursts of up to [`BURST`] frames, exactly as a worker
//! would see them; time is the capture's clock, so a replay is deterministic bit for bit.
//! `--state-at` switches tables between bursts when the capture clock reaches the given offset,
//! the same publication a live update makes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeplane_dataplane::flow::fmt_socket;
use nodeplane_dataplane::{
    Action, DropReason, MaglevCache, Outcome, Packet, Pipeline, Tables, BURST,
};
use nodeplane_state::State;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// State file or directory.
    pub state: PathBuf,
    /// (interface name, capture file).
    pub inputs: Vec<(String, PathBuf)>,
    pub output_dir: PathBuf,
    /// (seconds after the first packet, state path).
    pub state_at: Vec<(f64, PathBuf)>,
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
    /// Time spent in the pipeline alone (excludes file I/O and JSON).
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
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a readable pcap/pcapng capture: {source}")]
    Capture {
        path: PathBuf,
        #[source]
        source: pcap_file::PcapError,
    },
    #[error("{path}: link type {link:?} is not supported (Ethernet or raw IP only)")]
    LinkType { path: PathBuf, link: DataLink },
    #[error("input interface {name:?} is not an interface of the state (known: {known})")]
    UnknownInterface { name: String, known: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    WritePcap {
        path: PathBuf,
        #[source]
        source: pcap_file::PcapError,
    },
    #[error("--state-at offset {0} is not a finite number of seconds >= 0")]
    BadOffset(f64),
}

const GC_INTERVAL_NS: u64 = 1_000_000_000;

struct InPacket {
    ts: u64,
    input: usize,
    data: Vec<u8>,
}

fn load_state(path: &Path) -> Result<State, ReplayError> {
    nodeplane_state::load_path(path).map_err(|source| ReplayError::State {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs a replay and writes its outputs. Returns the summary (also printed by the CLI).
pub fn run(opts: &ReplayOptions) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let state = load_state(&opts.state)?;
    let mut states_at = Vec::new();
    for (secs, path) in &opts.state_at {
        if !secs.is_finite() || *secs < 0.0 {
            return Err(ReplayError::BadOffset(*secs));
        }
        states_at.push(((*secs * 1e9) as u64, load_state(path)?));
    }
    states_at.sort_by_key(|(at, _)| *at);

    let mut cache = MaglevCache::default();
    let mut generation = 1;
    let tables = Arc::new(Tables::build(&state, generation, &mut cache));

    // Inputs: every interface must exist in the first state.
    let mut input_ifaces = Vec::new();
    for (name, _) in &opts.inputs {
        match tables.iface_index(name) {
            Some(_) => input_ifaces.push(name.clone()),
            None => {
                return Err(ReplayError::UnknownInterface {
                    name: name.clone(),
                    known: tables
                        .ifaces
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        }
    }
    let mut packets = Vec::new();
    for (i, (_, path)) in opts.inputs.iter().enumerate() {
        read_capture(path, i, &mut packets)?;
    }
    // Stable: equal timestamps keep input order, then file order.
    packets.sort_by_key(|p| (p.ts, p.input));
    let t0 = packets.first().map(|p| p.ts).unwrap_or(0);

    std::fs::create_dir_all(&opts.output_dir).map_err(|source| ReplayError::Write {
        path: opts.output_dir.clone(),
        source,
    })?;
    let mut out = Outputs::create(&opts.output_dir)?;
    let mut pipeline = Pipeline::new(tables);
    let mut next_state = 0;
    let mut idx = 0usize;
    let mut outcomes = [Outcome::default(); BURST];
    let mut pipeline_time = Duration::ZERO;
    // Full GC once per second of capture time, as the daemon's control loop does live.
    let mut next_gc = t0 + GC_INTERVAL_NS;

    while idx < packets.len() {
        // Publish any state whose time has come, between bursts.
        while next_state < states_at.len()
            && packets[idx].ts >= t0.saturating_add(states_at[next_state].0)
        {
            generation += 1;
            let t = Tables::build(&states_at[next_state].1, generation, &mut cache);
            pipeline.set_tables(Arc::new(t));
            cache.prune();
            next_state += 1;
        }
        // A burst ends early where the next state switch falls.
        let limit = states_at
            .get(next_state)
            .map(|(at, _)| t0.saturating_add(*at))
            .unwrap_or(u64::MAX);
        let mut end = idx;
        while end < packets.len() && end - idx < BURST && packets[end].ts < limit {
            end += 1;
        }
        let end = end.max(idx + 1);
        let tables = Arc::clone(pipeline.tables());
        let n = end - idx;
        let now = packets[end - 1].ts;
        // At the burst's first packet: a later time would expire flows before packets of
        // this burst that are older than it.
        let start = packets[idx].ts;
        if start >= next_gc {
            pipeline.gc(start);
            next_gc = start + GC_INTERVAL_NS;
        }
        let mut burst: Vec<Packet<'_>> = Vec::with_capacity(n);
        for (k, p) in packets[idx..end].iter_mut().enumerate() {
            let iface = tables
                .iface_index(&input_ifaces[p.input])
                .unwrap_or(u16::MAX);
            burst.push(Packet {
                data: &mut p.data,
                iface,
                ts: p.ts,
                tag: (idx + k) as u64,
            });
        }
        let t = Instant::now();
        {
            let mut burst = burst;
            pipeline.process_burst(&mut burst, &mut outcomes[..n]);
        }
        pipeline_time += t.elapsed();
        for k in 0..n {
            let p = &packets[idx + k];
            let input = &input_ifaces[p.input];
            out.emit(&tables, idx + k, input, p.ts, &p.data, &outcomes[k])?;
        }
        drain(&mut pipeline, now, &packets, &input_ifaces, &mut out)?;
        idx = end;
    }
    // The capture ended: held fragments whose first never came time out now.
    drain(&mut pipeline, u64::MAX, &packets, &input_ifaces, &mut out)?;
    let mut summary = out.finish()?;
    summary.pipeline_time = pipeline_time;
    summary.total_time = started.elapsed();
    Ok(summary)
}

/// Hands released and timed-out held fragments to the outputs (their verdict lines come now,
/// with their own input index).
fn drain(
    pipeline: &mut Pipeline,
    now: u64,
    packets: &[InPacket],
    input_ifaces: &[String],
    out: &mut Outputs,
) -> Result<(), ReplayError> {
    let tables = Arc::clone(pipeline.tables());
    let mut err = None;
    pipeline.drain(now, |r| {
        if err.is_some() {
            return;
        }
        let tag = r.tag as usize;
        let input = packets
            .get(tag)
            .map(|p| input_ifaces[p.input].as_str())
            .unwrap_or("?");
        if let Err(e) = out.emit(&tables, tag, input, r.ts, r.data, &r.outcome) {
            err = Some(e);
        }
    });
    err.map_or(Ok(()), Err)
}

/// The replay's outputs: verdict lines, one pcap per egress interface, and the counts.
struct Outputs {
    dir: PathBuf,
    vpath: PathBuf,
    verdicts: BufWriter<File>,
    writers: BTreeMap<String, PcapWriter<BufWriter<File>>>,
    summary: ReplaySummary,
}

impl Outputs {
    fn create(dir: &Path) -> Result<Outputs, ReplayError> {
        let vpath = dir.join("verdicts.jsonl");
        let f = File::create(&vpath).map_err(|source| ReplayError::Write {
            path: vpath.clone(),
            source,
        })?;
        Ok(Outputs {
            dir: dir.to_path_buf(),
            vpath,
            verdicts: BufWriter::new(f),
            writers: BTreeMap::new(),
            summary: ReplaySummary::default(),
        })
    }

    fn finish(mut self) -> Result<ReplaySummary, ReplayError> {
        self.verdicts.flush().map_err(|source| ReplayError::Write {
            path: self.vpath.clone(),
            source,
        })?;
        for (name, w) in self.writers {
            let path = self.dir.join(format!("{name}.pcap"));
            w.into_writer()
                .flush()
                .map_err(|source| ReplayError::Write { path, source })?;
        }
        Ok(self.summary)
    }

    fn emit(
        &mut self,
        tables: &Tables,
        index: usize,
        input: &str,
        ts: u64,
        data: &[u8],
        o: &Outcome,
    ) -> Result<(), ReplayError> {
        let (verdict, reason, egress) = match o.action {
            // Held: its line comes when it is released or times out.
            Action::Held => return Ok(()),
            Action::Forward(e) => (
                "forward",
                None,
                tables.ifaces.get(usize::from(e)).map(|i| i.name.as_str()),
            ),
            Action::Pass => ("pass", None, None),
            Action::Drop(r) => ("drop", Some(r), None),
        };
        self.summary.packets += 1;
        match o.action {
            Action::Forward(_) => self.summary.forwarded += 1,
            Action::Pass => self.summary.passed += 1,
            Action::Drop(r) => {
                self.summary.dropped += 1;
                *self.summary.drops.entry(r.name().to_string()).or_default() += 1;
            }
            Action::Held => {}
        }
        let line = serde_json::json!({
            "index": index,
            "input": input,
            "verdict": verdict,
            "reason": reason.map(DropReason::name),
            "egress": egress,
            "ct": o.ct.name(),
            "service": o.service.and_then(|s| tables.services.get(s as usize)).map(|s| s.name.as_str()),
            "backend": o.backend.map(|(a, p)| fmt_socket(a, p)),
            "src_identity": o.src_identity,
            "dst_identity": o.dst_identity,
            "policy": o.policy.name(),
        });
        writeln!(self.verdicts, "{line}").map_err(|source| ReplayError::Write {
            path: self.vpath.clone(),
            source,
        })?;
        if let Some(name) = egress {
            let path = self.dir.join(format!("{name}.pcap"));
            if !self.writers.contains_key(name) {
                let f = File::create(&path).map_err(|source| ReplayError::Write {
                    path: path.clone(),
                    source,
                })?;
                let header = PcapHeader {
                    datalink: DataLink::ETHERNET,
                    ts_resolution: pcap_file::TsResolution::NanoSecond,
                    ..PcapHeader::default()
                };
                let w = PcapWriter::with_header(BufWriter::new(f), header).map_err(|source| {
                    ReplayError::WritePcap {
                        path: path.clone(),
                        source,
                    }
                })?;
                self.writers.insert(name.to_string(), w);
            }
            *self
                .summary
                .transmitted
                .entry(name.to_string())
                .or_default() += 1;
            let w = self.writers.get_mut(name).expect("writer inserted above");
            let data = &data[usize::from(o.l2_trim).min(data.len())..];
            let pkt = PcapPacket::new(Duration::from_nanos(ts), data.len() as u32, data);
            w.write_packet(&pkt)
                .map_err(|source| ReplayError::WritePcap { path, source })?;
        }
        Ok(())
    }
}

/// Reads a pcap or pcapng file (told apart by magic number) into `out`.
fn read_capture(path: &Path, input: usize, out: &mut Vec<InPacket>) -> Result<(), ReplayError> {
    let io = |source| ReplayError::Io {
        path: path.to_path_buf(),
        source,
    };
    let cap = |source| ReplayError::Capture {
        path: path.to_path_buf(),
        source,
    };
    let mut f = BufReader::new(File::open(path).map_err(io)?);
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic).map_err(io)?;
    let f = BufReader::new(File::open(path).map_err(io)?);
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut r = PcapNgReader::new(f).map_err(cap)?;
        // Per interface: (link type, nanoseconds per timestamp unit numerator/denominator).
        let mut ifaces: Vec<(DataLink, u64, u64)> = Vec::new();
        while let Some(block) = r.next_block() {
            match block.map_err(cap)? {
                Block::InterfaceDescription(idb) => {
                    // pcap-file hands the raw 64-bit timestamp over as nanoseconds; scale it by
                    // the interface's if_tsresol (default 10^-6 s).
                    let mut scale = (1000u64, 1u64);
                    for o in &idb.options {
                        if let InterfaceDescriptionOption::IfTsResol(res) = o {
                            scale = tsresol_scale(*res);
                        }
                    }
                    ifaces.push((idb.linktype, scale.0, scale.1));
                }
                Block::EnhancedPacket(epb) => {
                    let (link, num, den) = ifaces
                        .get(epb.interface_id as usize)
                        .copied()
                        .unwrap_or((DataLink::ETHERNET, 1000, 1));
                    let raw = epb.timestamp.as_nanos() as u64;
                    let ts = raw.saturating_mul(num) / den;
                    out.push(InPacket {
                        ts,
                        input,
                        data: to_ethernet(path, link, &epb.data)?,
                    });
                }
                Block::SimplePacket(spb) => {
                    let link = ifaces.first().map(|i| i.0).unwrap_or(DataLink::ETHERNET);
                    out.push(InPacket {
                        ts: out.last().map(|p| p.ts).unwrap_or(0),
                        input,
                        data: to_ethernet(path, link, &spb.data)?,
                    });
                }
                _ => {}
            }
        }
    } else {
        let mut r = PcapReader::new(f).map_err(cap)?;
        let link = r.header().datalink;
        while let Some(p) = r.next_packet() {
            let p = p.map_err(cap)?;
            out.push(InPacket {
                ts: p.timestamp.as_nanos() as u64,
                input,
                data: to_ethernet(path, link, &p.data)?,
            });
        }
    }
    Ok(())
}

/// if_tsresol: high bit clear = 10^-n s, set = 2^-n s. Returns (num, den) to turn units into ns.
fn tsresol_scale(res: u8) -> (u64, u64) {
    let n = u32::from(res & 0x7f);
    if res & 0x80 == 0 {
        if n <= 9 {
            (10u64.pow(9 - n), 1)
        } else {
            (1, 10u64.pow((n - 9).min(18)))
        }
    } else {
        (1_000_000_000, 1u64 << n.min(63))
    }
}

/// Raw-IP captures get a synthetic Ethernet header (zero MACs) so they enter like any frame.
fn to_ethernet(path: &Path, link: DataLink, data: &[u8]) -> Result<Vec<u8>, ReplayError> {
    match link {
        DataLink::ETHERNET => Ok(data.to_vec()),
        // LINKTYPE 12 is raw IP as written by OpenBSD-derived tools.
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 | DataLink::Unknown(12) => {
            let ethertype: u16 = match data.first().map(|b| b >> 4) {
                Some(6) => 0x86dd,
                _ => 0x0800,
            };
            let mut f = Vec::with_capacity(data.len() + 14);
            f.extend_from_slice(&[0u8; 12]);
            f.extend_from_slice(&ethertype.to_be_bytes());
            f.extend_from_slice(data);
            Ok(f)
        }
        other => Err(ReplayError::LinkType {
            path: path.to_path_buf(),
            link: other,
        }),
    }
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
        })
    }
}
