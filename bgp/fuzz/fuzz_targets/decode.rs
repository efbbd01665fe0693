//! `cd bgp && cargo +nightly fuzz run decode`: any bytes into framing and decoding, with and
//! without 4-octet ASNs. What decodes encodes and decodes back equal, and netgauze, where it
//! accepts the same bytes, reads the same facts (`fuzz/src/lib.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeplane_bgp::packet::{frame_len, Context, Message};
use nodeplane_bgp_fuzz::round_trip;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(len)) = frame_len(rest) {
        for four_octet_as in [true, false] {
            round_trip(&rest[..len], &Context { four_octet_as });
        }
        rest = &rest[len..];
    }
    let _ = Message::decode(data, &Context::default());
});
