//! Golden replay cases for `nodeplane replay`: see `README.md`.
//!
//! - [`gen`]: the generator of every case (states, input captures, `case.json`, `README.md`);
//! - [`spec`]: `case.json`, the per-case expectations checked on top of the goldens;
//! - [`wire`]: an independent decoder and checksum verifier for the checks;
//! - [`pkt`]: frame construction (etherparse `PacketBuilder`, fragments, malformed frames);
//! - [`pcapio`]: pcap/pcapng reading and writing.

pub mod demo;
pub mod gen;
pub mod pcapio;
pub mod pkt;
pub mod spec;
pub mod wire;

use std::path::PathBuf;

/// `pcap-tests/cases`.
pub fn cases_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cases")
}

/// The repository root (parent of `pcap-tests`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("pcap-tests sits inside the repository")
        .to_path_buf()
}

/// A fresh directory `<temp>/np-<what>-<pid>-<tag>` (a leftover of the same name is removed
/// first), removed on drop, also when the test fails.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str, tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("np-{what}-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
