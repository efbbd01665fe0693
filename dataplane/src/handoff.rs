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
//! A batch's slots are as large as the workers' UMEM frames (`io.afxdp.frame_size`, 2048 or
//! 4096), so any frame one UMEM frame holds can be handed over; a packet longer than that (a
//! chain of UMEM frames, `io.afxdp.multi_buffer`) cannot (`handoff-too-long`), which is why the
//! runtime refuses `multi_buffer` with several workers (docs/runtime.md "Jumbo pod MTUs").

use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

use crate::owner::FragOwners;
use crate::parse::Parsed;
use crate::tables::IfIndex;
use crate::DropReason;
use crate::BURST;

/// Bytes one handed-off frame can have by default ([`Handoff::with_frame`] sets it: the UMEM
/// frame size; an AF_XDP frame of 2048 bytes holds less).
pub const HANDOFF_FRAME: usize = 2048;

/// Up to a burst's worth of frames copied for one worker.
#[derive(Debug)]
pub struct Batch {
    n: usize,
    /// Frames already processed by the owner (it may take a batch over several bursts).
    taken: usize,
    len: [u16; BURST],
    iface: [IfIndex; BURST],
    /// Each frame's parse by the worker that received it (parse once: the owner does not
    /// parse it again).
    parsed: [Result<Parsed, DropReason>; BURST],
    /// `BURST` slots of `slot` bytes.
    data: Vec<u8>,
    slot: usize,
}

impl Batch {
    fn new(slot: usize) -> Batch {
        Batch {
            n: 0,
            taken: 0,
            len: [0; BURST],
            iface: [0; BURST],
            parsed: [Ok(Parsed::NotIp); BURST],
            data: vec![0; BURST * slot],
            slot,
        }
    }

    /// Slot `k`, whole.
    fn slot_mut(&mut self, k: usize) -> &mut [u8] {
        &mut self.data[k * self.slot..(k + 1) * self.slot]
    }

