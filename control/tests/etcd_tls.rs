//! The etcd source over TLS against a real etcd (Debian's etcd-server) serving https with
//! `--client-cert-auth`, with a throwaway PKI made by openssl at test time (etcd_support::pki).

mod etcd_support;

use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use etcd_support::pki::{Issued, Pki};
use etcd_support::{config, count_in_log, Running, Store, PREFIX};
use nodeplane_control::source::etcd::server::{LocalEtcd, ServerTls};
use nodeplane_control::source::etcd::{EtcdConfig, EtcdSource, TlsConfig};
use nodeplane_control::source::SourceEvent;
use nodeplane_state::example;

const T: Duration = Duration::from_secs(10);

/// etcd on https, requiring client certificates signed by the PKI's CA.
fn etcd(pki: &Pki) -> LocalEtcd {
    LocalEtcd::builder()
        .tls(ServerTls {
            cert_file: pki.server.cert.clone(),
            key_file: pki.server.key.clone(),
            client_ca_file: Some(pki.ca.cert.clone()),
        })
        .start()
        .unwrap_or_else(|e| panic!("cannot run the test etcd: {e}"))
}

/// The test's own writer, with the good client certificate.
fn store(e: &LocalEtcd, pki: &Pki) -> Store {
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(&pki.ca.cert)))
        .identity(Identity::from_pem(
            read(&pki.client.cert),
            read(&pki.client.key),
        ));
    Store::connect_with(&e.endpoint(), Some(ConnectOptions::new().with_tls(tls)))
}

fn tls_config(e: &LocalEtcd, ca: &std::path::Path, client: Option<&Issued>) -> EtcdConfig {
    let mut c = config(&e.endpoint(), "n1");
    c.tls = Some(TlsConfig {
        ca_file: ca.to_path_buf(),
        cert_file: client.map(|i| i.cert.clone()),
        key_file: client.map(|i| i.key.clone()),
        server_name: None,
    });
    c
}

#[test]
fn syncs_and_watches_over_https_with_a_client_certificate() {
    let pki = Pki::new();
    let e = etcd(&pki);
    assert!(e.endpoint().starts_with("https://"), "{}", e.endpoint());
    let mut st = store(&e, &pki);
    let state = example::state().unwrap();
    st.put_state("n1", &state);

    let cfg = tls_config(&e, &pki.ca.cert, Some(&pki.client));
    let r = Running::start(EtcdSource::with_local(cfg, None).unwrap(), None);
    match r.next(T) {
        SourceEvent::Health { connected, detail } => assert!(connected, "{detail}"),
        other => panic!("expected health first, got {other:?}"),
    }
    let (first, _) = r.next_snapshot(T);
    assert_eq!(first.services.len(), state.services.len());
    assert_eq!(first.endpoints, state.endpoints);
    // The watch runs over the same TLS connection.
    let mut svc = state.services[0].clone();
    svc.name = "over-tls".into();
    st.put(
        &format!("{PREFIX}/services/over-tls"),
        &serde_json::to_string(&svc).unwrap(),
    );
    let (s, _) = r.next_snapshot(T);
    assert_eq!(s.services.iter().find(|x| x.name == "over-tls"), Some(&svc));
}

/// Everything the source sends in `d`; asserts it only reported the store down (once), never
/// published or rejected anything and is still running (retrying), and returns the detail.
fn only_down_report(r: &Running, d: Duration) -> String {
    let mut downs = Vec::new();
    for ev in r.collect(d) {
        match ev {
            SourceEvent::Health {
                connected: false,
                detail,
            } => downs.push(detail),
            other => panic!("expected only a down report, got {other:?}"),
        }
    }
    assert_eq!(downs.len(), 1, "one report per outage: {downs:?}");
    assert!(r.is_running(), "the source keeps retrying");
    downs.pop().unwrap()
}

