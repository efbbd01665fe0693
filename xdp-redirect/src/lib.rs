//! The kernel side of nodeplane's AF_XDP dataplane: the XDP program, its loader and its maps.
//! The AF_XDP sockets themselves (rings, UMEM) are part of the packet path, in
//! `nodeplane_dataplane::afxdp`.
//!
//! - `bpf/redirect.c`: the XDP program (built by `build.rs` with clang, embedded). It steers
//!   frames the dataplane owns to AF_XDP sockets and passes everything else to the kernel; its
//!   rules are documented at the top of the file.
//! - [`Loader`] ([`loader`]): loads the program with aya, attaches it (native, falling back to
//!   generic), writes its maps from a typed [`SteeringConfig`], registers sockets (by their
//!   interface, queue and file descriptor), reads [`Counters`]. Dropping it detaches everything
//!   it did not pin.
//! - `bpf/fastpath.c` and [`FastPath`] ([`fastpath`]): the TC ingress fast path of
//!   `io.afxdp.fast_path: tc` (a kernel flow cache the worker fills; misses go up to the worker
//!   through a slow-path veth); [`flows`]: its map's layout and the workers' [`FlowTable`].
//! - [`pin`]: the bpffs directory where the links outlive the daemon, and its cleanup.
//!
//! What this crate must not import: the packet path (`nodeplane-dataplane`, except in its
//! tests), `nodeplane-control`, `nodeplane-bgp`.

pub mod fastpath;
pub mod flows;
pub mod loader;
pub mod maps;
pub mod pin;
mod sys;

pub use fastpath::{
    FastPath, FastPathCounter, FastPathCounters, FastPathError, FastPathOptions, DEFAULT_MAX_FLOWS,
};
pub use flows::{
    ifindex_from_slow_path_mac, slow_path_mac, FlowAction, FlowKey, FlowTable, FLOW_DEC_TTL,
    FLOW_NAT_DST, FLOW_NAT_SRC, FLOW_PEER,
};
pub use loader::{
    object_tag, AttachError, AttachMode, AttachedInterface, CounterError, LoadError, Loader,
    SteeringError, XskRegisterError,
};
pub use maps::{
    ConfigError, Counter, Counters, NodePort, Proto, SnatAddr, SteeringConfig, SteeringEntries,
};
