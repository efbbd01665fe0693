//! What a remote cluster exports, and what the mirror writes: pure functions, no I/O.
//!
//! A remote key (relative to the remote prefix) is one of
//! - exported and mirrored as is: `ipcache/<prefix>` whose identity carries the remote's cluster
//!   id, `services/<name>` marked `global: true`, `identities/<id>` of the remote's cluster id;
//! - filtered: in an exported directory but refused (bad value, name ≠ key, another cluster's
//!   identity, too big); counted and named in the status, never written;
//! - not exported: everything else (node records, policies, external workloads, the allocator's
//!   other keys, the remote's own `mesh/` mirror: mirrored keys are never mirrored again).

use std::collections::BTreeMap;

use nodeplane_state::{IpcacheEntry, Service};

/// The local directory of mirrored keys: `<local prefix>/mesh/<cluster>/<relative key>`.
pub const MESH_DIR: &str = "mesh";

/// The remote directories that are read at all (everything else is never fetched).
pub const EXPORTED_DIRS: [&str; 3] = ["identities/", "ipcache/", "services/"];

/// What happens to one remote key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    Mirror,
    /// Not part of the export: silently left out.
    NotExported,
    /// In an exported directory but refused: the reason, for the status and the log.
    Filtered(String),
}

/// Identity `id` belongs to cluster `cluster` and is a user identity (local part ≥ 256).
fn identity_problem(id: u32, cluster: u8) -> Option<String> {
    let (c, local) = (id >> 24, id & 0x00ff_ffff);
    if c != u32::from(cluster) {
        Some(format!(
            "identity {id} belongs to cluster id {c}, not to this cluster's id {cluster}"
        ))
    } else if local < 256 {
        Some(format!("identity {id} is reserved (low 24 bits below 256)"))
    } else {
        None
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, String> {
    yaml_serde::from_slice(v).map_err(|e| format!("does not parse: {e}"))
}

/// Classifies the remote key `rel` (relative to the remote prefix, no leading '/') with `value`,
/// for a remote cluster of id `cluster`.
pub fn export(rel: &str, value: &[u8], cluster: u8, max_bytes: u64) -> Export {
    let Some((dir, name)) = rel.split_once('/') else {
        return Export::NotExported;
    };
    if !matches!(dir, "ipcache" | "services" | "identities") {
        return Export::NotExported;
    }
    if value.len() as u64 > max_bytes {
        return Export::Filtered(format!(
            "value of {} bytes is over max_value_bytes {max_bytes}",
            value.len()
        ));
    }
    let verdict = match dir {
        "ipcache" => parse::<IpcacheEntry>(value).and_then(|e| {
            if e.prefix.to_string() != name || e.prefix.trunc() != e.prefix {
                Err(format!("prefix {} differs from the key", e.prefix))
            } else {
                identity_problem(e.identity, cluster).map_or(Ok(()), Err)
            }
        }),
        "services" => match parse::<Service>(value) {
            Err(e) => Err(e),
            Ok(s) if !s.global => return Export::NotExported,
            Ok(s) if s.name != name => {
                Err(format!("service name {:?} differs from the key", s.name))
            }
            Ok(_) => Ok(()),
        },
        _ => match name.parse::<u32>() {
            Err(_) => Err(format!("{name:?} is not an identity number")),
            Ok(id) => match identity_problem(id, cluster) {
                Some(p) => Err(p),
                None if std::str::from_utf8(value).is_err() => {
                    Err("labels are not UTF-8".to_string())
                }
                None => Ok(()),
            },
        },
    };
    match verdict {
        Ok(()) => Export::Mirror,
        Err(why) => Export::Filtered(why),
    }
}

/// One write to the local store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// The writes that turn `actual` (what the local store holds under `mesh/<cluster>/`) into
/// `desired` (what the remote exports), both keyed by the relative key: puts of new and changed
/// values, deletes of keys the remote no longer exports. Keys in order.
pub fn plan(desired: &BTreeMap<String, Vec<u8>>, actual: &BTreeMap<String, Vec<u8>>) -> Vec<Op> {
    let mut ops = Vec::new();
    for (k, v) in desired {
        if actual.get(k) != Some(v) {
            ops.push(Op::Put(k.clone(), v.clone()));
        }
    }
    for k in actual.keys() {
        if !desired.contains_key(k) {
            ops.push(Op::Delete(k.clone()));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEST: u8 = 2;
    const ID: u32 = (2 << 24) | 300;

    fn ex(rel: &str, v: &str) -> Export {
        export(rel, v.as_bytes(), WEST, 1 << 20)
    }

    #[test]
    fn exported_keys_are_mirrored_and_the_rest_left_out() {
        let ipc = format!("{{\"prefix\":\"10.2.0.5/32\",\"identity\":{ID}}}");
        assert_eq!(ex("ipcache/10.2.0.5/32", &ipc), Export::Mirror);
        let svc =
            "name: web\ntype: ClusterIP\nglobal: true\nbackends: [{ ip: 10.2.0.5, port: 80 }]\n";
        assert_eq!(ex("services/web", svc), Export::Mirror);
        assert_eq!(ex(&format!("identities/{ID}"), "app=web"), Export::Mirror);
        // Not global: not exported.
        let local_only = "name: web\ntype: ClusterIP\n";
        assert_eq!(ex("services/web", local_only), Export::NotExported);
        for rel in [
            "nodes/n1",
            "policies/n1/web-1",
            "external/vm",
            "identity-refs/1/n/e",
            "identities-by-labels/app=web",
            "identity-next/2",
            "mesh/north/ipcache/10.3.0.5/32",
            "mesh",
        ] {
            assert_eq!(ex(rel, &ipc), Export::NotExported, "{rel}");
        }
    }

    #[test]
    fn refused_values_say_why() {
        let other = (3u32 << 24) | 300;
        let cases = [
            (
                "ipcache/10.2.0.5/32".to_string(),
                format!("{{\"prefix\":\"10.2.0.5/32\",\"identity\":{other}}}"),
                "belongs to cluster id 3, not to this cluster's id 2",
            ),
            (
                "ipcache/10.2.0.6/32".to_string(),
                format!("{{\"prefix\":\"10.2.0.5/32\",\"identity\":{ID}}}"),
                "differs from the key",
            ),
            (
                "ipcache/10.2.0.5/32".to_string(),
                format!(
                    "{{\"prefix\":\"10.2.0.5/32\",\"identity\":{}}}",
                    2u32 << 24 | 7
                ),
                "is reserved",
            ),
            ("ipcache/x".to_string(), "{".to_string(), "does not parse"),
            (
                "services/api".to_string(),
                "name: web\ntype: ClusterIP\nglobal: true\n".to_string(),
                "service name \"web\" differs from the key",
            ),
            (
                format!("identities/{other}"),
                "app=web".to_string(),
                "belongs to cluster id 3",
            ),
            (
                "identities/abc".to_string(),
                "app=web".to_string(),
                "not an identity number",
            ),
        ];
        for (rel, v, want) in cases {
            match ex(&rel, &v) {
                Export::Filtered(why) => assert!(why.contains(want), "{rel}: {why}"),
                other => panic!("{rel}: {other:?}"),
            }
        }
        match export("identities/33554732", b"app=web", WEST, 3) {
            Export::Filtered(why) => assert!(why.contains("over max_value_bytes 3"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plan_puts_what_changed_and_deletes_what_left() {
        let m = |kv: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        let desired = m(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let actual = m(&[("a", "1"), ("b", "old"), ("d", "4")]);
        assert_eq!(
            plan(&desired, &actual),
            vec![
                Op::Put("b".into(), b"2".to_vec()),
                Op::Put("c".into(), b"3".to_vec()),
                Op::Delete("d".into()),
            ]
        );
        assert!(plan(&desired, &desired).is_empty());
        assert_eq!(plan(&BTreeMap::new(), &actual).len(), 3);
    }
}
