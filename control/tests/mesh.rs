//! Several clusters (issue 15 item 1): `nodeplane mesh` mirrors the exported keys of remote
//! clusters' stores into the local store, and agents read them from there only. Real etcd
//! servers, started per test: the local store and two remote ones, one of them killed.
//!
//! ```text
//!   etcd west ──┐                         ┌── EtcdSource (an agent of east, cluster id 1)
//!   etcd north ─┴─> mirror (mesh::run) ──> etcd east (local)  mesh/west/..., mesh/north/...
//! ```

mod etcd_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use etcd_support::{config, Running, Store, PREFIX};
use nodeplane_control::mesh::{self, ClusterState, MeshConfig, MeshStatus};
use nodeplane_control::source::etcd::server::LocalEtcd;
use nodeplane_control::source::etcd::EtcdSource;
use nodeplane_state::{example, State};

const WEST: u32 = 2 << 24;
const NORTH: u32 = 3 << 24;

fn etcd() -> LocalEtcd {
    LocalEtcd::start().unwrap_or_else(|e| panic!("cannot run the test etcd: {e}"))
}

/// A mirror running on its own thread; stopped and joined on drop.
struct Mirror {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    status_file: PathBuf,
}

impl Mirror {
    fn start(cfg: MeshConfig) -> Mirror {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let status_file = cfg.status_file.clone();
        let handle = std::thread::spawn(move || {
            mesh::run(cfg, s2).unwrap_or_else(|e| panic!("mesh: {e}"));
        });
        Mirror {
            stop,
            handle: Some(handle),
            status_file,
        }
    }

    fn status(&self) -> Option<MeshStatus> {
        mesh::read_status(&self.status_file).ok()
    }

