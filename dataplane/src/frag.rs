//! IP fragments without reassembly.
//!
//! The first fragment carries the ports, so it decides: after it is processed, its datagram's
//! (src, dst, id, protocol) is remembered with its ports and verdict for `fragment` seconds, and
//! later fragments of that datagram follow the same flow. A later fragment that arrives before
//! its first is copied into a fixed pool of held buffers until the first one comes (then it is
//! released and processed) or the timeout passes (then it is dropped `frag-timeout`). Nothing is
//! silently lost and nothing here allocates after construction.

use hashbrown::HashMap;

use crate::drop::DropReason;
use crate::flow::Addr;
use crate::tables::{CtConfig, IfIndex};

/// The largest frame a held buffer keeps (a 9000-byte jumbo frame plus headers).
pub const MAX_HELD_FRAME: usize = 9216;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: Addr,
    pub dst: Addr,
    pub id: u32,
    pub proto: u8,
}

/// What the first fragment's processing did with it; later fragments do the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Forwarded: later fragments follow its flow.
    Followed,
    /// Handed to the kernel (host traffic): later fragments are passed too.
    Passed,
    /// Dropped for this reason: later fragments are dropped `frag-of-dropped`.
    Dropped(DropReason),
}

/// What the first fragment decided for its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    pub sport: u16,
    pub dport: u16,
    /// The L4 protocol past any extension headers (an IPv6 later fragment only names the
    /// header that follows its fragment header).
    pub proto: u8,
    pub fate: Fate,
    expires: u64,
}

#[derive(Debug)]
struct Held {
    buf: Box<[u8]>,
    len: usize,
    key: FragKey,
    iface: IfIndex,
    ts: u64,
    tag: u64,
    live: bool,
    /// The first fragment has come: process at the next drain.
    ready: bool,
    /// When the first fragment came: the time a ready fragment is processed at, so the
    /// datagram it belongs to is still live however late the drain runs.
    ready_at: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct FragStats {
    pub held: u64,
    pub released: u64,
    pub timed_out: u64,
    pub overflow: u64,
}

#[derive(Debug)]
pub struct Fragments {
    datagrams: HashMap<FragKey, Datagram>,
    max_datagrams: usize,
    held: Vec<Held>,
    free_held: Vec<u32>,
    held_live: usize,
    timeout: u64,
    pub stats: FragStats,
}

impl Fragments {
    pub fn new(cfg: &CtConfig) -> Fragments {
        let max_datagrams = cfg.max_fragment_ids as usize;
        let n = cfg.max_held_fragments as usize;
        Fragments {
            datagrams: HashMap::with_capacity(max_datagrams),
            max_datagrams,
            held: (0..n)
                .map(|_| Held {
                    buf: vec![0u8; MAX_HELD_FRAME].into_boxed_slice(),
                    len: 0,
                    key: FragKey {
                        src: Addr::default(),
                        dst: Addr::default(),
                        id: 0,
                        proto: 0,
                    },
                    iface: 0,
                    ts: 0,
                    tag: 0,
                    live: false,
                    ready: false,
                    ready_at: 0,
                })
                .collect(),
            free_held: (0..n as u32).rev().collect(),
            held_live: 0,
            timeout: cfg.fragment,
            stats: FragStats::default(),
        }
    }

    pub fn set_timeout(&mut self, timeout: u64) {
        self.timeout = timeout;
    }

    #[inline]
    pub fn lookup(&mut self, key: &FragKey, now: u64) -> Option<Datagram> {
        let d = *self.datagrams.get(key)?;
        if d.expires <= now {
            self.datagrams.remove(key);
            return None;
        }
        Some(d)
    }

    pub fn knows(&self, key: &FragKey) -> bool {
        self.datagrams.contains_key(key)
    }

