//! `nodeplane detach`: removes the XDP program that outlives the daemon (its links pinned in
//! `io.afxdp.pin_dir`), handing the node's traffic back to its kernel. For uninstalling (the
//! package's `prerm` runs it at removal) or for running the node without nodeplane; never
//! needed for a restart or an upgrade, where the next daemon takes the program over.

use std::path::PathBuf;
use std::process::ExitCode;

use nodeplane_control::daemon::config::Config;
use nodeplane_control::runtime::DEFAULT_PIN_DIR;

use super::CliResult;

/// The config the unit uses.
const DEFAULT_CONFIG: &str = "/etc/nodeplane/config.yaml";

#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// The daemon's config, for `io.afxdp.pin_dir` (default: /etc/nodeplane/config.yaml if
    /// it exists, else the default pin directory).
    #[arg(long, conflicts_with = "pin_dir")]
    config: Option<PathBuf>,
    /// The pin directory itself.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
}

pub fn run(args: DetachArgs) -> CliResult {
    let dir = match (args.pin_dir, args.config) {
        (Some(d), _) => d,
        (None, cfg) => {
            let path = cfg.or_else(|| {
                let p = PathBuf::from(DEFAULT_CONFIG);
                p.exists().then_some(p)
            });
            let pin_dir = match path {
                // No `io.afxdp` now does not mean nothing was pinned by an earlier config.
                Some(p) => match Config::load(&p)?.io.afxdp {
                    Some(a) => a.pin_dir,
                    None => Some(PathBuf::from(DEFAULT_PIN_DIR)),
                },
                None => Some(PathBuf::from(DEFAULT_PIN_DIR)),
            };
            match pin_dir {
                Some(d) => d,
                None => {
                    println!("io.afxdp.pin_dir is null: nothing is pinned, nothing to detach");
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    };
    let removed = nodeplane_xdp::pin::unpin_all(&dir).map_err(|e| {
        format!(
            "cannot remove the pinned XDP links in {}: {e}",
            dir.display()
        )
    })?;
    if removed.is_empty() {
        println!("no XDP link pinned in {}", dir.display());
    }
    // The node's own traffic back on the kernel's paths (a host interface's routes and rules;
    // nothing when there were none). The pair itself stays, inert.
    nodeplane_control::runtime::host::teardown()
        .map_err(|e| format!("cannot remove the host interface's routes and rules: {e}"))?;
    for l in &removed {
        println!(
            "{}: XDP ({}) unpinned ({}); detached once no running daemon holds it",
            l.iface,
            l.mode,
            l.path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
