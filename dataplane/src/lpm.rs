//! Longest-prefix match over IPv4 and IPv6: one exact-match hash map per prefix length present,
//! probed from the longest length down. A lookup costs one hash probe per distinct length in use
//! (typically 3-5: /32 or /128 endpoints, the PodCIDRs, a few CIDR identities), which beats a
//! bit trie's 32-128 dependent loads for the small length sets a node's ipcache has.

use hashbrown::HashMap;

use crate::flow::Addr;

#[derive(Debug, Clone)]
pub struct Lpm<V> {
    v4: Family<V>,
    v6: Family<V>,
}

#[derive(Debug, Clone)]
struct Family<V> {
    /// (length, map of masked address → value), longest first.
    by_len: Vec<(u8, HashMap<Addr, V>)>,
}

impl<V> Default for Family<V> {
    fn default() -> Self {
        Family { by_len: Vec::new() }
    }
}

impl<V> Default for Lpm<V> {
    fn default() -> Self {
        Lpm {
            v4: Family::default(),
            v6: Family::default(),
        }
    }
}

impl<V: Copy> Lpm<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts (or replaces) a prefix. Host bits are cleared.
    pub fn insert(&mut self, addr: Addr, len: u8, value: V) {
        let fam = if addr.v6 { &mut self.v6 } else { &mut self.v4 };
        let pos = match fam.by_len.iter().position(|(l, _)| *l <= len) {
            Some(p) if fam.by_len[p].0 == len => p,
            Some(p) => {
                fam.by_len.insert(p, (len, HashMap::new()));
                p
            }
            None => {
                fam.by_len.push((len, HashMap::new()));
                fam.by_len.len() - 1
            }
        };
        fam.by_len[pos].1.insert(addr.masked(len), value);
    }

    /// The value of the longest prefix covering `addr`, with that prefix's length.
    #[inline]
    pub fn lookup(&self, addr: &Addr) -> Option<(V, u8)> {
        let fam = if addr.v6 { &self.v6 } else { &self.v4 };
        for (len, map) in &fam.by_len {
            if let Some(v) = map.get(&addr.masked(*len)) {
                return Some((*v, *len));
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.v4.by_len.iter().map(|(_, m)| m.len()).sum::<usize>()
            + self.v6.by_len.iter().map(|(_, m)| m.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry as (prefix address, length, value), longest first (for dumps).
    pub fn entries(&self) -> Vec<(Addr, u8, V)> {
        let mut out = Vec::new();
        for fam in [&self.v4, &self.v6] {
            for (len, map) in &fam.by_len {
                let mut part: Vec<_> = map.iter().map(|(a, v)| (*a, *len, *v)).collect();
                part.sort_by_key(|e| e.0);
                out.extend(part);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut t = Lpm::new();
        t.insert(Addr::v4([10, 0, 0, 0]), 8, 1u32);
        t.insert(Addr::v4([10, 244, 1, 0]), 24, 2);
        t.insert(Addr::v4([10, 244, 1, 10]), 32, 3);
        t.insert(Addr::v4([0, 0, 0, 0]), 0, 9);
        assert_eq!(t.lookup(&Addr::v4([10, 244, 1, 10])), Some((3, 32)));
        assert_eq!(t.lookup(&Addr::v4([10, 244, 1, 11])), Some((2, 24)));
        assert_eq!(t.lookup(&Addr::v4([10, 9, 9, 9])), Some((1, 8)));
        assert_eq!(t.lookup(&Addr::v4([11, 0, 0, 1])), Some((9, 0)));
        // The families never mix.
        assert_eq!(t.lookup(&Addr::v6([0; 16])), None);
        assert_eq!(t.len(), 4);
    }
}
