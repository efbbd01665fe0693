//! An interface that goes away and comes back while the daemon runs (a pod's veth deleted and
//! re-created): what the control thread tells a worker's AF_XDP I/O, and what it answers.
//!
//! ```text
//!   control thread (link watcher → reconcile)        worker w (AfXdpIo, between two bursts)
//!   ─────────────────────────────────────────        ───────────────────────────────────────
//!   iface gone:  XDP link and XSKMAP slots freed     Down: its sockets out of service, every
//!                Down(iface) ───────────────────>      frame lent to them taken back; frames
//!                <─────────── Gone { sockets }         routed to it now drop `iface-down`
//!   iface back:  XDP attached at once (fail
//!                closed: no socket = XDP drop)
//!                Up(iface) ─────────────────────>    Up: a new socket per slot on the same
//!                <─────────── Rebound { fds }         UMEM; routed to again
//!                fds into the XSKMAP: traffic
//!                flows through the pipeline again
//! ```
//!
//! The worker looks for a command once per burst (a `try_recv` on an empty channel: a couple of
//! atomic loads) and never waits: it binds without retries and answers at once; the control
//! thread waits for the answers (bounded) and retries a failed bind at its next reconcile.
//! Nothing here runs per packet.

use std::os::fd::OwnedFd;
use std::sync::mpsc::{channel, Receiver, Sender};

/// A command for one worker's I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkCmd {
    /// The interface is gone (its sockets are unbound by the kernel): take them out of service.
    Down { seq: u64, iface: String },
    /// The interface exists again (a new ifindex): bind new sockets for it.
    Up { seq: u64, iface: String },
}

/// What a worker did with a [`LinkCmd`].
#[derive(Debug)]
pub enum LinkOutcome {
    /// Sockets taken out of service, and frames that were on their TX rings (dropped,
    /// `iface-down`).
    Gone { sockets: usize, unsent: u32 },
    /// New sockets bound: (queue, a duplicate of the socket's descriptor for the XSKMAP; the
    /// worker keeps its own), and the slots that could not be bound.
    Rebound {
        sockets: Vec<(u32, OwnedFd)>,
        failed: Vec<String>,
    },
}

/// A worker's answer to one [`LinkCmd`].
#[derive(Debug)]
pub struct LinkReply {
    pub worker: usize,
    pub seq: u64,
    pub iface: String,
    pub outcome: LinkOutcome,
}

/// The worker's end: commands in, answers out.
#[derive(Debug)]
pub struct LinkPort {
    pub(crate) cmds: Receiver<LinkCmd>,
    pub(crate) replies: Sender<LinkReply>,
}

/// The control thread's end: one command channel per worker, one answer channel for all.
#[derive(Debug)]
pub struct LinkControl {
    pub cmds: Vec<Sender<LinkCmd>>,
    pub replies: Receiver<LinkReply>,
}

/// Channels for `workers` workers.
pub fn link_channels(workers: usize) -> (LinkControl, Vec<LinkPort>) {
    let (rtx, rrx) = channel();
    let mut cmds = Vec::with_capacity(workers);
    let mut ports = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (ctx, crx) = channel();
        cmds.push(ctx);
        ports.push(LinkPort {
            cmds: crx,
            replies: rtx.clone(),
        });
    }
    (LinkControl { cmds, replies: rrx }, ports)
}
