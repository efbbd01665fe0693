//! End to end, issue 14 item 5: the node's own traffic through nodeplane and host-network
//! backends, each test named after the sig-network e2e test it follows
//! (kubernetes/test/e2e/network/networking.go "Granular Checks: Services" and "Networking").
//! The lab of `scripts/lab.sh` (namespaces `np-he<pid><n>-*`) with a host interface in the
//! state (`nph1`, peer `nph0`: runtime/host.rs creates the pair, its routes and rules), and
//! `nodeplane run` on real AF_XDP sockets. The node namespace's kernel is the node's stack:
//! its curl and socat are the host-network clients, its socat servers the host-network
//! backends.
//!
//! Needs root, iproute2, nftables, curl, socat, ping. Fails (never skips) without them.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod lab;

use lab::daemon::Nodeplane;
use lab::{root_dir, Lab};

const HOST_IFACE: &str = "
  - name: nph1
    role: host
    mac: 02:00:00:00:00:11
    gateway_mac: 02:00:00:00:00:10
    peer: nph0
";

/// Services of the example plus `host-web` and `host-dns`: backends on the node IPs (a
/// host-network pod).
const HOST_SERVICE: &str = r#"
  - name: host-web
    type: ClusterIP
    frontends:
      - { ip: 10.96.0.70, port: 80, protocol: TCP }
      - { ip: "fd00:96::70", port: 80, protocol: TCP }
    backends:
      - { ip: 192.168.100.2, port: 8090 }
      - { ip: "fd00:100::2", port: 8090 }
  - name: host-dns
    type: ClusterIP
    frontends:
      - { ip: 10.96.0.70, port: 53, protocol: UDP }
    backends:
      - { ip: 192.168.100.2, port: 5390 }
  - name: host-np
    type: NodePort
    node_ports:
      - { port: 30090, protocol: TCP }
    backends:
      - { ip: 192.168.100.2, port: 8090 }
      - { ip: "fd00:100::2", port: 8090 }
  - name: host-np-udp
    type: NodePort
    node_ports:
      - { port: 30091, protocol: UDP }
    backends:
      - { ip: 192.168.100.2, port: 5390 }
  - name: host-np-udp6
    type: NodePort
    node_ports:
      - { port: 30092, protocol: UDP }
    backends:
      - { ip: "fd00:100::2", port: 5391 }
  - name: host-np-closed
    type: NodePort
    node_ports:
      - { port: 30094, protocol: UDP }
    backends:
      - { ip: 192.168.100.2, port: 5399 }
      - { ip: "fd00:100::2", port: 5399 }
  - name: host-lb
    type: LoadBalancer
    external_traffic_policy: Local
    health_check_node_port: 30093
    frontends:
      - { ip: 203.0.113.20, port: 80, protocol: TCP }
    backends:
      - { ip: 192.168.100.2, port: 8090 }
  - name: host-np-local
    type: NodePort
    external_traffic_policy: Local
    node_ports:
      - { port: 30095, protocol: TCP }
    backends:
      - { ip: 192.168.100.2, port: 8090 }
      - { ip: "fd00:100::2", port: 8090 }
  - name: host-np-local-udp
    type: NodePort
    external_traffic_policy: Local
    node_ports:
      - { port: 30096, protocol: UDP }
    backends:
      - { ip: 192.168.100.2, port: 5392 }
  - name: host-np-local-udp6
    type: NodePort
    external_traffic_policy: Local
    node_ports:
      - { port: 30097, protocol: UDP }
    backends:
      - { ip: "fd00:100::2", port: 5391 }
"#;

