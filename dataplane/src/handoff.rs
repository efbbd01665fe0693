//! Hand-off of frames to the worker that owns their flow, in batches.
//!
//! veth (like a NIC's RSS) picks a receive queue per packet, so a frame can arrive at a worker
//! whose conntrack does not hold its flow (docs/runtime.md). Such a frame is copied into a
//! batch for its owner; at the end of the receiving loop each batch travels as **one** queue
//! operation, as VPP's hand-off queues carry vectors of buffers:
//!
//! ```text
//!   worker A's burst ── stage(owner B, frame) ─> out[B]: Batch (≤ BURST frames, pooled)
//!                    └─ send() ─ ArrayQueue[B].push(batch) ─┐        (one push per owner)
//!   worker B's burst ── take(max) <─ ArrayQueue[B].pop() <──┘        (one pop per batch)
//!                       frames of the batch processed with B's own ─ done() ─> pool
//! ```
//!
//! Measured (`bench/benches/flow_ownership.rs`, bench/RESULTS.md "Flow ownership"): with half
//! of the frames at the wrong worker, one queue operation per frame (four atomics: pool pop,
//! queue push, queue pop, pool push) cost 3.4× the owned baseline, a shared table under a
//! per-burst mutex 2.9×, and batches 2.0×. So batches.
//!
//! No allocation after [`Handoff::new`]: batches come from a pool and go back to it; a full
//! queue or an empty pool is a counted drop, never a wait (a worker never blocks on another).
//!
//! A batch carries its frames in an arena of `BURST × frame` bytes (`frame`: the workers' UMEM
//! frame size, `io.afxdp.frame_size`), each frame at the next multiple of [`ALIGN`] after the
//! one before: up to 64 frames of one UMEM frame each, as before, or fewer, longer ones. A
//! packet that arrived as a chain of UMEM frames (`io.afxdp.multi_buffer`: the socket layer
//! gives the pipeline one linear copy of it, up to 65 535 bytes) is copied whole into
//! consecutive bytes of the arena, so the owner sees it as one frame, like a packet of its own
//! chains, and transmits it as a chain of its own UMEM frames
//! (`Burst::tx_copy_req`, `afxdp/xsk.rs`). A batch whose arena (or whose 64 frames) is
//! full travels at once, mid-burst, and a fresh one takes the frame (a burst of 64 jumbo
//! frames for one owner is three batches). Counted: frames longer than one UMEM frame that
//! travelled ([`Sent::chains`], `handoff_chains`).
//!
//! ```text
//!   arena: | frame 0 (1514 B) .. | frame 1 (9014 B, a chain at its receiver) ....... | ...
//!          0                     1536                                               10560
//! ```

use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

use crate::owner::FragOwners;
use crate::parse::Parsed;
use crate::tables::IfIndex;
use crate::DropReason;
use crate::BURST;

/// Bytes one UMEM frame has by default ([`Handoff::with_frame`] sets it: the UMEM frame size).
/// A batch's arena is `BURST` times it.
pub const HANDOFF_FRAME: usize = 2048;

/// Longest frame a batch carries: the pipeline's offsets are 16 bits (a multi-buffer chain is
/// at most this long too).
pub const HANDOFF_MAX: usize = u16::MAX as usize;

/// Each frame starts at a multiple of this in its batch's arena (a cache line).
pub const ALIGN: usize = 64;

/// Up to a burst's worth of frames copied for one worker.
#[derive(Debug)]
pub struct Batch {
    n: usize,
    /// Frames already processed by the owner (it may take a batch over several bursts).
    taken: usize,
    len: [u16; BURST],
    /// Where each frame starts in `data` (increasing, frames do not overlap).
    off: [u32; BURST],
    iface: [IfIndex; BURST],
    /// Each frame's parse by the worker that received it (parse once: the owner does not
    /// parse it again).
    parsed: [Result<Parsed, DropReason>; BURST],
    /// Frames longer than one UMEM frame (chains where they were received).
    chains: u32,
    /// The arena: `BURST × frame` bytes.
    data: Vec<u8>,
    /// Bytes of `data` taken (the next frame starts here).
    used: usize,
}

