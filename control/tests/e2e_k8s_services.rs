//! End to end, issue 14 items 1-4: Kubernetes service semantics that sig-network's Services e2e
//! tests (kubernetes/test/e2e/network/service.go) check, each test named after the one it
//! follows, on the example node of `scripts/lab.sh` (namespaces `np-<NP_LAB_TAG><tag><pid><n>-*`),
//! with `nodeplane run` on real AF_XDP sockets and real kernel clients (curl, socat) and servers
//! (socat) in the pods and the router. The source NAT tests (item 1) add a second node behind
//! the router ([`RemoteNode`]) holding node-2's pod 10.244.2.7. The daemon runs unpinned
//! (`pin_dir: null`) and keeps its conntrack snapshot in the lab's directory.
//!
//! Needs root, iproute2, curl, socat. Fails (never skips) without them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod lab;

use lab::daemon::Nodeplane;
use lab::{root_dir, Lab};

impl Lab {
    /// Runs a command in a namespace with a time limit.
    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["10", "ip", "netns", "exec", &self.ns(ns)])
            .args(args)
            .output()
            .expect("run in namespace")
    }

    /// `curl URL` from `ns`: (curl's exit code, stdout, seconds it took). Exit 7 is "connection
    /// refused", 28 a timeout.
    fn curl(&self, ns: &str, url: &str) -> (i32, String, f64) {
        let t0 = Instant::now();
        let out = self.exec(ns, &["curl", "-sS", "-m", "3", url]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            t0.elapsed().as_secs_f64(),
        )
    }

    /// In each web pod: HTTP on TCP 8080 (IPv4) answering `<pod> <client address>`, so a
    /// test sees both the backend and the source address it saw.
    fn start_servers(&mut self) {
        let http = self.tmp.join("http.sh");
        fs::write(
            &http,
            "#!/bin/sh\nread -r req\nprintf 'HTTP/1.0 200 OK\\r\\n\\r\\n%s %s\\n' \"$1\" \"$SOCAT_PEERADDR\"\n",
        )
        .unwrap();
        for w in ["web1", "web2"] {
            let c = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.ns(w),
                    "socat",
                    "TCP4-LISTEN:8080,reuseaddr,fork",
                ])
                .arg(format!("SYSTEM:sh {} {w}", http.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("socat server");
            self.procs.push(c);
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    /// The example state with `services.yaml` replaced.
    fn state_with(&self, name: &str, services: &str) -> PathBuf {
        let dir = self.tmp.join(name);
        fs::create_dir_all(&dir).unwrap();
        for e in fs::read_dir(root_dir().join("examples/state")).unwrap() {
            let e = e.unwrap();
            let fname = e.file_name().to_string_lossy().into_owned();
            let mut text = fs::read_to_string(e.path()).unwrap();
            if fname == "interfaces.yaml" {
                // The runtime learns the router's MAC from the kernel.
                text = text
                    .lines()
                    .filter(|l| !l.contains("gateway_mac:"))
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            if fname == "services.yaml" {
                text = services.to_string();
            }
            fs::write(dir.join(&fname), text).unwrap();
        }
        dir
    }
}

/// Replaces `services.yaml` of a running daemon's state (written aside, renamed in) and waits
/// for the new generation.
fn republish(np: &Nodeplane, lab: &Lab, state: &Path, services: &str) {
    let gen = np.stats()["generation"].as_u64().unwrap();
    let tmp = lab.tmp.join("services.yaml.new");
    fs::write(&tmp, services).unwrap();
    fs::rename(&tmp, state.join("services.yaml")).unwrap();
    let t0 = Instant::now();
    loop {
        let s = np.stats();
        if s["generation"].as_u64().unwrap() > gen {
            assert_eq!(s["state"], "ok", "{s}");
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no new generation: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const WEB1: &str = "10.244.1.21";
const WEB2: &str = "10.244.1.22";

/// service.go: "should be rejected when no endpoints exist" (and its UDP and IPv6 variants):
/// a client connecting to a service without endpoints is refused at once, not timed out.
#[test]
fn should_be_rejected_when_no_endpoints_exist() {
    let mut lab = Lab::up("f-");
    lab.start_servers();
    let services = r#"
services:
  - name: empty
    type: ClusterIP
    frontends:
      - { ip: 10.96.0.60, port: 80, protocol: TCP }
      - { ip: "fd00:96::60", port: 80, protocol: TCP }
      - { ip: 10.96.0.60, port: 53, protocol: UDP }
  - name: web
    type: ClusterIP
    frontends: [{ ip: 10.96.0.10, port: 80 }]
    backends: [{ ip: 10.244.1.21, port: 8080 }]
"#;
    let state = lab.state_with("state", services);
    let np = Nodeplane::start_one(&lab, &state);
    let (code, out, _) = lab.curl("client", "http://10.96.0.10/");
    assert_eq!(
        (code, out.split(' ').next()),
        (0, Some("web1")),
        "a service with an endpoint works"
    );

    for url in ["http://10.96.0.60/", "http://[fd00:96::60]/"] {
        let (code, out, took) = lab.curl("client", url);
        assert_eq!(
            code, 7,
            "{url}: curl exit {code} ({out}): want 7, connection refused"
        );
        assert!(took < 1.5, "{url}: refused after {took:.2} s, want at once");
    }
    // UDP: the ICMP port unreachable makes the connected socket's next read fail.
    let t0 = Instant::now();
    let mut c = Command::new("timeout")
        .args(["5", "ip", "netns", "exec", &lab.ns("client")])
        .args(["socat", "-T3", "-", "UDP:10.96.0.60:53"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = c.stdin.take().unwrap();
        stdin.write_all(b"query\n").unwrap();
        // stdin stays open: socat waits for an answer (or the refusal) rather than for EOF.
        let out = c.wait_with_output().unwrap();
        drop(stdin);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Connection refused"), "UDP client: {err:?}");
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "UDP refused at once");
    assert!(np.worker("rejects_sent") >= 3, "{}", np.stats());
    assert!(np.drops("no-backend") >= 3);
    let _ = np.log();
}

fn web_service(backends: &str, extra: &str) -> String {
    format!(
        "services:\n  - name: web\n    type: ClusterIP\n    frontends: [{{ ip: 10.96.0.10, port: 80 }}]\n{extra}    backends:\n{backends}"
    )
}

/// service.go: "should fallback to terminating endpoints when there are no ready endpoints"
/// (KEP-1669): with every endpoint terminating, new connections go to the serving ones; an
/// endpoint that no longer serves gets none.
#[test]
fn should_fallback_to_terminating_endpoints_when_there_are_no_ready_endpoints() {
    let mut lab = Lab::up("f-");
    lab.start_servers();
    let both_terminating = web_service(
        &format!(
            "      - {{ ip: {WEB1}, port: 8080, ready: false, serving: true, terminating: true }}\n      - {{ ip: {WEB2}, port: 8080, ready: false, serving: false, terminating: true }}\n"
        ),
        "",
    );
    let state = lab.state_with("state", &both_terminating);
    let np = Nodeplane::start_one(&lab, &state);
    for _ in 0..5 {
        let (code, out, _) = lab.curl("client", "http://10.96.0.10/");
        assert_eq!(
            code, 0,
            "new connection while only terminating endpoints exist"
        );
        assert!(
            out.starts_with("web1 "),
            "the serving terminating endpoint: {out:?}"
        );
    }
    // web-1 ready again and web-2 serving terminating: the ready one takes every flow.
    republish(
        &np,
        &lab,
        &state,
        &web_service(
            &format!(
                "      - {{ ip: {WEB1}, port: 8080 }}\n      - {{ ip: {WEB2}, port: 8080, serving: true, terminating: true }}\n"
            ),
            "",
        ),
    );
    for _ in 0..5 {
        let (_, out, _) = lab.curl("client", "http://10.96.0.10/");
        assert!(
            out.starts_with("web1 "),
            "ready before terminating: {out:?}"
        );
    }
    // Nothing serving any more: rejected.
    republish(
        &np,
        &lab,
        &state,
        &web_service(
            &format!("      - {{ ip: {WEB1}, port: 8080, serving: false, terminating: true }}\n"),
            "",
        ),
    );
    let (code, _, _) = lab.curl("client", "http://10.96.0.10/");
    assert_eq!(code, 7, "no serving endpoint: refused");
}

/// service.go: "should respect internalTrafficPolicy=Local Pod to Pod": a pod's connections go
/// to the endpoints on its node only; with none there they fail.
#[test]
fn should_respect_internal_traffic_policy_local_pod_to_pod() {
    let mut lab = Lab::up("f-");
    lab.start_servers();
    // 10.244.2.7 is node-2's pod: never chosen (the router would drop it anyway).
    let local = web_service(
        &format!(
            "      - {{ ip: {WEB2}, port: 8080 }}\n      - {{ ip: 10.244.2.7, port: 8080 }}\n"
        ),
        "    internal_traffic_policy: Local\n",
    );
    let state = lab.state_with("state", &local);
    let np = Nodeplane::start_one(&lab, &state);
    for _ in 0..6 {
        let (code, out, _) = lab.curl("client", "http://10.96.0.10/");
        assert_eq!(code, 0);
        assert!(out.starts_with("web2 "), "the local endpoint only: {out:?}");
    }
    republish(
        &np,
        &lab,
        &state,
        &web_service(
            "      - { ip: 10.244.2.7, port: 8080 }\n",
            "    internal_traffic_policy: Local\n",
        ),
    );
    let before = np.drops("no-local-backend");
    let (code, _, _) = lab.curl("client", "http://10.96.0.10/");
    assert_ne!(code, 0, "no local endpoint: the connection fails");
    assert!(
        np.drops("no-local-backend") > before,
        "dropped no-local-backend"
    );
    assert_eq!(
        np.worker("rejects_sent"),
        0,
        "dropped, not rejected (as kube-proxy)"
    );
}

fn lb_service(backends: &str, extra: &str) -> String {
    format!(
        "services:\n  - name: web-lb\n    type: LoadBalancer\n    frontends: [{{ ip: 203.0.113.10, port: 80 }}]\n    node_ports: [{{ port: 30080 }}]\n{extra}    backends:\n{backends}"
    )
}

/// service.go: "should work for type=LoadBalancer" with externalTrafficPolicy: Local, and
/// "should preserve source IP" / the health check node port of kube-proxy's healthcheck
/// server: world clients reach only this node's endpoints with their own address, and the
/// health check answers 200 with the local endpoint count, 503 when only terminating ones are
/// left.
#[test]
fn should_work_for_type_load_balancer_with_external_traffic_policy_local() {
    let mut lab = Lab::up("f-");
    lab.start_servers();
    let etp = "    external_traffic_policy: Local\n    health_check_node_port: 30081\n";
    let state = lab.state_with(
        "state",
        &lb_service(
            &format!(
                "      - {{ ip: {WEB1}, port: 8080 }}\n      - {{ ip: 10.244.2.7, port: 8080 }}\n"
            ),
            etp,
        ),
    );
    let np = Nodeplane::start_one(&lab, &state);
    for url in ["http://203.0.113.10/", "http://192.168.100.2:30080/"] {
        for _ in 0..4 {
            let (code, out, _) = lab.curl("router", url);
            assert_eq!(code, 0, "{url}");
            assert_eq!(
                out.trim(),
                "web1 192.168.100.1",
                "{url}: the local endpoint, the client's own address"
            );
        }
    }
    let health = |lab: &Lab| {
        let out = lab.exec(
            "router",
            &[
                "curl",
                "-sS",
                "-m",
                "3",
                "-i",
                "http://192.168.100.2:30081/healthz",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let h = health(&lab);
    assert!(h.starts_with("HTTP/1.1 200 OK"), "{h}");
    assert!(h.contains("\"localEndpoints\":1"), "{h}");
    let st = np.stats();
    assert_eq!(
        st["health_checks"],
        serde_json::json!([{"port": 30081, "service": "web-lb", "local_endpoints": 1, "listening": true}]),
        "nodeplane status lists the health check port"
    );

    // The local endpoint terminates (still serving): 503, so the load balancer drains the
    // node, while connections that still come are served by it (the fallback).
    republish(
        &np,
        &lab,
        &state,
        &lb_service(
            &format!(
                "      - {{ ip: {WEB1}, port: 8080, serving: true, terminating: true }}\n      - {{ ip: 10.244.2.7, port: 8080 }}\n"
            ),
            etp,
        ),
    );
    let h = health(&lab);
    assert!(h.starts_with("HTTP/1.1 503 Service Unavailable"), "{h}");
    assert!(h.contains("\"localEndpoints\":0"), "{h}");
    let (code, out, _) = lab.curl("router", "http://203.0.113.10/");
    assert_eq!((code, out.trim()), (0, "web1 192.168.100.1"));
}

/// service.go: "should only allow access from service loadbalancer source ranges".
#[test]
fn should_only_allow_access_from_service_loadbalancer_source_ranges() {
    let mut lab = Lab::up("f-");
    lab.start_servers();
    let backends = format!("      - {{ ip: {WEB1}, port: 8080 }}\n");
    let state = lab.state_with(
        "state",
        &lb_service(&backends, "    load_balancer_source_ranges: [10.0.0.0/8]\n"),
    );
    let np = Nodeplane::start_one(&lab, &state);
    let (code, _, _) = lab.curl("router", "http://203.0.113.10/");
    assert_ne!(code, 0, "the router (192.168.100.1) is outside 10.0.0.0/8");
    assert!(np.drops("source-range-denied") >= 1, "{}", np.stats());
    // The node port is not restricted (kube-proxy filters the VIP only).
    let (code, _, _) = lab.curl("router", "http://192.168.100.2:30080/");
    assert_eq!(code, 0, "node port");
    republish(
        &np,
        &lab,
        &state,
        &lb_service(
            &backends,
            "    load_balancer_source_ranges: [192.168.100.0/24]\n",
        ),
    );
    let (code, out, _) = lab.curl("router", "http://203.0.113.10/");
    assert_eq!(
        (code, out.trim()),
        (0, "web1 192.168.100.1"),
        "now inside the ranges"
    );
}

impl Nodeplane {
    /// `nodeplane ct list --json`: the rows.
    fn ct_rows(&self) -> Vec<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_nodeplane"))
            .args(["ct", "list", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .expect("nodeplane ct list");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("ct list --json: {e}: {:?}", out));
        v["rows"].as_array().cloned().unwrap_or_default()
    }

    /// The SNAT column of the conntrack rows whose backend is `backend`.
    fn snats_to(&self, backend: &str) -> Vec<String> {
        self.ct_rows()
            .iter()
            .filter(|r| r["backend"].as_str() == Some(backend))
            .filter_map(|r| r["snat"].as_str().map(str::to_owned))
            .collect()
    }

    /// One of the XDP program's counters.
    fn xdp(&self, counter: &str) -> u64 {
        self.stats()["io"]["xdp"][counter].as_u64().unwrap_or(0)
    }
}

/// Node-2 of the cluster, behind the router, holding node-2's pod 10.244.2.7 (on its
/// loopback; fd00:244:2::7 for IPv6) with an HTTP server on TCP 8080 answering `remote <client
/// address>`:
///
/// ```text
///   np-router eth1 192.168.200.1/24 ── eth0 192.168.200.2/24  <prefix>node2  (10.244.2.7/32)
///   router: 10.244.2.0/24 via 192.168.200.2        node2: default via 192.168.200.1
/// ```
///
/// Node-2 answers whatever address it sees, through the router: an answer to a world client
/// that reached it through node-1's NodePort goes straight to that client (which resets it)
/// unless node-1 masqueraded the flow, so that the answer comes back through node-1.
/// Deleted (by name) on drop, after its processes are ended.
struct RemoteNode {
    ns: String,
}

const REMOTE_POD: &str = "10.244.2.7";
const REMOTE_POD6: &str = "fd00:244:2::7";

impl RemoteNode {
    fn up(lab: &mut Lab) -> RemoteNode {
        let ns = lab.ns("node2");
        let node = RemoteNode { ns: ns.clone() };
        let router = lab.ns("router");
        let sh = |args: &[&str]| {
            let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(&["ip", "netns", "add", &ns]);
        // `ip -n <ns> <words...>`
        let ipn = |ns: &str, cmd: &str| {
            let mut args = vec!["ip", "-n", ns];
            args.extend(cmd.split_whitespace());
            sh(&args);
        };
        ipn(&ns, "link set lo up");
        sh(&[
            "ip", "-n", &router, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        ipn(&router, "addr add 192.168.200.1/24 dev eth1");
        ipn(&router, "addr add fd00:200::1/64 dev eth1 nodad");
        ipn(&router, "link set eth1 up");
        ipn(&router, "route add 10.244.2.0/24 via 192.168.200.2");
        ipn(&router, "-6 route add fd00:244:2::/64 via fd00:200::2");
        ipn(&ns, "addr add 192.168.200.2/24 dev eth0");
        ipn(&ns, "addr add fd00:200::2/64 dev eth0 nodad");
        ipn(&ns, &format!("addr add {REMOTE_POD}/32 dev lo"));
        ipn(&ns, &format!("addr add {REMOTE_POD6}/128 dev lo"));
        ipn(&ns, "link set eth0 up");
        ipn(&ns, "route add default via 192.168.200.1");
        ipn(&ns, "-6 route add default via fd00:200::1");
        let http = lab.tmp.join("http.sh");
        assert!(http.exists(), "start the lab's servers first (http.sh)");
        for listen in [
            "TCP4-LISTEN:8080,reuseaddr,fork",
            "TCP6-LISTEN:8080,reuseaddr,fork,ipv6only=1",
        ] {
            let c = Command::new("ip")
                .args(["netns", "exec", &ns, "socat", listen])
                .arg(format!("SYSTEM:sh {} remote", http.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("socat server on node-2");
            lab.procs.push(c);
        }
        std::thread::sleep(Duration::from_millis(300));
        node
    }
}

impl Drop for RemoteNode {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output();
        if let Ok(out) = out {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                // Only positive pids of processes inside node-2 (never 0: the process group).
                if pid.parse::<i32>().is_ok_and(|p| p > 0) {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A LoadBalancer service (VIP 203.0.113.10, node port 30080) and a ClusterIP service
/// (10.96.0.11) with the same backends; `extra` goes to the LoadBalancer one.
fn remote_services(extra: &str, backends: &str) -> String {
    format!(
        "services:\n  - name: web-remote\n    type: LoadBalancer\n    frontends: [{{ ip: 203.0.113.10, port: 80 }}]\n    node_ports: [{{ port: 30080 }}]\n{extra}    backends:\n{backends}  - name: web-remote-cluster\n    type: ClusterIP\n    frontends: [{{ ip: 10.96.0.11, port: 80 }}]\n    backends:\n{backends}"
    )
}

/// service.go: "should be able to create a functioning NodePort service", with the endpoint on
/// another node (externalTrafficPolicy: Cluster), and "should work for type=LoadBalancer": a
/// world client through the NodePort and the load-balancer VIP gets its answers, and the
/// remote endpoint sees node-1's IP (kube-proxy's masquerade), with the source NAT in `ct
/// list`; a pod through the ClusterIP keeps its address ("should preserve source pod IP for
/// traffic thru service cluster IP"); with externalTrafficPolicy: Local the world client's
/// address is kept ("should preserve source IP": only the local endpoint is used).
#[test]
fn should_be_able_to_create_a_functioning_nodeport_service_with_an_endpoint_on_another_node() {
    let mut lab = Lab::up("hc-");
    lab.start_servers();
    let _node2 = RemoteNode::up(&mut lab);
    let remote_only = format!(
        "      - {{ ip: {REMOTE_POD}, port: 8080 }}\n      - {{ ip: \"{REMOTE_POD6}\", port: 8080 }}\n"
    );
    let state = lab.state_with("state", &remote_services("", &remote_only));
    let np = Nodeplane::start_one(&lab, &state);
    let snat_before = np.xdp("redirect_snat");

    for url in ["http://192.168.100.2:30080/", "http://203.0.113.10/"] {
        for _ in 0..3 {
            let (code, out, _) = lab.curl("router", url);
            assert_eq!(code, 0, "{url}: curl exit {code}; {}", np.log());
            assert_eq!(
                out.trim(),
                "remote 192.168.100.2",
                "{url}: the remote endpoint answers, and sees node-1's IP"
            );
        }
    }
    // IPv6: through the node port on the node's IPv6 address.
    for _ in 0..3 {
        let (code, out, _) = lab.curl("router", "http://[fd00:100::2]:30080/");
        // socat writes an IPv6 peer in full, bracketed.
        let seen = out
            .trim()
            .strip_prefix("remote ")
            .map(|a| a.trim_matches(|c| c == '[' || c == ']'))
            .and_then(|a| a.parse::<std::net::IpAddr>().ok());
        assert_eq!(
            (code, seen),
            (0, "fd00:100::2".parse().ok()),
            "IPv6: the remote endpoint sees node-1's IPv6 address: {out:?}"
        );
    }
    let snats6 = np.snats_to(REMOTE_POD6);
    assert!(
        snats6.len() >= 3 && snats6.iter().all(|s| s.starts_with("[fd00:100::2]:6")),
        "ct list, IPv6: {snats6:?}"
    );
    let snats = np.snats_to(REMOTE_POD);
    assert!(snats.len() >= 6, "ct list shows the source NAT: {snats:?}");
    for s in &snats {
        let (addr, port) = s.rsplit_once(':').unwrap();
        let port: u16 = port.parse().unwrap();
        assert_eq!(addr, "192.168.100.2", "{s}");
        assert!(
            (61000..=65535).contains(&port),
            "{s}: in node.snat_port_range"
        );
    }
    assert!(
        np.xdp("redirect_snat") >= snat_before + 9,
        "the remote endpoint's answers were steered by the SNAT range: {}",
        np.stats()["io"]["xdp"]
    );

    // A pod through the ClusterIP: no masquerade, the endpoint sees the pod.
    let (code, out, _) = lab.curl("client", "http://10.96.0.11/");
    assert_eq!((code, out.trim()), (0, "remote 10.244.1.10"));

    // externalTrafficPolicy: Local: the local endpoint only, the client's address kept.
    republish(
        &np,
        &lab,
        &state,
        &remote_services(
            "    external_traffic_policy: Local\n",
            &format!("      - {{ ip: {WEB1}, port: 8080 }}\n{remote_only}"),
        ),
    );
    for url in ["http://192.168.100.2:30080/", "http://203.0.113.10/"] {
        let (code, out, _) = lab.curl("router", url);
        assert_eq!((code, out.trim()), (0, "web1 192.168.100.1"), "{url}");
    }
    assert_eq!(np.drops("snat-exhausted") + np.drops("snat-no-address"), 0);
}

/// A host interface (runtime/host.rs creates the pair), as in `e2e_host_network.rs`.
const HOST_IFACE: &str = "
  - name: nph1
    role: host
    mac: 02:00:00:00:00:11
    gateway_mac: 02:00:00:00:00:10
    peer: nph0
";

/// networking.go "Granular Checks: Services" "should function for node-Service: http", with
/// the endpoint on another node: the node itself (a host-network client, through a host
/// interface) reaches a ClusterIP and a LoadBalancer VIP with externalTrafficPolicy Local
/// whose only endpoint is on node-2. The node IP is kept and the source port moves into
/// `node.snat_port_range` (kube-proxy's "masquerade LOCAL traffic"), so node-2's answer to the
/// node IP is steered back to nodeplane and restored; with the kernel's ephemeral port the
/// answer went to the kernel, which had never seen the translation and reset it.
#[test]
fn should_function_for_node_service_http_with_an_endpoint_on_another_node() {
    let mut lab = Lab::up("hc-");
    lab.start_servers();
    let _node2 = RemoteNode::up(&mut lab);
    let remote_only = format!(
        "      - {{ ip: {REMOTE_POD}, port: 8080 }}\n      - {{ ip: \"{REMOTE_POD6}\", port: 8080 }}\n"
    );
    let state = lab.state_with(
        "state",
        &remote_services("    external_traffic_policy: Local\n", &remote_only),
    );
    let ifaces = state.join("interfaces.yaml");
    let text = fs::read_to_string(&ifaces).unwrap() + HOST_IFACE;
    fs::write(&ifaces, text).unwrap();
    let np = Nodeplane::start_one(&lab, &state);
    for url in ["http://10.96.0.11/", "http://203.0.113.10/"] {
        for _ in 0..3 {
            let (code, out, _) = lab.curl("node", url);
            assert_eq!(
                (code, out.trim()),
                (0, "remote 192.168.100.2"),
                "{url}: node-2's endpoint answers the node IP; log:\n{}",
                np.log()
            );
        }
    }
    let snats = np.snats_to(REMOTE_POD);
    assert!(
        snats.len() >= 6,
        "ct list shows the node's flows: {snats:?}"
    );
    for s in &snats {
        let (addr, port) = s.rsplit_once(':').unwrap();
        let port: u16 = port.parse().unwrap();
        assert_eq!(addr, "192.168.100.2", "{s}: the node IP kept");
        assert!(
            (61000..=65535).contains(&port),
            "{s}: the port moved into node.snat_port_range"
        );
    }
    assert_eq!(np.drops("snat-exhausted") + np.drops("snat-no-address"), 0);
}

/// A client that keeps its connection: sends lines on request, reads the server's lines.
struct LineClient {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl LineClient {
    /// socat from `ns`, source port `sport` (SO_REUSEADDR, so two clients can share it toward
    /// different destinations, as the kernel allows), to `addr:port`.
    fn connect(lab: &Lab, ns: &str, addr: &str, port: u16, sport: u16) -> LineClient {
        let mut child = Command::new("timeout")
            .args(["20", "ip", "netns", "exec", &lab.ns(ns), "socat", "STDIO"])
            .arg(format!(
                "TCP:{addr}:{port},sourceport={sport},reuseaddr,connect-timeout=3"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat client");
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        LineClient {
            child,
            stdin,
            stdout,
        }
    }

    /// The next line from the server ("" at EOF: the connection failed or closed).
    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut l = String::new();
        let _ = self.stdout.read_line(&mut l);
        l.trim().to_owned()
    }

    fn echo(&mut self, text: &str) -> String {
        use std::io::Write;
        let _ = writeln!(self.stdin, "{text}");
        let _ = self.stdin.flush();
        self.line()
    }
}

impl Drop for LineClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The clash kube-proxy leaves to Linux's NAT (kubernetes#90258, "connection time out for
/// cluster ip of api-server by accident"): one client port reaches the same endpoint through
/// its ClusterIP and then through nodeIP:nodePort while the first connection lives. Both reply
/// tuples would be (endpoint:8080 → client:40000); the second flow's source port is remapped
/// (into `node.snat_port_range`, the client's address kept), both connections work, and `ct
/// list` shows the remapped port.
#[test]
fn should_connect_to_the_same_endpoint_via_cluster_ip_and_node_port_from_the_same_client_port() {
    let mut lab = Lab::up("hc-");
    // web-1 on 8080: the peer's address and port, then an echo (a script: socat splits its
    // address arguments at colons).
    let echo = lab.tmp.join("echo.sh");
    fs::write(
        &echo,
        "#!/bin/sh\necho \"$SOCAT_PEERADDR:$SOCAT_PEERPORT\"\nexec cat\n",
    )
    .unwrap();
    let c = Command::new("ip")
        .args(["netns", "exec", &lab.ns("web1"), "socat"])
        .arg("TCP4-LISTEN:8080,reuseaddr,fork")
        .arg(format!("SYSTEM:sh {}", echo.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat echo server");
    lab.procs.push(c);
    std::thread::sleep(Duration::from_millis(300));
    let services = format!(
        "services:\n  - name: echo\n    type: NodePort\n    frontends: [{{ ip: 10.96.0.12, port: 80 }}]\n    node_ports: [{{ port: 30090 }}]\n    backends:\n      - {{ ip: {WEB1}, port: 8080 }}\n"
    );
    let state = lab.state_with("state", &services);
    let np = Nodeplane::start_one(&lab, &state);

    let mut via_cluster_ip = LineClient::connect(&lab, "client", "10.96.0.12", 80, 40000);
    assert_eq!(
        via_cluster_ip.line(),
        "10.244.1.10:40000",
        "through the ClusterIP: the client's own address and port; {}",
        np.log()
    );
    let mut via_node_port = LineClient::connect(&lab, "client", "192.168.100.2", 30090, 40000);
    let seen = via_node_port.line();
    let (addr, port) = seen
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("second connection failed: {seen:?}; {}", np.stats()));
    let port: u16 = port.parse().unwrap();
    assert_eq!(addr, "10.244.1.10", "the client's address is kept");
    assert!(
        (61000..=65535).contains(&port),
        "the clashing source port is remapped into the SNAT range: {seen}"
    );
    assert_eq!(via_node_port.echo("second"), "second");
    assert_eq!(
        via_cluster_ip.echo("first"),
        "first",
        "the first still works"
    );
    assert_eq!(
        np.snats_to(WEB1),
        vec![format!("10.244.1.10:{port}")],
        "ct list shows the remapped port (and no source NAT on the first flow)"
    );
    assert_eq!(np.drops("ct-invalid"), 0, "{}", np.stats());
}

/// service.go: "should allow pods to hairpin back to themselves through services": the only
/// endpoint reaches itself through the ClusterIP (its source becomes the ClusterIP) and through
/// nodeIP:nodePort (its source becomes the node IP, and its answers, to the node IP in the SNAT
/// port range, are steered to the dataplane, not to the node's kernel).
#[test]
fn should_allow_pods_to_hairpin_back_to_themselves_through_services() {
    let mut lab = Lab::up("hc-");
    lab.start_servers();
    let services = format!(
        "services:\n  - name: web\n    type: NodePort\n    frontends: [{{ ip: 10.96.0.10, port: 80 }}]\n    node_ports: [{{ port: 30080 }}]\n    backends:\n      - {{ ip: {WEB1}, port: 8080 }}\n"
    );
    let state = lab.state_with("state", &services);
    let np = Nodeplane::start_one(&lab, &state);
    for _ in 0..3 {
        let (code, out, _) = lab.curl("web1", "http://10.96.0.10/");
        assert_eq!(
            (code, out.trim()),
            (0, "web1 10.96.0.10"),
            "hairpin through the ClusterIP; {}",
            np.log()
        );
        let (code, out, _) = lab.curl("web1", "http://192.168.100.2:30080/");
        assert_eq!(
            (code, out.trim()),
            (0, "web1 192.168.100.2"),
            "hairpin through the NodePort"
        );
    }
    let snats = np.snats_to(WEB1);
    assert!(
        snats.iter().any(|s| s.starts_with("10.96.0.10:"))
            && snats.iter().any(|s| s.starts_with("192.168.100.2:")),
        "ct list shows both hairpin translations: {snats:?}"
    );
    // Another pod through the same service: no source NAT.
    let (code, out, _) = lab.curl("client", "http://10.96.0.10/");
    assert_eq!((code, out.trim()), (0, "web1 10.244.1.10"));
}
