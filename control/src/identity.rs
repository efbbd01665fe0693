//! Security identities allocated in etcd from labels (etcd mode).
//!
//! A local endpoint's identity comes from its security-relevant labels: the labels that pass the
//! [`LabelFilter`] (Cilium's `--labels` idea: `prefix` includes, `!prefix` excludes), written in
//! canonical form (`k=v` sorted by key, `;`-joined, percent-escaped). The same label set on any
//! node gets the same number:
//!
//! ```text
//!   <prefix>/identities-by-labels/<canonical>   → "<id>"
//!   <prefix>/identities/<id>                    → "<canonical>"
//!   <prefix>/identity-refs/<id>/<node>/<ep>     → ""          one per referencing endpoint
//!   <prefix>/identity-next/<cluster id>         → "<n>"       next local number to try
//! ```
//!
//! `id = cluster_id << 24 | n`, `256 <= n < 2^24`. A new label set is created by one transaction
//! that requires `identities-by-labels/<canonical>` and `identities/<id>` to be absent and the
//! counter unchanged; of two nodes racing for the same labels one transaction wins and the other
//! retries, finds the mapping and uses it. Taking a reference rewrites `identities/<id>` (same
//! value) in the same transaction, so its mod revision changes whenever a reference is added;
//! release deletes its reference, then reads the references and `identities/<id>` in one
//! transaction and deletes the identity only if there are none, guarded by that mod revision.

use std::collections::BTreeMap;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use nodeplane_state::Identity;
use serde::{Deserialize, Serialize};

/// Local identity numbers: `FIRST_LOCAL..=LOCAL_MASK` within one cluster.
pub const FIRST_LOCAL: u32 = 256;
pub const LOCAL_MASK: u32 = 0x00ff_ffff;
/// Transactions lost to concurrent writers before giving up (each retry re-reads).
const MAX_RETRIES: usize = 64;

/// Labels of workload controllers that say nothing about security (Cilium's default ignores).
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "controller-revision-hash",
    "pod-template-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "job-name",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
];

/// `etcd.identity` in the daemon config.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// High 8 bits of every identity allocated here.
    pub cluster_id: u8,
    /// Label filter: `prefix` keeps labels whose key starts with it, `!prefix` drops them.
    /// With no include entry every label is included. Empty list: all labels except
    /// [`DEFAULT_EXCLUDES`].
    pub labels: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("label filter entry {0:?} is empty")]
    EmptyFilter(String),
    #[error("etcd: {}", crate::source::etcd::describe(.0))]
    Store(#[from] etcd_client::Error),
    #[error("identity space of cluster {cluster} is full ({count} local identities)")]
    Exhausted { cluster: u8, count: u32 },
    #[error("key {key}: value {value:?} is not an identity number")]
    Corrupt { key: String, value: String },
    #[error("gave up after {MAX_RETRIES} conflicting transactions on {0}")]
    Contended(String),
}

/// Which labels are security-relevant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelFilter {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl LabelFilter {
    pub fn parse(specs: &[String]) -> Result<Self, IdentityError> {
        let mut f = LabelFilter {
            include: Vec::new(),
            exclude: Vec::new(),
        };
        if specs.is_empty() {
            f.exclude = DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect();
            return Ok(f);
        }
        for s in specs {
            let (list, p) = match s.strip_prefix('!') {
                Some(p) => (&mut f.exclude, p),
                None => (&mut f.include, s.as_str()),
            };
            if p.is_empty() {
                return Err(IdentityError::EmptyFilter(s.clone()));
            }
            list.push(p.to_string());
        }
        Ok(f)
    }

    pub fn keeps(&self, key: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| key.starts_with(p.as_str())))
            && !self.exclude.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// The canonical string of the kept labels.
    pub fn canonical(&self, labels: &BTreeMap<String, String>) -> String {
        let mut out = String::new();
        for (k, v) in labels.iter().filter(|(k, _)| self.keeps(k)) {
            if !out.is_empty() {
                out.push(';');
            }
            escape(k, &mut out);
            out.push('=');
            escape(v, &mut out);
        }
        out
    }
}

