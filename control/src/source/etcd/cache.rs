//! The local cache of the store: etcd key → parsed value (only the keys that matter to this
//! node), and the assembly of a whole [`State`] from it.

use std::collections::BTreeMap;

use nodeplane_state::{Endpoint, Interface, IpcacheEntry, Node, Policy, Service, State};
use serde::{Deserialize, Serialize};

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
