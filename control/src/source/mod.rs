//! Where desired state comes from. A source runs on its own thread and sends whole snapshots:
//! the control thread validates each snapshot as a whole, compiles it and publishes it, or
//! rejects it and keeps the last good state. Sources never hand over partial updates, so a
//! half-applied change cannot exist.
//!
//! ```text
//!   node-local dir (inotify) ─┐
//!                             ├─ SourceEvent ─> control thread ─ validate ─ Tables::build ─ publish ─> workers
//!   etcd (list + watch)  ─────┘                       │ rejected: log + metric + CLI status, keep last good
//! ```

pub mod etcd;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use nodeplane_state::State;

pub mod dir;

/// What a source tells the control thread.
#[derive(Debug)]
pub enum SourceEvent {
    /// A complete desired state (already parsed; the control thread validates it whole).
    Snapshot {
        state: Box<State>,
        /// Where it came from, for logs and `nodeplane status` (e.g. a dir path, an etcd revision).
        origin: String,
    },
    /// The source could not produce a state (unreadable files, YAML errors, ...). The running
    /// state stays; the message is shown to the operator.
    Rejected { origin: String, error: String },
    /// Connectivity of the source changed (etcd up/down). Forwarding is unaffected.
    Health { connected: bool, detail: String },
    /// The source tried once to reach its store (etcd: one connection attempt, whatever its
    /// outcome). Counted in `nodeplane status` (`source_attempts`) and the metrics: a retry
    /// storm shows there, and the reconnect schedule bounds it.
    Attempt,
    /// The source read its whole store (etcd: the list of the prefix on a new connection or
    /// after a compaction). Counted (`source_syncs`): one per reconnect, never more.
    Synced,
}

/// A state source. `run` blocks until `stop` is set (checked at least every 100 ms) and sends
/// events on `tx`; it never panics on bad input and never exits on a store failure (it retries
/// with backoff instead).
pub trait StateSource: Send + 'static {
    fn name(&self) -> String;
    fn run(self: Box<Self>, tx: crossbeam::channel::Sender<SourceEvent>, stop: Arc<AtomicBool>);
}
