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

/// Folds a 32-bit accumulator into 16 bits: `acc + acc.rotate_left(16)` adds the two halves in
/// its upper half, the carry out of the lower half included (the end-around carry), so the
/// upper half is the one's-complement sum of the halves (0 only for 0). Four instructions, no
/// branch.
#[inline]
pub fn fold(acc: u32) -> u16 {
    (acc.wrapping_add(acc.rotate_left(16)) >> 16) as u16
}

/// Folds a 64-bit accumulator of 32-bit word sums into 16 bits: the two 32-bit halves added
/// with the carry added back in (2³² ≡ 1 mod 0xffff; the sum with its carry cannot carry
/// again), then [`fold`].
#[inline]
pub fn fold64(acc: u64) -> u16 {
    let (s, c) = (acc as u32).overflowing_add((acc >> 32) as u32);
    fold(s + u32::from(c))
}

/// `a + b` with the carry out of bit 63 added back in (one's-complement addition of 64-bit
/// words: `add` + `adc 0` on x86-64).
#[inline(always)]
fn add_carry(a: u64, b: u64) -> u64 {
    let (s, c) = a.overflowing_add(b);
    s + u64::from(c)
}

/// The one's-complement sum of `data` as big-endian 16-bit words (an odd last byte padded with
/// zero), folded to 16 bits: what [`sum`] then [`fold`] give, for whole segments (the L4 bytes
/// of a frame whose partial checksum is completed).
///
/// Cost: 8-byte native-endian loads into four independent 64-bit one's-complement accumulators
/// (`add` + `adc` per word, four chains for the out-of-order core), 32 bytes per iteration; the
/// sum is byte-order independent (RFC 1071 §2(B)), so the native-endian sum is swapped to
/// network order once at the end. ~0.45 instructions per byte (bench/RESULTS.md, `## Partial
/// checksums`).
#[inline]
pub fn sum_folded(data: &[u8]) -> u16 {
    let word = |c: &[u8]| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    let (mut a, mut b, mut c, mut d) = (0u64, 0u64, 0u64, 0u64);
    let mut blocks = data.chunks_exact(32);
    for k in &mut blocks {
        a = add_carry(a, word(&k[0..8]));
        b = add_carry(b, word(&k[8..16]));
        c = add_carry(c, word(&k[16..24]));
        d = add_carry(d, word(&k[24..32]));
    }
    let mut words = blocks.remainder().chunks_exact(8);
    for k in &mut words {
        a = add_carry(a, word(k));
    }
    // The last 0-7 bytes, zero-padded in place: byte positions (and so their parity within
    // the 16-bit words) stay what they were in `data`.
    let rest = words.remainder();
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    b = add_carry(b, u64::from_ne_bytes(tail));
    u16::from_be(fold64(add_carry(add_carry(a, b), add_carry(c, d))))
}

/// The TCP/UDP pseudo-header sum (RFC 9293 §3.1, RFC 8200 §8.1), not folded: source and
/// destination address (4 or 16 bytes each, `Addr`'s zero padding adds nothing), protocol and
/// upper-layer length.
#[inline(always)]
pub fn pseudo_header(src: &[u8; 16], dst: &[u8; 16], v6: bool, proto: u8, len: usize) -> u64 {
    let w = |a: &[u8; 16], i: usize| {
        u64::from(u32::from_be_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]))
    };
    let mut acc = u64::from(proto) + len as u64 + w(src, 0) + w(dst, 0);
    if v6 {
        acc += w(src, 4) + w(src, 8) + w(src, 12) + w(dst, 4) + w(dst, 8) + w(dst, 12);
    }
    acc
}

