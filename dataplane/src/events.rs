//! The worker's end of flow events (DESIGN §3.8, like Hubble's): what the pipeline decided for
//! new flows and dropped frames, recorded per burst into a lock-free per-worker queue while
//! somebody observes. Naming the events and streaming them to subscribers is the control
//! plane's job (`nodeplane_control::events`).
//!
//! Cost on the worker: with no observer, one `Relaxed` load per burst. With observers, per
//! frame a test of the outcome and, for an event, a 112-byte copy and one lock-free push
//! (a CAS on the queue's tail); the original 5-tuple comes from the pipeline's own parse of the
//! burst ([`Pipeline::tuples`](crate::Pipeline::tuples)), taken before any rewrite, so no
//! frame is parsed twice. Nothing is allocated, locked or logged per packet. A full queue
//! counts the event as `lost`, never blocks the worker.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;
use serde::{Deserialize, Serialize};

use crate::flow::{Addr, FlowKey};
use crate::pipeline::{Action, CtStatus, Outcome, Packet};
use crate::policy::PolicyVerdict;
use crate::tables::IfIndex;
/// Events each worker's queue holds (allocated when the worker starts: ~2 MB). At 200K
/// events/s on one worker that is 80 ms of slack for the fan-out, which drains every 2 ms.
pub const EVENT_QUEUE: usize = 16_384;

/// One flow event as the worker records it: fixed size, `Copy`, indexes not names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEvent {
    /// [`Clock`] nanoseconds (the burst's time).
    pub ts: u64,
    /// Generation of the tables the indexes (`service`, interfaces) refer to.
    pub generation: u64,
    /// The original (pre-NAT) tuple; `proto == 0` when the frame did not parse as IP.
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub worker: u16,
    pub iface: IfIndex,
    pub action: Action,
    pub ct: CtStatus,
    pub policy: PolicyVerdict,
    /// Index into the tables' services.
    pub service: Option<u32>,
    /// DNAT target.
    pub backend: Option<(Addr, u16)>,
    pub src_identity: Option<u32>,
    pub dst_identity: Option<u32>,
}

impl FlowEvent {
    /// Whether an outcome makes an event: every new flow (whatever its verdict), every drop
    /// with its reason. Policy audit verdicts are on new flows (`policy: audit`): a flow's
    /// later packets carry the same verdict and make no event.
    #[inline]
    pub fn wanted(o: &Outcome) -> bool {
        o.ct == CtStatus::New || matches!(o.action, Action::Drop(_))
    }

    /// The event of one frame: `tuple` is the frame's 5-tuple as it arrived (before rewrite;
    /// [`crate::parse::tuple`]).
    #[inline]
    pub fn new(
        worker: u16,
        generation: u64,
        iface: IfIndex,
        ts: u64,
        tuple: &FlowKey,
        o: &Outcome,
    ) -> FlowEvent {
        FlowEvent {
            ts,
            generation,
            src: tuple.src,
            dst: tuple.dst,
            sport: tuple.sport,
            dport: tuple.dport,
            proto: tuple.proto,
            worker,
            iface,
            action: o.action,
            ct: o.ct,
            policy: o.policy,
            service: o.service,
            backend: o.backend,
            src_identity: o.src_identity,
            dst_identity: o.dst_identity,
        }
    }
}

/// A worker's end: the observer count it checks once per burst and its queue.
#[derive(Debug)]
pub struct EventTap {
    observers: Arc<AtomicUsize>,
    queue: Arc<ArrayQueue<FlowEvent>>,
    /// Read by the fan-out for its subscribers' `lost` (written only when the queue is full).
    lost: Arc<AtomicU64>,
    /// Events pushed (plain: only this worker writes it; read through a stats snapshot).
    emitted: u64,
}

/// Events counters of one worker (`nodeplane status`, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Events put on the worker's queue.
    pub emitted: u64,
    /// Events dropped because the queue was full (the fan-out fell behind).
    pub lost: u64,
}

impl EventTap {
    /// A worker's tap on a fan-out: `observers` is the fan-out's subscriber count, `queue` and
    /// `lost` are this worker's (the fan-out pops the queue and reads `lost`).
    pub fn new(
        observers: Arc<AtomicUsize>,
        queue: Arc<ArrayQueue<FlowEvent>>,
        lost: Arc<AtomicU64>,
    ) -> EventTap {
        EventTap {
            observers,
            queue,
            lost,
            emitted: 0,
        }
    }

    /// A tap nobody observes (its own flag, always 0): a worker outside a daemon.
    pub fn detached() -> EventTap {
        EventTap {
            observers: Arc::new(AtomicUsize::new(0)),
            queue: Arc::new(ArrayQueue::new(1)),
            lost: Arc::new(AtomicU64::new(0)),
            emitted: 0,
        }
    }

    /// A tap with its own observer flag and a queue of `capacity` (benchmarks, tests): the
    /// caller sets the flag and pops the queue.
    pub fn standalone(capacity: usize) -> (EventTap, Arc<AtomicUsize>, Arc<ArrayQueue<FlowEvent>>) {
        let t = EventTap {
            observers: Arc::new(AtomicUsize::new(0)),
            queue: Arc::new(ArrayQueue::new(capacity.max(1))),
            lost: Arc::new(AtomicU64::new(0)),
            emitted: 0,
        };
        let (o, q) = (Arc::clone(&t.observers), Arc::clone(&t.queue));
        (t, o, q)
    }

    /// The once-per-burst check: is anyone observing?
    #[inline]
    pub fn observed(&self) -> bool {
        // Relaxed: a burst that misses a subscription by a few microseconds only delays its
        // first event; nothing else is published through this flag.
        self.observers.load(Ordering::Relaxed) != 0
    }

    #[inline]
    pub fn push(&mut self, ev: FlowEvent) {
        match self.queue.push(ev) {
            Ok(()) => self.emitted += 1,
            Err(_) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records the events of one processed chunk (≤ BURST frames): `tuples` are the pipeline's
    /// 5-tuples of the same frames, before rewrite. An event's time is its frame's (the burst's
    /// time live; the frame's capture time in a replay).
    #[inline]
    pub fn record_burst(
        &mut self,
        worker: u16,
        generation: u64,
        pkts: &[Packet<'_>],
        outs: &[Outcome],
        tuples: &[FlowKey],
    ) {
        for ((p, o), m) in pkts.iter().zip(outs).zip(tuples) {
            if FlowEvent::wanted(o) {
                self.push(FlowEvent::new(worker, generation, p.iface, p.ts, m, o));
            }
        }
    }

    pub fn counts(&self) -> EventCounts {
        EventCounts {
            emitted: self.emitted,
            lost: self.lost.load(Ordering::Relaxed),
        }
    }
}
