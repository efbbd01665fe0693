//! The nodeplane packet path, whole: the pipeline's stages, the worker loop that runs them over
//! bursts, and every packet I/O the worker runs over. The daemon (`nodeplane-control`) starts
//! workers and publishes tables to them; it never touches a packet.
//!
//! Module map (stages and tables, one per file, as in Cilium's `bpf/lib`):
//! - [`parse`]: frame → [`parse::Meta`] (offsets and key fields).
//! - [`conntrack`]: per-worker flow table, TCP state machine, timers, eviction; [`ct_index`]
//!   its hash index.
//! - [`tables`]: immutable snapshot compiled from the state (services + [`maglev`], endpoints,
//!   [`lpm`] ipcache, [`policy`]).
//! - [`frag`]: fragment id map and held out-of-order fragments.
//! - [`rewrite`] and [`csum`]: in-place header changes with incremental checksums.
//! - [`partial`]: partial (CHECKSUM_PARTIAL) TCP/UDP checksums completed before any rewrite.
//! - [`rst`]: a TCP reset built in place (ending flows of removed backends).
//! - [`snapshot`]: conntrack and affinity saved across a daemon restart.
//! - [`offload`]: the worker's side of the kernel flow cache (`io.afxdp.fast_path: tc`).
//! - [`pipeline`]: the stages wired together; [`drop`]: the closed set of drop reasons.
//! - [`wire`]: where each header field sits (the only place a header offset is a number).
//!
//! The loop and its I/O (VPP keeps its main loop and thread hand-off in vlib, devices as plugins):
//! - [`worker`]: the run-to-completion loop over bursts, its [`worker::PacketIo`] seam,
//!   control requests, counters, panic containment.
//! - [`publish`]: new tables from the control thread, picked up between bursts.
//! - [`events`]: the worker's flow-event tap (`nodeplane observe`).
//! - [`replay`]: the capture reader (the project's one) and the replay I/O.
//! - [`owner`] and [`handoff`]: which worker owns a flow, and frames handed to it in batches.
//! - `afxdp` (feature `afxdp`): AF_XDP sockets, rings and UMEM, and the worker I/O over them.
//!
//! What this crate must not import: `nodeplane-control`, `nodeplane-bgp`, tokio or any async
//! runtime. It allocates, locks and logs nothing per packet.

#[cfg(feature = "afxdp")]
pub mod afxdp;
pub mod conntrack;
pub mod csum;
pub mod ct_index;
pub mod drop;
pub mod events;
pub mod flow;
pub mod frag;
pub mod handoff;
pub mod lpm;
pub mod maglev;
pub mod mtu;
pub mod offload;
pub mod owner;
pub mod parse;
pub mod partial;
pub mod pipeline;
pub mod policy;
pub mod publish;
pub mod reject;
pub mod replay;
pub mod rewrite;
pub mod rst;
pub mod snapshot;
pub mod snat;
pub mod tables;
pub mod wire;
pub mod worker;

pub use drop::DropReason;
pub use flow::{Addr, FlowKey};
pub use pipeline::{
    Action, Counters, CtStatus, Outcome, Packet, Pipeline, Released, ScratchBuffers, BURST,
};
pub use policy::PolicyVerdict;
pub use tables::{MaglevCache, Tables};
