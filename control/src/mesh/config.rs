//! `mesh.yaml`: the local cluster, its store, the remote clusters to mirror and their stores,
//! and the validation of it all (names, cluster ids, endpoints, TLS and password files).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::source::etcd::{AuthConfig, BackoffConfig, EtcdConfig, TlsConfig};

/// Where `nodeplane mesh run` writes its status and `nodeplane mesh status` reads it.
pub const DEFAULT_STATUS_FILE: &str = "/run/nodeplane/mesh-status.json";

/// The whole `mesh.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// This cluster: its name and id (the high 8 bits of its identities).
    pub cluster: ClusterName,
    /// The local store: the one the agents of this cluster read, where mirrored keys go.
    pub local: StoreConfig,
    /// Remote clusters whose exported keys are mirrored into `local`.
    #[serde(default)]
    pub clusters: Vec<RemoteCluster>,
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Changes arriving within this time of each other are written in one go.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// Limit for connecting and for each request (list, txn).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// HTTP/2 keepalive: a silent (partitioned) store is declared down after
    /// `keepalive_interval_ms + keepalive_timeout_ms`.
    #[serde(default = "default_keepalive_interval_ms")]
    pub keepalive_interval_ms: u64,
    #[serde(default = "default_keepalive_timeout_ms")]
    pub keepalive_timeout_ms: u64,
    /// Largest value mirrored (bytes); a bigger one is filtered with its reason.
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: u64,
    /// JSON status, rewritten on every change (`nodeplane mesh status` reads it).
    #[serde(default = "default_status_file")]
    pub status_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterName {
    pub name: String,
    pub id: u8,
}

/// One etcd store: endpoints, key prefix, TLS and credentials (as in the daemon's `etcd:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub auth: Option<AuthConfig>,
}

/// A remote cluster: its name (the mirrored keys go under `mesh/<name>/`), its id (every
/// identity it exports must carry it) and its store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteCluster {
    pub name: String,
    pub id: u8,
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub auth: Option<AuthConfig>,
}

// The store client's defaults are the etcd source's (the mirror is one more client of it).
use crate::source::etcd::config::{
    default_debounce_ms, default_keepalive_interval_ms, default_keepalive_timeout_ms,
    default_prefix, default_request_timeout_ms,
};

fn default_max_value_bytes() -> u64 {
    1 << 20
}
fn default_status_file() -> PathBuf {
    DEFAULT_STATUS_FILE.into()
}

