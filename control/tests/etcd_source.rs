//! The etcd source against a real etcd (Debian's etcd-server, started on loopback per test).

mod etcd_support;

use std::time::Duration;

use etcd_support::{config, Running, Store, PREFIX};
use nodeplane_control::source::etcd::server::LocalEtcd;
use nodeplane_control::source::etcd::{EtcdConfig, EtcdConfigError, EtcdSource};
use nodeplane_control::source::SourceEvent;
use nodeplane_state::{example, Backend, Service, State};

const T: Duration = Duration::from_secs(10);

fn etcd() -> LocalEtcd {
    LocalEtcd::start().unwrap_or_else(|e| panic!("cannot run the test etcd: {e}"))
}

/// What the source should produce for the example written by `put_state`: the same lists in
/// key order (services, ipcache and policies are sorted by their keys).
fn expected(mut s: State) -> State {
    s.services.sort_by(|a, b| a.name.cmp(&b.name));
    s.ipcache.sort_by_key(|a| a.prefix.to_string());
    s.policies.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    s
}

#[test]
fn initial_sync_equals_written_state_and_validates() {
    let e = etcd();
    let mut st = Store::connect(&e.endpoint());
    let state = example::state().unwrap();
    st.put_state("node-a", &state);
    // Another node's record and policy: counted, not merged.
    st.put(&format!("{PREFIX}/nodes/node-b"), "{}");
    st.put(
        &format!("{PREFIX}/policies/node-b/other"),
        r#"{"endpoint": "other"}"#,
    );
    let src = EtcdSource::with_local(config(&e.endpoint(), "node-a"), None).unwrap();
    let r = Running::start(src, None);
    match r.next(T) {
        SourceEvent::Health { connected, detail } => {
            assert!(connected, "{detail}");
            assert!(detail.contains("2 nodes"), "{detail}");
        }
        other => panic!("expected health first, got {other:?}"),
    }
    let (got, origin) = r.next_snapshot(T);
    assert!(origin.contains("revision"), "{origin}");
    assert_eq!(got, expected(state));
    nodeplane_state::validate(&got).expect("the assembled state validates");
}

#[test]
fn watch_add_change_delete_show_up_in_next_snapshot() {
    let e = etcd();
    let mut st = Store::connect(&e.endpoint());
    let state = example::state().unwrap();
    st.put_state("n1", &state);
    let r = Running::start(
        EtcdSource::with_local(config(&e.endpoint(), "n1"), None).unwrap(),
        None,
    );
    let (first, _) = r.next_snapshot(T);
    let n = first.services.len();

    let mut svc: Service = state.services[0].clone();
    svc.name = "added".into();
    svc.frontends[0].port = 8081;
    svc.frontends.truncate(1);
    svc.backends.retain(|b| b.ip.is_ipv4());
    st.put(
        &format!("{PREFIX}/services/added"),
        &serde_json::to_string(&svc).unwrap(),
    );
    let (s, _) = r.next_snapshot(T);
    assert_eq!(s.services.len(), n + 1);
    assert_eq!(s.services.iter().find(|x| x.name == "added"), Some(&svc));

    // Changed: one backend more, written as YAML this time.
    svc.backends.push(Backend {
        ip: "10.244.1.10".parse().unwrap(),
        port: 8080,
        weight: 3,
        state: Default::default(),
        ready: None,
        serving: None,
        terminating: None,
    });
    st.put(
        &format!("{PREFIX}/services/added"),
        &yaml_serde::to_string(&svc).unwrap(),
    );
    let (s, _) = r.next_snapshot(T);
    assert_eq!(s.services.iter().find(|x| x.name == "added"), Some(&svc));

    st.delete(&format!("{PREFIX}/services/added"));
    let (s, _) = r.next_snapshot(T);
    assert_eq!(s.services.len(), n);
    assert!(s.services.iter().all(|x| x.name != "added"));
    assert_eq!(s, first);
}