#[test]
fn wrong_ca_is_reported_clearly_nothing_is_published_and_a_fixed_file_is_picked_up() {
    let pki = Pki::new();
    let e = etcd(&pki);
    store(&e, &pki).put_state("n1", &example::state().unwrap());
    // The node's CA file holds an unrelated CA.
    let node_ca = pki.dir.path().join("node-ca.pem");
    std::fs::copy(&pki.other_ca.cert, &node_ca).unwrap();
    let cfg = tls_config(&e, &node_ca, Some(&pki.client));
    let r = Running::start(EtcdSource::with_local(cfg, None).unwrap(), None);
    let detail = only_down_report(&r, Duration::from_secs(2));
    assert!(
        detail.contains("invalid peer certificate: UnknownIssuer"),
        "{detail}"
    );
    assert!(
        detail.contains(&format!("etcd.tls.ca_file {}", node_ca.display())),
        "{detail}"
    );
    assert!(detail.contains("last good state"), "{detail}");
    // The operator fixes the file: the next attempt reads it, no restart.
    std::fs::copy(&pki.ca.cert, &node_ca).unwrap();
    r.recovers(T);
}

#[test]
fn missing_or_foreign_client_certificate_is_reported_clearly_and_nothing_is_published() {
    let pki = Pki::new();
    let e = etcd(&pki);
    store(&e, &pki).put_state("n1", &example::state().unwrap());

    let cfg = tls_config(&e, &pki.ca.cert, None);
    let r = Running::start(EtcdSource::with_local(cfg, None).unwrap(), None);
    // TLS 1.3 completes the client's handshake before the server checks the certificate: the
    // server's alert ("received fatal alert: BadCertificate") may be lost to its close, leaving
    // "connection closed" (or "broken pipe" if the request was still being written). Either way
    // the report points at the client certificate settings.
    let detail = only_down_report(&r, Duration::from_secs(2));
    assert!(
        detail.contains("received fatal alert")
            || detail.contains("connection closed")
            || detail.contains("broken pipe"),
        "{detail}"
    );
    assert!(
        detail.contains("set etcd.tls.cert_file and key_file"),
        "{detail}"
    );
    drop(r);

    // Signed by a CA the server does not trust.
    let cfg = tls_config(&e, &pki.ca.cert, Some(&pki.other_client));
    let r = Running::start(EtcdSource::with_local(cfg, None).unwrap(), None);
    let detail = only_down_report(&r, Duration::from_secs(2));
    assert!(
        detail.contains("received fatal alert")
            || detail.contains("connection closed")
            || detail.contains("broken pipe"),
        "{detail}"
    );
    assert!(
        detail.contains("client certificate in etcd.tls.cert_file"),
        "{detail}"
    );
    // The server saw and refused both (its own words).
    let log = e.log_path();
    assert!(count_in_log(&log, "client didn't provide a certificate") > 0);
    assert!(count_in_log(&log, "certificate signed by unknown authority") > 0);
}

#[test]
fn server_name_is_the_name_checked_in_the_server_certificate() {
    let pki = Pki::new();
    let e = etcd(&pki);
    store(&e, &pki).put_state("n1", &example::state().unwrap());
    // The certificate names localhost too: verifying that name instead of 127.0.0.1 works.
    let mut cfg = tls_config(&e, &pki.ca.cert, Some(&pki.client));
    cfg.tls.as_mut().unwrap().server_name = Some("localhost".into());
    let r = Running::start(EtcdSource::with_local(cfg.clone(), None).unwrap(), None);
    r.recovers(T);
    drop(r);
    // A name the certificate does not carry is refused by the client.
    cfg.tls.as_mut().unwrap().server_name = Some("etcd.elsewhere.example".into());
    let r = Running::start(EtcdSource::with_local(cfg, None).unwrap(), None);
    let detail = only_down_report(&r, Duration::from_secs(2));
    assert!(
        detail.contains("certificate not valid for name \"etcd.elsewhere.example\""),
        "{detail}"
    );
    assert!(detail.contains("set etcd.tls.server_name"), "{detail}");
}
