//! The daemon as a systemd service (packaging/nodeplane.service, docs/service.md), tested
//! without systemd as PID 1:
//! - `notify_readiness_watchdog_and_reload`: the sd_notify messages on a `NOTIFY_SOCKET` this
//!   test owns (READY=1 only once the first state runs, WATCHDOG=1 at half `WATCHDOG_USEC`,
//!   RELOADING=1/READY=1 around SIGHUP, a bad config on reload rejected, STOPPING=1).
//! - `unit_capabilities_suffice_and_each_is_needed` (root): the unit's `ExecStart` under exactly
//!   the unit's capability set (`setpriv`, read from the unit file itself) on the lab node
//!   (`scripts/lab.sh`, namespaces `np-h7s<pid>-*`) forwards a ClusterIP connection and runs
//!   its BGP listener on port 179; with each capability dropped in turn it fails, saying why.
//!
//! Needs root, iproute2, util-linux `setpriv`, curl, socat for the second. Fails, never skips.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn status(socket: &Path) -> Option<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_nodeplane"))
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn generation(socket: &Path) -> u64 {
    status(socket).map_or(0, |s| s["generation"].as_u64().unwrap_or(0))
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Every datagram that arrives within `within`.
fn datagrams(sock: &UnixDatagram, within: Duration) -> Vec<String> {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < within {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    out
}

#[test]
fn notify_readiness_watchdog_and_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The state starts invalid: the daemon must not say READY while it waits.
    let state = dir.join("state");
    fs::create_dir(&state).unwrap();
    fs::write(state.join("node.yaml"), "node: { name: [not a name] }\n").unwrap();
    let socket = dir.join("np.sock");
    let cfg = dir.join("config.yaml");
    let good = format!(
        "state: {{ dir: {} }}\ncontrol_socket: {}\nlog_level: info\n",
        state.display(),
        socket.display()
    );
    fs::write(&cfg, &good).unwrap();
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let log = dir.join("log");
    let mut np = Command::new(env!("CARGO_BIN_EXE_nodeplane"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    let waiting = datagrams(&notify, Duration::from_millis(1500)).join("");
    assert!(
        !waiting.contains("READY=1"),
        "ready before a state: {waiting}"
    );
    assert!(waiting.contains("EXTEND_TIMEOUT_USEC="), "{waiting}");
    assert!(
        waiting.contains("STATUS=waiting for the first valid state"),
        "{waiting}"
    );
    assert!(waiting.matches("WATCHDOG=1").count() >= 2, "{waiting}");

    // A valid state (the package's default): READY=1 once it is published.
    fs::copy(
        root_dir().join("packaging/state/node.yaml"),
        state.join("node.yaml"),
    )
    .unwrap();
    let t0 = Instant::now();
    let mut seen = String::new();
    while !seen.contains("READY=1") {
        assert!(t0.elapsed() < Duration::from_secs(10), "no READY=1: {seen}");
        seen += &datagrams(&notify, Duration::from_millis(100)).join("");
    }
    assert!(
        generation(&socket) >= 1,
        "READY=1 before the first publication"
    );
    assert!(seen.contains("STATUS=generation 1 from dir"), "{seen}");
    // Pings at half WATCHDOG_USEC (0.2 s): at least 4 in a second, READY only once.
    let running = datagrams(&notify, Duration::from_secs(1)).join("");
    assert!(running.matches("WATCHDOG=1").count() >= 4, "{running}");
    assert!(!running.contains("READY=1"), "{running}");

    // SIGHUP with a config that changes what needs a restart: rejected whole, still running.
    let gen = generation(&socket);
    fs::write(
        &cfg,
        good.replace("log_level: info", "log_level: debug\nworkers: 2"),
    )
    .unwrap();
    signal(&np, "-HUP");
    let reload = datagrams(&notify, Duration::from_millis(700)).join("");
    let (r, d) = (reload.find("RELOADING=1"), reload.rfind("READY=1"));
    assert!(r.is_some() && d > r, "RELOADING=1 then READY=1: {reload}");
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("config reload REJECTED, keeping the running config: workers changed"),
        "{text}"
    );
    // The state directory is re-read at the same time.
    assert!(generation(&socket) > gen);
    // A config that does not parse: rejected, logged; a good one with another level: applied.
    fs::write(&cfg, "wrokers: 1\n").unwrap();
    signal(&np, "-HUP");
    datagrams(&notify, Duration::from_millis(400));
    fs::write(&cfg, good.replace("log_level: info", "log_level: debug")).unwrap();
    signal(&np, "-HUP");
    datagrams(&notify, Duration::from_millis(400));
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("unknown field `wrokers`"), "{text}");
    assert!(text.contains("log_level debug"), "{text}");
    assert!(
        text.contains("level=debug"),
        "debug lines after the reload: {text}"
    );

    signal(&np, "-TERM");
    let stopping = datagrams(&notify, Duration::from_millis(500)).join("");
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    assert!(np.wait().unwrap().success());
}

// ---- capabilities (root) ----

/// `Key=` values of the unit file (space-separated words; repeated keys add up).
fn unit_caps(key: &str) -> Vec<String> {
    let unit = fs::read_to_string(root_dir().join("packaging/nodeplane.service")).unwrap();
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

fn exec_start() -> Vec<String> {
    let unit = fs::read_to_string(root_dir().join("packaging/nodeplane.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    line.split_whitespace().map(str::to_string).collect()
}

/// A bpffs mounted for the test; unmounted on drop (its pins, and so the XDP links, go).
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount(dir: &Path) -> Bpffs {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t bpf at {}", dir.display());
        Bpffs(dir.to_owned())
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

struct Lab {
    prefix: String,
    servers: Vec<Child>,
}

impl Lab {
    fn script(prefix: &str, cmd: &str) {
        let out = Command::new("bash")
            .arg(root_dir().join("scripts/lab.sh"))
            .arg(cmd)
            .env("NP_LAB_PREFIX", prefix)
            .output()
            .expect("run lab.sh");
        assert!(
            out.status.success(),
            "lab.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        Lab::script(&self.prefix, "down");
    }
}

/// Runs the unit's ExecStart (binary replaced by this build's, config by `cfg`) in the node
/// namespace as root with exactly `caps` (bounding, inheritable and ambient sets, as systemd
/// does for `CapabilityBoundingSet=` + `AmbientCapabilities=` + `NoNewPrivileges=`); after
/// `settle`, returns (generation, curl answer, the daemon's log); the daemon is stopped.
fn run_with(
    lab: &Lab,
    caps: &[String],
    cfg: &Path,
    socket: &Path,
    log: &Path,
) -> (u64, String, String) {
    let set = std::iter::once("-all".to_string())
        .chain(
            caps.iter()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    let exec = exec_start();
    assert_eq!(exec[0], "/usr/bin/nodeplane");
    assert_eq!(&exec[1..3], ["run", "--config"]);
    let mut np = Command::new("ip")
        .args(["netns", "exec", &format!("{}node", lab.prefix), "setpriv"])
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg("--no-new-privs")
        .arg(env!("CARGO_BIN_EXE_nodeplane"))
        .args(&exec[1..3])
        .arg(cfg)
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while generation(socket) == 0 && t0.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The speaker starts with the first state; give its listener a moment.
    std::thread::sleep(Duration::from_millis(500));
    let gen = generation(socket);
    let out = Command::new("timeout")
        .args(["5", "ip", "netns", "exec", &format!("{}client", lab.prefix)])
        .args(["curl", "-sS", "-m", "2", "http://10.96.0.10/"])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    signal(&np, "-TERM");
    let t0 = Instant::now();
    while np.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(5) {
            let _ = np.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (gen, answer, fs::read_to_string(log).unwrap_or_default())
}

#[test]
fn unit_capabilities_suffice_and_each_is_needed() {
    let id = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&id.stdout).trim(),
        "0",
        "this test needs root (namespaces, XDP, AF_XDP, setpriv)"
    );
    let bounding = unit_caps("CapabilityBoundingSet");
    let ambient = unit_caps("AmbientCapabilities");
    assert_eq!(bounding, ambient, "the unit grants what it bounds");
    assert!(!bounding.is_empty());

    // NP_TEST_NS_PREFIX: the namespaces' prefix (a helper running this beside others).
    let prefix = format!(
        "{}{}-",
        std::env::var("NP_TEST_NS_PREFIX").unwrap_or_else(|_| "np-h7s".into()),
        std::process::id() % 10_000
    );
    Lab::script(&prefix, "up");
    let mut lab = Lab {
        prefix: prefix.clone(),
        servers: Vec::new(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let http = tmp.path().join("http.sh");
    fs::write(
        &http,
        "#!/bin/sh\nread -r req\nprintf 'HTTP/1.0 200 OK\\r\\n\\r\\nhello from %s\\n' \"$1\"\n",
    )
    .unwrap();
    for w in ["web1", "web2"] {
        let c = Command::new("ip")
            .args(["netns", "exec", &format!("{prefix}{w}"), "socat"])
            .arg("TCP6-LISTEN:8080,ipv6only=0,reuseaddr,fork")
            .arg(format!("SYSTEM:sh {} {w}", http.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        lab.servers.push(c);
    }
    // The example node, gateway MAC from the kernel (as the e2e tests do).
    let state = tmp.path().join("state");
    fs::create_dir(&state).unwrap();
    for e in fs::read_dir(root_dir().join("examples/state")).unwrap() {
        let e = e.unwrap();
        let text = fs::read_to_string(e.path()).unwrap();
        let text: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("gateway_mac:"))
            .collect();
        fs::write(state.join(e.file_name()), text.join("\n")).unwrap();
    }
    let socket = tmp.path().join("np.sock");
    let cfg = tmp.path().join("config.yaml");
    // The XDP links pinned in a bpffs of the test's own (as systemd mounts /sys/fs/bpf): the
    // unit's capabilities must pin them and take them over.
    let bpffs = Bpffs::mount(&tmp.path().join("bpffs"));
    let pins = bpffs.0.join("nodeplane");
    // BGP listening on 179 (the default port) toward the router: CAP_NET_BIND_SERVICE.
    fs::write(
        &cfg,
        format!(
            "state: {{ dir: {} }}\ncontrol_socket: {}\nio: {{ afxdp: {{ workers: 1, neigh_refresh: 0.5, pin_dir: {} }} }}\nbgp:\n  local_as: 65001\n  router_id: 192.168.100.2\n  neighbors:\n    - {{ address: 192.168.100.1, remote_as: 65000, passive: true, families: [ipv4] }}\n",
            state.display(),
            socket.display(),
            pins.display()
        ),
    )
    .unwrap();
    let log = tmp.path().join("log");

    let (gen, answer, text) = run_with(&lab, &bounding, &cfg, &socket, &log);
    assert!(gen >= 1, "the unit's capabilities start the node: {text}");
    assert!(
        answer.contains("hello from web"),
        "ClusterIP traffic: {answer:?}\n{text}"
    );
    assert!(!text.contains("speaker NOT RUNNING"), "{text}");
    assert!(text.contains(", pinned at "), "XDP links pinned: {text}");
    // Again: the pinned links are taken over (BPF_LINK_UPDATE) with the same capabilities.
    let (gen, answer, text) = run_with(&lab, &bounding, &cfg, &socket, &log);
    assert!(
        gen >= 1 && answer.contains("hello from web"),
        "{answer:?}\n{text}"
    );
    assert!(
        text.contains("took over the link pinned at"),
        "pinned links taken over: {text}"
    );

    // Each capability dropped: what fails, as the daemon says it. Each from a node with nothing
    // pinned (`nodeplane detach` first): a takeover of this build's pinned program creates no
    // map and loads nothing, so it starts without CAP_NET_ADMIN or CAP_PERFMON (seen here).
    for cap in &bounding {
        let st = Command::new(env!("CARGO_BIN_EXE_nodeplane"))
            .args(["detach", "--pin-dir"])
            .arg(&pins)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "nodeplane detach");
        let fewer: Vec<String> = bounding.iter().filter(|c| *c != cap).cloned().collect();
        let (gen, answer, text) = run_with(&lab, &fewer, &cfg, &socket, &log);
        let want = match cap.as_str() {
            "CAP_NET_ADMIN" => "failed to create map",
            "CAP_NET_RAW" => "failed to create a UMEM",
            "CAP_BPF" => "failed to create map",
            "CAP_PERFMON" => "pointer arithmetic with it prohibited for !root",
            "CAP_IPC_LOCK" => "No buffer space available",
            "CAP_NET_BIND_SERVICE" => "speaker NOT RUNNING",
            other => panic!("{other}: no reason known for this capability (docs/service.md)"),
        };
        assert!(
            text.contains(want),
            "without {cap}: wanted {want:?} in\n{text}"
        );
        if cap == "CAP_NET_BIND_SERVICE" {
            assert!(text.contains("Permission denied"), "{text}");
            assert!(
                gen >= 1 && answer.contains("hello from web"),
                "forwarding unaffected"
            );
        } else {
            assert_eq!(gen, 0, "without {cap} no state runs: {text}");
            assert!(!answer.contains("hello"), "without {cap}: {answer}");
        }
        eprintln!("without {cap}: fails as expected ({want})");
    }
}
