//! `nodeplane run` with the etcd source against a real etcd: the node syncs from the store,
//! keeps forwarding on the last good state while the store is dead (and says so), and picks up
//! changes again after the store comes back.
//!
//! ```text
//!  etcd (127.0.0.1, temp dir) ──watch──> nodeplane run (replay io: DNS queries from the client)
//!                                            └─> pod-web1 / pod-web2 (the dns service's backends)
//! ```

mod common;
mod etcd_support;

use common::*;
use etcd_support::{Store, PREFIX};
use nodeplane_control::api::Request;
use nodeplane_control::source::etcd::server::LocalEtcd;

#[test]
fn daemon_syncs_from_etcd_and_survives_its_outage() {
    let mut etcd = LocalEtcd::start().unwrap_or_else(|e| panic!("cannot run the test etcd: {e}"));
    let mut store = Store::connect(&etcd.endpoint());
    let state = nodeplane_state::example::state().expect("example state");
    store.put_state("node-1", &state);

    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("in.pcap");
    // DNS queries to the `dns` ClusterIP, new source ports every pass.
    write_pcap(&pcap, &[udp4(CLIENT, [10, 96, 0, 53], 1000, 53)]);
    let socket = dir.path().join("np.sock");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "state:\n  etcd:\n    endpoints: [{}]\n    node_name: node-1\n    backoff: {{ base_ms: 100, cap_ms: 300 }}\n\
             control_socket: {}\nlog_level: debug\n\
             io:\n  replay:\n    inputs: [{{ iface: pod-client, file: {} }}]\n    rate_pps: 400\n    vary_ports: true\n",
            etcd.endpoint(),
            socket.display(),
            pcap.display()
        ),
    )
    .unwrap();
    let d = Daemon::launch(dir);
    wait_for("the first publication from etcd", 30, || {
        let s = d.try_call(&Request::Status {})?;
        (s["generation"].as_u64()? >= 1).then_some(())
    });
    let names = |d: &Daemon| -> Vec<String> {
        d.call(&Request::ServiceList {})
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(names(&d).contains(&"dns".to_string()), "{:?}", names(&d));
    let backends = |d: &Daemon| d.tx("pod-web1") + d.tx("pod-web2");
    wait_for("DNS traffic to the backends", 10, || {
        (backends(&d) > 0).then_some(())
    });

    // The store dies: the node says so and keeps forwarding on the last good state.
    etcd.kill();
    wait_for("the source reported down", 15, || {
        (d.status()["source_connected"] == false).then_some(())
    });
    let gen = d.status()["generation"].clone();
    let before = backends(&d);
    wait_for("forwarding through the outage", 10, || {
        (backends(&d) > before + 50).then_some(())
    });
    assert_eq!(
        d.status()["generation"],
        gen,
        "no state change while the store is down"
    );
    assert_eq!(d.drops("no-backend"), 0);

    // The store comes back: a change made there is picked up.
    etcd.restart().expect("restart etcd");
    let mut store = Store::connect(&etcd.endpoint());
    let mut extra = state.services[0].clone();
    extra.name = "extra".into();
    extra.frontends = vec![nodeplane_state::Frontend {
        ip: "10.96.0.99".parse().unwrap(),
        port: 80,
        protocol: nodeplane_state::L4Proto::TCP,
    }];
    extra.node_ports.clear();
    store.put(
        &format!("{PREFIX}/services/extra"),
        &serde_json::to_string(&extra).unwrap(),
    );
    wait_for("the change after the outage", 30, || {
        names(&d).contains(&"extra".to_string()).then_some(())
    });
    assert_eq!(d.status()["source_connected"], true);
}

/// With the etcd source, every accepted publication reaches the BGP speaker too: a PodCIDR
/// added to the node's record in the store becomes a route to announce; a rejected record
/// changes nothing.
#[test]
fn bgp_routes_follow_the_etcd_state() {
    let etcd = LocalEtcd::start().unwrap_or_else(|e| panic!("cannot run the test etcd: {e}"));
    let mut store = Store::connect(&etcd.endpoint());
    let mut state = nodeplane_state::example::state().expect("example state");
    store.put_state("node-1", &state);

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("np.sock");
    let cfg = dir.path().join("config.yaml");
    // A passive neighbour nobody answers for: the speaker runs, no session needed.
    std::fs::write(
        &cfg,
        format!(
            "state:\n  etcd:\n    endpoints: [{}]\n    node_name: node-1\n    backoff: {{ base_ms: 100, cap_ms: 300 }}\n\
             control_socket: {}\nlog_level: debug\n\
             bgp:\n  local_as: 65001\n  router_id: 10.0.0.2\n  listen_port: 0\n  neighbors:\n    - {{ address: 192.0.2.1, remote_as: 65000, passive: true, next_hop_ipv6: \"fd00::2\" }}\n",
            etcd.endpoint(),
            socket.display(),
        ),
    )
    .unwrap();
    let d = Daemon::launch(dir);
    let routes = |d: &Daemon| -> Option<Vec<String>> {
        let s = d.try_call(&Request::BgpStatus {})?;
        (s["speaker"] == "running").then_some(())?;
        Some(
            s["routes"]
                .as_array()?
                .iter()
                .map(|r| r.as_str().unwrap_or_default().to_string())
                .collect(),
        )
    };
    let first = wait_for("the speaker with the first state's routes", 30, || {
        routes(&d)
    });
    assert_eq!(first, ["10.244.1.0/24", "fd00:244:1::/64"]);

    state.node.pod_cidrs.push("10.244.9.0/24".parse().unwrap());
    store.put_state("node-1", &state);
    wait_for("the added PodCIDR", 10, || {
        (routes(&d)? == ["10.244.1.0/24", "10.244.9.0/24", "fd00:244:1::/64"]).then_some(())
    });
    let gen = d.status()["generation"].as_u64().unwrap();

    // A PodCIDR overlapping another: rejected whole; the routes stay.
    state
        .node
        .pod_cidrs
        .push("10.244.9.128/25".parse().unwrap());
    store.put_state("node-1", &state);
    wait_for("the rejection", 10, || {
        (d.status()["state"] == "stale").then_some(())
    });
    assert_eq!(d.status()["generation"].as_u64().unwrap(), gen);
    assert_eq!(
        routes(&d).unwrap(),
        ["10.244.1.0/24", "10.244.9.0/24", "fd00:244:1::/64"]
    );
}
