//! AF_XDP sockets for a run-to-completion worker: the only module of the crate with `unsafe`.
//!
//! ```text
//!            XskWorker (one per worker thread; owns one UMEM shared by all its sockets)
//!   ┌───────────────────────────────────────────────────────────────────────────────────┐
//!   │ free list ──refill──> fill ring(s) ──kernel──> rx ring(s) ──rx_burst──> Burst     │
//!   │    ^                                                                     │        │
//!   │    │ drop / tx ring full                                                 │ Tx(s)  │
//!   │    ├─────────────────────────────────────────────────────────────────────┤        │
//!   │    └──reap── completion ring(s) <──kernel (copy, send)── tx ring(s) <────┘        │
//!   └───────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Design:
//! - **One UMEM per worker, shared by all the worker's sockets** (`XDP_SHARED_UMEM`; each
//!   (interface, queue) gets its own fill and completion ring). A frame received on one
//!   interface is transmitted on another by handing its descriptor to that socket's TX ring:
//!   no userspace copy and no second frame. With a UMEM per socket, every forwarded frame
//!   would cost a memcpy plus a frame from the other UMEM; `examples/l2fwd.rs --copy`
//!   measures that cost. A worker owns its UMEM exclusively, so nothing here is shared
//!   between threads and nothing takes a lock.
//! - **Copy mode, need_wakeup.** veth refuses zero-copy. Fill ring wakeups are *kicks*
//!   (`poll` with a zero timeout), never sleeps: sleeping in `poll(1 ms)` whenever the fill ring
//!   asked for a wakeup halved throughput on this machine kind (0.65 vs 1.28 Mpps). TX in copy
//!   mode only moves on `sendto`, which sends a bounded batch per call, so a kick loops until
//!   the TX ring is drained or stops moving.
//! - **Per burst, not per packet:** completions of every socket are reaped and the receiving
//!   socket's fill ring is refilled once per burst; syscalls happen only for kicks.
//! - **Bind retries:** rebinding a queue right after the previous socket on it closed can fail
//!   with `EBUSY` while the kernel finishes tearing the old one down; binding retries briefly.
//! - **An interface that goes away** ([`XskWorker::set_down`]): the kernel unbinds its sockets
//!   when the device unregisters; the worker then takes back every frame it had lent them
//!   (fill, RX and TX rings: the kernel no longer touches them), stops polling, kicking and
//!   refilling them, and counts what was on their TX rings. [`XskWorker::rebind`] binds a new
//!   socket for the same slot on the re-created interface over the same UMEM
//!   (`XDP_SHARED_UMEM` through any socket of the worker that is still bound: the kernel
//!   requires the one it names to be bound; only a worker with every socket down cannot).
//! - **Our own socket layer** ([`super::ring`]): the UMEM is registered, the rings mapped and
//!   the sockets bound with raw system calls (no libxdp), so the UMEM can carry AF_XDP TX
//!   metadata ([`XskConfig::tx_metadata`]).
//!
//! Frame accounting (the invariant, checked by [`XskWorker::check_accounting`]): every UMEM
//! frame is in exactly one place, and
//! `free + in_fill + in_rx + held + in_tx + in_completion == total`, where `in_fill` (given to
//! the kernel for receiving; includes frames the kernel holds internally) and `in_rx` (in an RX
//! ring, not consumed yet) together are what a socket lent the kernel for RX, and `in_tx` and
//! `in_completion` what it lent for TX. Besides the counters, each frame's owner is recorded
//! (`owner[frame]`), so a frame coming back from a ring it was never given to is detected and
//! counted (`accounting_errors`), not silently double-used.
//!
//! Names (interfaces) are resolved in the calling thread's network namespace.
#![expect(
    unsafe_code,
    reason = "AF_XDP rings and UMEM frames are shared memory with the kernel"
)]

use std::{
    fmt, io,
    os::fd::{FromRawFd, OwnedFd, RawFd},
    thread,
    time::Duration,
};

use log::debug;

use super::chain::{ChainRx, Verdict};
use super::ring::{
    FrameDesc, Socket, TxMetadata, Umem, XdpStatistics, XDP_COPY, XDP_PACKET_HEADROOM,
    XDP_TX_METADATA, XDP_USE_NEED_WAKEUP, XDP_USE_SG,
};

/// Most frames one [`XskWorker::rx_burst`] returns.
pub const MAX_BURST: usize = 64;

/// Frames one socket can have staged for TX in a burst (forwarded plus copies).
const TX_STAGE: usize = 2 * MAX_BURST;

pub use super::ring::XDP_PKT_CONTD;

/// Most buffers of one packet (multi-buffer): copy-mode TX builds an skb of one linear part
/// and at most `MAX_SKB_FRAGS` (17) page fragments, one per descriptor after the first, so a
/// longer chain could be received but never sent. Longer chains are dropped (counted).
pub const MAX_CHAIN: usize = 18;

/// Longest packet a chain may carry: the pipeline's offsets are 16 bits.
pub const MAX_CHAIN_BYTES: usize = 65535;

/// Bytes of one packet's linear copy (multi-buffer).
const LIN_SLOT: usize = 1 << 16;

/// Descriptors one socket can have staged for TX in a burst with multi-buffer.
const TX_STAGE_SG: usize = TX_STAGE + MAX_BURST * MAX_CHAIN;

/// Most sockets one worker owns.
pub const MAX_SOCKETS: usize = 64;

/// Sizes and retry policy of a worker's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskConfig {
    /// UMEM frame size: 2048 or 4096 (power of two). One frame holds one packet; the kernel
    /// drops received frames longer than `frame_size - 256` (XDP headroom).
    pub frame_size: u32,
    /// Size of every ring (rx, tx, fill, completion); a power of two.
    pub ring_size: u32,
    /// UMEM frames per socket; the UMEM holds `sockets * frames_per_socket` frames. At least
    /// `ring_size` (to fill the fill ring); `2 * ring_size` leaves as many for frames in
    /// flight on TX rings.
    pub frames_per_socket: u32,
    /// Attempts after the first when binding fails with `EBUSY`.
    pub bind_retries: u32,
    /// Delay between bind attempts.
    pub bind_retry_delay: Duration,
    /// Multi-buffer (`XDP_USE_SG`): a packet longer than a frame holds arrives as a chain of
    /// up to [`MAX_CHAIN`] frames, each but the last with [`XDP_PKT_CONTD`], and leaves the
    /// same way. Needs an XDP program loaded with frags support (`xdp.frags`).
    pub multi_buffer: bool,
    /// Register the UMEM with room for AF_XDP TX metadata before each frame's data, so TX can
    /// ask the kernel to finish a partial checksum ([`XskWorker::tx_metadata`]). A kernel
    /// without it (before 6.11) gets a UMEM without metadata.
    pub tx_metadata: bool,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_size: 2048,
            ring_size: 1024,
            frames_per_socket: 2048,
            bind_retries: 50,
            bind_retry_delay: Duration::from_millis(20),
            multi_buffer: false,
            tx_metadata: false,
        }
    }
}

/// One (interface, queue) a worker binds a socket to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskBinding<'a> {
    /// Interface name (resolved in the calling thread's network namespace).
    pub iface: &'a str,
    /// Queue id.
    pub queue: u32,
}

/// Index of a socket within its worker (the order of the bindings given to [`XskWorker::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u8);

/// What to do with a received frame when its burst completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Give the frame back for receiving (the default).
    #[default]
    Drop,
    /// Transmit the frame (with its current bytes and length) on this socket of the worker.
    Tx(SocketId),
    /// Give the frame back for receiving without counting it as dropped: its content went on
    /// elsewhere (e.g. copied to another worker). Counted in [`SocketStats::released`].
    Release,
}

/// Setting up a worker's sockets failed.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// Sizes out of range.
    #[error("invalid AF_XDP config: {0}")]
    Config(String),
    /// Creating the UMEM failed (often: memlock limit, see CAP_IPC_LOCK).
    #[error("failed to create a UMEM of {frames} frames of {frame_size} bytes: {source}")]
    Umem {
        /// Frames requested.
        frames: u32,
        /// Frame size.
        frame_size: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Binding an AF_XDP socket failed.
    #[error("failed to bind AF_XDP socket to {iface} queue {queue}: {source}")]
    Bind {
        /// Interface name.
        iface: String,
        /// Queue id.
        queue: u32,
        /// Cause (errno from the kernel where there is one).
        #[source]
        source: io::Error,
    },
    /// The same (interface, queue) twice in one worker.
    #[error("failed to bind AF_XDP socket to {iface} queue {queue}: listed twice")]
    Duplicate {
        /// Interface name.
        iface: String,
        /// Queue id.
        queue: u32,
    },
}

