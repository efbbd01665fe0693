//! An exact-match flow cache in front of the conntrack index, for the established fast lane
//! (Open vSwitch's EMC, Katran's per-CPU LRU in spirit): a direct-mapped array of
//! `slot << 1 | direction` values indexed by bits of the key's conntrack hash. A hit is
//! confirmed by comparing the packet's key with the entry's key of that direction
//! ([`Conntrack::holds_v4`]: a live entry whose key in that direction is the packet's is exactly
//! what the index lookup finds, keys being unique there), so a stale or colliding cell is only
//! a miss, never a wrong flow: no invalidation is needed when flows come and go. A miss probes
//! the index and fills the cell.
//!
//! Why: the index probe (hashbrown's group match and an out-of-line key compare) is the
//! largest part of an established packet's lookup; a hit is one load and an inlined compare of
//! a key the packet needs next anyway. Memory: [`CELLS`] × 4 bytes per worker (256 KiB), fixed;
//! 64k cells, because 16k missed ~17 % of 10k flows (bench/RESULTS.md, `## Fast path (issue 11)`).

use crate::conntrack::{Conntrack, Dir, V4Tuple};

/// Cells of the cache (a power of two).
pub const CELLS: usize = 1 << 16;

/// An empty cell (no slot has this value: slots are below `u32::MAX >> 1`).
const EMPTY: u32 = u32::MAX;

#[derive(Debug)]
pub(super) struct FlowCache {
    cells: Box<[u32; CELLS]>,
}

impl Default for FlowCache {
    fn default() -> Self {
        FlowCache {
            cells: Box::new([EMPTY; CELLS]),
        }
    }
}

impl FlowCache {
    /// The cell of a conntrack hash: its high bits (the folded multiply mixes every key bit into
    /// them; the index's own bucket choice uses the low bits).
    #[inline(always)]
    fn cell(hash: u64) -> usize {
        (hash >> (64 - CELLS.trailing_zeros())) as usize & (CELLS - 1)
    }

    /// The live flow of the IPv4 key of `t` (hashed `hash` by [`Conntrack::hash_v4`]), as
    /// [`Conntrack::find_hashed`] finds it, from the cache when it holds it. The confirm
    /// compares `t`'s fields in registers; the key is built in memory only for a miss's probe.
    #[inline(always)]
    pub(super) fn find(&mut self, ct: &Conntrack, t: &V4Tuple, hash: u64) -> Option<(u32, Dir)> {
        let c = Self::cell(hash);
        let v = self.cells[c];
        if v != EMPTY {
            let (slot, dir) = (v >> 1, if v & 1 == 0 { Dir::Orig } else { Dir::Reply });
            if ct.holds_v4(slot, dir, t) {
                return Some((slot, dir));
            }
        }
        let (slot, dir) = ct.find_hashed(&t.key(), hash)?;
        self.cells[c] = slot << 1 | dir as u32;
        Some((slot, dir))
    }
}