#[derive(Debug, thiserror::Error)]
pub enum MeshConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> MeshConfigError {
    MeshConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A cluster name is a single key segment: `mesh/<name>/...`.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > 63 {
        Some("is longer than 63 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || name.starts_with('-')
        || name.ends_with('-')
    {
        Some("must be lowercase letters, digits and '-' (a DNS label), as it names a key directory")
    } else {
        None
    }
}

impl MeshConfig {
    /// Reads and validates a `mesh.yaml`.
    pub fn load(path: &Path) -> Result<Self, MeshConfigError> {
        let text = std::fs::read(path).map_err(|source| MeshConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: MeshConfig =
            yaml_serde::from_slice(&text).map_err(|e| MeshConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Names are DNS labels and unique; ids are non-zero and unique (the local cluster's
    /// included: a remote with the local id could claim local identities); no remote is the
    /// local store under the same prefix; each store section is a valid etcd client config
    /// (endpoints, TLS and password files readable).
    pub fn validate(&self) -> Result<(), MeshConfigError> {
        if let Some(p) = name_problem(&self.cluster.name) {
            return Err(invalid(
                "cluster.name",
                format!("{:?} {p}", self.cluster.name),
            ));
        }
        if self.cluster.id == 0 {
            return Err(invalid(
                "cluster.id",
                "must be 1-255: id 0 is the single-cluster default, and identities of a mesh \
                 must say which cluster they come from",
            ));
        }
        self.local_etcd()
            .validate()
            .map_err(|e| invalid("local", e.to_string()))?;
        let mut names = BTreeSet::from([self.cluster.name.as_str()]);
        let mut ids = BTreeSet::from([self.cluster.id]);
        for (i, c) in self.clusters.iter().enumerate() {
            let at = format!("clusters[{i}]");
            if let Some(p) = name_problem(&c.name) {
                return Err(invalid(format!("{at}.name"), format!("{:?} {p}", c.name)));
            }
            if !names.insert(c.name.as_str()) {
                let what = if c.name == self.cluster.name {
                    "is the local cluster's name: a cluster is never mirrored into itself"
                } else {
                    "is listed twice"
                };
                return Err(invalid(
                    format!("{at}.name"),
                    format!("{:?} {what}", c.name),
                ));
            }
            if c.id == 0 {
                return Err(invalid(format!("{at}.id"), "must be 1-255"));
            }
            if !ids.insert(c.id) {
                let what = if c.id == self.cluster.id {
                    "is the local cluster's id"
                } else {
                    "is used by another remote cluster"
                };
                return Err(invalid(format!("{at}.id"), format!("{} {what}", c.id)));
            }
            self.remote_etcd(c)
                .validate()
                .map_err(|e| invalid(format!("{at} ({})", c.name), e.to_string()))?;
            if c.prefix == self.local.prefix
                && c.endpoints.iter().any(|e| self.local.endpoints.contains(e))
            {
                return Err(invalid(
                    format!("{at}.endpoints"),
                    format!(
                        "cluster {:?} names the local store with the local prefix: a cluster \
                         is never mirrored into itself",
                        c.name
                    ),
                ));
            }
        }
        if self.request_timeout_ms == 0 {
            return Err(invalid("request_timeout_ms", "must be > 0"));
        }
        Ok(())
    }

    fn etcd(&self, store: &StoreConfig) -> EtcdConfig {
        let mut e = EtcdConfig::new(store.endpoints.clone(), "mesh");
        e.prefix = store.prefix.clone();
        e.tls = store.tls.clone();
        e.auth = store.auth.clone();
        e.backoff = self.backoff.clone();
        e.request_timeout_ms = self.request_timeout_ms;
        e.keepalive_interval_ms = self.keepalive_interval_ms;
        e.keepalive_timeout_ms = self.keepalive_timeout_ms;
        e
    }

    /// The local store as an etcd client config (connect, TLS, auth are the source's).
    pub fn local_etcd(&self) -> EtcdConfig {
        self.etcd(&self.local)
    }

    /// A remote cluster's store as an etcd client config.
    pub fn remote_etcd(&self, c: &RemoteCluster) -> EtcdConfig {
        self.etcd(&StoreConfig {
            endpoints: c.endpoints.clone(),
            prefix: c.prefix.clone(),
            tls: c.tls.clone(),
            auth: c.auth.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::etcd::DEFAULT_PREFIX;

    fn cfg(extra: &str) -> Result<MeshConfig, String> {
        let text = format!(
            "cluster: {{ name: east, id: 1 }}\nlocal: {{ endpoints: [\"http://127.0.0.1:2379\"] }}\n{extra}"
        );
        let c: MeshConfig = yaml_serde::from_str(&text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn a_valid_config_has_defaults() {
        let c =
            cfg("clusters:\n  - { name: west, id: 2, endpoints: [\"http://10.0.0.2:2379\"] }\n")
                .unwrap();
        assert_eq!(c.clusters[0].prefix, DEFAULT_PREFIX);
        assert_eq!(c.status_file, PathBuf::from(DEFAULT_STATUS_FILE));
        assert_eq!(
            c.remote_etcd(&c.clusters[0]).endpoints,
            ["http://10.0.0.2:2379"]
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (
                "clusters:\n  - { name: east, id: 2, endpoints: [\"http://10.0.0.2:2379\"] }\n",
                "clusters[0].name: \"east\" is the local cluster's name",
            ),
            (
                "clusters:\n  - { name: west, id: 1, endpoints: [\"http://10.0.0.2:2379\"] }\n",
                "clusters[0].id: 1 is the local cluster's id",
            ),
            (
                "clusters:\n  - { name: west, id: 2, endpoints: [\"http://10.0.0.2:2379\"] }\n  - { name: west, id: 3, endpoints: [\"http://10.0.0.3:2379\"] }\n",
                "clusters[1].name: \"west\" is listed twice",
            ),
            (
                "clusters:\n  - { name: west, id: 2, endpoints: [\"http://10.0.0.2:2379\"] }\n  - { name: north, id: 2, endpoints: [\"http://10.0.0.3:2379\"] }\n",
                "clusters[1].id: 2 is used by another remote cluster",
            ),
            (
                "clusters:\n  - { name: West, id: 2, endpoints: [\"http://10.0.0.2:2379\"] }\n",
                "clusters[0].name: \"West\" must be lowercase",
            ),
            (
                "clusters:\n  - { name: west, id: 0, endpoints: [\"http://10.0.0.2:2379\"] }\n",
                "clusters[0].id: must be 1-255",
            ),
            (
                "clusters:\n  - { name: west, id: 2, endpoints: [] }\n",
                "clusters[0] (west): etcd.endpoints is empty",
            ),
            (
                "clusters:\n  - { name: west, id: 2, endpoints: [\"http://127.0.0.1:2379\"] }\n",
                "clusters[0].endpoints: cluster \"west\" names the local store with the local prefix",
            ),
            (
                "clusters:\n  - { name: west, id: 2, endpoints: [\"http://10.0.0.2:2379\"], colour: red }\n",
                "unknown field `colour`",
            ),
        ];
        for (extra, want) in cases {
            let err = cfg(extra).unwrap_err();
            assert!(err.contains(want), "{extra}\n  got:  {err}\n  want: {want}");
        }
        let err = {
            let text = "cluster: { name: east, id: 0 }\nlocal: { endpoints: [\"http://127.0.0.1:2379\"] }\n";
            let c: MeshConfig = yaml_serde::from_str(text).unwrap();
            c.validate().unwrap_err().to_string()
        };
        assert!(err.starts_with("cluster.id: must be 1-255"), "{err}");
    }
}