/// Sending a new frame with [`XskWorker::tx_copy`] failed; nothing was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// Every frame is in use.
    #[error("no free UMEM frame")]
    NoFreeFrame,
    /// The socket's TX ring is full.
    #[error("TX ring full")]
    RingFull,
    /// Longer than a frame holds.
    #[error("frame of {len} bytes exceeds the {max} bytes a UMEM frame holds")]
    TooLong {
        /// Bytes given.
        len: usize,
        /// Capacity.
        max: usize,
    },
    /// Not a socket of this worker.
    #[error("no socket {0} in this worker")]
    NoSuchSocket(u8),
    /// The socket's interface is gone ([`XskWorker::set_down`]).
    #[error("socket {0}: its interface is gone")]
    Down(u8),
}

/// Per-socket counters (userspace side; see [`XskWorker::kernel_stats`] for the kernel's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Frames received.
    pub rx: u64,
    /// Frames queued on this socket's TX ring.
    pub tx: u64,
    /// Frames completed (sent) by the kernel (UMEM frames: a chain counts each of its
    /// frames; the other counters count packets).
    pub tx_completed: u64,
    /// Frames meant for this socket's TX ring but dropped because it was full.
    pub tx_ring_full: u64,
    /// Received frames dropped by their [`Action`] (or for an invalid target socket or a
    /// target whose per-burst TX stage is full).
    pub dropped: u64,
    /// Received frames recycled with [`Action::Release`] (their content went on elsewhere).
    pub released: u64,
    /// Refills that found no free frame while the fill ring had room.
    pub fill_starved: u64,
    /// `sendto` kicks (TX).
    pub tx_kicks: u64,
    /// Zero-timeout `poll` kicks (fill ring wakeup).
    pub fill_kicks: u64,
    /// TX kicks (`sendto`) that failed with an error other than the transient ones
    /// (ENOBUFS, EAGAIN, EBUSY, ENETDOWN). The frames stay queued for the next kick.
    pub tx_kick_errors: u64,
    /// Fill ring kicks (`poll`) that failed (EINTR is not an error). The next refill kicks
    /// again.
    pub fill_kick_errors: u64,
    /// Packets received as a chain of more than one frame (multi-buffer; also in `rx`).
    pub rx_chains: u64,
    /// Chains dropped on receipt: longer than [`MAX_CHAIN`] frames or [`MAX_CHAIN_BYTES`], a
    /// chain without its last buffer, or buffers of a chain whose head was not received.
    /// Counted once per chain (not in `rx` or `dropped`).
    pub rx_chain_dropped: u64,
    /// Packets queued for TX as a chain of more than one frame (also in `tx`).
    pub tx_chains: u64,
}

/// Where the worker's frames are (see the module docs for the invariant).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameAccounting {
    /// Frames in the UMEM.
    pub total: u32,
    /// On the worker's free list.
    pub free: u32,
    /// Lent to the kernel through fill rings, not in an RX ring (yet).
    pub in_fill: u32,
    /// In RX rings, not consumed yet.
    pub in_rx: u32,
    /// In the current burst.
    pub held: u32,
    /// On TX rings or being sent.
    pub in_tx: u32,
    /// In completion rings, not reaped yet.
    pub in_completion: u32,
}

impl FrameAccounting {
    /// Sum of all places.
    pub fn sum(&self) -> u64 {
        [
            self.free,
            self.in_fill,
            self.in_rx,
            self.held,
            self.in_tx,
            self.in_completion,
        ]
        .iter()
        .map(|&v| u64::from(v))
        .sum()
    }
}

/// The frame accounting does not add up: a bug (or a kernel returning foreign frames).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AF_XDP frame accounting broken: {detail} ({acct:?})")]
pub struct AccountingError {
    /// What disagreed.
    pub detail: String,
    /// The counters at the time.
    pub acct: FrameAccounting,
}

/// How the worker binds its sockets.
#[derive(Debug, Clone, Copy)]
struct BindOpts {
    ring_size: u32,
    /// Bind flags of the UMEM's own socket (the others inherit them).
    flags: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Free,
    Held,
    Fill(u8),
    Tx(u8),
}

struct Sock {
    iface: String,
    queue: u32,
    xs: Socket,
    /// Lent for RX (fill ring + kernel + rx ring).
    lent_rx: u32,
    /// Lent for TX (tx ring + kernel + completion ring).
    lent_tx: u32,
    /// Frames a burst routes to this socket; capacity MAX_BURST, never grows.
    tx_stage: Vec<FrameDesc>,
    stats: SocketStats,
    /// False once its interface went away ([`XskWorker::set_down`]): no RX, TX, refill or
    /// poll on it until [`XskWorker::rebind`] replaces it.
    up: bool,
    /// Multi-buffer packet assembly across bursts (a chain cut at a burst's end).
    chain: ChainRx,
}

impl fmt::Debug for Sock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sock")
            .field("iface", &self.iface)
            .field("queue", &self.queue)
            .field("lent_rx", &self.lent_rx)
            .field("lent_tx", &self.lent_tx)
            .field("up", &self.up)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A worker's AF_XDP sockets over one shared UMEM. See the module docs.
pub struct XskWorker {
    // Sockets before the UMEM: `Drop` deletes them first, then the UMEM.
    socks: Vec<Sock>,
    umem: Umem,
    /// Start of the UMEM region, to view frames without a borrow of their descriptor.
    base: *mut u8,
    region_len: usize,
    frame_shift: u32,
    total: u32,
    ring_size: u32,
    free: Vec<FrameDesc>,
    owner: Vec<Owner>,
    /// Current burst: descriptors (the first `held_descs` are live) and, per packet (the
    /// first `held`), its action, its first descriptor and its number of descriptors.
    burst: Vec<FrameDesc>,
    actions: [Action; MAX_BURST],
    held: usize,
    held_descs: usize,
    pkt_first: [u16; MAX_BURST],
    pkt_descs: [u8; MAX_BURST],
    /// Per packet of the burst: a checksum request `(csum_start, csum_offset)` to send with it
    /// in its first descriptor's TX metadata ([`Burst::request_checksum`]).
    csum_req: [Option<(u16, u16)>; MAX_BURST],
    /// Multi-buffer: a linear copy of each chained packet of the burst (slot = packet index,
    /// [`LIN_SLOT`] bytes each; empty without multi-buffer) and its length. The pipeline
    /// works on the copy; TX writes it back into the chain's frames.
    lin: Vec<u8>,
    /// `lin`'s start: every access to the linear copies goes through it (the `Vec` only
    /// owns the memory and is never touched or resized after creation).
    lin_base: *mut u8,
    lin_len: [u32; MAX_BURST],
    /// Each linear copy's length as received.
    lin_orig: [u32; MAX_BURST],
    /// Most descriptors a socket stages for TX per burst.
    stage_cap: usize,
    /// New frames staged for TX during the current burst ([`Burst::tx_copy`]).
    staged_copies: u32,
    /// Sockets with frames in their `tx_stage`, as a bit mask.
    tx_touched: u64,
    /// Scratch for completion reaping.
    scratch: Vec<FrameDesc>,
    pollfds: Vec<libc::pollfd>,
    accounting_errors: u64,
    /// Every frame's descriptor as the UMEM made it (index = frame), to take back frames
    /// whose descriptors sit in a dead socket's rings ([`XskWorker::set_down`]).
    pristine: Vec<FrameDesc>,
    /// Kept to bind a replacement socket ([`XskWorker::rebind`]).
    config: XskConfig,
    bind_opts: BindOpts,
    /// Bytes of TX metadata before each frame's data (0: the UMEM has none).
    tx_metadata_len: u32,
}

impl fmt::Debug for XskWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XskWorker")
            .field("socks", &self.socks)
            .field("total", &self.total)
            .field("umem_bytes", &self.umem.len())
            .field("free", &self.free.len())
            .field("accounting_errors", &self.accounting_errors)
            .finish_non_exhaustive()
    }
}

// SAFETY: `base` points into the UMEM mapping that `umem` keeps alive; the worker is the only
// user of its UMEM and rings, so moving it to another thread (before its loop starts) moves
// all access with it.
unsafe impl Send for XskWorker {}

