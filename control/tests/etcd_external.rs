//! External workloads in etcd (issue 15 item 2): `external/<name>` keys with labels and
//! `identity: 0` get the identity of their labels from the allocator (the same number a pod
//! with those labels gets, on any node), are in every node's state, and are released when
//! their key goes away. A real etcd server.

mod etcd_support;

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::Client;
use etcd_support::{config, Running, Store, PREFIX};
use nodeplane_control::identity::{IdentityAllocator, IdentityConfig, FIRST_LOCAL};
use nodeplane_control::source::etcd::server::LocalEtcd;
use nodeplane_control::source::etcd::EtcdSource;
use nodeplane_state::example;

#[test]
fn external_workloads_in_etcd_get_the_identity_of_their_labels_on_every_node() {
    let e = LocalEtcd::start().unwrap_or_else(|e| panic!("cannot run the test etcd: {e}"));
    let mut st = Store::connect(&e.endpoint());
    let mut state = example::state().unwrap();
    for ep in &mut state.endpoints {
        ep.identity = 0;
    }
    st.put_state("n1", &state);
    st.put_state("n2", &state);
    st.delete_prefix(&format!("{PREFIX}/policies/"));
    // Two VMs with the same labels, one with others; one with a wrong name in its value.
    let vm = |name: &str, ip: &str, app: &str| {
        format!("{{\"name\":\"{name}\",\"ips\":[\"{ip}\"],\"labels\":{{\"app\":\"{app}\"}}}}")
    };
    st.put(
        &format!("{PREFIX}/external/vm-db-1"),
        &vm("vm-db-1", "192.168.50.1", "db"),
    );
    st.put(
        &format!("{PREFIX}/external/vm-db-2"),
        &vm("vm-db-2", "192.168.50.2", "db"),
    );
    st.put(
        &format!("{PREFIX}/external/vm-cache"),
        &vm("vm-cache", "192.168.50.3", "cache"),
    );
    let n1 = Running::start(
        EtcdSource::with_local(config(&e.endpoint(), "n1"), None).unwrap(),
        None,
    );
    let n2 = Running::start(
        EtcdSource::with_local(config(&e.endpoint(), "n2"), None).unwrap(),
        None,
    );
    let (s1, _) = n1.next_snapshot(Duration::from_secs(10));
    let (s2, _) = n2.next_snapshot(Duration::from_secs(10));
    nodeplane_state::validate(&s1).unwrap();
    let id = |s: &nodeplane_state::State, n: &str| {
        s.external_workloads
            .iter()
            .find(|w| w.name == n)
            .unwrap_or_else(|| panic!("{n} in {:?}", s.external_workloads))
            .identity
    };
    assert!(id(&s1, "vm-db-1") & 0xff_ffff >= FIRST_LOCAL);
    assert_eq!(
        id(&s1, "vm-db-1"),
        id(&s1, "vm-db-2"),
        "same labels, same identity"
    );
    assert_ne!(id(&s1, "vm-db-1"), id(&s1, "vm-cache"));
    for n in ["vm-db-1", "vm-db-2", "vm-cache"] {
        assert_eq!(id(&s1, n), id(&s2, n), "{n}: every node agrees");
    }
    // A pod with the same labels gets the same identity (labels are the identity).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(Client::connect([e.endpoint()], None)).unwrap();
    let mut probe =
        IdentityAllocator::new(client, PREFIX, "probe", &IdentityConfig::default()).unwrap();
    let labels: BTreeMap<String, String> = [("app".to_string(), "cache".to_string())].into();
    assert_eq!(
        rt.block_on(probe.lookup(&labels)).unwrap(),
        Some(id(&s1, "vm-cache"))
    );

    // The cache VM is deregistered: gone from the state, its identity released once no node
    // references it.
    st.delete(&format!("{PREFIX}/external/vm-cache"));
    let (s1b, _) = n1.next_snapshot(Duration::from_secs(10));
    let (s2b, _) = n2.next_snapshot(Duration::from_secs(10));
    for s in [&s1b, &s2b] {
        assert!(s.external_workloads.iter().all(|w| w.name != "vm-cache"));
        assert_eq!(s.external_workloads.len(), 2);
    }
    assert_eq!(
        rt.block_on(probe.lookup(&labels)).unwrap(),
        None,
        "released"
    );

    // A value that does not match its key is rejected with the key named.
    st.put(
        &format!("{PREFIX}/external/vm-x"),
        &vm("vm-y", "192.168.50.9", "db"),
    );
    let ev = n1.next(Duration::from_secs(10));
    let text = format!("{ev:?}");
    assert!(
        text.contains("external/vm-x") && text.contains("differs from the key"),
        "{text}"
    );
}
