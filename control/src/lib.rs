//! The nodeplane daemon and CLI: what controls the packet path, never a packet itself.
//! Sources of desired state (a node-local directory, etcd), identity allocation, building
//! tables and publishing them to the workers, the daemon and its control socket (API, CLI,
//! `explain`), the fan-out of flow events to `nodeplane observe`, the AF_XDP backend (XDP
//! attach, steering maps, sockets handed to the workers), the neighbour watcher and `replay`.
//!
//! What this crate must not contain: a per-packet loop. The worker loop, its I/O and the
//! stages are `nodeplane_dataplane`'s.

pub mod api;
pub mod capture;
pub mod daemon;
pub mod events;
pub mod explain;
pub mod identity;
pub mod mesh;
pub mod replay;
pub mod runtime;
pub mod source;
pub mod whatif;
