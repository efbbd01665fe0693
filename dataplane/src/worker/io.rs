//! The worker's packet I/O seam ([`PacketIo`]): AF_XDP sockets live, a capture in replay, test
//! doubles in unit tests. Also the I/O counters every kind reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Clock;
use crate::drop::{DropReason, DROP_REASON_SLOTS};
use crate::offload::{Counters as OffloadCounters, Offload};
use crate::pipeline::{Action, Outcome, Packet, Released};
use crate::tables::{IfIndex, Tables};

/// Per-interface transmit counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxCount {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IoStats {
    pub rx_packets: u64,
    /// Egress interface name → frames transmitted.
    pub tx: BTreeMap<String, TxCount>,
    /// Frames passed to the kernel (live) or discarded as "passed" (replay).
    pub passed: u64,
    /// Whether the input is exhausted (replay with a loop count).
    pub finished: bool,
    /// AF_XDP I/O: hand-off counters, per-socket ring and kernel (`XDP_STATISTICS`) counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub afxdp: Option<AfXdpIoStats>,
}

/// Packet I/O of one worker. Live: AF_XDP sockets (RX/TX/fill/completion rings over a UMEM).
/// Tests and benchmarks: [`ReplayIo`].
pub trait PacketIo: Send {
    /// Called once on the worker's own thread before its loop (e.g. to pin it to a core).
    fn start(&mut self) {}
    /// Called with every new snapshot: resolve interface names to the snapshot's indexes.
    fn bind(&mut self, tables: &Arc<Tables>);
    /// This worker's index and the number of workers whose flows are steered by ownership
    /// (`owner.rs`); `(0, 1)` for an I/O that receives every frame itself.
    fn owner(&self) -> (usize, usize) {
        (0, 1)
    }
    /// Whether this I/O writes partial checksums itself as frames leave (the kernel finishing
    /// them through AF_XDP TX metadata): the pipeline then leaves them partial
    /// ([`crate::Pipeline::set_keep_partial`]). Default: no, the pipeline completes them.
    fn keeps_partial(&self) -> bool {
        false
    }
    /// One burst: receive up to [`BURST`] frames with their ingress interface and time `now`,
    /// hand them to `process` (which decides every frame's [`Outcome`] and may rewrite and
    /// shorten frames in place), then transmit each `Action::Forward(egress)` frame — its
    /// current `data.len()` bytes — on `egress` and recycle the others (pass to the kernel
    /// where that applies). Returns how many frames were received; 0 means idle.
    fn burst(
        &mut self,
        now: u64,
        process: &mut dyn FnMut(&mut [Packet<'_>], &mut [Outcome]),
    ) -> usize;
    /// Transmits a copy of a frame that is not part of the current burst (a released fragment).
    fn send(&mut self, egress: IfIndex, frame: &[u8]);
    /// Transmits a frame the worker built in answer to one of the burst just done (a reject,
    /// `crate::reject`), at that frame's time `ts`. Live I/O sends it like [`PacketIo::send`];
    /// a replay writes it to the egress capture with `ts`.
    fn reply(&mut self, egress: IfIndex, ts: u64, frame: &[u8]) {
        let _ = ts;
        self.send(egress, frame);
    }
    /// A held fragment left the pipeline (released or timed out): transmits it when it is
    /// forwarded (without its stripped L2 bytes).
    fn released(&mut self, r: &Released<'_>) {
        if let Action::Forward(e) = r.outcome.action {
            let trim = usize::from(r.outcome.l2_trim).min(r.data.len());
            self.send(e, &r.data[trim..]);
        }
    }
    /// The worker's time for the next turn: the shared monotonic clock live; a replay in
    /// capture timing runs on the capture's clock.
    fn now(&self, clock: &Clock) -> u64 {
        clock.now()
    }
    /// Nothing was received: wait for traffic, at most `max`.
    fn idle(&mut self, max: Duration);
    fn stats(&self) -> IoStats;
    /// The frames of the last burst that this I/O lost after the pipeline had decided them
    /// (no socket on the egress, a failed transmit, a pass with no way back): `f(index of the
    /// packet in the burst, reason)`. The worker makes flow events of them while observed.
    fn lost_in_burst(&mut self, _f: &mut dyn FnMut(usize, DropReason)) {}
    /// Adds the frames this I/O lost, by reason, to `drops` (index = the reason's number).
    /// The pipeline's drops are counted by the pipeline; these are the I/O's own.
    fn drops(&self, _drops: &mut [u64; DROP_REASON_SLOTS]) {}
    /// The input is exhausted (replay with a loop count); live I/O never is.
    fn finished(&self) -> bool {
        false
    }
    /// Flush any buffered output, check resources (called when the worker stops).
    fn finish(&mut self) {}
    /// The kernel flow cache this I/O feeds (`io.afxdp.fast_path: tc`); none by default.
    fn offload(&mut self) -> Option<&mut Offload> {
        None
    }
}

/// Counters of one worker's I/O (plain integers: one owner; copied out between bursts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoCounters {
    pub rx: u64,
    /// Per table interface index: frames transmitted (rx frames and copies).
    #[serde(skip)]
    pub tx: Vec<u64>,
    /// Per table interface index: bytes transmitted.
    #[serde(skip)]
    pub tx_bytes: Vec<u64>,
    /// Frames whose egress interface has no socket on this worker (not bound).
    pub tx_no_socket: u64,
    /// Copies that could not be queued (no free UMEM frame, TX stage full).
    pub tx_copy_failed: u64,
    /// Pipeline `Pass` verdicts on steered frames: recycled (see module docs).
    pub pass_dropped: u64,
    /// Frames handed to their owner worker.
    pub handed_off: u64,
    /// Frames received from other workers.
    pub handed_in: u64,
    /// Hand-offs dropped: the owner's queue was full or the buffer pool empty.
    pub handoff_dropped: u64,
    /// Frames longer than a hand-off batch carries (65 535 bytes; dropped).
    pub handoff_too_long: u64,
    /// Of `handed_off`, frames longer than one UMEM frame: multi-buffer chains, handed over
    /// whole (`crate::handoff`) and sent by their owner as a chain of its own frames.
    #[serde(default)]
    pub handoff_chains: u64,
    /// Idle waits (`poll` on the sockets) that failed with an error other than EINTR.
    #[serde(default)]
    pub poll_errors: u64,
    /// Handed-in frames left over from a burst that panicked (returned to the pool, dropped).
    #[serde(default)]
    pub handoff_abandoned: u64,
    /// Empty turns inside the busy-poll window (`io.afxdp.busy_poll_us`): no sleep.
    #[serde(default)]
    pub busy_polls: u64,
    /// Sleeps in `poll()` on the sockets (an idle worker; each ends with a wake-up).
    #[serde(default)]
    pub idle_sleeps: u64,
    /// Frames for an interface that is gone (routed to it, or left on its sockets' TX rings
    /// when it went): dropped `iface-down`, never sent.
    #[serde(default)]
    pub iface_down: u64,
    /// Times one of this worker's interfaces went away and came back (sockets closed down,
    /// sockets bound again on the re-created interface).
    #[serde(default)]
    pub iface_gone: u64,
    #[serde(default)]
    pub iface_rebound: u64,
    /// Frames the pipeline left with a partial checksum ([`crate::Outcome::csum_partial`])
    /// sent with a checksum request in their AF_XDP TX metadata (the kernel finishes them).
    #[serde(default)]
    pub csum_offloaded: u64,
    /// Frames left partial whose checksum the I/O completed (no TX metadata room).
    #[serde(default)]
    pub csum_completed: u64,
}

impl IoCounters {
    /// The frames these counters say were lost, by reason (`tx_ring_full`: the sockets').
    pub fn add_drops(&self, tx_ring_full: u64, drops: &mut [u64; DROP_REASON_SLOTS]) {
        for (r, n) in [
            (DropReason::TxNoSocket, self.tx_no_socket),
            (DropReason::TxFailed, self.tx_copy_failed + tx_ring_full),
            (DropReason::HandoffFull, self.handoff_dropped),
            (DropReason::HandoffTooLong, self.handoff_too_long),
            (DropReason::HandoffAbandoned, self.handoff_abandoned),
            (DropReason::PassUnavailable, self.pass_dropped),
            (DropReason::IfaceDown, self.iface_down),
        ] {
            drops[r as usize] += n;
        }
    }
}

/// The kernel's counters of one AF_XDP socket (`getsockopt(SOL_XDP, XDP_STATISTICS)`): frames
/// the kernel could not deliver to the socket, i.e. lost before the pipeline saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XskKernelStats {
    /// Dropped for other reasons (in copy mode: no free frame in the fill ring, among others).
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    /// Dropped because the RX ring was full (the worker did not consume fast enough).
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty (frames then dropped: `rx_dropped`).
    pub rx_fill_ring_empty_descs: u64,
    pub tx_invalid_descs: u64,
    /// Times the kernel found the TX ring empty when woken.
    pub tx_ring_empty_descs: u64,
}

