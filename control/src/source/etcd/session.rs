//! One connection to the store and the loop around it: connect (TCP probe, client, status),
//! list at revision R, publish, watch from R + 1 with debouncing, allocate and release
//! identities; on failure report the store down once, back off on [`Reconnect`] and start over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use nodeplane_state::State;
use tokio::time::Instant;

use super::{Cache, EtcdConfig, EtcdSource, Reconnect};
use crate::identity::IdentityAllocator;
use crate::source::SourceEvent;

/// Why a session (one connection) ended.
enum End {
    Stopped,
    /// The watch start revision was compacted: re-list on the same connection.
    Compacted(i64),
    /// Connection or request failure: back off, reconnect, re-list.
    Failed(String),
}

/// Sleeps until `until`, waking every 100 ms to check `stop`. Returns false when stopped.
pub async fn sleep_checking(until: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(100))).await;
    }
}

/// Connects with the config's options, bounded by the request timeout. A TCP probe comes first:
/// the client's balanced channel does not fail a request when no endpoint accepts, it waits for
/// one, and a request parked until the store returns would make every agent reconnect at the
/// same instant (a stampede the backoff exists to prevent). With the probe, an attempt against a
/// dead store fails at once and the next one waits for its slot.
pub async fn connect(cfg: &EtcdConfig, opts: ConnectOptions) -> Result<Client, String> {
    let mut last = String::from("no endpoint");
    let mut reachable = false;
    for e in &cfg.endpoints {
        let authority = e
            .split_once("://")
            .map_or(e.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or("");
        match tokio::time::timeout(
            cfg.request_timeout(),
            tokio::net::TcpStream::connect(authority),
        )
        .await
        {
            Ok(Ok(_)) => {
                reachable = true;
                break;
            }
            Ok(Err(err)) => last = format!("connect {authority}: {err}"),
            Err(_) => {
                last = format!(
                    "connect {authority}: no answer in {:?}",
                    cfg.request_timeout()
                )
            }
        }
    }
    if !reachable {
        return Err(last);
    }
    let mut client = match tokio::time::timeout(
        cfg.request_timeout(),
        Client::connect(&cfg.endpoints, Some(opts)),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("connect: {}", describe(&e))),
        Err(_) => return Err(format!("connect: no answer in {:?}", cfg.request_timeout())),
    };
    let ready = Duration::from_millis(cfg.ready_timeout_ms.max(1));
    match tokio::time::timeout(ready, client.status()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(format!("status: {}", describe(&e))),
        Err(_) => Err(format!("status: not serving within {ready:?}")),
    }
}

/// An etcd client error for a person: the gRPC status message (not tonic's debug dump of the
/// status and its source), followed by the root cause when it adds something, e.g.
/// `transport error: received fatal alert: BadCertificate`.
pub fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let (mut text, mut cause) = match e {
        etcd_client::Error::GRpcStatus(s) => (s.message().to_string(), s.source()),
        etcd_client::Error::TransportError(t) => (t.to_string(), t.source()),
        other => return other.to_string(),
    };
    let mut root = None;
    while let Some(c) = cause {
        root = Some(c);
        cause = c.source();
    }
    if let Some(root) = root.map(|r| r.to_string()) {
        if !text.contains(&root) {
            text = format!("{text}: {root}");
        }
    }
    text
}

