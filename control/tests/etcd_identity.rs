//! Identity allocation in etcd: agreement across nodes, races, release.

mod etcd_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use etcd_client::Client;
use etcd_support::{config, Running, Store, PREFIX};
use nodeplane_control::identity::{IdentityAllocator, IdentityConfig, FIRST_LOCAL};
use nodeplane_control::source::etcd::server::LocalEtcd;
use nodeplane_control::source::etcd::{EtcdSource, NodeRecord};
use nodeplane_state::{example, State};

fn etcd() -> LocalEtcd {
    LocalEtcd::start().unwrap_or_else(|e| panic!("cannot run the test etcd: {e}"))
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn allocator(rt: &tokio::runtime::Runtime, ep: &str, node: &str, cluster: u8) -> IdentityAllocator {
    let client = rt.block_on(Client::connect([ep], None)).unwrap();
    let cfg = IdentityConfig {
        cluster_id: cluster,
        labels: vec![],
    };
    IdentityAllocator::new(client, PREFIX, node, &cfg).unwrap()
}

#[test]
fn two_agents_racing_for_the_same_labels_get_one_identity() {
    let e = etcd();
    let ep = e.endpoint();
    // Several rounds, each with fresh label sets, all agents released by a barrier together.
    const AGENTS: usize = 4;
    const ROUNDS: usize = 20;
    let barrier = Arc::new(Barrier::new(AGENTS));
    let handles: Vec<_> = (0..AGENTS)
        .map(|a| {
            let (ep, barrier) = (ep.clone(), barrier.clone());
            std::thread::spawn(move || {
                let rt = rt();
                let mut alloc = allocator(&rt, &ep, &format!("node-{a}"), 5);
                let mut got = Vec::new();
                for round in 0..ROUNDS {
                    let l = labels(&[("app", &format!("svc-{round}")), ("tier", "x")]);
                    barrier.wait();
                    got.push(rt.block_on(alloc.allocate("ep", &l)).unwrap());
                }
                got
            })
        })
        .collect();
    let results: Vec<Vec<u32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for round in 0..ROUNDS {
        let ids: Vec<u32> = results.iter().map(|r| r[round]).collect();
        assert!(
            ids.iter().all(|&i| i == ids[0]),
            "round {round}: agents disagree: {ids:?}"
        );
        assert_eq!(ids[0] >> 24, 5, "cluster id in the high bits");
        assert!(ids[0] & 0xff_ffff >= FIRST_LOCAL);
    }
    let mut distinct: Vec<u32> = results[0].clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        ROUNDS,
        "different label sets, different ids"
    );
}

#[test]
fn filter_decides_equality_and_release_frees_after_last_reference() {
    let e = etcd();
    let rt = rt();
    let mut a = allocator(&rt, &e.endpoint(), "node-a", 0);
    let mut b = allocator(&rt, &e.endpoint(), "node-b", 0);
    let web = labels(&[("app", "web"), ("pod-template-hash", "111")]);
    let web2 = labels(&[("app", "web"), ("pod-template-hash", "222")]);
    let db = labels(&[("app", "db")]);
    let id_web = rt.block_on(a.allocate("web-1", &web)).unwrap();
    // pod-template-hash is not security relevant: same identity on another node.
    assert_eq!(rt.block_on(b.allocate("web-7", &web2)).unwrap(), id_web);
    let id_db = rt.block_on(a.allocate("db-1", &db)).unwrap();
    assert_ne!(id_db, id_web);

    // Two references to web: the first release keeps it.
    assert!(!rt.block_on(a.release("web-1", id_web)).unwrap());
    assert_eq!(rt.block_on(a.lookup(&web)).unwrap(), Some(id_web));
    assert!(rt.block_on(b.release("web-7", id_web)).unwrap());
    assert_eq!(rt.block_on(a.lookup(&web)).unwrap(), None);
    // Releasing again is harmless.
    assert!(!rt.block_on(b.release("web-7", id_web)).unwrap());
    // db untouched.
    assert_eq!(rt.block_on(b.lookup(&db)).unwrap(), Some(id_db));
    // A new allocation of the freed label set gets a fresh, valid number.
    let again = rt.block_on(a.allocate("web-1", &web)).unwrap();
    assert!(again >= FIRST_LOCAL && again != id_db);
}