/// One AF_XDP socket of a worker: userspace ring counters and the kernel's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XskSocketStats {
    pub iface: String,
    pub queue: u32,
    pub rx: u64,
    pub tx: u64,
    pub tx_completed: u64,
    /// Frames for a full TX ring (recycled, not sent).
    pub tx_ring_full: u64,
    /// Received frames recycled without transmit (pipeline drops, held, pass, failed
    /// hand-offs).
    pub dropped: u64,
    /// Received frames recycled after a copy was handed to their owner worker (not drops).
    #[serde(default)]
    pub released: u64,
    /// Refills that found no free UMEM frame.
    pub fill_starved: u64,
    pub tx_kicks: u64,
    pub fill_kicks: u64,
    /// TX kicks (`sendto`) that failed (beyond the transient ones: ENOBUFS, EAGAIN, EBUSY, ENETDOWN).
    #[serde(default)]
    pub tx_kick_errors: u64,
    /// Fill ring kicks (`poll`) that failed.
    #[serde(default)]
    pub fill_kick_errors: u64,
    /// Packets received as a chain of UMEM frames (`io.afxdp.multi_buffer`; also in `rx`).
    #[serde(default)]
    pub rx_chains: u64,
    /// Chains dropped on receipt: too many frames or bytes, or a chain without its end.
    #[serde(default)]
    pub rx_chain_dropped: u64,
    /// Packets queued for TX as a chain of UMEM frames (also in `tx`).
    #[serde(default)]
    pub tx_chains: u64,
    /// Its interface is gone: the socket is out of service until the interface is re-created.
    #[serde(default)]
    pub down: bool,
    /// `None`: the kernel did not answer `XDP_STATISTICS`.
    pub kernel: Option<XskKernelStats>,
}

