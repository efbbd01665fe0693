//! The mirror's status: per remote cluster what is mirrored and whether its store is reachable,
//! and the local store's connection. Written as JSON to `status_file` on every change (atomic
//! rename), read and printed by `nodeplane mesh status`.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshStatus {
    pub cluster: String,
    pub cluster_id: u8,
    pub local: LocalStatus,
    pub clusters: Vec<ClusterStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalStatus {
    pub connected: bool,
    pub since_unix_ms: u64,
    pub detail: String,
}

/// One remote cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterState {
    /// Not synced yet since the mirror started (what the local store holds for it, from an
    /// earlier run, stays as it is).
    Connecting,
    /// Listed and watched: the local store follows it.
    Synced,
    /// Synced before, now unreachable: its last good state stays mirrored, retried with backoff.
    Unavailable,
    /// Its store is the local store under the same prefix: never mirrored into itself.
    Refused,
}

impl ClusterState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ClusterState::Connecting => "connecting",
            ClusterState::Synced => "synced",
            ClusterState::Unavailable => "unavailable",
            ClusterState::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    pub id: u8,
    pub state: ClusterState,
    /// When `state` last changed.
    pub since_unix_ms: u64,
    /// The remote revision the mirrored state is at (0: never synced).
    pub revision: i64,
    /// Exported keys mirrored, by directory.
    pub identities: usize,
    pub ipcache: usize,
    pub services: usize,
    /// Keys in exported directories that were refused, and one of them with its reason.
    pub filtered: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtered_example: Option<String>,
    /// The local store holds exactly this state (false while writes are pending or failing).
    pub written: bool,
    /// Last sync, or what failed.
    pub detail: String,
}

impl ClusterStatus {
    pub fn keys(&self) -> usize {
        self.identities + self.ipcache + self.services
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes `status` to `path` atomically (a reader never sees half a file).
pub fn write_status(path: &Path, status: &MeshStatus) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read the mesh status {path}: {source} (is `nodeplane mesh run` running with this config?)")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mesh status {path}: {message}")]
    Parse { path: String, message: String },
}

pub fn read_status(path: &Path) -> Result<MeshStatus, StatusError> {
    let text = std::fs::read(path).map_err(|source| StatusError::Read {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| StatusError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn ago(now: u64, t: u64) -> String {
    if t == 0 {
        return "-".into();
    }
    let s = now.saturating_sub(t) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// The table `nodeplane mesh status` prints.
pub fn format_status(s: &MeshStatus, now_ms: u64) -> String {
    let mut out = format!(
        "cluster {} (id {}); local store: {} for {}: {}\n",
        s.cluster,
        s.cluster_id,
        if s.local.connected {
            "connected"
        } else {
            "DOWN"
        },
        ago(now_ms, s.local.since_unix_ms),
        s.local.detail
    );
    let header = [
        "CLUSTER",
        "ID",
        "STATE",
        "FOR",
        "REVISION",
        "IDENTITIES",
        "IPCACHE",
        "SERVICES",
        "FILTERED",
        "WRITTEN",
        "DETAIL",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for c in &s.clusters {
        rows.push(vec![
            c.name.clone(),
            c.id.to_string(),
            c.state.as_str().to_string(),
            ago(now_ms, c.since_unix_ms),
            c.revision.to_string(),
            c.identities.to_string(),
            c.ipcache.to_string(),
            c.services.to_string(),
            c.filtered.to_string(),
            if c.written { "yes" } else { "no" }.to_string(),
            c.detail.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for c in s.clusters.iter().filter(|c| c.filtered_example.is_some()) {
        out.push_str(&format!(
            "{}: {} key(s) filtered, e.g. {}\n",
            c.name,
            c.filtered,
            c.filtered_example.as_deref().unwrap_or("")
        ));
    }
    out
}
