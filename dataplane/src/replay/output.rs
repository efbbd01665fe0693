//! What a replay writes: one pcap per egress interface and, for `nodeplane replay`, a verdict
//! line per input frame (`verdicts.jsonl`), with the counts of the summary.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, TsResolution};

use super::io::ReplayIoError;
use crate::flow::fmt_socket;
use crate::pipeline::{Action, Outcome};
use crate::tables::Tables;
use crate::DropReason;

/// Per-verdict counts of the frames a replay decided (held fragments count when they leave).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayCounts {
    pub packets: u64,
    pub forwarded: u64,
    pub passed: u64,
    pub dropped: u64,
    /// Drop reason name → count.
    pub drops: BTreeMap<String, u64>,
    /// Egress interface name → frames written.
    pub transmitted: BTreeMap<String, u64>,
}

/// One pcap file being written: Ethernet, nanosecond timestamps (the frame's time). The
/// project's one pcap writer (replay outputs, `nodeplane capture`, `whatif`'s frames).
#[derive(Debug)]
pub struct PcapFile {
    path: PathBuf,
    w: PcapWriter<BufWriter<File>>,
    written: u64,
}

impl PcapFile {
    pub fn create(path: &Path) -> Result<PcapFile, ReplayIoError> {
        let f = File::create(path).map_err(|source| ReplayIoError::Output {
            path: path.to_path_buf(),
            source,
        })?;
        let header = PcapHeader {
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::NanoSecond,
            ..PcapHeader::default()
        };
        let w = PcapWriter::with_header(BufWriter::new(f), header).map_err(|source| {
            ReplayIoError::Pcap {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(PcapFile {
            path: path.to_path_buf(),
            w,
            written: 0,
        })
    }

    /// Appends one frame captured at `ts` (nanoseconds since the Unix epoch, or any clock).
    pub fn write(&mut self, ts: u64, frame: &[u8]) -> Result<(), ReplayIoError> {
        self.write_cut(ts, frame.len() as u32, frame)
    }

    /// Appends the first bytes of a frame that was `orig_len` bytes long.
    pub fn write_cut(&mut self, ts: u64, orig_len: u32, data: &[u8]) -> Result<(), ReplayIoError> {
        let pkt = PcapPacket::new(Duration::from_nanos(ts), orig_len, data);
        self.w
            .write_packet(&pkt)
            .map_err(|source| ReplayIoError::Pcap {
                path: self.path.clone(),
                source,
            })?;
        self.written += 1;
        Ok(())
    }

    /// Frames written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes and closes the file.
    pub fn finish(self) -> Result<(), ReplayIoError> {
        let path = self.path;
        self.w
            .into_writer()
            .flush()
            .map_err(|source| ReplayIoError::Output { path, source })
    }
}

/// Pcap writers per egress, created on first use.
#[derive(Debug)]
pub(super) struct PcapOut {
    dir: PathBuf,
    writers: BTreeMap<String, PcapFile>,
}

impl PcapOut {
    pub(super) fn create(dir: &Path) -> Result<PcapOut, ReplayIoError> {
        std::fs::create_dir_all(dir).map_err(|source| ReplayIoError::Output {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(PcapOut {
            dir: dir.to_path_buf(),
            writers: BTreeMap::new(),
        })
    }

    pub(super) fn write(
        &mut self,
        egress: &str,
        ts: u64,
        frame: &[u8],
    ) -> Result<(), ReplayIoError> {
        if !self.writers.contains_key(egress) {
            let p = self.dir.join(format!("{egress}.pcap"));
            self.writers
                .insert(egress.to_string(), PcapFile::create(&p)?);
        }
        let w = self.writers.get_mut(egress).expect("writer inserted above");
        w.write(ts, frame)
    }

    pub(super) fn finish(self) -> Result<(), ReplayIoError> {
        for (_, w) in self.writers {
            w.finish()?;
        }
        Ok(())
    }
}

/// `verdicts.jsonl`: one line per input frame, in the order the frames were decided.
#[derive(Debug)]
pub(super) struct Verdicts {
    path: PathBuf,
    out: BufWriter<File>,
}

impl Verdicts {
    pub(super) fn create(dir: &Path) -> Result<Verdicts, ReplayIoError> {
        let path = dir.join("verdicts.jsonl");
        let f = File::create(&path).map_err(|source| ReplayIoError::Output {
            path: path.clone(),
            source,
        })?;
        Ok(Verdicts {
            path,
            out: BufWriter::new(f),
        })
    }

    pub(super) fn write(
        &mut self,
        tables: &Tables,
        index: u64,
        input: &str,
        o: &Outcome,
    ) -> Result<(), ReplayIoError> {
        let (verdict, reason, egress) = verdict_of(tables, o);
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
        writeln!(self.out, "{line}").map_err(|source| ReplayIoError::Output {
            path: self.path.clone(),
            source,
        })
    }

    pub(super) fn finish(mut self) -> Result<(), ReplayIoError> {
        self.out.flush().map_err(|source| ReplayIoError::Output {
            path: self.path.clone(),
            source,
        })
    }
}

/// (verdict, drop reason, egress name) of a decided frame.
pub(super) fn verdict_of<'t>(
    tables: &'t Tables,
    o: &Outcome,
) -> (&'static str, Option<DropReason>, Option<&'t str>) {
    match o.action {
        Action::Forward(e) => (
            "forward",
            None,
            tables.ifaces.get(usize::from(e)).map(|i| i.name.as_str()),
        ),
        Action::Pass => ("pass", None, None),
        Action::Drop(r) => ("drop", Some(r), None),
        Action::Held => ("held", None, None),
    }
}

impl ReplayCounts {
    /// Counts one decided frame (not a held one: it counts when it leaves).
    pub(super) fn count(&mut self, o: &Outcome, egress: Option<&str>) {
        self.packets += 1;
        match o.action {
            Action::Forward(_) => {
                self.forwarded += 1;
                if let Some(name) = egress {
                    *self.transmitted.entry(name.to_string()).or_default() += 1;
                }
            }
            Action::Pass => self.passed += 1,
            Action::Drop(r) => {
                self.dropped += 1;
                *self.drops.entry(r.name().to_string()).or_default() += 1;
            }
            Action::Held => {}
        }
    }
}