/// The example node in the store with every endpoint at `identity: 0` (web-1 and web-2 share
/// labels; client has its own) and no policies (they name literal identities); a source for it
/// and its first snapshot.
fn allocating_agent(e: &LocalEtcd) -> (Store, Running, State, State) {
    let mut st = Store::connect(&e.endpoint());
    let mut state = example::state().unwrap();
    for ep in &mut state.endpoints {
        ep.identity = 0;
    }
    st.put_state("n1", &state);
    st.delete_prefix(&format!("{PREFIX}/policies/"));
    let r = Running::start(
        EtcdSource::with_local(config(&e.endpoint(), "n1"), None).unwrap(),
        None,
    );
    let (s, _) = r.next_snapshot(Duration::from_secs(10));
    (st, r, state, s)
}

#[test]
fn source_allocates_identities_for_endpoints_with_identity_zero() {
    let e = etcd();
    let (mut st, r, state, s) = allocating_agent(&e);
    let id = |n: &str| s.endpoints.iter().find(|e| e.name == n).unwrap().identity;
    assert!(id("client") >= FIRST_LOCAL);
    assert_eq!(id("web-1"), id("web-2"));
    assert_ne!(id("web-1"), id("client"));
    nodeplane_state::validate(&s).unwrap();

    // The client endpoint goes away: its identity is released (no other reference).
    let client_id = id("client");
    let rec = NodeRecord {
        node: Some(state.node.clone()),
        interfaces: state.interfaces.clone(),
        endpoints: state
            .endpoints
            .iter()
            .filter(|e| e.name != "client")
            .cloned()
            .collect(),
    };
    st.put(
        &format!("{PREFIX}/nodes/n1"),
        &serde_json::to_string(&rec).unwrap(),
    );
    let (s2, _) = r.next_snapshot(Duration::from_secs(10));
    assert_eq!(s2.endpoints.len(), 2);
    let rt = rt();
    let mut probe = allocator(&rt, &e.endpoint(), "probe", 0);
    assert_eq!(
        rt.block_on(probe.lookup(&labels(&[("app", "client")])))
            .unwrap(),
        None,
        "identity {client_id} of the removed endpoint was released"
    );
    assert!(rt
        .block_on(probe.lookup(&labels(&[("app", "web")])))
        .unwrap()
        .is_some());
}

/// Allocation writes under the watched prefix (references, identities). Those writes must not
/// make the source publish and allocate again: an agent whose state does not change writes
/// nothing, and a change elsewhere costs one publication, not a loop.
#[test]
fn allocation_does_not_feed_back_into_the_watch() {
    let e = etcd();
    let (mut st, r, _, s) = allocating_agent(&e);
    let client_id = s
        .endpoints
        .iter()
        .find(|e| e.name == "client")
        .unwrap()
        .identity;
    assert!(client_id >= FIRST_LOCAL);

    // Quiet store: the revision stays where the agent left it (debounce is 30 ms, so a loop
    // would have written dozens of times in this window).
    std::thread::sleep(Duration::from_millis(300));
    let settled = st.revision();
    let events = r.collect(Duration::from_millis(1_000));
    assert_eq!(
        st.revision(),
        settled,
        "the agent kept writing to an unchanged store ({} events meanwhile)",
        events.len()
    );

    // A change elsewhere (an ipcache entry) is published once, with the same identities and
    // without any allocation write: the revision advances by our put alone.
    let put_rev = st.put(
        &format!("{PREFIX}/ipcache/10.9.0.0/24"),
        r#"{"prefix":"10.9.0.0/24","identity":3001}"#,
    );
    let (s2, _) = r.next_snapshot(Duration::from_secs(10));
    assert!(s2
        .ipcache
        .iter()
        .any(|i| i.prefix.to_string() == "10.9.0.0/24"));
    let again = s2
        .endpoints
        .iter()
        .find(|e| e.name == "client")
        .unwrap()
        .identity;
    assert_eq!(again, client_id);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(st.revision(), put_rev, "publication wrote to the store");
}