/// Whether a checksum field holds the one's-complement value of the unfolded `sum`
/// (`fold64(sum)`, or the other representation of zero). A divisibility test by 0xffff, which
/// the compiler turns into one multiply and one compare: no fold on the hot path.
#[inline(always)]
pub fn congruent(sum: u64, field: u16) -> bool {
    // !field = 0xffff - field: the sum minus the field, kept non-negative.
    (sum + u64::from(!field)) % 0xffff == 0
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

/// [`ipv4_header_ok`] for the usual 20-byte header: three native-endian loads, two adds with
/// carry and one divisibility test (~10 instructions, no fold, no byte swap). A header is right
/// when its one's-complement sum is all ones, i.e. the plain sum of its 16-bit words is a
/// non-zero multiple of 0xffff (2¹⁶ ≡ 1 mod 0xffff, so wider words and a carry added back in
/// keep that residue); the byte order only multiplies the residue by 256, which is invertible
/// mod 0xffff (RFC 1071 §2(B)), so native-endian words test the same.
#[inline(always)]
pub fn ipv4_header20_ok(h: &[u8; crate::wire::ipv4::MIN_HEADER_LEN]) -> bool {
    let (a, rest) = h.split_first_chunk::<8>().expect("20 > 8");
    let (b, c) = rest.split_first_chunk::<8>().expect("12 > 8");
    let c: &[u8; 4] = c.try_into().expect("4 bytes left");
    let s = add_carry(
        add_carry(u64::from_ne_bytes(*a), u64::from_ne_bytes(*b)),
        u64::from(u32::from_ne_bytes(*c)),
    );
    s % 0xffff == 0 && s != 0
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
    use crate::wire::ipv4;

    /// The reference folds: repeated end-around carry until the value fits.
    fn fold_ref(mut acc: u64) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn folds_equal_the_repeated_end_around_carry() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut values = vec![
            0u64,
            1,
            0xffff,
            0x1_0000,
            0x1_fffe,
            0xffff_ffff,
            0x1_0000_0000,
        ];
        values.extend([
            u64::MAX,
            u64::MAX - 1,
            0xffff_ffff_0000_0000,
            0x0000_ffff_ffff_0000,
        ]);
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x);
            values.push(x >> 28); // sums of a few words, the usual range
        }
        for v in values {
            assert_eq!(fold64(v), fold_ref(v), "{v:#x}");
            assert_eq!(fold(v as u32), fold_ref(u64::from(v as u32)), "{v:#x}");
        }
    }

    #[test]
    fn header20_check_equals_the_folded_sum() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut h = [0u8; 20];
        for round in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for (i, b) in h.iter_mut().enumerate() {
                *b = (x >> ((i * 3) % 57)) as u8;
            }
            if round % 2 == 0 {
                // Half of them made right: the checksum field set from the rest.
                put16(&mut h, ipv4::CHECKSUM.start, 0);
                let c = checksum(&h);
                put16(&mut h, ipv4::CHECKSUM.start, c);
            }
            assert_eq!(ipv4_header20_ok(&h), ipv4_header_ok(&h), "{h:02x?}");
        }
        assert!(
            !ipv4_header20_ok(&[0; 20]),
            "all zero sums to zero, not all ones"
        );
        assert!(ipv4_header20_ok(&[0xff; 20]));
    }

    #[test]
    fn incremental_update_equals_full_recompute() {
        // A real IPv4 header (checksum 0xb861 per RFC 1071 examples style).
        let mut hdr: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = checksum(&hdr);
        assert_eq!(c, 0xb861);
        let check = ipv4::CHECKSUM.start;
        put16(&mut hdr, check, c);
        assert_eq!(
            fold(sum(&hdr, 0)),
            0xffff,
            "a correct header sums to all ones"
        );

        let old: [u8; 4] = hdr[ipv4::DST_ADDR].try_into().unwrap();
        let new = [10u8, 96, 0, 10];
        let inc = update_bytes(c, &old, &new);
        hdr[ipv4::DST_ADDR].copy_from_slice(&new);
        put16(&mut hdr, check, 0);
        assert_eq!(inc, checksum(&hdr));

        // TTL decrement as a 16-bit word update.
        put16(&mut hdr, check, inc);
        let w_old = get16(&hdr, ipv4::TTL_PROTOCOL.start);
        hdr[ipv4::TTL] -= 1;
        let inc2 = update16(inc, w_old, get16(&hdr, ipv4::TTL_PROTOCOL.start));
        put16(&mut hdr, check, 0);
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
    fn folded_sum_matches_the_plain_sum() {
        let data: Vec<u8> = (0..2100u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..9 {
            for len in (0..300).chain([1459, 1460, 1461, 1480, 2048]) {
                let d = &data[start..start + len];
                assert_eq!(sum_folded(d), fold(sum(d, 0)), "start {start} len {len}");
            }
        }
        // Carries out of every accumulator.
        let ones = [0xffu8; 1500];
        for len in [0, 1, 2, 31, 32, 33, 1500] {
            assert_eq!(
                sum_folded(&ones[..len]),
                fold(sum(&ones[..len], 0)),
                "len {len}"
            );
        }
    }

    #[test]
    fn pseudo_header_sum_matches_the_plain_sum() {
        let a = [
            0xfd, 0, 2, 0x44, 0, 1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0x21,
        ];
        let b = [0xff; 16];
        let mut v4a = [0u8; 16];
        v4a[..4].copy_from_slice(&[10, 244, 255, 255]);
        for (src, dst, v6) in [(a, b, true), (v4a, b, false)] {
            let n = if v6 { 16 } else { 4 };
            let mut dst_n = [0u8; 16];
            dst_n[..n].copy_from_slice(&dst[..n]);
            let plain = sum(&src[..n], sum(&dst[..n], 0)) + 6 + 1480;
            assert_eq!(
                fold64(pseudo_header(&src, &dst_n, v6, 6, 1480)),
                fold(plain),
                "v6 {v6}"
            );
        }
    }

    #[test]
    fn congruent_is_fold_equality_up_to_the_two_zeros() {
        for sum in [
            6u64,
            0xfffe,
            0xffff,
            0x1_0000,
            0x1_fffe,
            0x3_ffff_fffc,
            0xabcd_1234,
        ] {
            let f = fold64(sum);
            assert!(congruent(sum, f), "{sum:#x}");
            assert!(
                !congruent(sum, f.wrapping_add(1)) || f == 0xffff,
                "{sum:#x}"
            );
            assert!(!congruent(sum, f ^ 0x0100), "{sum:#x}");
            assert_eq!(congruent(sum, 0), f == 0xffff, "{sum:#x}");
            assert_eq!(congruent(sum, 0xffff), f == 0xffff, "{sum:#x}");
        }
    }

    #[test]
    fn odd_length_is_padded() {
        assert_eq!(sum(&[0x01], 0), 0x0100);
        assert_eq!(sum(&[0x01, 0x02, 0x03], 0), 0x0102 + 0x0300);
    }
}
