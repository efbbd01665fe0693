//! The etcd source with etcd authentication (users, roles, `auth enable`) against a real etcd
//! (Debian's etcd-server): the node's user may read the prefix and write only the identity
//! allocator's keys.

mod etcd_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etcd_client::{ConnectOptions, Permission};
use etcd_support::{config, count_in_log, Running, Store, PREFIX};
use nodeplane_control::source::etcd::server::LocalEtcd;
use nodeplane_control::source::etcd::{AuthConfig, EtcdConfig, EtcdSource};
use nodeplane_control::source::SourceEvent;
use nodeplane_state::{example, State};

const T: Duration = Duration::from_secs(10);
const ROOT_PASSWORD: &str = "root-secret";
const NODE_USER: &str = "nodeplane";
const NODE_PASSWORD: &str = "node-secret";

/// The keys the identity allocator writes (crate::identity), relative to the prefix.
const IDENTITY_DIRS: [&str; 4] = [
    "identities/",
    "identities-by-labels/",
    "identity-refs/",
    "identity-next/",
];

/// Creates `root` and the node user, whose role reads `<prefix>/` and, with `identity_rw`,
/// reads and writes the identity keys; enables auth. Returns a writer logged in as root.
fn enable_auth(e: &LocalEtcd, identity_rw: bool) -> Store {
    let st = Store::connect(&e.endpoint());
    let mut c = st.client.clone();
    st.rt.block_on(async {
        let ok = |what: &str, r: Result<(), etcd_client::Error>| {
            r.unwrap_or_else(|err| panic!("{what}: {err}"))
        };
        ok("role add root", c.role_add("root").await.map(drop));
        ok(
            "user add root",
            c.user_add("root", ROOT_PASSWORD, None).await.map(drop),
        );
        ok(
            "grant root",
            c.user_grant_role("root", "root").await.map(drop),
        );
        ok("role add node", c.role_add(NODE_USER).await.map(drop));
        ok(
            "grant read prefix",
            c.role_grant_permission(
                NODE_USER,
                Permission::read(format!("{PREFIX}/")).with_prefix(),
            )
            .await
            .map(drop),
        );
        if identity_rw {
            for d in IDENTITY_DIRS {
                ok(
                    "grant identity keys",
                    c.role_grant_permission(
                        NODE_USER,
                        Permission::read_write(format!("{PREFIX}/{d}")).with_prefix(),
                    )
                    .await
                    .map(drop),
                );
            }
        }
        ok(
            "user add node",
            c.user_add(NODE_USER, NODE_PASSWORD, None).await.map(drop),
        );
        ok(
            "grant node role",
            c.user_grant_role(NODE_USER, NODE_USER).await.map(drop),
        );
        ok("auth enable", c.auth_enable().await.map(drop));
    });
    Store::connect_with(
        &e.endpoint(),
        Some(
            ConnectOptions::new()
                .with_user("root", ROOT_PASSWORD)
                .with_auto_token_refresh(true),
        ),
    )
}

fn password_file(dir: &Path, pw: &str) -> PathBuf {
    let p = dir.join("etcd-password");
    std::fs::write(&p, format!("{pw}\n")).unwrap();
    p
}

fn auth_config(e: &LocalEtcd, password_file: PathBuf) -> EtcdConfig {
    let mut c = config(&e.endpoint(), "n1");
    c.auth = Some(AuthConfig {
        username: NODE_USER.into(),
        password_file,
    });
    c
}

/// The example state with every endpoint asking for an identity (so the source runs identity
/// transactions under the node's role); the example's policies name literal identities, so they
/// are left out.
fn state_with_identity_zero() -> State {
    let mut s = example::state().unwrap();
    for ep in &mut s.endpoints {
        ep.identity = 0;
    }
    s.policies.clear();
    s
}

fn etcd() -> LocalEtcd {
    LocalEtcd::start().unwrap_or_else(|e| panic!("cannot run the test etcd: {e}"))
}

