//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4) with weights.
//!
//! Each backend walks its own permutation of the M slots (offset, skip from two hashes of its
//! `ip:port`); backends take turns claiming their next free slot until the table is full. Weights:
//! in round `r`, backend `i` takes `floor((r+1)·wᵢ/w_max) − floor(r·wᵢ/w_max)` turns, so over the
//! whole fill its share of slots is proportional to its weight. Removing a backend moves only the
//! flows that hashed to it (plus a small fraction), which is why established-flow-free failover
//! works across nodes: every node computes the same table from the same backend set.
//!
//! Cost: building makes ~M·ln M probes (no divisions in the loop). Lookup is one multiply and
//! one load ([`slot`]).

use crate::flow::stable_hash_bytes;

/// The slot of a table of `len` slots that a flow hash picks: the high half of `h · len`
/// (Lemire's multiply-shift range reduction: one multiply where `h % len` was a 64-bit
/// division of ~40 cycles, on every new flow). Uniform like the modulo for a well-mixed `h`
/// (`FlowKey::stable_hash` is a splitmix64 finaliser). Every node must pick alike, so this is
/// part of the selection's definition: changing it moves flows between backends.
#[inline]
pub fn slot(h: u64, len: usize) -> usize {
    ((u128::from(h) * len as u128) >> 64) as usize
}

/// Builds the table: each slot holds an index into `backends`. `backends` are (name, weight);
/// weight-0 backends get no slots. Returns an empty table when no backend has weight.
pub fn build(backends: &[(&[u8], u16)], m: u32) -> Vec<u16> {
    let m = m as usize;
    let w_max = backends.iter().map(|b| b.1).max().unwrap_or(0);
    if w_max == 0 || m == 0 {
        return Vec::new();
    }
    let perms: Vec<(usize, usize)> = backends
        .iter()
        .map(|(name, _)| {
            let offset = (stable_hash_bytes(name, 0x6d61_676c) % m as u64) as usize;
            let skip = (stable_hash_bytes(name, 0x6576_3031) % (m as u64 - 1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    // Each backend's current position in its permutation, advanced by `skip` modulo M with a
    // compare-and-subtract (no division: the fill makes ~M·ln M probes).
    let mut pos: Vec<usize> = perms.iter().map(|(offset, _)| *offset).collect();
    let mut table = vec![u16::MAX; m];
    let mut filled = 0usize;
    let mut round: u64 = 0;
    while filled < m {
        for (i, (_, w)) in backends.iter().enumerate() {
            let w = u64::from(*w);
            let turns = ((round + 1) * w / u64::from(w_max)) - (round * w / u64::from(w_max));
            let skip = perms[i].1;
            for _ in 0..turns {
                // Walk this backend's permutation to its next unclaimed slot.
                let mut c = pos[i];
                while table[c] != u16::MAX {
                    c += skip;
                    if c >= m {
                        c -= m;
                    }
                }
                table[c] = i as u16;
                c += skip;
                if c >= m {
                    c -= m;
                }
                pos[i] = c;
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
        round += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    #[test]
    fn slot_is_in_range_and_spreads_like_a_modulo() {
        assert_eq!(slot(0, 16381), 0);
        assert_eq!(slot(u64::MAX, 16381), 16380);
        assert_eq!(slot(u64::MAX, 1), 0);
        // Hashes spread over the whole range land evenly on 7 slots.
        let mut counts = [0usize; 7];
        let mut h = 1u64;
        for _ in 0..70_000 {
            h = crate::flow::mix(h);
            counts[slot(h, 7)] += 1;
        }
        for c in counts {
            assert!((9_500..=10_500).contains(&c), "uneven: {counts:?}");
        }
    }

    #[test]
    fn equal_weights_spread_evenly() {
        let n = names(5);
        let b: Vec<(&[u8], u16)> = n.iter().map(|s| (s.as_bytes(), 1)).collect();
        let t = build(&b, 16381);
        assert_eq!(t.len(), 16381);
        let mut counts = [0usize; 5];
        for s in &t {
            counts[*s as usize] += 1;
        }
        for c in counts {
            assert!((3200..=3350).contains(&c), "uneven: {counts:?}");
        }
    }

    #[test]
    fn weights_are_honoured() {
        let n = names(2);
        let b: Vec<(&[u8], u16)> = vec![(n[0].as_bytes(), 1), (n[1].as_bytes(), 3)];
        let t = build(&b, 16381);
        let heavy = t.iter().filter(|s| **s == 1).count() as f64 / t.len() as f64;
        assert!((0.72..0.78).contains(&heavy), "share {heavy}");
    }

    #[test]
    fn removing_one_backend_moves_little_else() {
        let n = names(10);
        let all: Vec<(&[u8], u16)> = n.iter().map(|s| (s.as_bytes(), 1)).collect();
        let t1 = build(&all, 16381);
        let t2 = build(&all[..9], 16381);
        let moved = t1
            .iter()
            .zip(&t2)
            .filter(|(a, b)| **a != 9 && a != b)
            .count();
        // Only slots of the removed backend must move; Maglev allows a few percent more.
        assert!(moved < 16381 / 20, "moved {moved}");
    }
}