impl Lab {
    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["10", "ip", "netns", "exec", &self.ns(ns)])
            .args(args)
            .output()
            .expect("run in namespace")
    }

    /// `curl URL` from `ns`: (exit code, body).
    fn curl(&self, ns: &str, url: &str) -> (i32, String) {
        let out = self.exec(ns, &["curl", "-sS", "-g", "-m", "3", url]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    }

    /// One UDP request from `ns` to `addr:port`; the first line answered.
    fn udp(&self, ns: &str, addr: &str, port: u16) -> String {
        let mut c = Command::new("timeout")
            .args(["5", "ip", "netns", "exec", &self.ns(ns)])
            .args(["socat", "-T2", "-"])
            .arg(format!("UDP:{addr}:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat UDP client");
        let mut stdin = c.stdin.take().unwrap();
        stdin.write_all(b"query\n").unwrap();
        let out = c.wait_with_output().unwrap();
        drop(stdin);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    fn server(&mut self, ns: &str, listen: &str, action: &str) {
        let c = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns), "socat", listen, action])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat server");
        self.procs.push(c);
    }

    /// HTTP answering `<name> <client address>` (IPv4 and IPv6) and UDP answering
    /// `answer from <name>`: on 8080 and 5353 in each web pod, on 8090 and 5390 in the node's
    /// own stack (the host-network backend).
    fn start_servers(&mut self) {
        let http = self.tmp.join("http.sh");
        fs::write(
            &http,
            "#!/bin/sh\nread -r req\nprintf 'HTTP/1.0 200 OK\\r\\n\\r\\n%s %s\\n' \"$1\" \"$SOCAT_PEERADDR\"\n",
        )
        .unwrap();
        let h = http.display().to_string();
        for (ns, name, tcp, udp) in [
            ("web1", "web1", 8080, 5353),
            ("web2", "web2", 8080, 5353),
            ("node", "host", 8090, 5390),
        ] {
            self.server(
                ns,
                &format!("TCP6-LISTEN:{tcp},ipv6only=0,reuseaddr,fork"),
                &format!("SYSTEM:sh {h} {name}"),
            );
            self.server(
                ns,
                &format!("UDP4-RECVFROM:{udp},fork"),
                &format!("SYSTEM:read -r q; echo answer from {name}"),
            );
        }
        // The node's UDP servers that name the client they saw.
        self.server(
            "node",
            "UDP6-RECVFROM:5391,fork",
            "SYSTEM:read -r q; echo answer from host6 $SOCAT_PEERADDR",
        );
        self.server(
            "node",
            "UDP4-RECVFROM:5392,fork",
            "SYSTEM:read -r q; echo answer from host4 $SOCAT_PEERADDR",
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    /// The example state with the host interface and the `host-web` service.
    fn host_state(&self) -> PathBuf {
        let dir = self.tmp.join("state");
        fs::create_dir_all(&dir).unwrap();
        for e in fs::read_dir(root_dir().join("examples/state")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let mut text = fs::read_to_string(e.path()).unwrap();
            if name == "interfaces.yaml" {
                text = text
                    .lines()
                    .filter(|l| !l.contains("gateway_mac:"))
                    .collect::<Vec<_>>()
                    .join("\n");
                text.push_str(HOST_IFACE);
            }
            if name == "services.yaml" {
                text.push_str(HOST_SERVICE);
            }
            fs::write(dir.join(&name), text).unwrap();
        }
        dir
    }

    /// `ip <fam> rule show` in the node namespace.
    fn rules(&self, fam: &str) -> String {
        String::from_utf8_lossy(&self.exec("node", &["ip", fam, "rule", "show"]).stdout)
            .into_owned()
    }
}

impl Nodeplane {
    /// Sources of the TCP and UDP flows in conntrack.
    fn flow_sources(&self) -> Vec<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_nodeplane"))
            .args(["ct", "list", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["src"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

/// An HTTP answer `<name> <client address>` split; socat writes IPv6 addresses in full and
/// IPv4 clients of an IPv6 socket as mapped addresses.
fn answer(out: &str) -> (String, Option<IpAddr>) {
    let mut it = out.split_whitespace();
    let name = it.next().unwrap_or("").to_string();
    let addr = it
        .next()
        .map(|a| a.trim_matches(|c| c == '[' || c == ']'))
        .and_then(|a| a.parse::<IpAddr>().ok())
        .map(|a| a.to_canonical());
    (name, addr)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The traffic went through nodeplane: forwarded by the worker, nothing recycled as
/// `pass_dropped`, and the pair's nodeplane end steered frames to the socket.
fn assert_through_nodeplane(np: &Nodeplane) {
    let s = np.stats();
    let passed = &s["workers"][0]["io"]["afxdp"]["counters"]["pass_dropped"];
    assert_eq!(passed.as_u64(), Some(0), "{s}");
    assert!(np.worker("forwarded") > 0, "{s}");
}

/// networking.go "Granular Checks: Services" "should function for node-Service: http": a
/// host-network client reaches a ClusterIP (IPv4 and IPv6) and a NodePort on its own node IP,
/// with the node IP as its source; without nodeplane in the path the backends' replies would
/// reach the kernel un-NATed and the connections would be reset.
#[test]
fn should_function_for_node_service_http() {
    let mut lab = Lab::up("he-");
    lab.start_servers();
    let state = lab.host_state();
    let np = Nodeplane::start_one(&lab, &state);
    for url in [
        "http://10.96.0.10/",
        "http://[fd00:96::10]/",
        "http://192.168.100.2:30080/",
    ] {
        for _ in 0..3 {
            let (code, out) = lab.curl("node", url);
            assert_eq!(code, 0, "{url}: curl exit {code}; log:\n{}", np.log());
            let (name, src) = answer(&out);
            assert!(name == "web1" || name == "web2", "{url}: {out:?}");
            let want = if url.contains("fd00") {
                ip("fd00:100::2")
            } else {
                ip("192.168.100.2")
            };
            assert_eq!(src, Some(want), "{url}: the node IP is the source: {out:?}");
        }
    }
    let srcs = np.flow_sources();
    assert!(
        srcs.iter().any(|s| s == "192.168.100.2") && srcs.iter().any(|s| s == "fd00:100::2"),
        "the node's flows are in conntrack: {srcs:?}"
    );
    assert_through_nodeplane(&np);
    // The routes and rules are there while the daemon runs and gone after an unpinned stop.
    assert!(
        lab.rules("-4").contains("lookup 7600"),
        "{}",
        lab.rules("-4")
    );
    assert!(lab.rules("-4").contains("dport 30080 lookup 7601"));
    let log = np.log();
    assert!(np.stop(), "clean exit: {log}");
    for fam in ["-4", "-6"] {
        let r = lab.rules(fam);
        assert!(
            !r.contains("lookup 7600") && !r.contains("lookup 7601"),
            "{r}"
        );
        assert!(
            r.lines().next().unwrap_or("").starts_with("0:")
                && r.lines().next().unwrap_or("").contains("lookup local"),
            "the local rule back at 0: {r}"
        );
    }
    // The kernel's own paths again: the pods reachable from the node without nodeplane.
    let (code, out) = lab.curl("node", "http://10.244.1.21:8080/");
    assert_eq!(code, 0, "{out}");
    assert_eq!(answer(&out), ("web1".to_string(), Some(ip("10.244.1.1"))));
}

/// networking.go "should function for node-Service: udp": ClusterIP and NodePort over UDP
/// from the node.
#[test]
fn should_function_for_node_service_udp() {
    let mut lab = Lab::up("he-");
    lab.start_servers();
    let state = lab.host_state();
    let np = Nodeplane::start_one(&lab, &state);
    for (addr, port) in [("10.96.0.53", 53), ("192.168.100.2", 30054)] {
        for _ in 0..3 {
            let a = lab.udp("node", addr, port);
            assert!(a.starts_with("answer from web"), "{addr}:{port}: {a:?}");
        }
    }
    assert!(np.flow_sources().iter().any(|s| s == "192.168.100.2"));
    assert_through_nodeplane(&np);
}

/// networking.go "should be able to reach pod on ipv4 and ipv6 ip", from the host network:
/// the node reaches pods directly through nodeplane (source: the node IP, which policy always
/// allows although the web pods' ingress rules name no host identity), and ping works.
#[test]
fn should_be_able_to_reach_pod_on_ipv4_and_ipv6_ip() {
    let mut lab = Lab::up("he-");
    lab.start_servers();
    let state = lab.host_state();
    let np = Nodeplane::start_one(&lab, &state);
    for (url, want, src) in [
        ("http://10.244.1.21:8080/", "web1", "192.168.100.2"),
        ("http://[fd00:244:1::22]:8080/", "web2", "fd00:100::2"),
    ] {
        let (code, out) = lab.curl("node", url);
        assert_eq!(code, 0, "{url}");
        assert_eq!(
            answer(&out),
            (want.to_string(), Some(ip(src))),
            "{url}: from the node IP, i.e. through the host interface (the kernel's own path \
             would use the pods' gateway 10.244.1.1)"
        );
    }
    for ip in ["10.244.1.22", "fd00:244:1::21"] {
        let out = lab.exec("node", &["ping", "-c", "2", "-i", "0.2", "-W", "2", ip]);
        assert!(out.status.success(), "ping {ip}");
    }
    // The pods still reach the node's stack (now through nodeplane and the pair): the
    // host-network server on the node IP, and the gateway address through the kernel.
    let (code, out) = lab.curl("client", "http://192.168.100.2:8090/");
    assert_eq!((code, out.starts_with("host ")), (0, true), "{out}");
    let out = lab.exec(
        "client",
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.244.1.1"],
    );
    assert!(out.status.success(), "ping the pods' gateway");
    assert_through_nodeplane(&np);
}

/// networking.go "Granular Checks: Services" "should function for service endpoints using
/// hostNetwork" (pod-Service(hostNetwork): http and udp): a pod reaches a ClusterIP whose
/// backend is a host-network server on the node IP; the DNATed frames leave on the host
/// interface into the node's stack (before: dropped `pass_dropped`).
#[test]
fn should_function_for_service_endpoints_using_host_network() {
    let mut lab = Lab::up("he-");
    lab.start_servers();
    let state = lab.host_state();
    let np = Nodeplane::start_one(&lab, &state);
    for (url, client) in [
        ("http://10.96.0.70/", "10.244.1.10"),
        ("http://[fd00:96::70]/", "fd00:244:1::10"),
    ] {
        for _ in 0..3 {
            let (code, out) = lab.curl("client", url);
            assert_eq!(code, 0, "{url}: log:\n{}", np.log());
            assert_eq!(
                answer(&out),
                ("host".to_string(), Some(ip(client))),
                "{url}: the host-network backend saw the pod's address"
            );
        }
    }
    let a = lab.udp("client", "10.96.0.70", 53);
    assert_eq!(a, "answer from host");
    // The node itself through the ClusterIP to its own host-network backend: the client is the
    // backend's address, so the flow is a hairpin and leaves from the ClusterIP (a node-IP
    // source would be answered by the kernel directly, never un-NATed).
    for _ in 0..3 {
        let (code, out) = lab.curl("node", "http://10.96.0.70/");
        assert_eq!(code, 0, "node to its own backend: log:\n{}", np.log());
        assert_eq!(
            answer(&out),
            ("host".to_string(), Some(ip("10.96.0.70"))),
            "the backend saw the ClusterIP (hairpin source NAT)"
        );
    }
    assert_through_nodeplane(&np);
}

/// service.go "should be able to create a functioning NodePort service", with the endpoint a
/// host-network pod (the node's own stack) and the client outside the node (the router): TCP
/// over IPv4 and IPv6 and UDP over both to node ports whose backend listens on the node IP, and
/// with externalTrafficPolicy Local (a NodePort over TCP and UDP, both families, and a
/// LoadBalancer VIP) to the same backend. Cluster: the node's stack sees the host interface's
/// far side (169.254.0.1, 100::1) as the client: masqueraded, as kube-proxy does, so that its
/// answers go back through nodeplane. Local: it sees the router's own address (kube-proxy
/// keeps the client's address there), and its answers still go back through nodeplane (the
/// connection's conntrack mark routes them into the pair: to the client's address they would
/// otherwise leave by the node's routes, never un-NATed, and the client would reset them).
#[test]
fn should_be_able_to_create_a_functioning_node_port_service_with_host_network_endpoints() {
    let mut lab = Lab::up("he-");
    lab.start_servers();
    let out = lab.exec(
        "router",
        &[
            "ip",
            "route",
            "add",
            "203.0.113.20/32",
            "via",
            "192.168.100.2",
        ],
    );
    assert!(out.status.success(), "router route to the LB VIP: {out:?}");
    // A strict reverse-path filter on the node (RHEL's default): the Local clients' packets
    // from nph0 still pass (their mark finds the client behind nph0, table 7602).
    let out = lab.exec("node", &["sysctl", "-w", "net.ipv4.conf.all.rp_filter=1"]);
    assert!(out.status.success(), "strict rp_filter: {out:?}");
    let state = lab.host_state();
    let np = Nodeplane::start_one(&lab, &state);
    for (url, seen) in [
        ("http://192.168.100.2:30090/", "169.254.0.1"),
        ("http://[fd00:100::2]:30090/", "100::1"),
        // externalTrafficPolicy Local: the client's address kept.
        ("http://192.168.100.2:30095/", "192.168.100.1"),
        ("http://[fd00:100::2]:30095/", "fd00:100::1"),
        ("http://203.0.113.20/", "192.168.100.1"),
    ] {
        for _ in 0..3 {
            let (code, out) = lab.curl("router", url);
            assert_eq!(code, 0, "{url}: curl exit {code}; log:\n{}", np.log());
            assert_eq!(
                answer(&out),
                ("host".to_string(), Some(ip(seen))),
                "{url}: the source the host-network backend saw"
            );
        }
    }
    for _ in 0..3 {
        let a = lab.udp("router", "192.168.100.2", 30091);
        assert_eq!(a, "answer from host", "UDP NodePort, IPv4");
        let a = lab.udp("router", "[fd00:100::2]", 30092);
        let seen = a
            .strip_prefix("answer from host6 ")
            .map(|r| answer(&format!("x {r}")).1);
        assert_eq!(seen, Some(Some(ip("100::1"))), "UDP NodePort, IPv6: {a:?}");
        // externalTrafficPolicy Local: the router's own address, both families.
        for (addr, port, host, client) in [
            ("192.168.100.2", 30096, "host4", "192.168.100.1"),
            ("[fd00:100::2]", 30097, "host6", "fd00:100::1"),
        ] {
            let a = lab.udp("router", addr, port);
            let seen = a
                .strip_prefix(&format!("answer from {host} "))
                .map(|r| answer(&format!("x {r}")).1);
            assert_eq!(
                seen,
                Some(Some(ip(client))),
                "UDP NodePort, Local, {addr}: {a:?}"
            );
        }
    }
    // The marks that route the Local answers back into the pair, while the daemon runs.
    for fam in ["-4", "-6"] {
        let r = lab.rules(fam);
        assert!(
            r.contains("fwmark 0x1000000/0x1000000 lookup 7602"),
            "{fam}: {r}"
        );
    }
    let nft = lab.exec("node", &["nft", "list", "table", "inet", "nodeplane_host"]);
    assert!(
        String::from_utf8_lossy(&nft.stdout).contains("iifname \"nph0\""),
        "{nft:?}"
    );
    // Nothing listens behind UDP node port 30094: the node's stack answers the masquerade
    // source with an ICMP(v6) port unreachable, which comes back through the pair and is
    // translated to the client (its quoted datagram too), so the client's socket is refused
    // instead of waiting for an answer.
    for addr in ["192.168.100.2", "[fd00:100::2]"] {
        let out = lab.exec(
            "router",
            &[
                "sh",
                "-c",
                &format!("echo query | socat -T3 - UDP:{addr}:30094"),
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Connection refused"),
            "{addr}: the port unreachable reached the client: {out:?}"
        );
    }
    let srcs = np.flow_sources();
    assert!(
        srcs.iter().any(|s| s == "192.168.100.1") && srcs.iter().any(|s| s == "fd00:100::1"),
        "the router's flows are in conntrack: {srcs:?}"
    );
    assert_through_nodeplane(&np);
    // An unpinned stop removes the nftables table with the routes and rules.
    let log = np.log();
    assert!(np.stop(), "clean exit: {log}");
    let nft = lab.exec("node", &["nft", "list", "tables"]);
    assert!(
        nft.status.success() && !String::from_utf8_lossy(&nft.stdout).contains("nodeplane_host"),
        "{nft:?}"
    );
    for fam in ["-4", "-6"] {
        let r = lab.rules(fam);
        assert!(!r.contains("lookup 7602"), "{fam}: {r}");
    }
}

/// A host interface needs nftables: without `nft` on its PATH the daemon rejects the state
/// and says why, before it has created the pair or changed a rule (never half-applied); it
/// keeps generation 0 and retries, as for any failed start of the packet I/O.
#[test]
fn a_host_interface_without_nft_is_refused_at_start() {
    let lab = Lab::up("he-");
    let state = lab.host_state();
    // A PATH with iproute2's `ip` and nothing else.
    let bin = lab.tmp.join("bin-without-nft");
    fs::create_dir_all(&bin).unwrap();
    let which = Command::new("which").arg("ip").output().unwrap();
    let ip_path = String::from_utf8_lossy(&which.stdout).trim().to_string();
    assert!(which.status.success(), "ip not found");
    std::os::unix::fs::symlink(&ip_path, bin.join("ip")).unwrap();
    let cfg = lab.tmp.join("config-nonft.yaml");
    fs::write(
        &cfg,
        format!(
            "state: {{ dir: {} }}\ncontrol_socket: {}\nlog_level: info\nconntrack_snapshot: {}\n\
             io:\n  afxdp: {{ workers: 1, pin_dir: null }}\n",
            state.display(),
            lab.tmp.join("np-nonft.sock").display(),
            lab.tmp.join("nonft.snap").display(),
        ),
    )
    .unwrap();
    let rules_before = lab.rules("-4");
    let log = lab.tmp.join("nodeplane-nonft.log");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("node"), "env"])
        .arg(format!("PATH={}", bin.display()))
        .arg(env!("CARGO_BIN_EXE_nodeplane"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut text = String::new();
    while t0.elapsed() < Duration::from_secs(10) && !text.contains("REJECTED") {
        std::thread::sleep(Duration::from_millis(100));
        text = fs::read_to_string(&log).unwrap_or_default();
    }
    let links = lab.exec("node", &["ip", "-o", "link", "show"]);
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    let rules_after = lab.rules("-4");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("the host interface nph1 needs nft (package nftables)"),
        "the error says what is missing: {text}"
    );
    assert!(
        !links.contains("nph1") && !links.contains("nph0"),
        "no pair created: {links}"
    );
    assert_eq!(rules_after, rules_before, "no rule changed");
}