fn check_ring_size(v: u32) -> Result<(), XskError> {
    if v == 0 || !v.is_power_of_two() {
        return Err(XskError::Config(format!(
            "ring size: {v} is not a power of two"
        )));
    }
    Ok(())
}

/// A worker's UMEM, mapped, populated and registered with the kernel, with no socket bound
/// yet: the costly part of a start (the whole region is faulted in and pinned), which the
/// runtime does for all workers at once, each on a thread of its own, before it binds their
/// sockets one worker after the other.
pub struct XskUmem {
    umem: Umem,
    total: u32,
    sockets: usize,
}

impl fmt::Debug for XskUmem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XskUmem")
            .field("total", &self.total)
            .field("sockets", &self.sockets)
            .finish()
    }
}

impl XskUmem {
    /// A UMEM for `sockets` sockets of `config.frames_per_socket` frames each.
    pub fn new(config: &XskConfig, sockets: usize) -> Result<XskUmem, XskError> {
        if sockets == 0 || sockets > MAX_SOCKETS {
            return Err(XskError::Config(format!(
                "a worker needs 1..={MAX_SOCKETS} sockets, got {sockets}"
            )));
        }
        if !config.frame_size.is_power_of_two() || !(2048..=4096).contains(&config.frame_size) {
            return Err(XskError::Config(format!(
                "frame size {} is not 2048 or 4096",
                config.frame_size
            )));
        }
        check_ring_size(config.ring_size)?;
        if config.frames_per_socket < config.ring_size {
            return Err(XskError::Config(format!(
                "{} frames per socket cannot fill a ring of {}",
                config.frames_per_socket, config.ring_size
            )));
        }
        let total = config
            .frames_per_socket
            .checked_mul(sockets as u32)
            .filter(|t| u64::from(*t) * u64::from(config.frame_size) <= 1 << 34)
            .ok_or_else(|| XskError::Config("UMEM larger than 16 GiB".into()))?;
        let umem = Umem::new(config.frame_size, total, config.tx_metadata).map_err(|source| {
            XskError::Umem {
                frames: total,
                frame_size: config.frame_size,
                source,
            }
        })?;
        Ok(XskUmem {
            umem,
            total,
            sockets,
        })
    }
}