    fn clear(&mut self) {
        self.n = 0;
        self.taken = 0;
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
    /// Bytes a handed-off frame may have.
    frame: usize,
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

    /// [`Handoff::new`] with slots of `frame` bytes (the UMEM frame size): memory is
    /// `workers × (depth / 64 + 1) × 64 × frame` (2 workers, depth 1024, 4096: 8.5 MiB).
    pub fn with_frame(workers: usize, depth: usize, frame: usize) -> Arc<Handoff> {
        let per = depth.div_ceil(BURST).max(2);
        let total = if workers > 1 { workers * (per + 1) } else { 0 };
        let pool = ArrayQueue::new(total.max(1));
        for _ in 0..total {
            let _ = pool.push(Batch::new(frame));
        }
        Arc::new(Handoff {
            workers,
            inbound: (0..workers).map(|_| ArrayQueue::new(per)).collect(),
            pool,
            frags: FragOwners::new(if workers > 1 { FRAG_OWNER_SLOTS } else { 2 }),
            frame,
        })
    }

    /// Bytes a handed-off frame may have.
    pub fn frame_limit(&self) -> usize {
        self.frame
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
    /// Longer than a hand-off slot ([`Handoff::frame_limit`]).
    TooLong,
    /// No batch free in the pool.
    NoBatch,
}

/// What [`HandoffPort::send`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Frames queued to their owner.
    pub frames: u64,
    /// Frames dropped: their owner's queue was full.
    pub dropped: u64,
}

/// One worker's end of the hand-off: its outgoing batches (filled during a burst, sent at its
/// end) and the incoming batch it is working off.
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
            cur: None,
            busy: 0,
        }
    }

    /// Copies `frame` (received as frame `index` of the burst, `index < 64`) into the batch for
    /// `owner`.
    pub fn stage(
        &mut self,
        owner: usize,
        index: usize,
        frame: &[u8],
        iface: IfIndex,
        parsed: Result<Parsed, DropReason>,
    ) -> Result<(), StageError> {
        if frame.len() > self.shared.frame {
            return Err(StageError::TooLong);
        }
        let slot = &mut self.out[owner];
        if slot.as_ref().is_some_and(|b| b.n == BURST) {
            // Cannot happen with bursts of ≤ BURST frames; a full batch is no reason to panic.
            return Err(StageError::NoBatch);
        }
        let b = match slot {
            Some(b) => b,
            None => match self.shared.pool.pop() {
                Some(b) => slot.insert(b),
                None => return Err(StageError::NoBatch),
            },
        };
        let n = b.n;
        b.slot_mut(n)[..frame.len()].copy_from_slice(frame);
        b.len[b.n] = frame.len() as u16;
        b.iface[b.n] = iface;
        b.parsed[b.n] = parsed;
        b.n += 1;
        self.out_mask[owner] |= 1 << index;
        self.staged |= 1 << owner;
        Ok(())
    }

    /// Queues every staged batch to its owner; `queued(index)` is called for each frame that
    /// now travels (the caller may release its receive buffer).
    pub fn send(&mut self, mut queued: impl FnMut(usize)) -> Sent {
        let mut s = Sent::default();
        let mut staged = std::mem::take(&mut self.staged);
        while staged != 0 {
            let w = staged.trailing_zeros() as usize;
            staged &= staged - 1;
            let Some(b) = self.out[w].take() else {
                continue;
            };
            let n = b.n as u64;
            let mask = std::mem::take(&mut self.out_mask[w]);
            match self.shared.inbound[w].push(b) {
                Ok(()) => {
                    s.frames += n;
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
            let Batch {
                taken,
                len,
                iface,
                parsed,
                data,
                slot,
                ..
            } = b;
            let t = *taken;
            data.chunks_exact_mut(*slot)
                .skip(t)
                .take(busy)
                .zip(&len[t..t + busy])
                .zip(&iface[t..t + busy])
                .zip(&parsed[t..t + busy])
                .map(|(((d, &l), &i), &p)| (&mut d[..usize::from(l)], i, p))
        })
    }

    /// Taken frame `j` (`j <` what `take` returned), as the pipeline left it up to `len` bytes.
    pub fn frame(&self, j: usize, len: usize) -> &[u8] {
        match &self.cur {
            Some(b) if j < self.busy => {
                let k = b.taken + j;
                &b.data[k * b.slot..k * b.slot + len.min(b.slot)]
            }
            _ => &[],
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
        if self.busy == 0 && self.staged == 0 {
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

    #[test]
    fn a_batch_travels_in_one_queue_operation_and_comes_back_to_the_pool() {
        let h = Handoff::new(2, 128);
        let pool = h.pooled();
        assert_eq!(pool, 2 * (2 + 1));
        let (mut a, mut b) = (
            HandoffPort::new(Arc::clone(&h), 0),
            HandoffPort::new(Arc::clone(&h), 1),
        );
        for i in 0..5 {
            a.stage(1, i * 2, &frame(i as u8, 60 + i), 3, Ok(Parsed::NotIp))
                .expect("staged");
        }
        assert_eq!(h.pooled(), pool - 1, "one batch for five frames");
        let mut released = Vec::new();
        let s = a.send(|i| released.push(i));
        assert_eq!(
            s,
            Sent {
                frames: 5,
                dropped: 0
            }
        );
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
            a.stage(1, 0, &frame(round, 64), 0, Ok(Parsed::NotIp))
                .expect("staged");
            assert_eq!(a.send(|_| {}).frames, 1);
        }
        a.stage(1, 0, &frame(9, 64), 0, Ok(Parsed::NotIp))
            .expect("staged");
        a.stage(1, 1, &frame(9, 64), 0, Ok(Parsed::NotIp))
            .expect("staged");
        let mut released = 0;
        let s = a.send(|_| released += 1);
        assert_eq!(
            s,
            Sent {
                frames: 0,
                dropped: 2
            }
        );
        assert_eq!(released, 0, "dropped frames are not released as handed off");
        assert_eq!(
            a.stage(1, 0, &[0; HANDOFF_FRAME + 1], 0, Ok(Parsed::NotIp)),
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

    #[test]
    fn slots_of_the_umem_frame_size_carry_frames_up_to_it() {
        let h = Handoff::with_frame(2, 64, 4096);
        assert_eq!(h.frame_limit(), 4096);
        let (mut a, mut b) = (
            HandoffPort::new(Arc::clone(&h), 0),
            HandoffPort::new(Arc::clone(&h), 1),
        );
        // A 3840-byte frame (what a 4096-byte UMEM frame holds), then a small one: slots do
        // not overlap.
        a.stage(1, 0, &frame(1, 3840), 0, Ok(Parsed::NotIp))
            .expect("a frame of the UMEM frame size is staged");
        a.stage(1, 1, &frame(2, 100), 0, Ok(Parsed::NotIp))
            .expect("staged");
        assert_eq!(
            a.stage(1, 2, &frame(3, 4097), 0, Ok(Parsed::NotIp)),
            Err(StageError::TooLong)
        );
        assert_eq!(a.send(|_| {}).frames, 2);
        assert_eq!(b.take(64), 2);
        let got: Vec<(usize, bool)> = b
            .frames()
            .map(|(d, _, _)| (d.len(), d.iter().all(|x| *x == d[0])))
            .collect();
        assert_eq!(got, vec![(3840, true), (100, true)]);
        assert_eq!(b.frame(0, 3840).len(), 3840);
        assert_eq!(b.frame(1, 100)[99], 2);
        b.done();
        // The default stays 2048.
        assert_eq!(Handoff::new(2, 64).frame_limit(), HANDOFF_FRAME);
    }

    #[test]
    fn a_panicked_burst_gives_up_its_taken_frames_and_keeps_the_rest() {
        let h = Handoff::new(2, 64);
        let pool = h.pooled();
        let (mut a, mut b) = (
            HandoffPort::new(Arc::clone(&h), 0),
            HandoffPort::new(Arc::clone(&h), 1),
        );
        for i in 0..4 {
            a.stage(1, i, &frame(i as u8, 64), 0, Ok(Parsed::NotIp))
                .expect("staged");
        }
        a.send(|_| {});
        assert_eq!(b.take(2), 2);
        // ... the pipeline panicked here; a frame staged for the peer is still sent.
        b.stage(0, 0, &frame(7, 64), 0, Ok(Parsed::NotIp))
            .expect("staged");
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
