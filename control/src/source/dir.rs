//! The node-local state directory (the default source): inotify on the directory, debounced,
//! then the whole directory re-read and validated with [`nodeplane_state::load_path`].
//!
//! ```text
//!  inotify(dir) ─ events ─> debounce (quiet for `debounce`) ─> load_path(dir) ─┬─ Snapshot
//!        ^ no event for 100 ms: check `stop`                                    └─ Rejected(error text)
//! ```
//!
//! - Editors that write a temporary file and rename it into place show up as `MOVED_TO`;
//!   deletions as `DELETE`; Kubernetes ConfigMap mounts swap their `..data` link by rename. All
//!   of them only trigger a re-read of the whole directory, so the order of events never matters.
//! - The debounce collapses the bursts of events one save makes (write, close, rename) and
//!   multi-file changes made within the window into one load.
//! - The thread blocks in `epoll_wait` (mio) on the inotify descriptor with a 100 ms timeout
//!   (to see `stop`); it never polls the files.
//! - If the directory disappears, the source reports `Rejected` and re-arms its watch once a
//!   second until the directory is back (then it re-reads it).
//! - A `*.yaml` name that is not a readable regular file (dangling symlink, symlink loop,
//!   directory, FIFO) or a file over `state.limits` rejects the load whole
//!   ([`nodeplane_state::load_path_limited`]): never skipped.
//! - A reload that yields the same state as the last snapshot sent is not sent again (touching
//!   a file must not make every flow re-check its policy).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::Sender;
use inotify::{Inotify, WatchMask};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nodeplane_state::{Limits, State};

use super::{SourceEvent, StateSource};

pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(75);
const STOP_CHECK: Duration = Duration::from_millis(100);
const REARM_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct DirSource {
    path: PathBuf,
    debounce: Duration,
    limits: Limits,
}

impl DirSource {
    pub fn new(path: impl Into<PathBuf>) -> DirSource {
        DirSource {
            path: path.into(),
            debounce: DEFAULT_DEBOUNCE,
            limits: Limits::default(),
        }
    }

    /// Bounds every load by `limits` (the daemon config's `state.limits`).
    pub fn with_limits(mut self, limits: Limits) -> DirSource {
        self.limits = limits;
        self
    }

    pub fn with_debounce(mut self, d: Duration) -> DirSource {
        self.debounce = d;
        self
    }
}

/// What the last message said, so an unchanged state is not sent twice.
#[derive(Debug, PartialEq)]
enum Last {
    Nothing,
    Sent(Box<State>),
    Rejected(String),
}

/// The directory watched: the path itself, or a file's parent directory.
fn watch_dir(path: &Path) -> PathBuf {
    if path.is_file() {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    } else {
        path.to_path_buf()
    }
}

struct Watch {
    inotify: Inotify,
    poll: Poll,
}

fn arm(path: &Path) -> std::io::Result<Watch> {
    let inotify = Inotify::init()?;
    let mask = WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR;
    inotify.watches().add(watch_dir(path), mask)?;
    let poll = Poll::new()?;
    poll.registry().register(
        &mut SourceFd(&inotify.as_raw_fd()),
        Token(0),
        Interest::READABLE,
    )?;
    Ok(Watch { inotify, poll })
}

impl DirSource {
    fn load(&self, last: &mut Last, tx: &Sender<SourceEvent>) -> bool {
        let origin = format!("dir {}", self.path.display());
        let event = match nodeplane_state::load_path_limited(&self.path, &self.limits) {
            Ok(state) => {
                if matches!(last, Last::Sent(s) if **s == state) {
                    return true;
                }
                *last = Last::Sent(Box::new(state.clone()));
                SourceEvent::Snapshot {
                    state: Box::new(state),
                    origin,
                }
            }
            Err(e) => {
                let error = e.to_string();
                if matches!(last, Last::Rejected(prev) if *prev == error) {
                    return true;
                }
                *last = Last::Rejected(error.clone());
                SourceEvent::Rejected { origin, error }
            }
        };
        tx.send(event).is_ok()
    }
}

impl StateSource for DirSource {
    fn name(&self) -> String {
        format!("dir {}", self.path.display())
    }