impl XskWorker {
    /// Creates the worker's UMEM and binds one socket per binding (copy mode, need_wakeup, no
    /// XDP program loaded: the [`crate::Loader`] owns the XDP side and the sockets must be
    /// registered with it). Every fill ring starts full.
    pub fn new(config: &XskConfig, bindings: &[XskBinding<'_>]) -> Result<Self, XskError> {
        Self::with_umem(config, XskUmem::new(config, bindings.len())?, bindings)
    }

    /// A worker on a UMEM made beforehand ([`XskUmem::new`], e.g. on another thread), with
    /// one socket per binding bound to it.
    pub fn with_umem(
        config: &XskConfig,
        umem: XskUmem,
        bindings: &[XskBinding<'_>],
    ) -> Result<Self, XskError> {
        if bindings.len() != umem.sockets {
            return Err(XskError::Config(format!(
                "a UMEM made for {} sockets cannot serve {}",
                umem.sockets,
                bindings.len()
            )));
        }
        for (i, b) in bindings.iter().enumerate() {
            if bindings[..i].contains(b) {
                return Err(XskError::Duplicate {
                    iface: b.iface.to_owned(),
                    queue: b.queue,
                });
            }
        }
        let XskUmem {
            mut umem, total, ..
        } = umem;
        check_ring_size(config.ring_size)?;
        if umem.frame_size() != config.frame_size {
            return Err(XskError::Config(format!(
                "a UMEM of {}-byte frames cannot serve {}-byte frames",
                umem.frame_size(),
                config.frame_size
            )));
        }
        let frame_shift = config.frame_size.trailing_zeros();
        let base = umem.base();
        let region_len = umem.len();

        let mut flags = XDP_COPY | XDP_USE_NEED_WAKEUP;
        if config.multi_buffer {
            flags |= XDP_USE_SG;
        }
        let stage_cap = if config.multi_buffer {
            TX_STAGE_SG
        } else {
            TX_STAGE
        };
        let bind_opts = BindOpts {
            ring_size: config.ring_size,
            flags,
        };
        let mut socks: Vec<Sock> = Vec::with_capacity(bindings.len());
        for b in bindings {
            // The first socket is the UMEM's own (it registered it); the others share it.
            let own = umem.take_fd();
            let share = socks.first().map(|s| s.xs.fd());
            socks.push(Self::bind(config, bind_opts, own, share, b, stage_cap)?);
        }
        let pollfds = socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.xs.fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();

        // Every frame's data starts where the kernel puts received data (after the XDP
        // headroom), which leaves room before it for TX metadata.
        let frame_size = config.frame_size as usize;
        let pristine: Vec<FrameDesc> = (0..total as usize)
            .map(|i| FrameDesc::new(i * frame_size + XDP_PACKET_HEADROOM, 0))
            .collect();
        // Free list in reverse so frame 0 is handed out first (easier to read in dumps).
        let free: Vec<FrameDesc> = pristine.iter().rev().copied().collect();
        let tx_metadata_len = umem.tx_metadata_len();
        let mut w = XskWorker {
            socks,
            umem,
            base,
            region_len,
            frame_shift,
            total,
            ring_size: config.ring_size,
            free,
            owner: vec![Owner::Free; total as usize],
            burst: vec![FrameDesc::default(); MAX_BURST + MAX_CHAIN],
            actions: [Action::Drop; MAX_BURST],
            held: 0,
            held_descs: 0,
            pkt_first: [0; MAX_BURST],
            pkt_descs: [1; MAX_BURST],
            csum_req: [None; MAX_BURST],
            lin: if config.multi_buffer {
                vec![0; MAX_BURST * LIN_SLOT]
            } else {
                Vec::new()
            },
            lin_base: std::ptr::null_mut(),
            lin_len: [0; MAX_BURST],
            lin_orig: [0; MAX_BURST],
            stage_cap,
            staged_copies: 0,
            tx_touched: 0,
            scratch: vec![FrameDesc::default(); MAX_BURST],
            pollfds,
            accounting_errors: 0,
            pristine,
            config: *config,
            bind_opts,
            tx_metadata_len,
        };
        w.lin_base = w.lin.as_mut_ptr();
        for s in 0..w.socks.len() {
            w.refill(s);
        }
        Ok(w)
    }

    /// Sets up a socket (the UMEM's own `own`, or a new one sharing the UMEM of the bound
    /// socket `share`) and binds it, retrying on `EBUSY`.
    fn bind(
        config: &XskConfig,
        opts: BindOpts,
        own: Option<OwnedFd>,
        share: Option<RawFd>,
        b: &XskBinding<'_>,
        stage_cap: usize,
    ) -> Result<Sock, XskError> {
        let fail = |source: io::Error| XskError::Bind {
            iface: b.iface.to_owned(),
            queue: b.queue,
            source,
        };
        let share = if own.is_some() { None } else { share };
        if own.is_none() && share.is_none() {
            return Err(fail(io::Error::new(
                io::ErrorKind::NotConnected,
                "no bound socket of this worker to share the UMEM with",
            )));
        }
        let xs = Socket::new(own, opts.ring_size).map_err(fail)?;
        let mut attempt = 0;
        loop {
            match xs.bind(b.iface, b.queue, opts.flags, share) {
                Ok(()) => {
                    return Ok(Sock {
                        iface: b.iface.to_owned(),
                        queue: b.queue,
                        xs,
                        lent_rx: 0,
                        lent_tx: 0,
                        tx_stage: Vec::with_capacity(stage_cap),
                        stats: SocketStats::default(),
                        up: true,
                        chain: ChainRx::default(),
                    });
                }
                Err(errno) => {
                    if errno.raw_os_error() == Some(libc::EBUSY) && attempt < config.bind_retries {
                        attempt += 1;
                        debug!(
                            "AF_XDP bind to {} queue {} busy, retry {attempt}",
                            b.iface, b.queue
                        );
                        thread::sleep(config.bind_retry_delay);
                        continue;
                    }
                    return Err(fail(errno));
                }
            }
        }
    }

    /// Ids of the worker's sockets, in binding order.
    pub fn socket_ids(&self) -> impl Iterator<Item = SocketId> {
        (0..self.socks.len() as u8).map(SocketId)
    }

    /// The (interface, queue) a socket is bound to.
    pub fn binding(&self, id: SocketId) -> (&str, u32) {
        let s = &self.socks[usize::from(id.0)];
        (&s.iface, s.queue)
    }

    /// Every socket as (interface, queue, file descriptor): what the XDP program's socket map
    /// needs (`nodeplane_xdp::Loader::register_sockets`).
    pub fn registrations(&self) -> impl Iterator<Item = (&str, u32, RawFd)> + '_ {
        self.socket_ids().map(|id| {
            let (iface, queue) = self.binding(id);
            (iface, queue, self.raw_fd(id))
        })
    }

    /// The socket's file descriptor (for [`crate::Loader::register_xsk`]).
    pub fn raw_fd(&self, id: SocketId) -> RawFd {
        self.socks[usize::from(id.0)].xs.fd()
    }

    /// Userspace counters of a socket.
    pub fn stats(&self, id: SocketId) -> SocketStats {
        self.socks[usize::from(id.0)].stats
    }

    /// The kernel's counters of a socket (`XDP_STATISTICS`: rx dropped, rx ring full, fill
    /// ring empty, invalid descriptors).
    pub fn kernel_stats(&self, id: SocketId) -> io::Result<XdpStatistics> {
        self.socks[usize::from(id.0)].xs.statistics()
    }

    /// Whether TX can carry a checksum request (the UMEM has TX metadata room).
    pub fn tx_metadata(&self) -> bool {
        self.tx_metadata_len != 0
    }

    /// Frames seen coming back from a ring they were not lent to (must stay 0).
    pub fn accounting_errors(&self) -> u64 {
        self.accounting_errors
    }

    /// Whether the socket is in service (not [`XskWorker::set_down`]).
    pub fn is_up(&self, id: SocketId) -> bool {
        self.socks.get(usize::from(id.0)).is_some_and(|s| s.up)
    }

    /// Takes a socket out of service because its interface is gone (call only once the kernel
    /// has unbound it: the device unregistered, `RTM_DELLINK`). Its completions are reaped,
    /// frames waiting in its RX ring dropped, and every frame still lent to it (fill ring,
    /// TX ring) taken back onto the free list: an unbound socket's rings are never read by the
    /// kernel again. No RX, TX, refill or poll on it afterwards; the socket itself stays open
    /// until [`XskWorker::rebind`] replaces it (closing an unbound socket costs nothing).
    /// Returns the frames that were on its TX ring, never to be sent (0 if already down).
    pub fn set_down(&mut self, id: SocketId) -> u32 {
        let s = usize::from(id.0);
        if s >= self.socks.len() || !self.socks[s].up {
            return 0;
        }
        self.reap_completions();
        // Frames the kernel delivered before the unbind: dropped unread.
        loop {
            let mut scratch = std::mem::take(&mut self.scratch);
            // The RX ring hands back frames of this worker's UMEM lent through this socket's
            // fill ring (checked by `transition`).
            let n = self.socks[s].xs.rx_consume(&mut scratch);
            for d in &scratch[..n] {
                if self.transition(d, Owner::Fill(s as u8), Owner::Free) {
                    self.socks[s].lent_rx -= 1;
                    self.socks[s].stats.dropped += 1;
                    self.free.push(*d);
                }
            }
            self.scratch = scratch;
            if n < MAX_BURST {
                break;
            }
        }
        let mut unsent = 0u32;
        for i in 0..self.owner.len() {
            let back = match self.owner[i] {
                Owner::Fill(o) if usize::from(o) == s => false,
                Owner::Tx(o) if usize::from(o) == s => true,
                _ => continue,
            };
            self.owner[i] = Owner::Free;
            // The ring holds its descriptor; the frame's own one, as the UMEM made it, serves.
            self.free.push(self.pristine[i]);
            unsent += u32::from(back);
        }
        let sock = &mut self.socks[s];
        sock.lent_rx = 0;
        sock.lent_tx = 0;
        sock.up = false;
        sock.tx_stage.clear();
        // A negative fd is ignored by poll(2): the dead socket's POLLERR wakes no one.
        self.pollfds[s].fd = -1;
        unsent
    }

    /// Binds a new socket for slot `id` (same interface name, same queue) over this worker's
    /// UMEM, replacing the socket that [`XskWorker::set_down`] took out of service (which is
    /// closed now). No bind retries: a failure is returned and the caller tries again later.
    /// Returns a duplicate of the new socket's descriptor, for the XSKMAP (the worker keeps
    /// the socket; the duplicate may be closed by whoever registers it).
    pub fn rebind(&mut self, id: SocketId) -> Result<OwnedFd, XskError> {
        let s = usize::from(id.0);
        let Some(old) = self.socks.get(s) else {
            return Err(XskError::Config(format!(
                "no socket {} in this worker",
                id.0
            )));
        };
        if old.up {
            return Err(XskError::Config(format!(
                "socket {} ({} queue {}) is in service",
                id.0, old.iface, old.queue
            )));
        }
        let (iface, queue) = (old.iface.clone(), old.queue);
        let cfg = XskConfig {
            bind_retries: 0,
            ..self.config
        };
        let b = XskBinding {
            iface: &iface,
            queue,
        };
        // Any bound socket of the worker serves to share the UMEM (the kernel requires the
        // one named in `sxdp_shared_umem_fd` to be bound).
        let share = self.socks.iter().find(|s| s.up).map(|s| s.xs.fd());
        let mut new = Self::bind(&cfg, self.bind_opts, None, share, &b, self.stage_cap)?;
        // The slot's counters go on across the replacement.
        new.stats = self.socks[s].stats;
        // The old socket (unbound, nothing lent) is closed here.
        self.socks[s] = new;
        let fd = self.socks[s].xs.fd();
        self.pollfds[s].fd = fd;
        self.refill(s);
        // SAFETY: dup(2) of a descriptor this worker owns and holds open here.
        let dup = unsafe { libc::dup(fd) };
        if dup < 0 {
            return Err(XskError::Bind {
                iface,
                queue,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: a descriptor dup(2) just created, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(dup) })
    }

    #[inline]
    fn frame_index(&self, desc: &FrameDesc) -> Option<usize> {
        let i = desc.addr() >> self.frame_shift;
        (i < self.total as usize).then_some(i)
    }

    /// Moves a frame to `to` if it is currently `from`; counts an error otherwise.
    #[inline]
    fn transition(&mut self, desc: &FrameDesc, from: Owner, to: Owner) -> bool {
        match self.frame_index(desc) {
            Some(i) if self.owner[i] == from => {
                self.owner[i] = to;
                true
            }
            _ => {
                self.accounting_errors += 1;
                false
            }
        }
    }

    /// Reaps the completion rings of every socket with frames lent for TX.
    fn reap_completions(&mut self) {
        for s in 0..self.socks.len() {
            while self.socks[s].lent_tx > 0 {
                let mut scratch = std::mem::take(&mut self.scratch);
                // Addresses of frames this socket sent (checked by `transition`).
                let n = self.socks[s].xs.comp_consume(&mut scratch);
                for d in &scratch[..n] {
                    if self.transition(d, Owner::Tx(s as u8), Owner::Free) {
                        self.socks[s].lent_tx -= 1;
                        self.free.push(*d);
                    }
                }
                self.socks[s].stats.tx_completed += n as u64;
                self.scratch = scratch;
                if n < MAX_BURST {
                    break;
                }
            }
        }
    }

    /// Tops up a socket's fill ring from the free list, then kicks if the kernel asks.
    fn refill(&mut self, s: usize) {
        let room = self.socks[s].xs.fill_free(self.ring_size) as usize;
        if room > 0 && self.free.is_empty() {
            self.socks[s].stats.fill_starved += 1;
        }
        let n = room.min(self.free.len());
        if n > 0 {
            let from = self.free.len() - n;
            // The frames come from the free list, so neither the kernel (fill, rx, tx,
            // completion) nor a live burst holds them. `n` is at most the ring's free room, so
            // the produce is all or nothing.
            let got = self.socks[s].xs.fill_produce(&self.free[from..]);
            self.socks[s].lent_rx += got as u32;
            for k in from..from + got {
                let d = self.free[k];
                if let Some(i) = self.frame_index(&d) {
                    self.owner[i] = Owner::Fill(s as u8);
                }
            }
            self.free.drain(from..from + got);
        }
        let sock = &mut self.socks[s];
        if sock.xs.fill_needs_wakeup() {
            sock.stats.fill_kicks += 1;
            // Zero timeout: a kick, never a sleep (see module docs). EINTR is not an error;
            // others are counted, and the next burst kicks again.
            if sock.xs.kick_fill().is_err() {
                sock.stats.fill_kick_errors += 1;
            }
        }
    }

    /// Kicks TX until the ring is drained or stops moving (copy mode sends a bounded batch
    /// per `sendto`).
    fn kick_tx(&mut self, s: usize) {
        let sock = &mut self.socks[s];
        let mut last = u32::MAX;
        for _ in 0..16 {
            if !sock.xs.tx_needs_wakeup() {
                break;
            }
            let free = sock.xs.tx_free_exact();
            if free == self.ring_size || free == last {
                break;
            }
            last = free;
            sock.stats.tx_kicks += 1;
            // ENOBUFS/EAGAIN/EBUSY/ENETDOWN are absorbed by `kick_tx`: the frames stay queued
            // and the next burst kicks again. Anything else is counted (and retried the same
            // way).
            if sock.xs.kick_tx().is_err() {
                sock.stats.tx_kick_errors += 1;
                break;
            }
        }
    }

    /// Receives up to `max` (≤ [`MAX_BURST`]) frames from one socket. Reaps every socket's
    /// completions and refills this socket's fill ring first. The returned [`Burst`] gives
    /// mutable access to each frame; when it is finished (or dropped) each frame is
    /// transmitted or recycled according to its [`Action`] (default [`Action::Drop`]).
    /// An id that is not one of this worker's sockets gives an empty burst.
    pub fn rx_burst(&mut self, id: SocketId, max: usize) -> Burst<'_> {
        let s = usize::from(id.0);
        if s >= self.socks.len() || !self.socks[s].up {
            return Burst {
                w: self,
                sock: s,
                finished: false,
            };
        }
        self.reap_completions();
        self.refill(s);
        let max = max.min(MAX_BURST);
        let mut burst = std::mem::take(&mut self.burst);
        // The RX ring hands back frames of this worker's UMEM that were lent through this
        // socket's fill ring (checked by `transition` below).
        let mut n = self.socks[s].xs.rx_consume(&mut burst[..max]);
        // A chain cut by the burst's end: its other buffers are in the ring already (the
        // kernel publishes a packet's descriptors together), so take them one by one.
        while n > 0 && n < burst.len() && burst[n - 1].options() & XDP_PKT_CONTD != 0 {
            if self.socks[s].xs.rx_consume(&mut burst[n..n + 1]) == 0 {
                break;
            }
            n += 1;
        }
        let mut kept = 0;
        let mut pkts = 0;
        let mut chain = self.socks[s].chain;
        for k in 0..n {
            let d = burst[k];
            let last = d.options() & XDP_PKT_CONTD == 0;
            let len_ok = d.addr() + d.len() <= self.region_len;
            let ok = len_ok && self.transition(&d, Owner::Fill(s as u8), Owner::Held);
            if ok {
                self.socks[s].lent_rx -= 1;
                burst[kept] = d;
                kept += 1;
            } else if !len_ok {
                // Otherwise counted in `transition` (not ours to touch, left where the owner
                // says).
                self.accounting_errors += 1;
            }
            match chain.buffer(ok, last) {
                Verdict::More => {}
                Verdict::Packet(1) => {
                    self.pkt_first[pkts] = (kept - 1) as u16;
                    self.pkt_descs[pkts] = 1;
                    pkts += 1;
                }
                Verdict::Packet(descs) => {
                    let first = kept - descs;
                    if self.linearize(pkts, &burst[first..kept]) {
                        self.pkt_first[pkts] = first as u16;
                        self.pkt_descs[pkts] = descs as u8;
                        self.socks[s].stats.rx_chains += 1;
                        pkts += 1;
                    } else {
                        self.socks[s].stats.rx_chain_dropped += 1;
                        self.release_held(&burst[first..kept]);
                        kept = first;
                    }
                }
                Verdict::Drop { descs, counted } => {
                    self.socks[s].stats.rx_chain_dropped += u64::from(counted);
                    self.release_held(&burst[kept - descs..kept]);
                    kept -= descs;
                }
            }
        }
        if let Some(Verdict::Drop { descs, counted }) = chain.end_of_burst() {
            self.socks[s].stats.rx_chain_dropped += u64::from(counted);
            self.release_held(&burst[kept - descs..kept]);
            kept -= descs;
        }
        self.socks[s].chain = chain;
        for a in &mut self.actions[..pkts] {
            *a = Action::Drop;
        }
        for r in &mut self.csum_req[..pkts] {
            *r = None;
        }
        self.burst = burst;
        self.held = pkts;
        self.held_descs = kept;
        self.socks[s].stats.rx += pkts as u64;
        Burst {
            w: self,
            sock: s,
            finished: false,
        }
    }

    /// Gives held frames back to the free list (a dropped chain).
    fn release_held(&mut self, descs: &[FrameDesc]) {
        for d in descs {
            if let Some(i) = self.frame_index(d) {
                self.owner[i] = Owner::Free;
            }
            self.free.push(*d);
        }
    }

    /// Copies a chain's buffers into packet `p`'s linear slot. False if longer than
    /// [`MAX_CHAIN_BYTES`].
    fn linearize(&mut self, p: usize, descs: &[FrameDesc]) -> bool {
        let total: usize = descs.iter().map(|d| d.len()).sum();
        if total > MAX_CHAIN_BYTES {
            return false;
        }
        let slot = self.lin_base.wrapping_add(p * LIN_SLOT);
        let mut off = 0;
        for d in descs {
            let len = d.len();
            // SAFETY: `d` is held by this burst (no ring holds it, the kernel does not write
            // it) and `addr + len` lies inside the UMEM region (checked in `rx_burst`); the
            // slot (`p` < MAX_BURST, `off + len` ≤ total ≤ MAX_CHAIN_BYTES < LIN_SLOT) lies in
            // `lin`, which exists with multi-buffer (the only way to a chain), and no view of
            // it is live while `rx_burst` runs.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.base.wrapping_add(d.addr()),
                    slot.wrapping_add(off),
                    len,
                )
            };
            off += len;
        }
        self.lin_len[p] = total as u32;
        self.lin_orig[p] = total as u32;
        true
    }

    /// Writes packet `p`'s linear copy back into its chain's frames, filling each frame in
    /// turn, and sets each descriptor's length and `options` for TX. Returns how many of
    /// the chain's descriptors the packet now takes (at least 1); the others are unused.
    ///
    /// A packet of unchanged length has only its first frame written back: the pipeline
    /// rewrites forwarded frames in their headers only (addresses, ports, TTL, checksum
    /// fields, an ICMP error's quoted headers), which all lie in the first frame (3840 bytes
    /// with 4096-byte frames), so the other frames still hold the right bytes. A change of
    /// length (an L2 header removed) shifts every byte: then the whole chain is rewritten.
    fn delinearize(&mut self, p: usize) -> usize {
        let first = usize::from(self.pkt_first[p]);
        let descs = usize::from(self.pkt_descs[p]);
        let total = self.lin_len[p] as usize;
        if self.lin_len[p] == self.lin_orig[p] {
            let len = self.burst[first].len();
            let dst = self.base.wrapping_add(self.burst[first].addr());
            // SAFETY: the frame is held by this burst and `len` is its received length,
            // within its chunk; the slot holds `lin_len` ≥ `len` bytes; no overlap; the
            // burst's views are gone (finishing).
            unsafe {
                std::ptr::copy_nonoverlapping(self.lin_base.wrapping_add(p * LIN_SLOT), dst, len)
            };
            debug_assert!(
                self.tail_unchanged(p),
                "the pipeline rewrote a chain's payload"
            );
            for j in first..first + descs {
                let contd = if j + 1 < first + descs {
                    XDP_PKT_CONTD
                } else {
                    0
                };
                self.burst[j].set_options(contd);
            }
            return descs;
        }
        let mut off = 0;
        let mut used = 0;
        for j in first..first + descs {
            if used > 0 && off == total {
                break;
            }
            let cap = self.frame_capacity(&self.burst[j]);
            let len = cap.min(total - off);
            let dst = self.base.wrapping_add(self.burst[j].addr());
            let src = self.lin_base.wrapping_add(p * LIN_SLOT + off);
            // SAFETY: the frame is held by this burst, and `len` is within its chunk
            // (`frame_capacity`); `off + len` ≤ `lin_len` ≤ MAX_CHAIN_BYTES within the slot;
            // the slot and the UMEM do not overlap; the burst's views are gone (finishing).
            unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
            self.burst[j].set_len(len);
            off += len;
            used += 1;
        }
        for j in first..first + used {
            let contd = if j + 1 < first + used {
                XDP_PKT_CONTD
            } else {
                0
            };
            self.burst[j].set_options(contd);
        }
        used
    }

    /// Whether the frames after the first of packet `p`'s chain still hold what its linear
    /// copy holds (debug builds check [`XskWorker::delinearize`]'s premise with it).
    fn tail_unchanged(&self, p: usize) -> bool {
        let first = usize::from(self.pkt_first[p]);
        let descs = usize::from(self.pkt_descs[p]);
        let mut off = self.burst[first].len();
        for d in &self.burst[first + 1..first + descs] {
            let len = d.len();
            // SAFETY: held frames of this burst and the packet's slot, read only.
            let (a, b) = unsafe {
                (
                    std::slice::from_raw_parts(self.base.wrapping_add(d.addr()), len),
                    std::slice::from_raw_parts(self.lin_base.wrapping_add(p * LIN_SLOT + off), len),
                )
            };
            if a != b {
                return false;
            }
            off += len;
        }
        true
    }

    /// Transmits a copy of `data` in a new frame on socket `id` (for frames the worker
    /// originates: ICMP errors, replies). Kicks TX.
    pub fn tx_copy(&mut self, id: SocketId, data: &[u8]) -> Result<(), TxError> {
        let s = usize::from(id.0);
        if s >= self.socks.len() {
            return Err(TxError::NoSuchSocket(id.0));
        }
        if !self.socks[s].up {
            return Err(TxError::Down(id.0));
        }
        self.reap_completions();
        let Some(mut d) = self.free.pop() else {
            return Err(TxError::NoFreeFrame);
        };
        d.set_options(0);
        let max = self.frame_capacity(&d);
        if data.len() > max {
            self.free.push(d);
            return Err(TxError::TooLong {
                len: data.len(),
                max,
            });
        }
        self.write_frame(&mut d, data);
        // After a successful produce the kernel owns `d` until it shows up on this socket's
        // completion ring.
        let n = self.socks[s].xs.tx_produce(std::slice::from_ref(&d));
        if n == 0 {
            self.socks[s].stats.tx_ring_full += 1;
            self.free.push(d);
            return Err(TxError::RingFull);
        }
        if let Some(i) = self.frame_index(&d) {
            self.owner[i] = Owner::Tx(s as u8);
        }
        self.socks[s].lent_tx += 1;
        self.socks[s].stats.tx += 1;
        self.kick_tx(s);
        Ok(())
    }

    /// Whether a frame at `d` has room for TX metadata before its data (the UMEM has it, and
    /// the data starts far enough into its chunk: received frames and the worker's own start
    /// [`XDP_PACKET_HEADROOM`] in).
    #[inline]
    fn metadata_room(&self, d: &FrameDesc) -> bool {
        let size = 1usize << self.frame_shift;
        self.tx_metadata_len != 0 && (d.addr() & (size - 1)) >= self.tx_metadata_len as usize
    }

    /// Puts a checksum request in the TX metadata before `d`'s data and marks `d` as carrying
    /// it. False (nothing written) where there is no room ([`XskWorker::metadata_room`]).
    fn put_tx_metadata(&mut self, d: &mut FrameDesc, start: u16, off: u16) -> bool {
        if !self.metadata_room(d) {
            return false;
        }
        let meta = TxMetadata::checksum(start, off);
        let at = self
            .base
            .wrapping_add(d.addr() - self.tx_metadata_len as usize);
        // SAFETY: `d` is held by the worker (a burst's frame being staged, or one off the free
        // list): no ring holds it and the kernel neither reads nor writes it; the metadata
        // lies in its chunk before the data (`metadata_room`), inside the UMEM mapping, and
        // `TxMetadata` is plain integers (written unaligned: the UMEM gives no alignment).
        unsafe { at.cast::<TxMetadata>().write_unaligned(meta) };
        d.set_options(d.options() | XDP_TX_METADATA);
        true
    }

    /// Writes `data` into a frame off the free list (`data.len()` ≤ its capacity, checked by
    /// the caller) and sets its length.
    fn write_frame(&mut self, d: &mut FrameDesc, data: &[u8]) {
        debug_assert!(data.len() <= self.frame_capacity(d));
        let len = data.len().min(self.frame_capacity(d));
        // SAFETY: `d` came off the free list: no ring and no burst holds it (the kernel does
        // not read or write it); `addr + len` lies within its chunk (`frame_capacity`), inside
        // the UMEM mapping; `data` is not UMEM memory held by anyone else.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.wrapping_add(d.addr()), len)
        };
        d.set_len(len);
    }

    /// Where packet `i` of the current burst is: its frame, or its chain's linear copy.
    #[inline]
    fn view(&self, i: usize) -> (*mut u8, usize) {
        if self.pkt_descs[i] > 1 {
            // In bounds: a slot per packet of a burst, `lin_len` at most `MAX_CHAIN_BYTES`.
            let p = self.lin_base.wrapping_add(i * LIN_SLOT);
            return (p, self.lin_len[i] as usize);
        }
        let d = &self.burst[usize::from(self.pkt_first[i])];
        // In bounds: `rx_burst` kept only frames with addr + len inside the region.
        (self.base.wrapping_add(d.addr()), d.len())
    }

    /// Bytes a frame can hold from its descriptor's start to the end of its chunk.
    fn frame_capacity(&self, d: &FrameDesc) -> usize {
        let size = 1usize << self.frame_shift;
        size - (d.addr() & (size - 1))
    }

    /// Reaps completions, tops up every fill ring and kicks pending TX (call when idle).
    pub fn service(&mut self) {
        self.reap_completions();
        for s in 0..self.socks.len() {
            if self.socks[s].up {
                self.refill(s);
                self.kick_tx(s);
            }
        }
    }

    /// Waits up to `timeout_ms` for any socket to have frames to receive (for an idle
    /// worker; a busy one never calls this). Returns whether one has.
    pub fn wait_rx(&mut self, timeout_ms: i32) -> io::Result<bool> {
        for p in &mut self.pollfds {
            p.revents = 0;
        }
        // SAFETY: `pollfds` is a valid array of `len` pollfd structs for the call's duration;
        // its fds are the worker's open sockets.
        let r = unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(r > 0)
    }

    /// Where the frames are now (rings are read; outside a burst `held` is 0).
    pub fn accounting(&mut self) -> FrameAccounting {
        let mut a = FrameAccounting {
            total: self.total,
            free: self.free.len() as u32,
            held: self.held_descs as u32 + self.staged_copies,
            ..FrameAccounting::default()
        };
        for s in &mut self.socks {
            // Read the ring after our own counter: a frame the kernel moves from fill to rx
            // in between is still within `lent_rx`.
            let rx = s.xs.rx_avail_exact().min(s.lent_rx);
            let comp = s.xs.comp_avail_exact().min(s.lent_tx);
            a.in_rx += rx;
            a.in_fill += s.lent_rx - rx;
            a.in_completion += comp;
            a.in_tx += s.lent_tx - comp;
        }
        a
    }

    /// Checks the frame invariant: counters add up to the total, each frame's recorded owner
    /// agrees with the counters, the free list holds no frame twice, and no frame ever came
    /// back from a ring it was not lent to.
    pub fn check_accounting(&mut self) -> Result<FrameAccounting, AccountingError> {
        let acct = self.accounting();
        let fail = |detail: String| AccountingError { detail, acct };
        if acct.sum() != u64::from(acct.total) {
            return Err(fail(format!(
                "places sum to {}, not {}",
                acct.sum(),
                acct.total
            )));
        }
        if self.accounting_errors != 0 {
            return Err(fail(format!(
                "{} frames came back from a ring they were not lent to",
                self.accounting_errors
            )));
        }
        if self.held_descs != 0 || self.staged_copies != 0 {
            return Err(fail("frames held outside a burst".into()));
        }
        let (mut free, mut held) = (0u32, 0u32);
        let mut fill = vec![0u32; self.socks.len()];
        let mut tx = vec![0u32; self.socks.len()];
        for o in &self.owner {
            match *o {
                Owner::Free => free += 1,
                Owner::Held => held += 1,
                Owner::Fill(s) => fill[usize::from(s)] += 1,
                Owner::Tx(s) => tx[usize::from(s)] += 1,
            }
        }
        if free != acct.free || held != acct.held {
            return Err(fail(format!(
                "owners say {free} free and {held} held, counters {} and {}",
                acct.free, acct.held
            )));
        }
        for (s, sock) in self.socks.iter().enumerate() {
            if fill[s] != sock.lent_rx || tx[s] != sock.lent_tx {
                return Err(fail(format!(
                    "socket {s}: owners say {} rx / {} tx lent, counters {} / {}",
                    fill[s], tx[s], sock.lent_rx, sock.lent_tx
                )));
            }
        }
        let mut seen = vec![false; self.total as usize];
        for d in &self.free {
            match self.frame_index(d) {
                Some(i) if !seen[i] && self.owner[i] == Owner::Free => seen[i] = true,
                _ => return Err(fail(format!("free list entry {:#x} is bad", d.addr()))),
            }
        }
        Ok(acct)
    }

    fn finish_burst(&mut self, s: usize) {
        let n = self.held;
        let mut touched = self.tx_touched;
        for k in 0..n {
            let first = usize::from(self.pkt_first[k]);
            let descs = usize::from(self.pkt_descs[k]);
            match self.actions[k] {
                Action::Tx(SocketId(t))
                    if usize::from(t) < self.socks.len()
                        && self.socks[usize::from(t)].up
                        && self.socks[usize::from(t)].tx_stage.len() + descs <= self.stage_cap =>
                {
                    let used = if descs == 1 {
                        self.burst[first].set_options(0);
                        1
                    } else {
                        self.socks[usize::from(t)].stats.tx_chains += 1;
                        self.delinearize(k)
                    };
                    if let Some((start, off)) = self.csum_req[k] {
                        let mut d = self.burst[first];
                        if self.put_tx_metadata(&mut d, start, off) {
                            self.burst[first] = d;
                        }
                    }
                    let t = usize::from(t);
                    for j in first..first + used {
                        let d = self.burst[j];
                        self.socks[t].tx_stage.push(d);
                    }
                    touched |= 1 << t;
                    for j in first + used..first + descs {
                        let d = self.burst[j];
                        self.release_held(&[d]);
                    }
                }
                Action::Release => {
                    self.socks[s].stats.released += 1;
                    self.release_burst_packet(first, descs);
                }
                _ => {
                    self.socks[s].stats.dropped += 1;
                    self.release_burst_packet(first, descs);
                }
            }
        }
        self.held = 0;
        self.held_descs = 0;
        self.staged_copies = 0;
        self.tx_touched = 0;
        while touched != 0 {
            let t = touched.trailing_zeros() as usize;
            touched &= touched - 1;
            let stage = std::mem::take(&mut self.socks[t].tx_stage);
            // Produce is all or nothing, so ask for no more than the ring's free room, cut
            // at a packet's end (a chain goes whole or not at all).
            let room = self.socks[t].xs.tx_free(stage.len() as u32) as usize;
            let mut cut = room.min(stage.len());
            while cut > 0 && stage[cut - 1].options() & XDP_PKT_CONTD != 0 {
                cut -= 1;
            }
            // The staged frames were received by this worker (held in the burst, now released
            // by it) and belong to its UMEM; each is given to one ring only.
            let sent = self.socks[t].xs.tx_produce(&stage[..cut]);
            for d in &stage[..sent] {
                if let Some(i) = self.frame_index(d) {
                    self.owner[i] = Owner::Tx(t as u8);
                }
            }
            let mut unsent_pkts = 0u64;
            for d in &stage[sent..] {
                if let Some(i) = self.frame_index(d) {
                    self.owner[i] = Owner::Free;
                }
                unsent_pkts += u64::from(d.options() & XDP_PKT_CONTD == 0);
                self.free.push(*d);
            }
            let sent_pkts = stage[..sent]
                .iter()
                .filter(|d| d.options() & XDP_PKT_CONTD == 0)
                .count() as u64;
            let sock = &mut self.socks[t];
            sock.lent_tx += sent as u32;
            sock.stats.tx += sent_pkts;
            sock.stats.tx_ring_full += unsent_pkts;
            let mut stage = stage;
            stage.clear();
            self.socks[t].tx_stage = stage;
            if sent > 0 {
                self.kick_tx(t);
            }
        }
        if s < self.socks.len() && self.socks[s].up {
            self.refill(s);
        }
    }

    /// Gives packet's frames (`burst[first..first + descs]`) back to the free list.
    fn release_burst_packet(&mut self, first: usize, descs: usize) {
        for j in first..first + descs {
            let d = self.burst[j];
            if let Some(i) = self.frame_index(&d) {
                self.owner[i] = Owner::Free;
            }
            self.free.push(d);
        }
    }
}

