//! An exact-match flow cache in front of the conntrack index, for the established fast lane
//! (Open vSwitch's EMC, Katran's per-CPU LRU in spirit): a direct-mapped array of
//! `slot << 1 | direction` values indexed by bits of a hash of the key of its own (one seeded
//! folded multiply of the key's two words: the conntrack hash takes three, and only a miss's
//! index probe needs that one). A hit is
//! confirmed by comparing the packet's key with the entry's key of that direction
//! ([`Conntrack::holds_v4`]: a live entry whose key in that direction is the packet's is exactly
//! what the index lookup finds, keys being unique there), so a stale or colliding cell is only
//! a miss, never a wrong flow: no invalidation is needed when flows come and go. A miss probes
//! the index and fills the cell.
//!
//! Why: the index probe (hashbrown's group match and an out-of-line key compare) and the
//! conntrack hash are the largest part of an established packet's lookup; a hit is one
//! multiply, one load and an inlined compare of a key the packet needs next anyway. Colliding
//! keys (the seed is per process, so they cannot be aimed at a cell) cost a miss each: the
//! probe an uncached packet pays. Memory: [`CELLS`] × 4 bytes per worker (256 KiB), fixed;
//! 64k cells, because 16k missed ~17 % of 10k flows (bench/RESULTS.md, `## Fast path (issue 11)`).

use crate::conntrack::{Conntrack, Dir, V4Tuple};

/// Cells of the cache (a power of two).
pub const CELLS: usize = 1 << 16;

/// An empty cell (no slot has this value: slots are below `u32::MAX >> 1`, so an empty cell
/// fails the confirm's bounds check).
const EMPTY: u32 = u32::MAX;

#[derive(Debug)]
pub(super) struct FlowCache {
    cells: Box<[u32; CELLS]>,
    /// Per-process random words of the cell hash (odd: `fold_mul` never sees a zero factor
    /// but for a key equal to a seed).
    seed: [u64; 2],
}

impl Default for FlowCache {
    fn default() -> Self {
        use std::hash::BuildHasher;
        let rs = std::collections::hash_map::RandomState::new();
        FlowCache {
            cells: Box::new([EMPTY; CELLS]),
            seed: [rs.hash_one(0u64) | 1, rs.hash_one(1u64) | 1],
        }
    }
}

impl FlowCache {
    /// The cell of an IPv4 key: the high bits of one folded multiply of its two words (the
    /// addresses; the ports and protocol), each with a seed word mixed in.
    #[inline(always)]
    fn cell(&self, t: &V4Tuple) -> usize {
        let (a, b) = t.words();
        let p = u128::from(a ^ self.seed[0]) * u128::from(b ^ self.seed[1]);
        let h = (p as u64) ^ (p >> 64) as u64;
        (h >> (64 - CELLS.trailing_zeros())) as usize & (CELLS - 1)
    }

    /// The live flow of the IPv4 key of `t`, as [`Conntrack::find_hashed`] finds it, from the
    /// cache when it holds it. The confirm compares `t`'s fields in registers; a miss hashes
    /// the key for the index ([`Conntrack::hash_v4`]) and builds it in memory for the probe.
    #[inline(always)]
    pub(super) fn find(&mut self, ct: &Conntrack, t: &V4Tuple) -> Option<(u32, Dir)> {
        let c = self.cell(t);
        let v = self.cells[c];
        // An empty cell names slot `u32::MAX >> 1`, which no table has: no hit.
        let (slot, dir) = (v >> 1, if v & 1 == 0 { Dir::Orig } else { Dir::Reply });
        if ct.holds_v4(slot, dir, t) {
            return Some((slot, dir));
        }
        let key = t.key();
        let hash = ct.hash_v4(t);
        debug_assert_eq!(hash, ct.hash(&key));
        let (slot, dir) = ct.find_hashed(&key, hash)?;
        self.cells[c] = slot << 1 | dir as u32;
        Some((slot, dir))
    }
}
