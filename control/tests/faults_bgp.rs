//! Issue 13 item 8: BGP faults while forwarding runs. The daemon (AF_XDP, 2 workers) peers with
//! a real BIRD over the uplink while real traffic runs through two ClusterIPs; in turn:
//!
//! (a) a peer sending garbage, over real sockets to the speaker's port: junk bytes, an OPEN
//!     of a wrong version, a malformed UPDATE after a good handshake (from a second configured
//!     neighbour's address), and junk on a second connection from BIRD's own address. Each gets
//!     its NOTIFICATION and ends only its own connection; BIRD's session stays up throughout;
//! (b) a wrong TCP-MD5 key at BIRD: no session while the keys differ (the kernel drops the
//!     segments and counts them), said once in the log; the right key brings the session and
//!     the routes back;
//! (c) the peer vanishes (BIRD SIGKILLed) and comes back: the session and the routes return.
//!
//! Throughout, the traffic loops see no failure and the daemon's state stays where it was.
//!
//! ```text
//!   np-hbb*-router  BIRD 192.168.100.1 AS 65000 (MD5)  +  raw peers from .1 and .3
//!        │ uplink0 (AF_XDP; BGP to 192.168.100.2:179 passes to the kernel)
//!   np-hbb*-node    nodeplane run: speaker AS 65001, neighbours leaf (.1) and junk (.3, passive)
//!        │
//!   np-hbb*-client (Traffic) ── ClusterIPs ──> np-hbb*-web1, -web2
//! ```
//!
//! Needs root, the lab's tools and bird2; fails loudly otherwise.

#[path = "../../bgp/tests/lab/mod.rs"]
mod bgp_lab;
mod lab;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bgp_lab::{bird_bgp, bird_conf, start_bird, Bird};
use lab::daemon::{echo_state, start_servers, Nodeplane};
use lab::traffic::Traffic;
use lab::{in_netns, wait_until, Lab};

const KEY: &str = "np-hb-md5-key";
const SPEAKER: &str = "192.168.100.2:179";
const POD_CIDR: &str = "10.244.1.0/24";

// ---- a raw BGP peer -----------------------------------------------------------------------

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// An OPEN: `version`, AS 65099, hold time 9 s, identifier 192.168.100.3, no capabilities.
fn open(version: u8) -> Vec<u8> {
    let mut b = vec![version];
    b.extend_from_slice(&65099u16.to_be_bytes());
    b.extend_from_slice(&9u16.to_be_bytes());
    b.extend_from_slice(&[192, 168, 100, 3, 0]);
    msg(1, &b)
}

const KEEPALIVE: u8 = 4;
const NOTIFICATION: u8 = 3;

/// One connection from `src` to the speaker, in the router namespace: sends each step's bytes
/// and then reads messages until the step's `until` type arrives (0: until the speaker closes);
/// returns every message received as (type, body).
fn raw_peer(lab: &Lab, src: &str, steps: Vec<(Vec<u8>, u8)>) -> Vec<(u8, Vec<u8>)> {
    raw_peer_md5(lab, src, None, steps).unwrap_or_else(|e| panic!("{e}"))
}

/// [`raw_peer`] with a TCP-MD5 key on the socket (`None`: unsigned); `Err` when the connection
/// cannot be made within 3 s.
fn raw_peer_md5(
    lab: &Lab,
    src: &str,
    md5: Option<&'static str>,
    steps: Vec<(Vec<u8>, u8)>,
) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let src: SocketAddr = format!("{src}:0").parse().unwrap();
    in_netns(&lab.ns("router"), move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&src.into()).unwrap();
        let dst: SocketAddr = SPEAKER.parse().unwrap();
        if let Some(key) = md5 {
            nodeplane_bgp::sys::set_tcp_md5(&s, dst.ip(), key.as_bytes()).unwrap();
        }
        s.connect_timeout(&dst.into(), Duration::from_secs(3))
            .map_err(|e| format!("connect from {src} to the speaker: {e}"))?;
        let mut s: TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = Vec::new();
        for (bytes, until) in steps {
            s.write_all(&bytes).unwrap();
            loop {
                // Whole messages at the front of the buffer.
                while buf.len() >= 19 {
                    let len = u16::from_be_bytes([buf[16], buf[17]]) as usize;
                    if buf.len() < len {
                        break;
                    }
                    got.push((buf[18], buf[19..len].to_vec()));
                    buf.drain(..len);
                }
                if until != 0 && got.iter().any(|(t, _)| *t == until) {
                    break;
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk) {
                    Ok(0) => return Ok(got),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(got),
                    Err(e) => panic!("reading from the speaker: {e} (got {got:?})"),
                }
            }
        }
        Ok(got)
    })
}