#[test]
fn syncs_with_the_password_file_and_allocates_identities_within_its_role() {
    let e = etcd();
    let mut root = enable_auth(&e, true);
    root.put_state("n1", &state_with_identity_zero());
    let dir = tempfile::tempdir().unwrap();
    let cfg = auth_config(&e, password_file(dir.path(), NODE_PASSWORD));
    let r = Running::start(EtcdSource::with_local(cfg, None).unwrap(), None);
    match r.next(T) {
        SourceEvent::Health { connected, detail } => assert!(connected, "{detail}"),
        other => panic!("expected health first, got {other:?}"),
    }
    // The identity transactions ran as the node's user.
    let (s, _) = r.next_snapshot(T);
    assert!(
        s.endpoints.iter().all(|ep| ep.identity != 0),
        "{:?}",
        s.endpoints
    );
    // The watch runs with the same credentials.
    let mut svc = s.services[0].clone();
    svc.name = "with-auth".into();
    root.put(
        &format!("{PREFIX}/services/with-auth"),
        &serde_json::to_string(&svc).unwrap(),
    );
    let (s2, _) = r.next_snapshot(T);
    assert_eq!(
        s2.services.iter().find(|x| x.name == "with-auth"),
        Some(&svc)
    );
    // The role is what the test claims: the node cannot write the state it reads.
    let node = Store::connect_with(
        &e.endpoint(),
        Some(ConnectOptions::new().with_user(NODE_USER, NODE_PASSWORD)),
    );
    let mut c = node.client.clone();
    let err = node
        .rt
        .block_on(c.put(format!("{PREFIX}/services/x"), "{}", None))
        .expect_err("the node's role must not write services");
    assert!(err.to_string().contains("permission denied"), "{err}");
}

/// Attempts the source makes in `elapsed` without jitter (base 100 ms, cap 800 ms): one at the
/// start, then one at the end of each window 100, 200, 400, 800, 800, ... ms.
fn scheduled_attempts(elapsed: Duration) -> usize {
    let (mut t, mut w, mut n) = (0u128, 100u128, 1);
    loop {
        t += w;
        if t > elapsed.as_millis() {
            return n;
        }
        n += 1;
        w = (w * 2).min(800);
    }
}

fn no_jitter(c: &mut EtcdConfig, cap_ms: u64) {
    c.backoff.jitter = false;
    c.backoff.base_ms = 100;
    c.backoff.cap_ms = cap_ms;
    c.backoff.per_node_ms = 0;
}

#[test]
fn wrong_password_is_reported_once_retried_with_backoff_and_a_fixed_file_is_picked_up() {
    let e = etcd();
    let mut root = enable_auth(&e, true);
    root.put_state("n1", &example::state().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path(), "not-the-password");
    let mut cfg = auth_config(&e, pw.clone());
    no_jitter(&mut cfg, 800);
    let t0 = Instant::now();
    let r = Running::start(EtcdSource::with_local(cfg, None).unwrap(), None);
    let evs = r.collect(Duration::from_secs(3));
    let elapsed = t0.elapsed();
    // etcd logs every refused authentication: the attempts the source made.
    let attempts = count_in_log(&e.log_path(), "invalid password for user nodeplane");
    let mut downs = Vec::new();
    for ev in evs {
        match ev {
            SourceEvent::Health {
                connected: false,
                detail,
            } => downs.push(detail),
            other => panic!("nothing but the down report may come, got {other:?}"),
        }
    }
    assert_eq!(downs.len(), 1, "reported once: {downs:?}");
    let d = &downs[0];
    assert!(d.contains("authentication failed"), "{d}");
    assert!(
        d.contains(&format!("etcd.auth.username \"{NODE_USER}\"")),
        "{d}"
    );
    assert!(d.contains(&pw.display().to_string()), "{d}");
    // Retried, on the schedule: a tight loop would make dozens of attempts in 3 s.
    let max = scheduled_attempts(elapsed);
    assert!(
        (3..=max).contains(&attempts),
        "{attempts} attempts in {elapsed:?}, the schedule allows {max}"
    );
    assert!(r.is_running());
    // The operator fixes the file: read again at the next attempt, no restart.
    std::fs::write(&pw, format!("{NODE_PASSWORD}\n")).unwrap();
    r.recovers(T);
}

