//! The local cache of the store: etcd key → parsed value (only the keys that matter to this
//! node), and the assembly of a whole [`State`] from it.

use std::collections::BTreeMap;

use nodeplane_state::{
    Endpoint, ExternalWorkload, Interface, IpcacheEntry, Limits, Node, Policy, Service, State,
};
use serde::{Deserialize, Serialize};

use super::mesh::{self, MeshEntry};

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
    /// `external/<name>`: a workload outside the cluster (every node takes them all).
    External(Result<ExternalWorkload, String>),
    /// `mesh/<cluster>/...`: mirrored from a remote cluster by `nodeplane mesh`.
    Mesh(String, MeshEntry),
    /// Identity allocator keys, other nodes' policies, unknown directories.
    Ignored,
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(v: &[u8], max: u64) -> Result<T, String> {
    // Checked before parsing: a value's size bounds the parser's memory and time.
    if v.len() as u64 > max {
        return Err(format!(
            "value of {} bytes is over the limit of {max} bytes (state.limits.max_file_bytes); not parsed",
            v.len()
        ));
    }
    // YAML is a superset of JSON for these values: operators may write either.
    yaml_serde::from_slice(v).map_err(|e| e.to_string())
}

/// `(key, reason)` of every key a state could not be assembled from.
pub type KeyErrors = Vec<(String, String)>;

/// The local cache: etcd key → parsed value, plus the assembly of a whole [`State`].
#[derive(Debug)]
pub struct Cache {
    prefix: String,
    node: String,
    entries: BTreeMap<String, Entry>,
    nodes: usize,
    limits: Limits,
    /// Bytes of every value the state is assembled from, by key, and their sum.
    sizes: BTreeMap<String, u64>,
    total: u64,
    /// This cluster's id: mirrored identities must not carry it.
    cluster_id: u8,
}

impl Cache {
    pub fn new(prefix: &str, node: &str) -> Self {
        Cache {
            prefix: format!("{prefix}/"),
            node: node.into(),
            entries: BTreeMap::new(),
            nodes: 0,
            limits: Limits::default(),
            sizes: BTreeMap::new(),
            total: 0,
            cluster_id: 0,
        }
    }

    /// This cluster's id (`etcd.identity.cluster_id`): a mirrored entry carrying it is refused.
    pub fn with_cluster_id(mut self, id: u8) -> Self {
        self.cluster_id = id;
        self
    }

