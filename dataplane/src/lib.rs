//! The nodeplane packet pipeline: parse → conntrack → service DNAT → identity policy → rewrite,
//! over bursts of frames, allocation-free and lock-free per packet. The same code runs behind
//! AF_XDP sockets (the runtime) and over pcap files (`nodeplane replay`).
//!
//! Module map (one per stage or table, as in Cilium's `bpf/lib`):
//! - [`parse`]: frame → [`parse::Meta`] (offsets and key fields).
//! - [`conntrack`]: per-worker flow table, TCP state machine, timers, eviction.
//! - [`tables`]: immutable snapshot compiled from the state (services + [`maglev`], endpoints,
//!   [`lpm`] ipcache, [`policy`]).
//! - [`frag`]: fragment id map and held out-of-order fragments.
//! - [`rewrite`] and [`csum`]: in-place header changes with incremental checksums.
//! - [`partial`]: partial (CHECKSUM_PARTIAL) TCP/UDP checksums completed before any rewrite.
//! - [`rst`]: a TCP reset built in place (ending flows of removed backends).
//! - [`pipeline`]: the stages wired together; [`drop`]: the closed set of drop reasons.

pub mod conntrack;
pub mod csum;
pub mod drop;
pub mod flow;
pub mod frag;
pub mod lpm;
pub mod maglev;
pub mod parse;
pub mod partial;
pub mod pipeline;
pub mod policy;
pub mod rewrite;
pub mod rst;
pub mod tables;

pub use drop::DropReason;
pub use flow::{Addr, FlowKey};
pub use pipeline::{Action, Counters, CtStatus, Outcome, Packet, Pipeline, Released, BURST};
pub use policy::PolicyVerdict;
pub use tables::{MaglevCache, Tables};
