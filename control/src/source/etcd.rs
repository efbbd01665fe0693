//! The etcd cluster backend: a [`StateSource`] that lists a key prefix at revision R, watches
//! from R + 1, keeps a local cache keyed by etcd key and, after each debounced batch of events,
//! assembles a whole [`State`] and sends it as one [`SourceEvent::Snapshot`]. A value that does
//! not parse yields [`SourceEvent::Rejected`] naming the key, never a half state; the running
//! state stays.
//!
//! Key layout (all under `prefix`, default `/nodeplane/v1`; see `docs/etcd.md`):
//!
//! ```text
//!   nodes/<node>                      NodeRecord {node?, interfaces?, endpoints}  (one per node)
//!   services/<name>                   Service (incl. backends)
//!   ipcache/<prefix>                  IpcacheEntry {prefix, identity}  (key: 10.1.0.0/24)
//!   policies/<node>/<endpoint>        Policy of a local endpoint of <node>
//!   identities/<id>                   canonical labels       ┐
//!   identities-by-labels/<labels>     id                     │ the identity allocator
//!   identity-refs/<id>/<node>/<ep>    ""                     │ (crate::identity), not part
//!   identity-next/<cluster id>        next free local number ┘ of the State
//! ```
//!
//! The store going away never touches forwarding: the source reports
//! `Health { connected: false }` once and sends nothing else until it has resynced (re-listed the
//! whole prefix on a new connection), so the last good state stays in force. Reconnects follow
//! [`Reconnect`]: exponential windows, full jitter inside each window, the window cap scaled by
//! the number of nodes in the store.

// The test etcd launcher: for the etcd tests and the fleet benchmark, never in the daemon.
#[cfg(feature = "test-support")]
pub mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity as TlsIdentity,
    TlsOptions, WatchOptions,
};
use nodeplane_state::{Endpoint, Interface, IpcacheEntry, Node, Policy, Service, State};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{SourceEvent, StateSource};
use crate::identity::{IdentityAllocator, IdentityConfig};

pub const DEFAULT_PREFIX: &str = "/nodeplane/v1";

/// `etcd:` section of the daemon config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs, `http://host:port` or `https://host:port` (https needs `tls`).
    pub endpoints: Vec<String>,
    /// This node's name: its record is `nodes/<node_name>`, its policies `policies/<node_name>/`.
    pub node_name: String,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Node-local state (file or directory, the `nodeplane state` format) that provides `node`,
    /// `interfaces` and `conntrack` without etcd (decoupled install). Lists in it (endpoints,
    /// services, ...) are concatenated with the ones from etcd.
    #[serde(default)]
    pub local_state: Option<PathBuf>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Events arriving within this time of each other become one snapshot.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// Limit for connecting and for each unary request (list, txn).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// After the TCP probe, the store must answer a status request within this time, else
    /// the attempt counts as failed. A restarting etcd accepts connections before it serves
    /// them; without this limit requests made in that gap would all complete at the instant it
    /// becomes ready.
    #[serde(default = "default_ready_timeout_ms")]
    pub ready_timeout_ms: u64,
    /// HTTP/2 keepalive: a silent peer (partition, not a reset) is declared dead after
    /// `keepalive_interval_ms + keepalive_timeout_ms`.
    #[serde(default = "default_keepalive_interval_ms")]
    pub keepalive_interval_ms: u64,
    #[serde(default = "default_keepalive_timeout_ms")]
    pub keepalive_timeout_ms: u64,
    /// Identity allocation for local endpoints written with `identity: 0`.
    #[serde(default)]
    pub identity: IdentityConfig,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.into()
}
fn default_debounce_ms() -> u64 {
    50
}
fn default_request_timeout_ms() -> u64 {
    5_000
}
fn default_ready_timeout_ms() -> u64 {
    500
}
fn default_keepalive_interval_ms() -> u64 {
    10_000
}
fn default_keepalive_timeout_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM CA bundle that signed the etcd server certificates.
    pub ca_file: PathBuf,
    /// Client certificate and key (PEM) for mutual TLS; both or neither.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Name to verify in the server certificate, when it differs from the endpoint host.
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub username: String,
    /// File holding the password (first line; trailing newline stripped). Never inline.
    pub password_file: PathBuf,
}

