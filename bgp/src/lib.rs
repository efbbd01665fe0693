//! BGP speaker: announces the node's PodCIDRs (and, when configured, LoadBalancer/External
//! service VIPs) to one or two routers and imports nothing (DESIGN.md §3.7).
//!
//! ```text
//!   packet/   codec: bytes <-> Message (pure, fuzzed)
//!   fsm.rs    RFC 4271 state machine per neighbour: (state, event) -> actions (pure, no I/O)
//!   network   mio event loop thread: sockets, TCP-MD5, GTSM, timers -> fsm events
//!   speaker   the handle the control thread holds: set_routes(), status(), shutdown()
//! ```

pub mod config;
pub mod daemon;
pub mod packet;
pub mod routes;
pub mod sys;

pub use config::{AnnounceConfig, BgpConfig, ConfigError, NeighborConfig, VipBackends};
pub use routes::{log_list, routes_from_state};
pub mod fsm;
pub mod network;
pub mod status;

pub use fsm::StopMode;
pub use network::{Speaker, SpeakerError};
pub use status::{format_status, query_status, serve_status, NeighborStatus, SpeakerStatus};
