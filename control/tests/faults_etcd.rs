//! Issue 13 item 8: etcd killed (SIGKILL) for 60 s and restarted on its data directory while
//! real traffic runs through ClusterIPs whose state came from it. Asserts what reached the far
//! end (every request answered), that the daemon kept its last good state and said the store
//! was down, that it retried on its bounded schedule (no storm) and resynced exactly once, and
//! that a change made after the store returned arrives through the re-established watch.
//!
//! ```text
//!   np-hbe*-client (Traffic: UDP queries to dns 10.96.0.53:53, a TCP echo session and new
//!        │          TCP connections to web 10.96.0.10:80)
//!   np-hbe*-node   nodeplane run (AF_XDP, state from etcd) ── 127.0.0.1 ── etcd (killed 60 s)
//!        │
//!   np-hbe*-web1, -web2 (socat: greeting + echo on 8081, answers on UDP 5353)
//! ```
//!
//! Needs root, the lab's tools and /usr/bin/etcd (Debian's etcd-server); fails loudly otherwise.

mod etcd_support;
mod lab;

use std::time::{Duration, Instant};

use etcd_support::{etcd_metrics, grpc_started, Store, PREFIX};
use lab::daemon::{echo_state, start_servers, Nodeplane};
use lab::traffic::Traffic;
use lab::{in_netns, Lab};
use nodeplane_control::source::etcd::server::LocalEtcd;
use nodeplane_control::source::etcd::BackoffConfig;

const OUTAGE: Duration = Duration::from_secs(60);
/// The test's reconnect schedule: windows 0.2, 0.4, 0.8, 1.6 s, then 2 s (the cap: one node).
const BASE_MS: u64 = 200;
const CAP_MS: u64 = 2_000;

/// How many attempts the schedule allows in `d` after a loss: attempt k lies in window k and
/// the windows follow each other, so at most one per window started within `d`.
fn schedule_bound(d: Duration) -> u64 {
    let cfg = BackoffConfig {
        base_ms: BASE_MS,
        cap_ms: CAP_MS,
        ..BackoffConfig::default()
    };
    let (mut start, mut k, mut n) = (Duration::ZERO, 0u32, 0u64);
    while start <= d {
        n += 1;
        start += cfg.window_k(k, 1);
        k += 1;
    }
    n
}

fn u(s: &serde_json::Value, k: &str) -> u64 {
    s[k].as_u64()
        .unwrap_or_else(|| panic!("status has no {k}: {s}"))
}

