//! Writes every golden case's inputs under `pcap-tests/cases/<name>/` (README.md, state files,
//! input pcaps, case.json). `expected/` is left alone: the golden test writes it when run with
//! `NODEPLANE_UPDATE_GOLDEN=1`.
//!
//! `cargo run -p nodeplane-pcap-tests --bin gen-cases [-- OUT_DIR]`

use std::process::ExitCode;

fn main() -> ExitCode {
    let root = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(nodeplane_pcap_tests::cases_dir);
    match nodeplane_pcap_tests::gen::generate(&root) {
        Ok(names) => {
            println!("wrote {} cases under {}", names.len(), root.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-cases: {e}");
            ExitCode::FAILURE
        }
    }
}
