//! Multi-buffer RX: which received descriptors form a packet (pure logic, no rings).
//!
//! With `XDP_USE_SG` a packet longer than a UMEM frame arrives as a chain of descriptors in
//! ring order, each but the last with `XDP_PKT_CONTD` in `options`. [`ChainRx`] is fed the
//! descriptors one by one ([`ChainRx::buffer`]) and says when a packet is complete, or when a
//! chain must be dropped:
//! - a chain of more than [`MAX_CHAIN`] buffers (copy-mode TX could never send it);
//! - a chain one of whose buffers was bad (not lent to this ring, or beyond the UMEM);
//! - a chain without its last buffer at the end of a burst ([`ChainRx::end_of_burst`]): it is
//!   dropped, and the buffers that still belong to it, at the start of the next burst, are
//!   dropped too (`skipping`), up to and including its last buffer. Such a chain is counted
//!   once, when it is cut.
//!
//! Without multi-buffer every descriptor is a packet of one buffer and nothing is dropped here.

use super::xsk::MAX_CHAIN;

/// What one more buffer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The packet goes on in the next buffer.
    More,
    /// A packet is complete: its last `descs` kept buffers (at least 1).
    Packet(usize),
    /// A chain ended and is dropped: its last `descs` kept buffers (maybe 0), `counted` if it
    /// is a new loss (not the tail of a chain counted before, not a lone bad descriptor, which
    /// is an accounting error of its own).
    Drop {
        /// Kept buffers of the chain, to give back.
        descs: usize,
        /// Count it as a dropped chain.
        counted: bool,
    },
}

/// The assembly state of one socket's RX ring across bursts. See the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainRx {
    /// Buffers kept of the packet being assembled.
    descs: usize,
    /// A buffer of it was bad.
    broken: bool,
    /// A chain has begun and not ended.
    open: bool,
    /// The open chain is the tail of one dropped at the end of an earlier burst.
    skipping: bool,
}

impl ChainRx {
    /// Whether the ring's next buffers belong to a chain dropped earlier.
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// One more buffer in ring order: `kept` if it is a good buffer now held (the caller
    /// appended it to its kept buffers), `last` if `XDP_PKT_CONTD` is clear.
    #[inline]
    pub fn buffer(&mut self, kept: bool, last: bool) -> Verdict {
        if kept {
            self.descs += 1;
        } else {
            self.broken = true;
        }
        if !last {
            self.open = true;
            return Verdict::More;
        }
        let descs = std::mem::take(&mut self.descs);
        let v = if self.skipping || self.broken || descs > MAX_CHAIN {
            Verdict::Drop {
                descs,
                counted: !self.skipping && descs > 0,
            }
        } else {
            Verdict::Packet(descs)
        };
        self.broken = false;
        self.open = false;
        self.skipping = false;
        v
    }

    /// The burst ended: a chain without its last buffer is dropped (its kept buffers given
    /// back), and the rest of it will be skipped.
    pub fn end_of_burst(&mut self) -> Option<Verdict> {
        if !self.open {
            return None;
        }
        let v = Verdict::Drop {
            descs: std::mem::take(&mut self.descs),
            counted: !self.skipping,
        };
        self.broken = false;
        self.open = false;
        self.skipping = true;
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds (kept, last) buffers; returns the verdicts that are not `More`.
    fn feed(rx: &mut ChainRx, bufs: &[(bool, bool)]) -> Vec<Verdict> {
        bufs.iter()
            .map(|&(k, l)| rx.buffer(k, l))
            .filter(|v| *v != Verdict::More)
            .collect()
    }

    const END: (bool, bool) = (true, true);
    const CONT: (bool, bool) = (true, false);

    #[test]
    fn single_buffers_are_packets_of_one() {
        let mut rx = ChainRx::default();
        assert_eq!(feed(&mut rx, &[END, END, END]), vec![Verdict::Packet(1); 3]);
        assert_eq!(rx.end_of_burst(), None);
        assert!(!rx.skipping());
    }

    #[test]
    fn a_chain_is_one_packet_of_all_its_buffers() {
        let mut rx = ChainRx::default();
        assert_eq!(
            feed(&mut rx, &[END, CONT, CONT, END, END]),
            vec![Verdict::Packet(1), Verdict::Packet(3), Verdict::Packet(1)]
        );
        let mut longest = vec![CONT; MAX_CHAIN - 1];
        longest.push(END);
        assert_eq!(feed(&mut rx, &longest), vec![Verdict::Packet(MAX_CHAIN)]);
    }

    #[test]
    fn too_many_buffers_drop_the_chain_counted() {
        let mut rx = ChainRx::default();
        let mut bufs = vec![CONT; MAX_CHAIN];
        bufs.push(END);
        bufs.push(END);
        assert_eq!(
            feed(&mut rx, &bufs),
            vec![
                Verdict::Drop {
                    descs: MAX_CHAIN + 1,
                    counted: true
                },
                Verdict::Packet(1)
            ]
        );
    }

    #[test]
    fn a_bad_buffer_drops_its_chain_and_a_lone_bad_one_is_not_counted_twice() {
        let mut rx = ChainRx::default();
        assert_eq!(
            feed(&mut rx, &[CONT, (false, false), END, (false, true), END]),
            vec![
                Verdict::Drop {
                    descs: 2,
                    counted: true
                },
                Verdict::Drop {
                    descs: 0,
                    counted: false
                },
                Verdict::Packet(1)
            ]
        );
    }

    #[test]
    fn a_chain_cut_at_the_burst_end_is_dropped_once_with_its_tail() {
        let mut rx = ChainRx::default();
        assert_eq!(feed(&mut rx, &[END, CONT, CONT]), vec![Verdict::Packet(1)]);
        assert_eq!(
            rx.end_of_burst(),
            Some(Verdict::Drop {
                descs: 2,
                counted: true
            })
        );
        assert!(rx.skipping());
        // The next burst starts inside the chain; a whole burst of it changes nothing.
        assert_eq!(feed(&mut rx, &[CONT, CONT]), vec![]);
        assert_eq!(
            rx.end_of_burst(),
            Some(Verdict::Drop {
                descs: 2,
                counted: false
            })
        );
        // Its last buffer ends the skipping; the next packet is whole again.
        assert_eq!(
            feed(&mut rx, &[END, CONT, END]),
            vec![
                Verdict::Drop {
                    descs: 1,
                    counted: false
                },
                Verdict::Packet(2)
            ]
        );
        assert!(!rx.skipping());
        assert_eq!(rx.end_of_burst(), None);
    }
}
