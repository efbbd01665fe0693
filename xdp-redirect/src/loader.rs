//! Loads `bpf/redirect.c` (built by `build.rs`) with aya, attaches it to interfaces and writes
//! its maps.
//!
//! One [`Loader`] owns the XDP side of the node: the loaded program, every attachment, the
//! XSKMAP and the steering maps. Attachments are BPF links. Without a pin directory they are
//! the process's own: dropping the loader (or the process dying) detaches the program. With
//! one ([`Loader::pin_in`], module [`crate::pin`]) each link is pinned there and outlives the
//! process, keeping the program and its maps; a later loader finds the pinned link and swaps
//! its own program in with `BPF_LINK_UPDATE` (the interface never runs without a program).
//! Only [`Loader::detach`] or [`crate::pin::unpin_all`] remove a pinned link.
//!
//! Order that leaves no window: [`Loader::reserve`] an interface's XSKMAP slots, register its
//! sockets ([`Loader::register_sockets`]), then [`Loader::link`] (attach or take over), so the
//! program that goes live already has its sockets. [`Loader::attach`] is reserve + link.
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
    path::{Path, PathBuf},
};

use aya::{
    include_bytes_aligned,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, XskMap},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfError,
};
use log::{info, warn};

use crate::pin::link_path;

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
    /// The link could not be pinned (it was detached again).
    #[error("failed to pin the XDP link of {iface} at {path}: {reason}")]
    Pin {
        /// Interface name.
        iface: String,
        /// Pin path.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// Not attached by this loader.
    #[error("failed to detach XDP from {iface}: not attached by this loader")]
    NotAttached {
        /// Interface name.
        iface: String,
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

/// An interface's XSKMAP slot range, and its link once linked.
#[derive(Debug)]
struct Attachment {
    ifindex: u32,
    base: u32,
    queues: u32,
    link: Option<Linked>,
}

#[derive(Debug)]
struct Linked {
    mode: AttachMode,
    /// Dropping it closes this process's reference: a pinned link stays attached.
    link: XdpLink,
    pinned: Option<PathBuf>,
    took_over: bool,
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
    /// Where its link is pinned (it outlives the process), if it is.
    pub pinned: Option<PathBuf>,
    /// The link was found pinned and this loader's program swapped in (`BPF_LINK_UPDATE`).
    pub took_over: bool,
}

/// The maps of the object, all of which the loader uses.
const MAP_NAMES: [&str; 11] = [
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
    "snat_addrs",
];

/// Owner of the XDP program, its attachments and maps. See the module docs.
pub struct Loader {
    /// The object as loaded from this build (its program), or None when reused from pins.
    ebpf: Option<Ebpf>,
    /// The program reused from its pin (a previous daemon of this build loaded it).
    pinned_prog: Option<Xdp>,
    maps: BTreeMap<&'static str, aya::maps::Map>,
    /// The program and maps were reused from their pins: no load, no verifier.
    reused: bool,
    attached: BTreeMap<String, Attachment>,
    /// `slot_used[i]`: XSKMAP slot i is reserved by an attachment.
    slot_used: Vec<bool>,
    /// What the steering maps hold (as far as this loader knows).
    current: SteeringEntries,
    /// Links are pinned here (and pinned links taken over from here).
    pin_dir: Option<PathBuf>,
}

impl fmt::Debug for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("attached", &self.attached)
            .field("steering_entries", &self.current.len())
            .field("pin_dir", &self.pin_dir)
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
        let mut maps = BTreeMap::new();
        for name in MAP_NAMES {
            let m = ebpf
                .take_map(name)
                .ok_or(LoadError::Missing { what: "map", name })?;
            maps.insert(name, m);
        }
        Ok(Loader {
            ebpf: Some(ebpf),
            pinned_prog: None,
            maps,
            reused: false,
            attached: BTreeMap::new(),
            slot_used: vec![false; limits::MAX_XSKS as usize],
            current: SteeringEntries::default(),
            pin_dir: None,
        })
    }

    /// With a pin directory: reuses the program and maps that a previous loader of this very
    /// object pinned there ([`object_tag`]), so a restart skips parsing the object and the
    /// verifier, and the program's counters go on counting across it; else loads them anew and
    /// pins them for the next start. Either way links are pinned there ([`Loader::pin_in`]).
    /// A reused program may be live already: its steering maps are read back (so the next
    /// [`Loader::apply`] removes what is stale) and its XSKMAP slot ranges cleared.
    pub fn load_pinned(dir: &Path) -> Result<Self, LoadError> {
        let tag = object_tag();
        let prog_path = dir.join(format!("prog-{tag}"));
        let maps_dir = dir.join(format!("maps-{tag}"));
        if prog_path.exists() {
            match Self::from_pins(&prog_path, &maps_dir) {
                Ok(mut l) => {
                    l.pin_in(dir);
                    info!(
                        "XDP program {PROGRAM_NAME} reused from {} (this build's, tag {tag})",
                        prog_path.display()
                    );
                    return Ok(l);
                }
                Err(e) => {
                    warn!(
                        "XDP program pinned at {} cannot be reused ({e}); loading it anew",
                        prog_path.display()
                    );
                    let _ = std::fs::remove_file(&prog_path);
                    let _ = std::fs::remove_dir_all(&maps_dir);
                }
            }
        }
        let mut l = Self::load()?;
        l.pin_in(dir);
        if let Err(e) = l.pin_objects(&prog_path, &maps_dir) {
            warn!(
                "XDP program not pinned for reuse at {} ({e}): the next start loads it again",
                prog_path.display()
            );
            let _ = std::fs::remove_file(&prog_path);
            let _ = std::fs::remove_dir_all(&maps_dir);
        }
        Ok(l)
    }

    fn pin_objects(&mut self, prog_path: &Path, maps_dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(maps_dir).map_err(|e| e.to_string())?;
        for (name, m) in &self.maps {
            m.pin(maps_dir.join(name))
                .map_err(|e| format!("map {name}: {e}"))?;
        }
        // The program last: its pin is what marks the set complete.
        self.prog()
            .pin(prog_path)
            .map_err(|e| format!("program: {e}"))
    }

    fn from_pins(prog_path: &Path, maps_dir: &Path) -> Result<Self, String> {
        let prog = Xdp::from_pin(prog_path, aya_obj::programs::XdpAttachType::Interface)
            .map_err(|e| e.to_string())?;
        let mut maps = BTreeMap::new();
        for name in MAP_NAMES {
            let data =
                MapData::from_pin(maps_dir.join(name)).map_err(|e| format!("map {name}: {e}"))?;
            let m = aya::maps::Map::from_map_data(data).map_err(|e| format!("map {name}: {e}"))?;
            maps.insert(name, m);
        }
        let mut l = Loader {
            ebpf: None,
            pinned_prog: Some(prog),
            maps,
            reused: true,
            attached: BTreeMap::new(),
            slot_used: vec![false; limits::MAX_XSKS as usize],
            current: SteeringEntries::default(),
            pin_dir: None,
        };
        l.current = l
            .read_steering()
            .map_err(|(m, e)| format!("map {m}: {e}"))?;
        // The previous daemon's slot ranges: its sockets are gone (the kernel removed them from
        // the XSKMAP), and this loader reserves its own.
        let mut slots: HashMap<&mut MapData, u32, [u32; 2]> =
            HashMap::try_from(l.map("xsk_slots")).map_err(|e| e.to_string())?;
        let keys: Vec<u32> = slots.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = slots.remove(&k);
        }
        Ok(l)
    }

    /// What the steering maps hold (a reused program's, written by an earlier loader).
    fn read_steering(&mut self) -> Result<SteeringEntries, (&'static str, MapError)> {
        let mut e = SteeringEntries::default();
        {
            let m: HashMap<&mut MapData, u32, u32> =
                HashMap::try_from(self.map("pod_ifaces")).map_err(map_err("pod_ifaces"))?;
            for k in m.keys() {
                e.pods.insert(k.map_err(map_err("pod_ifaces"))?);
            }
        }
        {
            let m: LpmTrie<&mut MapData, [u8; 4], u32> =
                LpmTrie::try_from(self.map("steer_v4")).map_err(map_err("steer_v4"))?;
            for k in m.keys() {
                let k = k.map_err(map_err("steer_v4"))?;
                e.v4.insert((k.prefix_len() as u8, k.data()));
            }
        }
        {
            let m: LpmTrie<&mut MapData, [u8; 16], u32> =
                LpmTrie::try_from(self.map("steer_v6")).map_err(map_err("steer_v6"))?;
            for k in m.keys() {
                let k = k.map_err(map_err("steer_v6"))?;
                e.v6.insert((k.prefix_len() as u8, k.data()));
            }
        }
        {
            let m: HashMap<&mut MapData, [u8; 16], u32> =
                HashMap::try_from(self.map("host_addrs")).map_err(map_err("host_addrs"))?;
            for k in m.keys() {
                e.hosts.insert(k.map_err(map_err("host_addrs"))?);
            }
        }
        {
            let m: HashMap<&mut MapData, [u8; 20], u32> =
                HashMap::try_from(self.map("nodeports")).map_err(map_err("nodeports"))?;
            for k in m.keys() {
                e.nodeports.insert(k.map_err(map_err("nodeports"))?);
            }
        }
        {
            let m: HashMap<&mut MapData, [u8; 16], [u16; 2]> =
                HashMap::try_from(self.map("snat_addrs")).map_err(map_err("snat_addrs"))?;
            for kv in m.iter() {
                let (k, v) = kv.map_err(map_err("snat_addrs"))?;
                e.snat.insert(k, v);
            }
        }
        Ok(e)
    }

    /// Pins the map `name` at `path` (on a bpffs), for another program to share it
    /// ([`crate::fastpath::FastPath::load`]).
    pub(crate) fn pin_map(&self, name: &str, path: &Path) -> Result<(), String> {
        let m = self
            .maps
            .get(name)
            .ok_or_else(|| format!("the XDP program has no map {name}"))?;
        m.pin(path)
            .map_err(|e| format!("cannot pin map {name}: {e}"))
    }

    /// Whether the program and maps were reused from their pins ([`Loader::load_pinned`]).
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Pins every link this loader makes from now on under `dir` (a directory on a bpffs:
    /// [`crate::pin::ensure_pin_dir`]), and takes over the links pinned there.
    pub fn pin_in(&mut self, dir: impl Into<PathBuf>) {
        self.pin_dir = Some(dir.into());
    }

    fn prog(&mut self) -> &mut Xdp {
        if let Some(p) = self.pinned_prog.as_mut() {
            return p;
        }
        // Checked in `load`.
        self.ebpf
            .as_mut()
            .and_then(|e| e.program_mut(PROGRAM_NAME))
            .and_then(|p| p.try_into().ok())
            .expect("program checked at load")
    }

    fn map(&mut self, name: &'static str) -> &mut aya::maps::Map {
        self.maps.get_mut(name).expect("maps checked at load")
    }

    /// Attaches in native mode, falling back to generic mode (logged) when the driver refuses.
    /// Reserves `queues` XSKMAP slots for the interface's queues `0..queues`. A link pinned
    /// for the interface (any mode) is taken over instead.
    pub fn attach(&mut self, iface: &str, queues: u32) -> Result<AttachMode, AttachError> {
        self.reserve(iface, queues)?;
        self.link(iface).inspect_err(|_| self.unreserve(iface))
    }

    /// Attaches in exactly `mode` (no fallback; a link pinned in the other mode is removed).
    pub fn attach_with_mode(
        &mut self,
        iface: &str,
        queues: u32,
        mode: AttachMode,
    ) -> Result<(), AttachError> {
        self.reserve(iface, queues)?;
        self.link_with_mode(iface, Some(mode))
            .map(|_| ())
            .inspect_err(|_| self.unreserve(iface))
    }

    /// Reserves `queues` XSKMAP slots for `iface` and writes them to `xsk_slots`, so its
    /// sockets can be registered before the program goes live on it ([`Loader::link`]).
    pub fn reserve(&mut self, iface: &str, queues: u32) -> Result<(), AttachError> {
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
        for s in &mut self.slot_used[base as usize..(base + queues) as usize] {
            *s = true;
        }
        self.attached.insert(
            iface.to_owned(),
            Attachment {
                ifindex,
                base,
                queues,
                link: None,
            },
        );
        Ok(())
    }

    /// Releases a reservation that has no link (a failed attach).
    fn unreserve(&mut self, iface: &str) {
        if let Some(a) = self.attached.get(iface) {
            if a.link.is_none() {
                let a = self.attached.remove(iface).expect("present");
                self.release(&a);
            }
        }
    }

    /// Whether a link for `iface` is pinned in the pin directory (a previous loader's, to be
    /// taken over by [`Loader::link`]).
    pub fn has_pinned_link(&self, iface: &str) -> bool {
        self.pin_dir.as_ref().is_some_and(|d| {
            [AttachMode::Driver, AttachMode::Skb]
                .iter()
                .any(|&m| link_path(d, iface, m).exists())
        })
    }

    /// Whether `iface` is linked (attached or taken over) by this loader.
    pub fn is_linked(&self, iface: &str) -> bool {
        self.attached.get(iface).is_some_and(|a| a.link.is_some())
    }

    /// Puts the program live on a reserved interface: takes over a link pinned for it (any
    /// mode), else attaches natively, falling back to generic mode (logged).
    pub fn link(&mut self, iface: &str) -> Result<AttachMode, AttachError> {
        match self.link_with_mode(iface, None) {
            Err(AttachError::Attach { source, .. }) => {
                warn!(
                    "native XDP on {iface} failed ({source}); falling back to generic (SKB) mode"
                );
                self.link_with_mode(iface, Some(AttachMode::Skb))
            }
            r => r,
        }
    }

    /// `want`: None = a pinned link in any mode, else native. Some(mode): exactly that mode.
    fn link_with_mode(
        &mut self,
        iface: &str,
        want: Option<AttachMode>,
    ) -> Result<AttachMode, AttachError> {
        let Some(a) = self.attached.get(iface) else {
            return Err(AttachError::NotAttached {
                iface: iface.to_owned(),
            });
        };
        if a.link.is_some() {
            return Err(AttachError::AlreadyAttached {
                iface: iface.to_owned(),
            });
        }
        let (ifindex, queues) = (a.ifindex, a.queues);
        if let Some(dir) = self.pin_dir.clone() {
            for mode in [AttachMode::Driver, AttachMode::Skb] {
                let path = link_path(&dir, iface, mode);
                if !path.exists() {
                    continue;
                }
                if want.is_some_and(|w| w != mode) {
                    info!(
                        "XDP on {iface}: removing its {mode} link pinned at {}",
                        path.display()
                    );
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                match self.take_over(&path) {
                    Ok(link) => {
                        info!(
                            "XDP on {iface} (ifindex {ifindex}, {mode} mode, {queues} queues): \
                             took over the link pinned at {} (program replaced in place)",
                            path.display()
                        );
                        self.set_link(iface, mode, link, Some(path), true);
                        return Ok(mode);
                    }
                    Err(e) => {
                        warn!(
                            "XDP on {iface}: the link pinned at {} cannot be taken over ({e}); \
                             removing it and attaching anew",
                            path.display()
                        );
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
        let mode = want.unwrap_or(AttachMode::Driver);
        let id = self
            .prog()
            .attach_to_if_index(ifindex, mode.aya())
            .map_err(|source| AttachError::Attach {
                iface: iface.to_owned(),
                mode,
                source,
            })?;
        let link = self
            .prog()
            .take_link(id)
            .map_err(|source| AttachError::Attach {
                iface: iface.to_owned(),
                mode,
                source,
            })?;
        let (link, pinned) = match self.pin_dir.clone() {
            Some(dir) => {
                let path = link_path(&dir, iface, mode);
                let link = pin_link(link, &path).map_err(|reason| AttachError::Pin {
                    iface: iface.to_owned(),
                    path: path.clone(),
                    reason,
                })?;
                (link, Some(path))
            }
            None => (link, None),
        };
        info!(
            "XDP attached to {iface} (ifindex {ifindex}, {mode} mode, {queues} queues{})",
            pinned
                .as_ref()
                .map(|p| format!(", pinned at {}", p.display()))
                .unwrap_or_default()
        );
        self.set_link(iface, mode, link, pinned, false);
        Ok(mode)
    }

    fn set_link(
        &mut self,
        iface: &str,
        mode: AttachMode,
        link: XdpLink,
        pinned: Option<PathBuf>,
        took_over: bool,
    ) {
        if let Some(a) = self.attached.get_mut(iface) {
            a.link = Some(Linked {
                mode,
                link,
                pinned,
                took_over,
            });
        }
    }

    /// Swaps this loader's program into the link pinned at `path` (atomic in the kernel).
    fn take_over(&mut self, path: &Path) -> Result<XdpLink, String> {
        let pinned = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
        let id = self
            .prog()
            .attach_to_link(link)
            .map_err(|e| e.to_string())?;
        self.prog().take_link(id).map_err(|e| e.to_string())
    }

    fn release(&mut self, a: &Attachment) {
        self.remove_slots(a.ifindex);
        if let Ok(mut xsks) = XskMap::try_from(self.map("xsks")) {
            for slot in a.base..a.base + a.queues {
                let _ = xsks.unset(slot);
            }
        }
        for s in &mut self.slot_used[a.base as usize..(a.base + a.queues) as usize] {
            *s = false;
        }
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

    /// Detaches from one interface (removing its pinned link, if any) and releases its
    /// XSKMAP slots.
    pub fn detach(&mut self, iface: &str) -> Result<(), AttachError> {
        let mut a = self
            .attached
            .remove(iface)
            .ok_or_else(|| AttachError::NotAttached {
                iface: iface.to_owned(),
            })?;
        let res = match a.link.take() {
            Some(l) => {
                if let Some(p) = &l.pinned {
                    match std::fs::remove_file(p) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            warn!("XDP on {iface}: cannot remove its pin {}: {e}", p.display());
                        }
                        _ => {}
                    }
                    if let Some(d) = p.parent() {
                        let _ = std::fs::remove_dir(d);
                    }
                }
                // The last reference: closing it detaches the program.
                drop(l.link);
                Ok(())
            }
            None => Ok(()),
        };
        self.release(&a);
        res?;
        info!("XDP detached from {iface}");
        Ok(())
    }

    /// Closes this process's reference to every link at once, each on a thread of its own, and
    /// forgets every attachment; returns how long each close took, by interface. An unpinned
    /// link detaches on its close: the kernel takes the RTNL lock and tears the driver's XDP
    /// state down (veth: disables NAPI, waits for an RCU grace period). Under load most of
    /// that is waiting, first for the lock (held by whoever creates or deletes interfaces or
    /// namespaces at the time). Closed one after the other, every close waits for the lock on
    /// its own; closed together, they queue for it once and the kernel runs them back to back.
    /// A pinned link stays attached (only [`Loader::detach`] removes its pin): its close is quick.
    /// Their XSKMAP slots are released as by [`Loader::detach`]; pins are not touched.
    pub fn detach_all(&mut self) -> Vec<(String, std::time::Duration)> {
        let mut links: Vec<(String, XdpLink)> = Vec::new();
        for (iface, mut a) in std::mem::take(&mut self.attached) {
            if let Some(l) = a.link.take() {
                links.push((iface, l.link));
            }
            self.release(&a);
        }
        let close = |(iface, link): (String, XdpLink)| {
            let t0 = std::time::Instant::now();
            drop(link);
            (iface, t0.elapsed())
        };
        std::thread::scope(|s| {
            let handles: Vec<_> = links
                .into_iter()
                .map(|l| {
                    let iface = l.0.clone();
                    (
                        iface,
                        std::thread::Builder::new()
                            .name("xdp-detach".into())
                            .spawn_scoped(s, move || close(l)),
                    )
                })
                .collect();
            handles
                .into_iter()
                .map(|(iface, h)| match h {
                    Ok(h) => h.join().unwrap_or((iface, std::time::Duration::ZERO)),
                    // No thread: the link was closed here, when its closure was dropped.
                    Err(_) => (iface, std::time::Duration::ZERO),
                })
                .collect()
        })
    }

    /// The ifindex `iface` was reserved (and maybe linked) with: an interface deleted and
    /// re-created under the same name has another one.
    pub fn ifindex(&self, iface: &str) -> Option<u32> {
        self.attached.get(iface).map(|a| a.ifindex)
    }

    /// Interfaces the program is attached to.
    pub fn attached(&self) -> Vec<AttachedInterface> {
        self.attached
            .iter()
            .filter_map(|(iface, a)| {
                let l = a.link.as_ref()?;
                Some(AttachedInterface {
                    iface: iface.clone(),
                    ifindex: a.ifindex,
                    mode: l.mode,
                    queues: a.queues,
                    pinned: l.pinned.clone(),
                    took_over: l.took_over,
                })
            })
            .collect()
    }

    /// Puts an AF_XDP socket (bound to `iface` queue `queue`) into the XSKMAP, so steered
    /// frames from that queue reach it. The kernel removes the entry when the socket closes.
    /// The interface must be reserved ([`Loader::reserve`]); it need not be linked yet.
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
            // Roll back: remove what is new (not in old). Inserts are upserts of identical
            // values, so old is intact, except a source-NAT range that changed: write it back.
            let added = new.stale(&old);
            let old_snat = SteeringEntries {
                snat: old.snat.clone(),
                ..SteeringEntries::default()
            };
            let undone = self
                .remove_all(&added)
                .and_then(|()| self.insert_all(&old_snat));
            return match undone {
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
        {
            // `{u16 first; u16 last}` in host order is `[u16; 2]`.
            let mut m: HashMap<&mut MapData, [u8; 16], [u16; 2]> =
                HashMap::try_from(self.map("snat_addrs")).map_err(map_err("snat_addrs"))?;
            for (k, v) in &e.snat {
                m.insert(k, v, 0).map_err(map_err("snat_addrs"))?;
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
        {
            let mut m: HashMap<&mut MapData, [u8; 16], [u16; 2]> =
                HashMap::try_from(self.map("snat_addrs")).map_err(map_err("snat_addrs"))?;
            for k in e.snat.keys() {
                gone(m.remove(k)).map_err(map_err("snat_addrs"))?;
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
        let map = self.maps.get("counters").expect("maps checked at load");
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

/// Pins an XDP link at `path` (its parent directory is created), giving the link back.
fn pin_link(link: XdpLink, path: &Path) -> Result<XdpLink, String> {
    let fd = FdLink::try_from(link).map_err(|_| {
        "the kernel attached it through netlink, not as a BPF link (Linux >= 5.9 needed)"
            .to_string()
    })?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let pinned = fd.pin(path).map_err(|e| e.to_string())?;
    XdpLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())
}

/// A tag of this build's XDP object (FNV-1a over its bytes, 16 hex digits): a program and maps
/// pinned under another tag belong to another build and are never reused.
pub fn object_tag() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in PROGRAM_OBJECT {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
