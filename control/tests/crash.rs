//! The daemon SIGKILLed under traffic (issue 13, items 5 and 8), on the example node built by
//! `scripts/lab.sh` (namespaces `np-b-c*`), AF_XDP with two workers, the XDP links pinned in
//! the lab's own bpffs:
//!
//! ```text
//!  client pod ── UDP every 10 ms ─> ClusterIP 10.96.0.53:53 ─┐            ┌─ web1 :5353, :8081, :9050
//!             ── TCP ─> ClusterIP 10.96.0.10:80 (→ :8081) ───┼ nodeplane ─┤
//!             ── TCP ─> web1 10.244.1.21:9050 (policy: deny) ┤  SIGKILL   └─ web2 ...
//!  router ───── TCP ─> NodePort 192.168.100.2:30080 ─────────┘  + start
//! ```
//!
//! A crash leaves no snapshot and no cleanup: only the pinned XDP program remains, and the
//! kernel has removed the dead process's sockets from its XSKMAP. What the node does then is
//! `io.afxdp.no_socket`:
//! - `drop` (the default, fail closed): no steered frame reaches the node's kernel: the denied
//!   connection does not get through, nothing is forwarded by the kernel (`ForwDatagrams` of
//!   the node namespace unchanged), ClusterIP and NodePort are silent (no reset);
//! - `pass` (fail open): the kernel forwards pod traffic by its routes, without policy: the
//!   denied connection gets through.
//!
//! Either way a new daemon takes the pinned program over and new ClusterIP, NodePort and
//! UDP traffic works again, with policy. After its clean stop the program is still attached;
//! `nodeplane detach` (what the package runs at removal) takes it off every interface.
//!
//! Needs root, iproute2, socat, python3. Fails (never skips) without them.
//! Run: `cargo test --profile ci -p nodeplane-control --test crash -- --nocapture`.

use std::process::Command;
use std::time::{Duration, Instant};

mod lab;

use lab::daemon::Nodeplane;
use lab::udp_loop::UdpLoop;
use lab::Lab;

/// How many of the node's interfaces have an XDP program attached.
fn xdp_attached(lab: &Lab) -> usize {
    ["uplink0", "pod-client", "pod-web1", "pod-web2"]
        .iter()
        .filter(|i| {
            let out = Command::new("ip")
                .args(["-n", &lab.ns("node"), "link", "show", i])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(" xdp")
        })
        .count()
}

/// What one run observed.
struct Seen {
    dead_denied: Option<String>,
    dead_cluster: Option<String>,
    dead_nodeport: Option<String>,
    dead_forwarded: u64,
    dead_udp_answers: u64,
}

