//! The conntrack snapshot on the control side (format: `nodeplane_dataplane::snapshot`).
//!
//! ```text
//!  start: read <path> ── bad ──> log error, rename to <path>.bad, start empty (status: ignored)
//!           │ good: removed (used once), kept in memory
//!           ▼
//!  first worker start (spawn_workers): timers aged by the wall-clock time since the save,
//!  each flow to the worker that owns it (owner.rs, by its original key), affinity entries to
//!  every worker (a client's connections are owned by different workers); restored before
//!  the workers take their first burst
//!
//!  stop (before the workers stop) and `nodeplane ct save`: every worker's part (Query::Save)
//!  → <path>.tmp, fsync, rename onto <path>, fsync of the directory
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nodeplane_dataplane::owner::{owner_hash, owner_of, OwnerIndex};
use nodeplane_dataplane::snapshot::{SavedFlow, Snapshot};
use nodeplane_dataplane::worker::{Answer, Query};
use nodeplane_dataplane::Tables;

use super::Control;
use crate::api::{CtRestore, CtSaved};

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the new one, whole.
/// A missing directory is created (owner only), as the package creates `/var/lib/nodeplane`
/// for a daemon built from source.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = with_suffix(path, ".tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename itself survives a crash only once the directory is synced.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The snapshot's flows and affinity entries aged by `elapsed_ns` (the time the daemon was
/// away): those whose time ran out are left out.
fn aged(s: &Snapshot, elapsed_ns: u64) -> Snapshot {
    let flows = s
        .flows
        .iter()
        .filter(|f| f.remaining_ns > elapsed_ns)
        .map(|f| SavedFlow {
            remaining_ns: f.remaining_ns - elapsed_ns,
            age_ns: f.age_ns.saturating_add(elapsed_ns),
            idle_ns: f.idle_ns.saturating_add(elapsed_ns),
            ..*f
        })
        .collect();
    let mut affinity = s.affinity.clone();
    affinity.retain(|a| a.remaining_ns > elapsed_ns);
    for a in &mut affinity {
        a.remaining_ns -= elapsed_ns;
    }
    Snapshot {
        writer: s.writer.clone(),
        saved_unix_ms: s.saved_unix_ms,
        flows,
        affinity,
    }
}

/// The worker that owns each flow (the same rules the I/O applies to its packets).
fn owners(t: &Tables, flows: &[SavedFlow], workers: usize) -> Vec<Vec<SavedFlow>> {
    let idx = OwnerIndex::new(t);
    let mut parts = vec![Vec::new(); workers.max(1)];
    for f in flows {
        let k = &f.orig;
        let h = owner_hash(t, &idx, k.src, k.sport, k.dst, k.dport, k.proto);
        parts[owner_of(h, workers)].push(*f);
    }
    parts
}

