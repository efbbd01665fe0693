//! Loads `bpf/redirect.c` (built by `build.rs`) with aya, attaches it to interfaces and writes
//! its maps.
//!
//! One [`Loader`] owns the XDP side of the node: the loaded program, every attachment, the
//! XSKMAP and the steering maps. Dropping it (or the process dying) detaches the program from
//! every interface: attachments are BPF links owned by the process, nothing is pinned.
//!
//! Interface names are resolved in the network namespace of the *calling thread*, as aya and
//! libxdp do.
//!
//! XSKMAP layout: each attached interface reserves a contiguous range of slots, one per queue
//! (`xsk_slots[ifindex] = {base, queues}`); the program redirects to `base + rx_queue_index`.
//! One program and one set of maps serve all interfaces, so the steering maps are written once.

use std::{
    collections::BTreeMap,
    fmt,
    os::fd::{AsRawFd, RawFd},
};

use aya::{
    include_bytes_aligned,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, XskMap},
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError,
};
use log::{info, warn};

use crate::maps::{limits, ConfigError, Counter, Counters, SteeringConfig, SteeringEntries};

static PROGRAM_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));

/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "np_redirect";

/// How the program runs on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// Native: run by the driver before an skb exists (veth has it).
    Driver,
    /// Generic: run by the kernel stack on the skb; works on every interface, slower.
    Skb,
}

impl AttachMode {
    fn aya(self) -> XdpMode {
        match self {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Driver => "native",
            AttachMode::Skb => "generic",
        })
    }
}

/// Loading the XDP object failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The object could not be parsed or its maps created.
    #[error("failed to load the XDP object: {source}")]
    Object {
        /// Cause.
        #[source]
        source: EbpfError,
    },
    /// The object lacks a program or map this loader expects (build mismatch).
    #[error("the XDP object has no {what} `{name}`")]
    Missing {
        /// "program" or "map".
        what: &'static str,
        /// Its name.
        name: &'static str,
    },
    /// The verifier or the kernel refused the program.
    #[error("failed to load XDP program {PROGRAM_NAME} into the kernel: {source}")]
    Program {
        /// Cause.
        #[source]
        source: ProgramError,
    },
}

/// Attaching to or detaching from an interface failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// No interface of that name in the calling thread's network namespace.
    #[error("failed to attach XDP to {iface}: no such interface in this network namespace")]
    NoSuchInterface {
        /// Interface name.
        iface: String,
    },
    /// The program is already attached there by this loader.
    #[error("failed to attach XDP to {iface}: already attached")]
    AlreadyAttached {
        /// Interface name.
        iface: String,
    },
    /// Queue count out of range, or not enough free XSKMAP slots.
    #[error("failed to attach XDP to {iface}: cannot reserve {queues} XSKMAP slots ({free} of {max} free)")]
    NoSlots {
        /// Interface name.
        iface: String,
        /// Queues requested.
        queues: u32,
        /// Contiguous free slots available.
        free: u32,
        /// Map size.
        max: u32,
    },
    /// The kernel refused the attachment.
    #[error("failed to attach XDP to {iface} in {mode} mode: {source}")]
    Attach {
        /// Interface name.
        iface: String,
        /// Mode tried last.
        mode: AttachMode,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// Writing the interface's slot range failed (the attachment was undone).
    #[error("failed to attach XDP to {iface}: cannot write its XSKMAP slots: {source}")]
    Map {
        /// Interface name.
        iface: String,
        /// Cause.
        #[source]
        source: MapError,
    },
    /// Not attached by this loader.
    #[error("failed to detach XDP from {iface}: not attached by this loader")]
    NotAttached {
        /// Interface name.
        iface: String,
    },
    /// The kernel refused the detach.
    #[error("failed to detach XDP from {iface}: {source}")]
    Detach {
        /// Interface name.
        iface: String,
        /// Cause.
        #[source]
        source: ProgramError,
    },
}