impl Batch {
    fn new(bytes: usize) -> Batch {
        Batch {
            n: 0,
            taken: 0,
            len: [0; BURST],
            off: [0; BURST],
            iface: [0; BURST],
            parsed: [Ok(Parsed::NotIp); BURST],
            chains: 0,
            data: vec![0; bytes],
            used: 0,
        }
    }

    /// Whether a frame of `len` bytes still fits (a frame slot and arena room).
    fn fits(&self, len: usize) -> bool {
        self.n < BURST && self.used + len <= self.data.len()
    }

    /// Copies `frame` in after the last frame (the caller checked [`Batch::fits`]).
    fn push(
        &mut self,
        frame: &[u8],
        iface: IfIndex,
        parsed: Result<Parsed, DropReason>,
        chain: bool,
    ) {
        let (n, at) = (self.n, self.used);
        self.data[at..at + frame.len()].copy_from_slice(frame);
        self.off[n] = at as u32;
        self.len[n] = frame.len() as u16;
        self.iface[n] = iface;
        self.parsed[n] = parsed;
        self.chains += u32::from(chain);
        self.used = (at + frame.len()).next_multiple_of(ALIGN);
        self.n += 1;
    }

    /// Frame `k`'s bytes, at most `len` of them.
    fn bytes(&self, k: usize, len: usize) -> &[u8] {
        let at = self.off[k] as usize;
        &self.data[at..at + len.min(usize::from(self.len[k]))]
    }

    fn bytes_mut(&mut self, k: usize, len: usize) -> &mut [u8] {
        let at = self.off[k] as usize;
        let l = len.min(usize::from(self.len[k]));
        &mut self.data[at..at + l]
    }

    fn clear(&mut self) {
        self.n = 0;
        self.taken = 0;
        self.chains = 0;
        self.used = 0;
    }
}

/// The hand-off queues of all workers (one bounded queue of batches per destination) and the
/// pool of batches they carry.
#[derive(Debug)]
pub struct Handoff {
    workers: usize,
    inbound: Vec<ArrayQueue<Batch>>,
    pool: ArrayQueue<Batch>,
    /// Owners of recent fragmented datagrams ([`crate::owner`]), shared like the queues.
    frags: FragOwners,
    /// Bytes of one UMEM frame (a longer frame is a chain at its receiver).
    frame: usize,
    /// Bytes a handed-off frame may have.
    max: usize,
}

/// Fragmented datagrams whose owner the workers remember (a slot each; 32 KiB).
const FRAG_OWNER_SLOTS: usize = 4096;

impl Handoff {
    /// `depth`: frames queued per destination worker (rounded up to whole batches, at least
    /// two). The pool holds as many batches as the queues, plus one per worker for the batch
    /// it is working off.
    pub fn new(workers: usize, depth: usize) -> Arc<Handoff> {
        Self::with_frame(workers, depth, HANDOFF_FRAME)
    }

    /// [`Handoff::new`] with arenas of `BURST × frame` bytes (`frame`: the UMEM frame size):
    /// memory is `workers × (depth / 64 + 1) × 64 × frame` (2 workers, depth 1024, 4096: 8.5
    /// MiB). Frames up to [`HANDOFF_MAX`] bytes travel (an arena holds at least 128 KiB).
    pub fn with_frame(workers: usize, depth: usize, frame: usize) -> Arc<Handoff> {
        let per = depth.div_ceil(BURST).max(2);
        let total = if workers > 1 { workers * (per + 1) } else { 0 };
        let bytes = BURST * frame.max(ALIGN);
        let pool = ArrayQueue::new(total.max(1));
        for _ in 0..total {
            let _ = pool.push(Batch::new(bytes));
        }
        Arc::new(Handoff {
            workers,
            inbound: (0..workers).map(|_| ArrayQueue::new(per)).collect(),
            pool,
            frags: FragOwners::new(if workers > 1 { FRAG_OWNER_SLOTS } else { 2 }),
            frame,
            max: bytes.min(HANDOFF_MAX),
        })
    }

