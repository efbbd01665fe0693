//! `cargo +nightly fuzz run decode` (from bgp/): any bytes into framing and decoding, with and
//! without 4-octet ASNs; whatever decodes must encode again without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeplane_bgp::packet::{frame_len, Context, Message};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(len)) = frame_len(rest) {
        for four_octet_as in [true, false] {
            let ctx = Context { four_octet_as };
            if let Ok(m) = Message::decode(&rest[..len], &ctx) {
                let _ = m.to_bytes(&ctx);
            }
        }
        rest = &rest[len..];
    }
    let _ = Message::decode(data, &Context::default());
});