impl Control {
    /// Where the conntrack snapshot is kept (config `conntrack_snapshot`); a snapshot found
    /// there is read now and restored when the workers start. Called once, at start.
    pub fn keep_snapshot_at(&mut self, path: PathBuf) {
        let shown = path.display().to_string();
        let report = |result: &str, error: Option<String>| CtRestore {
            path: shown.clone(),
            result: result.into(),
            error,
            writer: None,
            age_s: None,
            flows_saved: 0,
            flows_restored: 0,
            affinity_restored: 0,
        };
        self.snapshot_path = Some(path.clone());
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                log::info!("no conntrack snapshot at {shown}: starting with empty tables");
                return;
            }
            Err(e) => {
                log::error!(
                    "cannot read the conntrack snapshot {shown}: {e}; starting with empty tables"
                );
                self.restore_report = Some(report("ignored", Some(e.to_string())));
                return;
            }
        };
        match Snapshot::decode(&bytes) {
            Ok(s) => {
                // Used once: a later start after a crash (no save) must not bring these back.
                if let Err(e) = std::fs::remove_file(&path) {
                    log::warn!(
                        "cannot remove the conntrack snapshot {shown} after reading it: {e}"
                    );
                }
                let age_s = unix_ms().saturating_sub(s.saved_unix_ms) as f64 / 1000.0;
                log::info!(
                    "conntrack snapshot {shown}: {} flows, {} affinity entries, saved {age_s:.1} s ago by nodeplane {}; restored when the workers start",
                    s.flows.len(),
                    s.affinity.len(),
                    s.writer
                );
                self.restore_report = Some(CtRestore {
                    writer: Some(s.writer.clone()),
                    age_s: Some(age_s),
                    flows_saved: s.flows.len(),
                    ..report("pending", None)
                });
                self.pending_restore = Some(s);
            }
            Err(e) => {
                let bad = with_suffix(&path, ".bad");
                let moved = match std::fs::rename(&path, &bad) {
                    Ok(()) => format!("moved to {}", bad.display()),
                    Err(re) => format!("could not be moved aside: {re}"),
                };
                log::error!(
                    "conntrack snapshot {shown} IGNORED: {e} ({moved}); starting with empty tables, established connections through this node will be picked up again or reset"
                );
                self.restore_report = Some(report("ignored", Some(e.to_string())));
            }
        }
    }

    /// The snapshot's flows split by owner among `workers`, with the affinity entries, aged by
    /// the time since the save; `None` when there is nothing to restore.
    pub(super) fn restore_plan(
        &self,
        t: &Tables,
        workers: usize,
    ) -> Option<(Vec<Vec<SavedFlow>>, Snapshot)> {
        let s = self.pending_restore.as_ref()?;
        let elapsed_ns = unix_ms()
            .saturating_sub(s.saved_unix_ms)
            .saturating_mul(1_000_000);
        let s = aged(s, elapsed_ns);
        Some((owners(t, &s.flows, workers), s))
    }

    /// The workers started with the plan's `planned` flows: records what came in.
    pub(super) fn restored(
        &mut self,
        planned: usize,
        flows: usize,
        affinity: usize,
        skipped: usize,
    ) {
        let Some(s) = self.pending_restore.take() else {
            return;
        };
        log::info!(
            "conntrack snapshot restored: {flows} of {} flows ({} expired while the daemon was away, {skipped} entries skipped: no room or conflicting keys), {affinity} affinity entries (each into every worker)",
            s.flows.len(),
            s.flows.len().saturating_sub(planned),
        );
        if let Some(r) = &mut self.restore_report {
            r.result = "restored".into();
            r.flows_restored = flows;
            r.affinity_restored = affinity;
        }
    }

    pub(super) fn restore_report(&self) -> Option<CtRestore> {
        self.restore_report.clone()
    }

    /// Writes every worker's flows and affinity entries to the snapshot file (`ct save`, and
    /// at stop before the workers stop). With no workers running, a snapshot read at start
    /// and not restored yet is written back, so a start that never got a valid state loses
    /// nothing.
    pub fn save_snapshot(&mut self) -> Result<CtSaved, String> {
        let t0 = Instant::now();
        let Some(path) = self.snapshot_path.clone() else {
            return Err(
                "no conntrack snapshot file is configured (config `conntrack_snapshot`)".into(),
            );
        };
        let snap = if self.workers.is_empty() {
            match &self.pending_restore {
                Some(s) => s.clone(),
                None => Snapshot::new(unix_ms()),
            }
        } else {
            let mut snap = Snapshot::new(unix_ms());
            for a in self.ask(|| Query::Save)? {
                if let Answer::Saved(part) = a {
                    snap.add(*part);
                }
            }
            snap
        };
        let bytes = snap.encode();
        write_atomic(&path, &bytes).map_err(|e| {
            format!(
                "cannot write the conntrack snapshot {}: {e}",
                path.display()
            )
        })?;
        let saved = CtSaved {
            path: path.display().to_string(),
            flows: snap.flows.len(),
            affinity: snap.affinity.len(),
            bytes: bytes.len(),
            ms: t0.elapsed().as_secs_f64() * 1000.0,
        };
        log::info!(
            "conntrack snapshot written to {}: {} flows, {} affinity entries, {} bytes in {:.1} ms",
            saved.path,
            saved.flows,
            saved.affinity,
            saved.bytes,
            saved.ms
        );
        Ok(saved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeplane_dataplane::snapshot::SavedAffinity;
    use nodeplane_dataplane::{Addr, FlowKey};

    fn flow(remaining_ns: u64) -> SavedFlow {
        let k = FlowKey {
            src: Addr::v4([10, 0, 0, 1]),
            dst: Addr::v4([10, 0, 0, 2]),
            sport: 1,
            dport: 2,
            proto: 17,
        };
        SavedFlow {
            orig: k,
            reply: k.reversed(),
            state: nodeplane_dataplane::conntrack::FlowState::Open,
            fins: 0,
            policy: nodeplane_dataplane::PolicyVerdict::None,
            ended: None,
            src_identity: 0,
            dst_identity: 0,
            nat: None,
            packets: [1, 0],
            bytes: [60, 0],
            age_ns: 5,
            idle_ns: 1,
            remaining_ns,
        }
    }

    #[test]
    fn time_away_is_taken_off_the_timers() {
        let mut s = Snapshot::new(0);
        s.flows = vec![flow(100), flow(10)];
        s.affinity = vec![SavedAffinity {
            service: 1,
            client: Addr::v4([10, 0, 0, 1]),
            backend: Addr::v4([10, 0, 0, 9]),
            port: 80,
            remaining_ns: 10,
        }];
        let a = aged(&s, 10);
        assert_eq!(a.flows.len(), 1);
        assert_eq!(
            (
                a.flows[0].remaining_ns,
                a.flows[0].age_ns,
                a.flows[0].idle_ns
            ),
            (90, 15, 11)
        );
        assert!(a.affinity.is_empty());
    }

    #[test]
    fn atomic_write_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ct.snap");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert!(!with_suffix(&p, ".tmp").exists());
        // The state directory is created when it is missing.
        let nested = dir.path().join("var/lib/nodeplane/ct.snap");
        write_atomic(&nested, b"three").unwrap();
        assert_eq!(std::fs::read(&nested).unwrap(), b"three");
    }
}