    /// Bytes a handed-off frame may have.
    pub fn frame_limit(&self) -> usize {
        self.max
    }

    /// Batches queued for worker `w`.
    pub fn queued(&self, w: usize) -> usize {
        self.inbound.get(w).map_or(0, ArrayQueue::len)
    }

    /// Owners of recent fragmented datagrams.
    pub fn frag_owners(&self) -> &FragOwners {
        &self.frags
    }

    /// Batches in the pool (all of them when no worker holds or queues one).
    pub fn pooled(&self) -> usize {
        self.pool.len()
    }
}

/// Why a frame was not staged for its owner (each a counted drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageError {
    /// Longer than a batch carries ([`Handoff::frame_limit`]).
    TooLong,
    /// No batch free in the pool.
    NoBatch,
}

/// What [`HandoffPort::send`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Frames queued to their owner.
    pub frames: u64,
    /// Of `frames`, those longer than one UMEM frame (multi-buffer chains at their receiver).
    pub chains: u64,
    /// Frames dropped: their owner's queue was full.
    pub dropped: u64,
}

/// One worker's end of the hand-off: its outgoing batches (filled during a burst, sent at its
/// end, or when full) and the incoming batch it is working off.
#[derive(Debug)]
pub struct HandoffPort {
    me: usize,
    shared: Arc<Handoff>,
    /// Per destination worker: the batch being filled in this burst.
    out: Vec<Option<Batch>>,
    /// Per destination worker: the burst indexes of the frames in `out`.
    out_mask: Vec<u64>,
    /// Destination workers with a batch in `out` (workers ≤ 64: the daemon's limit), so that
    /// sending visits only those.
    staged: u64,
    /// Batches that travelled during this burst (full ones): their frames' burst indexes and
    /// counts, reported by the next [`HandoffPort::send`].
    early_mask: u64,
    early: Sent,
    /// The handed-in batch being worked off.
    cur: Option<Batch>,
    /// Frames of `cur` taken into the current burst and not yet `done`.
    busy: usize,
}

impl HandoffPort {
    /// The shared side (queues, pool, fragment owners).
    pub fn shared(&self) -> &Handoff {
        &self.shared
    }

    pub fn new(shared: Arc<Handoff>, me: usize) -> HandoffPort {
        let w = shared.workers;
        debug_assert!(w <= 64, "the `staged` bitmask holds 64 workers");
        HandoffPort {
            me,
            shared,
            out: (0..w).map(|_| None).collect(),
            out_mask: vec![0; w],
            staged: 0,
            early_mask: 0,
            early: Sent::default(),
            cur: None,
            busy: 0,
        }
    }

    /// Copies `frame` (received as frame `index` of the burst, `index < 64`) into the batch for
    /// `owner`. A batch without room for it travels first.
    pub fn stage(
        &mut self,
        owner: usize,
        index: usize,
        frame: &[u8],
        iface: IfIndex,
        parsed: Result<Parsed, DropReason>,
    ) -> Result<(), StageError> {
        if frame.len() > self.shared.max {
            return Err(StageError::TooLong);
        }
        if self.out[owner]
            .as_ref()
            .is_some_and(|b| !b.fits(frame.len()))
        {
            self.travel(owner);
        }
        let slot = &mut self.out[owner];
        let b = match slot {
            Some(b) => b,
            None => match self.shared.pool.pop() {
                Some(b) => slot.insert(b),
                None => return Err(StageError::NoBatch),
            },
        };
        b.push(frame, iface, parsed, frame.len() > self.shared.frame);
        self.out_mask[owner] |= 1 << index;
        self.staged |= 1 << owner;
        Ok(())
    }