/// Registering an AF_XDP socket in the XSKMAP failed.
#[derive(Debug, thiserror::Error)]
pub enum XskRegisterError {
    /// XDP is not attached to the socket's interface by this loader.
    #[error(
        "failed to register AF_XDP socket of {iface} queue {queue}: XDP is not attached to {iface}"
    )]
    NotAttached {
        /// Interface name.
        iface: String,
        /// Queue id.
        queue: u32,
    },
    /// The queue is beyond the range reserved at attach time.
    #[error("failed to register AF_XDP socket of {iface} queue {queue}: only {queues} queues were reserved at attach")]
    QueueOutOfRange {
        /// Interface name.
        iface: String,
        /// Queue id.
        queue: u32,
        /// Queues reserved.
        queues: u32,
    },
    /// The map update failed.
    #[error("failed to register AF_XDP socket of {iface} queue {queue}: {source}")]
    Map {
        /// Interface name.
        iface: String,
        /// Queue id.
        queue: u32,
        /// Cause.
        #[source]
        source: MapError,
    },
}

/// Updating the steering maps failed.
#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    /// The configuration was rejected before anything was written.
    #[error("rejected steering config: {0}")]
    Invalid(#[from] ConfigError),
    /// A map update failed; the new entries were rolled back and the previous configuration
    /// is still in force.
    #[error("failed to update XDP map {map}: {source}; previous steering config kept")]
    RolledBack {
        /// Map name.
        map: &'static str,
        /// Cause.
        #[source]
        source: MapError,
    },
    /// A map update failed and so did the rollback: the maps hold a superset of the old and
    /// new entries (nothing is ever missing that either configuration steers).
    #[error("failed to update XDP map {map}: {source}; rollback also failed, maps hold old and new entries")]
    Partial {
        /// Map name.
        map: &'static str,
        /// Cause.
        #[source]
        source: MapError,
    },
}

/// Reading counters failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to read XDP counter {counter}: {source}")]
pub struct CounterError {
    /// Counter name.
    pub counter: &'static str,
    /// Cause.
    #[source]
    pub source: MapError,
}

#[derive(Debug)]
struct Attachment {
    ifindex: u32,
    mode: AttachMode,
    link: aya::programs::xdp::XdpLinkId,
    base: u32,
    queues: u32,
}

/// An interface the program is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedInterface {
    /// Interface name.
    pub iface: String,
    /// Interface index (in the namespace it was attached in).
    pub ifindex: u32,
    /// Mode in use.
    pub mode: AttachMode,
    /// Queues reserved in the XSKMAP.
    pub queues: u32,
}

/// Owner of the XDP program, its attachments and maps. See the module docs.
pub struct Loader {
    ebpf: Ebpf,
    attached: BTreeMap<String, Attachment>,
    /// `slot_used[i]`: XSKMAP slot i is reserved by an attachment.
    slot_used: Vec<bool>,
    /// What the steering maps hold (as far as this loader knows).
    current: SteeringEntries,
}

impl fmt::Debug for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("attached", &self.attached)
            .field("steering_entries", &self.current.len())
            .finish_non_exhaustive()
    }
}

