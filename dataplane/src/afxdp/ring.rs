//! The kernel's AF_XDP interface, raw: a UMEM registered on an `AF_XDP` socket, the four rings
//! of a socket mapped from the kernel, their producer/consumer protocol, bind, statistics.
//! [`super::xsk`] builds the worker's frame ownership on top of it; this file only speaks
//! the uapi (`linux/if_xdp.h` of 6.18) and knows nothing of frames' owners.
//!
//! Rings: single producer, single consumer, indices free-running `u32`s. A producer writes
//! entries, then publishes them with a release store of `producer`; the consumer reads
//! `producer` with an acquire load before it reads entries, reads them, then hands the slots
//! back with a release store of `consumer` (the kernel side: `smp_load_acquire` /
//! `smp_store_release` in net/xdp/xsk_queue.h; libxdp's `xsk.h` does the same). Each side keeps
//! a cached copy of the other's index and reloads it only when the cache says "not enough".
//!
//! TX metadata (`tx_metadata_len`, 6.8+, with `XDP_UMEM_TX_METADATA_LEN` since 6.11): every
//! TX descriptor's data must start at least `tx_metadata_len` bytes into its chunk; a
//! descriptor with [`XDP_TX_METADATA`] in its options has a [`TxMetadata`] right before its
//! data. Copy mode turns a checksum request into a CHECKSUM_PARTIAL skb (`xsk_skb_metadata`);
//! [`XDP_UMEM_TX_SW_CSUM`] (not used here) would make the kernel complete it in software.
#![expect(
    unsafe_code,
    reason = "AF_XDP rings and UMEM frames are shared memory with the kernel"
)]

use std::{
    ffi::CString,
    io, mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

// uapi linux/if_xdp.h (6.18); the libc crate's copy predates `tx_metadata_len`.
const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_PGOFF_RX_RING: libc::off_t = 0;
const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;
const XDP_RING_NEED_WAKEUP: u32 = 1;

/// Bind flag: share the UMEM of the socket in `sxdp_shared_umem_fd`.
pub const XDP_SHARED_UMEM: u16 = 1 << 0;
/// Bind flag: copy mode.
pub const XDP_COPY: u16 = 1 << 1;
/// Bind flag: zero-copy mode.
pub const XDP_ZEROCOPY: u16 = 1 << 2;
/// Bind flag: the rings tell when the kernel needs a wakeup.
pub const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
/// Bind flag: multi-buffer packets (scatter-gather).
pub const XDP_USE_SG: u16 = 1 << 4;
/// UMEM flag: the kernel completes TX checksum requests in software (not used).
pub const XDP_UMEM_TX_SW_CSUM: u32 = 1 << 1;
/// UMEM flag: `tx_metadata_len` is meant (required since 6.11).
const XDP_UMEM_TX_METADATA_LEN: u32 = 1 << 2;
/// Descriptor option: more buffers of this packet follow.
pub const XDP_PKT_CONTD: u32 = 1 << 0;
/// Descriptor option: a [`TxMetadata`] precedes the data.
pub const XDP_TX_METADATA: u32 = 1 << 1;
/// [`TxMetadata::flags`]: a checksum request.
pub const XDP_TXMD_FLAGS_CHECKSUM: u64 = 1 << 1;
/// The kernel's headroom before received data in each chunk (copy mode with UMEM headroom 0):
/// received frames start this far into their chunk, and so do frames the worker writes.
pub const XDP_PACKET_HEADROOM: usize = 256;

/// `struct xdp_umem_reg` (6.18).
#[repr(C)]
#[derive(Default)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

/// `struct sockaddr_xdp`.
#[repr(C)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

/// `struct xdp_ring_offset`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

/// `struct xdp_mmap_offsets`.
#[repr(C)]
#[derive(Default)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

/// `struct xsk_tx_metadata` as far as a checksum request needs it (24 bytes with the rest of
/// the request union: `launch_time`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxMetadata {
    /// `XDP_TXMD_FLAGS_*`.
    pub flags: u64,
    /// Where checksumming starts, from the packet's first byte.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
    _pad: u32,
    _launch_time: u64,
}