    /// The batch for `owner` is full: it travels now (one queue push). A full queue drops its
    /// frames and the batch is emptied for the next ones.
    fn travel(&mut self, owner: usize) {
        let Some(b) = self.out[owner].take() else {
            return;
        };
        let mask = std::mem::take(&mut self.out_mask[owner]);
        let (n, chains) = (b.n as u64, u64::from(b.chains));
        match self.shared.inbound[owner].push(b) {
            Ok(()) => {
                self.early_mask |= mask;
                self.early.frames += n;
                self.early.chains += chains;
            }
            Err(mut b) => {
                self.early.dropped += n;
                b.clear();
                self.out[owner] = Some(b);
            }
        }
    }

    /// Queues every staged batch to its owner; `queued(index)` is called for each frame that
    /// now travels, or travelled earlier in this burst (the caller may release its receive
    /// buffer).
    pub fn send(&mut self, mut queued: impl FnMut(usize)) -> Sent {
        let mut s = std::mem::take(&mut self.early);
        let mut m = std::mem::take(&mut self.early_mask);
        while m != 0 {
            queued(m.trailing_zeros() as usize);
            m &= m - 1;
        }
        let mut staged = std::mem::take(&mut self.staged);
        while staged != 0 {
            let w = staged.trailing_zeros() as usize;
            staged &= staged - 1;
            let Some(b) = self.out[w].take() else {
                continue;
            };
            let (n, chains) = (b.n as u64, u64::from(b.chains));
            let mask = std::mem::take(&mut self.out_mask[w]);
            if n == 0 {
                // Emptied by a full queue mid-burst: back to the pool.
                let _ = self.shared.pool.push(b);
                continue;
            }
            match self.shared.inbound[w].push(b) {
                Ok(()) => {
                    s.frames += n;
                    s.chains += chains;
                    let mut m = mask;
                    while m != 0 {
                        queued(m.trailing_zeros() as usize);
                        m &= m - 1;
                    }
                }
                Err(mut b) => {
                    s.dropped += n;
                    b.clear();
                    let _ = self.shared.pool.push(b);
                }
            }
        }
        s
    }

    /// Whether handed-in frames are waiting for this worker.
    pub fn pending(&self) -> bool {
        self.cur.is_some() || !self.shared.inbound[self.me].is_empty()
    }

    /// Takes up to `max` handed-in frames into the current burst; returns how many. They stay
    /// valid ([`frames`](Self::frames), [`frame`](Self::frame)) until [`done`](Self::done).
    pub fn take(&mut self, max: usize) -> usize {
        if self.cur.is_none() {
            self.cur = self.shared.inbound[self.me].pop();
        }
        let k = self.cur.as_ref().map_or(0, |b| (b.n - b.taken).min(max));
        self.busy = k;
        k
    }

