//! The `etcd:` section of the daemon config: its fields and defaults, its validation, and the
//! client options (timeouts, keepalive, TLS, credentials) built from it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity as TlsIdentity, TlsOptions};
use serde::{Deserialize, Serialize};

use super::BackoffConfig;
use crate::identity::IdentityConfig;

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
    /// Bounds on values (each against `max_file_bytes`, all together against
    /// `max_total_bytes`) and on `local_state`: the daemon config's `state.limits`, set by the
    /// daemon (not a key of this section).
    #[serde(skip)]
    pub limits: nodeplane_state::Limits,
}

pub(crate) fn default_prefix() -> String {
    DEFAULT_PREFIX.into()
}
pub(crate) fn default_debounce_ms() -> u64 {
    50
}
pub(crate) fn default_request_timeout_ms() -> u64 {
    5_000
}
fn default_ready_timeout_ms() -> u64 {
    500
}
pub(crate) fn default_keepalive_interval_ms() -> u64 {
    10_000
}
pub(crate) fn default_keepalive_timeout_ms() -> u64 {
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
            limits: nodeplane_state::Limits::default(),
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

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }
}
