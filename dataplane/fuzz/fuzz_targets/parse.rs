//! `cd dataplane && cargo +nightly fuzz run parse`: the frame parser never panics, and what it
//! accepts stays inside the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeplane_dataplane::parse::{parse, Parsed};

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Ip(m)) = parse(data) {
        assert!(usize::from(m.ip_end) <= data.len());
        assert!(usize::from(m.l4_off) <= usize::from(m.ip_end));
    }
});