/// `err` plus what to check in the config when the failure is one of TLS or of credentials
/// (those do not go away by retrying, unlike a store that is down).
fn with_hint(err: &str, cfg: &EtcdConfig) -> String {
    let tls = cfg.tls.as_ref();
    let client_cert = tls.is_some_and(|t| t.cert_file.is_some());
    let hint = if err.contains("UnknownIssuer") || err.contains("BadSignature") {
        let ca = tls.map_or(String::new(), |t| t.ca_file.display().to_string());
        format!("the server certificate is not signed by the CA in etcd.tls.ca_file {ca}")
    } else if err.contains("not valid for name") || err.contains("NotValidForName") {
        "the server certificate does not name the endpoint host: use an endpoint it names, or \
         set etcd.tls.server_name"
            .into()
    } else if err.contains("certificate expired") || err.contains("certificate not valid yet") {
        "a certificate is outside its validity period (check the clocks)".into()
    } else if err.contains("alert: BadCertificate")
        || err.contains("alert: CertificateRequired")
        || err.contains("alert: UnknownCA")
    {
        if client_cert {
            "the server refused the client certificate in etcd.tls.cert_file: it is not signed \
             by a CA the server trusts (--trusted-ca-file)"
                .into()
        } else {
            "the server requires a client certificate: set etcd.tls.cert_file and key_file".into()
        }
    } else if tls.is_some()
        && err.starts_with("status:")
        && (err.contains("connection closed")
            || err.contains("connection reset")
            || err.contains("broken pipe"))
    {
        // TLS 1.3: the client completes its side of the handshake and sends its first request
        // before the server has checked the client certificate; the server's alert then often
        // races with its close and is lost, leaving only "connection closed" (or, when the
        // request was still being written, "broken pipe").
        if client_cert {
            "closed right after the TLS handshake: the server may be refusing the client \
             certificate in etcd.tls.cert_file (the server log says why)"
                .into()
        } else {
            "closed right after the TLS handshake: if the server requires client certificates \
             (--client-cert-auth), set etcd.tls.cert_file and key_file (the server log says why)"
                .into()
        }
    } else if err.contains("authentication failed") {
        let (user, file) = cfg
            .auth
            .as_ref()
            .map_or((String::new(), String::new()), |a| {
                (a.username.clone(), a.password_file.display().to_string())
            });
        format!("check etcd.auth.username {user:?} and the password in {file}")
    } else if err.contains("user name is empty") {
        "the server has authentication enabled: set etcd.auth".into()
    } else if err.contains("permission denied") {
        let user = cfg.auth.as_ref().map_or("", |a| a.username.as_str());
        format!(
            "the etcd role of user {user:?} must allow reading the prefix and writing the \
             identity keys (docs/etcd.md, Authentication)"
        )
    } else {
        return err.to_string();
    };
    format!("{err}; {hint}")
}

struct Session<'a> {
    cfg: &'a EtcdConfig,
    local: Option<&'a State>,
    tx: &'a crossbeam::channel::Sender<SourceEvent>,
    stop: &'a AtomicBool,
    cache: Cache,
    last_sent: Option<State>,
    last_rejected: Option<String>,
    /// Mirrored entries left out at the last assembly (logged when they change).
    last_notes: Vec<String>,
    /// (local endpoint name, identity) references this node holds in the store.
    allocated: std::collections::BTreeSet<(String, u32)>,
    /// The labels each held reference was taken for: an endpoint whose labels did not change
    /// keeps its identity without a store write on every publish.
    held_labels:
        std::collections::BTreeMap<String, (std::collections::BTreeMap<String, String>, u32)>,
}

impl EtcdSource {
    pub(super) async fn run_async(
        self,
        tx: crossbeam::channel::Sender<SourceEvent>,
        stop: Arc<AtomicBool>,
    ) {
        let mut s = Session {
            cfg: &self.cfg,
            local: self.local.as_ref(),
            tx: &tx,
            stop: &stop,
            cache: Cache::new(&self.cfg.prefix, &self.cfg.node_name)
                .with_limits(self.cfg.limits)
                .with_cluster_id(self.cfg.identity.cluster_id),
            last_notes: Vec::new(),
            last_sent: None,
            last_rejected: None,
            allocated: Default::default(),
            held_labels: Default::default(),
        };
        let seed = std::process::id() as u64 ^ fastrand::u64(..);
        let mut reconnect = Reconnect::new(self.cfg.backoff.clone(), seed);
        let mut reported_down = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            // Files are read per attempt (validated once at construction): a certificate or
            // password file being rotated is a failed attempt, retried on the schedule.
            // The attempt is counted (`SourceEvent::Attempt`) once its outcome is known: after
            // the list on success (so that nothing waits on the channel between connecting and
            // listing), here on failure.
            let mut counted = false;
            let attempt = match self.cfg.connect_options() {
                Ok(opts) => connect(&self.cfg, opts).await,
                Err(e) => Err(e.to_string()),
            };
            let err = match attempt {
                Ok(client) => {
                    let mut client = client;
                    let mut end;
                    loop {
                        end = s
                            .session(
                                &mut client,
                                &mut reconnect,
                                &mut reported_down,
                                &mut counted,
                            )
                            .await;
                        match end {
                            End::Compacted(rev) => {
                                let _ = tx.send(SourceEvent::Health {
                                    connected: true,
                                    detail: format!(
                                        "watch revision compacted (store compacted to {rev}): full resync"
                                    ),
                                });
                                continue;
                            }
                            _ => break,
                        }
                    }
                    match end {
                        End::Stopped => return,
                        End::Failed(e) => e,
                        End::Compacted(_) => unreachable!("handled in the loop above"),
                    }
                }
                Err(e) => e,
            };
            if !counted {
                let _ = tx.send(SourceEvent::Attempt);
            }
            if !reported_down {
                reported_down = true;
                let _ = tx.send(SourceEvent::Health {
                    connected: false,
                    detail: format!(
                        "etcd unavailable ({}); forwarding continues on the last good state",
                        with_hint(&err, &self.cfg)
                    ),
                });
            }
            let now = Instant::now();
            let next = reconnect.next_attempt(now, s.cache.node_count());
            // One line per failed attempt, rate-limited: a store down for hours shows it is
            // still being tried (and how often) without a line per attempt.
            crate::warn_limited!(
                "etcd-attempt",
                "etcd attempt failed: {}; next attempt in {} ms",
                with_hint(&err, &self.cfg),
                next.saturating_duration_since(now).as_millis()
            );
            if !sleep_checking(next, &stop).await {
                return;
            }
        }
    }
}