/// Starts the daemon, checks the node works, SIGKILLs it under UDP traffic, looks at what the
/// node does while no daemon runs, restarts it and checks that the node works again.
fn crash_and_recover(tag: &str, afxdp_extra: &str) -> Seen {
    let mut lab = Lab::up(tag);
    lab::daemon::start_servers(&mut lab);
    let state = lab::daemon::echo_state(&lab);
    let pins = lab.bpffs();
    let np = Nodeplane::start(&lab, &state, &pins, afxdp_extra, 1);

    // One attempt of 1 s each: "running" means forwarding, from the first connection on
    // (the first NodePort SYN-ACK toward the router once dropped no-neighbor: startup.rs).
    let working = |lab: &Lab, np: &Nodeplane, when: &str| {
        let c = lab.tcp_line("client", "10.96.0.10", 80, 1);
        assert!(
            c.as_deref().is_some_and(|l| l.starts_with("web")),
            "{when}: ClusterIP: {c:?}; status: {}; log: {}",
            np.stats(),
            np.log()
        );
        let n = lab.tcp_line("router", "192.168.100.2", 30080, 1);
        assert!(
            n.as_deref().is_some_and(|l| l.starts_with("web")),
            "{when}: NodePort: {n:?}; status: {}; log: {}",
            np.stats(),
            np.log()
        );
        let d = lab.tcp_line("client", "10.244.1.21", 9050, 1);
        assert_eq!(d, None, "{when}: the policy denies client -> web1:9050");
    };
    working(&lab, &np, "before the crash");

    let mut udp = UdpLoop::start(&lab, "10.96.0.53", 53);
    // 10 answers (50 ms unloaded); a loaded machine only starts the loop more slowly.
    udp.wait_answers(10, 20);
    let fwd0 = lab.snmp("node", "Ip", "ForwDatagrams");
    let a0 = udp.answers();
    np.kill();
    let t_kill = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        xdp_attached(&lab),
        4,
        "the pinned XDP program stays attached after SIGKILL"
    );
    // Up to three attempts (a loaded machine): fail closed must refuse all of them.
    let t_denied = Instant::now();
    let dead_denied = (0..3).find_map(|_| lab.tcp_line("client", "10.244.1.21", 9050, 1));
    let denied_took = t_denied.elapsed();
    let dead_cluster = lab.tcp_line("client", "10.96.0.10", 80, 1);
    let dead_nodeport = lab.tcp_line("router", "192.168.100.2", 30080, 1);
    let dead_udp_answers = udp.answers() - a0;
    let dead_forwarded = lab.snmp("node", "Ip", "ForwDatagrams") - fwd0;
    let dead_for = t_kill.elapsed();

    let np = Nodeplane::start(&lab, &state, &pins, afxdp_extra, 2);
    let restarted = t_kill.elapsed();
    let log = np.log();
    assert!(
        log.contains("took over the link pinned at"),
        "the new daemon takes the pinned program over: {log}"
    );
    // 20 answers (about 0.2 s unloaded); never, if the restart did not recover UDP.
    let udp_again = udp.wait_answers(20, 10);
    working(&lab, &np, "after the restart");
    eprintln!(
        "{tag}: dead for {:.1} s (restart ready {:.0} ms after the SIGKILL): denied connection {dead_denied:?} ({:.0} ms), ClusterIP {dead_cluster:?}, NodePort {dead_nodeport:?}, UDP answers {dead_udp_answers}, kernel forwarded {dead_forwarded} datagrams; after the restart 20 UDP answers in {:.0} ms",
        dead_for.as_secs_f64(),
        restarted.as_secs_f64() * 1000.0,
        denied_took.as_secs_f64() * 1000.0,
        udp_again.as_secs_f64() * 1000.0
    );
    assert!(np.stop(), "clean stop");
    assert_eq!(xdp_attached(&lab), 4, "still attached after a clean stop");

    // Uninstalling: `nodeplane detach` removes the pins; no daemon holds the links, so the
    // program leaves every interface.
    let out = Command::new(env!("CARGO_BIN_EXE_nodeplane"))
        .args(["detach", "--pin-dir"])
        .arg(&pins)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "nodeplane detach: {text}");
    assert_eq!(text.matches("unpinned").count(), 4, "{text}");
    let t0 = Instant::now();
    while xdp_attached(&lab) > 0 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(xdp_attached(&lab), 0, "detached after nodeplane detach");
    assert!(!pins.exists());
    Seen {
        dead_denied,
        dead_cluster,
        dead_nodeport,
        dead_forwarded,
        dead_udp_answers,
    }
}

#[test]
fn sigkill_fails_closed_and_a_restart_recovers() {
    let s = crash_and_recover("b-cc", "");
    assert_eq!(
        s.dead_denied, None,
        "fail closed: the denied connection must not get through while no daemon runs"
    );
    assert_eq!(
        s.dead_forwarded, 0,
        "fail closed: nothing steered reaches the kernel's forwarding"
    );
    assert_eq!(s.dead_cluster, None, "ClusterIP is down without the daemon");
    assert_eq!(
        s.dead_nodeport, None,
        "NodePort is silent (dropped, not reset) without the daemon"
    );
    assert!(
        s.dead_udp_answers <= 2,
        "at most answers already in flight: {}",
        s.dead_udp_answers
    );
}

#[test]
fn sigkill_fails_open_when_configured_and_a_restart_recovers() {
    let s = crash_and_recover("b-co", ", no_socket: pass");
    assert_eq!(
        s.dead_denied.as_deref(),
        Some("reached 9050"),
        "fail open (no_socket: pass): the kernel forwards pod traffic without policy"
    );
    assert!(
        s.dead_forwarded > 0,
        "fail open: the node's kernel forwards the steered traffic"
    );
}
