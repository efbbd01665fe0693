//! AF_XDP packet I/O (feature `afxdp`): the kernel's sockets, rings and UMEM spoken directly
//! ([`ring`], our own layer over the uapi), a worker's sockets over one UMEM ([`xsk`], with
//! multi-buffer packet assembly in [`chain`]) and the
//! worker I/O that runs the pipeline over them ([`io`]), handing frames owned by another worker
//! to it ([`crate::handoff`]).

pub mod chain;
pub mod io;
pub mod link;
pub mod ring;
pub mod xsk;

pub use io::AfXdpIo;
pub use link::{link_channels, LinkCmd, LinkControl, LinkOutcome, LinkPort, LinkReply};
pub use xsk::{
    AccountingError, Action, Burst, FrameAccounting, SocketId, SocketStats, TxError, XskBinding,
    XskConfig, XskError, XskUmem, XskWorker, MAX_BURST, MAX_CHAIN, MAX_CHAIN_BYTES, XDP_PKT_CONTD,
};
