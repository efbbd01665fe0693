//! The pipeline target's packet I/O: the input's frames, fed to a real [`Worker`] through the
//! [`PacketIo`] seam, and every frame the worker decides checked as it leaves.
//!
//! Checks, each an assertion (a failure is a crash libFuzzer keeps):
//! - every frame is decided exactly once: by its burst, or, if held, by a later drain;
//! - a forwarded frame goes out on an interface of the running tables, is IP on both sides
//!   (same version), and has a right IPv4 header checksum;
//! - its TTL / hop limit is the input's minus one (a reset built for a flow of a removed
//!   backend: the reset's own 64);
//! - a TCP/UDP/ICMP checksum right on input is right on output (a built reset's always is).
//!
//! [`Worker`]: nodeplane_dataplane::worker::Worker

use std::sync::Arc;
use std::time::Duration;

use nodeplane_dataplane::tables::{IfIndex, Tables};
use nodeplane_dataplane::worker::{Clock, IoStats, PacketIo};
use nodeplane_dataplane::{Action, Outcome, Packet, Released, BURST};

use crate::check::{ip_of, ipv4_header_ok, is_tcp_rst, l4_ok};
use crate::input::{Input, IFACE_NAMES};

/// TTL of a reset the worker builds (`dataplane/src/rst.rs`).
const RESET_TTL: u8 = 64;

#[derive(Debug)]
struct InFrame {
    iface: u8,
    burst_break: bool,
    ts: u64,
    data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Pending,
    Held,
    Decided,
}

#[derive(Debug)]
pub struct FuzzIo {
    frames: Vec<InFrame>,
    fate: Vec<Fate>,
    pos: usize,
    /// No burst takes frame `stop_at` or later while `pos` is before it (the publication).
    stop_at: usize,
    /// Removed-flow action `rst`: a dropped segment may leave as a reset.
    rst: bool,
    tables: Option<Arc<Tables>>,
    pub forwarded: u64,
    /// Rejects the worker answered with (a reset, or an ICMP/ICMPv6 port unreachable).
    pub rejects: u64,
}

impl FuzzIo {
    /// Frames start at 1 s (the worker's clock never reads 0) and advance by their deltas.
    pub fn new(input: &Input<'_>) -> FuzzIo {
        let mut ts = 1_000_000_000u64;
        let frames: Vec<InFrame> = input
            .frames
            .iter()
            .map(|f| {
                ts += f.delta;
                InFrame {
                    iface: f.iface,
                    burst_break: f.burst_break,
                    ts,
                    data: f.data.to_vec(),
                }
            })
            .collect();
        FuzzIo {
            fate: vec![Fate::Pending; frames.len()],
            stop_at: input.publish_before.min(frames.len()),
            frames,
            pos: 0,
            rst: input.rst,
            tables: None,
            forwarded: 0,
            rejects: 0,
        }
    }

    /// Frames taken in so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    /// Frames not decided yet (held ones included).
    pub fn undecided(&self) -> usize {
        self.fate.iter().filter(|f| **f != Fate::Decided).count()
    }

    fn iface_of(&self, n: u8) -> IfIndex {
        let t = self.tables.as_ref().expect("bound before the first burst");
        match IFACE_NAMES.get(usize::from(n)) {
            Some(name) => t.iface_index(name).unwrap_or(IfIndex::MAX),
            None => ((usize::from(n) - IFACE_NAMES.len()) % t.ifaces.len().max(1)) as IfIndex,
        }
    }

    fn decided(&mut self, tag: u64, data: &[u8], o: &Outcome) {
        let k = tag as usize;
        let fate = self.fate[k];
        if o.action == Action::Held {
            assert_eq!(fate, Fate::Pending, "frame {k} held twice");
            self.fate[k] = Fate::Held;
            return;
        }
        assert_ne!(fate, Fate::Decided, "frame {k} decided twice");
        self.fate[k] = Fate::Decided;
        if let Action::Forward(e) = o.action {
            self.forwarded += 1;
            let ifaces = self.tables.as_ref().map_or(0, |t| t.ifaces.len());
            assert!(usize::from(e) < ifaces, "frame {k}: egress {e} of {ifaces}");
            let out = &data[usize::from(o.l2_trim).min(data.len())..];
            check_forwarded(k, &self.frames[k].data, out, self.rst);
        }
    }
}

