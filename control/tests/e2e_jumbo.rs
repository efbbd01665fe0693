//! End to end at a jumbo pod MTU: the daemon with `io.afxdp.multi_buffer: true` and
//! `frame_size: 4096` on the example node (`scripts/lab.sh`, a private copy named
//! `np-s4b-mb<pid><n>-*`) with every pod veth at MTU 9000 (the uplink stays at 1500), real
//! AF_XDP sockets on veth, a real HTTP server (python3 `http.server`) in the web pods and a real
//! client (curl) in the client pod, through the `web` ClusterIP (DNAT, reverse NAT, policy) on
//! IPv4 and IPv6. Pods at Linux defaults: their TCP frames carry partial checksums, which the
//! worker passes on for the kernel to finish (`io.afxdp.tx_checksum_offload: auto`, the
//! request in the chain's first buffer's TX metadata), or, with `off`, completes over whole
//! chains: both are run.
//!
//! Checks: the 24 MiB download arrives intact (sha256), no pod counts a bad TCP checksum
//! (`nstat` TcpInCsumErrors), the frames went through the worker as chains of UMEM frames
//! (`rx_chains` / `tx_chains` in `nodeplane status`), none was dropped as a bad chain, the
//! partial checksums were offloaded (`csum_offloaded`, none completed) or completed (none
//! offloaded) as configured, the kernel refused no TX descriptor, and the daemon stops cleanly
//! with its UMEM accounting intact.
//!
//! With two workers (`two_workers_*`): chains whose flow the other worker owns are handed over
//! whole; TCP (socat) and UDP transfers both ways, through ClusterIPs and pod to pod, with
//! checksum offload `auto` and `off`.
//!
//! Needs root, iproute2, curl, python3, socat, nstat, sha256sum. Fails (never skips) without
//! them.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod lab;

use lab::blob::{sh_in, start_udp_echo, udp_blob};
use lab::daemon::io_sum;
use lab::{random_blob, root_dir, Lab};

const MTU: &str = "9000";
const PODS: [&str; 3] = ["client", "web1", "web2"];

/// Every pod and its node-side veth at MTU [`MTU`].
fn jumbo_pods(lab: &Lab) {
    for p in PODS {
        let (ok, _) = sh_in(lab, "node", &format!("ip link set pod-{p} mtu {MTU}"));
        assert!(ok, "MTU of pod-{p}");
        let (ok, _) = sh_in(lab, p, &format!("ip link set eth0 mtu {MTU}"));
        assert!(ok, "MTU of {p}'s eth0");
    }
}

fn nstat(lab: &Lab, ns: &str, counter: &str) -> u64 {
    let (ok, out) = sh_in(lab, ns, &format!("nstat -az {counter}"));
    assert!(ok, "nstat in {ns}");
    out.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(counter)).then(|| w.next().and_then(|v| v.parse().ok()))
        })
        .flatten()
        .unwrap_or_else(|| panic!("no {counter} in {ns}: {out}"))
}

