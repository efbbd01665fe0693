//! The foreground speaker process behind `nodeplane bgp run`: config + state path in, routes
//! out, until SIGTERM/SIGINT (withdraw, Cease, close) or SIGUSR1 (close without NOTIFICATION so
//! routers keep our routes under graceful restart while we are replaced).
//!
//! The state path (file or directory, as `nodeplane_state::load_path` reads it) is polled for
//! changes every 20 ms, so a change is announced well within 100 ms. A state that fails to load
//! keeps the last good routes announced and is reported on stderr (DESIGN.md §3.3).
//!
//! Change detection ([`fingerprint`]): metadata (mtime, ctime, inode, size) of every entry plus
//! a hash of each file's contents. Timestamps come from a coarse clock tick (a few ms on Linux,
//! seconds on some filesystems), so a rewrite of the same size within one tick keeps them all;
//! the contents of a file are therefore hashed again at every poll until it has been seen
//! unchanged at least [`RACY`] after its mtime (git's "racy clean" rule), and only then is its
//! hash carried over on unchanged metadata. The state is fingerprinted *before* it is loaded,
//! so a change made while it loads is seen by the first poll.
//!
//! The daemon (`nodeplane run` with a `bgp:` section) does not use this module: it feeds the
//! speaker from its own state source.

use std::hash::Hasher;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::BgpConfig;
use crate::fsm::StopMode;
use crate::network::{Speaker, SpeakerError};
use crate::routes::{log_list, routes_from_state};
use crate::status::{serve_status, StatusError};
use crate::sys;

const STATE_POLL: Duration = Duration::from_millis(20);
/// A file modified less than this before its contents were hashed may still change without
/// its metadata changing (same size, same timestamp tick); see the module doc.
const RACY: Duration = Duration::from_secs(2);

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
    // Before the load: a change made while the state loads differs from this fingerprint.
    let mut seen = fingerprint(&opts.state, &[]);
    let state = nodeplane_state::load_path(&opts.state)?;
    let mut routes = routes_from_state(&state, &cfg.announce);
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
        log_list(&routes)
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
        let now = fingerprint(&opts.state, &seen);
        let changed = !same(&seen, &now);
        // Kept even when unchanged: it records when each hash was taken.
        seen = now;
        if !changed {
            continue;
        }
        match nodeplane_state::load_path(&opts.state) {
            Ok(state) => {
                let new = routes_from_state(&state, &cfg.announce);
                if new != routes {
                    eprintln!("bgp: routes now {}", log_list(&new));
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

/// What is known of one file or directory entry at one poll.
#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    /// None: could not be read (missing, permissions).
    meta: Option<Meta>,
    /// Hash of a regular file's contents (None: not a file, or unreadable).
    content: Option<u64>,
    /// When `content` was computed.
    hashed_at: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    mtime: Option<SystemTime>,
    ctime: (i64, i64),
    ino: u64,
    len: u64,
    is_file: bool,
}

impl Meta {
    fn of(p: &Path) -> Option<Meta> {
        // Follows symlinks, as the loader does (ConfigMap mounts link files into `..data/`).
        let m = std::fs::metadata(p).ok()?;
        Some(Meta {
            mtime: m.modified().ok(),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            len: m.len(),
            is_file: m.is_file(),
        })
    }
}

/// Whether two fingerprints describe the same files (when hashes were taken does not count).
fn same(a: &[Entry], b: &[Entry]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.path == y.path && x.meta == y.meta && x.content == y.content)
}

/// The state file, or every entry of the state directory (sorted), with contents hashed as
/// the module doc explains. `prev` is the previous fingerprint (hashes are carried over).
fn fingerprint(path: &Path, prev: &[Entry]) -> Vec<Entry> {
    let now = SystemTime::now();
    let mut paths: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let meta = Meta::of(&p);
            let before = prev.iter().find(|e| e.path == p);
            entry(p, meta, before, now)
        })
        .collect()
}

/// One entry: the previous hash is reused only when the metadata is unchanged and that hash
/// was taken at least [`RACY`] after the file's mtime; otherwise the file is read again.
fn entry(path: PathBuf, meta: Option<Meta>, prev: Option<&Entry>, now: SystemTime) -> Entry {
    let Some(m) = meta.filter(|m| m.is_file) else {
        return Entry {
            path,
            meta,
            content: None,
            hashed_at: None,
        };
    };
    let settled = |e: &Entry| match (e.hashed_at, m.mtime) {
        (Some(at), Some(mtime)) => at.duration_since(mtime).is_ok_and(|d| d >= RACY),
        _ => false,
    };
    if let Some(e) = prev.filter(|e| e.meta == meta && e.content.is_some() && settled(e)) {
        return Entry {
            path,
            meta,
            content: e.content,
            hashed_at: e.hashed_at,
        };
    }
    let content = std::fs::read(&path).ok().map(|bytes| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write(&bytes);
        h.finish()
    });
    Entry {
        path,
        meta,
        content,
        hashed_at: Some(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rewrite of the same size within one timestamp tick leaves every piece of metadata as
    /// it was (simulated by handing `entry` the old metadata): the contents tell.
    #[test]
    fn same_size_rewrite_in_one_tick_is_a_change() {
        let dir = std::env::temp_dir().join(format!("np-bgp-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("state.yaml");
        std::fs::write(&f, "node: { pod_cidrs: [10.244.1.0/24] }\n").unwrap();
        let first = fingerprint(&dir, &[]);
        assert_eq!(first.len(), 1);
        let meta = first[0].meta;
        assert!(first[0].content.is_some());
        let now = SystemTime::now();
        std::fs::write(&f, "node: { pod_cidrs: [10.244.2.0/24] }\n").unwrap();
        let again = entry(f.clone(), meta, Some(&first[0]), now);
        assert_ne!(again.content, first[0].content, "contents hashed again");
        assert!(!same(&first, &[again]));
        // Metadata really changed (the usual case): seen as well.
        let later = fingerprint(&dir, &first);
        assert!(!same(&first, &later));
        // Nothing changed: the same fingerprint.
        assert!(same(&later, &fingerprint(&dir, &later)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A hash taken long enough after the file's mtime is trusted while the metadata stays the
    /// same (the file is not read again); a recent one is not.
    #[test]
    fn settled_hashes_are_reused_recent_ones_are_not() {
        let dir = std::env::temp_dir().join(format!("np-bgp-fp2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.yaml");
        std::fs::write(&f, "a").unwrap();
        let mut meta = Meta::of(&f).unwrap();
        let now = SystemTime::now();
        meta.mtime = Some(now - Duration::from_secs(10));
        let e1 = entry(f.clone(), Some(meta), None, now);
        assert!(e1.content.is_some());
        std::fs::remove_file(&f).unwrap();
        // Settled: reused without reading (the file is gone, a read would give no hash).
        let e2 = entry(f.clone(), Some(meta), Some(&e1), now + STATE_POLL);
        assert_eq!(e2.content, e1.content);
        // Racy (hashed 1 s after the mtime): read again, and the read fails.
        meta.mtime = Some(now - Duration::from_secs(1));
        let e3 = entry(f.clone(), Some(meta), Some(&e1), now + STATE_POLL);
        assert_eq!(e3.content, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