/// The (code, subcode) of the NOTIFICATION among `msgs`, and that it is the last message.
fn notification(msgs: &[(u8, Vec<u8>)]) -> (u8, u8) {
    let (t, b) = msgs
        .last()
        .unwrap_or_else(|| panic!("no message: {msgs:?}"));
    assert_eq!(*t, NOTIFICATION, "ends with a NOTIFICATION: {msgs:?}");
    (b[0], b[1])
}

// ---- the node, BIRD and their views ---------------------------------------------------------

fn bgp_neighbor(np: &Nodeplane, name: &str) -> serde_json::Value {
    let s = np.cli_json(&["bgp", "status"]).expect("bgp status");
    s["neighbors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no neighbour {name}: {s}"))
        .clone()
}

fn counter(n: &serde_json::Value, k: &str) -> u64 {
    n["counters"][k]
        .as_u64()
        .unwrap_or_else(|| panic!("{k}: {n}"))
}

fn birdconf(key: &str) -> String {
    bird_conf(
        "192.168.100.1",
        &bird_bgp(
            "leaf",
            "192.168.100.1",
            65000,
            "192.168.100.2",
            65001,
            &format!("hold time 3; password \"{key}\";"),
        ),
    )
}

/// Segments the node's kernel dropped for a missing or wrong TCP-MD5 signature
/// (`TcpExt: TCPMD5NotFound + TCPMD5Failure`).
fn md5_drops(lab: &Lab) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns("node"), "cat", "/proc/net/netstat"])
        .output()
        .expect("read /proc/net/netstat");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(n, _)| *n == "TCPMD5NotFound" || *n == "TCPMD5Failure")
        .map(|(_, v)| v.parse::<u64>().unwrap())
        .sum()
}

struct Router {
    child: Child,
    bird: Bird,
}

