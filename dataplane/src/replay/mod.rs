//! Replay: frames of pcap/pcapng captures run through the worker ([`io::ReplayIo`]), as
//! `nodeplane replay` and the daemon's `io: replay` do.

pub mod io;
pub mod pcap;

pub use io::{ReplayInput, ReplayIo, ReplayIoConfig, ReplayIoError, REPLAY_FRAME};
