//! The conntrack index: an open-addressing hash table of 4-byte buckets, sized once for a full
//! table (no power-of-two rounding, no growth), with a tag of the key's hash in each bucket.
//!
//! A bucket is `0` (empty) or `tag << VALUE_BITS | value`, where `value` is the caller's
//! `slot << 1 | direction` (at most [`VALUE_BITS`] bits: 16 Mi slots, the largest table the
//! state accepts) and `tag` 7 bits of the key's hash (never 0). A probe compares the tag first
//! and asks the caller to compare the key only when it matches, so a probe past other keys
//! reads no entry (1 in 127 of them on average). Linear probing from a home bucket chosen by a
//! multiply-shift of the hash (any table size, no `%`); removal shifts the rest of the run back
//! (no tombstones, so probes do not lengthen as flows come and go).
//!
//! Sizing: `keys / LOAD` buckets for the table's maximum number of keys (two per flow):
//! 4 / 0.75 = 5.3 bytes per key. Expected buckets read at 0.75 load with linear probing: ~2.5
//! for a key present, ~8.5 for one absent, 16 buckets per cache line. The buckets are
//! allocated zeroed (`calloc`: fresh pages, not written), so a worker's start does not touch
//! the index of a table it has not filled.

/// Bits of a bucket holding the caller's value.
pub const VALUE_BITS: u32 = 25;
const VALUE_MASK: u32 = (1 << VALUE_BITS) - 1;
/// Largest value the index can hold.
pub const MAX_VALUE: u32 = VALUE_MASK;
/// Keys per bucket at most, when every key the index was sized for is in it.
const LOAD_NUM: usize = 3;
const LOAD_DEN: usize = 4;

#[derive(Debug)]
pub struct CtIndex {
    buckets: Vec<u32>,
}

/// The bucket tag of a hash: 7 of its low bits, never 0 (0 marks an empty bucket).
#[inline(always)]
fn tag_of(hash: u64) -> u32 {
    let t = (hash as u32) & 0x7f;
    (t + u32::from(t == 0)) << VALUE_BITS
}

impl CtIndex {
    /// An index with room for `keys` keys at the load factor (at least one empty bucket always
    /// remains, which ends every probe).
    pub fn with_keys(keys: usize) -> CtIndex {
        let n = (keys * LOAD_DEN).div_ceil(LOAD_NUM).max(keys + 1).max(8);
        CtIndex {
            // Zeroed allocation: the allocator hands out untouched pages for large tables.
            buckets: vec![0; n],
        }
    }

    /// Buckets (memory is 4 bytes each).
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// The home bucket of a hash: the high half of `hash × n` (uniform over any `n`).
    #[inline(always)]
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.buckets.len() as u128) >> 64) as usize
    }

    /// The home bucket of `hash` (any value): a read that brings its line into the cache before
    /// a probe or an insert of that hash.
    #[inline(always)]
    pub fn warm(&self, hash: u64) -> u32 {
        self.buckets.get(self.home(hash)).copied().unwrap_or(0)
    }

    /// The value of the key with this hash for which `is_key(value)` holds, if any. `is_key`
    /// is asked only about values whose tag matches.
    #[inline(always)]
    pub fn find(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = tag_of(hash);
        let home = self.home(hash);
        // From the home bucket to the end, then (rarely) around from the start: two plain
        // slice walks, no per-bucket bounds check or wrap test.
        let (before, from) = self.buckets.split_at(home.min(self.buckets.len()));
        for &b in from.iter().chain(before) {
            if b == 0 {
                return None;
            }
            if b & !VALUE_MASK == tag && is_key(b & VALUE_MASK) {
                return Some(b & VALUE_MASK);
            }
        }
        None
    }

    /// Adds `value` under `hash`. The caller guarantees the key is absent and that the index
    /// holds fewer keys than it was sized for.
    #[inline]
    pub fn insert(&mut self, hash: u64, value: u32) {
        debug_assert!(value <= MAX_VALUE);
        let n = self.buckets.len();
        let mut i = self.home(hash);
        while self.buckets[i] != 0 {
            i += 1;
            if i == n {
                i = 0;
            }
        }
        self.buckets[i] = tag_of(hash) | value;
    }

    /// Removes `value`, stored under `hash`; a value not there is ignored. The run after it is
    /// shifted back: `hash_of(v)` must give the hash each other value was inserted with.
    pub fn remove(&mut self, hash: u64, value: u32, mut hash_of: impl FnMut(u32) -> u64) {
        let n = self.buckets.len();
        let mut i = self.home(hash);
        loop {
            let b = self.buckets[i];
            if b == 0 {
                return;
            }
            if b & VALUE_MASK == value {
                break;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        // Backward shift: a later value of the run moves into the hole unless its home lies
        // cyclically in (hole, j] (then it would sit before its home).
        let mut hole = i;
        let mut j = i;
        loop {
            j += 1;
            if j == n {
                j = 0;
            }
            let b = self.buckets[j];
            if b == 0 {
                break;
            }
            let h = self.home(hash_of(b & VALUE_MASK));
            let stays = if hole <= j {
                hole < h && h <= j
            } else {
                hole < h || h <= j
            };
            if !stays {
                self.buckets[hole] = b;
                hole = j;
            }
        }
        self.buckets[hole] = 0;
    }

    /// Every value held (for checks; not for the hot path).
    pub fn values(&self) -> impl Iterator<Item = u32> + '_ {
        self.buckets
            .iter()
            .filter(|&&b| b != 0)
            .map(|&b| b & VALUE_MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model check: random inserts and removes against a plain list, with a deliberately bad
    /// hash (few distinct homes, so runs are long and wrap around), and every value is found by
    /// its own hash and only by it.
    #[test]
    fn inserts_and_removes_match_a_model() {
        const KEYS: usize = 200;
        let hash = |v: u32| -> u64 {
            // 16 distinct hashes: long runs, equal tags.
            crate::flow::mix(u64::from(v % 16))
        };
        let mut ix = CtIndex::with_keys(KEYS);
        let mut live: Vec<u32> = Vec::new();
        let mut rng = 0x1234_5678_9abc_def0u64;
        for step in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let v = (rng % 1000) as u32;
            let present = live.contains(&v);
            if present {
                ix.remove(hash(v), v, hash);
                live.retain(|&x| x != v);
            } else if live.len() < KEYS {
                ix.insert(hash(v), v);
                live.push(v);
            }
            if step % 97 == 0 {
                for &x in &live {
                    assert_eq!(ix.find(hash(x), |y| y == x), Some(x), "step {step}");
                }
                let mut held: Vec<u32> = ix.values().collect();
                held.sort_unstable();
                let mut want = live.clone();
                want.sort_unstable();
                assert_eq!(held, want, "step {step}");
            }
        }
        // Absent values are not found, even with colliding hashes.
        assert_eq!(ix.find(hash(5000), |y| y == 5000), None);
    }

    #[test]
    fn sized_without_power_of_two_rounding() {
        let ix = CtIndex::with_keys(2_000_000);
        assert_eq!(ix.buckets(), 2_666_667);
        assert!(CtIndex::with_keys(1).buckets() >= 2);
    }

    #[test]
    fn tags_are_never_zero() {
        for h in 0..1000u64 {
            assert_ne!(tag_of(h << 7), 0);
            assert_ne!(tag_of(h), 0);
        }
    }
}
