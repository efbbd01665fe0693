//! The etcd cluster backend: a [`StateSource`] that lists a key prefix at revision R, watches
//! from R + 1, keeps a local cache keyed by etcd key and, after each debounced batch of events,
//! assembles a whole [`State`] and sends it as one [`SourceEvent::Snapshot`]. A value that does
//! not parse yields [`SourceEvent::Rejected`] naming the key, never a half state; the running
//! state stays.
//!
//! Key layout (all under `prefix`, default `/nodeplane/v1`; see `docs/etcd.md`):
//!
//! ```text
//!   nodes/<node>                      NodeRecord {node?, interfaces?, endpoints}  (one per node)
//!   services/<name>                   Service (incl. backends)
//!   ipcache/<prefix>                  IpcacheEntry {prefix, identity}  (key: 10.1.0.0/24)
//!   policies/<node>/<endpoint>        Policy of a local endpoint of <node>
//!   mesh/<cluster>/ipcache/<prefix>   IpcacheEntry of a remote cluster   ┐ written by
//!   mesh/<cluster>/services/<name>    global Service of a remote cluster ┘ `nodeplane mesh`
//!   identities/<id>                   canonical labels       ┐
//!   identities-by-labels/<labels>     id                     │ the identity allocator
//!   identity-refs/<id>/<node>/<ep>    ""                     │ (crate::identity), not part
//!   identity-next/<cluster id>        next free local number ┘ of the State
//! ```
//!
//! The store going away never touches forwarding: the source reports
//! `Health { connected: false }` once and sends nothing else until it has resynced (re-listed the
//! whole prefix on a new connection), so the last good state stays in force. Reconnects follow
//! [`Reconnect`]: exponential windows, full jitter inside each window, the window cap scaled by
//! the number of nodes in the store.
//!
//! One job per module: `config` the `etcd:` section and its client options, `backoff` the
//! reconnect schedule, `cache` the keys seen and the assembly of a whole state, `session` one
//! connection (list, watch, publish, identities) and the reconnect loop around it.

mod backoff;
mod cache;
pub(crate) mod config;
mod mesh;
mod session;
// The test etcd launcher: for the etcd tests and the fleet benchmark, never in the daemon.
#[cfg(feature = "test-support")]
pub mod server;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use nodeplane_state::State;

pub use backoff::{BackoffConfig, Reconnect};
pub use cache::{Cache, NodeRecord};
pub use config::{AuthConfig, EtcdConfig, EtcdConfigError, TlsConfig, DEFAULT_PREFIX};
pub use session::{connect, describe, sleep_checking};

use super::{SourceEvent, StateSource};

/// The etcd state source.
#[derive(Debug)]
pub struct EtcdSource {
    cfg: EtcdConfig,
    local: Option<State>,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdSourceError {
    #[error(transparent)]
    Config(#[from] EtcdConfigError),
    #[error("etcd.local_state: {0}")]
    Local(#[from] nodeplane_state::LoadError),
}

impl EtcdSource {
    /// Validates the config and loads `local_state` (a bad local state is an error now, not a
    /// snapshot rejected later).
    pub fn new(cfg: EtcdConfig) -> Result<Self, EtcdSourceError> {
        cfg.validate()?;
        let local = match &cfg.local_state {
            Some(p) => Some(nodeplane_state::load_path_limited(p, &cfg.limits)?),
            None => None,
        };
        Ok(EtcdSource { cfg, local })
    }

    /// Same, with the local part given directly (tests, embedding).
    pub fn with_local(cfg: EtcdConfig, local: Option<State>) -> Result<Self, EtcdSourceError> {
        cfg.validate()?;
        Ok(EtcdSource { cfg, local })
    }
}

impl StateSource for EtcdSource {
    fn name(&self) -> String {
        format!("etcd {} {}", self.cfg.endpoints.join(","), self.cfg.prefix)
    }

    fn run(self: Box<Self>, tx: crossbeam::channel::Sender<SourceEvent>, stop: Arc<AtomicBool>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(SourceEvent::Health {
                    connected: false,
                    detail: format!("cannot start the etcd client runtime: {e}"),
                });
                return;
            }
        };
        let me = *self;
        rt.block_on(me.run_async(tx, stop));
    }
}
