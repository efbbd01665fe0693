//! Connections across a daemon restart (issue 12, item 4), on the example node built by
//! `scripts/lab.sh` (namespaces `np-h8<pid>-*`), with AF_XDP and two workers:
//!
//! ```text
//!  client pod ── TCP keep-alive ─> ClusterIP 10.96.0.10:80 ─┐          ┌─ web1 :8081 echo
//!             ── UDP every 10 ms ─> ClusterIP 10.96.0.53:53 ─┼ nodeplane ┤
//!  router ───── TCP keep-alive ─> NodePort 192.168.100.2:30080 ┘  stop   └─ web2 :8081 echo
//!                                                             + start
//! ```
//!
//! Each TCP client sends a line every 100 ms and reads its echo; the daemon is stopped with
//! SIGTERM (it writes the conntrack snapshot) and started again (it restores it). The XDP
//! program stays attached in between (pinned in the lab's own bpffs, `io.afxdp.pin_dir`) and
//! drops the steered traffic that finds no socket (`no_socket: drop`), so the node's kernel
//! never sees the NodePort segments of the gap (it would reset the connection); the new daemon
//! takes the pinned program over in place. Both connections must keep working through the same
//! backend (the same echo server process: never re-established) and `ct list` must show both
//! flows on the same backend and worker before and after. The UDP loop measures the traffic
//! gap: the longest time without an answer.
//!
//! Needs root, iproute2, socat, python3. Fails (never skips) without them.
//! Run: `cargo test --profile ci -p nodeplane-control --test restart -- --nocapture`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

mod lab;

use lab::daemon::Nodeplane;
use lab::Lab;

/// A client in a namespace: a TCP connection sending a line every 100 ms and reading its echo,
/// and optionally a UDP request every 10 ms on one socket (one flow). First output line:
/// `{"who": ..., "sport": ...}`; after a line on stdin: a JSON summary.
const CLIENT: &str = r#"
import json, select, socket, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])
udp = sys.argv[3] if len(sys.argv) > 3 else None
s = socket.create_connection((host, port), timeout=15)
f = s.makefile("rwb")
who = f.readline().decode().strip()
print(json.dumps({"who": who, "sport": s.getsockname()[1]}), flush=True)
st = {"who": who, "echoes": 0, "tcp_error": None, "max_echo_s": 0.0,
      "udp_sent": 0, "udp_answers": 0, "udp_gap_s": 0.0}
stop = threading.Event()
def tcp():
    n = 0
    while not stop.is_set():
        t = time.monotonic()
        try:
            f.write(b"line %d\n" % n); f.flush()
            got = f.readline().decode().strip()
        except Exception as e:
            st["tcp_error"] = repr(e); return
        if got != "line %d" % n:
            st["tcp_error"] = "bad echo %r" % got; return
        st["echoes"] += 1
        st["max_echo_s"] = max(st["max_echo_s"], time.monotonic() - t)
        n += 1
        time.sleep(0.1)
def udp_loop():
    uh, up = udp.rsplit(":", 1)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect((uh, int(up)))
    last = None
    nxt = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now >= nxt:
            try:
                u.send(b"q\n"); st["udp_sent"] += 1
            except OSError:
                pass
            nxt = now + 0.01
        r, _, _ = select.select([u], [], [], max(0.0, nxt - time.monotonic()))
        if r:
            try:
                u.recv(2048)
            except OSError:
                continue
            t = time.monotonic()
            if last is not None:
                st["udp_gap_s"] = max(st["udp_gap_s"], t - last)
            last = t
            st["udp_answers"] += 1
threads = [threading.Thread(target=tcp)]
if udp:
    threads.append(threading.Thread(target=udp_loop))
for t in threads:
    t.start()
sys.stdin.readline()
stop.set()
for t in threads:
    t.join(20)
print(json.dumps(st), flush=True)
"#;

struct Client {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<std::process::ChildStdout>,
    who: String,
    sport: u64,
}

