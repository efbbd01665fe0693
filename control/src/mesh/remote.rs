//! One remote cluster's store: connect, list the exported directories at one revision, replace
//! the cluster's view whole, watch from the next revision and apply events; on failure keep the
//! view (the last good state), mark the cluster down once, back off on [`Reconnect`], start over.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchResponse};
use tokio::time::Instant;

use super::{export, lock, now_unix_ms, Export, MeshConfig, Shared, EXPORTED_DIRS};
use crate::source::etcd::{connect, describe, sleep_checking, EtcdConfig, Reconnect};

enum End {
    Stopped,
    /// The watch start revision was compacted: list again on the same connection.
    Compacted,
    Failed(String),
}

struct Remote<'a> {
    name: &'a str,
    id: u8,
    ecfg: EtcdConfig,
    max_bytes: u64,
    shared: &'a Shared,
    stop: &'a AtomicBool,
}

pub(super) async fn run(
    cfg: Arc<MeshConfig>,
    idx: usize,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    let c = &cfg.clusters[idx];
    let r = Remote {
        name: &c.name,
        id: c.id,
        ecfg: cfg.remote_etcd(c),
        max_bytes: cfg.max_value_bytes,
        shared: &shared,
        stop: &stop,
    };
    let mut reconnect = Reconnect::new(cfg.backoff.clone(), fastrand::u64(..) ^ idx as u64);
    let mut reported_down = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let attempt = match r.ecfg.connect_options() {
            Ok(opts) => connect(&r.ecfg, opts).await,
            Err(e) => Err(e.to_string()),
        };
        let err = match attempt {
            Ok(mut client) => loop {
                match r
                    .session(&mut client, &mut reconnect, &mut reported_down)
                    .await
                {
                    End::Compacted => continue,
                    End::Stopped => return,
                    End::Failed(e) => break e,
                }
            },
            Err(e) => e,
        };
        let kept = r.down(&err);
        if !reported_down {
            reported_down = true;
            log::warn!(
                "mesh: cluster {} unavailable ({err}); keeping its last mirrored state ({kept} keys), local forwarding is not affected",
                r.name
            );
        }
        let now = Instant::now();
        let next = reconnect.next_attempt(now, 0);
        crate::warn_limited!(
            "mesh-remote-attempt",
            "mesh: cluster {} attempt failed: {err}; next attempt in {} ms",
            r.name,
            next.saturating_duration_since(now).as_millis()
        );
        if !sleep_checking(next, &stop).await {
            return;
        }
    }
}

