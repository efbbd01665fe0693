//! A worker: one pipeline, one packet I/O, run to completion over bursts.
//!
//! ```text
//!  loop {
//!    subscriber.poll()          one atomic load; new tables / policy mode between bursts
//!    events.observed()          one atomic load: is a `nodeplane observe` attached?
//!    capture.prepare()          one atomic load: is a `nodeplane capture` armed?
//!    io.burst(process)          rx ≤ 64 frames → [capture: copy as received, if armed] →
//!                               Pipeline::process_burst → [flow events:
//!                               new flows and drops → this worker's queue, if observed]
//!                               → [RST rewrite] → tx
//!    pipeline.drain()           held fragments that became ready or timed out
//!    serve ≤ 8 control requests ct list / flush / save / stats / explain (bounded channel)
//!    every 1 s: full GC         (incremental GC runs inside every burst)
//!    nothing received: io.idle()
//!  }                            a panic anywhere in a turn is caught at its end (see below)
//! ```
//!
//! No panic is expected on this path, but one must not silently take the worker's queues
//! down with it: each turn runs under `catch_unwind`. A caught panic is counted
//! (`worker_panics`, and the frames of its burst in `panic_dropped`), logged at most once per
//! [`PANIC_LOG_EVERY`] per worker, and the worker goes on with the next turn. The burst's frames
//! are recycled by the I/O as the panic unwinds through it (AF_XDP: the burst's `Drop`); the
//! conntrack entry the panicking packet was updating may be left half-updated, which is the
//! price of keeping the other flows forwarding.
//!
//! The worker owns its conntrack; the control thread never touches it directly but sends
//! [`Request`]s over a bounded channel and waits (with a timeout) for the reply, so table dumps
//! happen between bursts and no lock is ever shared with the packet path.
//!
//! [`PacketIo`] is the seam for packet I/O: the AF_XDP runtime implements it over its rings;
//! [`ReplayIo`](crate::replay::ReplayIo) implements it over frames from a capture: `nodeplane
//! replay`, the daemon's `io: replay`, tests and benchmarks.

pub mod capture;
pub mod clock;
pub mod io;
pub mod panic;
pub mod query;
pub mod stats;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError};
use serde::{Deserialize, Serialize};

pub use self::capture::{CaptureShared, CaptureTap, CapturedFrame};
pub use self::clock::Clock;
pub use self::io::{
    AfXdpIoStats, IoCounters, IoStats, PacketIo, TxCount, XskKernelStats, XskSocketStats,
};
pub use self::panic::{install_panic_hook, panic_message, PANIC_LOG_EVERY};
use self::panic::{LAST_PANIC, WORKER_THREAD};
pub use self::query::{
    proto_name, proto_number, Answer, CtFilter, CtRow, Explained, OutcomeView, Query, Request,
};
pub use self::stats::{ServiceCounts, SvcTraffic, WorkerStats};
use crate::conntrack::CtStats;
use crate::events::{EventTap, FlowEvent};
use crate::flow::FlowKey;
use crate::offload::Seen;
use crate::parse;
use crate::pipeline::{Restored, ScratchBuffers};
use crate::publish::Subscriber;
use crate::reject::Rejects;
use crate::snapshot::{SavedAffinity, SavedFlow};
use crate::tables::IfIndex;
use crate::{rst, Action, DropReason, Outcome, Pipeline, BURST};

/// What happens to a packet of a flow whose backend was removed or quarantined (the pipeline
/// drops it `backend-gone` and forgets the flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemovedFlowAction {
    /// Drop silently: the peers find out by their own timeouts.
    #[default]
    Drop,
    /// Drop, and answer a TCP segment with a reset to its sender (built in place from the
    /// dropped segment and sent back out of its ingress interface).
    Rst,
}

/// Requests served per loop turn at most (a flood of CLI calls cannot starve the packets).
const REQUESTS_PER_TURN: usize = 8;
/// Full GC once per second of the worker's time (the capture's clock in a replay).
const FULL_GC_EVERY_NS: u64 = 1_000_000_000;
const IDLE_WAIT: Duration = Duration::from_millis(2);