impl TxMetadata {
    /// A checksum request: sum from `csum_start` to the end, store at `csum_start + offset`.
    pub fn checksum(csum_start: u16, csum_offset: u16) -> Self {
        TxMetadata {
            flags: XDP_TXMD_FLAGS_CHECKSUM,
            csum_start,
            csum_offset,
            ..TxMetadata::default()
        }
    }
}

/// Bytes reserved before each TX descriptor's data for its [`TxMetadata`].
pub const TX_METADATA_LEN: u32 = mem::size_of::<TxMetadata>() as u32;

/// A ring descriptor (`struct xdp_desc`): where a packet's buffer is in the UMEM, its length,
/// and its options ([`XDP_PKT_CONTD`], [`XDP_TX_METADATA`]). Completion and fill rings carry
/// only the address.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameDesc {
    addr: u64,
    len: u32,
    options: u32,
}

impl FrameDesc {
    /// A descriptor of `len` bytes at UMEM offset `addr`.
    pub fn new(addr: usize, len: usize) -> Self {
        FrameDesc {
            addr: addr as u64,
            len: len as u32,
            options: 0,
        }
    }
    /// Offset of the data in the UMEM.
    #[inline]
    pub fn addr(&self) -> usize {
        self.addr as usize
    }
    /// Bytes of data.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }
    /// Whether it holds no data.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Sets the data length.
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        self.len = len as u32;
    }
    /// The options bits.
    #[inline]
    pub fn options(&self) -> u32 {
        self.options
    }
    /// Sets the options bits.
    #[inline]
    pub fn set_options(&mut self, options: u32) {
        self.options = options;
    }
}

/// The kernel's counters of a socket (`struct xdp_statistics`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct XdpStatistics {
    rx_dropped: u64,
    rx_invalid_descs: u64,
    tx_invalid_descs: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty_descs: u64,
    tx_ring_empty_descs: u64,
}

impl XdpStatistics {
    /// Received frames dropped for reasons other than an invalid descriptor.
    pub fn rx_dropped(&self) -> u64 {
        self.rx_dropped
    }
    /// Received frames dropped for an invalid descriptor.
    pub fn rx_invalid_descs(&self) -> u64 {
        self.rx_invalid_descs
    }
    /// TX descriptors the kernel refused.
    pub fn tx_invalid_descs(&self) -> u64 {
        self.tx_invalid_descs
    }
    /// Received frames dropped because the RX ring was full.
    pub fn rx_ring_full(&self) -> u64 {
        self.rx_ring_full
    }
    /// Times the fill ring was empty.
    pub fn rx_fill_ring_empty_descs(&self) -> u64 {
        self.rx_fill_ring_empty_descs
    }
    /// Times the TX ring was empty when the kernel looked.
    pub fn tx_ring_empty_descs(&self) -> u64 {
        self.tx_ring_empty_descs
    }
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// An anonymous or ring mapping, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize, fd: Option<RawFd>, offset: libc::off_t) -> io::Result<Mapping> {
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
            ),
        };
        // SAFETY: a fresh mapping chosen by the kernel (no address given), so nothing existing
        // is replaced; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_err());
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly a mapping this value made and owns; nothing refers
        // into it once its owner (a ring or the UMEM) is dropped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a valid `T` for the call's duration and its size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            opt,
            (v as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(last_err());
    }
    Ok(())
}