    /// Bounds values by `limits` (default: [`Limits::default`]).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    fn set_size(&mut self, key: &str, size: Option<u64>) {
        let old = match size {
            Some(n) => self.sizes.insert(key.to_string(), n),
            None => self.sizes.remove(key),
        };
        self.total = self.total - old.unwrap_or(0) + size.unwrap_or(0);
    }

    /// Nodes in the store (keys under `nodes/`) as of the last list and the events since.
    pub fn node_count(&self) -> usize {
        self.nodes
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.nodes = 0;
        self.sizes.clear();
        self.total = 0;
    }

    fn classify(&self, key: &str, value: &[u8]) -> Entry {
        let Some(rel) = key.strip_prefix(&self.prefix) else {
            return Entry::Ignored;
        };
        let (dir, name) = rel.split_once('/').unwrap_or((rel, ""));
        let max = self.limits.max_file_bytes;
        match dir {
            "nodes" if name == self.node => Entry::OwnNode(parse(value, max)),
            "nodes" if !name.is_empty() && !name.contains('/') => Entry::OtherNode,
            "services" => Entry::Service(parse::<Service>(value, max).and_then(|s| {
                if s.name == name {
                    Ok(s)
                } else {
                    Err(format!("service name {:?} differs from the key", s.name))
                }
            })),
            "ipcache" => Entry::Ipcache(parse::<IpcacheEntry>(value, max).and_then(|e| {
                if e.prefix.to_string() == name {
                    Ok(e)
                } else {
                    Err(format!("prefix {} differs from the key", e.prefix))
                }
            })),
            "external" => Entry::External(parse::<ExternalWorkload>(value, max).and_then(|w| {
                if w.name == name {
                    Ok(w)
                } else {
                    Err(format!(
                        "external workload name {:?} differs from the key",
                        w.name
                    ))
                }
            })),
            "mesh" => match mesh::classify(name, value, max, self.cluster_id) {
                Some((cluster, e)) => Entry::Mesh(cluster, e),
                None => Entry::Ignored,
            },
            "policies" => match name.split_once('/') {
                Some((n, ep)) if n == self.node => {
                    Entry::Policy(parse::<Policy>(value, max).and_then(|p| {
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
            self.set_size(key, None);
            self.entries.remove(key).is_some()
        } else {
            if matches!(e, Entry::OwnNode(_) | Entry::OtherNode) && !was_node {
                self.nodes += 1;
            }
            // Other nodes' records are not part of this node's state: not counted.
            let counted = !matches!(e, Entry::OtherNode);
            self.set_size(key, counted.then_some(value.len() as u64));
            self.entries.insert(key.to_string(), e);
            true
        }
    }

    /// Records a delete; `true` when a key the state is assembled from went away.
    pub fn delete(&mut self, key: &str) -> bool {
        self.set_size(key, None);
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
        self.assemble_noted(local).map(|(s, _)| s)
    }

    /// [`Cache::assemble`], with the notes on mirrored entries left out (see `mesh`).
    pub fn assemble_noted(&self, local: Option<&State>) -> Result<(State, Vec<String>), KeyErrors> {
        let mut errors = Vec::new();
        if self.total > self.limits.max_total_bytes {
            errors.push((
                self.prefix.clone(),
                format!(
                    "the values this node's state is assembled from add up to {} bytes, over \
                     the limit of {} bytes (state.limits.max_total_bytes)",
                    self.total, self.limits.max_total_bytes
                ),
            ));
            return Err(errors);
        }
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
                Entry::External(Ok(w)) => st.external_workloads.push(w.clone()),
                Entry::Service(Err(m))
                | Entry::Ipcache(Err(m))
                | Entry::Policy(Err(m))
                | Entry::External(Err(m)) => errors.push((k.clone(), m.clone())),
                _ => {}
            }
        }
        // Mirrored entries last: they join a state whose local part is complete.
        let (mesh_errors, notes) = mesh::merge(
            &mut st,
            self.entries.iter().filter_map(|(k, e)| match e {
                Entry::Mesh(c, m) => Some((k, c, m)),
                _ => None,
            }),
        );
        errors.extend(mesh_errors);
        if errors.is_empty() {
            Ok((st, notes))
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "name: web\ntype: ClusterIP\nfrontends: [{ ip: 10.96.0.10, port: 80 }]\nbackends: [{ ip: 10.244.1.21, port: 8080 }]\n";

    fn cache(file: u64, total: u64) -> Cache {
        let mut c = Cache::new("/np", "node-1").with_limits(Limits {
            max_file_bytes: file,
            max_total_bytes: total,
            max_files: 1,
        });
        c.put("/np/nodes/node-1", b"endpoints: []\n");
        c
    }

    /// Issue 13 item 9: a value over `max_file_bytes` is not parsed and names its key and the
    /// limit; values adding up past `max_total_bytes` reject the assembly; a delete brings the
    /// total back under.
    #[test]
    fn values_are_bounded_before_parsing() {
        let local = State::default();
        let n = SVC.len() as u64;
        let mut c = cache(n, 10 * n);
        c.put("/np/services/web", SVC.as_bytes());
        assert_eq!(c.assemble(Some(&local)).unwrap().services.len(), 1);

        let mut c = cache(n - 1, 10 * n);
        c.put("/np/services/web", SVC.as_bytes());
        let errs = c.assemble(Some(&local)).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, "/np/services/web");
        assert!(
            errs[0].1.contains(&format!(
                "value of {n} bytes is over the limit of {} bytes (state.limits.max_file_bytes)",
                n - 1
            )),
            "{errs:?}"
        );

        let mut c = cache(n, 2 * n);
        c.put("/np/services/web", SVC.as_bytes());
        // Other nodes' records are not this node's state: not counted.
        c.put("/np/nodes/node-2", &vec![b'#'; 4 * n as usize]);
        c.put(
            "/np/services/web2",
            SVC.replace("name: web", "name: web2").as_bytes(),
        );
        let errs = c.assemble(Some(&local)).unwrap_err();
        assert!(
            errs[0].1.contains("state.limits.max_total_bytes"),
            "{errs:?}"
        );
        c.delete("/np/services/web2");
        assert_eq!(c.assemble(Some(&local)).unwrap().services.len(), 1);
        // Replacing a value counts its new size only.
        c.put("/np/services/web", SVC.as_bytes());
        assert_eq!(c.assemble(Some(&local)).unwrap().services.len(), 1);
    }
}