/// Percent-escapes everything but `[A-Za-z0-9._/-]` so `;` and `=` only ever separate.
fn escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Allocates and releases identities for one node.
pub struct IdentityAllocator {
    client: Client,
    prefix: String,
    node: String,
    cluster_id: u8,
    filter: LabelFilter,
}

impl std::fmt::Debug for IdentityAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityAllocator")
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .field("cluster_id", &self.cluster_id)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl IdentityAllocator {
    pub fn new(
        client: Client,
        prefix: &str,
        node: &str,
        cfg: &IdentityConfig,
    ) -> Result<Self, IdentityError> {
        Ok(IdentityAllocator {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
            node: node.to_string(),
            cluster_id: cfg.cluster_id,
            filter: LabelFilter::parse(&cfg.labels)?,
        })
    }

    pub fn filter(&self) -> &LabelFilter {
        &self.filter
    }

    fn by_labels_key(&self, canonical: &str) -> String {
        format!("{}/identities-by-labels/{canonical}", self.prefix)
    }
    fn id_key(&self, id: Identity) -> String {
        format!("{}/identities/{id}", self.prefix)
    }
    fn refs_prefix(&self, id: Identity) -> String {
        format!("{}/identity-refs/{id}/", self.prefix)
    }
    fn ref_key(&self, id: Identity, endpoint: &str) -> String {
        format!("{}{}/{endpoint}", self.refs_prefix(id), self.node)
    }
    fn counter_key(&self) -> String {
        format!("{}/identity-next/{}", self.prefix, self.cluster_id)
    }

    /// The identity of `labels` (after filtering), taking a reference for `endpoint`.
    pub async fn allocate(
        &mut self,
        endpoint: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Identity, IdentityError> {
        let canonical = self.filter.canonical(labels);
        let by_labels = self.by_labels_key(&canonical);
        for _ in 0..MAX_RETRIES {
            let got = self.client.get(by_labels.as_str(), None).await?;
            if let Some(kv) = got.kvs().first() {
                let raw = String::from_utf8_lossy(kv.value()).to_string();
                let id: Identity = raw.parse().map_err(|_| IdentityError::Corrupt {
                    key: by_labels.clone(),
                    value: raw.clone(),
                })?;
                // Take a reference while the mapping still stands; rewriting identities/<id>
                // bumps its mod revision so a concurrent release notices.
                let txn = Txn::new()
                    .when([
                        Compare::value(by_labels.as_str(), CompareOp::Equal, raw.as_str()),
                        Compare::version(self.id_key(id), CompareOp::Greater, 0),
                    ])
                    .and_then([
                        TxnOp::put(self.ref_key(id, endpoint), "", None),
                        TxnOp::put(self.id_key(id), canonical.as_str(), None),
                    ]);
                if self.client.txn(txn).await?.succeeded() {
                    return Ok(id);
                }
                continue; // released or replaced meanwhile: start over
            }
            // New label set: take the next free number.
            let counter = self.counter_key();
            let c = self.client.get(counter.as_str(), None).await?;
            let (mut n, counter_cmp) = match c.kvs().first() {
                Some(kv) => {
                    let raw = String::from_utf8_lossy(kv.value()).to_string();
                    let n: u32 = raw.parse().map_err(|_| IdentityError::Corrupt {
                        key: counter.clone(),
                        value: raw,
                    })?;
                    (
                        n,
                        Compare::mod_revision(
                            counter.as_str(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        ),
                    )
                }
                None => (
                    FIRST_LOCAL,
                    Compare::version(counter.as_str(), CompareOp::Equal, 0),
                ),
            };
            // Skip numbers still in use (the counter wrapped or was reset).
            let mut probed = 0u32;
            let space = LOCAL_MASK + 1 - FIRST_LOCAL;
            let id = loop {
                if !(FIRST_LOCAL..=LOCAL_MASK).contains(&n) {
                    n = FIRST_LOCAL;
                }
                let id = (u32::from(self.cluster_id) << 24) | n;
                let r = self
                    .client
                    .get(self.id_key(id), Some(GetOptions::new().with_count_only()))
                    .await?;
                if r.count() == 0 {
                    break id;
                }
                probed += 1;
                if probed >= space {
                    return Err(IdentityError::Exhausted {
                        cluster: self.cluster_id,
                        count: space,
                    });
                }
                n += 1;
            };
            let next = if n >= LOCAL_MASK { FIRST_LOCAL } else { n + 1 };
            let txn = Txn::new()
                .when([
                    Compare::version(by_labels.as_str(), CompareOp::Equal, 0),
                    Compare::version(self.id_key(id), CompareOp::Equal, 0),
                    counter_cmp,
                ])
                .and_then([
                    TxnOp::put(by_labels.as_str(), id.to_string(), None),
                    TxnOp::put(self.id_key(id), canonical.as_str(), None),
                    TxnOp::put(counter.as_str(), next.to_string(), None),
                    TxnOp::put(self.ref_key(id, endpoint), "", None),
                ]);
            if self.client.txn(txn).await?.succeeded() {
                return Ok(id);
            }
            // Someone else created this label set or took the number: re-read.
        }
        Err(IdentityError::Contended(by_labels))
    }

    /// Drops `endpoint`'s reference to `id`; frees the identity when it was the last one.
    /// Returns whether the identity was freed.
    pub async fn release(&mut self, endpoint: &str, id: Identity) -> Result<bool, IdentityError> {
        self.client.delete(self.ref_key(id, endpoint), None).await?;
        let id_key = self.id_key(id);
        for _ in 0..MAX_RETRIES {
            // References and the identity read in one transaction: one consistent revision.
            let read = Txn::new().and_then([
                TxnOp::get(
                    self.refs_prefix(id),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                ),
                TxnOp::get(id_key.as_str(), None),
            ]);
            let resp = self.client.txn(read).await?;
            let ops = resp.op_responses();
            let (refs, ident) = match (ops.first(), ops.get(1)) {
                (Some(TxnOpResponse::Get(r)), Some(TxnOpResponse::Get(i))) => (r.count(), i),
                _ => return Ok(false),
            };
            let Some(kv) = ident.kvs().first() else {
                return Ok(false); // already freed
            };
            if refs > 0 {
                return Ok(false);
            }
            let canonical = String::from_utf8_lossy(kv.value()).to_string();
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    id_key.as_str(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([
                    TxnOp::delete(id_key.as_str(), None),
                    TxnOp::delete(self.by_labels_key(&canonical), None),
                ]);
            if self.client.txn(txn).await?.succeeded() {
                return Ok(true);
            }
        }
        Err(IdentityError::Contended(id_key))
    }

    /// The identity currently mapped to `labels`, if any (no reference taken).
    pub async fn lookup(
        &mut self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<Identity>, IdentityError> {
        let key = self.by_labels_key(&self.filter.canonical(labels));
        let got = self.client.get(key.as_str(), None).await?;
        match got.kvs().first() {
            None => Ok(None),
            Some(kv) => {
                let raw = String::from_utf8_lossy(kv.value()).to_string();
                raw.parse()
                    .map(Some)
                    .map_err(|_| IdentityError::Corrupt { key, value: raw })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn default_filter_drops_controller_labels() {
        let f = LabelFilter::parse(&[]).unwrap();
        let l = labels(&[("app", "web"), ("pod-template-hash", "abc"), ("tier", "fe")]);
        assert_eq!(f.canonical(&l), "app=web;tier=fe");
    }

    #[test]
    fn include_and_exclude_prefixes() {
        let f =
            LabelFilter::parse(&["app".into(), "k8s.io/".into(), "!k8s.io/skip".into()]).unwrap();
        let l = labels(&[
            ("app", "a"),
            ("application", "b"),
            ("k8s.io/role", "x"),
            ("k8s.io/skip-me", "y"),
            ("other", "z"),
        ]);
        assert_eq!(f.canonical(&l), "app=a;application=b;k8s.io/role=x");
        assert!(matches!(
            LabelFilter::parse(&["!".into()]),
            Err(IdentityError::EmptyFilter(_))
        ));
    }

    #[test]
    fn canonical_escapes_separators() {
        let f = LabelFilter::parse(&[]).unwrap();
        let a = labels(&[("a", "1;b=2")]);
        let b = labels(&[("a", "1"), ("b", "2")]);
        assert_ne!(f.canonical(&a), f.canonical(&b));
        assert_eq!(f.canonical(&a), "a=1%3Bb%3D2");
    }
}