/// Frames received by one [`XskWorker::rx_burst`]. Each frame's bytes can be read and
/// rewritten in place; its [`Action`] decides what happens when the burst is finished
/// (explicitly with [`Burst::finish`], or on drop).
pub struct Burst<'w> {
    w: &'w mut XskWorker,
    sock: usize,
    finished: bool,
}

impl fmt::Debug for Burst<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Burst")
            .field("sock", &self.sock)
            .field("len", &self.w.held)
            .finish()
    }
}

impl<'w> Burst<'w> {
    /// Frames in the burst.
    pub fn len(&self) -> usize {
        self.w.held
    }

    /// No frames were received.
    pub fn is_empty(&self) -> bool {
        self.w.held == 0
    }

    /// The socket the frames came from.
    pub fn rx_socket(&self) -> SocketId {
        SocketId(self.sock as u8)
    }

    #[inline]
    fn view(&self, i: usize) -> (*mut u8, usize) {
        self.w.view(i)
    }

    /// Frames (buffers) packet `i` arrived in: 1, or the length of its chain (multi-buffer).
    pub fn buffers(&self, i: usize) -> usize {
        if i < self.w.held {
            usize::from(self.w.pkt_descs[i])
        } else {
            0
        }
    }

    /// The bytes of frame `i`. Panics if `i >= len()`.
    pub fn frame(&self, i: usize) -> &[u8] {
        assert!(i < self.w.held, "frame {i} of a burst of {}", self.w.held);
        let (p, len) = self.view(i);
        // SAFETY: frame `i` is held by this burst (no ring holds it, the kernel does not
        // write it), lies inside the UMEM mapping, and `&self` excludes a mutable view.
        unsafe { std::slice::from_raw_parts(p, len) }
    }

