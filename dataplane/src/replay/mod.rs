//! Replay: frames of pcap/pcapng captures run through the worker ([`io::ReplayIo`]), as
//! `nodeplane replay` and the daemon's `io: replay` do.

pub mod io;
pub mod output;
pub mod pcap;

pub use io::{ReplayInput, ReplayIo, ReplayIoConfig, ReplayIoError, REPLAY_FRAME};
pub use output::{PcapFile, ReplayCounts};
pub use pcap::{read_ethernet, read_raw, CaptureError, Captured};