#[test]
fn etcd_killed_for_60_s_under_traffic_loses_nothing_and_resyncs_once() {
    let mut lab = Lab::up("hbe");
    start_servers(&mut lab);
    let state = nodeplane_state::load_path(&echo_state(&lab)).expect("the lab's state");
    let node = lab.ns("node");

    // etcd on the node's loopback: started (and probed) from inside the node namespace.
    let mut etcd = in_netns(&node, || {
        LocalEtcd::start().unwrap_or_else(|e| panic!("cannot run the test etcd: {e}"))
    });
    let (endpoint, mport) = (etcd.endpoint(), etcd.metrics_port());
    {
        let (ep, st) = (endpoint.clone(), state.clone());
        in_netns(&node, move || Store::connect(&ep).put_state("node-1", &st));
    }
    let pins = lab.bpffs();
    let sections = format!(
        "state:\n  etcd:\n    endpoints: [{endpoint}]\n    node_name: node-1\n    \
         backoff: {{ base_ms: {BASE_MS}, cap_ms: {CAP_MS} }}\n"
    );
    let np = Nodeplane::start_with(&lab, &sections, &pins, "", 1);
    let s0 = np.status().unwrap();
    assert_eq!(s0["source_connected"], true, "{s0}");
    assert_eq!(u(&s0, "source_syncs"), 1, "one sync at start: {s0}");
    let gen = np.settled_generation();

    let traffic = Traffic::start(
        &lab,
        "client",
        "10.96.0.53:53".parse().unwrap(),
        "10.96.0.10:80".parse().unwrap(),
    );
    // Traffic flows through both ClusterIPs before the outage.
    let before = traffic.wait_answered(4, 20);
    let t_before = Instant::now();
    let attempts0 = u(&np.status().unwrap(), "source_attempts");

    // The store dies.
    etcd.kill();
    let killed = Instant::now();
    lab::wait_until("the daemon to report the store down", 10, || {
        np.status().is_some_and(|s| s["source_connected"] == false)
    });
    let down = np.status().unwrap();
    assert!(
        down["source_detail"]
            .as_str()
            .is_some_and(|d| d.contains("etcd unavailable") && d.contains("last good state")),
        "{down}"
    );
    assert_eq!(
        down["state"], "ok",
        "the last good state is in force: {down}"
    );
    let mid = traffic.report();
    std::thread::sleep(OUTAGE.saturating_sub(killed.elapsed()));
    let during = traffic.report();
    let s_dead = np.status().unwrap();
    assert_eq!(
        u(&s_dead, "generation"),
        gen,
        "no new generation while the store is dead"
    );
    assert_eq!(s_dead["source_connected"], false);
    assert_eq!(s_dead["state"], "ok", "{s_dead}");
    assert_eq!(u(&s_dead, "source_syncs"), 1, "{s_dead}");

    // Back on the same data directory.
    let _etcd = in_netns(&node, move || {
        etcd.restart().expect("restart etcd");
        etcd
    });
    let restarted = killed.elapsed();
    lab::wait_until("the daemon to resync", 20, || {
        np.status().is_some_and(|s| s["source_connected"] == true)
    });
    let resynced = killed.elapsed();
    let s1 = np.status().unwrap();
    let attempts = u(&s1, "source_attempts") - attempts0;
    let bound = schedule_bound(resynced) + 1;
    eprintln!(
        "etcd down {:.1} s; resynced {:.1} s after the kill; {attempts} attempts (schedule bound {bound}); \
         traffic during the outage: {} UDP, {} echo, {} connects answered",
        restarted.as_secs_f64(),
        resynced.as_secs_f64(),
        during.udp.answered - mid.udp.answered,
        during.echo.answered - mid.echo.answered,
        during.connect.answered - mid.connect.answered,
    );
    assert!(
        attempts <= bound,
        "{attempts} attempts in {resynced:?}: more than the schedule allows ({bound}): a retry storm"
    );
    assert!(
        attempts >= schedule_bound(restarted) / 2,
        "{attempts} attempts in {restarted:?}: the source stopped trying"
    );
    assert_eq!(u(&s1, "source_syncs"), 2, "exactly one resync: {s1}");
    assert_eq!(
        u(&s1, "generation"),
        gen,
        "a resync that found the same state rebuilds nothing"
    );
    // What the store saw: one list and one watch from the daemon since it came back.
    let m = in_netns(&node, move || etcd_metrics(mport));
    assert_eq!(grpc_started(&m, "Range"), 1, "one list after the restart");
    assert_eq!(grpc_started(&m, "Watch"), 1, "one watch after the restart");

    // A change after the return arrives through the watch (no further sync).
    let mut extra = state
        .services
        .iter()
        .find(|s| s.name == "web")
        .unwrap()
        .clone();
    extra.name = "after".into();
    extra.frontends = vec![nodeplane_state::Frontend {
        ip: "10.96.0.77".parse().unwrap(),
        port: 80,
        protocol: nodeplane_state::L4Proto::TCP,
    }];
    extra.backends.retain(|b| b.ip.is_ipv4());
    {
        let ep = endpoint.clone();
        let v = serde_json::to_string(&extra).unwrap();
        in_netns(&node, move || {
            Store::connect(&ep).put(&format!("{PREFIX}/services/after"), &v)
        });
    }
    lab::wait_until("the change made after the return", 10, || {
        np.status()
            .is_some_and(|s| s["generation"].as_u64() == Some(gen + 1))
    });
    let reply = lab.tcp_line("client", "10.96.0.77", 80, 2);
    assert!(
        reply.as_deref().is_some_and(|l| l.starts_with("web")),
        "the service added after the outage answers: {reply:?}"
    );
    assert_eq!(u(&np.status().unwrap(), "source_syncs"), 2);

    std::thread::sleep(Duration::from_secs(1));
    let r = traffic.stop();
    eprintln!("traffic: {r:?}");
    assert_eq!(
        r.failures(),
        0,
        "every request the last state allowed was answered: {r:?}"
    );
    // Traffic ran through the whole outage (every request answered, and each loop went on).
    r.assert_ran_since(&before, t_before.elapsed());
    // Said once, loudly, and rate-limited: no line per attempt.
    let log = np.log();
    let attempt_lines = log.matches("etcd attempt failed").count();
    assert!(
        (1..=12).contains(&attempt_lines),
        "{attempt_lines} 'etcd attempt failed' lines for {attempts} attempts"
    );
    assert_eq!(log.matches("DISCONNECTED").count(), 1, "{log}");
    assert!(np.stop(), "clean stop");
}