#[test]
fn bad_value_is_rejected_by_key_and_nothing_half_applies() {
    let e = etcd();
    let mut st = Store::connect(&e.endpoint());
    st.put_state("n1", &example::state().unwrap());
    let r = Running::start(
        EtcdSource::with_local(config(&e.endpoint(), "n1"), None).unwrap(),
        None,
    );
    let (first, _) = r.next_snapshot(T);
    // A batch with one good and one bad change: neither may show up.
    let mut good = first.services[0].clone();
    good.name = "good".into();
    st.put(
        &format!("{PREFIX}/services/good"),
        &serde_json::to_string(&good).unwrap(),
    );
    st.put(&format!("{PREFIX}/services/bad"), "{name: bad, type: Nope}");
    let mut rejected = None;
    for ev in r.collect(Duration::from_secs(2)) {
        match ev {
            SourceEvent::Rejected { error, .. } => rejected = Some(error),
            SourceEvent::Snapshot { state, .. } => {
                // Debounce may split the two puts: a snapshot may only carry the good one.
                assert!(state.services.iter().all(|s| s.name != "bad"));
            }
            SourceEvent::Health { .. } | SourceEvent::Attempt | SourceEvent::Synced => {}
        }
    }
    let err = rejected.expect("a rejection for the bad key");
    assert!(err.contains(&format!("{PREFIX}/services/bad")), "{err}");
    // Name in the value differing from the key is rejected too.
    st.put(
        &format!("{PREFIX}/services/bad"),
        &serde_json::to_string(&good).unwrap(),
    );
    match r.next(T) {
        SourceEvent::Rejected { error, .. } => assert!(error.contains("differs"), "{error}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    // Fixed: the next snapshot has both.
    st.delete(&format!("{PREFIX}/services/bad"));
    let (s, _) = r.next_snapshot(T);
    assert!(s.services.iter().any(|x| x.name == "good"));
    assert_eq!(s.services.len(), first.services.len() + 1);
}

#[test]
fn compacted_watch_revision_forces_full_resync() {
    let e = etcd();
    let mut st = Store::connect(&e.endpoint());
    let state = example::state().unwrap();
    st.put_state("n1", &state);
    // Rendezvous channel: the source lists, then blocks handing over its first event until we
    // take it, i.e. before it opens the watch. Meanwhile the store moves on and is compacted
    // past the listed revision, so the watch from R + 1 is refused as compacted.
    let r = Running::start(
        EtcdSource::with_local(config(&e.endpoint(), "n1"), None).unwrap(),
        Some(0),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let mut svc = state.services[0].clone();
    svc.name = "late".into();
    st.put(
        &format!("{PREFIX}/services/late"),
        &serde_json::to_string(&svc).unwrap(),
    );
    let rev = st.put(&format!("{PREFIX}/unrelated"), "x");
    st.compact(rev);

    let (first, _) = r.next_snapshot(T);
    assert!(
        first.services.iter().all(|s| s.name != "late"),
        "the first list must predate the write (else this test proves nothing)"
    );
    let mut saw_compaction = false;
    let resynced = loop {
        match r.next(T) {
            SourceEvent::Health { detail, .. } => {
                if detail.contains("compacted") {
                    saw_compaction = true;
                }
            }
            SourceEvent::Snapshot { state, .. } => break *state,
            SourceEvent::Rejected { error, .. } => panic!("{error}"),
            SourceEvent::Attempt | SourceEvent::Synced => {}
        }
    };
    assert!(saw_compaction, "the source reported the compaction");
    assert!(resynced.services.iter().any(|s| s.name == "late"));
    let mut want = expected(state);
    want.services.push(svc);
    want.services.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(resynced, want);
}

#[test]
fn local_state_provides_node_and_interfaces() {
    let e = etcd();
    let mut st = Store::connect(&e.endpoint());
    let full = example::state().unwrap();
    // Local: node, interfaces, conntrack. etcd: endpoints (in the record), the rest.
    let local = State {
        node: full.node.clone(),
        interfaces: full.interfaces.clone(),
        conntrack: full.conntrack.clone(),
        ..State::default()
    };
    let mut remote = full.clone();
    remote.node = Default::default();
    remote.interfaces.clear();
    st.put_state("n1", &remote);
    // put_state writes `node: {...}` (the default): local mode must reject that.
    let r = Running::start(
        EtcdSource::with_local(config(&e.endpoint(), "n1"), Some(local.clone())).unwrap(),
        None,
    );
    match r
        .collect(Duration::from_secs(2))
        .into_iter()
        .find(|e| !matches!(e, SourceEvent::Health { .. }))
    {
        Some(SourceEvent::Rejected { error, .. }) => {
            assert!(error.contains("nodes/n1"), "{error}");
            assert!(error.contains("local_state"), "{error}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    st.put(
        &format!("{PREFIX}/nodes/n1"),
        &serde_json::json!({ "endpoints": full.endpoints }).to_string(),
    );
    let (s, _) = r.next_snapshot(T);
    assert_eq!(s, expected(full));
}

#[test]
fn config_parsing_and_validation() {
    let dir = std::env::temp_dir().join(format!("np-etcd-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let yaml = format!(
        r#"
endpoints: ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
node_name: node-7
tls: {{ ca_file: {ca} }}
auth: {{ username: nodeplane, password_file: {pw} }}
backoff: {{ base_ms: 250, cap_ms: 8000, per_node_ms: 5 }}
identity: {{ cluster_id: 3, labels: ["app", "!app.kubernetes.io/instance"] }}
"#,
        ca = ca.display(),
        pw = pw.display()
    );
    let c: EtcdConfig = yaml_serde::from_str(&yaml).unwrap();
    c.validate().unwrap();
    assert_eq!(c.prefix, "/nodeplane/v1");
    assert_eq!(c.backoff.window(100), Duration::from_secs(8));
    assert_eq!(c.backoff.window(10_000), Duration::from_secs(50));
    assert_eq!(c.identity.cluster_id, 3);

    let bad = |f: &dyn Fn(&mut EtcdConfig)| {
        let mut c2 = c.clone();
        f(&mut c2);
        c2.validate().unwrap_err()
    };
    assert!(matches!(
        bad(&|c| c.endpoints.clear()),
        EtcdConfigError::NoEndpoints
    ));
    assert!(matches!(
        bad(&|c| c.endpoints = vec!["http://x:1".into()]),
        EtcdConfigError::TlsWithHttp(_)
    ));
    assert!(matches!(
        bad(&|c| c.tls = None),
        EtcdConfigError::HttpsWithoutTls(_)
    ));
    assert!(matches!(
        bad(&|c| c.endpoints = vec!["10.0.0.1:2379".into()]),
        EtcdConfigError::BadEndpoint(_)
    ));
    assert!(matches!(
        bad(&|c| c.node_name = "a/b".into()),
        EtcdConfigError::BadNodeName(_)
    ));
    assert!(matches!(
        bad(&|c| c.prefix = "/x/".into()),
        EtcdConfigError::BadPrefix(_)
    ));
    assert!(matches!(
        bad(&|c| c.tls.as_mut().unwrap().cert_file = Some(pw.clone())),
        EtcdConfigError::HalfClientCert
    ));
    assert!(matches!(
        bad(&|c| c.tls.as_mut().unwrap().ca_file = dir.join("missing.pem")),
        EtcdConfigError::File {
            field: "tls.ca_file",
            ..
        }
    ));
    assert!(matches!(
        bad(&|c| c.backoff.cap_ms = 1),
        EtcdConfigError::Backoff(_)
    ));
    assert!(matches!(
        bad(&|c| c.identity.labels = vec!["!".into()]),
        EtcdConfigError::Identity(_)
    ));
    std::fs::write(&pw, "\n").unwrap();
    assert!(matches!(
        c.validate().unwrap_err(),
        EtcdConfigError::EmptyPassword(_)
    ));
    // Unknown keys are errors, not silently ignored.
    assert!(yaml_serde::from_str::<EtcdConfig>(
        "endpoints: [\"http://a:1\"]\nnode_name: n\nbackof: {}\n"
    )
    .is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