    /// The bytes of frame `i`, writable in place. Panics if `i >= len()`.
    pub fn frame_mut(&mut self, i: usize) -> &mut [u8] {
        assert!(i < self.w.held, "frame {i} of a burst of {}", self.w.held);
        let (p, len) = self.view(i);
        // SAFETY: as in `frame`; `&mut self` makes this the only view of the frame.
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }

    /// Every frame with its action, for a pass over the whole burst.
    pub fn frames_mut(&mut self) -> impl Iterator<Item = (&mut [u8], &mut Action)> + '_ {
        let n = self.w.held;
        let views: [(*mut u8, usize); MAX_BURST] = std::array::from_fn(|i| {
            if i < n {
                self.w.view(i)
            } else {
                (self.w.base, 0)
            }
        });
        self.w.actions[..n]
            .iter_mut()
            .enumerate()
            .map(move |(i, a)| {
                let (p, len) = views[i];
                // SAFETY: the packets of a burst are distinct UMEM chunks held by it or
                // distinct slots of the linear copies (see `frame`), so the views are
                // disjoint; they live as long as `&mut self`.
                (unsafe { std::slice::from_raw_parts_mut(p, len) }, a)
            })
    }

    /// Sets the action of frame `i` (ignored if `i >= len()`).
    pub fn set_action(&mut self, i: usize, action: Action) {
        if i < self.w.held {
            self.w.actions[i] = action;
        }
    }

    /// The actions of all frames (VPP's `next[]`), to fill in one pass.
    pub fn actions_mut(&mut self) -> &mut [Action] {
        &mut self.w.actions[..self.w.held]
    }

    /// Bytes frame `i` can grow to (from its start to the end of its UMEM chunk; for a
    /// chain, what its frames hold, at most [`MAX_CHAIN_BYTES`]).
    pub fn capacity(&self, i: usize) -> usize {
        if i >= self.w.held {
            return 0;
        }
        let first = usize::from(self.w.pkt_first[i]);
        let descs = usize::from(self.w.pkt_descs[i]);
        self.w.burst[first..first + descs]
            .iter()
            .map(|d| self.w.frame_capacity(d))
            .sum::<usize>()
            .min(if descs > 1 {
                MAX_CHAIN_BYTES
            } else {
                usize::MAX
            })
    }

    /// Whether packet `i` can leave with a checksum request (the UMEM has TX metadata and the
    /// packet's first frame room for it).
    pub fn can_request_checksum(&self, i: usize) -> bool {
        i < self.w.held
            && self
                .w
                .metadata_room(&self.w.burst[usize::from(self.w.pkt_first[i])])
    }

    /// Asks the kernel to finish packet `i`'s L4 checksum as it transmits it: sum from
    /// `csum_start` (from the packet's first byte) to the end, store at `csum_start +
    /// csum_offset` (AF_XDP TX metadata, `XDP_TXMD_FLAGS_CHECKSUM`; copy mode hands the
    /// driver a CHECKSUM_PARTIAL skb). The field must hold the pseudo-header sum
    /// (`crate::partial::offload_request`). False, nothing requested: see
    /// [`Burst::can_request_checksum`].
    pub fn request_checksum(&mut self, i: usize, csum_start: u16, csum_offset: u16) -> bool {
        if !self.can_request_checksum(i) {
            return false;
        }
        self.w.csum_req[i] = Some((csum_start, csum_offset));
        true
    }

    /// Changes the length of frame `i` (new bytes are whatever the chunk held). Returns
    /// `false`, changing nothing, if `i >= len()` or `len` exceeds [`Burst::capacity`].
    pub fn set_len(&mut self, i: usize, len: usize) -> bool {
        // `i < held` first: `capacity` is 0 for a frame not in the burst, which a length of 0
        // would pass, and `burst[i]` past `held` is a stale (or, from 64 on, no) descriptor.
        if i >= self.w.held || len > self.capacity(i) {
            return false;
        }
        if self.w.pkt_descs[i] > 1 {
            self.w.lin_len[i] = len as u32;
            return true;
        }
        self.w.burst[usize::from(self.w.pkt_first[i])].set_len(len);
        true
    }

    /// Queues a copy of `data` for TX on socket `id` when the burst finishes (with the
    /// burst's forwarded frames: one kick per socket), without a checksum request: in one new
    /// frame, or as a chain where the socket has multi-buffer ([`Burst::tx_copy_req`]). For
    /// frames the pipeline originates or releases mid-burst (ICMP errors, replies, reassembled
    /// fragments).
    pub fn tx_copy(&mut self, id: SocketId, data: &[u8]) -> Result<(), TxError> {
        self.tx_copy_req(id, data, None).map(|_| ())
    }

    /// Whether a copy queued by [`Burst::tx_copy_req`] can carry a checksum request: the UMEM
    /// has TX metadata, and every frame off the free list starts [`XDP_PACKET_HEADROOM`] into
    /// its chunk, room enough for it.
    pub fn copy_can_request_checksum(&self) -> bool {
        self.w.tx_metadata_len != 0 && self.w.tx_metadata_len as usize <= XDP_PACKET_HEADROOM
    }

    /// Queues a copy of `data` for TX on socket `id` when the burst finishes: in one new
    /// frame, or, longer than a frame holds, as a chain of new frames (sockets with
    /// multi-buffer only; at most [`MAX_CHAIN`] frames), each but the last flagged
    /// [`XDP_PKT_CONTD`], queued whole or not at all like a forwarded chain. `csum` (see
    /// [`Burst::request_checksum`]; the field must already hold the pseudo-header sum) goes
    /// in the first frame's TX metadata. Returns whether it did (false without TX metadata).
    /// For a packet handed in by another worker (`crate::handoff`).
    pub fn tx_copy_req(
        &mut self,
        id: SocketId,
        data: &[u8],
        csum: Option<(u16, u16)>,
    ) -> Result<bool, TxError> {
        let w = &mut *self.w;
        let t = usize::from(id.0);
        if t >= w.socks.len() {
            return Err(TxError::NoSuchSocket(id.0));
        }
        if !w.socks[t].up {
            return Err(TxError::Down(id.0));
        }
        let one = (1usize << w.frame_shift) - XDP_PACKET_HEADROOM;
        let most = if w.config.multi_buffer { MAX_CHAIN } else { 1 };
        if data.len() > one * most {
            return Err(TxError::TooLong {
                len: data.len(),
                max: one * most,
            });
        }
        // Copies take at most TX_STAGE descriptors of the stage as single frames; chains may
        // use the rest but what a burst's forwarded packets can need (their descriptors).
        let room = if data.len() <= one {
            TX_STAGE
        } else {
            w.stage_cap.saturating_sub(MAX_BURST + MAX_CHAIN)
        };
        let base = w.socks[t].tx_stage.len();
        let mut off = 0;
        let mut put = false;
        let mut k = 0;
        let failed = loop {
            if k == most {
                break Some(TxError::TooLong {
                    len: data.len(),
                    max: one * most,
                });
            }
            if base + k >= room {
                break Some(TxError::RingFull);
            }
            let Some(mut d) = w.free.pop() else {
                break Some(TxError::NoFreeFrame);
            };
            d.set_options(0);
            let len = w.frame_capacity(&d).min(data.len() - off);
            w.write_frame(&mut d, &data[off..off + len]);
            off += len;
            if k == 0 {
                if let Some((start, o)) = csum {
                    put = w.put_tx_metadata(&mut d, start, o);
                }
            }
            if off < data.len() {
                d.set_options(d.options() | XDP_PKT_CONTD);
            }
            if let Some(i) = w.frame_index(&d) {
                w.owner[i] = Owner::Held;
            }
            w.socks[t].tx_stage.push(d);
            k += 1;
            if off == data.len() {
                break None;
            }
        };
        if let Some(e) = failed {
            // Nothing queued: the frames taken go back.
            while w.socks[t].tx_stage.len() > base {
                if let Some(d) = w.socks[t].tx_stage.pop() {
                    w.release_held(&[d]);
                }
            }
            if e == TxError::RingFull {
                w.socks[t].stats.tx_ring_full += 1;
            }
            return Err(e);
        }
        // Every free frame starts XDP_PACKET_HEADROOM into its chunk: a request asked for
        // where `copy_can_request_checksum` holds always finds room (the field holds only the
        // pseudo-header sum, so a request lost here would send a bad checksum).
        debug_assert!(csum.is_none() || put || w.tx_metadata_len == 0);
        w.staged_copies += 1;
        w.socks[t].stats.tx_chains += u64::from(k > 1);
        w.tx_touched |= 1 << t;
        Ok(put)
    }

    /// Transmits or recycles every frame according to its action, kicks TX, refills.
    pub fn finish(mut self) {
        self.finished = true;
        self.w.finish_burst(self.sock);
    }
}

