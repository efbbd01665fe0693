//! Against real routers: BIRD 2 (and GoBGP in the benchmark) in network namespaces, our
//! speaker as a real process in the node namespace. Needs root, iproute2 and bird2; fails
//! loudly otherwise.

mod lab;

use std::time::Duration;

use lab::{bird_bgp, wait_until, Lab};

const S: Duration = Duration::from_secs(1);

fn speaker_cfg(local_as: u32, neighbors: &str) -> String {
    format!("local_as: {local_as}\nrouter_id: 10.0.0.2\nneighbors:\n{neighbors}")
}

fn neighbor(i: usize, remote_as: u32, extra: &str) -> String {
    format!(
        "  - address: 10.0.{i}.1\n    remote_as: {remote_as}\n    next_hop_ipv6: \"fd00:{i}::2\"\n\
         \x20   hold_time_secs: 3\n    connect_retry_secs: 1\n{extra}"
    )
}

fn state(pod_cidrs: &[&str]) -> String {
    format!(
        "node:\n  name: n1\n  pod_cidrs: [{}]\n",
        pod_cidrs.join(", ")
    )
}

#[test]
fn bird_learns_podcidrs_v4_v6_with_4_octet_as_and_withdraws_on_change() {
    let mut lab = Lab::new("basic", 1);
    let bird = lab.bird(
        0,
        &bird_bgp(
            "node",
            "10.0.0.1",
            65000,
            "10.0.0.2",
            4_200_000_001,
            "hold time 3;",
        ),
    );
    lab.speaker(
        &speaker_cfg(4_200_000_001, &neighbor(0, 65000, "")),
        &state(&["10.244.1.0/24", "fd00:244:1::/64"]),
    );
    wait_until("session established at BIRD", 10 * S, || {
        bird.established("node")
    });

    let r4 = bird.wait_route("10.244.1.0/24", 3 * S);
    assert!(r4.contains("BGP.as_path: 4200000001"), "{r4}");
    assert!(r4.contains("BGP.next_hop: 10.0.0.2"), "{r4}");
    assert!(r4.contains("BGP.origin: IGP"), "{r4}");
    let r6 = bird.wait_route("fd00:244:1::/64", 3 * S);
    assert!(r6.contains("BGP.as_path: 4200000001"), "{r6}");
    assert!(r6.contains("BGP.next_hop: fd00::2"), "{r6}");

    // The PodCIDR moves: old withdrawn, new announced.
    lab.write("state.yaml", &state(&["10.244.2.0/25", "fd00:244:1::/64"]));
    wait_until("new PodCIDR at BIRD", 2 * S, || {
        bird.route("10.244.2.0/25").is_some()
    });
    wait_until("old PodCIDR withdrawn", 2 * S, || {
        bird.route("10.244.1.0/24").is_none()
    });
    // IPv6 removed entirely: withdrawn through MP_UNREACH.
    lab.write("state.yaml", &state(&["10.244.2.0/25"]));
    wait_until("IPv6 PodCIDR withdrawn", 2 * S, || {
        bird.route("fd00:244:1::/64").is_none()
    });

    // Our status endpoint agrees.
    let st = lab.status();
    let n = &st.neighbors[0];
    assert_eq!(format!("{:?}", n.state), "Established");
    assert_eq!(n.announced, vec!["10.244.2.0/25".parse().unwrap()]);
    assert!(n.negotiated.as_ref().unwrap().four_octet_as);
    assert!(n.uptime().is_some());
    let text = nodeplane_bgp::format_status(&st);
    assert!(
        text.contains("10.244.2.0/25") && text.contains("Established"),
        "{text}"
    );
}

#[test]
fn sigterm_withdraws_and_sends_administrative_shutdown() {
    let mut lab = Lab::new("term", 1);
    let bird = lab.bird(
        0,
        &bird_bgp("node", "10.0.0.1", 65000, "10.0.0.2", 65001, "hold time 3;"),
    );
    let sp = lab.speaker(
        &speaker_cfg(65001, &neighbor(0, 65000, "")),
        &state(&["10.244.1.0/24"]),
    );
    bird.wait_route("10.244.1.0/24", 3 * S);
    lab.signal(sp, "TERM");
    let st = lab.exited(sp, 5 * S).expect("speaker exits on SIGTERM");
    assert!(st.success(), "{st:?}");
    wait_until("route gone", S, || bird.route("10.244.1.0/24").is_none());
    let p = bird.cmd("show protocols all node");
    assert!(p.contains("Administrative shutdown"), "{p}");
    assert!(p.contains("nodeplane speaker shutting down"), "{p}");
}