impl Client {
    fn start(lab: &Lab, ns: &str, args: &[&str]) -> Client {
        let mut child = Command::new("timeout")
            .args([
                "120",
                "ip",
                "netns",
                "exec",
                &lab.ns(ns),
                "python3",
                "-c",
                CLIENT,
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 client");
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("client in {ns} did not connect ({e}): {line:?}"));
        Client {
            child,
            stdin,
            out,
            who: v["who"].as_str().unwrap().to_string(),
            sport: v["sport"].as_u64().unwrap(),
        }
    }

    fn finish(mut self) -> serde_json::Value {
        self.stdin.write_all(b"stop\n").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("client summary ({e}): {line:?}"))
    }
}

#[test]
fn connections_survive_a_stop_and_start() {
    let mut lab = Lab::up("b-r");
    lab::daemon::start_servers(&mut lab);
    let state = lab::daemon::echo_state(&lab);
    let pins = lab.bpffs();
    let np = Nodeplane::start(&lab, &state, &pins, "", 1);

    let cluster = Client::start(&lab, "client", &["10.96.0.10", "80", "10.96.0.53:53"]);
    let nodeport = Client::start(&lab, "router", &["192.168.100.2", "30080"]);
    for c in [&cluster, &nodeport] {
        assert!(c.who.starts_with("web"), "backend: {:?}", c.who);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let before = np.tcp_flows();
    let ours = |flows: &[(u64, u64, String, u64)]| -> Vec<(u64, u64, String, u64)> {
        flows
            .iter()
            .filter(|(_, sport, _, _)| *sport == cluster.sport || *sport == nodeport.sport)
            .cloned()
            .collect()
    };
    let before = ours(&before);
    assert_eq!(before.len(), 2, "both flows tracked: {before:?}");

    let t0 = Instant::now();
    assert!(np.stop(), "clean stop");
    let stopped = t0.elapsed();
    let np = Nodeplane::start(&lab, &state, &pins, "", 2);
    let down = t0.elapsed();
    let restore = np.status().unwrap()["conntrack_restore"].clone();
    std::thread::sleep(Duration::from_millis(1500));
    let after = ours(&np.tcp_flows());

    let (who_c, who_n) = (cluster.who.clone(), nodeport.who.clone());
    let c = cluster.finish();
    let n = nodeport.finish();
    let gap_ms = c["udp_gap_s"].as_f64().unwrap() * 1000.0;
    eprintln!(
        "restart: SIGTERM to exit {:.0} ms, SIGTERM to the new daemon ready {:.0} ms; UDP every 10 ms: longest gap without an answer {gap_ms:.0} ms ({} sent, {} answered); longest TCP echo: ClusterIP {:.0} ms, NodePort {:.0} ms",
        stopped.as_secs_f64() * 1000.0,
        down.as_secs_f64() * 1000.0,
        c["udp_sent"],
        c["udp_answers"],
        c["max_echo_s"].as_f64().unwrap() * 1000.0,
        n["max_echo_s"].as_f64().unwrap() * 1000.0,
    );
    assert_eq!(restore["result"], "restored", "{restore}\n{}", np.log());
    let log = np.log();
    let phases = log
        .lines()
        .find(|l| l.contains("AF_XDP start:"))
        .unwrap_or("(no AF_XDP start line)");
    eprintln!("new daemon: {phases}");
    assert!(
        log.contains("took over the link pinned at"),
        "the new daemon takes the pinned program over: {log}"
    );
    assert!(c["tcp_error"].is_null(), "ClusterIP connection broke: {c}");
    // The node's kernel owns 192.168.100.2 and has no socket on 30080: a NodePort segment that
    // reached it in the gap would reset the connection. The pinned program drops it instead.
    assert!(n["tcp_error"].is_null(), "NodePort connection broke: {n}");
    assert!(n["echoes"].as_u64().unwrap() >= 20, "{n}");
    assert_eq!(c["who"].as_str(), Some(who_c.as_str()));
    assert_eq!(n["who"].as_str(), Some(who_n.as_str()));
    assert!(c["echoes"].as_u64().unwrap() >= 20, "{c}");
    // Same backend, and restored into the worker that owns it (a flow restored elsewhere
    // would show twice: the owner would create it again at its next packet).
    assert_eq!(
        after, before,
        "each flow on the same backend and worker after the restart"
    );
    eprintln!("flows: {before:?}\nthe new daemon's log:\n{}", np.log());
    assert!(gap_ms < 5000.0, "UDP gap {gap_ms:.0} ms");
    assert!(np.stop(), "clean stop");
}
