//! The agent's side of several clusters: the keys `nodeplane mesh` mirrors into the local store
//! (`mesh/<cluster>/ipcache/<prefix>`, `mesh/<cluster>/services/<name>`) and how they join this
//! node's state (docs/multicluster.md):
//! - remote ipcache entries are added after the local ones; one that would collide (a prefix
//!   already present, locally or from a cluster earlier in name order, or a host route on a
//!   node IP, a local endpoint's IP or an external workload's IP) is left out with a note, so a
//!   remote cluster can never reject this node's state or take over a local address;
//! - a local service with `global: true` gets the backends of every remote cluster's global
//!   service of the same name appended (in cluster name order, an `ip:port` already present is
//!   not added twice); the local definition alone gives frontends, ports and settings.
//!
//! A mirrored value that does not parse, whose name differs from its key, that is not global, or
//! whose identity carries this cluster's id is an error naming the key, as for any key (the
//! mirror never writes such a value; a hand-written one is refused).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use nodeplane_state::{IpcacheEntry, Service, State};

/// One mirrored key this node uses.
#[derive(Debug, Clone)]
pub(super) enum MeshEntry {
    Ipcache(Result<IpcacheEntry, String>),
    Service(Result<Service, String>),
}

/// `rest` is the key after `mesh/`: `<cluster>/<dir>/<name>`. `None`: not a key agents use
/// (mirrored identities, unknown directories).
pub(super) fn classify(
    rest: &str,
    value: &[u8],
    max: u64,
    local_cluster: u8,
) -> Option<(String, MeshEntry)> {
    let (cluster, rel) = rest.split_once('/')?;
    let (dir, name) = rel.split_once('/')?;
    let entry = match dir {
        "ipcache" => MeshEntry::Ipcache(parse::<IpcacheEntry>(value, max).and_then(|e| {
            if e.prefix.to_string() != name {
                Err(format!("prefix {} differs from the key", e.prefix))
            } else if e.identity >> 24 == u32::from(local_cluster) {
                Err(format!(
                    "identity {} carries this cluster's id {local_cluster}: a remote cluster \
                     cannot hold local identities (are two clusters configured with one id?)",
                    e.identity
                ))
            } else {
                Ok(e)
            }
        })),
        "services" => MeshEntry::Service(parse::<Service>(value, max).and_then(|s| {
            if s.name != name {
                Err(format!("service name {:?} differs from the key", s.name))
            } else if !s.global {
                Err("a mirrored service must be global: true".into())
            } else {
                Ok(s)
            }
        })),
        _ => return None,
    };
    Some((cluster.to_string(), entry))
}