#[test]
fn hold_timer_expires_when_the_speaker_is_frozen_then_recovers() {
    let mut lab = Lab::new("hold", 1);
    let bird = lab.bird(
        0,
        &bird_bgp("node", "10.0.0.1", 65000, "10.0.0.2", 65001, "hold time 3;"),
    );
    let sp = lab.speaker(
        &speaker_cfg(65001, &neighbor(0, 65000, "")),
        &state(&["10.244.1.0/24"]),
    );
    wait_until("established", 10 * S, || bird.established("node"));
    lab.signal(sp, "STOP");
    wait_until("BIRD's hold timer expiry", 6 * S, || {
        bird.cmd("show protocols all node")
            .contains("Hold timer expired")
    });
    assert!(
        bird.route("10.244.1.0/24").is_none(),
        "route dropped with the session"
    );
    lab.signal(sp, "CONT");
    // We find the dead connection, back off, reconnect.
    wait_until("re-established", 15 * S, || bird.established("node"));
    bird.wait_route("10.244.1.0/24", 3 * S);
}

#[test]
fn graceful_restart_keeps_routes_while_we_restart_and_end_of_rib_flushes_stale() {
    let mut lab = Lab::new("gr", 1);
    let bird = lab.bird(
        0,
        &bird_bgp(
            "node",
            "10.0.0.1",
            65000,
            "10.0.0.2",
            65001,
            "hold time 3; graceful restart on;",
        ),
    );
    let cfg = speaker_cfg(65001, &neighbor(0, 65000, ""));
    let sp = lab.speaker(&cfg, &state(&["10.244.1.0/24", "10.244.9.0/24"]));
    bird.wait_route("10.244.9.0/24", 3 * S);
    bird.wait_route("10.244.1.0/24", 3 * S);
    // Crash: no NOTIFICATION, no withdraw.
    lab.kill(sp);
    wait_until("BIRD notices", 5 * S, || !bird.established("node"));
    std::thread::sleep(Duration::from_millis(500));
    let r = bird
        .route("10.244.1.0/24")
        .expect("route kept during graceful restart");
    assert!(r.contains("10.244.1.0/24"), "{r}");
    assert!(bird.route("10.244.9.0/24").is_some());
    // Come back without 10.244.9.0/24: after our End-of-RIB, BIRD flushes the stale route and
    // keeps the one we announced again.
    lab.speaker(&cfg, &state(&["10.244.1.0/24"]));
    wait_until("re-established", 10 * S, || bird.established("node"));
    wait_until("stale route flushed on End-of-RIB", 3 * S, || {
        bird.route("10.244.9.0/24").is_none()
    });
    assert!(
        bird.route("10.244.1.0/24").is_some(),
        "the re-announced route stays"
    );
}

#[test]
fn md5_right_key_establishes_wrong_key_never_does() {
    let mut lab = Lab::new("md5", 2);
    let key = lab.write("md5.key", "s3cret-key\n");
    let good = lab.bird(
        0,
        &bird_bgp(
            "node",
            "10.0.0.1",
            65000,
            "10.0.0.2",
            65001,
            "hold time 3; password \"s3cret-key\";",
        ),
    );
    let bad = lab.bird(
        1,
        &bird_bgp(
            "node",
            "10.0.1.1",
            65000,
            "10.0.1.2",
            65001,
            "hold time 3; password \"other-key\";",
        ),
    );
    let md5 = format!("    md5_password_file: {}\n", key.display());
    let cfg = speaker_cfg(
        65001,
        &(neighbor(0, 65000, &md5) + &neighbor(1, 65000, &md5)),
    );
    lab.speaker(&cfg, &state(&["10.244.1.0/24"]));
    wait_until("right key established", 10 * S, || good.established("node"));
    good.wait_route("10.244.1.0/24", 3 * S);
    // Give the wrong-key session several connect attempts.
    std::thread::sleep(3 * S);
    assert!(
        !bad.established("node"),
        "{}",
        bad.cmd("show protocols all node")
    );
    assert!(bad.route("10.244.1.0/24").is_none());
    let st = lab.status();
    assert_eq!(format!("{:?}", st.neighbors[0].state), "Established");
    assert_ne!(format!("{:?}", st.neighbors[1].state), "Established");
    assert!(st.neighbors[1].md5);
}

