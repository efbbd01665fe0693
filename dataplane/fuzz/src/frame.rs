//! Framing for the snapshot target: the fuzzer's input is a snapshot's payload, and the header
//! (magic, version, length) and the trailing checksum are made right around it, so that every
//! mutation reaches the field decoder instead of stopping at the checksum.

use nodeplane_dataplane::snapshot::{fnv1a64, FORMAT_VERSION, MAGIC};

/// `payload` as a whole snapshot file with a valid header and checksum.
pub fn snapshot(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 4 + 8 + payload.len() + 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let sum = fnv1a64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}
