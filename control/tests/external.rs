//! External workloads (issue 15 item 2) through the daemon (replay I/O, the example node's
//! state in a directory): a VM registered with labels and an identity is in the ipcache,
//! listed by `nodeplane external list` and `identity list`, and policy enforces it like a pod:
//! ingress from it (web-1's rules) and egress to it (client's rules), decided by the live
//! pipeline (`explain`).

mod common;

use common::*;
use nodeplane_control::api::{ExplainRequest, Request};

const VM: &str = "external_workloads:\n  - name: vm-db\n    ips: [192.168.100.50, \"fd00:100::50\"]\n    identity: 5000\n    labels: { app: db, env: prod }\n";

fn explain(d: &Daemon, iface: &str, proto: &str, src: &str, dst: &str) -> serde_json::Value {
    d.call(&Request::Explain(ExplainRequest {
        iface: iface.into(),
        proto: proto.into(),
        src: src.into(),
        dst: dst.into(),
        tcp_flags: None,
    }))
}

#[test]
fn an_external_workload_has_its_identity_and_policy_enforces_it_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("in.pcap");
    write_pcap(&pcap, &[udp4(CLIENT, [10, 244, 1, 99], 43000, 53)]);
    let io = format!(
        "io:\n  replay:\n    inputs: [{{ iface: pod-client, file: {} }}]\n    rate_pps: 10\n",
        pcap.display()
    );
    let d = Daemon::start_in(dir, &io);
    std::fs::write(d.state.join("external.yaml"), VM).unwrap();
    wait_for("the external workload published", 10, || {
        (d.status()["generation"].as_u64()? >= 2).then_some(())
    });

    // Listed, in the ipcache with its identity, named as such.
    let (ok, out) = d.cli(&["external", "list"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("vm-db")
            && out.contains("192.168.100.50,fd00:100::50")
            && out.contains("5000")
            && out.contains("app=db,env=prod"),
        "{out}"
    );
    let e = d.call(&Request::IpcacheGet {
        ip: "fd00:100::50".into(),
    });
    assert_eq!(e["identity"], 5000, "{e}");
    assert_eq!(e["source"], "external vm-db", "{e}");
    let ids = d.call(&Request::IdentityList {});
    let row = ids
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["identity"] == 5000)
        .expect("identity 5000 listed");
    assert_eq!(row["kind"], "external", "{row}");

    // Ingress from the VM: web-1 admits the world on TCP 8080, but the VM is no longer the
    // world: denied by web-1's default deny, like a pod without a rule.
    let x = explain(
        &d,
        "uplink0",
        "tcp",
        "192.168.100.50:40000",
        "10.244.1.21:8080",
    );
    assert_eq!(x["outcome"]["src_identity"], 5000, "{x}");
    assert_eq!(x["src_identity"]["source"], "external vm-db", "{x}");
    assert_eq!(x["outcome"]["reason"], "policy-denied", "{x}");
    assert_eq!(x["ingress_rule"]["endpoint"], "web-1", "{x}");
    assert_eq!(
        x["ingress_rule"]["rule_index"],
        serde_json::Value::Null,
        "default deny: {x}"
    );
    // A host next to it that is not registered is still the world, and admitted.
    let x = explain(
        &d,
        "uplink0",
        "tcp",
        "192.168.100.51:40000",
        "10.244.1.21:8080",
    );
    assert_eq!(x["outcome"]["src_identity"], 2, "{x}");
    assert_eq!(x["outcome"]["verdict"], "forward", "{x}");

    // Now rules naming the VM's identity: web-1 admits it on 8080 (ingress), the client may
    // not reach it on 5432 (egress).
    let policies = std::fs::read_to_string(d.state.join("policies.yaml")).unwrap();
    let policies = policies.replacen(
        "  - endpoint: web-1\n    ingress:\n",
        "  - endpoint: web-1\n    ingress:\n      - action: allow\n        identities: [5000]\n        protocol: TCP\n        ports: [{ port: 8080 }]\n",
        1,
    );
    let policies = policies.replacen(
        "  - endpoint: client\n    egress:\n",
        "  - endpoint: client\n    egress:\n      - action: deny\n        identities: [5000]\n        protocol: TCP\n        ports: [{ port: 5432 }]\n",
        1,
    );
    std::fs::write(d.state.join("policies.yaml"), policies).unwrap();
    wait_for("the new policies published", 10, || {
        (d.status()["generation"].as_u64()? >= 3).then_some(())
    });
    let x = explain(
        &d,
        "uplink0",
        "tcp",
        "192.168.100.50:40001",
        "10.244.1.21:8080",
    );
    assert_eq!(
        x["outcome"]["verdict"], "forward",
        "ingress from the VM: {x}"
    );
    assert_eq!(x["ingress_rule"]["rule_index"], 0, "{x}");
    let x = explain(
        &d,
        "pod-client",
        "tcp",
        "10.244.1.10:40002",
        "192.168.100.50:5432",
    );
    assert_eq!(x["outcome"]["dst_identity"], 5000, "{x}");
    assert_eq!(
        x["outcome"]["reason"], "policy-denied",
        "egress to the VM: {x}"
    );
    assert_eq!(x["egress_rule"]["endpoint"], "client", "{x}");
    assert_eq!(x["egress_rule"]["decision"], "deny", "{x}");
    // Other ports of the VM stay allowed by the client's allow-all egress.
    let x = explain(
        &d,
        "pod-client",
        "tcp",
        "10.244.1.10:40003",
        "192.168.100.50:22",
    );
    assert_eq!(x["outcome"]["verdict"], "forward", "{x}");

    // A bad registration is rejected whole, naming the field; the running state stays.
    std::fs::write(
        d.state.join("external.yaml"),
        "external_workloads:\n  - name: vm-db\n    ips: [10.244.1.21]\n    identity: 5000\n",
    )
    .unwrap();
    wait_for("the rejection", 10, || {
        let s = d.status();
        (s["state"] == "stale").then_some(s)
    });
    let s = d.status();
    let err = s["last_rejection"]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("external_workloads[vm-db].ips[0]") && err.contains("local endpoint"),
        "{err}"
    );
    let e = d.call(&Request::IpcacheGet {
        ip: "192.168.100.50".into(),
    });
    assert_eq!(
        e["identity"], 5000,
        "the last good state keeps forwarding: {e}"
    );
}
