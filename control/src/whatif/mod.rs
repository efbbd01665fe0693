//! `nodeplane whatif`: which flows a proposed state would change, before it is applied.
//!
//! The same traffic is replayed twice through the daemon's own worker loop
//! ([`crate::replay::run_states`], capture timing, so both runs are deterministic): once with
//! the current state, once with the proposed one. The two runs' verdict lines are compared
//! packet by packet; a flow (one 5-tuple, either direction) changes when any of its packets
//! gets another verdict, drop reason or backend. Changed flows are grouped by the kind of
//! change, service, identity pair and the rules that decided them (found as `explain` finds
//! them: `DirPolicy::decide` with the same inputs, [`crate::explain::deciding_rules`]).
//!
//! Traffic: captures (`--input IFACE=FILE`), or flow events (`--from-events`, `--live`): each
//! event's flow is rebuilt as its first packet ([`traffic`]). Events carry only first packets
//! and drops, so what-if on events judges new connections; a capture judges every packet
//! (established flows of removed backends, replies).

pub mod live;
pub mod report;
pub mod traffic;

use std::path::{Path, PathBuf};

use nodeplane_dataplane::replay::{read_ethernet, CaptureError};
use nodeplane_dataplane::worker::RemovedFlowAction;
use nodeplane_dataplane::{MaglevCache, Tables};
use nodeplane_state::State;

use crate::events::FlowRecord;
use crate::replay::{run_states, ReplayError, ReplayOptions};

pub use report::{FlowChange, Side, WhatifReport};

/// Where the traffic comes from.
#[derive(Debug, Clone)]
pub enum Traffic {
    /// (interface, capture file): as `nodeplane replay --input`.
    Captures(Vec<(String, PathBuf)>),
    /// Flow event records (`--from-events`, `--live`).
    Events(Vec<FlowRecord>),
}

#[derive(Debug, Clone)]
pub struct WhatifOptions {
    pub current: State,
    pub proposed: State,
    pub traffic: Traffic,
    pub removed_flow_action: RemovedFlowAction,
    /// Keep the replays' outputs here (`current/`, `proposed/`, and the rebuilt captures);
    /// `None`: a temporary directory, removed at the end.
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum WhatifError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: not a flow event: {detail}")]
    BadEvent {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("replay with the {which} state: {source}")]
    Replay {
        which: &'static str,
        #[source]
        source: ReplayError,
    },
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Output(#[from] nodeplane_dataplane::replay::ReplayIoError),
    #[error("cannot use {path}: {source}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no traffic to replay{0}")]
    NoTraffic(String),
}

/// A temporary work directory, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn make_dir(p: &Path) -> Result<(), WhatifError> {
    std::fs::create_dir_all(p).map_err(|source| WhatifError::WorkDir {
        path: p.to_path_buf(),
        source,
    })
}

fn read_verdicts(path: &Path) -> Result<Vec<report::VerdictLine>, WhatifError> {
    let text = std::fs::read_to_string(path).map_err(|source| WhatifError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .map(|(n, l)| {
            serde_json::from_str(l).map_err(|e| WhatifError::BadEvent {
                path: path.to_path_buf(),
                line: n + 1,
                detail: e.to_string(),
            })
        })
        .collect()
}

/// Runs both replays and compares them.
pub fn run(opts: &WhatifOptions) -> Result<WhatifReport, WhatifError> {
    let (dir, _guard) = match &opts.work_dir {
        Some(d) => (d.clone(), None),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let d = std::env::temp_dir()
                .join(format!("nodeplane-whatif-{}-{nanos}", std::process::id()));
            (d.clone(), Some(TempDir(d)))
        }
    };
    make_dir(&dir)?;
    let mut cache = MaglevCache::default();
    let cur_tables = Tables::build(&opts.current, 1, &mut cache);
    let pro_tables = Tables::build(&opts.proposed, 1, &mut cache);

    let (inputs, skipped) = match &opts.traffic {
        Traffic::Captures(c) => (c.clone(), Default::default()),
        Traffic::Events(records) => {
            let t = dir.join("traffic");
            make_dir(&t)?;
            let rebuilt = traffic::rebuild(records, &cur_tables, &t)?;
            if rebuilt.inputs.is_empty() {
                return Err(WhatifError::NoTraffic(format!(
                    ": none of the {} flow events is a first packet that can be rebuilt ({:?})",
                    records.len(),
                    rebuilt.skipped
                )));
            }
            (rebuilt.inputs, rebuilt.skipped)
        }
    };
    if inputs.is_empty() {
        return Err(WhatifError::NoTraffic(String::new()));
    }

    let replay = |which: &'static str, state: &State| {
        let o = ReplayOptions {
            state: PathBuf::new(),
            inputs: inputs.clone(),
            output_dir: dir.join(which),
            state_at: Vec::new(),
            events: None,
            removed_flow_action: opts.removed_flow_action,
        };
        run_states(&o, state, Vec::new())
            .map_err(|source| WhatifError::Replay { which, source })?;
        read_verdicts(&dir.join(which).join("verdicts.jsonl"))
    };
    let cur = replay("current", &opts.current)?;
    let pro = replay("proposed", &opts.proposed)?;

    // The merged traffic in the replay's order: by time, ties by input order, then file order.
    let mut frames = Vec::new();
    for (i, (iface, file)) in inputs.iter().enumerate() {
        for f in read_ethernet(file)? {
            frames.push((f.ts, i, iface.clone(), f.data));
        }
    }
    frames.sort_by_key(|f| (f.0, f.1));
    let frames: Vec<(String, Vec<u8>)> = frames.into_iter().map(|f| (f.2, f.3)).collect();

    let cj = report::Judged {
        state: &opts.current,
        tables: &cur_tables,
    };
    let pj = report::Judged {
        state: &opts.proposed,
        tables: &pro_tables,
    };
    let mut r = report::compare(&frames, (&cj, &cur), (&pj, &pro));
    r.skipped_events = skipped;
    Ok(r)
}
