//! The kernel flow cache (`io.afxdp.fast_path: tc`, issue 10) end to end on the lab: real
//! veths, the daemon with 2 workers and with 1, pods at their Linux defaults (TSO on: no XDP program on
//! their veths), real clients (curl, socat) and servers (python's http.server, socat).
//!
//! ```text
//!  router ── uplink0 (XDP) ─┐ node (nodeplane, fast_path: tc)  ┌─ pod-client (TC) ── client
//!                           └── npslow0 ─ npslow1 (XDP, sockets)┼─ pod-web1   (TC) ── web1 :8080 http, :8081 echo, :5353 udp
//!                                                               └─ pod-web2   (TC) ── web2
//!  web ClusterIP 10.96.0.10 / fd00:96::10 :80 → :8080; dns 10.96.0.53:53/udp → :5353;
//!  web-nodeport 30080 on the node IP → :8080
//! ```
//!
//! One test, one lab (a lab costs seconds to build): every step asserts what the brief asks,
//! in turn — TSO kept, bulk downloads intact and forwarded by the kernel in GSO skbs (pod →
//! ClusterIP → pod and pod → pod, IPv4 and IPv6), closed connections withdrawn, UDP through a
//! ClusterIP both ways, a policy change stopping an offloaded connection, NodePort from the
//! router through the uplink's XDP.
//!
//! Run as root: `NP_LAB_TAG=<prefix>- cargo test -p nodeplane-control --profile ci --test
//! e2e_fast_path`.

mod lab;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use lab::daemon::{example_state, start_servers, Launch, Nodeplane};
use lab::{random_blob, wait_until, Lab};

/// An HTTP server on [::]:8080 in each web pod, serving `www`.
fn http_servers(lab: &mut Lab, www: &Path) {
    for w in ["web1", "web2"] {
        let c = Command::new("ip")
            .args(["netns", "exec", &lab.ns(w), "python3", "-m", "http.server"])
            .args(["-b", "::", "8080", "-d"])
            .arg(www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        lab.procs.push(c);
    }
    for w in ["web1", "web2"] {
        wait_until("the http servers", 10, || {
            Command::new("ip")
                .args(["netns", "exec", &lab.ns(w), "ss", "-Htln", "sport = :8080"])
                .output()
                .is_ok_and(|o| !o.stdout.is_empty())
        });
    }
}

/// Downloads `url` in the client pod; the sha256 of what arrived.
fn download(lab: &Lab, url: &str) -> String {
    let out = lab.tmp.join("download");
    let _ = fs::remove_file(&out);
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("client"),
            "curl",
            "-sg",
            "-m",
            "30",
            "-o",
        ])
        .arg(&out)
        .arg(url)
        .status()
        .expect("curl");
    assert!(st.success(), "curl {url}: {st}");
    let sum = Command::new("sha256sum").arg(&out).output().unwrap();
    String::from_utf8_lossy(&sum.stdout)[..64].to_owned()
}

