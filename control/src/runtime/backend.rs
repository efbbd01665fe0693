//! The control thread's side of a packet I/O kind ([`IoBackend`]) and what it reports.

use std::collections::BTreeMap;
use std::sync::Arc;

use nodeplane_dataplane::worker::PacketIo;
use nodeplane_dataplane::Tables;
use serde::{Deserialize, Serialize};

/// The control thread's side of a packet I/O kind: creates the workers' [`PacketIo`]s when the
/// first state is published, may veto a state it cannot run (the AF_XDP sockets are bound to
/// fixed interfaces), prepares every publication (the XDP steering maps) and reports its own
/// status. Everything here runs on the control thread, never on the packet path.
pub trait IoBackend {
    /// `afxdp`, `replay` or `none`.
    fn kind(&self) -> &'static str;
    /// Whether a validated state can be published with this I/O (an error rejects it whole).
    fn admit(&self, _state: &nodeplane_state::State) -> Result<(), String> {
        Ok(())
    }
    /// Creates the I/O of `workers` workers for the first published tables. An error rejects
    /// that state; the next state tries again.
    fn start(
        &mut self,
        tables: &Arc<Tables>,
        workers: usize,
    ) -> Result<Vec<Box<dyn PacketIo>>, String>;
    /// Called with every later snapshot before the workers get it (an error rejects it).
    fn prepare(&mut self, _tables: &Arc<Tables>) -> Result<(), String> {
        Ok(())
    }
    /// One of the I/O's interfaces changed (a link notification), or the once-a-second check
    /// (`None`): follow interfaces that went away or came back (AF_XDP).
    fn links(&mut self, _event: Option<&crate::runtime::link::LinkEvent>) {}
    /// Before the first start: the uplink gateway's MAC as the kernel has or resolves it
    /// (AF_XDP; bounded wait), for the first tables; `None`: not known (yet).
    fn start_gateway_mac(&self, _state: &nodeplane_state::State) -> Option<[u8; 6]> {
        None
    }
    /// The kernel's MTU of each of these interfaces that exists (AF_XDP; others: none known,
    /// the state's `mtu` applies).
    fn mtus(&self, _names: &[&str]) -> Vec<(String, u16)> {
        Vec::new()
    }
    fn status(&self) -> IoStatus {
        IoStatus {
            kind: self.kind().into(),
            ..IoStatus::default()
        }
    }
    /// A worker thread ended while the daemon runs (its queues have no socket any more).
    fn worker_died(&mut self, _worker: usize) {}
    /// Called after the workers stopped (AF_XDP: detach XDP).
    fn stop(&mut self) {}
}

/// What an [`IoBackend`] reports in `nodeplane status` (besides the per-worker counters).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IoStatus {
    /// `afxdp`, `replay` or `none`.
    pub kind: String,
    /// Interfaces with the XDP program: `name (mode, N queues)`.
    #[serde(default)]
    pub attached: Vec<String>,
    /// The XDP program's counters (name → value).
    #[serde(default)]
    pub xdp: BTreeMap<String, u64>,
    /// The uplink gateway's next hop (AF_XDP).
    #[serde(default)]
    pub neighbour: Option<crate::runtime::neigh::NeighbourStatus>,
    /// Interfaces of the state that are gone (their sockets out of service, frames to them
    /// dropped `iface-down`), or back and not re-bound yet.
    #[serde(default)]
    pub down: Vec<String>,
    /// Interfaces that went away and came back (AF_XDP).
    #[serde(default)]
    pub links: LinkStats,
    /// The TC program's counters (`io.afxdp.fast_path: tc`), summed over CPUs: name → value
    /// (`fast_fwd_packets`, `fast_fwd_bytes`, `fast_gso_skbs`, `slow_path`, `slow_gso_drop`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<BTreeMap<String, u64>>,
}

/// Interfaces deleted and re-created while the daemon runs (AF_XDP, `runtime::link`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    /// Times an interface went away (sockets taken out of service).
    pub gone: u64,
    /// Times one came back and was re-attached (XDP, sockets bound and registered).
    pub reattached: u64,
    /// Re-attach attempts that failed (retried every second).
    pub reattach_failed: u64,
    /// The last re-attach: from its link notification to the XDP program attached (µs).
    #[serde(default)]
    pub last_attach_us: Option<u64>,
    /// ... and to its sockets registered: traffic through the pipeline again (µs).
    #[serde(default)]
    pub last_ready_us: Option<u64>,
}
