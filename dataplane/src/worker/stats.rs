//! A worker's counters: per-service traffic and the snapshot `nodeplane status` shows.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::io::IoStats;
use crate::events::EventCounts;
use crate::pipeline::{Action, CtStatus, Outcome};
use crate::tables::Tables;

/// Traffic of one service (DESIGN §3.8): what the pipeline decided for frames of its flows,
/// both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvcTraffic {
    /// Frames forwarded (requests to a frontend and replies from its backends).
    pub packets: u64,
    /// Bytes of those frames as received.
    pub bytes: u64,
    /// New flows forwarded to a backend.
    pub flows: u64,
    /// Frames of its flows dropped (any reason: policy, no backend, backend gone, ...).
    pub dropped: u64,
}

impl SvcTraffic {
    pub fn add(&mut self, o: &SvcTraffic) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.flows += o.flows;
        self.dropped += o.dropped;
    }

    fn is_zero(&self) -> bool {
        *self == SvcTraffic::default()
    }
}

/// A worker's per-service counters, indexed like the services of the tables they were counted
/// under. The worker increments them per frame (an indexed add, no lookup); names are resolved
/// off the worker, by the control thread ([`ServiceCounts::by_name`]).
#[derive(Debug, Clone)]
pub struct ServiceCounts {
    tables: Arc<Tables>,
    counts: Vec<SvcTraffic>,
}

impl ServiceCounts {
    pub(crate) fn new(tables: &Arc<Tables>) -> ServiceCounts {
        ServiceCounts {
            tables: Arc::clone(tables),
            counts: vec![SvcTraffic::default(); tables.services.len()],
        }
    }

    /// New tables: counters move to the service of the same name (services that are gone take
    /// theirs with them, as a Prometheus series of a deleted object ends). Once per
    /// publication; looks up only the services that saw traffic.
    pub(crate) fn rebind(&mut self, tables: &Arc<Tables>) {
        if Arc::ptr_eq(&self.tables, tables) {
            return;
        }
        let mut next = vec![SvcTraffic::default(); tables.services.len()];
        for (i, c) in self.counts.iter().enumerate() {
            if c.is_zero() {
                continue;
            }
            let name = &self.tables.services[i].name;
            if let Some(&j) = tables.service_by_name.get(name.as_str()) {
                next[j as usize].add(c);
            }
        }
        self.tables = Arc::clone(tables);
        self.counts = next;
    }

    #[inline]
    pub(crate) fn count(&mut self, o: &Outcome, len: usize) {
        let Some(c) = o.service.and_then(|s| self.counts.get_mut(s as usize)) else {
            return;
        };
        match o.action {
            Action::Forward(_) => {
                c.packets += 1;
                c.bytes += len as u64;
                c.flows += u64::from(o.ct == CtStatus::New);
            }
            Action::Drop(_) => c.dropped += 1,
            Action::Pass | Action::Held => {}
        }
    }

    /// Service name → traffic (services that saw any).
    pub fn by_name(&self) -> BTreeMap<String, SvcTraffic> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.is_zero())
            .map(|(i, c)| (self.tables.services[i].name.clone(), *c))
            .collect()
    }
}

/// A snapshot of a worker's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerStats {
    pub worker: usize,
    pub generation: u64,
    pub packets: u64,
    pub forwarded: u64,
    pub passed: u64,
    /// Frames lost, every reason: the pipeline's drops, the I/O's losses (no TX socket, a
    /// failed transmit, hand-off) and the frames of panicked bursts.
    pub dropped: u64,
    pub held: u64,
    /// Drop reason name → count (non-zero only), every reason of [`crate::DropReason`].
    pub drops: BTreeMap<String, u64>,
    pub rst_sent: u64,
    /// New flows to a service without a usable endpoint answered with a reset or an ICMP port
    /// unreachable (`crate::reject`), and those the rate limit kept from an answer.
    #[serde(default)]
    pub rejects_sent: u64,
    #[serde(default)]
    pub rejects_suppressed: u64,
    /// Packets larger than their egress interface's MTU answered with an ICMP
    /// fragmentation-needed / ICMPv6 packet-too-big (`crate::mtu`; each also dropped
    /// `frag-needed`), and those the rate limit kept from an answer.
    #[serde(default)]
    pub mtu_icmp_sent: u64,
    #[serde(default)]
    pub mtu_icmp_suppressed: u64,
    /// Partial TCP/UDP checksums completed (frames from senders with TX checksum offload on).
    #[serde(default)]
    pub csum_completed: u64,
    /// Partial TCP/UDP checksums passed on for the kernel to finish (AF_XDP TX metadata,
    /// `io.afxdp.tx_checksum_offload`).
    #[serde(default)]
    pub csum_offloaded: u64,
    pub ct_entries: usize,
    pub ct_capacity: usize,
    pub ct_created: u64,
    pub ct_expired: u64,
    pub ct_evicted: u64,
    pub ct_full_drops: u64,
    /// Turns whose processing panicked (caught: the worker went on).
    #[serde(default)]
    pub worker_panics: u64,
    /// Frames of the bursts that panicked (recycled, not forwarded).
    #[serde(default)]
    pub panic_dropped: u64,
    pub io: IoStats,
    /// Flow events recorded and lost (queue full) by this worker.
    #[serde(default)]
    pub events: EventCounts,
    /// Per-service counters, by index (named by the control thread: `services` of `Status`).
    #[serde(skip)]
    pub services: Option<ServiceCounts>,
}