fn getsockopt<T: Default>(fd: RawFd, opt: libc::c_int) -> io::Result<T> {
    let mut v = T::default();
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` is writable for `len` bytes, and the kernel writes at most `len`; every
    // `T` used here is plain integers, so any bytes make a valid value.
    let r = unsafe { libc::getsockopt(fd, SOL_XDP, opt, (&mut v as *mut T).cast(), &mut len) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(v)
}

fn xdp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: a descriptor socket(2) just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A registered UMEM: the memory (anonymous, populated) and the socket it was registered on.
/// The memory outlives every socket that uses it only through the owner's drop order (the
/// worker drops its sockets first); the kernel pins the pages while any socket holds the UMEM.
#[derive(Debug)]
pub struct Umem {
    mem: Mapping,
    /// The registering socket; taken by the first binding ([`Umem::take_fd`]).
    fd: Option<OwnedFd>,
    frame_size: u32,
    frames: u32,
    tx_metadata_len: u32,
}

// SAFETY: the mapping is owned by the `Umem` and not tied to a thread; whoever owns it is the
// only one to hand out views into it.
unsafe impl Send for Umem {}

impl Umem {
    /// Maps and registers `frames` chunks of `frame_size` bytes. With `tx_metadata`, asks for
    /// [`TX_METADATA_LEN`] bytes of TX metadata per chunk; a kernel that refuses that
    /// (`EINVAL`: older than 6.11) gets a UMEM without it ([`Umem::tx_metadata_len`] 0).
    pub fn new(frame_size: u32, frames: u32, tx_metadata: bool) -> io::Result<Umem> {
        let len = frames as usize * frame_size as usize;
        let mem = Mapping::new(len, None, 0)?;
        let fd = xdp_socket()?;
        let mut reg = UmemReg {
            addr: mem.ptr.as_ptr() as u64,
            len: len as u64,
            chunk_size: frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        let mut tx_metadata_len = 0;
        if tx_metadata {
            reg.flags = XDP_UMEM_TX_METADATA_LEN;
            reg.tx_metadata_len = TX_METADATA_LEN;
            match setsockopt(fd.as_raw_fd(), XDP_UMEM_REG, &reg) {
                Ok(()) => tx_metadata_len = TX_METADATA_LEN,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    reg.flags = 0;
                    reg.tx_metadata_len = 0;
                    setsockopt(fd.as_raw_fd(), XDP_UMEM_REG, &reg)?;
                }
                Err(e) => return Err(e),
            }
        } else {
            setsockopt(fd.as_raw_fd(), XDP_UMEM_REG, &reg)?;
        }
        Ok(Umem {
            mem,
            fd: Some(fd),
            frame_size,
            frames,
            tx_metadata_len,
        })
    }

    /// Start of the memory.
    pub fn base(&self) -> *mut u8 {
        self.mem.ptr.as_ptr()
    }

    /// Bytes of memory.
    pub fn len(&self) -> usize {
        self.mem.len
    }

    /// Never empty (kept for the `len` convention).
    pub fn is_empty(&self) -> bool {
        self.mem.len == 0
    }

    /// Chunks.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Chunk size.
    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// Bytes of TX metadata before each TX descriptor's data (0: none).
    pub fn tx_metadata_len(&self) -> u32 {
        self.tx_metadata_len
    }

    /// The registering socket, once: the first socket bound over this UMEM must be it.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fd.take()
    }
}

/// One mapped ring of entries `T` (a [`FrameDesc`] for RX/TX, a `u64` address for fill and
/// completion), with the cached indices of one side.
#[derive(Debug)]
struct Ring<T> {
    _map: Mapping,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    ring: NonNull<T>,
    mask: u32,
    size: u32,
    cached_prod: u32,
    cached_cons: u32,
}

impl<T: Copy> Ring<T> {
    fn map(fd: RawFd, off: &RingOffset, size: u32, pgoff: libc::off_t) -> io::Result<Self> {
        let len = off.desc as usize + size as usize * mem::size_of::<T>();
        let map = Mapping::new(len, Some(fd), pgoff)?;
        let at = |o: u64| map.ptr.as_ptr().wrapping_add(o as usize);
        // The offsets come from the kernel's XDP_MMAP_OFFSETS and lie inside the mapping it
        // sized by them; the kernel aligns them (u32 indices, 64-byte aligned rings).
        let ring = Ring {
            producer: NonNull::new(at(off.producer).cast()).expect("inside a mapping"),
            consumer: NonNull::new(at(off.consumer).cast()).expect("inside a mapping"),
            flags: NonNull::new(at(off.flags).cast()).expect("inside a mapping"),
            ring: NonNull::new(at(off.desc).cast()).expect("inside a mapping"),
            mask: size - 1,
            size,
            cached_prod: 0,
            cached_cons: 0,
            _map: map,
        };
        Ok(ring)
    }

    #[inline]
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping (see `map`); the kernel accesses it atomically.
        unsafe { self.producer.as_ref() }
    }

    #[inline]
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as `producer`.
        unsafe { self.consumer.as_ref() }
    }

    #[inline]
    fn needs_wakeup(&self) -> bool {
        // SAFETY: as `producer`.
        unsafe { self.flags.as_ref() }.load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }

    #[inline]
    fn slot(&self, idx: u32) -> *mut T {
        self.ring.as_ptr().wrapping_add((idx & self.mask) as usize)
    }

    // Producer side.

    fn init_prod(&mut self) {
        self.cached_prod = self.producer().load(Ordering::Relaxed);
        self.cached_cons = self
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(self.size);
    }

    /// Free entries, at least `want` if there are (reloads the consumer only when short).
    #[inline]
    fn prod_free(&mut self, want: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= want {
            return free;
        }
        self.cached_cons = self
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(self.size);
        self.cached_cons.wrapping_sub(self.cached_prod)
    }

    /// Writes all of `items` and publishes them, or nothing if they do not all fit.
    #[inline]
    fn produce(&mut self, items: &[T]) -> usize {
        let n = items.len() as u32;
        if n == 0 || self.prod_free(n) < n {
            return 0;
        }
        for (k, it) in items.iter().enumerate() {
            // SAFETY: the slot is one of the `free` entries the consumer handed back (checked
            // above), so the kernel does not read it until `producer` moves past it.
            unsafe {
                self.slot(self.cached_prod.wrapping_add(k as u32))
                    .write(*it)
            };
        }
        self.cached_prod = self.cached_prod.wrapping_add(n);
        // Release: the entries written above are visible before the new producer index.
        self.producer().store(self.cached_prod, Ordering::Release);
        items.len()
    }

    // Consumer side.

    fn init_cons(&mut self) {
        self.cached_prod = self.producer().load(Ordering::Acquire);
        self.cached_cons = self.consumer().load(Ordering::Relaxed);
    }

    /// Entries ready to consume (exact: reloads the producer).
    #[inline]
    fn cons_avail_exact(&mut self) -> u32 {
        self.cached_prod = self.producer().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Reads up to `out.len()` entries with `conv` and hands their slots back.
    #[inline]
    fn consume_with<U>(&mut self, out: &mut [U], conv: impl Fn(T) -> U) -> usize {
        let mut avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if (avail as usize) < out.len() {
            avail = self.cons_avail_exact();
        }
        let n = (avail as usize).min(out.len());
        if n == 0 {
            return 0;
        }
        for (k, o) in out[..n].iter_mut().enumerate() {
            // SAFETY: the slot lies before the producer index loaded with Acquire, so the
            // kernel wrote it and does not touch it until `consumer` moves past it.
            *o = conv(unsafe { self.slot(self.cached_cons.wrapping_add(k as u32)).read() });
        }
        self.cached_cons = self.cached_cons.wrapping_add(n as u32);
        // Release: the reads above are done before the kernel may reuse the slots.
        self.consumer().store(self.cached_cons, Ordering::Release);
        n
    }
}

/// An AF_XDP socket bound to one (interface, queue), with its four rings.
#[derive(Debug)]
pub struct Socket {
    rx: Ring<FrameDesc>,
    tx: Ring<FrameDesc>,
    fill: Ring<u64>,
    comp: Ring<u64>,
    // Last: the rings are unmapped before the socket closes.
    fd: OwnedFd,
}

// SAFETY: the socket's pointers are into mappings it owns; whoever owns the `Socket` is the
// only user of its rings' user side, wherever it runs.
unsafe impl Send for Socket {}

impl Socket {
    /// Sets up the four rings of `fd` (the UMEM's registering socket, from [`Umem::take_fd`])
    /// or of a new socket (`None`, to share a UMEM) with `ring_size` entries each (a power of
    /// two) and maps them. Not bound yet: [`Socket::bind`].
    pub fn new(fd: Option<OwnedFd>, ring_size: u32) -> io::Result<Socket> {
        let fd = match fd {
            Some(fd) => fd,
            None => xdp_socket()?,
        };
        let raw = fd.as_raw_fd();
        let size = ring_size;
        setsockopt(raw, XDP_RX_RING, &size)?;
        setsockopt(raw, XDP_TX_RING, &size)?;
        setsockopt(raw, XDP_UMEM_FILL_RING, &size)?;
        setsockopt(raw, XDP_UMEM_COMPLETION_RING, &size)?;
        let off: MmapOffsets = getsockopt(raw, XDP_MMAP_OFFSETS)?;
        let mut rx = Ring::map(raw, &off.rx, size, XDP_PGOFF_RX_RING)?;
        let mut tx = Ring::map(raw, &off.tx, size, XDP_PGOFF_TX_RING)?;
        let mut fill = Ring::map(raw, &off.fr, size, XDP_UMEM_PGOFF_FILL_RING)?;
        let mut comp = Ring::map(raw, &off.cr, size, XDP_UMEM_PGOFF_COMPLETION_RING)?;
        rx.init_cons();
        comp.init_cons();
        tx.init_prod();
        fill.init_prod();
        Ok(Socket {
            rx,
            tx,
            fill,
            comp,
            fd,
        })
    }

    /// Binds to `iface` queue `queue`: with `flags` (`XDP_COPY`, `XDP_USE_NEED_WAKEUP`,
    /// `XDP_USE_SG`) if this socket registered the UMEM (`share` `None`), or sharing the UMEM
    /// of the bound socket `share` (which then decides the mode: the kernel refuses flags
    /// beside `XDP_SHARED_UMEM`). May be retried after a failure (e.g. `EBUSY`).
    pub fn bind(
        &self,
        iface: &str,
        queue: u32,
        flags: u16,
        share: Option<RawFd>,
    ) -> io::Result<()> {
        let name = CString::new(iface)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
        // SAFETY: `name` is a valid NUL-terminated string for the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(last_err());
        }
        let (flags, shared_umem_fd) = match share {
            Some(fd) => (XDP_SHARED_UMEM, fd as u32),
            None => (flags, 0),
        };
        let sa = SockaddrXdp {
            family: libc::AF_XDP as u16,
            flags,
            ifindex,
            queue_id: queue,
            shared_umem_fd,
        };
        // SAFETY: `sa` is a valid sockaddr_xdp for the call, its size passed with it.
        let r = unsafe {
            libc::bind(
                self.fd(),
                (&sa as *const SockaddrXdp).cast(),
                mem::size_of::<SockaddrXdp>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(last_err());
        }
        Ok(())
    }

    /// The socket's descriptor.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Splits off the descriptor (the rings are unmapped here) so it can be closed elsewhere.
    pub fn into_fd(self) -> OwnedFd {
        let Socket { fd, .. } = self;
        fd
    }

    /// The kernel's counters (`XDP_STATISTICS`).
    pub fn statistics(&self) -> io::Result<XdpStatistics> {
        getsockopt(self.fd(), XDP_STATISTICS)
    }

    /// Receives up to `out.len()` descriptors.
    #[inline]
    pub fn rx_consume(&mut self, out: &mut [FrameDesc]) -> usize {
        self.rx.consume_with(out, |d| d)
    }

    /// Descriptors waiting in the RX ring.
    pub fn rx_avail_exact(&mut self) -> u32 {
        self.rx.cons_avail_exact()
    }

    /// Completed TX addresses, as descriptors of length 0.
    #[inline]
    pub fn comp_consume(&mut self, out: &mut [FrameDesc]) -> usize {
        self.comp
            .consume_with(out, |a| FrameDesc::new(a as usize, 0))
    }

    /// Addresses waiting in the completion ring.
    pub fn comp_avail_exact(&mut self) -> u32 {
        self.comp.cons_avail_exact()
    }

    /// Free entries of the TX ring, at least `want` if there are.
    #[inline]
    pub fn tx_free(&mut self, want: u32) -> u32 {
        self.tx.prod_free(want)
    }

    /// Free entries of the TX ring (exact).
    pub fn tx_free_exact(&mut self) -> u32 {
        self.tx.prod_free(u32::MAX)
    }

    /// Queues all of `descs` for TX, or none (returns how many).
    #[inline]
    pub fn tx_produce(&mut self, descs: &[FrameDesc]) -> usize {
        self.tx.produce(descs)
    }

    /// Whether TX needs a `sendto` to move.
    #[inline]
    pub fn tx_needs_wakeup(&self) -> bool {
        self.tx.needs_wakeup()
    }

    /// Free entries of the fill ring, at least `want` if there are.
    #[inline]
    pub fn fill_free(&mut self, want: u32) -> u32 {
        self.fill.prod_free(want)
    }

    /// Lends all of `descs`' chunks for receiving, or none (returns how many).
    #[inline]
    pub fn fill_produce(&mut self, descs: &[FrameDesc]) -> usize {
        let n = descs.len() as u32;
        if n == 0 || self.fill.prod_free(n) < n {
            return 0;
        }
        for (k, d) in descs.iter().enumerate() {
            // SAFETY: as in `Ring::produce`: a free slot the kernel reads only after the
            // release store below.
            unsafe {
                self.fill
                    .slot(self.fill.cached_prod.wrapping_add(k as u32))
                    .write(d.addr)
            };
        }
        self.fill.cached_prod = self.fill.cached_prod.wrapping_add(n);
        self.fill
            .producer()
            .store(self.fill.cached_prod, Ordering::Release);
        descs.len()
    }

    /// Whether the fill ring needs a wakeup to be read.
    #[inline]
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Kicks TX (`sendto`). The transient errors (ENOBUFS, EAGAIN, EBUSY, ENETDOWN: frames
    /// stay queued for the next kick) are not errors.
    pub fn kick_tx(&self) -> io::Result<()> {
        // SAFETY: a zero-length sendto(2) on our socket, no buffers passed.
        let r = unsafe {
            libc::sendto(
                self.fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if r >= 0 {
            return Ok(());
        }
        let e = last_err();
        match e.raw_os_error() {
            Some(libc::ENOBUFS | libc::EAGAIN | libc::EBUSY | libc::ENETDOWN) => Ok(()),
            _ => Err(e),
        }
    }

    /// Kicks the fill ring (`poll`, zero timeout). EINTR is not an error.
    pub fn kick_fill(&self) -> io::Result<()> {
        let mut p = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call's duration.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        if r < 0 {
            let e = last_err();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uapi_layouts() {
        assert_eq!(mem::size_of::<UmemReg>(), 32);
        assert_eq!(mem::size_of::<SockaddrXdp>(), 16);
        assert_eq!(mem::size_of::<MmapOffsets>(), 128);
        assert_eq!(mem::size_of::<FrameDesc>(), 16);
        assert_eq!(mem::size_of::<XdpStatistics>(), 48);
        assert_eq!(TX_METADATA_LEN, 24);
        assert_eq!(TX_METADATA_LEN % 8, 0);
    }
}
