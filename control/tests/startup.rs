//! The daemon's start: "running" (the first generation published, every worker up, what
//! `READY=1` and the lab's start helper wait for) means the data path forwards, the uplink
//! included. On the example node built by `scripts/lab.sh` (namespaces `np-<tag>su*`), AF_XDP
//! with two workers, a state without a static uplink `gateway_mac` (the kernel's is used):
//!
//! ```text
//!  router ── TCP ─> NodePort 192.168.100.2:30080 ─> nodeplane ─> web1 / web2 :8081
//!         <─ SYN-ACK out of uplink0: needs the router's MAC (the uplink gateway) ─┘
//! ```
//!
//! Each start begins with empty neighbour tables (flushed in the node and the router), so
//! the kernel has not resolved the gateway yet. The first connection from the router, made
//! as soon as the daemon says it runs, must be answered at once: its SYN-ACK must not drop
//! `no-neighbor` (which costs the client a 1 s SYN retransmission), so its single attempt has
//! a 1 s connect timeout. Before the fix the first tables had no gateway MAC until the
//! neighbour watcher's first reading was published a few to a hundred ms later (the flaky
//! NodePort check of `crash.rs`).
//!
//! A gateway that does not answer ARP must not hold the start for longer than the bound
//! (1 s): the daemon starts without the MAC, and once the gateway answers the watcher
//! publishes it and the NodePort works.
//!
//! Needs root, iproute2, socat. Fails (never skips) without them.
//! Run: `cargo test --profile ci -p nodeplane-control --test startup -- --nocapture`.

mod lab;

use lab::daemon::{drops_in as drops, Launch, Nodeplane};
use lab::Lab;

/// Empties the neighbour tables of the node's uplink and of the router.
fn forget_neighbours(lab: &Lab) {
    lab.must("node", &["ip", "neigh", "flush", "dev", "uplink0"]);
    lab.must("router", &["ip", "neigh", "flush", "dev", "eth0"]);
}

#[test]
fn the_first_nodeport_connection_after_the_start_is_answered_at_once() {
    let mut lab = Lab::up("su");
    lab::daemon::start_servers(&mut lab);
    let state = lab::daemon::echo_state(&lab);
    for run in 1..=4 {
        forget_neighbours(&lab);
        let np = Nodeplane::launch(
            &lab,
            &Launch {
                run,
                ..Launch::dir(&state)
            },
        );
        let ready = np.stats();
        let n = lab.tcp_line("router", "192.168.100.2", 30080, 1);
        let after = np.stats();
        assert!(
            n.as_deref().is_some_and(|l| l.starts_with("web")),
            "start {run}: the router's first NodePort connection, one attempt of 1 s: {n:?}; \
             status when ready: {ready}; after: {after}; log: {}",
            np.log()
        );
        assert_eq!(
            ready["generation"], 1,
            "start {run}: no second generation for the MAC"
        );
        let nb = &ready["io"]["neighbour"];
        assert_eq!(
            (nb["mac"].as_str(), nb["source"].as_str()),
            (Some("02:00:00:00:00:fe"), Some("kernel")),
            "start {run}: the first tables carry the kernel's gateway MAC: {nb}"
        );
        assert_eq!(drops(&after, "no-neighbor"), 0, "start {run}: {after}");
        assert!(
            np.log()
                .contains("gateway MAC before the first publication: 02:00:00:00:00:fe"),
            "{}",
            np.log()
        );
        assert!(np.stop(), "start {run}: clean stop");
    }
}

#[test]
fn a_gateway_that_does_not_answer_delays_the_start_by_the_bound_only() {
    let mut lab = Lab::up("sn");
    lab::daemon::start_servers(&mut lab);
    let state = lab::daemon::echo_state(&lab);
    forget_neighbours(&lab);
    // The router stops answering ARP; it still reaches the node through a static entry.
    lab.must(
        "router",
        &["ip", "link", "set", "dev", "eth0", "arp", "off"],
    );
    lab.must(
        "router",
        &[
            "ip",
            "neigh",
            "replace",
            "192.168.100.2",
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    let t0 = std::time::Instant::now();
    let np = Nodeplane::launch(&lab, &Launch::dir(&state));
    let started = t0.elapsed();
    let st = np.stats();
    assert_eq!(
        st["io"]["neighbour"]["source"], "none",
        "no MAC without an answer: {st}"
    );
    assert!(
        np.log()
            .contains("gateway MAC before the first publication: not resolved"),
        "{}",
        np.log()
    );
    eprintln!(
        "started without the gateway in {:.0} ms",
        started.as_secs_f64() * 1e3
    );
    // The gateway answers again: the watcher (backing off up to neigh_refresh, 0.5 s here)
    // publishes its MAC, and the NodePort works.
    lab.must("router", &["ip", "link", "set", "dev", "eth0", "arp", "on"]);
    lab::wait_until("the watcher to publish the gateway's MAC", 10, || {
        np.status()
            .is_some_and(|s| s["io"]["neighbour"]["source"] == "kernel")
    });
    let n = lab.tcp_line("router", "192.168.100.2", 30080, 1);
    assert!(
        n.as_deref().is_some_and(|l| l.starts_with("web")),
        "NodePort once the gateway answers: {n:?}; {}",
        np.stats()
    );
    assert!(np.stop(), "clean stop");
}
