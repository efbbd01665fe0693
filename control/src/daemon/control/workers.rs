//! The worker threads: started all or none, supervised (a thread that died is noticed, logged
//! and shown), asked (every request goes through each worker's bounded channel, answered
//! within [`WORKER_TIMEOUT`]) and joined at stop.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Receiver, Sender};

use super::Control;
use crate::api::DeadWorker;
use nodeplane_dataplane::pipeline::Restored;
use nodeplane_dataplane::publish::Publisher;
use nodeplane_dataplane::worker::{
    panic_message, Answer, PacketIo, Query, Request as WReq, Worker, WorkerStats,
};

/// How long the control thread waits for a worker to take and answer a request.
pub const WORKER_TIMEOUT: Duration = Duration::from_secs(2);
/// Queue depth of each worker's request channel.
const WORKER_QUEUE: usize = 16;

#[derive(Debug)]
pub(super) struct WorkerHandle {
    id: usize,
    tx: Sender<WReq>,
    /// `None` once the thread was joined: it died while running (see `check_workers`).
    /// The thread returns `None` when its start was called off (see `spawn_workers`).
    join: Option<JoinHandle<Option<WorkerStats>>>,
}

impl Control {
    /// Starts one thread per worker I/O, all or none: each thread waits for a go before it
    /// runs, so when one cannot be spawned the others are called off (they drop their I/O,
    /// closing its sockets) and joined, and the error is returned.
    pub(super) fn spawn_workers(
        &mut self,
        p: &Publisher,
        ios: Vec<Box<dyn PacketIo>>,
    ) -> Result<Vec<WorkerHandle>, String> {
        let mut started: Vec<(WorkerHandle, Sender<()>, Receiver<Restored>)> = Vec::new();
        let mut failed = None;
        // A start that failed before registered queues nobody fills.
        self.events.clear_queues();
        self.capture.clear();
        // Flows of a snapshot go in before a worker takes its first burst.
        let mut plan = self.restore_plan(&p.current(), ios.len());
        for (i, io) in ios.into_iter().enumerate() {
            let (tx, rx) = bounded(WORKER_QUEUE);
            let (sub, stop, clock, removed, tap, capture) = (
                p.subscribe(),
                self.stop.clone(),
                self.clock,
                self.removed,
                self.events.tap(),
                self.capture.tap(),
            );
            let restore = plan
                .as_mut()
                .map(|(parts, snap)| (std::mem::take(&mut parts[i]), snap.affinity.clone()));
            let (go_tx, go_rx): (Sender<()>, Receiver<()>) = bounded(1);
            let (ready_tx, ready_rx) = bounded(1);
            // The worker is built on its own thread: its conntrack (tens of MB, written once)
            // is allocated by every worker at the same time, which shortens a (re)start.
            let body = move || {
                let mut w = Worker::new(i, sub, io, rx, stop, clock, removed)
                    .with_events(tap)
                    .with_capture(capture);
                let r = restore
                    .map(|(flows, affinity)| w.restore(&flows, &affinity))
                    .unwrap_or_default();
                let _ = ready_tx.send(r);
                go_rx.recv().ok().map(|()| w.run())
            };
            #[cfg(test)]
            let spawned = if self.fail_spawn == Some(i) {
                Err(std::io::Error::other("injected spawn failure"))
            } else {
                std::thread::Builder::new()
                    .name(format!("np-worker-{i}"))
                    .spawn(body)
            };
            #[cfg(not(test))]
            let spawned = std::thread::Builder::new()
                .name(format!("np-worker-{i}"))
                .spawn(body);
            match spawned {
                Ok(join) => started.push((
                    WorkerHandle {
                        id: i,
                        tx,
                        join: Some(join),
                    },
                    go_tx,
                    ready_rx,
                )),
                Err(e) => {
                    failed = Some(format!("cannot start worker thread {i}: {e}"));
                    break;
                }
            }
        }
        let mut restored = Restored::default();
        if failed.is_none() {
            for (h, _, ready) in &started {
                match ready.recv() {
                    Ok(r) => {
                        restored.flows += r.flows;
                        restored.affinity += r.affinity;
                        restored.skipped += r.skipped;
                    }
                    Err(_) => {
                        failed = Some(format!("worker {} ended while it was being built", h.id));
                        break;
                    }
                }
            }
        }
        if let Some(e) = failed {
            for (h, go, _) in started {
                drop(go);
                if let Some(j) = h.join {
                    let _ = j.join();
                }
            }
            crate::error_limited!(
                "io-start-failed",
                "{e}; the packet I/O is stopped and the start retried"
            );
            return Err(e);
        }
        if let Some((_, snap)) = &plan {
            self.restored(
                snap.flows.len(),
                restored.flows,
                restored.affinity,
                restored.skipped,
            );
        }
        let mut workers = Vec::with_capacity(started.len());
        for (h, go, _) in started {
            let _ = go.send(());
            workers.push(h);
        }
        log::info!(
            "started {} worker(s) on {} I/O",
            workers.len(),
            self.io.kind()
        );
        Ok(workers)
    }

