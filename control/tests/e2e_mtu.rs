//! End to end, the egress MTU: the example node (`scripts/lab.sh`, a private copy named
//! `np-<NP_LAB_TAG>mtu<pid><n>-*`) with the client pod at MTU 9000 (`io.afxdp.multi_buffer:
//! true`, `frame_size: 4096`) and the uplink and the router at 1500. A ClusterIP `ext-echo`
//! (10.96.0.90 and fd00:96::90, UDP 9999) has its backend behind the uplink: a UDP echo server
//! in the router namespace (192.168.100.1, fd00:100::1).
//!
//! The client (python3, a plain UDP socket: Linux's default path MTU discovery sets DF on a
//! datagram that fits its route's MTU, 9000) sends 4000-byte datagrams to the VIP. nodeplane
//! must not send them out of the 1500-byte uplink: it drops them `frag-needed` and answers with
//! an ICMP fragmentation-needed / ICMPv6 packet-too-big from the VIP, quoting the datagram as the
//! client sent it (to the VIP), so that the client's kernel finds its socket and lowers the path
//! MTU. Checks: `ip route get` in the client shows `mtu 1500` for both VIPs; the client's
//! kernel then fragments to 1500 and every datagram of a 256 KiB blob comes back (stop and
//! wait) with the blob's sha256 intact, on IPv4 and IPv6; nodeplane counted the drops
//! (`frag-needed`) and the ICMP errors sent (`mtu_icmp_sent`).
//!
//! Needs root, iproute2, python3. Fails (never skips) without them.

use std::fs;

mod lab;

use lab::blob::{sh_in, start_udp_echo, udp_blob};
use lab::daemon::{io_sum, Launch, Nodeplane};
use lab::{random_blob, root_dir, Lab};

const MTU: &str = "9000";

#[test]
fn a_jumbo_pod_learns_the_uplink_mtu_from_nodeplane_through_a_cluster_ip() {
    let mut lab = Lab::up("mtu");
    // The client pod at 9000 (both ends of its veth); the uplink and the router stay at 1500.
    let (ok, e) = sh_in(&lab, "node", &format!("ip link set pod-client mtu {MTU}"));
    assert!(ok, "MTU of pod-client: {e}");
    let (ok, e) = sh_in(&lab, "client", &format!("ip link set eth0 mtu {MTU}"));
    assert!(ok, "MTU of the client's eth0: {e}");

    let state = lab.tmp.join("state");
    fs::create_dir_all(&state).unwrap();
    for e in fs::read_dir(root_dir().join("examples/state")).unwrap() {
        let e = e.unwrap();
        let mut text = fs::read_to_string(e.path()).unwrap();
        if e.file_name() == "interfaces.yaml" {
            text = text
                .lines()
                .filter(|l| !l.contains("gateway_mac:"))
                .collect::<Vec<_>>()
                .join("\n");
        }
        if e.file_name() == "services.yaml" {
            text.push_str(
                "\n  - name: ext-echo\n    type: ClusterIP\n    frontends:\n      - { ip: 10.96.0.90, port: 9999, protocol: UDP }\n      - { ip: \"fd00:96::90\", port: 9999, protocol: UDP }\n    backends:\n      - { ip: 192.168.100.1, port: 9999 }\n      - { ip: \"fd00:100::1\", port: 9999 }\n",
            );
        }
        fs::write(state.join(e.file_name()), text).unwrap();
    }
    let np = Nodeplane::launch(
        &lab,
        &Launch {
            workers: 1,
            afxdp_extra: ", frame_size: 4096, multi_buffer: true",
            ..Launch::dir(&state)
        },
    );
    np.settled_generation();

    // (The client resends each datagram until its echo comes: no wait for the server.)
    start_udp_echo(&mut lab, "router", 9999);

    let blob = lab.tmp.join("blob");
    let want = random_blob(&blob, 262_144);

    for vip in ["10.96.0.90", "fd00:96::90"] {
        let (_, route) = sh_in(&lab, "client", &format!("ip route get {vip}"));
        assert!(
            !route.contains("mtu 1500"),
            "{vip}: no path MTU known before: {route}"
        );
        let (ok, got) = udp_blob(&lab, "client", vip, 9999, &blob, 4000);
        assert!(ok, "{vip}: the transfer failed: {got}\n{}", np.log());
        assert_eq!(got, want, "{vip}: the echoed blob differs");
        let (_, route) = sh_in(&lab, "client", &format!("ip route get {vip}"));
        assert!(
            route.contains("mtu 1500"),
            "{vip}: the client's kernel did not learn the path MTU: {route}"
        );
    }

    let frag_needed = np.drops("frag-needed");
    let sent = np.worker("mtu_icmp_sent");
    eprintln!(
        "frag-needed drops {frag_needed}, ICMP sent {sent}, suppressed {}",
        np.worker("mtu_icmp_suppressed")
    );
    // At least the first datagram of each family; the kernel fragments the rest itself.
    assert!(frag_needed >= 2, "{}", np.stats());
    assert!(sent >= 2, "{}", np.stats());
    assert!(sent <= frag_needed);
    assert_eq!(np.drops("mtu-exceeded"), 0, "{}", np.stats());
    assert!(np.stop(), "nodeplane exits 0 on SIGTERM");
}

