//! Publication of compiled tables (and the runtime policy-mode override) from the control
//! thread to the workers.
//!
//! ```text
//!  control thread                               worker (per burst)
//!  ──────────────                               ──────────────────
//!  build Arc<Tables> (outside any lock)         v = version.load(Acquire)      <- the only
//!  slot.lock(); swap Arc; unlock                if v == seen: run the burst       per-burst cost
//!  version.fetch_add(1, Release)  ───────────>  else: slot.lock(); clone Arc; unlock;
//!  drop the old Arc (outside the lock)                mode = mode.load(); set_tables; seen = v
//! ```
//!
//! The per-burst path is one `Acquire` load of `version`, no lock and no RMW. Only when the
//! version moved (a publication or a policy-mode change: a few times a second at most) does a
//! worker take the slot's mutex, for the time of one `Arc` clone; the publisher holds it only
//! for a pointer swap and drops the previous snapshot after unlocking, so neither side can be
//! held up by the other's work. The `Release` increment pairs with the worker's `Acquire` load:
//! a worker that sees version `v` finds in the slot the tables of version `v` or newer (never
//! older), and the override stored before the increment.
//!
//! A worker picks a new snapshot up between bursts: every packet of one burst is decided on one
//! snapshot, which is what makes a swap invisible to traffic (no packet sees half a state).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Pipeline, Tables};
use crossbeam::channel::{bounded, Receiver, Sender};
use nodeplane_state::PolicyMode;

#[derive(Debug)]
struct Shared {
    /// Bumped after every change of `slot` or `mode`.
    version: AtomicU64,
    slot: Mutex<Arc<Tables>>,
    /// 0 = no override, else `encode(mode)`.
    mode: AtomicU8,
    /// Snapshots a worker switched away from, handed back so that the control thread (not the
    /// worker, between two bursts) pays for freeing them: dropping 10k services and 100k
    /// ipcache entries takes milliseconds.
    retired_tx: Sender<Arc<Tables>>,
    retired_rx: Receiver<Arc<Tables>>,
}

/// Retired snapshots queued at most; beyond that a worker frees one itself (counted as a
/// slow pick-up, never a lost packet).
const RETIRED_QUEUE: usize = 64;

/// The control thread's end. Cloning gives another handle on the same publication.
#[derive(Debug, Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

/// A worker's end: remembers which version it runs.
#[derive(Debug)]
pub struct Subscriber {
    shared: Arc<Shared>,
    seen: u64,
}

fn encode(m: Option<PolicyMode>) -> u8 {
    match m {
        None => 0,
        Some(PolicyMode::Enforce) => 1,
        Some(PolicyMode::Audit) => 2,
        Some(PolicyMode::AllowAll) => 3,
    }
}

fn decode(v: u8) -> Option<PolicyMode> {
    match v {
        1 => Some(PolicyMode::Enforce),
        2 => Some(PolicyMode::Audit),
        3 => Some(PolicyMode::AllowAll),
        _ => None,
    }
}

impl Publisher {
    pub fn new(initial: Arc<Tables>) -> Publisher {
        let (retired_tx, retired_rx) = bounded(RETIRED_QUEUE);
        Publisher {
            shared: Arc::new(Shared {
                version: AtomicU64::new(1),
                slot: Mutex::new(initial),
                mode: AtomicU8::new(0),
                retired_tx,
                retired_rx,
            }),
        }
    }

    /// Frees the snapshots workers have switched away from. Called by the control thread at
    /// every publication and periodically.
    pub fn reap(&self) -> usize {
        let mut n = 0;
        while let Ok(t) = self.shared.retired_rx.try_recv() {
            drop(t);
            n += 1;
        }
        n
    }

