//! The local store: connect (with backoff), list `mesh/`, remove the keys of clusters no longer
//! configured, then bring each cluster's `mesh/<cluster>/` to its view with the fewest writes;
//! and the status file after every change.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Client, DeleteOptions, GetOptions, Txn, TxnOp};
use tokio::time::Instant;

use super::status::write_status;
use super::{
    lock, now_unix_ms, plan, ClusterStatus, LocalStatus, MeshConfig, MeshStatus, Op, Shared,
    MESH_DIR,
};
use crate::source::etcd::{connect, describe, EtcdConfig, Reconnect};

/// Operations per transaction (etcd's `--max-txn-ops` defaults to 128).
const TXN_OPS: usize = 64;

struct Local {
    client: Client,
    /// The local store's etcd cluster id.
    store_id: u64,
    /// What the local store holds under `mesh/<cluster>/`, by cluster and relative key.
    actual: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// The view generation last written, by cluster.
    written: BTreeMap<String, u64>,
}

struct Writer<'a> {
    cfg: &'a MeshConfig,
    ecfg: EtcdConfig,
    shared: &'a Shared,
    local: Option<Local>,
    status: LocalStatus,
    last_status: Option<MeshStatus>,
}

pub(super) async fn run(cfg: &MeshConfig, shared: &Shared, stop: &AtomicBool) {
    let mut w = Writer {
        cfg,
        ecfg: cfg.local_etcd(),
        shared,
        local: None,
        status: LocalStatus {
            connected: false,
            since_unix_ms: now_unix_ms(),
            detail: "not connected yet".into(),
        },
        last_status: None,
    };
    let mut reconnect = Reconnect::new(cfg.backoff.clone(), fastrand::u64(..));
    let mut next_attempt = Instant::now();
    let mut reported_down = false;
    loop {
        if w.local.is_none() && Instant::now() >= next_attempt {
            match w.connect().await {
                Ok(l) => {
                    reconnect.reset();
                    log::info!("mesh: local store connected ({})", w.status_detail(&l));
                    w.status = LocalStatus {
                        connected: true,
                        since_unix_ms: now_unix_ms(),
                        detail: w.status_detail(&l),
                    };
                    w.local = Some(l);
                    reported_down = false;
                }
                Err(e) => {
                    let now = Instant::now();
                    next_attempt = reconnect.next_attempt(now, 0);
                    w.local_down(
                        &e,
                        &mut reported_down,
                        next_attempt.saturating_duration_since(now),
                    );
                }
            }
        }
        if w.local.is_some() {
            if let Err(e) = w.reconcile().await {
                w.local = None;
                let now = Instant::now();
                next_attempt = reconnect.next_attempt(now, 0);
                w.local_down(
                    &e,
                    &mut reported_down,
                    next_attempt.saturating_duration_since(now),
                );
            }
        }
        w.write_status();
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // Wake on a change (then let more arrive for debounce_ms) or every 100 ms for `stop`.
        if tokio::time::timeout(Duration::from_millis(100), shared.changed.notified())
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(cfg.debounce_ms)).await;
        }
    }
}