/// The AF_XDP part of a worker's I/O counters (in `nodeplane status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AfXdpIoStats {
    pub core: Option<usize>,
    pub counters: IoCounters,
    pub sockets: Vec<XskSocketStats>,
    /// The UMEM frame accounting check at stop (`ok` or the error); `None` while running.
    pub accounting: Option<String>,
    /// The kernel flow cache's counters (`io.afxdp.fast_path: tc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<OffloadCounters>,
}

/// A boxed I/O is an I/O (the daemon picks the kind at run time).
impl PacketIo for Box<dyn PacketIo> {
    fn start(&mut self) {
        (**self).start()
    }
    fn bind(&mut self, t: &Arc<Tables>) {
        (**self).bind(t)
    }
    fn owner(&self) -> (usize, usize) {
        (**self).owner()
    }
    fn keeps_partial(&self) -> bool {
        (**self).keeps_partial()
    }
    fn burst(
        &mut self,
        now: u64,
        process: &mut dyn FnMut(&mut [Packet<'_>], &mut [Outcome]),
    ) -> usize {
        (**self).burst(now, process)
    }
    fn send(&mut self, egress: u16, frame: &[u8]) {
        (**self).send(egress, frame)
    }
    fn released(&mut self, r: &Released<'_>) {
        (**self).released(r)
    }
    fn now(&self, clock: &Clock) -> u64 {
        (**self).now(clock)
    }
    fn idle(&mut self, max: Duration) {
        (**self).idle(max)
    }
    fn stats(&self) -> IoStats {
        (**self).stats()
    }
    fn drops(&self, drops: &mut [u64; DROP_REASON_SLOTS]) {
        (**self).drops(drops)
    }
    fn lost_in_burst(&mut self, f: &mut dyn FnMut(usize, DropReason)) {
        (**self).lost_in_burst(f)
    }
    fn finished(&self) -> bool {
        (**self).finished()
    }
    fn finish(&mut self) {
        (**self).finish()
    }
    fn offload(&mut self) -> Option<&mut Offload> {
        (**self).offload()
    }
}
