//! The foreground speaker process behind `nodeplane bgp run`: config + state path in, routes
//! out, until SIGTERM/SIGINT (withdraw, Cease, close) or SIGUSR1 (close without NOTIFICATION so
//! routers keep our routes under graceful restart while we are replaced).
//!
//! The state path (file or directory, as `nodeplane_state::load_path` reads it) is polled for
//! changes every 20 ms, so a change is announced well within 100 ms. A state that fails to load
//! keeps the last good routes announced and is reported on stderr (DESIGN.md §3.3).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::config::BgpConfig;
use crate::fsm::StopMode;
use crate::network::{Speaker, SpeakerError};
use crate::routes::routes_from_state;
use crate::status::{serve_status, StatusError};
use crate::sys;

const STATE_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub state: PathBuf,
    pub status_socket: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot load node state: {0}")]
    State(#[from] nodeplane_state::LoadError),
    #[error(transparent)]
    Speaker(#[from] SpeakerError),
    #[error(transparent)]
    Status(#[from] StatusError),
}

/// Runs until a signal; returns how it stopped.
pub fn run(opts: &RunOptions) -> Result<StopMode, RunError> {
    let cfg = BgpConfig::load(&opts.config)?;
    let state = nodeplane_state::load_path(&opts.state)?;
    let mut routes = routes_from_state(&state, &cfg.announce);
    let mut seen = fingerprint(&opts.state);
    sys::install_signal_handlers();
    let speaker = Speaker::start(&cfg, routes.clone())?;
    if let Some(path) = &opts.status_socket {
        serve_status(path, speaker.status_handle())?;
    }
    eprintln!(
        "bgp: speaker AS {} id {} up, {} neighbour(s), announcing {}",
        cfg.local_as,
        cfg.router_id,
        cfg.neighbors.len(),
        list(&routes)
    );
    let mode = loop {
        std::thread::sleep(STATE_POLL);
        let sigs = sys::take_signals();
        if sigs & (1 << libc::SIGUSR1) != 0 {
            break StopMode::Restart;
        }
        if sigs & ((1 << libc::SIGTERM) | (1 << libc::SIGINT)) != 0 {
            break StopMode::Withdraw;
        }
        let now = fingerprint(&opts.state);
        if now == seen {
            continue;
        }
        seen = now;
        match nodeplane_state::load_path(&opts.state) {
            Ok(state) => {
                let new = routes_from_state(&state, &cfg.announce);
                if new != routes {
                    eprintln!("bgp: routes now {}", list(&new));
                    routes = new;
                    speaker.set_routes(routes.clone());
                }
            }
            Err(e) => eprintln!("bgp: keeping the last good routes; new state rejected: {e}"),
        }
    };
    eprintln!("bgp: stopping ({mode:?})");
    speaker.shutdown(mode);
    if let Some(path) = &opts.status_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(mode)
}

/// Routes shown in a log line before "and N more": a node announcing thousands of VIPs must
/// not write a 60 KB line on every state change (the full set is in `nodeplane bgp status`).
const LOG_ROUTES: usize = 8;

fn list(routes: &BTreeSet<IpNet>) -> String {
    if routes.is_empty() {
        return "nothing".into();
    }
    let shown: Vec<String> = routes
        .iter()
        .take(LOG_ROUTES)
        .map(|r| r.to_string())
        .collect();
    let mut s = shown.join(", ");
    if routes.len() > LOG_ROUTES {
        s += &format!(
            " and {} more ({} routes)",
            routes.len() - LOG_ROUTES,
            routes.len()
        );
    }
    s
}

/// Modification times and sizes of the state file or of every entry of the state directory.
fn fingerprint(path: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let stat = |p: &Path| {
        let m = std::fs::metadata(p).ok();
        (
            p.to_path_buf(),
            m.as_ref().and_then(|m| m.modified().ok()),
            m.map(|m| m.len()).unwrap_or(0),
        )
    };
    if path.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| stat(&e.path()))
            .collect();
        v.sort();
        v
    } else {
        vec![stat(path)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> BTreeSet<IpNet> {
        (0..n)
            .map(|k| format!("10.{}.{}.0/24", k / 256, k % 256).parse().unwrap())
            .collect()
    }

    #[test]
    fn route_list_in_log_lines_is_bounded() {
        assert_eq!(list(&set(0)), "nothing");
        assert_eq!(list(&set(2)), "10.0.0.0/24, 10.0.1.0/24");
        assert_eq!(list(&set(LOG_ROUTES)).matches(", ").count(), LOG_ROUTES - 1);
        let big = list(&set(3000));
        assert!(big.len() < 200, "{big}");
        assert!(big.starts_with("10.0.0.0/24, 10.0.1.0/24,"), "{big}");
        assert!(big.ends_with(" and 2992 more (3000 routes)"), "{big}");
    }
}