    /// The frames [`take`](Self::take) took, mutable (the pipeline rewrites them in place),
    /// with the table interface index each arrived on.
    pub fn frames(
        &mut self,
    ) -> impl Iterator<Item = (&mut [u8], IfIndex, Result<Parsed, DropReason>)> + '_ {
        let busy = self.busy;
        self.cur.iter_mut().flat_map(move |b| {
            let t = b.taken;
            let Batch {
                len,
                off,
                iface,
                parsed,
                data,
                ..
            } = b;
            // The frames lie in increasing, disjoint ranges of the arena: split it in turn.
            let mut rest: &mut [u8] = &mut data[..];
            let mut pos = 0;
            (t..t + busy).map(move |k| {
                let (at, l) = (off[k] as usize, usize::from(len[k]));
                let r = std::mem::take(&mut rest);
                let (_, r) = r.split_at_mut(at - pos);
                let (f, r) = r.split_at_mut(l);
                rest = r;
                pos = at + l;
                (f, iface[k], parsed[k])
            })
        })
    }

    /// Taken frame `j` (`j <` what `take` returned), as the pipeline left it up to `len` bytes.
    pub fn frame(&self, j: usize, len: usize) -> &[u8] {
        match &self.cur {
            Some(b) if j < self.busy => b.bytes(b.taken + j, len),
            _ => &[],
        }
    }

    /// [`HandoffPort::frame`], writable (a checksum finished before it is copied out).
    pub fn frame_mut(&mut self, j: usize, len: usize) -> &mut [u8] {
        match &mut self.cur {
            Some(b) if j < self.busy => {
                let k = b.taken + j;
                b.bytes_mut(k, len)
            }
            _ => &mut [],
        }
    }

    /// The taken frames are processed: the batch goes back to the pool once all are.
    pub fn done(&mut self) {
        let Some(b) = &mut self.cur else { return };
        b.taken += self.busy;
        self.busy = 0;
        if b.taken >= b.n {
            if let Some(mut b) = self.cur.take() {
                b.clear();
                let _ = self.shared.pool.push(b);
            }
        }
    }

    /// After a burst that was unwound by a panic: the frames it had taken are given up (they
    /// may be what panicked; returns how many) and batches it had staged are sent.
    pub fn recover(&mut self) -> (u64, Sent) {
        if self.busy == 0
            && self.staged == 0
            && self.early_mask == 0
            && self.early == Sent::default()
        {
            // The common case: the last burst finished.
            return (0, Sent::default());
        }
        let abandoned = self.busy as u64;
        self.done();
        (abandoned, self.send(|_| {}))
    }
}

impl Drop for HandoffPort {
    fn drop(&mut self) {
        for b in self
            .out
            .iter_mut()
            .filter_map(Option::take)
            .chain(self.cur.take())
        {
            let mut b = b;
            b.clear();
            let _ = self.shared.pool.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, len: usize) -> Vec<u8> {
        vec![tag; len]
    }

    /// Worker 0's and worker 1's ports on `h`.
    fn ports(h: &Arc<Handoff>) -> (HandoffPort, HandoffPort) {
        (
            HandoffPort::new(Arc::clone(h), 0),
            HandoffPort::new(Arc::clone(h), 1),
        )
    }

    /// Stages a frame that is not IP for worker `to` (receive buffer `rx`, ifindex 0); it must
    /// be staged.
    fn stage(p: &mut HandoffPort, to: usize, rx: usize, f: &[u8]) {
        p.stage(to, rx, f, 0, Ok(Parsed::NotIp)).expect("staged");
    }

    fn sent(frames: u64, chains: u64, dropped: u64) -> Sent {
        Sent {
            frames,
            chains,
            dropped,
        }
    }

    #[test]
    fn a_batch_travels_in_one_queue_operation_and_comes_back_to_the_pool() {
        let h = Handoff::new(2, 128);
        let pool = h.pooled();
        assert_eq!(pool, 2 * (2 + 1));
        let (mut a, mut b) = ports(&h);
        for i in 0..5 {
            a.stage(1, i * 2, &frame(i as u8, 60 + i), 3, Ok(Parsed::NotIp))
                .expect("staged");
        }
        assert_eq!(h.pooled(), pool - 1, "one batch for five frames");
        let mut released = Vec::new();
        let s = a.send(|i| released.push(i));
        assert_eq!(s, sent(5, 0, 0));
        assert_eq!(released, vec![0, 2, 4, 6, 8]);
        assert_eq!(h.queued(1), 1);
        assert!(b.pending() && !a.pending());

        // The owner works it off over two bursts (at most 3 frames each).
        assert_eq!(b.take(3), 3);
        let got: Vec<(usize, u8, IfIndex)> =
            b.frames().map(|(d, i, _)| (d.len(), d[0], i)).collect();
        assert_eq!(got, vec![(60, 0, 3), (61, 1, 3), (62, 2, 3)]);
        assert_eq!(b.frame(1, 10), &[1u8; 10][..]);
        b.done();
        assert!(b.pending(), "two frames left");
        assert_eq!(b.take(3), 2);
        assert_eq!(
            b.frames().map(|(d, _, _)| d[0]).collect::<Vec<_>>(),
            vec![3, 4]
        );
        b.done();
        assert!(!b.pending());
        assert_eq!(b.take(3), 0);
        assert_eq!(h.pooled(), pool, "every batch back in the pool");
    }

    #[test]
    fn full_queues_and_an_empty_pool_are_counted_drops_not_waits() {
        // One batch of queue per worker (depth rounds up to two), pool 2 × 3 = 6.
        let h = Handoff::new(2, 1);
        let mut a = HandoffPort::new(Arc::clone(&h), 0);
        for round in 0..2 {
            stage(&mut a, 1, 0, &frame(round, 64));
            assert_eq!(a.send(|_| {}).frames, 1);
        }
        stage(&mut a, 1, 0, &frame(9, 64));
        stage(&mut a, 1, 1, &frame(9, 64));
        let mut released = 0;
        let s = a.send(|_| released += 1);
        assert_eq!(s, sent(0, 0, 2));
        assert_eq!(released, 0, "dropped frames are not released as handed off");
        assert_eq!(
            a.stage(1, 0, &[0; HANDOFF_MAX + 1], 0, Ok(Parsed::NotIp)),
            Err(StageError::TooLong)
        );

        // Drain the pool: the next stage has no batch.
        let mut held = Vec::new();
        while let Some(b) = h.pool.pop() {
            held.push(b);
        }
        assert_eq!(
            a.stage(0, 0, &frame(1, 64), 0, Ok(Parsed::NotIp)),
            Err(StageError::NoBatch)
        );
        for b in held {
            let _ = h.pool.push(b);
        }
    }

    /// A frame of `len` bytes whose every byte says where it is (its tag, then the offset).
    fn numbered(tag: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| if i == 0 { tag } else { (i % 251) as u8 })
            .collect()
    }

