//! The worker's end of `nodeplane capture`: frames copied as the worker received them (before
//! the pipeline rewrites them) into this worker's bounded ring, only while a capture is armed.
//!
//! Cost: off, one `Relaxed` load per burst ([`CaptureTap::prepare`]). Armed, per frame of the
//! captured interface one pop from the free ring, a copy of at most [`SNAP`] bytes into a
//! buffer allocated when the capture was armed, and one push to the full ring (lock-free
//! `ArrayQueue`s; nothing allocated, locked or logged per packet). No free buffer (the
//! consumer fell behind): the frame is not captured and counted `lost`. The forwarding of the
//! frame is never affected.
//!
//! ```text
//!  control (np-capture thread)                worker (per burst)
//!  arm: free ← RING buffers, spec = iface,    session != mine or new tables: lock spec once,
//!       session = id ───────────────────────>   resolve iface → index
//!  loop: pop full → stream → push free <───── frame on index: pop free, copy, push full
//!  disarm: session = 0, drain, drop buffers   (a buffer tagged with an old session is dropped)
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam::queue::ArrayQueue;

use crate::pipeline::Packet;
use crate::tables::{IfIndex, Tables};

/// Bytes of a frame kept at most (an AF_XDP frame's size; longer replay frames are cut).
pub const SNAP: usize = 4096;
/// Buffers per worker while a capture is armed (~4 MB per worker).
pub const RING: usize = 1024;

/// One captured frame.
#[derive(Debug, Clone)]
pub struct CapturedFrame {
    /// The capture session that filled it (stale ones are dropped by the consumer).
    pub session: u64,
    /// [`Clock`](super::Clock) nanoseconds (the frame's burst time).
    pub ts: u64,
    /// The frame's length on the wire (`data` holds at most [`SNAP`] bytes of it).
    pub orig_len: u32,
    pub data: Vec<u8>,
}

impl CapturedFrame {
    /// An empty buffer of [`SNAP`] bytes' capacity (allocated by the control thread).
    pub fn buffer() -> Box<CapturedFrame> {
        Box::new(CapturedFrame {
            session: 0,
            ts: 0,
            orig_len: 0,
            data: Vec::with_capacity(SNAP),
        })
    }
}

/// What one worker shares with the capture consumer.
#[derive(Debug)]
pub struct CaptureShared {
    /// 0: off. Otherwise the armed session's id.
    session: AtomicU64,
    /// The interface to capture (read by the worker only when `session` changes).
    iface: Mutex<String>,
    /// Empty buffers (filled by the consumer when it arms) and filled ones.
    pub free: ArrayQueue<Box<CapturedFrame>>,
    pub full: ArrayQueue<Box<CapturedFrame>>,
    /// Frames of the captured interface not captured (no free buffer).
    pub lost: AtomicU64,
}

impl Default for CaptureShared {
    fn default() -> Self {
        CaptureShared {
            session: AtomicU64::new(0),
            iface: Mutex::new(String::new()),
            free: ArrayQueue::new(RING),
            full: ArrayQueue::new(RING),
            lost: AtomicU64::new(0),
        }
    }
}

impl CaptureShared {
    /// Arms a capture of `iface` as `session` (≠ 0); the caller has filled `free`.
    pub fn arm(&self, session: u64, iface: &str) {
        *self.iface.lock().unwrap_or_else(|p| p.into_inner()) = iface.to_string();
        // The worker re-reads `iface` under the mutex when it sees the new session.
        self.session.store(session, Ordering::Release);
    }

    pub fn disarm(&self) {
        self.session.store(0, Ordering::Release);
    }

    pub fn session(&self) -> u64 {
        self.session.load(Ordering::Relaxed)
    }
}

/// A worker's tap.
#[derive(Debug)]
pub struct CaptureTap {
    shared: Arc<CaptureShared>,
    /// The session and tables generation `want` was resolved for.
    session: u64,
    generation: u64,
    want: Option<IfIndex>,
}

impl CaptureTap {
    pub fn new(shared: Arc<CaptureShared>) -> CaptureTap {
        CaptureTap {
            shared,
            session: 0,
            generation: 0,
            want: None,
        }
    }

    /// A tap no capture ever arms (a worker outside a daemon).
    pub fn detached() -> CaptureTap {
        CaptureTap::new(Arc::new(CaptureShared {
            free: ArrayQueue::new(1),
            full: ArrayQueue::new(1),
            ..CaptureShared::default()
        }))
    }

    /// Once per burst: the interface to capture this burst, if a capture is armed. Off, this
    /// is one `Relaxed` load.
    #[inline]
    pub fn prepare(&mut self, tables: &Tables) -> Option<IfIndex> {
        let session = self.shared.session.load(Ordering::Relaxed);
        if session == 0 {
            return None;
        }
        if session != self.session || tables.generation != self.generation {
            // Once per arm or publication: the mutex orders `iface` after the consumer's store.
            let name = self
                .shared
                .iface
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            self.want = tables.iface_index(&name);
            self.session = session;
            self.generation = tables.generation;
        }
        self.want
    }

    /// Copies the frames of `want` (before the pipeline runs on them).
    #[inline]
    pub fn record(&mut self, want: IfIndex, pkts: &[Packet<'_>]) {
        for p in pkts.iter().filter(|p| p.iface == want) {
            let Some(mut b) = self.shared.free.pop() else {
                self.shared.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let n = p.data.len().min(SNAP);
            b.data.clear();
            b.data.extend_from_slice(&p.data[..n]);
            b.session = self.session;
            b.ts = p.ts;
            b.orig_len = p.data.len() as u32;
            if self.shared.full.push(b).is_err() {
                // Cannot happen (as many buffers as slots); counted, never silent.
                self.shared.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