/// Reconnect schedule. Attempt k (k = 0 right after the loss) falls at a uniformly random point
/// of its own window `w_k = min(W, base_ms * 2^k)`; the windows follow each other, so attempt k
/// happens at `sum(w_0..w_{k-1}) + U(0, w_k)` after the loss (full jitter inside each window).
/// The cap `W = clamp(per_node_ms * nodes, cap_ms, max_window_ms)` grows with the cluster
/// (`nodes` = keys under `nodes/` at the last successful list). Without jitter (`jitter: false`,
/// for comparison only) every attempt falls at the end of its window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    pub base_ms: u64,
    pub cap_ms: u64,
    pub per_node_ms: u64,
    pub max_window_ms: u64,
    pub jitter: bool,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base_ms: 500,
            cap_ms: 5_000,
            per_node_ms: 10,
            max_window_ms: 300_000,
            jitter: true,
        }
    }
}

impl BackoffConfig {
    /// The window cap W for a cluster of `nodes` nodes.
    pub fn window(&self, nodes: usize) -> Duration {
        let scaled = self.per_node_ms.saturating_mul(nodes as u64);
        let w = scaled
            .max(self.cap_ms)
            .min(self.max_window_ms.max(self.cap_ms));
        Duration::from_millis(w)
    }

    /// Window k: `min(W, base * 2^k)`.
    pub fn window_k(&self, k: u32, nodes: usize) -> Duration {
        let exp = self.base_ms.saturating_mul(1u64 << k.min(40));
        Duration::from_millis(exp).min(self.window(nodes))
    }
}

/// The reconnect schedule of one client (see [`BackoffConfig`]).
#[derive(Debug)]
pub struct Reconnect {
    cfg: BackoffConfig,
    rng: fastrand::Rng,
    /// Start of the current window; `None` while connected.
    window_start: Option<Instant>,
    k: u32,
}

impl Reconnect {
    pub fn new(cfg: BackoffConfig, seed: u64) -> Self {
        Reconnect {
            cfg,
            rng: fastrand::Rng::with_seed(seed),
            window_start: None,
            k: 0,
        }
    }

    /// A session is fully up (listed, published, watch created): the next loss starts again at
    /// window 0.
    pub fn reset(&mut self) {
        self.window_start = None;
        self.k = 0;
    }

    /// An attempt failed (or the connection was lost) at `now`: when to try next.
    pub fn next_attempt(&mut self, now: Instant, nodes: usize) -> Instant {
        let start = match self.window_start {
            // First failure: window 0 starts now.
            None => now,
            // Otherwise the next window starts where the current one ends.
            Some(s) => {
                let end = s + self.cfg.window_k(self.k, nodes);
                self.k = self.k.saturating_add(1);
                end
            }
        };
        let mut start = start;
        // Windows that passed while the attempt itself ran (slow timeouts) are skipped.
        loop {
            let w = self.cfg.window_k(self.k, nodes);
            if start + w > now || w.is_zero() {
                break;
            }
            start += w;
            self.k = self.k.saturating_add(1);
        }
        self.window_start = Some(start);
        let w = self.cfg.window_k(self.k, nodes);
        let offset = if self.cfg.jitter {
            Duration::from_nanos(self.rng.u64(0..=w.as_nanos() as u64))
        } else {
            w
        };
        (start + offset).max(now)
    }

