//! The TC fast path (`bpf/fastpath.c`, built by `build.rs`): loads it, attaches it to the
//! ingress of pod interfaces (tcx links), points it at the slow-path veth, reads its counters
//! and hands out [`FlowTable`]s on its `np_flows` map.
//!
//! The program reads the XDP program's `host_addrs`, `nodeports`, `snat_addrs` and `frags`
//! maps (the same decision of "ours or the kernel's" as the XDP program makes on a pod
//! interface): [`FastPath::load`] takes them from the [`Loader`], so both programs share one
//! copy of that state.
//!
//! Lifetime: everything is this process's. The links are not pinned (dropping the
//! [`FastPath`], or the process ending, detaches the program from every interface), and neither
//! is `np_flows`: each load starts with an empty map, so a restarted daemon re-offers its flows
//! (the "flush at start" of the design, by construction), and a clean exit leaves no pin behind.
//! The scratch bpffs used to share the XDP maps is unmounted before [`FastPath::load`] returns.
//!
//! Nothing here runs on the packet path except [`FlowTable`]'s batched calls.

use std::{
    collections::BTreeMap,
    fmt, io,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    include_bytes_aligned,
    maps::{Array, Map, MapData, MapError, PerCpuArray},
    programs::{
        links::Link,
        tc::{self, SchedClassifierLink, TcAttachOptions},
        SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use log::{info, warn};
use nix::mount::{MntFlags, MsFlags};

use crate::{flows::FlowTable, loader::Loader, sys};

/// `io.afxdp.fast_path_flows`'s default: flow directions the map holds. The map is
/// preallocated: 200 bytes of kernel memory per entry, 52 MB at this default (bpftool's
/// `memlock` of the map: 52 430 080 bytes on Linux 6.18), whatever the traffic.
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
    /// Skbs for the slow path that were GSO, while it does not take them
    /// ([`FastPath::set_slow_path_gso`] `false`): dropped.
    SlowGsoDrop,
    /// Not ours: handed to the kernel (`TC_ACT_OK`).
    Pass,
    /// A redirect helper refused (the kernel dropped the skb).
    RedirectError,
    /// Ours, but no slow path configured yet ([`FastPath::set_slow_path`]): dropped.
    SlowUnset,
    /// A GSO skb carrying FIN of a flow in the map, while the slow path does not take GSO
    /// skbs ([`FastPath::set_slow_path_gso`] `false`): forwarded.
    FastGsoFin,
    /// A packet rewrite helper failed (the skb was dropped).
    RewriteError,
    /// GSO skbs sent to the slow path whole, for npslow0's transmit path to segment
    /// ([`FastPath::set_slow_path_gso`]).
    SlowGsoSkbs,
}

impl FastPathCounter {
    /// All counters, in map index order.
    pub const ALL: [FastPathCounter; 11] = [
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
        FastPathCounter::SlowGsoSkbs,
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
            FastPathCounter::SlowGsoSkbs => "slow_gso_skbs",
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
/// every interface it attached to (the links are this process's: a daemon that dies leaves no
/// program behind either).
pub struct FastPath {
    /// Keeps the program loaded.
    ebpf: Ebpf,
    /// `np_flows`'s own handle (FlowTables get duplicates of its descriptor).
    flows: MapData,
    config: Map,
    /// What `fp_config` holds: (slow_ifindex, slow_gso).
    slow: [u32; 2],
    counters: Map,
    attached: BTreeMap<u32, Attached>,
}

/// One interface's attachment.
#[derive(Debug)]
enum Attached {
    /// A tcx link: `BPF_LINK_DETACH` detaches it at once, closing it detaches it too.
    Tcx(OwnedFd),
    /// A clsact filter (kernels without tcx): its detach deletes the filter.
    Clsact(SchedClassifierLink),
}

impl Attached {
    fn detach(self) -> Result<(), String> {
        match self {
            Attached::Tcx(fd) => sys::link_detach(fd.as_fd()).map_err(|e| e.to_string()),
            Attached::Clsact(l) => l.detach().map_err(|e| e.to_string()),
        }
    }
}

impl fmt::Debug for FastPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastPath")
            .field("attached", &self.attached.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.bpf.o"));

/// Name of the TC program in the object.
pub const PROGRAM_NAME: &str = "np_fastpath";

/// The XDP program's maps the TC program reads.
const SHARED_MAPS: [&str; 4] = ["host_addrs", "nodeports", "snat_addrs", "frags"];

static SCRATCH_SEQ: AtomicU32 = AtomicU32::new(0);

/// A bpffs mounted at a private directory for the duration of a load: the XDP program's maps
/// are pinned there so that the TC object's loader opens them instead of creating its own.
/// Unmounted (the pins vanish with it) on drop.
struct ScratchBpffs(PathBuf);

impl ScratchBpffs {
    fn mount() -> Result<ScratchBpffs, String> {
        let dir = std::env::temp_dir().join(format!(
            "nodeplane-fastpath-{}-{}",
            std::process::id(),
            SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if let Err(e) = nix::mount::mount(
            Some("bpf"),
            &dir,
            Some("bpf"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        ) {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!("cannot mount a bpffs at {}: {e}", dir.display()));
        }
        Ok(ScratchBpffs(dir))
    }
}

impl Drop for ScratchBpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn load_err(what: &str) -> impl Fn(String) -> FastPathError + '_ {
    move |e| FastPathError::Load(format!("{what}: {e}"))
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> FastPathError {
    move |e| FastPathError::Map {
        map,
        source: io::Error::other(e.to_string()),
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, FastPathError> {
    ebpf.take_map(name)
        .ok_or_else(|| FastPathError::Load(format!("the object has no map {name}")))
}

impl FastPath {
    /// Loads `fastpath.o` with `np_flows` of `opts.max_flows` entries, sharing `xdp`'s
    /// `host_addrs`, `nodeports`, `snat_addrs` and `frags` (pinned for the load in a scratch
    /// bpffs, mounted and unmounted here: needs CAP_SYS_ADMIN). Nothing is attached yet; until
    /// [`FastPath::set_slow_path`], traffic that needs the worker is dropped (`slow_unset`).
    pub fn load(xdp: &Loader, opts: &FastPathOptions) -> Result<FastPath, FastPathError> {
        if opts.max_flows == 0 {
            return Err(FastPathError::Load(
                "io.afxdp.fast_path_flows must be at least 1".into(),
            ));
        }
        let scratch = ScratchBpffs::mount().map_err(load_err("sharing the XDP maps"))?;
        let paths: Vec<(&str, PathBuf)> = SHARED_MAPS
            .iter()
            .map(|&n| (n, scratch.0.join(n)))
            .collect();
        for (name, path) in &paths {
            xdp.pin_map(name, path)
                .map_err(load_err("sharing the XDP maps"))?;
        }
        let mut loader = EbpfLoader::new();
        loader.map_max_entries("np_flows", opts.max_flows);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| FastPathError::Load(format!("the TC object: {e}")))?;
        drop(scratch);
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| FastPathError::Load(format!("no program {PROGRAM_NAME}")))?;
        prog.load()
            .map_err(|e| FastPathError::Load(format!("program {PROGRAM_NAME}: {e}")))?;
        let Map::HashMap(flows) = take_map(&mut ebpf, "np_flows")? else {
            return Err(FastPathError::Load("np_flows is not a hash map".into()));
        };
        let config = take_map(&mut ebpf, "fp_config")?;
        let counters = take_map(&mut ebpf, "fp_counters")?;
        let mut fp = FastPath {
            ebpf,
            flows,
            config,
            slow: [0, 0],
            counters,
            attached: BTreeMap::new(),
        };
        fp.set_slow_path_gso(true)?;
        Ok(fp)
    }

    fn prog(&mut self) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .expect("checked in load")
    }

    /// Attaches the program to `ifindex`'s TC ingress, as a tcx link (Linux >= 6.6; on older
    /// kernels a clsact filter named `np_fastpath`, replacing one left by an earlier process).
    /// Already attached by this `FastPath`: nothing to do. The interface is resolved in the
    /// calling thread's network namespace.
    pub fn attach(&mut self, ifindex: u32) -> Result<(), FastPathError> {
        if self.attached.contains_key(&ifindex) {
            return Ok(());
        }
        let err = |reason: String| FastPathError::Attach { ifindex, reason };
        let name = nix::net::if_::if_indextoname(ifindex)
            .map_err(|e| err(format!("no such interface: {e}")))?
            .into_string()
            .map_err(|_| err("interface name is not UTF-8".into()))?;
        let prog_fd = self
            .prog()
            .fd()
            .map_err(|e| err(e.to_string()))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| err(e.to_string()))?;
        let attached = match sys::tcx_ingress_link(prog_fd.as_fd(), ifindex) {
            Ok(link) => Attached::Tcx(link),
            Err(tcx_err) => {
                // No tcx (Linux < 6.6): a clsact filter; one of an earlier process goes first.
                match tc::qdisc_add_clsact(&name) {
                    Ok(()) => {}
                    Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(err(format!(
                            "tcx: {tcx_err}; clsact: cannot add the qdisc: {e}"
                        )))
                    }
                }
                let _ = tc::qdisc_detach_program(&name, TcAttachType::Ingress, PROGRAM_NAME);
                let id = self
                    .prog()
                    .attach_with_options(
                        &name,
                        TcAttachType::Ingress,
                        TcAttachOptions::Netlink(tc::NlOptions::default()),
                    )
                    .map_err(|e| err(format!("tcx: {tcx_err}; clsact: {e}")))?;
                Attached::Clsact(self.prog().take_link(id).map_err(|e| err(e.to_string()))?)
            }
        };
        info!(
            "TC fast path attached to {name} (ifindex {ifindex}, {})",
            match attached {
                Attached::Tcx(_) => "tcx",
                Attached::Clsact(_) => "clsact",
            }
        );
        self.attached.insert(ifindex, attached);
        Ok(())
    }

    /// Detaches the program from `ifindex` (not attached: nothing to do).
    pub fn detach(&mut self, ifindex: u32) -> Result<(), FastPathError> {
        let Some(a) = self.attached.remove(&ifindex) else {
            return Ok(());
        };
        a.detach().map_err(|e| FastPathError::Attach {
            ifindex,
            reason: format!("detach: {e}"),
        })?;
        info!("TC fast path detached from ifindex {ifindex}");
        Ok(())
    }

    /// Interfaces the program is attached to.
    pub fn attached(&self) -> Vec<u32> {
        self.attached.keys().copied().collect()
    }

    /// Whether the attachment of `ifindex` is a tcx link (else a clsact filter).
    pub fn is_tcx(&self, ifindex: u32) -> Option<bool> {
        self.attached
            .get(&ifindex)
            .map(|a| matches!(a, Attached::Tcx(_)))
    }

    /// Where slow-path traffic goes: `bpf_redirect(tx_ifindex, 0)` (the egress of `npslow0`).
    /// 0: nowhere (such traffic is dropped, `slow_unset`).
    pub fn set_slow_path(&mut self, tx_ifindex: u32) -> Result<(), FastPathError> {
        self.write_config([tx_ifindex, self.slow[1]])
    }

    /// Whether GSO skbs that need the worker go to the slow path whole (`true`, the default),
    /// for `npslow0`'s transmit path to cut them into MTU-sized segments, or are dropped
    /// (`false`: `slow_gso_drop`; TCP resends them, after a retransmission timeout). `true`
    /// needs `npslow0` to segment: to have no TSO/GSO features, which the kernel arranges
    /// itself while `npslow1` has a *native* XDP program (veth clears the peer's GSO features
    /// then); with a generic XDP program there (or none), say `false`: a whole GSO skb would
    /// reach it and be lost uncounted.
    pub fn set_slow_path_gso(&mut self, segments: bool) -> Result<(), FastPathError> {
        self.write_config([self.slow[0], u32::from(segments)])
    }

    fn write_config(&mut self, v: [u32; 2]) -> Result<(), FastPathError> {
        let mut m: Array<&mut MapData, [u32; 2]> =
            Array::try_from(&mut self.config).map_err(map_err("fp_config"))?;
        m.set(0, v, 0).map_err(map_err("fp_config"))?;
        self.slow = v;
        Ok(())
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<FastPathCounters, FastPathError> {
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(&self.counters).map_err(map_err("fp_counters"))?;
        let mut out = FastPathCounters::default();
        for c in FastPathCounter::ALL {
            let per_cpu = arr.get(&c.index(), 0).map_err(map_err("fp_counters"))?;
            out.values[c.index() as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// A handle on `np_flows` with its own file descriptor (one per worker).
    pub fn flows(&self) -> io::Result<FlowTable> {
        FlowTable::from_fd(self.flows.fd().as_fd().try_clone_to_owned()?)
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        for (ifindex, a) in std::mem::take(&mut self.attached) {
            if let Err(e) = a.detach() {
                warn!("TC fast path: cannot detach from ifindex {ifindex}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_match_fastpath_c() {
        const SRC: &str = include_str!("../bpf/fastpath.c");
        let mut names = Vec::new();
        for line in SRC.lines() {
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("NP_FP_") {
                let (name, value) = rest.split_once(" = ").expect("NP_FP_X = N,");
                let value: u32 = value.trim_end_matches(',').parse().unwrap();
                names.push((name.to_ascii_lowercase(), value));
            }
        }
        let max = names.pop().expect("NP_FP_COUNTER_MAX last");
        assert_eq!(
            max,
            ("counter_max".to_string(), FastPathCounter::ALL.len() as u32)
        );
        assert_eq!(names.len(), FastPathCounter::ALL.len());
        for (c, (name, value)) in FastPathCounter::ALL.iter().zip(&names) {
            assert_eq!(c.name(), name);
            assert_eq!(c.index(), *value);
        }
    }
}
