//! Traffic for `nodeplane whatif` from flow events: each flow's first packet rebuilt from its
//! event record (ingress interface, protocol, original 5-tuple; a TCP SYN for TCP, an echo
//! request for ICMP), written as one capture per interface so that it replays like any other.
//!
//! Events are what `nodeplane observe --json` prints (a `FlowRecord` per line) or the raw
//! stream lines (`{"event":{..}}`, `{"stats":..}` skipped). Only first packets are rebuilt:
//! records with conntrack status `new` or none (a first packet denied before its flow was
//! made). A record of a later packet (`established`, `reply`, `related`), of a frame that was
//! not IP, or on an interface the current state does not have is skipped and counted by why.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use nodeplane_dataplane::replay::PcapFile;
use nodeplane_dataplane::Tables;

use crate::api::ExplainRequest;
use crate::events::{FlowRecord, StreamLine};
use crate::explain::synthesize;

use super::WhatifError;

/// Parses flow-event lines: `FlowRecord`s, or the daemon's stream lines.
pub fn read_events(path: &Path) -> Result<Vec<FlowRecord>, WhatifError> {
    let f = std::fs::File::open(path).map_err(|source| WhatifError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| WhatifError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<FlowRecord>(&line) {
            Ok(r) => out.push(r),
            Err(e) => match serde_json::from_str::<StreamLine>(&line) {
                Ok(StreamLine::Event(r)) => out.push(*r),
                Ok(StreamLine::Stats(_)) => {}
                Err(_) => {
                    return Err(WhatifError::BadEvent {
                        path: path.to_path_buf(),
                        line: n + 1,
                        detail: e.to_string(),
                    })
                }
            },
        }
    }
    Ok(out)
}

/// The captures rebuilt from events: (interface, file) inputs, and the records skipped by why.
#[derive(Debug, Default)]
pub struct Rebuilt {
    pub inputs: Vec<(String, PathBuf)>,
    pub flows: u64,
    pub skipped: BTreeMap<String, u64>,
}

/// Writes `<dir>/events-<iface>.pcap` with one first packet per distinct flow of `records`,
/// in event time order (1 µs apart at least, so the order is kept exactly).
pub fn rebuild(records: &[FlowRecord], t: &Tables, dir: &Path) -> Result<Rebuilt, WhatifError> {
    let mut sorted: Vec<&FlowRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.time_unix_ns);
    let mut out = Rebuilt::default();
    let mut seen = BTreeSet::new();
    let mut files: BTreeMap<String, PcapFile> = BTreeMap::new();
    let mut ts = 0u64;
    let mut skip = |why: &str| *out.skipped.entry(why.to_string()).or_default() += 1;
    for r in sorted {
        if !matches!(r.ct.as_deref(), None | Some("new")) {
            skip("not a first packet");
            continue;
        }
        let (Some(src), Some(dst)) = (r.src, r.dst) else {
            skip("not IP");
            continue;
        };
        let proto = match r.proto.as_str() {
            "tcp" | "udp" | "icmp" => r.proto.clone(),
            "icmpv6" => "icmp".to_string(),
            _ => {
                skip("protocol not rebuilt");
                continue;
            }
        };
        if t.iface_index(&r.iface).is_none() {
            skip("interface not in the current state");
            continue;
        }
        if !seen.insert((r.iface.clone(), r.proto_number, src, r.sport, dst, r.dport)) {
            skip("flow already rebuilt");
            continue;
        }
        let req = ExplainRequest {
            iface: r.iface.clone(),
            proto,
            src: std::net::SocketAddr::new(src, r.sport).to_string(),
            dst: std::net::SocketAddr::new(dst, r.dport).to_string(),
            tcp_flags: None,
        };
        let synth = match synthesize(&req, t) {
            Ok(s) => s,
            Err(_) => {
                skip("cannot rebuild the packet");
                continue;
            }
        };
        ts = r.time_unix_ns.max(ts + 1_000);
        if !files.contains_key(&r.iface) {
            let path = dir.join(format!("events-{}.pcap", r.iface));
            files.insert(r.iface.clone(), PcapFile::create(&path)?);
            out.inputs.push((r.iface.clone(), path));
        }
        files
            .get_mut(&r.iface)
            .expect("created above")
            .write(ts, &synth.frame)?;
        out.flows += 1;
    }
    for (_, f) in files {
        f.finish()?;
    }
    Ok(out)
}
