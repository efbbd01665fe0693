//! `nodeplane mesh`: the mirror that joins several clusters without joining their failures.
//!
//! Agents read only their local store. The mirror lists and watches the exported directories of
//! each remote cluster's store and writes what passes the filter into the local store under
//! `<local prefix>/mesh/<cluster>/` (docs/multicluster.md). A remote store's outage therefore
//! never reaches an agent: the mirror keeps that cluster's last good keys in the local store,
//! marks the cluster unavailable and retries on the reconnect schedule of the etcd source.
//!
//! ```text
//!  remote store west ──list+watch──> remote task west ─┐          (one task per remote cluster,
//!  remote store north ─list+watch──> remote task north ┤           each with its own backoff)
//!                                     Shared views:    │ desired keys, filtered keys, state
//!                                     (a Mutex, never  ▼ held across an await)
//!                                              writer task ──txns──> local store mesh/<c>/...
//!                                                   └──> status_file (JSON, on every change)
//! ```
//!
//! Invariants:
//! - a cluster's mirrored keys are only ever rewritten from a whole, consistent list of its
//!   store (one revision) plus the watch events after it: until the first list after the
//!   mirror starts, and while the store is down, the local keys stay as they are;
//! - mirrored keys are never mirrored again (the remote's `mesh/` is never read), a cluster is
//!   never mirrored into itself (config validation, and at run time the store's etcd cluster id
//!   compared with the local one's);
//! - clusters no longer in the config lose their `mesh/<cluster>/` keys at the next connection
//!   to the local store.
//!
//! One job per module: `config` the file, `filter` what is exported and the writes (pure),
//! `remote` one remote store, `writer` the local store and the status file, `status` its format.

mod config;
mod filter;
mod remote;
mod status;
mod writer;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

pub use config::{
    ClusterName, MeshConfig, MeshConfigError, RemoteCluster, StoreConfig, DEFAULT_STATUS_FILE,
};
pub use filter::{export, plan, Export, Op, EXPORTED_DIRS, MESH_DIR};
pub use status::{
    format_status, now_unix_ms, read_status, ClusterState, ClusterStatus, LocalStatus, MeshStatus,
    StatusError,
};

/// What the mirror knows of one remote cluster (shared between its task and the writer).
#[derive(Debug, Default)]
struct View {
    /// Exported keys (relative to the remote prefix) and their values: what `mesh/<c>/` must
    /// hold once written.
    desired: BTreeMap<String, Vec<u8>>,
    /// Keys refused by the filter, with the reason.
    filtered: BTreeMap<String, String>,
    /// `desired` comes from a whole list of the store (since this mirror started).
    authoritative: bool,
    /// The remote session is up (listed and watching).
    connected: bool,
    /// Bumped on every change of `desired`.
    generation: u64,
    revision: i64,
    /// The remote store's etcd cluster id (from its response headers).
    store_id: u64,
    /// Set by the writer: the store is the local one (same etcd cluster, same prefix).
    refused: bool,
    since_unix_ms: u64,
    detail: String,
}

impl View {
    fn state(&self) -> ClusterState {
        if self.refused {
            ClusterState::Refused
        } else if self.connected {
            ClusterState::Synced
        } else if self.authoritative {
            ClusterState::Unavailable
        } else {
            ClusterState::Connecting
        }
    }
}

struct Shared {
    views: Mutex<BTreeMap<String, View>>,
    /// Wakes the writer: a view changed.
    changed: tokio::sync::Notify,
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, BTreeMap<String, View>> {
    // A panicking task cannot leave a view half-updated in a way that matters (the next list
    // replaces it whole); keep serving rather than poisoning the mirror.
    s.views.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(transparent)]
    Config(#[from] MeshConfigError),
    #[error("cannot start the mirror's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot create the directory of status_file {path}: {source}")]
    StatusDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the mirror until `stop` is set: one task per remote cluster, one writer.
pub fn run(cfg: MeshConfig, stop: Arc<AtomicBool>) -> Result<(), MeshError> {
    cfg.validate()?;
    if let Some(dir) = cfg.status_file.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|source| MeshError::StatusDir {
                path: cfg.status_file.display().to_string(),
                source,
            })?;
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MeshError::Runtime)?;
    let cfg = Arc::new(cfg);
    let shared = Arc::new(Shared {
        views: Mutex::new(
            cfg.clusters
                .iter()
                .map(|c| {
                    let v = View {
                        since_unix_ms: now_unix_ms(),
                        detail: "not connected yet".into(),
                        ..View::default()
                    };
                    (c.name.clone(), v)
                })
                .collect(),
        ),
        changed: tokio::sync::Notify::new(),
    });
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..cfg.clusters.len() {
            tasks.push(tokio::spawn(remote::run(
                cfg.clone(),
                i,
                shared.clone(),
                stop.clone(),
            )));
        }
        writer::run(&cfg, &shared, &stop).await;
        for t in tasks {
            let _ = t.await;
        }
    });
    Ok(())
}
