//! Internet checksum arithmetic. Rewrites use RFC 1624 incremental updates
//! (`HC' = ~(~HC + ~m + m')`), so the cost is per changed word, not per packet byte.

/// One's-complement sum of `data` (big-endian 16-bit words, odd byte padded), not folded.
#[inline]
pub fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

/// Folds a 32-bit accumulator into 16 bits (two fixed steps: no loop, no branch).
#[inline]
pub fn fold(acc: u32) -> u16 {
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// Folds a 64-bit accumulator of 32-bit word sums into 16 bits.
#[inline]
pub fn fold64(acc: u64) -> u16 {
    // ≤ 2^33 after the first step, < 2^32 after the second.
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    fold(acc as u32)
}

/// Whether an IPv4 header (`ihl` bytes, a multiple of 4) sums to all ones. Sums 32-bit words
/// into a 64-bit accumulator: one's-complement addition is associative over any word size.
#[inline]
pub fn ipv4_header_ok(h: &[u8]) -> bool {
    let mut acc = 0u64;
    for c in h.chunks_exact(4) {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    fold64(acc) == 0xffff
}

/// [`ipv4_header_ok`] for the usual 20-byte header: five fixed loads, no loop.
#[inline(always)]
pub fn ipv4_header20_ok(h: &[u8; 20]) -> bool {
    let w = |i: usize| u64::from(u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    fold64(w(0) + w(4) + w(8) + w(12) + w(16)) == 0xffff
}

/// The one's-complement difference `Σ(¬old) + Σ(new)` of a run of 4 or 16 address bytes,
/// ready to be added to `¬checksum` (RFC 1624 eq. 3) of every checksum covering them.
#[inline]
pub fn delta(old: &[u8], new: &[u8]) -> u64 {
    let mut acc = 0u64;
    for (o, n) in old.chunks_exact(4).zip(new.chunks_exact(4)) {
        acc += u64::from(!u32::from_be_bytes([o[0], o[1], o[2], o[3]]));
        acc += u64::from(u32::from_be_bytes([n[0], n[1], n[2], n[3]]));
    }
    acc
}

/// The same for one 16-bit word (a port).
#[inline]
pub fn delta16(old: u16, new: u16) -> u64 {
    u64::from(!old) + u64::from(new)
}

/// Applies accumulated deltas to a checksum field value.
#[inline]
pub fn apply(check: u16, delta: u64) -> u16 {
    !fold64(u64::from(!check) + delta)
}

/// The checksum field value for `data` (header with its checksum field zeroed).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// RFC 1624 eq. 3 for one 16-bit word: the new checksum after `old` became `new`.
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let acc = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(acc)
}

/// The same for a run of bytes (addresses: 4 or 16 bytes, even length).
#[inline]
pub fn update_bytes(check: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    let mut acc = u32::from(!check);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        acc += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        acc += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    !fold(acc)
}

#[inline]
pub fn get16(buf: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([buf[off], buf[off + 1]])
}

#[inline]
pub fn put16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_update_equals_full_recompute() {
        // A real IPv4 header (checksum 0xb861 per RFC 1071 examples style).
        let mut hdr: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = checksum(&hdr);
        assert_eq!(c, 0xb861);
        put16(&mut hdr, 10, c);
        assert_eq!(
            fold(sum(&hdr, 0)),
            0xffff,
            "a correct header sums to all ones"
        );

        let old = [hdr[16], hdr[17], hdr[18], hdr[19]];
        let new = [10u8, 96, 0, 10];
        let inc = update_bytes(c, &old, &new);
        hdr[16..20].copy_from_slice(&new);
        put16(&mut hdr, 10, 0);
        assert_eq!(inc, checksum(&hdr));

        // TTL decrement as a 16-bit word update.
        put16(&mut hdr, 10, inc);
        let w_old = get16(&hdr, 8);
        hdr[8] -= 1;
        let inc2 = update16(inc, w_old, get16(&hdr, 8));
        put16(&mut hdr, 10, 0);
        assert_eq!(inc2, checksum(&hdr));
    }

    #[test]
    fn word_deltas_match_16_bit_updates() {
        let old = [10u8, 96, 0, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let new = [10u8, 244, 1, 21, 0xff, 0xfe, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        for len in [4, 16] {
            for check in [0u16, 1, 0x1234, 0xfffe, 0xffff] {
                assert_eq!(
                    apply(check, delta(&old[..len], &new[..len])),
                    update_bytes(check, &old[..len], &new[..len]),
                    "len {len} check {check:#x}"
                );
            }
        }
        assert_eq!(apply(0x4321, delta16(80, 8080)), update16(0x4321, 80, 8080));
    }

    #[test]
    fn odd_length_is_padded() {
        assert_eq!(sum(&[0x01], 0), 0x0100);
        assert_eq!(sum(&[0x01, 0x02, 0x03], 0), 0x0102 + 0x0300);
    }
}