/// Sum of an AF_XDP socket counter (a JSON pointer into each socket's status, e.g.
/// `/rx_chains`) over every socket of every worker.
fn socket_sum(status: &serde_json::Value, field: &str) -> u64 {
    status["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .flat_map(|w| {
            w["io"]["afxdp"]["sockets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|s| s.pointer(field).and_then(|v| v.as_u64()).unwrap_or(0))
        .sum()
}

fn status(socket: &Path) -> Option<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_nodeplane"))
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn jumbo_pod_mtu_downloads_arrive_intact_through_a_cluster_ip() {
    jumbo_downloads("s4b-mb", "auto");
}

#[test]
fn jumbo_downloads_with_checksum_offload_off_are_completed_by_the_worker() {
    jumbo_downloads("mb-off", "off");
}

fn jumbo_downloads(tag: &str, offload: &str) {
    let mut lab = Lab::up(tag);
    jumbo_pods(&lab);

    // The state: the example, with the uplink's static gateway MAC removed as e2e_runtime does
    // (the runtime learns it from the kernel).
    let state = lab.tmp.join("state");
    fs::create_dir_all(&state).unwrap();
    for e in fs::read_dir(root_dir().join("examples/state")).unwrap() {
        let e = e.unwrap();
        let text = fs::read_to_string(e.path()).unwrap();
        let text = if e.file_name() == "interfaces.yaml" {
            text.lines()
                .filter(|l| !l.contains("gateway_mac:"))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            text
        };
        fs::write(state.join(e.file_name()), text).unwrap();
    }
    let socket = lab.tmp.join("np.sock");
    let log = lab.tmp.join("nodeplane.log");
    let cfg = lab.tmp.join("config.yaml");
    let pidf = lab.tmp.join("pid");
    fs::write(
        &cfg,
        format!(
            "state: {{ dir: {} }}\ncontrol_socket: {}\nlog_level: info\nio:\n  afxdp: {{ workers: 1, neigh_refresh: 0.5, frame_size: 4096, multi_buffer: true, tx_checksum_offload: {offload} }}\n",
            state.display(),
            socket.display(),
        ),
    )
    .unwrap();
    let mut daemon = lab.spawn_nodeplane(&cfg, &pidf, &log);
    let t0 = Instant::now();
    while status(&socket).is_none_or(|s| s["generation"].as_u64().unwrap_or(0) < 1) {
        assert!(
            t0.elapsed() < Duration::from_secs(15) && daemon.try_wait().unwrap().is_none(),
            "nodeplane did not start: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid: i32 = fs::read_to_string(&pidf).unwrap().trim().parse().unwrap();

    // The same 24 MiB blob served by both web pods (maglev picks either).
    let www = lab.tmp.join("www");
    fs::create_dir_all(&www).unwrap();
    let blob = www.join("blob");
    let want = random_blob(&blob, 25_165_824);
    for web in ["web1", "web2"] {
        let c = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns(web),
                "python3",
                "-m",
                "http.server",
            ])
            .args(["8080", "--bind", "::", "--directory"])
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server");
        lab.procs.push(c);
    }
    let csum_before: Vec<u64> = PODS
        .iter()
        .map(|p| nstat(&lab, p, "TcpInCsumErrors"))
        .collect();

    for url in ["http://10.96.0.10/blob", "http://[fd00:96::10]/blob"] {
        // The servers may take a moment to listen: a few tries.
        let mut got = String::new();
        for _ in 0..20 {
            let (ok, out) = sh_in(
                &lab,
                "client",
                &format!("curl -sS -m 30 -g {url} | sha256sum | cut -c1-64"),
            );
            if ok && out == want {
                got = out;
                break;
            }
            got = out;
            std::thread::sleep(Duration::from_millis(250));
        }
        assert_eq!(got, want, "{url}: the download differs from the blob");
    }

    for (p, before) in PODS.iter().zip(csum_before) {
        assert_eq!(
            nstat(&lab, p, "TcpInCsumErrors"),
            before,
            "{p} counted bad TCP checksums"
        );
    }
    let s = status(&socket).expect("status");
    let (rx_chains, tx_chains, bad) = (
        socket_sum(&s, "/rx_chains"),
        socket_sum(&s, "/tx_chains"),
        socket_sum(&s, "/rx_chain_dropped"),
    );
    eprintln!("chains: rx {rx_chains}, tx {tx_chains}, dropped {bad}");
    // 48 MiB in frames of up to 9014 B, 3 UMEM frames each: thousands of chains.
    assert!(
        rx_chains > 2000 && tx_chains > 2000,
        "rx_chains {rx_chains} tx_chains {tx_chains}: {s}"
    );
    assert_eq!(bad, 0, "chains dropped");
    let w = &s["workers"][0];
    let (offloaded, completed) = (
        w["csum_offloaded"].as_u64().unwrap_or(0),
        w["csum_completed"].as_u64().unwrap_or(0),
    );
    eprintln!("checksums ({offload}): offloaded {offloaded}, completed {completed}");
    if offload == "auto" {
        assert!(
            offloaded > 2000 && completed == 0,
            "partial checksums passed on for the kernel, none completed: {offloaded} / {completed}"
        );
    } else {
        assert!(
            completed > 2000 && offloaded == 0,
            "partial checksums completed by the worker, none offloaded: {offloaded} / {completed}"
        );
    }
    let tx_invalid = socket_sum(&s, "/kernel/tx_invalid_descs");
    assert_eq!(tx_invalid, 0, "the kernel refused TX descriptors");

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let t0 = Instant::now();
    let exit = loop {
        if let Some(st) = daemon.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "nodeplane did not stop"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(exit.success(), "nodeplane exits 0 on SIGTERM: {text}");
    assert!(
        text.contains("UMEM frame accounting ok"),
        "the worker's frame accounting holds at exit: {text}"
    );
}

/// Two workers, every pod at MTU 9000, `multi_buffer`: a frame arrives on whichever queue its
/// sender's kernel picked, so the frames of about half the flow directions reach the worker that
/// does not own their flow, and those longer than a UMEM frame (chains) are handed over whole
/// and sent by the owner as chains of its own frames. TCP (a 4 MiB blob to a web pod's echo
/// server and back, socat) and UDP (the same blob in 8000-byte datagrams, echoed) through the
/// `web` / `dns` ClusterIPs and pod to pod, several connections each; every transfer's sha256
/// intact both ways; chains crossed workers (`handoff_chains`), none `handoff-too-long`, no
/// TX descriptor refused, partial checksums offloaded (none completed) or completed (none
/// offloaded) as configured, UMEM accounting intact at stop.
#[test]
fn two_workers_hand_jumbo_chains_to_their_owner() {
    two_workers_jumbo("j2w", "auto");
}

/// The same with `tx_checksum_offload: off`: the owner completes partial checksums over the
/// whole handed-in packet before it splits the copy into a chain.
#[test]
fn two_workers_complete_checksums_of_handed_in_chains() {
    two_workers_jumbo("j2w-off", "off");
}

fn two_workers_jumbo(tag: &str, offload: &str) {
    let mut lab = Lab::up(tag);
    jumbo_pods(&lab);
    for w in ["web1", "web2"] {
        let c = Command::new("ip")
            .args(["netns", "exec", &lab.ns(w), "socat"])
            .arg("TCP-LISTEN:8081,reuseaddr,fork")
            .arg(format!("SYSTEM:echo {w} $$; cat"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("echo server");
        lab.procs.push(c);
        start_udp_echo(&mut lab, w, 5353);
    }
    let state = lab::daemon::echo_state(&lab);
    let np = lab::daemon::Nodeplane::launch(
        &lab,
        &lab::daemon::Launch {
            workers: 2,
            afxdp_extra: &format!(
                ", frame_size: 4096, multi_buffer: true, tx_checksum_offload: {offload}"
            ),
            ..lab::daemon::Launch::dir(&state)
        },
    );
    std::thread::sleep(Duration::from_millis(300));

    let blob = lab.tmp.join("blob");
    let want = random_blob(&blob, 4 << 20);
    // TCP: the ClusterIP (port 80 -> 8081) four times, each web pod directly twice.
    let tcp = [
        "10.96.0.10:80",
        "10.96.0.10:80",
        "10.96.0.10:80",
        "10.96.0.10:80",
        "10.244.1.21:8081",
        "10.244.1.22:8081",
        "10.244.1.21:8081",
        "10.244.1.22:8081",
    ];
    for to in tcp {
        // The echo server first says which pod it is (one line), then echoes.
        let (ok, got) = sh_in(
            &lab,
            "client",
            &format!(
                "socat -t 10 -T 30 - TCP:{to} < {} | tail -n +2 | sha256sum | cut -c1-64",
                blob.display()
            ),
        );
        assert!(ok, "TCP {to}: {got}");
        assert_eq!(
            got,
            want,
            "TCP {to}: the echoed blob differs\n{}",
            np.stats()
        );
    }
    // UDP: the `dns` ClusterIP (53 -> 5353) twice, each web pod directly.
    for (to, port) in [
        ("10.96.0.53", 53),
        ("10.96.0.53", 53),
        ("10.244.1.21", 5353),
        ("10.244.1.22", 5353),
    ] {
        // 8000-byte datagrams: each a chain of UMEM frames both ways.
        let (ok, got) = udp_blob(&lab, "client", to, port, &blob, 8000);
        assert!(ok, "UDP {to}:{port}: {got}");
        assert_eq!(got, want, "UDP {to}:{port}: the echoed blob differs");
    }

    let st = np.stats();
    let (off, chains, into, too_long, full) = (
        io_sum(&st, "handed_off"),
        io_sum(&st, "handoff_chains"),
        io_sum(&st, "handed_in"),
        io_sum(&st, "handoff_too_long"),
        io_sum(&st, "handoff_dropped"),
    );
    let (rx_chains, tx_chains) = (socket_sum(&st, "/rx_chains"), socket_sum(&st, "/tx_chains"));
    eprintln!(
        "handed off {off} (chains {chains}), in {into}, too long {too_long}, full {full}; \
         chains rx {rx_chains} tx {tx_chains}"
    );
    assert!(
        chains > 100,
        "chains handed to their owner: {chains} (of {off} frames handed off)\n{st}"
    );
    assert_eq!(too_long, 0, "{st}");
    assert_eq!(np.drops("handoff-too-long"), 0, "{st}");
    assert!(rx_chains > 2000 && tx_chains > 2000, "{st}");
    assert_eq!(
        socket_sum(&st, "/rx_chain_dropped"),
        0,
        "chains dropped\n{st}"
    );
    assert_eq!(
        socket_sum(&st, "/kernel/tx_invalid_descs"),
        0,
        "the kernel refused TX descriptors\n{st}"
    );
    let (offloaded, completed) = (
        st["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .map(|w| w["csum_offloaded"].as_u64().unwrap_or(0))
            .sum::<u64>(),
        st["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .map(|w| w["csum_completed"].as_u64().unwrap_or(0))
            .sum::<u64>(),
    );
    eprintln!("checksums ({offload}): offloaded {offloaded}, completed {completed}");
    if offload == "auto" {
        assert!(
            offloaded > 2000 && completed == 0,
            "{offloaded} / {completed}"
        );
    } else {
        assert!(
            completed > 2000 && offloaded == 0,
            "{offloaded} / {completed}"
        );
    }
    let log = np.log.clone();
    assert!(np.stop(), "nodeplane exits 0 on SIGTERM");
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        text.matches("UMEM frame accounting ok").count(),
        2,
        "both workers' frame accounting holds at exit: {text}"
    );
}
