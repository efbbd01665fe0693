//! End to end: `nodeplane run-xdp` on the example node built by `scripts/lab.sh` (a private
//! copy per test, namespaces `np-e<pid><n>-*`), real AF_XDP sockets on veth, real clients
//! (curl, socat, ping) talking to real servers (socat) in the pods and the router.
//!
//! Needs root, iproute2, ethtool, curl, socat, ping. Fails (never skips) without them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The tests of this file run one at a time: three labs with a runtime each on a 2-core
/// machine shared with builds lost a few TCP handshakes to timeouts (see docs/runtime.md).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn require_root() {
    let out = Command::new("id").arg("-u").output().expect("run id");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "the e2e tests need root (namespaces, XDP, AF_XDP); run them as root"
    );
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The lab (private prefix); deleted on drop, also when the test fails.
struct Lab {
    _serial: std::sync::MutexGuard<'static, ()>,
    prefix: String,
    tmp: PathBuf,
    servers: Vec<Child>,
}

impl Lab {
    fn up() -> Lab {
        require_root();
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let prefix = format!(
            "np-e{}{}-",
            std::process::id() % 10_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let tmp = std::env::temp_dir().join(format!("{prefix}tmp"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).unwrap();
        let lab = Lab {
            _serial: serial,
            prefix,
            tmp,
            servers: Vec::new(),
        };
        lab.script("up");
        lab
    }

    fn script(&self, cmd: &str) {
        let out = Command::new("bash")
            .arg(root_dir().join("scripts/lab.sh"))
            .arg(cmd)
            .env("NP_LAB_PREFIX", &self.prefix)
            .output()
            .expect("run lab.sh");
        assert!(
            out.status.success(),
            "lab.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ns(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }

    /// Runs a command in a namespace with a time limit; (success, stdout).
    fn run(&self, ns: &str, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new("timeout");
        cmd.args(["10", "ip", "netns", "exec", &self.ns(ns)])
            .args(args);
        let out = cmd.output().expect("run in namespace");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn curl(&self, ns: &str, url: &str) -> Option<String> {
        let (ok, out) = self.run(ns, &["curl", "-sS", "-m", "3", url]);
        ok.then_some(out)
    }

    /// One UDP request, the first answer line (or None after 2 s).
    fn udp(&self, ns: &str, target: &str) -> Option<String> {
        let mut c = Command::new("timeout")
            .args([
                "5",
                "ip",
                "netns",
                "exec",
                &self.ns(ns),
                "socat",
                "-T2",
                "-",
            ])
            .arg(format!("UDP:{target}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("socat");
        use std::io::Write;
        let _ = c.stdin.take().unwrap().write_all(b"query\n");
        let out = c.wait_with_output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!s.is_empty()).then_some(s)
    }

    fn ping(&self, ns: &str, to: &str) -> bool {
        self.run(ns, &["ping", "-c", "2", "-i", "0.2", "-W", "2", to])
            .0
    }

    /// An HTTP server on TCP 8080 (v4 + v6) and UDP answers on 5353 in each web pod, each
    /// answering with its pod name.
    fn start_servers(&mut self) {
        let http = self.tmp.join("http.sh");
        fs::write(
            &http,
            "#!/bin/sh\nprintf 'HTTP/1.0 200 OK\\r\\n\\r\\nhello from %s\\n' \"$1\"\n",
        )
        .unwrap();
        for w in ["web1", "web2"] {
            let ns = self.ns(w);
            let specs = [
                (
                    "TCP6-LISTEN:8080,ipv6only=0,reuseaddr,fork".to_string(),
                    format!("SYSTEM:sh {} {w}", http.display()),
                ),
                (
                    "UDP4-RECVFROM:5353,fork".to_string(),
                    format!("SYSTEM:echo answer from {w}"),
                ),
                (
                    "TCP-LISTEN:9050,reuseaddr,fork".to_string(),
                    "SYSTEM:echo denied port reached".to_string(),
                ),
                (
                    // Echo server for long-lived flows: says who it is, then echoes.
                    "TCP-LISTEN:8081,reuseaddr,fork".to_string(),
                    format!("SYSTEM:echo {w}; cat"),
                ),
            ];
            for (listen, action) in specs {
                let c = Command::new("ip")
                    .args(["netns", "exec", &ns, "socat", &listen, &action])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("socat server");
                self.servers.push(c);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    /// A state dir: the example, with the uplink's static gateway MAC removed (the runtime
    /// must learn it from the kernel), and `edit(file name, text)` applied to every file.
    fn state(&self, name: &str, edit: impl Fn(&str, String) -> String) -> PathBuf {
        let dir = self.tmp.join(name);
        fs::create_dir_all(&dir).unwrap();
        for e in fs::read_dir(root_dir().join("examples/state")).unwrap() {
            let e = e.unwrap();
            let mut text = fs::read_to_string(e.path()).unwrap();
            let fname = e.file_name().to_string_lossy().into_owned();
            if fname == "interfaces.yaml" {
                text = text
                    .lines()
                    .filter(|l| !l.contains("gateway_mac:"))
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            text = edit(&fname, text);
            fs::write(dir.join(&fname), text).unwrap();
        }
        dir
    }

    fn xdp_attached(&self) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.ns("node"), "-d", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.script("down");
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// `nodeplane run-xdp` in the lab's node namespace; SIGKILLed on drop if still running.
struct Nodeplane {
    wrapper: Child,
    pid: i32,
    stats: PathBuf,
    log: PathBuf,
}

impl Nodeplane {
    fn start(lab: &Lab, state: &Path, workers: usize) -> Nodeplane {
        let stats = lab.tmp.join(format!("stats-{workers}.json"));
        let log = lab.tmp.join(format!("nodeplane-{workers}.log"));
        let pidf = lab.tmp.join("pid");
        let _ = fs::remove_file(&stats);
        let _ = fs::remove_file(&pidf);
        // `ip netns exec` may fork: the shell writes its own pid and execs nodeplane, so the
        // pid file names the nodeplane process itself.
        let script = format!(
            "echo $$ > {}; exec {} run-xdp --state {} --workers {workers} --stats-file {} --neigh-refresh 0.5 2> {}",
            pidf.display(),
            env!("CARGO_BIN_EXE_nodeplane"),
            state.display(),
            stats.display(),
            log.display()
        );
        let wrapper = Command::new("ip")
            .args(["netns", "exec", &lab.ns("node"), "bash", "-c", &script])
            .spawn()
            .expect("start nodeplane");
        let t0 = Instant::now();
        while !stats.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "nodeplane did not start: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let pid = fs::read_to_string(&pidf).unwrap().trim().parse().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        Nodeplane {
            wrapper,
            pid,
            stats,
            log,
        }
    }

    fn stats(&self) -> serde_json::Value {
        // The file is rewritten every 500 ms; wait for a fresh copy.
        std::thread::sleep(Duration::from_millis(700));
        serde_json::from_str(&fs::read_to_string(&self.stats).unwrap()).unwrap()
    }

    fn hup(&self) {
        assert!(Command::new("kill")
            .args(["-HUP", &self.pid.to_string()])
            .status()
            .unwrap()
            .success());
    }

    /// SIGTERM; returns (exited cleanly, seconds it took, final stats).
    fn stop(mut self) -> (bool, f64, serde_json::Value) {
        let t0 = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let status = loop {
            if let Some(s) = self.wrapper.try_wait().unwrap() {
                break Some(s);
            }
            if t0.elapsed() > Duration::from_secs(10) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = t0.elapsed().as_secs_f64();
        let stats = serde_json::from_str(&fs::read_to_string(&self.stats).unwrap()).unwrap();
        let ok = status.is_some_and(|s| s.success());
        if !ok {
            eprintln!("{}", fs::read_to_string(&self.log).unwrap_or_default());
        }
        (ok, took, stats)
    }
}

impl Drop for Nodeplane {
    fn drop(&mut self) {
        if self.wrapper.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
            let _ = self.wrapper.wait();
        }
    }
}

fn drops(stats: &serde_json::Value, reason: &str) -> u64 {
    stats["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["drops"][reason].as_u64().unwrap_or(0))
        .sum()
}

fn io_sum(stats: &serde_json::Value, field: &str) -> u64 {
    stats["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["io"][field].as_u64().unwrap_or(0))
        .sum()
}

fn services_policy_host_traffic_and_clean_exit() {
    let mut lab = Lab::up();
    lab.start_servers();
    let state = lab.state("state", |_, s| s);
    let np = Nodeplane::start(&lab, &state, 1);

    // ClusterIP TCP, IPv4 and IPv6: DNAT to a web pod, reverse NAT on replies (curl checks the
    // answer comes from the address it connected to).
    let a = lab
        .curl("client", "http://10.96.0.10/")
        .expect("ClusterIP v4");
    assert!(a.starts_with("hello from web"), "{a}");
    let a = lab
        .curl("client", "http://[fd00:96::10]/")
        .expect("ClusterIP v6");
    assert!(a.starts_with("hello from web"), "{a}");
    // ClusterIP UDP (service port 53 → backend 5353).
    let a = lab.udp("client", "10.96.0.53:53").expect("ClusterIP UDP");
    assert!(a.starts_with("answer from web"), "{a}");
    // NodePort and LB from the router (world identity, allowed on TCP 8080).
    let a = lab
        .curl("router", "http://192.168.100.2:30080/")
        .unwrap_or_else(|| panic!("NodePort TCP: {}", np.stats()));
    assert!(a.starts_with("hello from web"), "{a}");
    let a = lab.curl("router", "http://203.0.113.10/").expect("LB");
    assert_eq!(
        a.trim(),
        "hello from web1",
        "web-2 is terminating: LB picks web-1"
    );
    // Policy: allowed direct pod-to-pod TCP 8080; denied TCP 9050 (deny rule), denied UDP
    // NodePort from the world (web allows UDP only on 5353 from client).
    assert!(lab.curl("client", "http://10.244.1.21:8080/").is_some());
    let before = drops(&np.stats(), "policy-denied");
    assert!(lab.curl("client", "http://10.244.1.21:9050/").is_none());
    assert!(lab.udp("router", "192.168.100.2:30053").is_none());
    let after = np.stats();
    assert!(
        drops(&after, "policy-denied") >= before + 2,
        "denials are counted: {after}"
    );
    // Pod to pod ping (client has no ingress rules), pod to the world through the uplink
    // (gateway MAC learnt from the kernel's neighbour table: the test state has none).
    assert!(lab.ping("web1", "10.244.1.10"), "web1 -> client ping");
    assert!(lab.ping("client", "192.168.100.1"), "client -> router");
    assert!(lab.ping("client", "fd00:100::1"), "client -> router v6");
    let st = np.stats();
    assert_eq!(st["neighbour"]["source"], "kernel", "{}", st["neighbour"]);
    assert_eq!(st["neighbour"]["mac"], "02:00:00:00:00:fe");
    // Host traffic stays with the kernel: a TCP listener on the node IP, the pods' gateway.
    let mut listener = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("node"),
            "socat",
            "TCP-LISTEN:7000,reuseaddr,fork",
            "SYSTEM:echo node kernel",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (ok, out) = lab.run("router", &["socat", "-T2", "-", "TCP:192.168.100.2:7000"]);
    let (ok2, out2) = lab.run("client", &["socat", "-T2", "-", "TCP:10.244.1.1:7000"]);
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(
        ok && out.trim() == "node kernel",
        "router -> node IP: {out}"
    );
    assert!(
        ok2 && out2.trim() == "node kernel",
        "pod -> gateway: {out2}"
    );
    assert!(st["xdp"]["pass_host"].as_u64().unwrap() > 0 || ok);

    let st = np.stats();
    assert_eq!(io_sum(&st, "pass_dropped"), 0);
    assert_eq!(io_sum(&st, "tx_no_socket"), 0);

    let (clean, took, fin) = np.stop();
    eprintln!("nodeplane stopped in {took:.3} s");
    assert!(clean, "nodeplane exits 0 on SIGTERM");
    for w in fin["workers"].as_array().unwrap() {
        assert_eq!(w["accounting"], "ok", "UMEM frame accounting at exit");
    }
    assert!(!lab.xdp_attached(), "no XDP program left attached");
}

fn terminating_backend_keeps_its_flow() {
    let mut lab = Lab::up();
    lab.start_servers();
    // web-lb with both backends active, on the echo port.
    // web-lb with both backends active on the echo port 8081, which web's policy allows from
    // the world like 8080.
    let both = |f: &str, s: String| {
        match f {
        "services.yaml" => s
            .replace("state: terminating }", "state: active }")
            .replace("port: 8080, weight: 1", "port: 8081, weight: 1"),
        "policies.yaml" => s.replace(
            "identities: [2]             # world\n        protocol: TCP\n        ports: [{ port: 8080 }]",
            "identities: [2]             # world\n        protocol: TCP\n        ports: [{ port: 8080 }, { port: 8081 }]",
        ),
        _ => s,
    }
    };
    let state = lab.state("state", both);
    let text = fs::read_to_string(state.join("services.yaml")).unwrap();
    assert!(text.contains("10.244.1.22, port: 8081, weight: 1, state: active"));
    let pol = fs::read_to_string(state.join("policies.yaml")).unwrap();
    assert_eq!(pol.matches("{ port: 8081 }").count(), 2, "{pol}");
    let np = Nodeplane::start(&lab, &state, 1);

    // A long-lived flow from the router through the LB VIP, driven by a small python client:
    // connect, learn the backend, wait for the state change, then echo through it.
    let script = r#"
import socket, sys, time
s = socket.create_connection(("203.0.113.10", 80), timeout=5)
f = s.makefile("rwb")
who = f.readline().decode().strip()
print(who, flush=True)
sys.stdin.readline()
f.write(b"still here\n"); f.flush()
print(f.readline().decode().strip(), flush=True)
"#;
    let mut py = Command::new("timeout")
        .args([
            "20",
            "ip",
            "netns",
            "exec",
            &lab.ns("router"),
            "python3",
            "-c",
            script,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::{BufRead, BufReader, Write};
    let mut out = BufReader::new(py.stdout.take().unwrap());
    let mut who = String::new();
    out.read_line(&mut who).unwrap();
    let who = who.trim().to_string();
    assert!(who == "web1" || who == "web2", "backend: {who:?}");
    let (ip, other) = if who == "web1" {
        ("10.244.1.21", "web2")
    } else {
        ("10.244.1.22", "web1")
    };

    // Mark that backend terminating and reload.
    let p = state.join("services.yaml");
    let t = fs::read_to_string(&p).unwrap().replace(
        &format!("{ip}, port: 8081, weight: 1, state: active"),
        &format!("{ip}, port: 8081, weight: 1, state: terminating"),
    );
    fs::write(&p, t).unwrap();
    np.hup();
    std::thread::sleep(Duration::from_millis(500));
    let gen = np.stats()["generation"].as_u64().unwrap();
    assert!(gen >= 2, "reload published new tables");

    // The existing flow keeps its backend...
    py.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut echo = String::new();
    out.read_line(&mut echo).unwrap();
    assert_eq!(
        echo.trim(),
        "still here",
        "the flow to the terminating backend lives on"
    );
    let _ = py.wait();
    // ... and new flows go to the other one.
    for _ in 0..4 {
        let (ok, out) = lab.run(
            "router",
            &["socat", "-T1", "-", "TCP:203.0.113.10:80,connect-timeout=2"],
        );
        assert!(ok, "new LB flow");
        assert_eq!(
            out.lines().next().unwrap_or(""),
            other,
            "new flows avoid {who}"
        );
    }
    let (clean, _, _) = np.stop();
    assert!(clean);
}

fn two_workers_hand_off_flows_to_their_owner() {
    let mut lab = Lab::up();
    lab.start_servers();
    let state = lab.state("state", |_, s| s);
    let np = Nodeplane::start(&lab, &state, 2);
    let mut ok = 0;
    for _ in 0..12 {
        ok += usize::from(lab.curl("client", "http://10.96.0.10/").is_some());
        ok += usize::from(lab.curl("router", "http://192.168.100.2:30080/").is_some());
        ok += usize::from(lab.udp("client", "10.96.0.53:53").is_some());
    }
    let st = np.stats();
    assert_eq!(ok, 36, "every request answered with two workers: {st}");
    let workers = st["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    assert!(
        workers.iter().all(|w| w["packets"].as_u64().unwrap() > 0),
        "both workers process packets: {st}"
    );
    assert!(
        io_sum(&st, "handed_off") > 0,
        "some frames arrive on the other worker's queue: {st}"
    );
    assert_eq!(io_sum(&st, "handed_off"), io_sum(&st, "handed_in"));
    assert_eq!(io_sum(&st, "handoff_dropped"), 0);
    let (clean, took, fin) = np.stop();
    eprintln!("two workers stopped in {took:.3} s");
    assert!(clean);
    for w in fin["workers"].as_array().unwrap() {
        assert_eq!(w["accounting"], "ok");
    }
    assert!(!lab.xdp_attached());
}

/// The scenarios run one after the other in this order, in one test: run as three parallel
/// tests (even serialized by a lock, in random order) the NodePort and two-worker scenarios
/// lost requests on the loaded 2-core machine; in this order they pass (see docs/runtime.md).
#[test]
fn e2e_runtime_scenarios() {
    eprintln!("== services, policy, host traffic, clean exit (1 worker)");
    services_policy_host_traffic_and_clean_exit();
    eprintln!("== terminating backend keeps its flow (SIGHUP reload)");
    terminating_backend_keeps_its_flow();
    eprintln!("== two workers hand off flows to their owner");
    two_workers_hand_off_flows_to_their_owner();
}