impl Writer<'_> {
    fn status_detail(&self, l: &Local) -> String {
        let keys: usize = l.actual.values().map(|m| m.len()).sum();
        format!(
            "{} mirrored keys under {}/{MESH_DIR}/",
            keys, self.cfg.local.prefix
        )
    }

    fn local_down(&mut self, err: &str, reported: &mut bool, next: Duration) {
        if !*reported {
            *reported = true;
            log::warn!("mesh: local store unavailable ({err}); mirrored keys wait for it");
            self.status = LocalStatus {
                connected: false,
                since_unix_ms: now_unix_ms(),
                detail: err.to_string(),
            };
        }
        self.status.detail = err.to_string();
        crate::warn_limited!(
            "mesh-local-attempt",
            "mesh: local store attempt failed: {err}; next attempt in {} ms",
            next.as_millis()
        );
    }

    fn mesh_prefix(&self) -> String {
        format!("{}/{MESH_DIR}/", self.cfg.local.prefix)
    }

    /// Connects, reads the store id and every mirrored key, removes unconfigured clusters.
    async fn connect(&self) -> Result<Local, String> {
        let opts = self.ecfg.connect_options().map_err(|e| e.to_string())?;
        let mut client = connect(&self.ecfg, opts).await?;
        let t = self.ecfg.request_timeout();
        let prefix = self.mesh_prefix();
        let resp = match tokio::time::timeout(
            t,
            client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("list {prefix}: {}", describe(&e))),
            Err(_) => return Err(format!("list {prefix}: timed out")),
        };
        let store_id = resp.header().map(|h| h.cluster_id()).unwrap_or(0);
        let mut actual: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let Some((cluster, rel)) = key
                .strip_prefix(prefix.as_str())
                .and_then(|r| r.split_once('/'))
            else {
                continue;
            };
            actual
                .entry(cluster.to_string())
                .or_default()
                .insert(rel.to_string(), kv.value().to_vec());
        }
        let stale: Vec<String> = actual
            .keys()
            .filter(|c| !self.cfg.clusters.iter().any(|r| &r.name == *c))
            .cloned()
            .collect();
        for c in stale {
            let n = actual.remove(&c).map_or(0, |m| m.len());
            let dir = format!("{prefix}{c}/");
            match tokio::time::timeout(
                t,
                client.delete(dir.as_str(), Some(DeleteOptions::new().with_prefix())),
            )
            .await
            {
                Ok(Ok(_)) => log::info!(
                    "mesh: cluster {c} is no longer configured: removed its {n} mirrored keys ({dir})"
                ),
                Ok(Err(e)) => return Err(format!("delete {dir}: {}", describe(&e))),
                Err(_) => return Err(format!("delete {dir}: timed out")),
            }
        }
        Ok(Local {
            client,
            store_id,
            actual,
            written: BTreeMap::new(),
        })
    }

    /// Writes every cluster whose view changed since it was last written.
    async fn reconcile(&mut self) -> Result<(), String> {
        let t = self.ecfg.request_timeout();
        let prefix = self.mesh_prefix();
        let Some(local) = self.local.as_mut() else {
            return Ok(());
        };
        for rc in &self.cfg.clusters {
            let (gen, desired) = {
                let mut views = lock(self.shared);
                let Some(v) = views.get_mut(&rc.name) else {
                    continue;
                };
                // Same etcd cluster and same prefix: the "remote" is this store (two URLs of
                // one store pass the config check). Never mirror it into itself.
                let same = v.store_id != 0
                    && v.store_id == local.store_id
                    && rc.prefix == self.cfg.local.prefix;
                if same != v.refused {
                    v.refused = same;
                    v.since_unix_ms = now_unix_ms();
                    if same {
                        log::error!(
                            "mesh: cluster {} is the local store (etcd cluster id {:x}, prefix {}): never mirrored into itself; fix clusters[].endpoints",
                            rc.name, local.store_id, rc.prefix
                        );
                    }
                }
                if same {
                    v.detail = format!(
                        "refused: its store is the local store (etcd cluster id {:x}) under the same prefix",
                        local.store_id
                    );
                }
                // Only a whole list is authoritative: before it (mirror restarted while the
                // store is down) the local keys stay.
                if !v.authoritative
                    || v.refused
                    || local.written.get(&rc.name) == Some(&v.generation)
                {
                    continue;
                }
                (v.generation, v.desired.clone())
            };
            let actual = local.actual.entry(rc.name.clone()).or_default();
            let ops = plan(&desired, actual);
            for chunk in ops.chunks(TXN_OPS) {
                let txn = Txn::new().and_then(
                    chunk
                        .iter()
                        .map(|op| match op {
                            Op::Put(k, v) => {
                                TxnOp::put(format!("{prefix}{}/{k}", rc.name), v.clone(), None)
                            }
                            Op::Delete(k) => {
                                TxnOp::delete(format!("{prefix}{}/{k}", rc.name), None)
                            }
                        })
                        .collect::<Vec<_>>(),
                );
                match tokio::time::timeout(t, local.client.txn(txn)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        return Err(format!("write {prefix}{}/: {}", rc.name, describe(&e)))
                    }
                    Err(_) => return Err(format!("write {prefix}{}/: timed out", rc.name)),
                }
                for op in chunk {
                    match op {
                        Op::Put(k, v) => {
                            actual.insert(k.clone(), v.clone());
                        }
                        Op::Delete(k) => {
                            actual.remove(k);
                        }
                    }
                }
            }
            if !ops.is_empty() {
                log::debug!("mesh: cluster {}: {} writes", rc.name, ops.len());
            }
            local.written.insert(rc.name.clone(), gen);
        }
        let detail = {
            let keys: usize = local.actual.values().map(|m| m.len()).sum();
            format!("{keys} mirrored keys under {prefix}")
        };
        self.status.detail = detail;
        Ok(())
    }

    fn write_status(&mut self) {
        let views = lock(self.shared);
        let clusters = self
            .cfg
            .clusters
            .iter()
            .map(|rc| {
                let v = views.get(&rc.name);
                let count = |dir: &str| {
                    v.map_or(0, |v| {
                        v.desired.keys().filter(|k| k.starts_with(dir)).count()
                    })
                };
                let written = match (&self.local, v) {
                    (Some(l), Some(v)) => {
                        v.authoritative && l.written.get(&rc.name) == Some(&v.generation)
                    }
                    _ => false,
                };
                ClusterStatus {
                    name: rc.name.clone(),
                    id: rc.id,
                    state: v.map_or(super::ClusterState::Connecting, |v| v.state()),
                    since_unix_ms: v.map_or(0, |v| v.since_unix_ms),
                    revision: v.map_or(0, |v| v.revision),
                    identities: count("identities/"),
                    ipcache: count("ipcache/"),
                    services: count("services/"),
                    filtered: v.map_or(0, |v| v.filtered.len()),
                    filtered_example: v
                        .and_then(|v| v.filtered.iter().next())
                        .map(|(k, why)| format!("{k}: {why}")),
                    written,
                    detail: v.map_or(String::new(), |v| v.detail.clone()),
                }
            })
            .collect();
        drop(views);
        let status = MeshStatus {
            cluster: self.cfg.cluster.name.clone(),
            cluster_id: self.cfg.cluster.id,
            local: self.status.clone(),
            clusters,
        };
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        if let Err(e) = write_status(&self.cfg.status_file, &status) {
            crate::warn_limited!(
                "mesh-status-file",
                "mesh: cannot write the status file {}: {e}",
                self.cfg.status_file.display()
            );
            return;
        }
        self.last_status = Some(status);
    }
}