fn ifindex_of(iface: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(iface)
        .ok()
        .filter(|&i| i != 0)
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> (&'static str, MapError) {
    move |e| (map, e)
}

impl Loader {
    /// Loads the program and creates its maps (nothing is attached yet).
    pub fn load() -> Result<Self, LoadError> {
        let mut ebpf = Ebpf::load(PROGRAM_OBJECT).map_err(|source| LoadError::Object { source })?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::Missing {
                what: "program",
                name: PROGRAM_NAME,
            })?;
        prog.load()
            .map_err(|source| LoadError::Program { source })?;
        for name in [
            "xsks",
            "xsk_slots",
            "pod_ifaces",
            "steer_v4",
            "steer_v6",
            "host_addrs",
            "nodeports",
            "counters",
            "config",
            "frags",
        ] {
            if ebpf.map(name).is_none() {
                return Err(LoadError::Missing { what: "map", name });
            }
        }
        Ok(Loader {
            ebpf,
            attached: BTreeMap::new(),
            slot_used: vec![false; limits::MAX_XSKS as usize],
            current: SteeringEntries::default(),
        })
    }

    fn prog(&mut self) -> &mut Xdp {
        // Checked in `load`.
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .expect("program checked at load")
    }

    fn map(&mut self, name: &'static str) -> &mut aya::maps::Map {
        self.ebpf.map_mut(name).expect("maps checked at load")
    }

    /// Attaches in native mode, falling back to generic mode (logged) when the driver refuses.
    /// Reserves `queues` XSKMAP slots for the interface's queues `0..queues`.
    pub fn attach(&mut self, iface: &str, queues: u32) -> Result<AttachMode, AttachError> {
        match self.attach_with_mode(iface, queues, AttachMode::Driver) {
            Ok(()) => Ok(AttachMode::Driver),
            Err(AttachError::Attach { source, .. }) => {
                warn!(
                    "native XDP on {iface} failed ({source}); falling back to generic (SKB) mode"
                );
                self.attach_with_mode(iface, queues, AttachMode::Skb)?;
                Ok(AttachMode::Skb)
            }
            Err(e) => Err(e),
        }
    }

    /// Attaches in exactly `mode` (no fallback).
    pub fn attach_with_mode(
        &mut self,
        iface: &str,
        queues: u32,
        mode: AttachMode,
    ) -> Result<(), AttachError> {
        if self.attached.contains_key(iface) {
            return Err(AttachError::AlreadyAttached {
                iface: iface.to_owned(),
            });
        }
        let ifindex = ifindex_of(iface).ok_or_else(|| AttachError::NoSuchInterface {
            iface: iface.to_owned(),
        })?;
        let base = self
            .find_slots(queues)
            .ok_or_else(|| AttachError::NoSlots {
                iface: iface.to_owned(),
                queues,
                free: self.largest_free_run(),
                max: limits::MAX_XSKS,
            })?;
        // Slots first: the program reads them as soon as it is attached.
        {
            let mut slots: HashMap<&mut MapData, u32, [u32; 2]> =
                HashMap::try_from(self.map("xsk_slots")).map_err(|source| AttachError::Map {
                    iface: iface.to_owned(),
                    source,
                })?;
            slots
                .insert(ifindex, [base, queues], 0)
                .map_err(|source| AttachError::Map {
                    iface: iface.to_owned(),
                    source,
                })?;
        }
        let link = match self.prog().attach_to_if_index(ifindex, mode.aya()) {
            Ok(link) => link,
            Err(source) => {
                self.remove_slots(ifindex);
                return Err(AttachError::Attach {
                    iface: iface.to_owned(),
                    mode,
                    source,
                });
            }
        };
        for s in &mut self.slot_used[base as usize..(base + queues) as usize] {
            *s = true;
        }
        info!("XDP attached to {iface} (ifindex {ifindex}, {mode} mode, {queues} queues)");
        self.attached.insert(
            iface.to_owned(),
            Attachment {
                ifindex,
                mode,
                link,
                base,
                queues,
            },
        );
        Ok(())
    }

    fn remove_slots(&mut self, ifindex: u32) {
        if let Ok(mut slots) =
            HashMap::<&mut MapData, u32, [u32; 2]>::try_from(self.map("xsk_slots"))
        {
            let _ = slots.remove(&ifindex);
        }
    }

    fn find_slots(&self, queues: u32) -> Option<u32> {
        if queues == 0 || queues > limits::MAX_XSKS {
            return None;
        }
        let q = queues as usize;
        (0..=self.slot_used.len() - q)
            .find(|&b| self.slot_used[b..b + q].iter().all(|u| !u))
            .map(|b| b as u32)
    }

    fn largest_free_run(&self) -> u32 {
        let (mut best, mut run) = (0u32, 0u32);
        for &u in &self.slot_used {
            run = if u { 0 } else { run + 1 };
            best = best.max(run);
        }
        best
    }

    /// Detaches from one interface and releases its XSKMAP slots.
    pub fn detach(&mut self, iface: &str) -> Result<(), AttachError> {
        let a = self
            .attached
            .remove(iface)
            .ok_or_else(|| AttachError::NotAttached {
                iface: iface.to_owned(),
            })?;
        let res = self.prog().detach(a.link);
        self.remove_slots(a.ifindex);
        if let Ok(mut xsks) = XskMap::try_from(self.map("xsks")) {
            for slot in a.base..a.base + a.queues {
                let _ = xsks.unset(slot);
            }
        }
        for s in &mut self.slot_used[a.base as usize..(a.base + a.queues) as usize] {
            *s = false;
        }
        res.map_err(|source| AttachError::Detach {
            iface: iface.to_owned(),
            source,
        })?;
        info!("XDP detached from {iface}");
        Ok(())
    }

    /// Interfaces the program is attached to.
    pub fn attached(&self) -> Vec<AttachedInterface> {
        self.attached
            .iter()
            .map(|(iface, a)| AttachedInterface {
                iface: iface.clone(),
                ifindex: a.ifindex,
                mode: a.mode,
                queues: a.queues,
            })
            .collect()
    }

    /// Puts an AF_XDP socket (bound to `iface` queue `queue`) into the XSKMAP, so steered
    /// frames from that queue reach it. The kernel removes the entry when the socket closes.
    pub fn register_xsk(
        &mut self,
        iface: &str,
        queue: u32,
        socket_fd: impl AsRawFd,
    ) -> Result<(), XskRegisterError> {
        let a = self
            .attached
            .get(iface)
            .ok_or_else(|| XskRegisterError::NotAttached {
                iface: iface.to_owned(),
                queue,
            })?;
        if queue >= a.queues {
            return Err(XskRegisterError::QueueOutOfRange {
                iface: iface.to_owned(),
                queue,
                queues: a.queues,
            });
        }
        let slot = a.base + queue;
        let mut xsks =
            XskMap::try_from(self.map("xsks")).map_err(|source| XskRegisterError::Map {
                iface: iface.to_owned(),
                queue,
                source,
            })?;
        xsks.set(slot, socket_fd, 0)
            .map_err(|source| XskRegisterError::Map {
                iface: iface.to_owned(),
                queue,
                source,
            })
    }

    /// Registers sockets given as (interface, queue, socket file descriptor): every socket of
    /// a worker (`nodeplane_dataplane::afxdp::XskWorker::registrations`).
    pub fn register_sockets<'a>(
        &mut self,
        sockets: impl IntoIterator<Item = (&'a str, u32, RawFd)>,
    ) -> Result<(), XskRegisterError> {
        for (iface, queue, fd) in sockets {
            self.register_xsk(iface, queue, fd)?;
        }
        Ok(())
    }

    /// Replaces the steering maps' contents with `cfg`: inserts every new entry first, then
    /// removes the stale ones, so an entry present in both the old and the new configuration
    /// is never missing, and a destination of the new configuration is steered as soon as its
    /// entry is in. On a failed insert the new entries are rolled back and the old
    /// configuration stays in force. Returns the number of entries written and removed.
    pub fn apply(&mut self, cfg: &SteeringConfig) -> Result<(usize, usize), SteeringError> {
        let new = cfg.encode()?;
        let old = std::mem::take(&mut self.current);
        if let Err((map, source)) = self.insert_all(&new) {
            // Roll back: remove what is new (not in old); re-insert old in case an update
            // overwrote nothing (inserts are upserts of identical values, so old is intact).
            let added = new.stale(&old);
            return match self.remove_all(&added) {
                Ok(()) => {
                    self.current = old;
                    Err(SteeringError::RolledBack { map, source })
                }
                Err(_) => {
                    self.current = old.union(&new);
                    Err(SteeringError::Partial { map, source })
                }
            };
        }
        let stale = old.stale(&new);
        if let Err((map, source)) = self.remove_all(&stale) {
            self.current = old.union(&new);
            return Err(SteeringError::Partial { map, source });
        }
        let written = new.len();
        self.current = new;
        Ok((written, stale.len()))
    }

    /// The steering entries this loader has written.
    pub fn steering(&self) -> &SteeringEntries {
        &self.current
    }

    fn insert_all(&mut self, e: &SteeringEntries) -> Result<(), (&'static str, MapError)> {
        {
            let mut m: HashMap<&mut MapData, u32, u32> =
                HashMap::try_from(self.map("pod_ifaces")).map_err(map_err("pod_ifaces"))?;
            for &i in &e.pods {
                m.insert(i, 1, 0).map_err(map_err("pod_ifaces"))?;
            }
        }
        {
            let mut m: LpmTrie<&mut MapData, [u8; 4], u32> =
                LpmTrie::try_from(self.map("steer_v4")).map_err(map_err("steer_v4"))?;
            for &(len, a) in &e.v4 {
                m.insert(&Key::new(len.into(), a), 1, 0)
                    .map_err(map_err("steer_v4"))?;
            }
        }
        {
            let mut m: LpmTrie<&mut MapData, [u8; 16], u32> =
                LpmTrie::try_from(self.map("steer_v6")).map_err(map_err("steer_v6"))?;
            for &(len, a) in &e.v6 {
                m.insert(&Key::new(len.into(), a), 1, 0)
                    .map_err(map_err("steer_v6"))?;
            }
        }
        {
            let mut m: HashMap<&mut MapData, [u8; 16], u32> =
                HashMap::try_from(self.map("host_addrs")).map_err(map_err("host_addrs"))?;
            for a in &e.hosts {
                m.insert(a, 1, 0).map_err(map_err("host_addrs"))?;
            }
        }
        {
            let mut m: HashMap<&mut MapData, [u8; 20], u32> =
                HashMap::try_from(self.map("nodeports")).map_err(map_err("nodeports"))?;
            for k in &e.nodeports {
                m.insert(k, 1, 0).map_err(map_err("nodeports"))?;
            }
        }
        Ok(())
    }

    /// Removes entries; an entry already absent is not an error.
    fn remove_all(&mut self, e: &SteeringEntries) -> Result<(), (&'static str, MapError)> {
        fn gone(r: Result<(), MapError>) -> Result<(), MapError> {
            match r {
                Err(MapError::KeyNotFound) => Ok(()),
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
                {
                    Ok(())
                }
                r => r,
            }
        }
        {
            let mut m: HashMap<&mut MapData, u32, u32> =
                HashMap::try_from(self.map("pod_ifaces")).map_err(map_err("pod_ifaces"))?;
            for i in &e.pods {
                gone(m.remove(i)).map_err(map_err("pod_ifaces"))?;
            }
        }
        {
            let mut m: LpmTrie<&mut MapData, [u8; 4], u32> =
                LpmTrie::try_from(self.map("steer_v4")).map_err(map_err("steer_v4"))?;
            for &(len, a) in &e.v4 {
                gone(m.remove(&Key::new(len.into(), a))).map_err(map_err("steer_v4"))?;
            }
        }
        {
            let mut m: LpmTrie<&mut MapData, [u8; 16], u32> =
                LpmTrie::try_from(self.map("steer_v6")).map_err(map_err("steer_v6"))?;
            for &(len, a) in &e.v6 {
                gone(m.remove(&Key::new(len.into(), a))).map_err(map_err("steer_v6"))?;
            }
        }
        {
            let mut m: HashMap<&mut MapData, [u8; 16], u32> =
                HashMap::try_from(self.map("host_addrs")).map_err(map_err("host_addrs"))?;
            for a in &e.hosts {
                gone(m.remove(a)).map_err(map_err("host_addrs"))?;
            }
        }
        {
            let mut m: HashMap<&mut MapData, [u8; 20], u32> =
                HashMap::try_from(self.map("nodeports")).map_err(map_err("nodeports"))?;
            for k in &e.nodeports {
                gone(m.remove(k)).map_err(map_err("nodeports"))?;
            }
        }
        Ok(())
    }

    /// What steered traffic that finds no socket on its (interface, queue) gets: `false`
    /// (default): passed to the kernel (`pass_no_socket`); `true`: dropped
    /// (`drop_no_socket`). The runtime asks for drops when a worker died, so that its queues'
    /// traffic is not forwarded by the kernel without policy.
    pub fn set_no_socket_drop(&mut self, drop: bool) -> Result<(), MapError> {
        let mut m: Array<&mut MapData, u32> = Array::try_from(self.map("config"))?;
        m.set(0, u32::from(drop), 0)
    }

    /// Reads the program's per-reason counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, CounterError> {
        let map = self.ebpf.map("counters").expect("maps checked at load");
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| CounterError {
                counter: "counters",
                source,
            })?;
        let mut values = [0u64; Counter::ALL.len()];
        for c in Counter::ALL {
            let per_cpu = arr.get(&c.index(), 0).map_err(|source| CounterError {
                counter: c.name(),
                source,
            })?;
            values[c.index() as usize] = per_cpu.iter().sum();
        }
        Ok(Counters::from_values(values))
    }
}
