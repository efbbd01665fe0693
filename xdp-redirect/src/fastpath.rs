//! The TC fast path (`bpf/fastpath.c`, built by `build.rs`): loads it, attaches it to the
//! ingress of pod interfaces (tcx links), points it at the slow-path veth, reads its counters
//! and hands out [`FlowTable`]s on its `np_flows` map.
//!
//! The program reads the XDP program's `host_addrs`, `nodeports`, `snat_addrs` and `frags`
//! maps (the same decision of "ours or the kernel's" as the XDP program makes on a pod
//! interface): [`FastPath::load`] takes them from the [`Loader`], so both programs share one
//! copy of that state.
//!
//! Nothing here runs on the packet path except [`FlowTable`]'s batched calls.

use std::{collections::BTreeMap, fmt, io};

use crate::{flows::FlowTable, loader::Loader};

/// `io.afxdp.fast_path_flows`'s default: flow directions the map holds.
pub const DEFAULT_MAX_FLOWS: u32 = 262_144;

/// How to load the fast path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastPathOptions {
    /// `max_entries` of `np_flows` (flow directions; the map is preallocated).
    pub max_flows: u32,
}

impl Default for FastPathOptions {
    fn default() -> Self {
        FastPathOptions {
            max_flows: DEFAULT_MAX_FLOWS,
        }
    }
}

/// Loading, attaching or configuring the fast path failed.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// Loading the object, sharing the XDP program's maps or the verifier failed.
    #[error("failed to load the TC fast path: {0}")]
    Load(String),
    /// Attaching to or detaching from an interface failed.
    #[error("TC fast path on ifindex {ifindex}: {reason}")]
    Attach {
        /// The interface.
        ifindex: u32,
        /// Cause.
        reason: String,
    },
    /// A map read or write failed.
    #[error("TC fast path map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// One exit of the TC program; index into its per-CPU `fp_counters` map (`enum np_fp_counter`
/// of `bpf/fastpath.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FastPathCounter {
    /// Segments forwarded by the fast path (a GSO skb counts its segments).
    FastFwdPackets,
    /// Bytes forwarded by the fast path (skb length).
    FastFwdBytes,
    /// Skbs forwarded that were GSO (more than one segment): TSO stayed on.
    FastGsoSkbs,
    /// Skbs sent to the worker through the slow-path veth.
    SlowPath,
    /// Skbs for the slow path that were GSO (too large for it): dropped.
    SlowGsoDrop,
    /// Not ours: handed to the kernel (`TC_ACT_OK`).
    Pass,
    /// A redirect helper refused (the kernel dropped the skb).
    RedirectError,
    /// Ours, but no slow path configured yet ([`FastPath::set_slow_path`]): dropped.
    SlowUnset,
    /// A GSO skb carrying FIN of a flow in the map: forwarded (the slow path cannot take it).
    FastGsoFin,
    /// A packet rewrite helper failed (the skb was dropped).
    RewriteError,
}

impl FastPathCounter {
    /// All counters, in map index order.
    pub const ALL: [FastPathCounter; 10] = [
        FastPathCounter::FastFwdPackets,
        FastPathCounter::FastFwdBytes,
        FastPathCounter::FastGsoSkbs,
        FastPathCounter::SlowPath,
        FastPathCounter::SlowGsoDrop,
        FastPathCounter::Pass,
        FastPathCounter::RedirectError,
        FastPathCounter::SlowUnset,
        FastPathCounter::FastGsoFin,
        FastPathCounter::RewriteError,
    ];

    /// Index in `fp_counters`.
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Stable snake_case name (metrics label).
    pub const fn name(self) -> &'static str {
        match self {
            FastPathCounter::FastFwdPackets => "fast_fwd_packets",
            FastPathCounter::FastFwdBytes => "fast_fwd_bytes",
            FastPathCounter::FastGsoSkbs => "fast_gso_skbs",
            FastPathCounter::SlowPath => "slow_path",
            FastPathCounter::SlowGsoDrop => "slow_gso_drop",
            FastPathCounter::Pass => "pass",
            FastPathCounter::RedirectError => "redirect_error",
            FastPathCounter::SlowUnset => "slow_unset",
            FastPathCounter::FastGsoFin => "fast_gso_fin",
            FastPathCounter::RewriteError => "rewrite_error",
        }
    }
}

/// The TC program's counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastPathCounters {
    values: [u64; FastPathCounter::ALL.len()],
}

impl FastPathCounters {
    /// One counter.
    pub fn get(&self, c: FastPathCounter) -> u64 {
        self.values[c.index() as usize]
    }

    /// (name, value) of every counter, in map order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FastPathCounter::ALL
            .iter()
            .map(|&c| (c.name(), self.get(c)))
    }
}

/// The loaded TC program, its attachments and its maps. Dropping it detaches the program from
/// every interface it attached to (the links are this process's).
pub struct FastPath {
    attached: BTreeMap<u32, ()>,
}

impl fmt::Debug for FastPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastPath")
            .field("attached", &self.attached.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl FastPath {
    /// Loads `fastpath.o` with `np_flows` of `opts.max_flows` entries, sharing `xdp`'s
    /// `host_addrs`, `nodeports`, `snat_addrs` and `frags`. Nothing is attached yet; until
    /// [`FastPath::set_slow_path`], traffic that needs the worker is dropped (`slow_unset`).
    pub fn load(xdp: &Loader, opts: &FastPathOptions) -> Result<FastPath, FastPathError> {
        let _ = (xdp, opts);
        Err(FastPathError::Load("not implemented yet".into()))
    }

    /// Attaches the program to `ifindex`'s TC ingress (a tcx link; an earlier attachment of
    /// this `FastPath` is kept: idempotent).
    pub fn attach(&mut self, ifindex: u32) -> Result<(), FastPathError> {
        Err(FastPathError::Attach {
            ifindex,
            reason: "not implemented yet".into(),
        })
    }

    /// Detaches the program from `ifindex` (not attached: nothing to do).
    pub fn detach(&mut self, ifindex: u32) -> Result<(), FastPathError> {
        self.attached.remove(&ifindex);
        Ok(())
    }

    /// Interfaces the program is attached to.
    pub fn attached(&self) -> Vec<u32> {
        self.attached.keys().copied().collect()
    }

    /// Where slow-path traffic goes: `bpf_redirect(tx_ifindex, 0)` (the egress of `npslow0`).
    pub fn set_slow_path(&mut self, tx_ifindex: u32) -> Result<(), FastPathError> {
        let _ = tx_ifindex;
        Err(FastPathError::Load("not implemented yet".into()))
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<FastPathCounters, FastPathError> {
        Err(FastPathError::Load("not implemented yet".into()))
    }

    /// A handle on `np_flows` with its own file descriptor (one per worker).
    pub fn flows(&self) -> io::Result<FlowTable> {
        Err(io::Error::other("not implemented yet"))
    }
}