impl Remote<'_> {
    /// Marks the cluster down, keeping its keys; returns how many are kept.
    fn down(&self, err: &str) -> usize {
        let mut views = lock(self.shared);
        let v = views.entry(self.name.to_string()).or_default();
        if v.connected || v.detail != err {
            if v.connected {
                v.since_unix_ms = now_unix_ms();
            }
            v.connected = false;
            v.detail = if v.authoritative {
                format!("{err}; keeping the last mirrored state")
            } else {
                err.to_string()
            };
            self.shared.changed.notify_one();
        }
        v.desired.len()
    }

    async fn list(
        &self,
        client: &mut Client,
    ) -> Result<(i64, u64, Vec<(String, Vec<u8>)>), String> {
        let mut rev = 0;
        let mut store_id = 0;
        let mut kvs = Vec::new();
        for dir in EXPORTED_DIRS {
            let key = format!("{}/{dir}", self.ecfg.prefix);
            // The first directory fixes the revision, the others are read at it: one cut.
            let mut opts = GetOptions::new().with_prefix();
            if rev > 0 {
                opts = opts.with_revision(rev);
            }
            let resp = match tokio::time::timeout(
                self.ecfg.request_timeout(),
                client.get(key.as_str(), Some(opts)),
            )
            .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(format!("list {key}: {}", describe(&e))),
                Err(_) => return Err(format!("list {key}: timed out")),
            };
            if let Some(h) = resp.header() {
                if rev == 0 {
                    rev = h.revision();
                }
                store_id = h.cluster_id();
            }
            for kv in resp.kvs() {
                kvs.push((
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                ));
            }
        }
        Ok((rev, store_id, kvs))
    }

    fn rel<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.ecfg.prefix.as_str())?
            .strip_prefix('/')
    }

    /// Applies one key's new value (or deletion) to the maps.
    fn apply(
        &self,
        desired: &mut BTreeMap<String, Vec<u8>>,
        filtered: &mut BTreeMap<String, String>,
        rel: &str,
        value: Option<&[u8]>,
    ) {
        desired.remove(rel);
        filtered.remove(rel);
        let Some(value) = value else { return };
        match export(rel, value, self.id, self.max_bytes) {
            Export::Mirror => {
                desired.insert(rel.to_string(), value.to_vec());
            }
            Export::NotExported => {}
            Export::Filtered(why) => {
                crate::warn_limited!(
                    "mesh-filtered",
                    "mesh: cluster {} key {rel} not mirrored: {why}",
                    self.name
                );
                filtered.insert(rel.to_string(), why);
            }
        }
    }

    async fn session(
        &self,
        client: &mut Client,
        reconnect: &mut Reconnect,
        reported_down: &mut bool,
    ) -> End {
        let (rev, store_id, kvs) = match self.list(client).await {
            Ok(x) => x,
            Err(e) => return End::Failed(e),
        };
        let mut desired = BTreeMap::new();
        let mut filtered = BTreeMap::new();
        for (k, v) in &kvs {
            if let Some(rel) = self.rel(k) {
                self.apply(&mut desired, &mut filtered, rel, Some(v));
            }
        }
        let keys = desired.len();
        {
            // The list replaces the view whole: keys deleted while we were away vanish.
            let mut views = lock(self.shared);
            let v = views.entry(self.name.to_string()).or_default();
            v.desired = desired;
            v.filtered = filtered;
            v.authoritative = true;
            v.connected = true;
            v.generation += 1;
            v.revision = rev;
            v.store_id = store_id;
            v.since_unix_ms = now_unix_ms();
            v.detail = format!("synced {keys} keys at revision {rev}");
            self.shared.changed.notify_one();
        }
        if *reported_down {
            log::info!(
                "mesh: cluster {} back: synced {keys} keys at revision {rev}",
                self.name
            );
        } else {
            log::info!(
                "mesh: cluster {} synced {keys} keys at revision {rev}",
                self.name
            );
        }
        *reported_down = false;

        let mut streams = Vec::new();
        for dir in EXPORTED_DIRS {
            let key = format!("{}/{dir}", self.ecfg.prefix);
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(rev + 1);
            match tokio::time::timeout(
                self.ecfg.request_timeout(),
                client.watch(key.as_str(), Some(opts)),
            )
            .await
            {
                Ok(Ok(s)) => streams.push(s),
                Ok(Err(e)) => return End::Failed(format!("watch {key}: {}", describe(&e))),
                Err(_) => return End::Failed(format!("watch {key}: timed out")),
            }
        }
        let [s0, s1, s2] = &mut streams[..] else {
            unreachable!("three exported directories")
        };
        let mut created = 0;
        loop {
            let msg = tokio::select! {
                m = s0.message() => m,
                m = s1.message() => m,
                m = s2.message() => m,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if self.stop.load(Ordering::Relaxed) {
                        return End::Stopped;
                    }
                    continue;
                }
            };
            let resp: WatchResponse = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return End::Failed("watch stream closed".into()),
                Err(e) => return End::Failed(format!("watch: {}", describe(&e))),
            };
            if resp.compact_revision() > 0 {
                log::info!(
                    "mesh: cluster {}: watch revision compacted (store compacted to {}): full resync",
                    self.name,
                    resp.compact_revision()
                );
                return End::Compacted;
            }
            if resp.canceled() {
                return End::Failed(format!("watch canceled: {}", resp.cancel_reason()));
            }
            if resp.created() {
                created += 1;
                // The schedule starts over only once the whole cycle works.
                if created == EXPORTED_DIRS.len() {
                    reconnect.reset();
                }
            }
            if resp.events().is_empty() {
                continue;
            }
            let mut views = lock(self.shared);
            let v = views.entry(self.name.to_string()).or_default();
            let (mut desired, mut filtered) = (
                std::mem::take(&mut v.desired),
                std::mem::take(&mut v.filtered),
            );
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key());
                let Some(rel) = self.rel(&key) else { continue };
                let value = match ev.event_type() {
                    EventType::Put => Some(kv.value()),
                    EventType::Delete => None,
                };
                self.apply(&mut desired, &mut filtered, rel, value);
                v.revision = v.revision.max(kv.mod_revision());
            }
            v.desired = desired;
            v.filtered = filtered;
            v.generation += 1;
            v.detail = format!("synced {} keys at revision {}", v.desired.len(), v.revision);
            self.shared.changed.notify_one();
        }
    }
}
