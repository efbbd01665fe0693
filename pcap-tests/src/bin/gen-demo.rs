//! Writes the bundled demo capture `examples/capture/<iface>.pcap` for the example node.

use std::process::ExitCode;

use nodeplane_pcap_tests::{demo, pcapio, repo_root};

fn main() -> ExitCode {
    let state = match nodeplane_state::example::state() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gen-demo: the example state does not load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = repo_root().join("examples/capture");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("gen-demo: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for (iface, frames) in demo::build(&state) {
        let path = dir.join(format!("{iface}.pcap"));
        if let Err(e) = pcapio::write_pcap(&path, &frames) {
            eprintln!("gen-demo: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {} ({} packets)", path.display(), frames.len());
    }
    ExitCode::SUCCESS
}