    /// Records the first fragment's decision and marks the datagram's held fragments ready.
    /// Fails (`frag-overflow`) when the datagram table is full of unexpired entries.
    pub fn record_first(
        &mut self,
        key: FragKey,
        sport: u16,
        dport: u16,
        proto: u8,
        fate: Fate,
        now: u64,
    ) -> Result<(), DropReason> {
        if self.datagrams.len() >= self.max_datagrams && !self.datagrams.contains_key(&key) {
            // Bounded purge; the table is small enough (max_fragment_ids) for a full pass on
            // this rare path.
            self.datagrams.retain(|_, d| d.expires > now);
            if self.datagrams.len() >= self.max_datagrams {
                self.stats.overflow += 1;
                return Err(DropReason::FragOverflow);
            }
        }
        self.datagrams.insert(
            key,
            Datagram {
                sport,
                dport,
                proto,
                fate,
                expires: now.saturating_add(self.timeout),
            },
        );
        if self.held_live > 0 {
            for h in self.held.iter_mut() {
                if h.live && !h.ready && h.key == key {
                    h.ready = true;
                    h.ready_at = now;
                }
            }
        }
        Ok(())
    }

    /// Keeps a copy of a fragment whose first fragment has not been seen.
    pub fn hold(
        &mut self,
        frame: &[u8],
        key: FragKey,
        iface: IfIndex,
        ts: u64,
        tag: u64,
    ) -> Result<(), DropReason> {
        if frame.len() > MAX_HELD_FRAME {
            self.stats.overflow += 1;
            return Err(DropReason::FragOverflow);
        }
        let Some(slot) = self.free_held.pop() else {
            self.stats.overflow += 1;
            return Err(DropReason::FragOverflow);
        };
        let h = &mut self.held[slot as usize];
        h.buf[..frame.len()].copy_from_slice(frame);
        h.len = frame.len();
        h.key = key;
        h.iface = iface;
        h.ts = ts;
        h.tag = tag;
        h.live = true;
        h.ready = false;
        self.held_live += 1;
        self.stats.held += 1;
        Ok(())
    }

    pub fn held_count(&self) -> usize {
        self.held_live
    }

    /// Whether a held fragment waits for this datagram's first fragment.
    pub fn awaits(&self, key: &FragKey) -> bool {
        self.held_live > 0
            && self
                .held
                .iter()
                .any(|h| h.live && !h.ready && h.key == *key)
    }

    /// The next held fragment that is ready (its first fragment came) or timed out, if any:
    /// `(slot, timed_out)`. The caller processes it via [`Fragments::held_frame`] and then
    /// calls [`Fragments::release`].
    pub fn next_due(&self, now: u64) -> Option<(u32, bool)> {
        if self.held_live == 0 {
            return None;
        }
        self.held.iter().enumerate().find_map(|(i, h)| {
            if !h.live {
                None
            } else if h.ready {
                Some((i as u32, false))
            } else if h.ts.saturating_add(self.timeout) <= now {
                Some((i as u32, true))
            } else {
                None
            }
        })
    }

    /// The held frame's bytes and metadata: (frame, ingress interface, timestamp, tag).
    pub fn held_frame(&mut self, slot: u32) -> (&mut [u8], IfIndex, u64, u64) {
        let h = &mut self.held[slot as usize];
        (&mut h.buf[..h.len], h.iface, h.ts, h.tag)
    }

    /// When the held fragment's first fragment came (meaningful once it is ready).
    pub fn ready_at(&self, slot: u32) -> u64 {
        self.held[slot as usize].ready_at
    }

    pub fn release(&mut self, slot: u32, timed_out: bool) {
        let h = &mut self.held[slot as usize];
        if h.live {
            h.live = false;
            h.ready = false;
            self.held_live -= 1;
            self.free_held.push(slot);
            if timed_out {
                self.stats.timed_out += 1;
            } else {
                self.stats.released += 1;
            }
        }
    }

    /// Forgets expired datagrams (periodic GC, not per packet).
    pub fn gc(&mut self, now: u64) {
        self.datagrams.retain(|_, d| d.expires > now);
    }
}