    #[test]
    fn chains_travel_whole_in_consecutive_bytes_and_come_back_as_one_frame() {
        let h = Handoff::with_frame(2, 64, 4096);
        assert_eq!(h.frame_limit(), HANDOFF_MAX);
        let (mut a, mut b) = ports(&h);
        // A 9014-byte frame (MTU 9000: a chain of three 4096-byte UMEM frames at its
        // receiver), a small one, the largest a chain can be, one of exactly a UMEM frame.
        let frames = [
            numbered(1, 9014),
            numbered(2, 60),
            numbered(3, HANDOFF_MAX),
            numbered(4, 4096),
        ];
        for (i, f) in frames.iter().enumerate() {
            a.stage(1, i, f, 7, Ok(Parsed::NotIp)).expect("staged");
        }
        assert_eq!(
            a.stage(1, 9, &[0; HANDOFF_MAX + 1], 0, Ok(Parsed::NotIp)),
            Err(StageError::TooLong)
        );
        let s = a.send(|_| {});
        assert_eq!(s, sent(4, 2, 0), "two frames longer than a UMEM frame");
        assert_eq!(h.queued(1), 1, "all four in one batch");
        assert_eq!(b.take(64), 4);
        let got: Vec<Vec<u8>> = b
            .frames()
            .map(|(d, i, _)| {
                assert_eq!(i, 7);
                d.to_vec()
            })
            .collect();
        assert!(got == frames.to_vec(), "every byte back, frame by frame");
        // Rewritten in place (the pipeline's NAT) and read back, shorter (an L2 trim).
        for (d, _, _) in b.frames() {
            d[1] = 0xee;
        }
        assert_eq!(b.frame(0, 9014)[..2], [1, 0xee]);
        assert_eq!(b.frame(2, 100).len(), 100);
        assert_eq!(b.frame(1, 9014).len(), 60, "never past the frame");
        b.frame_mut(2, HANDOFF_MAX)[HANDOFF_MAX - 1] = 0xaa;
        assert_eq!(b.frame(2, HANDOFF_MAX)[HANDOFF_MAX - 1], 0xaa);
        assert!(b.frame(3, 4096)[2..] == frames[3][2..], "frame 3 intact");
        b.done();
        assert_eq!(h.pooled(), 2 * 3);
    }