/// The TC program's counter `name` (`nodeplane status`: io.fast_path).
fn fast(st: &serde_json::Value, name: &str) -> u64 {
    st["io"]["fast_path"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no io.fast_path.{name} in the status: {}", st["io"]))
}

/// A flow-cache counter of the workers (io.afxdp.offload), summed.
fn offload(st: &serde_json::Value, name: &str) -> u64 {
    st["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["io"]["afxdp"]["offload"][name].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn fast_path_tc_repeats_the_workers_decisions_in_the_kernel() {
    fast_path(2);
}

/// One worker: established packets take the pipeline's lane (`Pipeline::lane_run`), whose
/// frames must still leave their 5-tuples for the offers.
#[test]
fn fast_path_tc_with_one_worker_offers_the_lanes_flows() {
    fast_path(1);
}

fn fast_path(workers: usize) {
    let mut lab = Lab::up(&format!("fp{workers}"));
    start_servers(&mut lab);
    let www = lab.tmp.join("www");
    fs::create_dir_all(&www).unwrap();
    let sum = random_blob(&www.join("blob"), 20 << 20);
    http_servers(&mut lab, &www);
    let dir = example_state(&lab, |_, text| text);
    let np = Nodeplane::launch(
        &lab,
        &Launch {
            afxdp_extra: ", fast_path: tc",
            workers,
            ..Launch::dir(&dir)
        },
    );
    let st = np.stats();
    assert_eq!(
        st["io"]["attached"].as_array().map(Vec::len),
        Some(2),
        "XDP on the uplink and npslow1 only: {}",
        st["io"]["attached"]
    );

    // Pods at their defaults keep TSO: no XDP program on their veths.
    let k = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "ethtool", "-k", "eth0"])
        .output()
        .expect("ethtool");
    let k = String::from_utf8_lossy(&k.stdout);
    assert!(
        k.lines().any(|l| l == "tcp-segmentation-offload: on"),
        "the client pod's TSO: {k}"
    );

    // Bulk downloads: pod → ClusterIP → pod and pod → pod, IPv4 and IPv6, intact; the kernel
    // forwarded them, GSO skbs whole.
    for url in [
        "http://10.96.0.10/blob",
        "http://[fd00:96::10]/blob",
        "http://10.244.1.21:8080/blob",
        "http://[fd00:244:1::22]:8080/blob",
    ] {
        let before = np.stats();
        assert_eq!(download(&lab, url), sum, "{url}: the file arrived intact");
        let after = np.stats();
        let pkts = fast(&after, "fast_fwd_packets") - fast(&before, "fast_fwd_packets");
        let gso = fast(&after, "fast_gso_skbs") - fast(&before, "fast_gso_skbs");
        let slow = fast(&after, "slow_path") - fast(&before, "slow_path");
        assert!(
            pkts > 10_000,
            "{url}: 20 MiB forwarded by the kernel flow cache ({pkts} segments, {slow} skbs to \
             the workers)"
        );
        assert!(gso > 0, "{url}: GSO skbs forwarded whole ({gso})");
        assert!(
            slow < pkts / 100,
            "{url}: the workers saw the handshake and the close, not the stream ({slow} of {pkts})"
        );
        println!(
            "{url}: {pkts} segments in the kernel ({gso} GSO skbs), {slow} skbs to the workers"
        );
    }
    // Every direction offered was withdrawn when its connection closed (the FINs go through
    // the workers).
    // (`offered` counts offers made again, `reoffered`, which replace an entry: one removal
    // each direction.)
    let settled = |st: &serde_json::Value| {
        offload(st, "offered") > 0
            && offload(st, "withdrawn") == offload(st, "offered") - offload(st, "reoffered")
    };
    let t0 = std::time::Instant::now();
    while !settled(&np.stats()) {
        let st = np.stats();
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the closed connections' entries are withdrawn: {}",
            st["workers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["io"]["afxdp"]["offload"].to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = np.stats();
    assert!(
        offload(&st, "offered") >= 8,
        "both directions of 4 connections: {}",
        offload(&st, "offered")
    );
    assert_eq!(offload(&st, "offload_errors"), 0);
    assert_eq!(fast(&st, "redirect_error") + fast(&st, "rewrite_error"), 0);

    // UDP through a ClusterIP, both ways: offered once the reply was seen, then answered by
    // the kernel.
    let before = fast(&np.stats(), "fast_fwd_packets");
    for i in 0..6 {
        let mut c = Command::new("ip")
            .args(["netns", "exec", &lab.ns("client"), "socat", "-T1", "-"])
            .arg("UDP4:10.96.0.53:53,sourceport=40123,reuseaddr")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("socat udp");
        c.stdin
            .take()
            .unwrap()
            .write_all(format!("q{i}\n").as_bytes())
            .unwrap();
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("answer from web"), "request {i}: {text:?}");
    }
    let udp = fast(&np.stats(), "fast_fwd_packets") - before;
    assert!(
        udp >= 4,
        "the later requests and answers went through the kernel flow cache ({udp})"
    );

    // A long-lived connection (client → web1's echo on 8081), offloaded; then the policy
    // denies it: the map is cleared, its next packet is decided again, and dropped.
    let mut conv = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("client"),
            "socat",
            "-",
            "TCP:10.244.1.21:8081",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat conversation");
    let mut to = conv.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let from = conv.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(from).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let greeting = rx
        .recv_timeout(Duration::from_secs(3))
        .expect("the echo server's greeting");
    assert!(greeting.starts_with("web1"), "{greeting}");
    let line = |to: &mut std::process::ChildStdin, i: u32| {
        writeln!(to, "line {i}").unwrap();
        to.flush().unwrap();
        rx.recv_timeout(Duration::from_secs(2)).ok()
    };
    for i in 0..5 {
        assert_eq!(line(&mut to, i).as_deref(), Some(&*format!("line {i}")));
    }
    let st = np.stats();
    let fwd = fast(&st, "fast_fwd_packets");
    for i in 5..10 {
        assert_eq!(line(&mut to, i).as_deref(), Some(&*format!("line {i}")));
    }
    assert!(
        fast(&np.stats(), "fast_fwd_packets") > fwd,
        "the established conversation is forwarded by the kernel"
    );
    let (cleared, denied) = (offload(&st, "cleared"), np.drops("policy-denied"));
    let gen = np.stats()["generation"].as_u64().unwrap();
    let p = dir.join("policies.yaml");
    let text = fs::read_to_string(&p).unwrap();
    let denying = text.replace("[{ port: 9000, end_port: 9100 }]", "[{ port: 8081 }]");
    assert_ne!(text, denying);
    fs::write(&p, denying).unwrap();
    wait_until("the denying policy to be published", 10, || {
        np.stats()["generation"].as_u64().unwrap() > gen
    });
    wait_until("every worker to clear the flow map", 5, || {
        offload(&np.stats(), "cleared") >= cleared + workers as u64
    });
    assert_eq!(line(&mut to, 99), None, "the connection is stopped");
    let st = np.stats();
    assert!(
        np.drops("policy-denied") > denied,
        "its next packet was decided again and dropped: {}",
        st["workers"][0]["drops"]
    );
    let _ = conv.kill();
    let _ = conv.wait();

    // NodePort from the router: the uplink keeps XDP and the workers.
    let before = np.stats()["io"]["xdp"]["redirect_nodeport"]
        .as_u64()
        .unwrap_or(0);
    let code = Command::new("ip")
        .args(["netns", "exec", &lab.ns("router"), "curl", "-s", "-m", "10"])
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .arg("http://192.168.100.2:30080/")
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&code.stdout),
        "200",
        "NodePort from the router"
    );
    assert!(
        np.stats()["io"]["xdp"]["redirect_nodeport"]
            .as_u64()
            .unwrap_or(0)
            > before,
        "steered by the uplink's XDP program"
    );

    // A clean exit: the TC program and the slow-path pair go.
    assert!(np.stop(), "nodeplane exits 0");
    let links = Command::new("ip")
        .args(["netns", "exec", &lab.ns("node"), "ip", "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains("npslow"),
        "the slow-path pair is deleted: {links}"
    );
    let tc = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("node"),
            "bpftool",
            "net",
            "show",
            "dev",
            "pod-client",
        ])
        .output()
        .unwrap();
    let tc = String::from_utf8_lossy(&tc.stdout);
    assert!(!tc.contains("tcx/ingress"), "TC detached: {tc}");
}