#[test]
fn no_credentials_against_a_store_with_auth_is_reported_clearly() {
    let e = etcd();
    let mut root = enable_auth(&e, true);
    root.put_state("n1", &example::state().unwrap());
    let r = Running::start(
        EtcdSource::with_local(config(&e.endpoint(), "n1"), None).unwrap(),
        None,
    );
    match r.next(T) {
        SourceEvent::Health {
            connected: false,
            detail,
        } => assert!(detail.contains("set etcd.auth"), "{detail}"),
        other => panic!("expected a down report, got {other:?}"),
    }
    assert!(r.collect(Duration::from_secs(1)).is_empty());
}

/// etcd forgets an idle simple token after `--auth-token-ttl`; the watch outlives it. The next
/// request (here an identity transaction) must authenticate again, not cost an outage report
/// and a full resync.
#[test]
fn expired_token_is_renewed_without_an_outage() {
    let e = LocalEtcd::builder()
        .auth_token_ttl(1)
        .start()
        .unwrap_or_else(|e| panic!("cannot run the test etcd: {e}"));
    let mut root = enable_auth(&e, true);
    root.put_state("n1", &example::state().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cfg = auth_config(&e, password_file(dir.path(), NODE_PASSWORD));
    let r = Running::start(EtcdSource::with_local(cfg, None).unwrap(), None);
    let _ = r.next_snapshot(T);
    std::thread::sleep(Duration::from_secs(3));
    root.put_state("n1", &state_with_identity_zero());
    let mut got = None;
    for ev in r.collect(Duration::from_secs(3)) {
        match ev {
            SourceEvent::Snapshot { state, .. } => got = Some(state),
            other => panic!("the token expiry must stay invisible, got {other:?}"),
        }
    }
    let s = got.expect("a snapshot with the allocated identities");
    assert!(
        s.endpoints.iter().all(|ep| ep.identity != 0),
        "{:?}",
        s.endpoints
    );
}

/// A role that may read but not allocate identities: the list succeeds, the identity
/// transaction is refused. The source must publish nothing (no state with identity 0) and retry
/// on the growing schedule, not re-list every base window.
#[test]
fn refused_identity_write_backs_off_publishes_nothing_and_recovers_when_granted() {
    let e = etcd();
    let mut root = enable_auth(&e, false);
    root.put_state("n1", &state_with_identity_zero());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = auth_config(&e, password_file(dir.path(), NODE_PASSWORD));
    // Windows 100, 200, 400, 800, 1600 ms: lists at 0, 0.1, 0.3, 0.7, 1.5, 3.1 s.
    no_jitter(&mut cfg, 1_600);
    let r = Running::start(EtcdSource::with_local(cfg, None).unwrap(), None);
    let (mut lists, mut downs) = (0, Vec::new());
    for ev in r.collect(Duration::from_secs(4)) {
        match ev {
            SourceEvent::Health {
                connected: true,
                detail,
            } => {
                assert!(detail.starts_with("synced"), "{detail}");
                lists += 1;
            }
            SourceEvent::Health {
                connected: false,
                detail,
            } => downs.push(detail),
            other => panic!("nothing may be published, got {other:?}"),
        }
    }
    assert!((2..=6).contains(&lists), "{lists} lists in 4 s: {downs:?}");
    let d = &downs[0];
    assert!(d.contains("identity allocation for endpoint"), "{d}");
    assert!(d.contains("permission denied"), "{d}");
    assert!(d.contains(&format!("role of user \"{NODE_USER}\"")), "{d}");
    // Granted: the next attempt allocates and publishes.
    let mut c = root.client.clone();
    root.rt.block_on(async {
        for d in IDENTITY_DIRS {
            c.role_grant_permission(
                NODE_USER,
                Permission::read_write(format!("{PREFIX}/{d}")).with_prefix(),
            )
            .await
            .unwrap_or_else(|err| panic!("grant {d}: {err}"));
        }
    });
    let (s, _) = r.next_snapshot(T);
    assert!(
        s.endpoints.iter().all(|ep| ep.identity != 0),
        "{:?}",
        s.endpoints
    );
}