    fn run(self: Box<Self>, tx: Sender<SourceEvent>, stop: Arc<AtomicBool>) {
        let mut last = Last::Nothing;
        let mut watch: Option<Watch> = None;
        let mut last_arm = Instant::now() - REARM_EVERY;
        // A change is pending until the directory has been quiet for `debounce`. The first
        // read is due at once: a (re)start of the daemon waits for no debounce before it can
        // publish and take traffic again (a change right after is seen by the watch).
        let mut pending: Option<Instant> = Some(
            Instant::now()
                .checked_sub(self.debounce)
                .unwrap_or_else(Instant::now),
        );
        let mut events = Events::with_capacity(8);
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            if watch.is_none() && last_arm.elapsed() >= REARM_EVERY {
                last_arm = Instant::now();
                match arm(&self.path) {
                    Ok(w) => {
                        watch = Some(w);
                        // Anything may have changed while unwatched.
                        pending.get_or_insert_with(Instant::now);
                    }
                    Err(e) => {
                        let origin = self.name();
                        let error = format!("cannot watch {}: {e}", self.path.display());
                        if last != Last::Rejected(error.clone()) {
                            log::warn!("{error}; retrying every second");
                            last = Last::Rejected(error.clone());
                            if tx.send(SourceEvent::Rejected { origin, error }).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            let timeout = match pending {
                Some(since) => (since + self.debounce)
                    .saturating_duration_since(Instant::now())
                    .min(STOP_CHECK),
                None => STOP_CHECK,
            };
            let mut lost = false;
            match &mut watch {
                Some(w) => {
                    if let Err(e) = w.poll.poll(&mut events, Some(timeout)) {
                        if e.kind() != std::io::ErrorKind::Interrupted {
                            crate::warn_limited!(
                                "dir-inotify",
                                "inotify poll on {}: {e}",
                                self.path.display()
                            );
                            lost = true;
                        }
                    }
                    loop {
                        match w.inotify.read_events(&mut buf) {
                            Ok(evs) => {
                                let mut any = false;
                                for ev in evs {
                                    any = true;
                                    if ev.mask.intersects(
                                        inotify::EventMask::DELETE_SELF
                                            | inotify::EventMask::MOVE_SELF
                                            | inotify::EventMask::IGNORED,
                                    ) {
                                        lost = true;
                                    }
                                }
                                if !any {
                                    break;
                                }
                                // Restart the quiet period.
                                pending = Some(Instant::now());
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                crate::warn_limited!(
                                    "dir-inotify",
                                    "inotify read on {}: {e}",
                                    self.path.display()
                                );
                                lost = true;
                                break;
                            }
                        }
                    }
                }
                None => std::thread::sleep(timeout),
            }
            if lost {
                watch = None;
                pending = Some(Instant::now());
            }
            if let Some(since) = pending {
                if since.elapsed() >= self.debounce {
                    pending = None;
                    if !self.load(&mut last, &tx) {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam::channel::{unbounded, Receiver};

    fn write_example(dir: &Path) {
        for (name, text) in nodeplane_state::example::FILES {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    fn next(rx: &Receiver<SourceEvent>) -> SourceEvent {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("an event within 5 s")
    }

    fn start(
        dir: &Path,
    ) -> (
        Receiver<SourceEvent>,
        Arc<AtomicBool>,
        std::thread::JoinHandle<()>,
    ) {
        let (tx, rx) = unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Box::new(DirSource::new(dir).with_debounce(Duration::from_millis(30)));
        let st = stop.clone();
        let h = std::thread::spawn(move || s.run(tx, st));
        (rx, stop, h)
    }

    #[test]
    fn initial_load_change_rejection_rename_and_delete() {
        let d = tempfile::tempdir().unwrap();
        write_example(d.path());
        let (rx, stop, h) = start(d.path());
        let SourceEvent::Snapshot { state, .. } = next(&rx) else {
            panic!("expected the initial snapshot")
        };
        assert_eq!(state.services.len(), 5);

        // A broken file: rejected with the file and field named.
        let bad = "services:\n  - name: extra\n    type: ClusterIP\n    frontends: [{ ip: 10.96.0.99, port: 0 }]\n";
        std::fs::write(d.path().join("zz-extra.yaml"), bad).unwrap();
        let SourceEvent::Rejected { error, .. } = next(&rx) else {
            panic!("expected a rejection")
        };
        assert!(error.contains("zz-extra.yaml"), "{error}");
        assert!(error.contains("services[extra]"), "{error}");

        // An editor's save: write a temporary file, rename it into place.
        let good = bad.replace("port: 0", "port: 80");
        std::fs::write(d.path().join(".zz-extra.yaml.tmp"), &good).unwrap();
        std::fs::rename(
            d.path().join(".zz-extra.yaml.tmp"),
            d.path().join("zz-extra.yaml"),
        )
        .unwrap();
        let SourceEvent::Snapshot { state, .. } = next(&rx) else {
            panic!("expected the fixed snapshot")
        };
        assert_eq!(state.services.len(), 6);

        // Deleting the file goes back to the example's five services.
        std::fs::remove_file(d.path().join("zz-extra.yaml")).unwrap();
        let SourceEvent::Snapshot { state, .. } = next(&rx) else {
            panic!("expected a snapshot after the delete")
        };
        assert_eq!(state.services.len(), 5);

        // Touching a file without changing it sends nothing.
        let f = d.path().join("node.yaml");
        let text = std::fs::read_to_string(&f).unwrap();
        std::fs::write(&f, text).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());

        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }

    #[test]
    fn missing_directory_is_rejected_then_picked_up() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state");
        let (rx, stop, h) = start(&path);
        let SourceEvent::Rejected { error, .. } = next(&rx) else {
            panic!("expected a rejection")
        };
        assert!(error.contains("state"), "{error}");
        std::fs::create_dir(&path).unwrap();
        write_example(&path);
        loop {
            match next(&rx) {
                SourceEvent::Snapshot { state, .. } => {
                    assert_eq!(state.services.len(), 5);
                    break;
                }
                SourceEvent::Rejected { .. } => continue,
                e => panic!("unexpected {e:?}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let t = Instant::now();
        h.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
