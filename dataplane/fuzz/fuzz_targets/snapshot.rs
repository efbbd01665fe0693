//! `cd dataplane && cargo +nightly fuzz run snapshot`: the conntrack snapshot decoder never
//! panics, and what it accepts encodes back to the same bytes (the format is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeplane_dataplane::snapshot::Snapshot;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::decode(data) {
        assert_eq!(s.encode(), data);
    }
});
