//! `cd dataplane && cargo +nightly fuzz run pipeline`: arbitrary frames on every interface of
//! the example node never panic the pipeline, and every packet is accounted for.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use nodeplane_dataplane::{MaglevCache, Pipeline, Tables};

fn pipeline() -> &'static Mutex<Pipeline> {
    static P: OnceLock<Mutex<Pipeline>> = OnceLock::new();
    P.get_or_init(|| {
        let s = nodeplane_state::example::state().expect("example state");
        let t = Tables::build(&s, 1, &mut MaglevCache::default());
        Mutex::new(Pipeline::new(Arc::new(t)))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&iface, frame)) = data.split_first() else {
        return;
    };
    let mut p = pipeline().lock().expect("lock");
    let mut f = frame.to_vec();
    let _ = p.process_one(&mut f, u16::from(iface % 5), 1);
    p.drain(2, |_| {});
    let c = p.counters();
    assert_eq!(c.packets, c.forwarded + c.passed + c.dropped + c.held);
});