    pub fn attempt(&self) -> u32 {
        self.k
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdConfigError {
    #[error("etcd.endpoints is empty")]
    NoEndpoints,
    #[error("etcd.endpoints: {0:?} is not an http:// or https:// URL")]
    BadEndpoint(String),
    #[error("etcd.endpoints: {0:?} uses https but etcd.tls is not set")]
    HttpsWithoutTls(String),
    #[error("etcd.tls is set but endpoint {0:?} uses plain http")]
    TlsWithHttp(String),
    #[error("etcd.node_name {0:?} must be non-empty and contain no '/'")]
    BadNodeName(String),
    #[error("etcd.prefix {0:?} must start with '/' and not end with '/'")]
    BadPrefix(String),
    #[error("etcd.tls: cert_file and key_file must be given together")]
    HalfClientCert,
    #[error("etcd.{field}: cannot read {path}: {source}")]
    File {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd.auth.password_file {0} is empty")]
    EmptyPassword(PathBuf),
    #[error("etcd.auth.username is empty")]
    EmptyUser,
    #[error("etcd.backoff: {0}")]
    Backoff(&'static str),
    #[error("etcd.identity: {0}")]
    Identity(String),
}

fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>, EtcdConfigError> {
    std::fs::read(path).map_err(|source| EtcdConfigError::File {
        field,
        path: path.to_path_buf(),
        source,
    })
}

impl EtcdConfig {
    /// A config with defaults for everything but the endpoints and the node name.
    pub fn new(endpoints: Vec<String>, node_name: &str) -> Self {
        EtcdConfig {
            endpoints,
            node_name: node_name.into(),
            prefix: default_prefix(),
            local_state: None,
            tls: None,
            auth: None,
            backoff: BackoffConfig::default(),
            debounce_ms: default_debounce_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            ready_timeout_ms: default_ready_timeout_ms(),
            keepalive_interval_ms: default_keepalive_interval_ms(),
            keepalive_timeout_ms: default_keepalive_timeout_ms(),
            identity: IdentityConfig::default(),
        }
    }

    /// Checks the whole section, including that the TLS and password files are readable.
    pub fn validate(&self) -> Result<(), EtcdConfigError> {
        if self.endpoints.is_empty() {
            return Err(EtcdConfigError::NoEndpoints);
        }
        for e in &self.endpoints {
            let https = e.starts_with("https://");
            if !(https || e.starts_with("http://"))
                || e.split("://").nth(1).unwrap_or("").is_empty()
            {
                return Err(EtcdConfigError::BadEndpoint(e.clone()));
            }
            if https && self.tls.is_none() {
                return Err(EtcdConfigError::HttpsWithoutTls(e.clone()));
            }
            if !https && self.tls.is_some() {
                return Err(EtcdConfigError::TlsWithHttp(e.clone()));
            }
        }
        if self.node_name.is_empty() || self.node_name.contains('/') {
            return Err(EtcdConfigError::BadNodeName(self.node_name.clone()));
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            return Err(EtcdConfigError::BadPrefix(self.prefix.clone()));
        }
        let b = &self.backoff;
        if b.base_ms == 0 {
            return Err(EtcdConfigError::Backoff("base_ms must be > 0"));
        }
        if b.cap_ms < b.base_ms {
            return Err(EtcdConfigError::Backoff("cap_ms must be >= base_ms"));
        }
        crate::identity::LabelFilter::parse(&self.identity.labels)
            .map_err(|e| EtcdConfigError::Identity(e.to_string()))?;
        self.connect_options().map(|_| ())
    }

    /// The client options: timeouts, keepalive, TLS files and credentials (files are read now;
    /// the source calls this before every connection attempt, so rotated certificates or a
    /// fixed password file take effect at the next reconnect without a restart).
    pub fn connect_options(&self) -> Result<ConnectOptions, EtcdConfigError> {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(self.request_timeout_ms))
            .with_keep_alive(
                Duration::from_millis(self.keepalive_interval_ms),
                Duration::from_millis(self.keepalive_timeout_ms),
            );
        if let Some(t) = &self.tls {
            let ca = read_file("tls.ca_file", &t.ca_file)?;
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
            match (&t.cert_file, &t.key_file) {
                (Some(c), Some(k)) => {
                    let cert = read_file("tls.cert_file", c)?;
                    let key = read_file("tls.key_file", k)?;
                    tls = tls.identity(TlsIdentity::from_pem(cert, key));
                }
                (None, None) => {}
                _ => return Err(EtcdConfigError::HalfClientCert),
            }
            if let Some(name) = &t.server_name {
                tls = tls.domain_name(name.clone());
            }
            o = o.with_tls(tls);
        }
        if let Some(a) = &self.auth {
            if a.username.is_empty() {
                return Err(EtcdConfigError::EmptyUser);
            }
            let raw = read_file("auth.password_file", &a.password_file)?;
            let pw = String::from_utf8_lossy(&raw);
            let pw = pw.lines().next().unwrap_or("").to_string();
            if pw.is_empty() {
                return Err(EtcdConfigError::EmptyPassword(a.password_file.clone()));
            }
            // etcd drops a simple token after `--auth-token-ttl` (300 s) without use; the watch
            // outlives it, so the next identity transaction would fail and cost a full resync.
            // With auto refresh the client authenticates again and retries that request once.
            o = o
                .with_user(a.username.clone(), pw)
                .with_auto_token_refresh(true);
        }
        Ok(o)
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }
}

/// `nodes/<node>`: what etcd knows about one node.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    /// Only when no `local_state` is configured (otherwise the local file is the only source
    /// of the node section and a record carrying one is rejected).
    #[serde(default)]
    pub node: Option<Node>,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// The node's local endpoints. `identity: 0` asks for allocation from the labels.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One parsed cache entry (only keys that matter to this node are parsed).
#[derive(Debug, Clone)]
enum Entry {
    OwnNode(Result<NodeRecord, String>),
    OtherNode,
    Service(Result<Service, String>),
    Ipcache(Result<IpcacheEntry, String>),
    Policy(Result<Policy, String>),
    /// Identity allocator keys, other nodes' policies, unknown directories.
    Ignored,
}

fn parse<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, String> {
    // YAML is a superset of JSON for these values: operators may write either.
    yaml_serde::from_slice(v).map_err(|e| e.to_string())
}

/// The local cache: etcd key → parsed value, plus the assembly of a whole [`State`].
#[derive(Debug)]
pub struct Cache {
    prefix: String,
    node: String,
    entries: BTreeMap<String, Entry>,
    nodes: usize,
}

impl Cache {
    pub fn new(prefix: &str, node: &str) -> Self {
        Cache {
            prefix: format!("{prefix}/"),
            node: node.into(),
            entries: BTreeMap::new(),
            nodes: 0,
        }
    }

    /// Nodes in the store (keys under `nodes/`) as of the last list and the events since.
    pub fn node_count(&self) -> usize {
        self.nodes
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.nodes = 0;
    }

    fn classify(&self, key: &str, value: &[u8]) -> Entry {
        let Some(rel) = key.strip_prefix(&self.prefix) else {
            return Entry::Ignored;
        };
        let (dir, name) = rel.split_once('/').unwrap_or((rel, ""));
        match dir {
            "nodes" if name == self.node => Entry::OwnNode(parse(value)),
            "nodes" if !name.is_empty() && !name.contains('/') => Entry::OtherNode,
            "services" => Entry::Service(parse::<Service>(value).and_then(|s| {
                if s.name == name {
                    Ok(s)
                } else {
                    Err(format!("service name {:?} differs from the key", s.name))
                }
            })),
            "ipcache" => Entry::Ipcache(parse::<IpcacheEntry>(value).and_then(|e| {
                if e.prefix.to_string() == name {
                    Ok(e)
                } else {
                    Err(format!("prefix {} differs from the key", e.prefix))
                }
            })),
            "policies" => match name.split_once('/') {
                Some((n, ep)) if n == self.node => {
                    Entry::Policy(parse::<Policy>(value).and_then(|p| {
                        if p.endpoint == ep {
                            Ok(p)
                        } else {
                            Err(format!(
                                "policy endpoint {:?} differs from the key",
                                p.endpoint
                            ))
                        }
                    }))
                }
                _ => Entry::Ignored,
            },
            _ => Entry::Ignored,
        }
    }

    /// Records a put; `true` when the key is one the state is assembled from (keys the
    /// identity allocator writes, or anything else under the prefix, are not: a put of theirs
    /// must not trigger a republish, or every allocation would trigger the next one).
    pub fn put(&mut self, key: &str, value: &[u8]) -> bool {
        let e = self.classify(key, value);
        let was_node = matches!(
            self.entries.get(key),
            Some(Entry::OwnNode(_) | Entry::OtherNode)
        );
        if matches!(e, Entry::Ignored) {
            self.entries.remove(key).is_some()
        } else {
            if matches!(e, Entry::OwnNode(_) | Entry::OtherNode) && !was_node {
                self.nodes += 1;
            }
            self.entries.insert(key.to_string(), e);
            true
        }
    }

    /// Records a delete; `true` when a key the state is assembled from went away.
    pub fn delete(&mut self, key: &str) -> bool {
        match self.entries.remove(key) {
            Some(Entry::OwnNode(_) | Entry::OtherNode) => {
                self.nodes = self.nodes.saturating_sub(1);
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// The whole state: `local` (if any) plus everything from etcd, or every key that failed to
    /// parse (or does not fit) as `(key, reason)`.
    pub fn assemble(&self, local: Option<&State>) -> Result<State, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut st = local.cloned().unwrap_or_default();
        let own_key = format!("{}nodes/{}", self.prefix, self.node);
        match self.entries.get(&own_key) {
            Some(Entry::OwnNode(Ok(rec))) => {
                if local.is_some() {
                    if rec.node.is_some() || !rec.interfaces.is_empty() {
                        errors.push((
                            own_key.clone(),
                            "node and interfaces come from local_state on this node; the record \
                             may only carry endpoints"
                                .into(),
                        ));
                    }
                } else {
                    st.node = rec.node.clone().unwrap_or_default();
                    st.interfaces = rec.interfaces.clone();
                }
                st.endpoints.extend(rec.endpoints.iter().cloned());
            }
            Some(Entry::OwnNode(Err(e))) => errors.push((own_key.clone(), e.clone())),
            _ => {
                if local.is_none() {
                    errors.push((
                        own_key.clone(),
                        "missing, and no local_state is configured".into(),
                    ));
                }
            }
        }
        if local.is_none() && st.node.name.is_empty() {
            st.node.name = self.node.clone();
        }
        for (k, e) in &self.entries {
            match e {
                Entry::Service(Ok(s)) => st.services.push(s.clone()),
                Entry::Ipcache(Ok(i)) => st.ipcache.push(i.clone()),
                Entry::Policy(Ok(p)) => st.policies.push(p.clone()),
                Entry::Service(Err(m)) | Entry::Ipcache(Err(m)) | Entry::Policy(Err(m)) => {
                    errors.push((k.clone(), m.clone()))
                }
                _ => {}
            }
        }
        if errors.is_empty() {
            Ok(st)
        } else {
            Err(errors)
        }
    }
}

/// The etcd state source.
#[derive(Debug)]
pub struct EtcdSource {
    cfg: EtcdConfig,
    local: Option<State>,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdSourceError {
    #[error(transparent)]
    Config(#[from] EtcdConfigError),
    #[error("etcd.local_state: {0}")]
    Local(#[from] nodeplane_state::LoadError),
}

impl EtcdSource {
    /// Validates the config and loads `local_state` (a bad local state is an error now, not a
    /// snapshot rejected later).
    pub fn new(cfg: EtcdConfig) -> Result<Self, EtcdSourceError> {
        cfg.validate()?;
        let local = match &cfg.local_state {
            Some(p) => Some(nodeplane_state::load_path(p)?),
            None => None,
        };
        Ok(EtcdSource { cfg, local })
    }

    /// Same, with the local part given directly (tests, embedding).
    pub fn with_local(cfg: EtcdConfig, local: Option<State>) -> Result<Self, EtcdSourceError> {
        cfg.validate()?;
        Ok(EtcdSource { cfg, local })
    }
}

impl StateSource for EtcdSource {
    fn name(&self) -> String {
        format!("etcd {} {}", self.cfg.endpoints.join(","), self.cfg.prefix)
    }

    fn run(self: Box<Self>, tx: crossbeam::channel::Sender<SourceEvent>, stop: Arc<AtomicBool>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(SourceEvent::Health {
                    connected: false,
                    detail: format!("cannot start the etcd client runtime: {e}"),
                });
                return;
            }
        };
        let me = *self;
        rt.block_on(me.run_async(tx, stop));
    }
}

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
    /// (local endpoint name, identity) references this node holds in the store.
    allocated: std::collections::BTreeSet<(String, u32)>,
    /// The labels each held reference was taken for: an endpoint whose labels did not change
    /// keeps its identity without a store write on every publish.
    held_labels:
        std::collections::BTreeMap<String, (std::collections::BTreeMap<String, String>, u32)>,
}

impl EtcdSource {
    async fn run_async(self, tx: crossbeam::channel::Sender<SourceEvent>, stop: Arc<AtomicBool>) {
        let mut s = Session {
            cfg: &self.cfg,
            local: self.local.as_ref(),
            tx: &tx,
            stop: &stop,
            cache: Cache::new(&self.cfg.prefix, &self.cfg.node_name),
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
                            .session(&mut client, &mut reconnect, &mut reported_down)
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
            let next = reconnect.next_attempt(Instant::now(), s.cache.node_count());
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
        let mut state = match self.cache.assemble(self.local) {
            Ok(s) => s,
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
        let wants = state.endpoints.iter().any(|e| e.identity == 0);
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
        for ep in state.endpoints.iter_mut().filter(|e| e.identity == 0) {
            if let Some((labels, id)) = self.held_labels.get(&ep.name) {
                if *labels == ep.labels && self.allocated.contains(&(ep.name.clone(), *id)) {
                    ep.identity = *id;
                    now.insert((ep.name.clone(), *id));
                    continue;
                }
            }
            let id = alloc
                .allocate(&ep.name, &ep.labels)
                .await
                .map_err(|e| match e {
                    crate::identity::IdentityError::Store(_) => IdentityStep::Store(format!(
                        "identity allocation for endpoint {}: {e}",
                        ep.name
                    )),
                    _ => IdentityStep::Bad(format!("endpoint {}: {e}", ep.name)),
                })?;
            ep.identity = id;
            now.insert((ep.name.clone(), id));
            self.held_labels
                .insert(ep.name.clone(), (ep.labels.clone(), id));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(jitter: bool) -> BackoffConfig {
        BackoffConfig {
            base_ms: 100,
            cap_ms: 400,
            per_node_ms: 10,
            max_window_ms: 2_000,
            jitter,
        }
    }

    #[test]
    fn window_scales_with_nodes_within_bounds() {
        let c = cfg(true);
        assert_eq!(c.window(0), Duration::from_millis(400));
        assert_eq!(c.window(100), Duration::from_millis(1_000));
        assert_eq!(c.window(1_000_000), Duration::from_millis(2_000));
        assert_eq!(c.window_k(0, 100), Duration::from_millis(100));
        assert_eq!(c.window_k(3, 100), Duration::from_millis(800));
        assert_eq!(c.window_k(60, 100), Duration::from_millis(1_000));
    }

    /// docs/etcd.md: with the defaults, agents are in windows of the full width W from 7.5 s
    /// after the loss when W = 5 s (up to 500 nodes) and from 15.5 s when W = 10 s (1000 nodes).
    #[test]
    fn defaults_reach_the_window_cap_when_the_docs_say() {
        let c = BackoffConfig {
            jitter: false,
            ..BackoffConfig::default()
        };
        for (nodes, w, ramp) in [(500, 5_000, 7_500), (1_000, 10_000, 15_500)] {
            assert_eq!(c.window(nodes), Duration::from_millis(w));
            // Without jitter attempt k falls at the end of window k: the first full-width
            // window is the first gap of W between attempts, and it starts at the ramp.
            let t0 = Instant::now();
            let mut r = Reconnect::new(c.clone(), 1);
            let (mut prev, mut now) = (Duration::ZERO, t0);
            let start = loop {
                now = r.next_attempt(now, nodes);
                let at = now - t0;
                if at - prev == c.window(nodes) {
                    break prev;
                }
                prev = at;
            };
            assert_eq!(start, Duration::from_millis(ramp), "{nodes} nodes");
        }
    }

    #[test]
    fn attempts_fall_in_back_to_back_windows() {
        let t0 = Instant::now();
        // Without jitter: at the end of each window 100, 200, 400, 800, 1000, 1000 ms.
        let mut r = Reconnect::new(cfg(false), 1);
        let mut now = t0;
        let mut ends = Vec::new();
        for _ in 0..6 {
            now = r.next_attempt(now, 100);
            ends.push((now - t0).as_millis());
        }
        assert_eq!(ends, [100, 300, 700, 1500, 2500, 3500]);
        // With jitter: attempt k lies inside window k, whatever the draw.
        for seed in 0..200 {
            let mut r = Reconnect::new(cfg(true), seed);
            let (mut now, mut start) = (t0, Duration::ZERO);
            for k in 0..6u32 {
                now = r.next_attempt(now, 100);
                let w = cfg(true).window_k(k, 100);
                let at = now - t0;
                assert!(at >= start && at <= start + w, "seed {seed} k {k}: {at:?}");
                start += w;
            }
            r.reset();
            assert!(r.next_attempt(now, 100) - now <= Duration::from_millis(100));
        }
    }
}