fn start_router(lab: &Lab, conf: &Path) -> Router {
    let (child, bird) = start_bird(&lab.ns("router"), conf, &lab.tmp, "bird");
    Router { child, bird }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn bgp_garbage_wrong_md5_and_a_vanished_peer_leave_forwarding_alone() {
    let mut lab = Lab::up("hbb");
    start_servers(&mut lab);
    let state = echo_state(&lab);
    Command::new("ip")
        .args([
            "-n",
            &lab.ns("router"),
            "addr",
            "add",
            "192.168.100.3/24",
            "dev",
            "eth0",
        ])
        .status()
        .unwrap();
    let key = lab.tmp.join("md5.key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let conf = lab.tmp.join("bird.conf");
    std::fs::write(&conf, birdconf(KEY)).unwrap();
    let mut router = start_router(&lab, &conf);

    let pins = lab.bpffs();
    let sections = format!(
        "state: {{ dir: {} }}\nbgp:\n  local_as: 65001\n  router_id: 192.168.100.2\n  neighbors:\n    \
         - {{ address: 192.168.100.1, remote_as: 65000, name: leaf, md5_password_file: {}, \
         hold_time_secs: 3, connect_retry_secs: 1, next_hop_ipv6: \"fd00:100::2\" }}\n    \
         - {{ address: 192.168.100.3, remote_as: 65099, name: junk, passive: true, \
         hold_time_secs: 3, families: [ipv4] }}\n",
        state.display(),
        key.display()
    );
    let np = Nodeplane::start_with(&lab, &sections, &pins, "", 1);
    let t0 = Instant::now();
    wait_until("the session with BIRD", 15, || {
        router.bird.established("leaf")
    });
    router.bird.wait_route(POD_CIDR, Duration::from_secs(10));
    let gen = np.settled_generation();
    let up = bgp_neighbor(&np, "leaf");
    assert_eq!(up["state"], "Established", "{up}");
    assert_eq!(up["md5"], true);
    let since = up["established_since_unix_ms"].clone();

    let traffic = Traffic::start(
        &lab,
        "client",
        "10.96.0.53:53".parse().unwrap(),
        "10.96.0.10:80".parse().unwrap(),
    );
    let before = traffic.wait_answered(4, 20);
    let t_before = Instant::now();

    // (a) Garbage. The junk neighbour is passive: it waits in Active for a connection.
    let junk_ready = || {
        wait_until("the junk neighbour waiting in Active", 10, || {
            bgp_neighbor(&np, "junk")["state"] == "Active"
        })
    };
    junk_ready();
    let got = raw_peer(&lab, "192.168.100.3", vec![(vec![0x42; 40], 0)]);
    assert_eq!(got[0].0, 1, "the speaker opened with its OPEN: {got:?}");
    assert_eq!(
        notification(&got),
        (1, 1),
        "junk: Message Header Error / Connection Not Synchronized"
    );
    junk_ready();
    let got = raw_peer(&lab, "192.168.100.3", vec![(open(3), 0)]);
    assert_eq!(
        notification(&got),
        (2, 1),
        "OPEN version 3: OPEN Message Error / Unsupported Version Number"
    );
    junk_ready();
    // A good handshake, then an UPDATE whose withdrawn-routes length overruns the message.
    let bad_update = msg(2, &[0x01, 0x00, 0, 0]);
    let got = raw_peer(
        &lab,
        "192.168.100.3",
        vec![
            (open(4), KEEPALIVE),
            (msg(KEEPALIVE, &[]), 2),
            (bad_update, 0),
        ],
    );
    assert_eq!(
        notification(&got),
        (3, 1),
        "UPDATE Message Error / Malformed Attribute List"
    );
    let junk = bgp_neighbor(&np, "junk");
    assert_eq!(counter(&junk, "notifications_out"), 3, "{junk}");
    assert_eq!(counter(&junk, "established_transitions"), 1, "{junk}");
    assert!(
        junk["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("withdrawn")),
        "{junk}"
    );
    // Junk from BIRD's own address. Unsigned, it never gets a connection: the node's kernel
    // drops segments without the neighbour's MD5 signature.
    let md5_before = md5_drops(&lab);
    let unsigned = raw_peer_md5(&lab, "192.168.100.1", None, vec![(vec![0x42; 40], 0)]);
    assert!(unsigned.is_err(), "{unsigned:?}");
    assert!(md5_drops(&lab) > md5_before, "counted by the kernel");
    // Signed (a second connection of a peer that has the key): refused with Cease / collision
    // resolution; the established session is not touched.
    let got = raw_peer_md5(&lab, "192.168.100.1", Some(KEY), vec![(vec![0x42; 40], 0)]).unwrap();
    assert_eq!(
        notification(&got),
        (6, 7),
        "Cease / Connection Collision Resolution"
    );
    let leaf = bgp_neighbor(&np, "leaf");
    assert_eq!(leaf["state"], "Established", "{leaf}");
    assert_eq!(
        leaf["established_since_unix_ms"], since,
        "the same session: {leaf}"
    );
    assert_eq!(counter(&leaf, "established_transitions"), 1, "{leaf}");
    assert!(router.bird.established("leaf"));
    assert!(router.bird.route(POD_CIDR).is_some());
    eprintln!("(a) garbage done at {:.1} s", t0.elapsed().as_secs_f64());

    // (b) A wrong key at BIRD.
    let md5_before = md5_drops(&lab);
    let attempts_before = counter(&bgp_neighbor(&np, "leaf"), "connect_attempts");
    let changed = Instant::now();
    std::fs::write(&conf, birdconf("a-wrong-key")).unwrap();
    router.bird.cmd("configure");
    wait_until("the session to go with the wrong key", 10, || {
        !router.bird.established("leaf") && bgp_neighbor(&np, "leaf")["state"] != "Established"
    });
    let wrong = Instant::now();
    while wrong.elapsed() < Duration::from_secs(5) {
        assert_ne!(bgp_neighbor(&np, "leaf")["state"], "Established");
        assert!(!router.bird.established("leaf"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        router.bird.route(POD_CIDR).is_none(),
        "no session, no route"
    );
    let md5_dropped = md5_drops(&lab) - md5_before;
    assert!(
        md5_dropped > 0,
        "the node's kernel dropped wrongly signed segments"
    );
    // The speaker says why, and retries at its ConnectRetry pace (1 s), no faster.
    let leaf = bgp_neighbor(&np, "leaf");
    let err = leaf["last_error"].as_str().unwrap_or_default();
    assert!(
        err.starts_with("connect: no answer within 1 s") && err.contains("TCP-MD5"),
        "{leaf}"
    );
    let attempts = counter(&leaf, "connect_attempts") - attempts_before;
    assert!(
        counter(&leaf, "connect_timeouts") >= 2 && attempts <= changed.elapsed().as_secs() + 2,
        "{attempts} connects in {:?}: {leaf}",
        changed.elapsed()
    );
    let leaf = bgp_neighbor(&np, "leaf");
    eprintln!(
        "(b) wrong key for 5 s: {md5_dropped} segments dropped by the node's kernel; leaf: {} ({})",
        leaf["state"], leaf["last_error"]
    );
    std::fs::write(&conf, birdconf(KEY)).unwrap();
    router.bird.cmd("configure");
    let fixed = Instant::now();
    wait_until("the session with the right key again", 20, || {
        router.bird.established("leaf")
    });
    router.bird.wait_route(POD_CIDR, Duration::from_secs(10));
    eprintln!(
        "(b) key fixed: session and route back in {:.1} s",
        fixed.elapsed().as_secs_f64()
    );

    // (c) The peer vanishes and comes back.
    let _ = router.child.kill();
    let _ = router.child.wait();
    wait_until("the speaker to notice BIRD gone", 10, || {
        bgp_neighbor(&np, "leaf")["state"] != "Established"
    });
    std::thread::sleep(Duration::from_secs(3));
    router = start_router(&lab, &conf);
    let back = Instant::now();
    wait_until("the session with the restarted BIRD", 20, || {
        router.bird.established("leaf")
    });
    router.bird.wait_route(POD_CIDR, Duration::from_secs(10));
    let recovered = back.elapsed();
    eprintln!(
        "(c) BIRD restarted: session and route back in {:.1} s",
        recovered.as_secs_f64()
    );
    let leaf = bgp_neighbor(&np, "leaf");
    assert_eq!(leaf["state"], "Established", "{leaf}");
    assert!(leaf["reconnect_in_ms"].is_null(), "{leaf}");

    // Forwarding was never touched.
    std::thread::sleep(Duration::from_millis(500));
    let r = traffic.stop();
    eprintln!(
        "traffic: {} answered, {} failures; whole test {:.1} s",
        r.answered(),
        r.failures(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(r.failures(), 0, "{r:?}");
    r.assert_ran_since(&before, t_before.elapsed());
    let s = np.status().unwrap();
    assert_eq!(s["generation"].as_u64(), Some(gen), "{s}");
    assert_eq!(s["state"], "ok", "{s}");
    // The faults were logged, rate-limited: lines per neighbour stay few.
    let log = np.log();
    let leaf_lines = log.lines().filter(|l| l.contains("leaf")).count();
    let junk_lines = log.lines().filter(|l| l.contains("junk")).count();
    eprintln!("log: {leaf_lines} lines about leaf, {junk_lines} about junk");
    assert!(leaf_lines <= 12 && junk_lines <= 8, "{log}");
    assert!(np.stop(), "clean stop");
}