    #[test]
    fn a_burst_of_jumbo_frames_travels_in_several_batches_and_a_full_queue_drops_counted() {
        // Queues of two batches; arenas of 64 × 4096 = 256 KiB: 29 frames of 9014 B each.
        let h = Handoff::with_frame(2, 128, 4096);
        let (mut a, mut b) = ports(&h);
        let jumbo = |i: usize| numbered(i as u8, 9014);
        for i in 0..40 {
            stage(&mut a, 1, i, &jumbo(i));
        }
        assert_eq!(h.queued(1), 1, "the full batch travelled mid-burst");
        let mut released = Vec::new();
        let s = a.send(|i| released.push(i));
        assert_eq!(s, sent(40, 40, 0));
        assert_eq!(released, (0..40).collect::<Vec<_>>());
        assert_eq!(h.queued(1), 2);

        // The owner's queue is full: the next burst's frames are dropped, counted, their
        // receive buffers not released; the batches return to the pool.
        for i in 0..64 {
            stage(&mut a, 1, i, &jumbo(i));
        }
        let mut released = 0;
        let s = a.send(|_| released += 1);
        assert_eq!(s, sent(0, 0, 64));
        assert_eq!(released, 0);

        // The owner works off what arrived, in order, intact.
        let mut seen = 0;
        while b.pending() {
            let k = b.take(32);
            for (d, _, _) in b.frames() {
                assert_eq!(d.len(), 9014);
                assert_eq!(d[0], seen as u8);
                assert!(d[1..] == jumbo(seen)[1..], "frame {seen} intact");
                seen += 1;
            }
            assert!(k > 0);
            b.done();
        }
        assert_eq!(seen, 40);
        drop(a);
        drop(b);
        assert_eq!(h.pooled(), 2 * (2 + 1), "every batch back");
    }

    #[test]
    fn single_frames_still_fill_a_batch_of_64() {
        let h = Handoff::with_frame(2, 64, 2048);
        let (mut a, mut b) = ports(&h);
        for i in 0..64 {
            stage(&mut a, 1, i, &frame(i as u8, 1514));
        }
        assert_eq!(h.queued(1), 0, "one batch, sent at the end of the burst");
        assert_eq!(a.send(|_| {}).frames, 64);
        assert_eq!(h.queued(1), 1);
        assert_eq!(b.take(64), 64);
        assert!(b
            .frames()
            .all(|(d, _, _)| d.len() == 1514 && d.iter().all(|x| *x == d[0])));
        b.done();
    }

    #[test]
    fn a_panicked_burst_gives_up_its_taken_frames_and_keeps_the_rest() {
        let h = Handoff::new(2, 64);
        let pool = h.pooled();
        let (mut a, mut b) = ports(&h);
        for i in 0..4 {
            stage(&mut a, 1, i, &frame(i as u8, 64));
        }
        a.send(|_| {});
        assert_eq!(b.take(2), 2);
        // ... the pipeline panicked here; a frame staged for the peer is still sent.
        stage(&mut b, 0, 0, &frame(7, 64));
        let (abandoned, sent) = b.recover();
        assert_eq!(abandoned, 2);
        assert_eq!(sent.frames, 1);
        assert_eq!(
            b.take(64),
            2,
            "the frames after the panicked ones are still processed"
        );
        assert_eq!(
            b.frames().map(|(d, _, _)| d[0]).collect::<Vec<_>>(),
            vec![2, 3]
        );
        b.done();
        drop(a);
        drop(b);
        // One batch still queued for worker 0 (nobody took it); the rest are back.
        assert_eq!(h.queued(0), 1);
        assert_eq!(h.pooled(), pool - 1);
    }
}
