//! The kernel side of nodeplane's AF_XDP dataplane.
//!
//! - `bpf/redirect.c`: the XDP program (built by `build.rs` with clang, embedded). It steers
//!   frames the dataplane owns to AF_XDP sockets and passes everything else to the kernel; its
//!   rules are documented at the top of the file.
//! - [`Loader`] ([`loader`]): loads the program with aya, attaches it (native, falling back to
//!   generic), writes its maps from a typed [`SteeringConfig`], registers sockets, reads
//!   [`Counters`]. Dropping it detaches everything.
//! - [`XskWorker`] ([`xsk`]): a worker's AF_XDP sockets over one shared UMEM, with a burst
//!   API for a run-to-completion loop. All `unsafe` of the crate is in that module.
//!
//! Typical worker wiring (names resolve in the calling thread's network namespace):
//!
//! ```no_run
//! use nodeplane_xdp::{Action, Loader, SteeringConfig, XskBinding, XskConfig, XskWorker};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut loader = Loader::load()?;
//! loader.attach("uplink0", 2)?;
//! loader.attach("pod-web1", 2)?;
//! loader.apply(&SteeringConfig::default())?;
//! let bindings = [
//!     XskBinding { iface: "uplink0", queue: 0 },
//!     XskBinding { iface: "pod-web1", queue: 0 },
//! ];
//! let mut worker = XskWorker::new(&XskConfig::default(), &bindings)?;
//! loader.register_worker(&worker)?;
//! let ids: Vec<_> = worker.socket_ids().collect();
//! loop {
//!     let mut got = 0;
//!     for &id in &ids {
//!         let mut burst = worker.rx_burst(id, 64);
//!         got += burst.len();
//!         for (frame, action) in burst.frames_mut() {
//!             frame[0..6].copy_from_slice(&[0x02, 0, 0, 0, 2, 0x15]);
//!             *action = Action::Tx(ids[1]);
//!         }
//!         burst.finish();
//!     }
//!     if got == 0 {
//!         worker.service();
//!         worker.wait_rx(10)?;
//!     }
//! }
//! # }
//! ```

pub mod loader;
pub mod maps;
pub mod xsk;

pub use loader::{
    AttachError, AttachMode, AttachedInterface, CounterError, LoadError, Loader, SteeringError,
    XskRegisterError,
};
pub use maps::{ConfigError, Counter, Counters, NodePort, Proto, SteeringConfig, SteeringEntries};
pub use xsk::{
    AccountingError, Action, Burst, FrameAccounting, SocketId, SocketStats, TxError, XskBinding,
    XskConfig, XskError, XskWorker, MAX_BURST,
};