impl Session<'_> {
    /// List at revision R, then watch from R + 1 until failure, compaction or stop.
    async fn session(
        &mut self,
        client: &mut Client,
        reconnect: &mut Reconnect,
        reported_down: &mut bool,
        attempt_counted: &mut bool,
    ) -> End {
        let prefix = format!("{}/", self.cfg.prefix);
        let list = tokio::time::timeout(
            self.cfg.request_timeout(),
            client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await;
        let resp = match list {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return End::Failed(format!("list {prefix}: {}", describe(&e))),
            Err(_) => return End::Failed(format!("list {prefix}: timed out")),
        };
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        // The fresh list replaces the cache whole (keys deleted while we were away vanish).
        self.cache.clear();
        for kv in resp.kvs() {
            if let Ok(k) = kv.key_str() {
                let _ = self.cache.put(k, kv.value());
            }
        }
        *reported_down = false;
        if !std::mem::replace(attempt_counted, true) {
            let _ = self.tx.send(SourceEvent::Attempt);
        }
        let _ = self.tx.send(SourceEvent::Synced);
        let _ = self.tx.send(SourceEvent::Health {
            connected: true,
            detail: format!(
                "synced {} keys at revision {rev} ({} nodes)",
                resp.kvs().len(),
                self.cache.node_count()
            ),
        });
        if let Some(e) = self.publish(client, rev).await {
            return e;
        }
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        let mut stream = match tokio::time::timeout(
            self.cfg.request_timeout(),
            client.watch(prefix.as_str(), Some(opts)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return End::Failed(format!("watch {prefix}: {}", describe(&e))),
            Err(_) => return End::Failed(format!("watch {prefix}: timed out")),
        };
        let debounce = Duration::from_millis(self.cfg.debounce_ms);
        let mut dirty_since: Option<Instant> = None;
        let mut rev = rev;
        let mut established = false;
        loop {
            let tick = match dirty_since {
                Some(t) => (t + debounce).min(Instant::now() + Duration::from_millis(100)),
                None => Instant::now() + Duration::from_millis(100),
            };
            tokio::select! {
                msg = stream.message() => {
                    let resp = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => return End::Failed("watch stream closed".into()),
                        Err(e) => return End::Failed(format!("watch: {}", describe(&e))),
                    };
                    if resp.compact_revision() > 0 {
                        return End::Compacted(resp.compact_revision());
                    }
                    if resp.canceled() {
                        return End::Failed(format!("watch canceled: {}", resp.cancel_reason()));
                    }
                    // The backoff starts over only once the whole cycle works: a store that
                    // serves the list but fails the publish (identity transaction) or the watch
                    // must be retried on the growing schedule, not re-listed every base window.
                    if resp.created() && !established {
                        established = true;
                        reconnect.reset();
                    }
                    let mut relevant = false;
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let Ok(k) = kv.key_str() else { continue };
                        relevant |= match ev.event_type() {
                            EventType::Put => self.cache.put(k, kv.value()),
                            EventType::Delete => self.cache.delete(k),
                        };
                        rev = rev.max(kv.mod_revision());
                    }
                    if relevant && dirty_since.is_none() {
                        dirty_since = Some(Instant::now());
                    }
                }
                _ = tokio::time::sleep_until(tick) => {}
            }
            if self.stop.load(Ordering::Relaxed) {
                return End::Stopped;
            }
            if let Some(t) = dirty_since {
                if Instant::now() >= t + debounce {
                    dirty_since = None;
                    if let Some(e) = self.publish(client, rev).await {
                        return e;
                    }
                }
            }
        }
    }

    /// Assembles the state, allocates identities and sends a snapshot (or a rejection).
    /// Returns `Some` when the store failed during identity allocation.
    async fn publish(&mut self, client: &Client, rev: i64) -> Option<End> {
        let origin = format!("etcd {} revision {rev}", self.cfg.prefix);
        let mut state = match self.cache.assemble_noted(self.local) {
            Ok((s, notes)) => {
                if notes != self.last_notes {
                    for n in &notes {
                        crate::warn_limited!("etcd-mesh-note", "mirrored entry: {n}");
                    }
                    self.last_notes = notes;
                }
                s
            }
            Err(errs) => {
                let error = errs
                    .iter()
                    .map(|(k, e)| format!("{k}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                self.reject(origin, error);
                return None;
            }
        };
        match self.resolve_identities(client, &mut state).await {
            Ok(()) => {}
            Err(IdentityStep::Store(e)) => return Some(End::Failed(e)),
            Err(IdentityStep::Bad(e)) => {
                self.reject(origin, e);
                return None;
            }
        }
        self.last_rejected = None;
        if self.last_sent.as_ref() == Some(&state) {
            return None; // a resync that changed nothing: no rebuild
        }
        self.last_sent = Some(state.clone());
        let _ = self.tx.send(SourceEvent::Snapshot {
            state: Box::new(state),
            origin,
        });
        None
    }

    fn reject(&mut self, origin: String, error: String) {
        if self.last_rejected.as_deref() == Some(error.as_str()) {
            return; // same problem, already reported
        }
        self.last_rejected = Some(error.clone());
        let _ = self.tx.send(SourceEvent::Rejected { origin, error });
    }

    /// Endpoints with `identity: 0` get the identity of their labels; identities of endpoints
    /// that are gone (or changed labels) are released.
    async fn resolve_identities(
        &mut self,
        client: &Client,
        state: &mut State,
    ) -> Result<(), IdentityStep> {
        let wants = state.endpoints.iter().any(|e| e.identity == 0)
            || state.external_workloads.iter().any(|w| w.identity == 0);
        if !wants && self.allocated.is_empty() {
            return Ok(());
        }
        let mut alloc = IdentityAllocator::new(
            client.clone(),
            &self.cfg.prefix,
            &self.cfg.node_name,
            &self.cfg.identity,
        )
        .map_err(|e| IdentityStep::Bad(e.to_string()))?;
        let mut now = std::collections::BTreeSet::new();
        // (reference name, what it is for messages, labels, identity to fill): endpoints by
        // their name, external workloads as `external:<name>`, so the two kinds' references
        // stay apart.
        type Wanted<'a> = (
            String,
            String,
            &'a std::collections::BTreeMap<String, String>,
            &'a mut u32,
        );
        let mut wanted: Vec<Wanted<'_>> = Vec::new();
        for ep in state.endpoints.iter_mut().filter(|e| e.identity == 0) {
            let what = format!("endpoint {}", ep.name);
            wanted.push((ep.name.clone(), what, &ep.labels, &mut ep.identity));
        }
        for w in state
            .external_workloads
            .iter_mut()
            .filter(|w| w.identity == 0)
        {
            let what = format!("external workload {}", w.name);
            wanted.push((
                format!("external:{}", w.name),
                what,
                &w.labels,
                &mut w.identity,
            ));
        }
        for (name, what, labels, identity) in wanted {
            if let Some((held, id)) = self.held_labels.get(&name) {
                if held == labels && self.allocated.contains(&(name.clone(), *id)) {
                    *identity = *id;
                    now.insert((name, *id));
                    continue;
                }
            }
            let id = alloc.allocate(&name, labels).await.map_err(|e| match e {
                crate::identity::IdentityError::Store(_) => {
                    IdentityStep::Store(format!("identity allocation for {what}: {e}"))
                }
                _ => IdentityStep::Bad(format!("{what}: {e}")),
            })?;
            *identity = id;
            now.insert((name.clone(), id));
            self.held_labels.insert(name, (labels.clone(), id));
        }
        let old = std::mem::take(&mut self.allocated);
        let mut failed = None;
        let gone: Vec<(String, u32)> = old.difference(&now).cloned().collect();
        for (name, id) in &gone {
            if failed.is_some() {
                // Not released yet: stays referenced and is retried with the next snapshot.
                now.insert((name.clone(), *id));
                continue;
            }
            if let Err(e) = alloc.release(name, *id).await {
                now.insert((name.clone(), *id));
                failed = Some(format!("identity release for endpoint {name}: {e}"));
            }
        }
        self.held_labels
            .retain(|name, (_, id)| now.contains(&(name.clone(), *id)));
        self.allocated = now;
        match failed {
            Some(e) => Err(IdentityStep::Store(e)),
            None => Ok(()),
        }
    }
}

enum IdentityStep {
    Store(String),
    Bad(String),
}
