//! `cd dataplane && cargo +nightly fuzz run pipeline fuzz/corpus/pipeline fuzz/seeds/pipeline`:
//! a fresh worker per input runs frames through the daemon's own loop (`Worker::turn`) on a
//! state that matches the seeds (the golden cases' states, `gen_pipeline.py`), with a clock
//! that advances per frame (microseconds to hours: timeouts, GC, fragment expiry), a second
//! state published between bursts (with a policy-mode override), optional RST answers and
//! flow events; every frame leaving the worker is checked (`fuzz/src/io.rs`) and every frame
//! is decided exactly once. Nothing lives across inputs, so a crash reproduces from its input
//! alone (the conntrack's per-process hash seed decides only where keys sit in its index,
//! never an outcome).
#![no_main]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam::channel::bounded;
use libfuzzer_sys::fuzz_target;
use nodeplane_dataplane::events::EventTap;
use nodeplane_dataplane::publish::Publisher;
use nodeplane_dataplane::worker::{Clock, PacketIo, RemovedFlowAction, Worker};
use nodeplane_dataplane::{MaglevCache, Tables};
use nodeplane_dataplane_fuzz::input;
use nodeplane_dataplane_fuzz::io::FuzzIo;
use nodeplane_dataplane_fuzz::states::STATES;
use nodeplane_state::{PolicyMode, State};

/// Conntrack slots, held fragments and fragment ids per worker here at most (the states ask
/// for up to 256k, 256 and 8k): a fresh worker per input must stay cheap (a held fragment's
/// buffer alone is 9 KiB), and small tables fill, which are paths worth fuzzing too.
const CT_ENTRIES: u32 = 1024;
const HELD_FRAGMENTS: u32 = 16;
const FRAGMENT_IDS: u32 = 64;

/// Each state's tables as the first (generation 1) and the published (generation 2) state.
fn tables(i: usize) -> &'static (Arc<Tables>, Arc<Tables>) {
    static T: OnceLock<Vec<OnceLock<(Arc<Tables>, Arc<Tables>)>>> = OnceLock::new();
    let all = T.get_or_init(|| STATES.iter().map(|_| OnceLock::new()).collect());
    all[i].get_or_init(|| {
        let (name, yaml) = STATES[i];
        let mut s: State = if i == 0 {
            nodeplane_state::example::state().expect("the example state loads")
        } else {
            nodeplane_state::load_sources([(name, yaml)]).expect("a golden state loads")
        };
        let ct = &mut s.conntrack;
        ct.max_entries = ct.max_entries.min(CT_ENTRIES);
        ct.max_held_fragments = ct.max_held_fragments.min(HELD_FRAGMENTS);
        ct.max_fragment_ids = ct.max_fragment_ids.min(FRAGMENT_IDS);
        let mut cache = MaglevCache::default();
        (
            Arc::new(Tables::build(&s, 1, &mut cache)),
            Arc::new(Tables::build(&s, 2, &mut cache)),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = input::decode(data) else {
        return;
    };
    let a = &tables(usize::from(input.state_a) % STATES.len()).0;
    let b = &tables(usize::from(input.state_b) % STATES.len()).1;
    let publisher = Publisher::new(Arc::clone(a));
    // Nobody sends requests: a closed channel (the worker's idle wait returns at once).
    let (_, requests) = bounded(1);
    let removed = if input.rst {
        RemovedFlowAction::Rst
    } else {
        RemovedFlowAction::Drop
    };
    let io = FuzzIo::new(&input);
    let mut worker = Worker::new(
        0,
        publisher.subscribe(),
        io,
        requests,
        Arc::new(AtomicBool::new(false)),
        Clock::new(),
        removed,
    );
    let mut events = None;
    if input.observed {
        let (tap, observers, queue) = EventTap::standalone(256);
        observers.store(1, Ordering::Relaxed);
        worker = worker.with_events(tap);
        events = Some(queue);
    }
    let publish_at = input.publish_before.min(worker.io().frames());
    let mut published = false;
    loop {
        if !published && worker.io().pos() >= publish_at {
            publisher.set_policy_mode(match input.mode_override {
                1 => Some(PolicyMode::Enforce),
                2 => Some(PolicyMode::Audit),
                3 => Some(PolicyMode::AllowAll),
                _ => None,
            });
            publisher.publish(Arc::clone(b));
            published = true;
        }
        let n = worker.turn();
        if let Some(q) = &events {
            while q.pop().is_some() {}
        }
        if n == 0 && worker.io().finished() {
            break;
        }
    }
    let s = worker.stats();
    assert_eq!(s.worker_panics, 0);
    assert_eq!(worker.io().undecided(), 0, "frames never decided");
    let frames = worker.io().frames() as u64;
    assert_eq!(s.packets, frames, "frames in vs. counted");
    assert_eq!(s.held, 0, "fragments still held after the final drain");
    assert_eq!(s.packets, s.forwarded + s.passed + s.dropped);
    // The RST rewrite turns a counted drop into a transmit after the pipeline counted it.
    assert_eq!(worker.io().forwarded, s.forwarded + s.rst_sent);
});