#[test]
fn two_neighbours_ebgp_leaf_with_gtsm_and_ibgp_core() {
    let mut lab = Lab::new("two", 2);
    let leaf = lab.bird(
        0,
        &bird_bgp(
            "node",
            "10.0.0.1",
            65000,
            "10.0.0.2",
            65001,
            "hold time 3; ttl security on;",
        ),
    );
    let core = lab.bird(
        1,
        &bird_bgp(
            "node",
            "10.0.1.1",
            65001,
            "10.0.1.2",
            65001,
            "hold time 3; direct;",
        ),
    );
    let cfg = speaker_cfg(
        65001,
        &(neighbor(0, 65000, "    ttl_security: true\n") + &neighbor(1, 65001, "")),
    );
    lab.speaker(&cfg, &state(&["10.244.1.0/24", "fd00:244:1::/64"]));
    wait_until("leaf established", 10 * S, || leaf.established("node"));
    wait_until("core established", 10 * S, || core.established("node"));
    let l = leaf.wait_route("10.244.1.0/24", 3 * S);
    assert!(l.contains("BGP.as_path: 65001"), "{l}");
    let c = core.wait_route("10.244.1.0/24", 3 * S);
    assert!(
        c.contains("BGP.as_path: \n")
            || c.contains("BGP.as_path:\n")
            || c.contains("BGP.as_path: \t"),
        "iBGP: empty AS path: {c}"
    );
    assert!(c.contains("BGP.local_pref: 100"), "{c}");
    assert!(c.contains("BGP.next_hop: 10.0.1.2"), "{c}");
    let c6 = core.wait_route("fd00:244:1::/64", 3 * S);
    assert!(c6.contains("BGP.next_hop: fd00:1::2"), "{c6}");
}

/// A peer that answers with garbage gets a NOTIFICATION and a reconnect with growing backoff;
/// the speaker never dies.
#[test]
fn garbage_peer_gets_notification_and_backoff() {
    let mut lab = Lab::new("junk", 1);
    let script = lab.write(
        "junk.py",
        r#"
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.0.0.1", 179)); s.listen(8)
log = open(sys.argv[1], "a")
while True:
    c, _ = s.accept()
    c.settimeout(2)
    c.sendall(b"\x00" * 16 + b"\x00\x13\x04")  # bad marker
    data = b""
    try:
        while True:
            d = c.recv(4096)
            if not d: break
            data += d
    except Exception:
        pass
    log.write("%f %s\n" % (time.time(), data.hex())); log.flush()
    c.close()
"#,
    );
    let out = lab.path("junk.log");
    lab.spawn_in_router(
        0,
        &["python3", script.to_str().unwrap(), out.to_str().unwrap()],
    );
    std::thread::sleep(Duration::from_millis(300));
    let sp = lab.speaker(
        &speaker_cfg(65001, &neighbor(0, 65000, "    passive: false\n")),
        &state(&["10.244.1.0/24"]),
    );
    wait_until("three connections", 15 * S, || {
        lab.log("junk.log").lines().count() >= 3
    });
    let lines: Vec<(f64, String)> = lab
        .log("junk.log")
        .lines()
        .map(|l| {
            let (t, hex) = l.split_once(' ').unwrap();
            (t.parse().unwrap(), hex.to_string())
        })
        .collect();
    for (_, hex) in &lines {
        // Our OPEN, then NOTIFICATION 1/1 (connection not synchronized).
        assert!(hex.contains("0015030101"), "no NOTIFICATION 1/1 in {hex}");
    }
    let gaps: Vec<f64> = lines.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(gaps[1] > gaps[0] * 1.2, "backoff grows: {gaps:?}");
    assert!(
        lab.exited(sp, Duration::from_millis(10)).is_none(),
        "speaker still running"
    );
    let st = lab.status();
    assert!(
        st.neighbors[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("marker"),
        "{st:?}"
    );
}