/// The checks of the module docs on one forwarded frame.
fn check_forwarded(k: usize, input: &[u8], out: &[u8], rst: bool) {
    let i = ip_of(input).unwrap_or_else(|| panic!("frame {k}: forwarded, but not IP on input"));
    let o = ip_of(out).unwrap_or_else(|| panic!("frame {k}: forwarded, not IP on output"));
    assert_eq!(i.v6, o.v6, "frame {k}: IP version changed");
    assert_ne!(
        ipv4_header_ok(&o),
        Some(false),
        "frame {k}: IPv4 header checksum wrong on output"
    );
    let reset = rst && is_tcp_rst(&o) && !is_tcp_rst(&i);
    if reset {
        assert_eq!(o.ttl, RESET_TTL, "frame {k}: reset's TTL");
        assert_eq!(l4_ok(&o), Some(true), "frame {k}: reset's TCP checksum");
        return;
    }
    assert!(i.ttl > 1, "frame {k}: forwarded with TTL {}", i.ttl);
    assert_eq!(o.ttl, i.ttl - 1, "frame {k}: TTL not decremented once");
    if l4_ok(&i) == Some(true) {
        assert_eq!(
            l4_ok(&o),
            Some(true),
            "frame {k}: L4 checksum right on input, wrong on output (proto {})",
            o.proto
        );
    }
}

impl PacketIo for FuzzIo {
    fn bind(&mut self, tables: &Arc<Tables>) {
        self.tables = Some(Arc::clone(tables));
    }

    fn burst(
        &mut self,
        _now: u64,
        process: &mut dyn FnMut(&mut [Packet<'_>], &mut [Outcome]),
    ) -> usize {
        let start = self.pos;
        let limit = if start < self.stop_at {
            self.stop_at
        } else {
            self.frames.len()
        };
        let mut end = start;
        while end < limit && end - start < BURST && (end == start || !self.frames[end].burst_break)
        {
            end += 1;
        }
        if end == start {
            return 0;
        }
        let mut bufs: Vec<Vec<u8>> = self.frames[start..end]
            .iter()
            .map(|f| f.data.clone())
            .collect();
        let ifaces: Vec<IfIndex> = self.frames[start..end]
            .iter()
            .map(|f| self.iface_of(f.iface))
            .collect();
        let mut outs = vec![Outcome::default(); end - start];
        let mut lens = vec![0; end - start];
        {
            let mut pkts: Vec<Packet<'_>> = bufs
                .iter_mut()
                .zip(&ifaces)
                .enumerate()
                .map(|(i, (b, &iface))| Packet {
                    data: b.as_mut_slice(),
                    iface,
                    ts: self.frames[start + i].ts,
                    tag: (start + i) as u64,
                    parsed: None,
                })
                .collect();
            process(&mut pkts, &mut outs);
            for (l, p) in lens.iter_mut().zip(&pkts) {
                *l = p.data.len();
            }
        }
        self.pos = end;
        for (i, (b, o)) in bufs.iter().zip(&outs).enumerate() {
            self.decided((start + i) as u64, &b[..lens[i]], o);
        }
        end - start
    }

    /// A reject built in answer to a frame of the burst just done: a well-formed datagram whose
    /// checksums are right, a TCP reset or an ICMP / ICMPv6 destination unreachable.
    fn reply(&mut self, _egress: IfIndex, _ts: u64, frame: &[u8]) {
        let ip = ip_of(frame).unwrap_or_else(|| panic!("reject is not IP: {frame:02x?}"));
        assert_ne!(ipv4_header_ok(&ip), Some(false), "reject IPv4 header checksum");
        assert_eq!(l4_ok(&ip), Some(true), "reject L4 checksum: {frame:02x?}");
        let unreachable = match ip.proto {
            1 => ip.l4.first() == Some(&3),
            58 => ip.l4.first() == Some(&1),
            _ => false,
        };
        assert!(
            is_tcp_rst(&ip) || unreachable,
            "a reject is a reset or a port unreachable: {frame:02x?}"
        );
        self.rejects += 1;
    }

    fn send(&mut self, _egress: IfIndex, frame: &[u8]) {
        panic!(
            "unexpected copy sent outside a burst ({} bytes)",
            frame.len()
        );
    }

    fn released(&mut self, r: &Released<'_>) {
        let k = r.tag as usize;
        assert_eq!(
            self.fate.get(k),
            Some(&Fate::Held),
            "frame {k} released, not held"
        );
        self.decided(r.tag, r.data, &r.outcome);
    }

    fn now(&self, _clock: &Clock) -> u64 {
        match self.frames.get(self.pos) {
            Some(f) => f.ts,
            None => self.frames.last().map_or(1_000_000_000, |f| f.ts),
        }
    }

    fn idle(&mut self, _max: Duration) {}

    fn stats(&self) -> IoStats {
        IoStats {
            rx_packets: self.pos as u64,
            finished: self.finished(),
            ..IoStats::default()
        }
    }

    fn finished(&self) -> bool {
        self.pos == self.frames.len()
    }
}