/// Merges the mirrored entries (`(key, cluster, entry)`, in key order) into `st`, whose local
/// part is complete. Returns the keys in error and the notes (entries left out, and why).
pub(super) fn merge<'a>(
    st: &mut State,
    entries: impl Iterator<Item = (&'a String, &'a String, &'a MeshEntry)>,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    let mut taken: HashSet<IpNet> = st.ipcache.iter().map(|e| e.prefix.trunc()).collect();
    let mut hosts: BTreeMap<IpAddr, String> = BTreeMap::new();
    for ip in &st.node.node_ips {
        hosts.insert(*ip, "a node IP".into());
    }
    for ep in &st.endpoints {
        for ip in &ep.ips {
            hosts.insert(*ip, format!("an IP of local endpoint {}", ep.name));
        }
    }
    for w in &st.external_workloads {
        for ip in &w.ips {
            hosts.insert(*ip, format!("an IP of external workload {}", w.name));
        }
    }
    // name → (cluster, backends) of the remote global services.
    let mut remote_services: BTreeMap<&str, Vec<(&str, &Service)>> = BTreeMap::new();
    for (key, cluster, entry) in entries {
        match entry {
            MeshEntry::Ipcache(Ok(e)) => {
                let p = e.prefix.trunc();
                let host = (p.prefix_len() == p.max_prefix_len())
                    .then(|| hosts.get(&p.addr()))
                    .flatten();
                if let Some(what) = host {
                    notes.push(format!("{key}: {} is {what}; left out", p.addr()));
                } else if !taken.insert(p) {
                    notes.push(format!(
                        "{key}: prefix {p} is already in this node's ipcache (locally or from a \
                         cluster earlier in name order); left out"
                    ));
                } else {
                    st.ipcache.push(e.clone());
                }
            }
            MeshEntry::Service(Ok(s)) => {
                remote_services
                    .entry(&s.name)
                    .or_default()
                    .push((cluster, s));
            }
            MeshEntry::Ipcache(Err(m)) | MeshEntry::Service(Err(m)) => {
                errors.push((key.clone(), m.clone()))
            }
        }
    }
    for svc in &mut st.services {
        let Some(remotes) = remote_services.remove(svc.name.as_str()) else {
            continue;
        };
        if !svc.global {
            notes.push(format!(
                "service {}: exported as global by cluster(s) {}, but not global here: their \
                 backends are not merged",
                svc.name,
                remotes
                    .iter()
                    .map(|(c, _)| *c)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            continue;
        }
        let mut have: HashSet<(IpAddr, u16)> =
            svc.backends.iter().map(|b| (b.ip, b.port)).collect();
        for (_, remote) in remotes {
            for b in &remote.backends {
                if have.insert((b.ip, b.port)) {
                    svc.backends.push(b.clone());
                }
            }
        }
    }
    (errors, notes)
}

fn parse<T: serde::de::DeserializeOwned>(v: &[u8], max: u64) -> Result<T, String> {
    super::cache::parse(v, max)
}

#[cfg(test)]
mod tests {
    use super::super::Cache;

    const WEST: u32 = 2 << 24;
    const NORTH: u32 = 3 << 24;

    fn cache() -> Cache {
        let mut c = Cache::new("/np", "node-1").with_cluster_id(1);
        c.put(
            "/np/nodes/node-1",
            b"node: { name: node-1, node_ips: [192.168.1.10] }\nendpoints: [{ name: web-1, ips: [10.244.1.21], mac: 02:00:00:00:00:01, interface: pod-web1, identity: 1002 }]\n",
        );
        c.put(
            "/np/ipcache/10.245.0.0/16",
            b"{ prefix: 10.245.0.0/16, identity: 3000 }",
        );
        c.put(
            "/np/services/web",
            b"name: web\ntype: ClusterIP\nglobal: true\nfrontends: [{ ip: 10.96.0.10, port: 80 }]\nbackends: [{ ip: 10.244.1.21, port: 8080 }]\n",
        );
        c
    }

    fn svc(backends: &str, global: bool) -> Vec<u8> {
        format!("name: web\ntype: ClusterIP\nglobal: {global}\nfrontends: [{{ ip: 10.99.0.1, port: 80 }}]\nbackends: [{backends}]\n").into_bytes()
    }

    #[test]
    fn global_services_merge_backends_and_ipcache_entries_join_without_collisions() {
        let mut c = cache();
        c.put(
            "/np/mesh/west/services/web",
            &svc(
                "{ ip: 10.2.0.5, port: 8080 }, { ip: 10.244.1.21, port: 8080 }",
                true,
            ),
        );
        c.put(
            "/np/mesh/north/services/web",
            &svc("{ ip: 10.3.0.5, port: 8080 }", true),
        );
        c.put(
            "/np/mesh/north/services/other",
            b"name: other\ntype: ClusterIP\nglobal: true\nbackends: [{ ip: 10.3.0.9, port: 1 }]\n",
        );
        c.put(
            "/np/mesh/west/ipcache/10.2.0.5/32",
            format!("{{ prefix: 10.2.0.5/32, identity: {} }}", WEST | 300).as_bytes(),
        );
        // Collisions: a local prefix, a prefix of a cluster earlier in name order, a local
        // endpoint's IP, a node IP.
        for (cluster, id, p) in [
            ("west", WEST, "10.245.0.0/16"),
            ("zulu", 4 << 24, "10.2.0.5/32"),
            ("north", NORTH, "10.244.1.21/32"),
            ("north", NORTH, "192.168.1.10/32"),
        ] {
            c.put(
                &format!("/np/mesh/{cluster}/ipcache/{p}"),
                format!("{{ prefix: {p}, identity: {} }}", id | 300).as_bytes(),
            );
        }
        // Mirrored identities are not part of the state.
        assert!(!c.put("/np/mesh/west/identities/33554732", b"app=web"));
        let (st, notes) = c.assemble_noted(None).unwrap();
        let web = st.services.iter().find(|s| s.name == "web").unwrap();
        let backends: Vec<String> = web
            .backends
            .iter()
            .map(|b| format!("{}:{}", b.ip, b.port))
            .collect();
        // Local first, then clusters in name order (north, west); a duplicate only once.
        assert_eq!(
            backends,
            ["10.244.1.21:8080", "10.3.0.5:8080", "10.2.0.5:8080"]
        );
        // The local frontends stay.
        assert_eq!(web.frontends[0].ip.to_string(), "10.96.0.10");
        // A remote service with no local counterpart adds nothing.
        assert_eq!(st.services.len(), 1);
        let ipc: Vec<String> = st
            .ipcache
            .iter()
            .map(|e| format!("{}={}", e.prefix, e.identity))
            .collect();
        assert_eq!(
            ipc,
            [
                "10.245.0.0/16=3000".to_string(),
                format!("10.2.0.5/32={}", WEST | 300)
            ]
        );
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("192.168.1.10 is a node IP")),
            "{notes:?}"
        );
        assert!(
            notes
                .iter()
                .any(|n| n.contains("an IP of local endpoint web-1")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.starts_with(
                "/np/mesh/west/ipcache/10.245.0.0/16: prefix 10.245.0.0/16 is already"
            )),
            "{notes:?}"
        );
    }

    #[test]
    fn a_local_service_that_is_not_global_takes_no_remote_backends() {
        let mut c = cache();
        c.put(
            "/np/services/web",
            b"name: web\ntype: ClusterIP\nfrontends: [{ ip: 10.96.0.10, port: 80 }]\nbackends: [{ ip: 10.244.1.21, port: 8080 }]\n",
        );
        c.put(
            "/np/mesh/west/services/web",
            &svc("{ ip: 10.2.0.5, port: 8080 }", true),
        );
        let (st, notes) = c.assemble_noted(None).unwrap();
        assert_eq!(st.services[0].backends.len(), 1);
        assert!(
            notes[0].contains("exported as global by cluster(s) west, but not global here"),
            "{notes:?}"
        );
    }

    #[test]
    fn bad_mirrored_values_are_errors_naming_the_key() {
        let mut c = cache();
        c.put(
            "/np/mesh/west/services/web",
            &svc("{ ip: 10.2.0.5, port: 8080 }", false),
        );
        c.put(
            "/np/mesh/west/ipcache/10.2.0.6/32",
            b"{ prefix: 10.2.0.6/32, identity: 16777516 }",
        );
        c.put(
            "/np/mesh/west/ipcache/10.2.0.7/32",
            b"{ prefix: 10.2.0.8/32, identity: 33554732 }",
        );
        let errs = c.assemble(None).unwrap_err();
        let find = |k: &str| {
            errs.iter()
                .find(|(key, _)| key == k)
                .map(|(_, m)| m.as_str())
                .unwrap_or("")
        };
        assert!(
            find("/np/mesh/west/services/web").contains("must be global: true"),
            "{errs:?}"
        );
        assert!(
            find("/np/mesh/west/ipcache/10.2.0.6/32").contains("carries this cluster's id 1"),
            "{errs:?}"
        );
        assert!(
            find("/np/mesh/west/ipcache/10.2.0.7/32").contains("differs from the key"),
            "{errs:?}"
        );
    }
}