#[derive(Debug)]
pub struct Worker<I: PacketIo> {
    pub id: usize,
    pipeline: Pipeline,
    sub: Subscriber,
    io: I,
    requests: Receiver<Request>,
    stop: Arc<AtomicBool>,
    clock: Clock,
    removed: RemovedFlowAction,
    rst_sent: u64,
    /// Answers to new flows of services without endpoints (built per burst, sent after it).
    rejects: Rejects,
    /// When the next full GC is due (worker time); `None` before the first turn.
    next_gc: Option<u64>,
    panics: u64,
    panic_dropped: u64,
    /// When a caught panic was last logged, and how many were caught since without a log.
    panic_logged: Option<Instant>,
    panics_unlogged: u64,
    services: ServiceCounts,
    /// Flow events: checked once per burst (see `crate::events`).
    events: EventTap,
    /// `nodeplane capture`: checked once per burst (see `capture.rs`).
    capture: CaptureTap,
    /// While observed: the last burst's outcomes, ingress and time, for events of frames the
    /// I/O loses after the pipeline decided them.
    last: Box<[(Outcome, IfIndex, u64); BURST]>,
    /// With a kernel flow cache (`PacketIo::offload`): what the last burst decided, for its
    /// offers (`crate::offload`).
    seen: Box<[Seen; BURST]>,
    /// The last `explain`'s scratch buffers (flow cache, keys), which the next one reuses (see
    /// [`Pipeline::scratch`]): kept from the first explain on, so that an explain does not
    /// allocate 256 KiB each.
    explain_scratch: Option<ScratchBuffers>,
}

impl<I: PacketIo> Worker<I> {
    pub fn new(
        id: usize,
        sub: Subscriber,
        mut io: I,
        requests: Receiver<Request>,
        stop: Arc<AtomicBool>,
        clock: Clock,
        removed: RemovedFlowAction,
    ) -> Worker<I> {
        let tables = sub.current();
        io.bind(&tables);
        let services = ServiceCounts::new(&tables);
        let mut pipeline = Pipeline::new(tables);
        let (worker, workers) = io.owner();
        pipeline.set_owner(worker, workers);
        pipeline.set_keep_partial(io.keeps_partial());
        Worker {
            id,
            pipeline,
            sub,
            io,
            requests,
            stop,
            clock,
            removed,
            rst_sent: 0,
            rejects: Rejects::new(),
            next_gc: None,
            panics: 0,
            panic_dropped: 0,
            panic_logged: None,
            panics_unlogged: 0,
            services,
            events: EventTap::detached(),
            capture: CaptureTap::detached(),
            last: Box::new([(Outcome::default(), 0, 0); BURST]),
            seen: Box::new([Seen::default(); BURST]),
            explain_scratch: None,
        }
    }

    /// Restores flows and affinity entries of a snapshot, before the worker runs (see
    /// [`Pipeline::restore`]), on the I/O's clock.
    pub fn restore(&mut self, flows: &[SavedFlow], affinity: &[SavedAffinity]) -> Restored {
        let now = self.io.now(&self.clock);
        self.pipeline.restore(flows, affinity, now)
    }

    /// Records flow events into `tap` (the daemon's hub; see `crate::events`).
    pub fn with_events(mut self, tap: EventTap) -> Worker<I> {
        self.events = tap;
        self
    }

    /// Copies received frames into `tap` while a capture is armed (`nodeplane capture`).
    pub fn with_capture(mut self, tap: CaptureTap) -> Worker<I> {
        self.capture = tap;
        self
    }

    /// Runs until `stop` is set. Returns the final counters.
    pub fn run(mut self) -> WorkerStats {
        WORKER_THREAD.with(|w| w.set(true));
        self.io.start();
        while !self.stop.load(Ordering::Relaxed) {
            self.turn();
        }
        self.io.finish();
        self.stats()
    }