    /// Publishes new tables; workers switch to them at their next burst boundary.
    pub fn publish(&self, tables: Arc<Tables>) {
        let old = {
            let mut slot = self.shared.slot.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *slot, tables)
        };
        self.shared.version.fetch_add(1, Ordering::Release);
        // The previous snapshot is freed here or, once the workers hand it back, by `reap`;
        // never under the lock.
        drop(old);
        self.reap();
    }

    /// Sets (or clears, with `None`) the operator's policy-mode override.
    pub fn set_policy_mode(&self, mode: Option<PolicyMode>) {
        self.shared.mode.store(encode(mode), Ordering::Relaxed);
        self.shared.version.fetch_add(1, Ordering::Release);
    }

    pub fn policy_mode(&self) -> Option<PolicyMode> {
        decode(self.shared.mode.load(Ordering::Relaxed))
    }

    /// The tables published last.
    pub fn current(&self) -> Arc<Tables> {
        Arc::clone(&self.shared.slot.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn version(&self) -> u64 {
        self.shared.version.load(Ordering::Acquire)
    }

    /// A subscriber that has not seen anything yet (its first `poll` installs the current
    /// tables and mode).
    pub fn subscribe(&self) -> Subscriber {
        Subscriber {
            shared: Arc::clone(&self.shared),
            seen: 0,
        }
    }
}

impl Subscriber {
    /// Call once per burst, before it. Returns true when the pipeline was switched.
    #[inline]
    pub fn poll(&mut self, pipeline: &mut Pipeline) -> bool {
        let v = self.shared.version.load(Ordering::Acquire);
        if v == self.seen {
            return false;
        }
        self.pick_up(v, pipeline);
        true
    }

    #[cold]
    fn pick_up(&mut self, v: u64, pipeline: &mut Pipeline) {
        let tables = Arc::clone(&self.shared.slot.lock().unwrap_or_else(|p| p.into_inner()));
        if !Arc::ptr_eq(&tables, pipeline.tables()) {
            let old = Arc::clone(pipeline.tables());
            pipeline.set_tables(tables);
            // Hand the old snapshot back for the control thread to free. (A full queue means
            // the control thread is not reaping; the worker then frees it here.)
            let _ = self.shared.retired_tx.try_send(old);
        }
        pipeline.set_policy_mode_override(decode(self.shared.mode.load(Ordering::Relaxed)));
        self.seen = v;
    }

    /// The current tables (to create the worker's pipeline).
    pub fn current(&self) -> Arc<Tables> {
        Arc::clone(&self.shared.slot.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The version this subscriber runs.
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MaglevCache;
    use nodeplane_state::example;

    fn tables(gen: u64) -> Arc<Tables> {
        let s = example::state().unwrap();
        Arc::new(Tables::build(&s, gen, &mut MaglevCache::default()))
    }

    #[test]
    fn worker_picks_up_tables_and_mode_once() {
        let p = Publisher::new(tables(1));
        let mut sub = p.subscribe();
        let mut pipe = Pipeline::new(sub.current());
        assert!(sub.poll(&mut pipe), "first poll installs");
        assert!(!sub.poll(&mut pipe), "nothing new");
        p.publish(tables(2));
        assert!(sub.poll(&mut pipe));
        assert_eq!(pipe.tables().generation, 2);
        assert!(!sub.poll(&mut pipe));
        p.set_policy_mode(Some(PolicyMode::AllowAll));
        assert!(sub.poll(&mut pipe));
        assert_eq!(pipe.policy_mode_override(), Some(PolicyMode::AllowAll));
        assert_eq!(pipe.tables().generation, 2);
        p.set_policy_mode(None);
        sub.poll(&mut pipe);
        assert_eq!(pipe.policy_mode_override(), None);
    }

    #[test]
    fn old_snapshots_are_freed_by_the_control_thread() {
        let p = Publisher::new(tables(1));
        let mut sub = p.subscribe();
        let mut pipe = Pipeline::new(sub.current());
        sub.poll(&mut pipe);
        let t1 = Arc::downgrade(pipe.tables());
        p.publish(tables(2));
        sub.poll(&mut pipe);
        // The worker switched; generation 1 waits in the retired queue, alive.
        assert!(t1.upgrade().is_some());
        assert_eq!(p.reap(), 1);
        assert!(t1.upgrade().is_none(), "freed by reap");
    }

    #[test]
    fn concurrent_publication_is_seen_in_order() {
        let p = Publisher::new(tables(1));
        let t2 = tables(2);
        let t3 = tables(3);
        let pp = p.clone();
        let mut sub = p.subscribe();
        let h = std::thread::spawn(move || {
            let mut pipe = Pipeline::new(sub.current());
            let mut last = 0;
            while last < 3 {
                sub.poll(&mut pipe);
                let g = pipe.tables().generation;
                assert!(g >= last, "generation went back from {last} to {g}");
                last = g;
            }
        });
        pp.publish(t2);
        pp.publish(t3);
        h.join().unwrap();
    }
}