impl Drop for Burst<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.w.finish_burst(self.sock);
        }
    }
}

/// Closing an AF_XDP socket waits in the kernel for an RCU grace period (`xsk_release` ->
/// `xsk_unbind_dev` -> `synchronize_net`): closed one after the other, a worker's N sockets
/// would cost N grace periods in a row (about 17 ms each on an idle 2-vCPU VM, 8 sockets: most
/// of the daemon's stop time). So each socket's rings are unmapped here and its descriptor, the
/// last reference, is closed from a thread of its own: the kernel releases run concurrently and
/// share grace periods. The UMEM is unmapped last; its pages stay pinned by the kernel until
/// the last socket that uses it is released, so nothing the kernel writes meanwhile lands in
/// memory that was given back.
impl Drop for XskWorker {
    fn drop(&mut self) {
        let fds: Vec<OwnedFd> = self.socks.drain(..).map(|s| s.xs.into_fd()).collect();
        if fds.len() < 2 {
            return;
        }
        thread::scope(|scope| {
            for fd in fds {
                // If no thread can be spawned, the closure (and its fd) is dropped right here:
                // that socket's release runs in line.
                let _ = thread::Builder::new()
                    .name("np-xsk-close".into())
                    .spawn_scoped(scope, move || drop(fd));
            }
        });
    }
}