    /// Notices worker threads that ended while the daemon runs (a panic outside what a
    /// worker catches itself): logs each once, at error level, and marks the node unhealthy.
    /// Called by the event loop once a second and before every status answer.
    pub fn check_workers(&mut self) {
        if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut died = Vec::new();
        for w in &mut self.workers {
            if !w.join.as_ref().is_some_and(|j| j.is_finished()) {
                continue;
            }
            let Some(j) = w.join.take() else { continue };
            let reason = match j.join() {
                Ok(_) => "its thread exited".to_string(),
                Err(p) => format!("panicked: {}", panic_message(p.as_ref())),
            };
            log::error!(
                "worker {} DIED ({reason}): its queues are not served until nodeplane is restarted",
                w.id
            );
            self.dead.push(DeadWorker {
                worker: w.id,
                reason,
            });
            died.push(w.id);
        }
        if !died.is_empty() {
            // Load balancers stop sending to a node that no longer serves all its queues.
            self.health.set_proxy_healthy(false);
        }
        for id in died {
            self.io.worker_died(id);
        }
    }

    /// Workers that died while the daemon ran.
    pub fn dead_workers(&self) -> &[DeadWorker] {
        &self.dead
    }

    /// Waits for the workers to stop (the stop flag is set by the caller), then stops the
    /// I/O (AF_XDP: XDP detached). A worker that panicked on its way out is logged and added
    /// to [`Control::dead_workers`].
    pub fn join_workers(&mut self) -> Vec<WorkerStats> {
        let t0 = Instant::now();
        let mut stats = Vec::new();
        for w in self.workers.drain(..) {
            drop(w.tx);
            let Some(j) = w.join else { continue };
            match j.join() {
                Ok(Some(s)) => stats.push(s),
                Ok(None) => {}
                Err(p) => {
                    let reason = format!("panicked: {}", panic_message(p.as_ref()));
                    log::error!("worker {} {reason}", w.id);
                    self.dead.push(DeadWorker {
                        worker: w.id,
                        reason,
                    });
                }
            }
        }
        let t1 = Instant::now();
        self.io.stop();
        log::info!(
            "workers stopped in {} ms, {} I/O stopped in {} ms",
            (t1 - t0).as_millis(),
            self.io.kind(),
            t1.elapsed().as_millis()
        );
        stats
    }

    /// Asks every worker; returns the answers that came in time.
    pub(super) fn ask(&self, make: impl Fn() -> Query) -> Result<Vec<Answer>, String> {
        let mut pending = Vec::new();
        // Dead workers take no requests (`nodeplane status` lists them apart).
        for w in self.workers.iter().filter(|w| w.join.is_some()) {
            let i = w.id;
            let (rtx, rrx) = bounded(1);
            w.tx.send_timeout(
                WReq {
                    query: make(),
                    reply: rtx,
                },
                WORKER_TIMEOUT,
            )
            .map_err(|_| format!("worker {i} does not take requests"))?;
            pending.push((i, rrx));
        }
        let mut out = Vec::new();
        for (i, rrx) in pending {
            match rrx.recv_timeout(WORKER_TIMEOUT) {
                Ok(Answer::Error(e)) => return Err(e),
                Ok(a) => out.push(a),
                Err(_) => return Err(format!("worker {i} did not answer in time")),
            }
        }
        Ok(out)
    }
}