/// Two workers, `frame_size: 4096` (no multi-buffer) and every pod at MTU 3500: TCP segments of
/// 3514-byte frames arrive on both queues of each veth, and those of the other worker's flows
/// are handed to it whole (they were dropped `handoff-too-long` with the former 2048-byte
/// slots). A 2 MiB blob goes to a web pod's echo server through the `web`
/// ClusterIP and comes back (sha256 both ways; the lab's echo servers listen on IPv4), eight
/// times.
#[test]
fn two_workers_hand_off_frames_up_to_the_umem_frame_size() {
    const MTU: &str = "3500";
    let mut lab = Lab::up("mtu2w");
    for p in ["client", "web1", "web2"] {
        let (ok, e) = sh_in(&lab, "node", &format!("ip link set pod-{p} mtu {MTU}"));
        assert!(ok, "MTU of pod-{p}: {e}");
        let (ok, e) = sh_in(&lab, p, &format!("ip link set eth0 mtu {MTU}"));
        assert!(ok, "MTU of {p}'s eth0: {e}");
    }
    lab::daemon::start_servers(&mut lab);
    let state = lab::daemon::echo_state(&lab);
    let np = Nodeplane::launch(
        &lab,
        &Launch {
            workers: 2,
            afxdp_extra: ", frame_size: 4096",
            ..Launch::dir(&state)
        },
    );

    let blob = lab.tmp.join("blob");
    let want = random_blob(&blob, 2_097_152);
    // Eight connections: which queue a frame arrives on and which worker owns its flow both
    // follow hashes, so over eight flows frames cross workers with near certainty.
    for vip in ["10.96.0.10"; 8] {
        // The echo server first says which pod it is (one line), then echoes.
        let (ok, got) = sh_in(
            &lab,
            "client",
            &format!(
                "socat -t 10 -T 30 - TCP:{vip}:80 < {} | tail -n +2 | sha256sum | cut -c1-64",
                blob.display()
            ),
        );
        assert!(ok, "{vip}: {got}");
        assert_eq!(got, want, "{vip}: the echoed blob differs\n{}", np.stats());
    }
    let st = np.stats();
    let (off, into, too_long) = (
        io_sum(&st, "handed_off"),
        io_sum(&st, "handed_in"),
        io_sum(&st, "handoff_too_long"),
    );
    eprintln!("handed off {off}, handed in {into}, too long {too_long}");
    assert_eq!(too_long, 0, "{st}");
    assert_eq!(np.drops("handoff-too-long"), 0, "{st}");
    assert!(off > 0, "no frame crossed workers: {st}");
    assert!(np.stop(), "nodeplane exits 0 on SIGTERM");
}
