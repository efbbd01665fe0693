//! `cd dataplane && cargo +nightly fuzz run snapshot`: the conntrack snapshot decoder never
//! panics, and what it accepts encodes back to the same bytes (the format is canonical).
//!
//! Each input is decoded twice: as a whole file (the magic, version, length and checksum
//! checks), and as a payload framed with a valid header and checksum, so that mutations reach
//! the field decoder (a mutated file almost never carries a matching checksum).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeplane_dataplane::snapshot::Snapshot;
use nodeplane_dataplane_fuzz::frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::decode(data) {
        assert_eq!(s.encode(), data);
    }
    let file = frame::snapshot(data);
    if let Ok(s) = Snapshot::decode(&file) {
        assert_eq!(s.encode(), file, "a framed payload decoded but re-encodes differently");
    }
});