    /// Waits until `pred` holds for the status; panics with the last status otherwise.
    fn wait(&self, what: &str, pred: impl Fn(&MeshStatus) -> bool) -> MeshStatus {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(s) = self.status() {
                if pred(&s) {
                    return s;
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mesh status never showed {what}; last: {last:#?}");
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn cluster<'a>(s: &'a MeshStatus, name: &str) -> &'a mesh::ClusterStatus {
    s.clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name} in {s:#?}"))
}

fn synced(s: &MeshStatus, name: &str) -> bool {
    let c = cluster(s, name);
    s.local.connected && c.state == ClusterState::Synced && c.written
}

fn mesh_config(dir: &Path, local: &str, remotes: &[(&str, u8, &str)]) -> MeshConfig {
    let mut text = format!(
        "cluster: {{ name: east, id: 1 }}\nlocal: {{ endpoints: [\"{local}\"] }}\n\
         backoff: {{ base_ms: 100, cap_ms: 400 }}\ndebounce_ms: 20\nrequest_timeout_ms: 2000\n\
         status_file: {}\nclusters:\n",
        dir.join("mesh-status.json").display()
    );
    for (name, id, ep) in remotes {
        text.push_str(&format!(
            "  - {{ name: {name}, id: {id}, endpoints: [\"{ep}\"] }}\n"
        ));
    }
    let path = dir.join("mesh.yaml");
    std::fs::write(&path, text).unwrap();
    MeshConfig::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Every key under `<PREFIX>/mesh/` of the local store, relative to it.
fn mirrored(st: &mut Store) -> BTreeMap<String, String> {
    let key = format!("{PREFIX}/mesh/");
    let r = st
        .rt
        .block_on(
            st.client
                .get(key.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .unwrap();
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str()
                    .unwrap()
                    .strip_prefix(&key)
                    .unwrap()
                    .to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn wait_mirrored(st: &mut Store, what: &str, pred: impl Fn(&BTreeMap<String, String>) -> bool) {
    let start = Instant::now();
    let mut last = BTreeMap::new();
    while start.elapsed() < Duration::from_secs(20) {
        last = mirrored(st);
        if pred(&last) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the local store never showed {what}; mesh/ holds {last:#?}");
}

fn ipcache(id: u32, p: &str) -> String {
    format!("{{\"prefix\":\"{p}\",\"identity\":{id}}}")
}

fn global_web(backends: &[&str]) -> String {
    let b: Vec<String> = backends
        .iter()
        .map(|ip| format!("{{\"ip\":\"{ip}\",\"port\":8080}}"))
        .collect();
    format!(
        "{{\"name\":\"web\",\"type\":\"ClusterIP\",\"global\":true,\"frontends\":[{{\"ip\":\"10.97.0.10\",\"port\":80}}],\"backends\":[{}]}}",
        b.join(",")
    )
}

#[test]
fn the_mirror_copies_exported_keys_only_and_follows_changes() {
    let (local, west) = (etcd(), etcd());
    let dir = tempfile::tempdir().unwrap();
    let mut l = Store::connect(&local.endpoint());
    let mut w = Store::connect(&west.endpoint());
    // A cluster that left the mesh: its keys are removed when the mirror connects.
    l.put(
        &format!("{PREFIX}/mesh/gone/ipcache/10.9.0.1/32"),
        &ipcache(9 << 24 | 300, "10.9.0.1/32"),
    );
    let p = |k: &str| format!("{PREFIX}/{k}");
    w.put(
        &p("ipcache/10.2.0.5/32"),
        &ipcache(WEST | 300, "10.2.0.5/32"),
    );
    // Filtered: an identity of another cluster.
    w.put(
        &p("ipcache/10.2.0.6/32"),
        &ipcache(NORTH | 300, "10.2.0.6/32"),
    );
    w.put(&p("services/web"), &global_web(&["10.2.0.5"]));
    w.put(
        &p("services/db"),
        "{\"name\":\"db\",\"type\":\"ClusterIP\"}",
    );
    w.put(&p(&format!("identities/{}", WEST | 300)), "app=web");
    // Never exported: node records, policies, external workloads, allocator keys, and west's
    // own mirror of a third cluster (mirrored keys are never mirrored again).
    w.put(&p("nodes/w1"), "endpoints: []");
    w.put(&p("policies/w1/web"), "endpoint: web");
    w.put(
        &p("external/vm"),
        "{\"name\":\"vm\",\"ips\":[\"10.2.9.9\"]}",
    );
    w.put(
        &p("identities-by-labels/app=web"),
        &(WEST | 300).to_string(),
    );
    w.put(
        &p("mesh/north/ipcache/10.3.0.5/32"),
        &ipcache(NORTH | 300, "10.3.0.5/32"),
    );

    let m = Mirror::start(mesh_config(
        dir.path(),
        &local.endpoint(),
        &[("west", 2, &west.endpoint())],
    ));
    let s = m.wait("west synced", |s| synced(s, "west"));
    let c = cluster(&s, "west");
    assert_eq!(
        (c.identities, c.ipcache, c.services, c.filtered),
        (1, 1, 1, 1),
        "{s:#?}"
    );
    assert!(
        c.filtered_example
            .as_deref()
            .unwrap_or("")
            .contains("ipcache/10.2.0.6/32: identity 50331948 belongs to cluster id 3"),
        "{s:#?}"
    );
    let keys: Vec<String> = mirrored(&mut l).into_keys().collect();
    assert_eq!(
        keys,
        [
            format!("west/identities/{}", WEST | 300),
            "west/ipcache/10.2.0.5/32".to_string(),
            "west/services/web".to_string(),
        ]
    );
    assert_eq!(
        mirrored(&mut l)["west/services/web"],
        global_web(&["10.2.0.5"])
    );

    // Changes follow: a new backend, a service made global, a service made local, a delete.
    w.put(&p("services/web"), &global_web(&["10.2.0.5", "10.2.0.7"]));
    w.put(
        &p("services/db"),
        "{\"name\":\"db\",\"type\":\"ClusterIP\",\"global\":true}",
    );
    w.delete(&p("ipcache/10.2.0.5/32"));
    wait_mirrored(&mut l, "the changes", |m| {
        m.get("west/services/web") == Some(&global_web(&["10.2.0.5", "10.2.0.7"]))
            && m.contains_key("west/services/db")
            && !m.contains_key("west/ipcache/10.2.0.5/32")
    });
    w.put(
        &p("services/db"),
        "{\"name\":\"db\",\"type\":\"ClusterIP\"}",
    );
    wait_mirrored(&mut l, "db no longer global", |m| {
        !m.contains_key("west/services/db")
    });
    let s = m.wait("west written", |s| synced(s, "west"));
    assert_eq!(cluster(&s, "west").keys(), 2, "{s:#?}");
    // Compaction past the mirror's watch: it re-lists and stays right.
    let rev = w.put(
        &p("ipcache/10.2.0.8/32"),
        &ipcache(WEST | 301, "10.2.0.8/32"),
    );
    w.compact(rev);
    w.put(
        &p("ipcache/10.2.0.9/32"),
        &ipcache(WEST | 302, "10.2.0.9/32"),
    );
    wait_mirrored(&mut l, "writes after a compaction", |m| {
        m.contains_key("west/ipcache/10.2.0.8/32") && m.contains_key("west/ipcache/10.2.0.9/32")
    });
}

#[test]
fn a_store_named_twice_is_never_mirrored_into_itself() {
    let local = etcd();
    let dir = tempfile::tempdir().unwrap();
    let mut l = Store::connect(&local.endpoint());
    l.put(
        &format!("{PREFIX}/services/web"),
        &global_web(&["10.1.0.5"]),
    );
    // `localhost` passes the config check (another URL) but is the same etcd cluster.
    let alias = local.endpoint().replace("127.0.0.1", "localhost");
    let m = Mirror::start(mesh_config(
        dir.path(),
        &local.endpoint(),
        &[("loop", 2, &alias)],
    ));
    let s = m.wait("loop refused", |s| {
        cluster(s, "loop").state == ClusterState::Refused
    });
    assert!(
        cluster(&s, "loop")
            .detail
            .contains("its store is the local store"),
        "{s:#?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(mirrored(&mut l).is_empty(), "{:?}", mirrored(&mut l));
}

#[test]
fn a_remote_outage_keeps_its_last_state_and_recovery_resyncs() {
    let (local, west, mut north) = (etcd(), etcd(), etcd());
    let dir = tempfile::tempdir().unwrap();
    let mut l = Store::connect(&local.endpoint());
    let mut w = Store::connect(&west.endpoint());
    let p = |k: &str| format!("{PREFIX}/{k}");
    w.put(
        &p("ipcache/10.2.0.5/32"),
        &ipcache(WEST | 300, "10.2.0.5/32"),
    );
    {
        let mut n = Store::connect(&north.endpoint());
        n.put(
            &p("ipcache/10.3.0.5/32"),
            &ipcache(NORTH | 300, "10.3.0.5/32"),
        );
        n.put(
            &p("ipcache/10.3.0.6/32"),
            &ipcache(NORTH | 301, "10.3.0.6/32"),
        );
    }
    let cfg = mesh_config(
        dir.path(),
        &local.endpoint(),
        &[
            ("west", 2, &west.endpoint()),
            ("north", 3, &north.endpoint()),
        ],
    );
    let m = Mirror::start(cfg.clone());
    m.wait("both synced", |s| synced(s, "west") && synced(s, "north"));
    let before = mirrored(&mut l);
    assert_eq!(before.len(), 3, "{before:#?}");

    // North dies: its keys stay, it is marked unavailable, west keeps updating.
    north.kill();
    let s = m.wait("north unavailable", |s| {
        cluster(s, "north").state == ClusterState::Unavailable
    });
    assert!(
        cluster(&s, "north")
            .detail
            .contains("keeping the last mirrored state"),
        "{s:#?}"
    );
    assert_eq!(cluster(&s, "north").ipcache, 2);
    w.put(
        &p("ipcache/10.2.0.6/32"),
        &ipcache(WEST | 301, "10.2.0.6/32"),
    );
    wait_mirrored(&mut l, "west's update while north is down", |m| {
        m.contains_key("west/ipcache/10.2.0.6/32")
            && m.contains_key("north/ipcache/10.3.0.5/32")
            && m.contains_key("north/ipcache/10.3.0.6/32")
    });
    // North returns: the mirror reconnects on its own.
    north.restart().unwrap();
    m.wait("north back", |s| synced(s, "north"));
    drop(m);

    // Changes made while no mirror watches (a delete, a new key); north is down when the next
    // mirror starts: what the local store holds for it stays until a whole list replaces it.
    {
        let mut n = Store::connect(&north.endpoint());
        n.delete(&p("ipcache/10.3.0.5/32"));
        n.put(
            &p("ipcache/10.3.0.7/32"),
            &ipcache(NORTH | 302, "10.3.0.7/32"),
        );
    }
    north.kill();
    let m = Mirror::start(cfg.clone());
    let s = m.wait("west synced, north connecting", |s| {
        synced(s, "west") && cluster(s, "north").state == ClusterState::Connecting
    });
    assert!(!cluster(&s, "north").written, "{s:#?}");
    std::thread::sleep(Duration::from_millis(300));
    let held = mirrored(&mut l);
    assert!(
        held.contains_key("north/ipcache/10.3.0.5/32")
            && held.contains_key("north/ipcache/10.3.0.6/32"),
        "{held:#?}"
    );
    north.restart().unwrap();
    m.wait("north resynced", |s| synced(s, "north"));
    wait_mirrored(&mut l, "north's resync", |m| {
        !m.contains_key("north/ipcache/10.3.0.5/32")
            && m.contains_key("north/ipcache/10.3.0.6/32")
            && m.contains_key("north/ipcache/10.3.0.7/32")
    });
    drop(m);

    // North leaves the config: its keys go, west's stay.
    let cfg = mesh_config(
        dir.path(),
        &local.endpoint(),
        &[("west", 2, &west.endpoint())],
    );
    let _m = Mirror::start(cfg);
    wait_mirrored(&mut l, "north removed", |m| {
        m.keys().all(|k| k.starts_with("west/")) && m.len() == 2
    });
}

/// The agent side, end to end: a node of east reads its local store only; its global service
/// `web` gets the backends west and north export, remote ipcache entries carry their cluster
/// ids; north dying changes nothing the node sees, west's next change still arrives.
#[test]
fn a_global_service_merges_backends_from_every_cluster() {
    let (local, west, mut north) = (etcd(), etcd(), etcd());
    let dir = tempfile::tempdir().unwrap();
    let mut l = Store::connect(&local.endpoint());
    let mut state: State = example::state().unwrap();
    let web = state.services.iter_mut().find(|s| s.name == "web").unwrap();
    web.global = true;
    let local_backends = web.backends.len();
    l.put_state("node-1", &state);
    let p = |k: &str| format!("{PREFIX}/{k}");
    let mut w = Store::connect(&west.endpoint());
    w.put(&p("services/web"), &global_web(&["10.245.0.5"]));
    w.put(
        &p("ipcache/10.245.0.5/32"),
        &ipcache(WEST | 300, "10.245.0.5/32"),
    );
    {
        let mut n = Store::connect(&north.endpoint());
        n.put(
            &p("services/web"),
            &global_web(&["10.246.0.5", "10.246.0.6"]),
        );
        n.put(
            &p("ipcache/10.246.0.0/24"),
            &ipcache(NORTH | 300, "10.246.0.0/24"),
        );
    }
    let m = Mirror::start(mesh_config(
        dir.path(),
        &local.endpoint(),
        &[
            ("west", 2, &west.endpoint()),
            ("north", 3, &north.endpoint()),
        ],
    ));
    m.wait("both synced", |s| synced(s, "west") && synced(s, "north"));

    let mut cfg = config(&local.endpoint(), "node-1");
    cfg.identity.cluster_id = 1;
    let src = Running::start(EtcdSource::with_local(cfg, None).unwrap(), None);
    let backends = |s: &State| -> Vec<String> {
        s.services
            .iter()
            .find(|s| s.name == "web")
            .unwrap()
            .backends
            .iter()
            .map(|b| b.ip.to_string())
            .collect()
    };
    let (s, _) = src.next_snapshot(Duration::from_secs(10));
    nodeplane_state::validate(&s).unwrap_or_else(|e| panic!("{e}"));
    let b = backends(&s);
    assert_eq!(b.len(), local_backends + 3, "{b:?}");
    assert_eq!(
        &b[local_backends..],
        ["10.246.0.5", "10.246.0.6", "10.245.0.5"]
    );
    let ids: BTreeMap<String, u32> = s
        .ipcache
        .iter()
        .map(|e| (e.prefix.to_string(), e.identity))
        .collect();
    assert_eq!(ids["10.245.0.5/32"] >> 24, 2);
    assert_eq!(ids["10.246.0.0/24"] >> 24, 3);

    // North's store dies: the node is not told anything (no new snapshot); west changes.
    north.kill();
    m.wait("north unavailable", |s| {
        cluster(s, "north").state == ClusterState::Unavailable
    });
    w.put(
        &p("services/web"),
        &global_web(&["10.245.0.5", "10.245.0.7"]),
    );
    let (s, _) = src.next_snapshot(Duration::from_secs(10));
    let b = backends(&s);
    assert_eq!(
        &b[local_backends..],
        ["10.246.0.5", "10.246.0.6", "10.245.0.5", "10.245.0.7"]
    );
    // No other snapshot came in between (north's outage did not reach the node).
    assert!(src.rx.try_recv().is_err());
}

/// The binary as operators run it: `nodeplane mesh check`, `mesh run` as a process,
/// `mesh status` (exit 0 while every cluster is synced, 3 otherwise), SIGTERM stops it; the
/// packaged example config and unit agree with the CLI.
#[test]
fn the_cli_runs_the_mirror_and_reports_its_status() {
    let bin = env!("CARGO_BIN_EXE_nodeplane");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let check = std::process::Command::new(bin)
        .args(["mesh", "check", "--config"])
        .arg(root.join("packaging/mesh.yaml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let unit = std::fs::read_to_string(root.join("packaging/nodeplane-mesh.service")).unwrap();
    assert!(unit
        .contains("\nExecStart=/usr/bin/nodeplane mesh run --config /etc/nodeplane/mesh.yaml\n"));

    let (local, mut west) = (etcd(), etcd());
    let dir = tempfile::tempdir().unwrap();
    let mut w = Store::connect(&west.endpoint());
    w.put(
        &format!("{PREFIX}/services/web"),
        &global_web(&["10.2.0.5"]),
    );
    mesh_config(
        dir.path(),
        &local.endpoint(),
        &[("west", 2, &west.endpoint())],
    );
    let cfg = dir.path().join("mesh.yaml");
    let mut child = std::process::Command::new(bin)
        .args(["mesh", "run", "--config"])
        .arg(&cfg)
        .stderr(std::fs::File::create(dir.path().join("mesh.log")).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let status = |want: i32, needle: &str| -> String {
        let start = Instant::now();
        loop {
            let o = std::process::Command::new(bin)
                .args(["mesh", "status", "--config"])
                .arg(&cfg)
                .output()
                .unwrap();
            let out = String::from_utf8_lossy(&o.stdout).to_string();
            if o.status.code() == Some(want) && out.contains(needle) {
                return out;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "mesh status never exited {want} showing {needle:?}; last ({:?}):\n{out}{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let out = status(0, " synced ");
    println!("{out}");
    assert!(out.contains("local store: connected"), "{out}");
    west.kill();
    let out = status(3, " unavailable ");
    println!("{out}");
    assert!(out.contains("keeping the last mirrored state"), "{out}");
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "mesh run did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _guard = Kill(child);
    assert!(code.success(), "{code:?}");
    let log = std::fs::read_to_string(dir.path().join("mesh.log")).unwrap();
    println!("{log}");
    assert!(log.contains("mesh: cluster west unavailable"), "{log}");
}