    /// One loop turn: pick up tables, one burst, drain, requests, full GC when due, idle.
    /// A panic inside is caught, counted and logged (module docs); the turn then returns the
    /// frames of its burst. Public for tests and benchmarks that drive a worker without a
    /// thread. Returns the frames taken in (0: idle).
    pub fn turn(&mut self) -> usize {
        let mut taken = 0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.turn_inner(&mut taken))) {
            Ok(n) => n,
            Err(p) => {
                self.contained(p.as_ref(), taken);
                taken
            }
        }
    }

    /// Counts a caught panic and logs it, at most once per [`PANIC_LOG_EVERY`].
    fn contained(&mut self, p: &(dyn std::any::Any + Send), frames: usize) {
        self.panics += 1;
        self.panic_dropped += frames as u64;
        let due = self
            .panic_logged
            .is_none_or(|t| t.elapsed() >= PANIC_LOG_EVERY);
        if !due {
            self.panics_unlogged += 1;
            return;
        }
        let what = LAST_PANIC
            .with(|l| l.borrow_mut().take())
            .unwrap_or_else(|| panic_message(p));
        log::error!(
            "worker {}: PANIC caught ({what}); {frames} frames of the burst dropped, the worker goes on ({} panics in all, {} more since the last log line)",
            self.id,
            self.panics,
            self.panics_unlogged
        );
        self.panic_logged = Some(Instant::now());
        self.panics_unlogged = 0;
    }

    fn turn_inner(&mut self, taken: &mut usize) -> usize {
        if self.sub.poll(&mut self.pipeline) {
            self.io.bind(self.pipeline.tables());
            self.services.rebind(self.pipeline.tables());
            if let Some(o) = self.io.offload() {
                // New tables or another policy mode: nothing the kernel repeats may outlive
                // them (see `crate::offload`).
                o.clear(&mut self.pipeline);
            }
        }
        let now = self.io.now(&self.clock);
        // Full GC when due, before the burst (a replay's time is then the burst's first frame).
        match self.next_gc {
            None => self.next_gc = Some(now.saturating_add(FULL_GC_EVERY_NS)),
            Some(due) if now >= due && !self.io.finished() => {
                self.pipeline.gc(now);
                self.next_gc = Some(now.saturating_add(FULL_GC_EVERY_NS));
            }
            Some(_) => {}
        }
        let id = self.id as u16;
        // The latest frame time of the burst: held fragments are drained as of then.
        let mut latest = now;
        let Worker {
            pipeline,
            io,
            removed,
            rst_sent,
            rejects,
            services,
            events,
            capture,
            last,
            seen,
            ..
        } = self;
        let removed = *removed;
        // The only cost of flow events while nobody observes: this load, once per turn.
        let observed = events.observed();
        // With a kernel flow cache only: the burst's decisions are kept for its offers.
        let offloading = io.offload().is_some();
        // The lane's frames record their 5-tuples only for observed events and for the offers,
        // which find each frame's flow by its tuple (`tuples` below, `offload::after_burst`).
        pipeline.set_record_tuples(observed || offloading);
        let generation = pipeline.tables().generation;
        let no_backend_before = pipeline.counters().drops[DropReason::NoBackend as usize];
        // Off: one load, like the events check.
        let captured = capture.prepare(pipeline.tables());
        let mut n_seen = 0;
        let n = io.burst(now, &mut |pkts, outs| {
            *taken = pkts.len();
            if let Some(want) = captured {
                // As received: before the pipeline rewrites anything.
                capture.record(want, pkts);
            }
            latest = pkts.iter().map(|p| p.ts).fold(latest, u64::max);
            if observed {
                // Events before the RST rewrite below: a dropped frame shows as dropped.
                for (pc, oc) in pkts.chunks_mut(BURST).zip(outs.chunks_mut(BURST)) {
                    pipeline.process_burst(pc, oc);
                    let tuples = pipeline.tuples(pc.len());
                    events.record_burst(id, generation, pc, oc, tuples);
                }
            } else {
                pipeline.process_burst(pkts, outs);
            }
            // Rejects: only bursts that dropped a frame `no-backend` look at the outcomes again.
            if pipeline.counters().drops[DropReason::NoBackend as usize] != no_backend_before {
                for (p, o) in pkts.iter().zip(outs.iter()) {
                    if o.action == Action::Drop(DropReason::NoBackend) {
                        rejects.add(p.data, p.iface, p.ts);
                    }
                }
            }
            for (p, o) in pkts.iter().zip(outs.iter()) {
                services.count(o, p.data.len());
            }
            if observed {
                for ((l, p), o) in last.iter_mut().zip(pkts.iter()).zip(outs.iter()) {
                    *l = (*o, p.iface, p.ts);
                }
            }
            // The pipeline's tuples cover one chunk: a burst of at most BURST frames.
            if offloading && pkts.len() <= BURST {
                for ((s, p), o) in seen.iter_mut().zip(pkts.iter()).zip(outs.iter()) {
                    *s = Seen::of(p.iface, o);
                }
                n_seen = pkts.len();
            }
            if removed == RemovedFlowAction::Rst {
                for (p, o) in pkts.iter_mut().zip(outs.iter_mut()) {
                    if o.action == Action::Drop(DropReason::BackendGone) {
                        if let Some(len) = rst::reset_in_place(p.data) {
                            let data = std::mem::take(&mut p.data);
                            p.data = &mut data[..len];
                            o.action = Action::Forward(p.iface);
                            *rst_sent += 1;
                        }
                    }
                }
            }
        });
        if let Some(o) = io.offload() {
            o.after_burst(pipeline, &seen[..n_seen], now);
        }
        rejects.flush(|egress, ts, frame| io.reply(egress, ts, frame));
        pipeline
            .mtu_errors_mut()
            .flush(|egress, ts, frame| io.reply(egress, ts, frame));
        if observed && n > 0 {
            // Frames the I/O lost after the pipeline decided them (no TX socket, a failed
            // transmit): an event each, with the I/O's reason.
            let tuples = pipeline.tuples(BURST);
            io.lost_in_burst(&mut |k, reason| {
                if let (Some((o, iface, ts)), Some(m)) = (last.get(k), tuples.get(k)) {
                    let o = Outcome {
                        action: Action::Drop(reason),
                        ..*o
                    };
                    events.push(FlowEvent::new(id, generation, *iface, *ts, m, &o));
                }
            });
        }
        // Input exhausted (replay): what is still held times out now.
        let drain_at = if n == 0 && io.finished() {
            u64::MAX
        } else {
            latest
        };
        pipeline.drain(drain_at, |r| {
            services.count(&r.outcome, r.data.len());
            if observed && FlowEvent::wanted(&r.outcome) {
                // Released fragments are rare: parse again here (off the burst loop).
                let tuple = parse::tuple(&parse::parse(r.data));
                events.push(FlowEvent::new(
                    id, generation, r.iface, latest, &tuple, &r.outcome,
                ));
            }
            io.released(&r);
        });
        *taken = 0;
        for _ in 0..REQUESTS_PER_TURN {
            match self.requests.try_recv() {
                Ok(req) => self.serve(req),
                Err(_) => break,
            }
        }
        if n == 0 {
            if self.io.finished() {
                // Input exhausted (replay): wait for requests instead of spinning.
                match self.requests.recv_timeout(Duration::from_millis(20)) {
                    Ok(req) => self.serve(req),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
                }
            } else {
                self.io.idle(IDLE_WAIT);
            }
        }
        n
    }

    fn serve(&mut self, req: Request) {
        let now = self.clock.now();
        let answer = match req.query {
            Query::CtList { filter, limit } => {
                let t = Arc::clone(self.pipeline.tables());
                let mut rows = Vec::new();
                let mut matched = 0;
                let ct = self.pipeline.conntrack();
                for (slot, e) in ct.iter_slots() {
                    let expires = ct.expires(slot);
                    if expires > now && filter.matches(&e) {
                        matched += 1;
                        if rows.len() < limit {
                            rows.push(CtRow::from_entry(self.id, &e, expires, &t, now));
                        }
                    }
                }
                Answer::Ct { rows, matched }
            }
            Query::CtFlush { filter } => {
                let ct = self.pipeline.conntrack_mut();
                let before = ct.len();
                if filter == CtFilter::default() {
                    ct.flush();
                    if let Some(o) = self.io.offload() {
                        // Forgotten flows must not go on in the kernel.
                        o.clear(&mut self.pipeline);
                    }
                    Answer::Flushed(before)
                } else {
                    let keys: Vec<FlowKey> = ct
                        .iter()
                        .filter(|e| filter.matches(e))
                        .map(|e| e.orig())
                        .collect();
                    for k in &keys {
                        if let Some((slot, _)) = ct.lookup(k, now) {
                            ct.remove(slot);
                        }
                    }
                    let after = ct.len();
                    if let Some(o) = self.io.offload() {
                        o.clear(&mut self.pipeline);
                    }
                    Answer::Flushed(before - after)
                }
            }
            Query::Stats => Answer::Stats(Box::new(self.stats())),
            Query::Save => Answer::Saved(Box::new(self.pipeline.save(self.io.now(&self.clock)))),
            Query::Explain { frame, iface, keys } => self.explain(frame, &iface, &keys, now),
        };
        // The control thread may have given up waiting: nothing to do then.
        let _ = req.reply.try_send(answer);
    }

    fn explain(&mut self, mut frame: Vec<u8>, iface: &str, keys: &[FlowKey], now: u64) -> Answer {
        let tables = Arc::clone(self.pipeline.tables());
        let Some(idx) = tables.iface_index(iface) else {
            return Answer::Error(format!(
                "interface {iface:?} is not in the running state (known: {})",
                tables
                    .ifaces
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let ct = self.pipeline.conntrack();
        let flow = keys
            .iter()
            .find_map(|k| ct.find(k).filter(|&(s, _)| ct.expires(s) > now))
            .map(|(s, _)| CtRow::from_entry(self.id, &ct.entry(s), ct.expires(s), &tables, now));
        let mut scratch = self
            .pipeline
            .scratch(keys, now, self.explain_scratch.take());
        let outcome = scratch.process_one(&mut frame, idx, now);
        self.explain_scratch = Some(scratch.into_buffers());
        Answer::Explained(Box::new(Explained {
            flow,
            view: OutcomeView::new(&outcome, &tables),
            outcome,
            frame_after: frame,
            policy_mode_override: self.pipeline.policy_mode_override(),
            tables,
        }))
    }

    pub fn stats(&self) -> WorkerStats {
        let c = self.pipeline.counters();
        let ct = self.pipeline.conntrack();
        let s: CtStats = ct.stats;
        // Every frame the node lost, one enum: the pipeline's drops, then the I/O's losses and
        // the frames of panicked bursts. A frame the pipeline forwarded and the I/O then could
        // not transmit (no socket, a failed transmit, its interface gone) is a drop and not
        // forwarded: `forwarded` counts what went out.
        let mut drops = c.drops;
        self.io.drops(&mut drops);
        drops[DropReason::WorkerPanic as usize] += self.panic_dropped;
        let lost_after: u64 = drops
            .iter()
            .zip(c.drops.iter())
            .map(|(all, pipeline)| all - pipeline)
            .sum();
        let not_sent: u64 = [
            DropReason::TxNoSocket,
            DropReason::TxFailed,
            DropReason::IfaceDown,
        ]
        .iter()
        .map(|r| drops[*r as usize] - c.drops[*r as usize])
        .sum();
        let io = self.io.stats();
        let io_counters = io.afxdp.as_ref().map(|a| &a.counters);
        WorkerStats {
            worker: self.id,
            generation: self.pipeline.tables().generation,
            packets: c.packets,
            forwarded: c.forwarded.saturating_sub(not_sent),
            passed: c.passed,
            dropped: c.dropped + lost_after,
            held: c.held,
            drops: DropReason::ALL
                .iter()
                .filter(|r| drops[**r as usize] > 0)
                .map(|r| (r.name().to_string(), drops[*r as usize]))
                .collect(),
            rst_sent: self.rst_sent,
            rejects_sent: self.rejects.sent,
            rejects_suppressed: self.rejects.suppressed,
            mtu_icmp_sent: self.pipeline.mtu_errors().sent,
            mtu_icmp_suppressed: self.pipeline.mtu_errors().suppressed,
            csum_completed: c.csum_completed + io_counters.map_or(0, |k| k.csum_completed),
            csum_offloaded: io_counters.map_or(0, |k| k.csum_offloaded),
            ct_entries: ct.len(),
            ct_capacity: ct.capacity(),
            ct_created: s.created,
            ct_expired: s.expired,
            ct_evicted: s.evicted,
            ct_full_drops: s.full_drops,
            worker_panics: self.panics,
            panic_dropped: self.panic_dropped,
            io,
            events: self.events.counts(),
            services: Some(self.services.clone()),
        }
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub fn io(&self) -> &I {
        &self.io
    }

    pub fn io_mut(&mut self) -> &mut I {
        &mut self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Publisher;
    use crate::{MaglevCache, Packet, Tables};
    use crossbeam::channel::bounded;

    /// Three frames per burst; panics in the bursts listed in `panic_after` (after the
    /// pipeline ran) and `panic_before` (before it ran).
    struct FlakyIo {
        iface: IfIndex,
        bursts: u64,
        panic_after: Vec<u64>,
        panic_before: Vec<u64>,
        completed: u64,
    }

    impl PacketIo for FlakyIo {
        fn bind(&mut self, t: &Arc<Tables>) {
            self.iface = t.iface_index("pod-client").expect("pod-client");
        }
        fn burst(
            &mut self,
            now: u64,
            process: &mut dyn FnMut(&mut [Packet<'_>], &mut [Outcome]),
        ) -> usize {
            self.bursts += 1;
            assert!(
                !self.panic_before.contains(&self.bursts),
                "injected panic before burst {}",
                self.bursts
            );
            let mut bufs = [[0u8; 60]; 3];
            let mut outs = [Outcome::default(); 3];
            let mut pkts: Vec<Packet<'_>> = bufs
                .iter_mut()
                .map(|b| Packet {
                    data: &mut b[..],
                    iface: self.iface,
                    ts: now,
                    tag: 0,
                    parsed: None,
                })
                .collect();
            process(&mut pkts, &mut outs);
            assert!(
                !self.panic_after.contains(&self.bursts),
                "injected panic in burst {}",
                self.bursts
            );
            self.completed += 1;
            3
        }
        fn send(&mut self, _: IfIndex, _: &[u8]) {}
        fn idle(&mut self, _: Duration) {}
        fn stats(&self) -> IoStats {
            IoStats::default()
        }
    }

    #[test]
    fn a_panic_in_a_burst_is_counted_and_the_worker_goes_on() {
        let s = nodeplane_state::example::state().unwrap();
        let p = Publisher::new(Arc::new(Tables::build(&s, 1, &mut MaglevCache::default())));
        let (_tx, rx) = bounded(1);
        let io = FlakyIo {
            iface: 0,
            bursts: 0,
            panic_after: vec![1, 4],
            panic_before: vec![3],
            completed: 0,
        };
        let mut w = Worker::new(
            0,
            p.subscribe(),
            io,
            rx,
            Arc::new(AtomicBool::new(false)),
            Clock::new(),
            RemovedFlowAction::Drop,
        );
        let taken: Vec<usize> = (0..5).map(|_| w.turn()).collect();
        // Bursts 1 and 4 panicked after taking 3 frames, burst 3 before taking any.
        assert_eq!(taken, [3, 3, 0, 3, 3]);
        let st = w.stats();
        assert_eq!((st.worker_panics, st.panic_dropped), (3, 6));
        // The frames of the panicked bursts are losses like any other, by their reason.
        assert_eq!(st.drops.get("worker-panic"), Some(&6), "{:?}", st.drops);
        assert_eq!(w.io().completed, 2, "bursts 2 and 5 completed");
        assert_eq!(st.packets, 12, "the pipeline saw every burst it was given");
        // The counters reach `nodeplane status` (JSON).
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["worker_panics"], 3);
    }

    /// Forwards one client SYN per burst and then loses it (as an AF_XDP egress without a
    /// socket would).
    struct LossyIo {
        iface: IfIndex,
        frame: Vec<u8>,
        bursts: u64,
    }

    impl PacketIo for LossyIo {
        fn bind(&mut self, t: &Arc<Tables>) {
            self.iface = t.iface_index("pod-client").expect("pod-client");
        }
        fn burst(
            &mut self,
            now: u64,
            process: &mut dyn FnMut(&mut [Packet<'_>], &mut [Outcome]),
        ) -> usize {
            self.bursts += 1;
            let mut buf = self.frame.clone();
            let mut outs = [Outcome::default(); 1];
            let mut pkts = [Packet {
                data: &mut buf,
                iface: self.iface,
                ts: now,
                tag: 0,
                parsed: None,
            }];
            process(&mut pkts, &mut outs);
            assert!(
                matches!(outs[0].action, Action::Forward(_)),
                "{:?}",
                outs[0]
            );
            1
        }
        fn lost_in_burst(&mut self, f: &mut dyn FnMut(usize, DropReason)) {
            f(0, DropReason::TxNoSocket);
        }
        fn drops(&self, drops: &mut [u64; crate::drop::DROP_REASON_SLOTS]) {
            drops[DropReason::TxNoSocket as usize] += self.bursts;
        }
        fn send(&mut self, _: IfIndex, _: &[u8]) {}
        fn idle(&mut self, _: Duration) {}
        fn stats(&self) -> IoStats {
            IoStats::default()
        }
    }

    #[test]
    fn a_frame_the_io_loses_after_the_pipeline_is_a_drop_with_its_reason() {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 2, 0x0a], [2, 0, 0, 0, 1, 1])
            .ipv4([10, 244, 1, 10], [10, 96, 0, 10], 64)
            .tcp(41000, 80, 1, 65000)
            .syn()
            .write(&mut frame, &[])
            .unwrap();
        let s = nodeplane_state::example::state().unwrap();
        let p = Publisher::new(Arc::new(Tables::build(&s, 1, &mut MaglevCache::default())));
        let (_tx, rx) = bounded(1);
        let io = LossyIo {
            iface: 0,
            frame,
            bursts: 0,
        };
        let (tap, observers, queue) = EventTap::standalone(16);
        observers.store(1, Ordering::Relaxed);
        let mut w = Worker::new(
            0,
            p.subscribe(),
            io,
            rx,
            Arc::new(AtomicBool::new(false)),
            Clock::new(),
            RemovedFlowAction::Drop,
        )
        .with_events(tap);
        assert_eq!(w.turn(), 1);
        let new_flow = queue.pop().expect("the new flow's event");
        assert!(matches!(new_flow.action, Action::Forward(_)));
        let lost = queue.pop().expect("the loss's event");
        assert_eq!(lost.action, Action::Drop(DropReason::TxNoSocket));
        assert_eq!(
            (lost.sport, lost.dport),
            (41000, 80),
            "the frame's own tuple"
        );
        assert_eq!(
            lost.service, new_flow.service,
            "named like the pipeline named it"
        );
        assert!(queue.pop().is_none());
        let st = w.stats();
        assert_eq!(st.drops.get("tx-no-socket"), Some(&1), "{:?}", st.drops);
        assert_eq!(st.dropped, 1, "the loss counts as a drop");
        assert_eq!(st.forwarded, 0, "and not as forwarded");
    }
}
