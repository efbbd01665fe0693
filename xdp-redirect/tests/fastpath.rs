//! Root tests against the real kernel: the TC fast path (`bpf/fastpath.c`) on the host side of
//! two pod veths, real kernel clients (socat, UDP sockets) in the pods at their default
//! offloads (TSO on, CHECKSUM_PARTIAL), flows inserted through `FlowTable`.
//!
//! ```text
//!   pod A np-s7f-fp<pid>-<n>a            node np-s7f-fp<pid>-<n>n                 pod B ...b
//!   s7fp 10.77.1.2 fd77:1::2 <==> s7fa 10.77.1.1 fd77:1::1
//!                                 s7fb 10.77.2.1 fd77:2::1 <==> s7fp 10.77.2.2 fd77:2::2
//!                                 s7fs0 <==> s7fs1   (the slow-path pair)
//!   service 10.96.0.10 / fd96::10: tcp 80 -> 8080, udp 53 -> 5353 on pod B
//! ```
//!
//! The TC program is on s7fa and s7fb (ingress), nothing on the pods' side: they keep TSO.
//! Slow-path frames leave through s7fs0. In the hit and flow-table tests the node's kernel
//! stands in for the worker on the slow path (the SYNs and FINs of a TCP flow must get
//! through): a small TC program on s7fs1 marks them PACKET_HOST, and nftables DNATs them as
//! kube-proxy would. In the miss test s7fs1 carries the XDP program and an AF_XDP socket,
//! as in the daemon.

mod common;

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use nodeplane_dataplane::afxdp::{XskBinding, XskConfig, XskWorker};
use nodeplane_xdp::{
    ifindex_from_slow_path_mac, slow_path_mac, FastPath, FastPathCounter, FastPathCounters,
    FastPathOptions, FlowAction, FlowKey, Loader, SteeringConfig, FLOW_DEC_TTL, FLOW_NAT_DST,
    FLOW_NAT_SRC, FLOW_PEER,
};

const A_MAC: [u8; 6] = [2, 0, 0, 0x77, 1, 2];
const SA_MAC: [u8; 6] = [2, 0, 0, 0x77, 1, 1];
const B_MAC: [u8; 6] = [2, 0, 0, 0x77, 2, 2];
const SB_MAC: [u8; 6] = [2, 0, 0, 0x77, 2, 1];

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The pods, the node and the slow-path pair. Namespaces are deleted on drop.
struct Topo {
    a: Netns,
    b: Netns,
    node: Netns,
    sa: u32,
    sb: u32,
    slow0: u32,
    dir: PathBuf,
}

static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Topo {
    fn new() -> Topo {
        require_root();
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = format!("np-s7f-fp{}-{n}", std::process::id() % 100_000);
        let node = Netns::named(format!("{base}n"));
        let a = Netns::named(format!("{base}a"));
        let b = Netns::named(format!("{base}b"));
        let dir = std::env::temp_dir().join(&base);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (pod, host, pod_mac, host_mac, net) in [
            (&a, "s7fa", A_MAC, SA_MAC, 1),
            (&b, "s7fb", B_MAC, SB_MAC, 2),
        ] {
            veth(
                &node,
                host,
                &mac_str(host_mac),
                pod,
                "s7fp",
                &mac_str(pod_mac),
            );
            node.ip(&["addr", "add", &format!("10.77.{net}.1/24"), "dev", host]);
            node.ip(&[
                "addr",
                "add",
                &format!("fd77:{net}::1/64"),
                "dev",
                host,
                "nodad",
            ]);
            pod.ip(&["addr", "add", &format!("10.77.{net}.2/24"), "dev", "s7fp"]);
            pod.ip(&[
                "addr",
                "add",
                &format!("fd77:{net}::2/64"),
                "dev",
                "s7fp",
                "nodad",
            ]);
            pod.ip(&["route", "add", "default", "via", &format!("10.77.{net}.1")]);
            pod.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd77:{net}::1"),
            ]);
        }
        node.ip(&[
            "link",
            "add",
            "s7fs0",
            "numrxqueues",
            "1",
            "numtxqueues",
            "1",
            "type",
            "veth",
            "peer",
            "name",
            "s7fs1",
            "numrxqueues",
            "1",
            "numtxqueues",
            "1",
        ]);
        node.ip(&["link", "set", "s7fs0", "up"]);
        node.ip(&["link", "set", "s7fs1", "up"]);
        for s in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.s7fs1.rp_filter=0",
        ] {
            node.exec(&["sysctl", "-qw", s]);
        }
        Topo {
            sa: node.ifindex("s7fa"),
            sb: node.ifindex("s7fb"),
            slow0: node.ifindex("s7fs0"),
            a,
            b,
            node,
            dir,
        }
    }

    /// The node's kernel as the slow path: frames from s7fs1 accepted (PACKET_HOST), the
    /// service DNATed by nftables with conntrack.
    fn kernel_slow_path(&self) {
        let src = self.dir.join("to_host.c");
        let obj = self.dir.join("to_host.o");
        std::fs::write(
            &src,
            "#include <linux/bpf.h>\n#include <linux/pkt_cls.h>\n\
             static long (*change_type)(struct __sk_buff *, __u32) = (void *)BPF_FUNC_skb_change_type;\n\
             __attribute__((section(\"tc\"), used)) int to_host(struct __sk_buff *skb)\n\
             { change_type(skb, 0 /* PACKET_HOST */); return TC_ACT_OK; }\n\
             char _license[] __attribute__((section(\"license\"), used)) = \"GPL\";\n",
        )
        .unwrap();
        let arch = std::env::consts::ARCH;
        sh(&[
            "clang",
            "-O2",
            "-target",
            "bpf",
            &format!("-I/usr/include/{arch}-linux-gnu"),
            "-c",
            src.to_str().unwrap(),
            "-o",
            obj.to_str().unwrap(),
        ]);
        self.node
            .exec(&["tc", "qdisc", "add", "dev", "s7fs1", "clsact"]);
        self.node.exec(&[
            "tc",
            "filter",
            "add",
            "dev",
            "s7fs1",
            "ingress",
            "bpf",
            "da",
            "obj",
            obj.to_str().unwrap(),
            "sec",
            "tc",
        ]);
        let rules = self.dir.join("nat.nft");
        std::fs::write(
            &rules,
            "table ip s7f {\n chain pre {\n  type nat hook prerouting priority -100; policy accept;\n\
             ip daddr 10.96.0.10 tcp dport 80 dnat to 10.77.2.2:8080\n\
             ip daddr 10.96.0.10 udp dport 53 dnat to 10.77.2.2:5353\n }\n}\n\
             table ip6 s7f6 {\n chain pre {\n  type nat hook prerouting priority -100; policy accept;\n\
             ip6 daddr fd96::10 tcp dport 80 dnat to [fd77:2::2]:8080\n\
             ip6 daddr fd96::10 udp dport 53 dnat to [fd77:2::2]:5353\n }\n}\n",
        )
        .unwrap();
        self.node.exec(&["nft", "-f", rules.to_str().unwrap()]);
        // conntrack sees only SYN/FIN/RST of a fast-pathed flow: no window tracking.
        self.node.exec(&[
            "sysctl",
            "-qw",
            "net.netfilter.nf_conntrack_tcp_be_liberal=1",
        ]);
    }

    /// Loads the XDP program (its maps are the fast path's "ours" rules) and the fast path,
    /// attached to s7fa and s7fb, slow path through s7fs0. Runs in the node's namespace.
    fn load(&self, max_flows: u32) -> (Loader, FastPath) {
        let (sa, sb, slow0) = (self.sa, self.sb, self.slow0);
        self.node.run(|| {
            let mut loader = Loader::load().expect("load the XDP program");
            loader
                .apply(&SteeringConfig {
                    host_addrs: ["10.77.1.1", "10.77.2.1", "fd77:1::1", "fd77:2::1"]
                        .into_iter()
                        .map(ip)
                        .collect(),
                    ..SteeringConfig::default()
                })
                .expect("steering");
            let mut fp = FastPath::load(&loader, &FastPathOptions { max_flows })
                .expect("load the TC fast path");
            fp.attach(sa).expect("attach s7fa");
            fp.attach(sb).expect("attach s7fb");
            // Idempotent.
            fp.attach(sa).expect("attach s7fa again");
            assert_eq!(fp.is_tcx(sa), Some(true), "tcx on Linux 6.18");
            fp.set_slow_path(slow0).expect("slow path");
            (loader, fp)
        })
    }

    /// Whether `pod`'s s7fp still has TSO (no XDP program on its peer).
    fn tso_on(pod: &Netns) -> bool {
        pod.exec(&["ethtool", "-k", "s7fp"])
            .lines()
            .any(|l| l.trim() == "tcp-segmentation-offload: on")
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn addr16(a: IpAddr) -> (u8, [u8; 16]) {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v) => {
            out[..4].copy_from_slice(&v.octets());
            (4, out)
        }
        IpAddr::V6(v) => (6, v.octets()),
    }
}

fn key(ifindex: u32, proto: u8, src: (IpAddr, u16), dst: (IpAddr, u16)) -> FlowKey {
    let (family, s) = addr16(src.0);
    let (_, d) = addr16(dst.0);
    FlowKey {
        ifindex,
        proto,
        family,
        src: s,
        dst: d,
        sport: src.1.to_be(),
        dport: dst.1.to_be(),
        ..FlowKey::default()
    }
}

/// Both directions of a client -> service flow DNATed to pod B (and reverse-NATed back), as
/// the worker would offer them; `vip == backend`: routed, no NAT flags. `peer`: forward with
/// bpf_redirect_peer; else bpf_redirect to the host-side veth's egress.
fn service_flow(
    t: &Topo,
    proto: u8,
    client: (IpAddr, u16),
    vip: (IpAddr, u16),
    backend: (IpAddr, u16),
    peer: bool,
) -> ([FlowKey; 2], [FlowAction; 2]) {
    let how = if peer { FLOW_PEER } else { 0 } | FLOW_DEC_TTL;
    let (nat_dst, nat_src) = if vip == backend {
        (0, 0)
    } else {
        (FLOW_NAT_DST, FLOW_NAT_SRC)
    };
    let fwd = key(t.sa, proto, client, vip);
    let rev = key(t.sb, proto, backend, client);
    let fwd_a = FlowAction {
        src: addr16(client.0).1,
        dst: addr16(backend.0).1,
        sport: client.1.to_be(),
        dport: backend.1.to_be(),
        egress_ifindex: t.sb,
        dmac: B_MAC,
        smac: SB_MAC,
        flags: how | nat_dst,
        generation: 7,
        ..FlowAction::default()
    };
    let rev_a = FlowAction {
        src: addr16(vip.0).1,
        dst: addr16(client.0).1,
        sport: vip.1.to_be(),
        dport: client.1.to_be(),
        egress_ifindex: t.sa,
        dmac: A_MAC,
        smac: SA_MAC,
        flags: how | nat_src,
        generation: 7,
        ..FlowAction::default()
    };
    ([fwd, rev], [fwd_a, rev_a])
}

fn delta(after: &FastPathCounters, before: &FastPathCounters, c: FastPathCounter) -> u64 {
    after.get(c) - before.get(c)
}

/// Deterministic pseudo-random bytes (xorshift).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn spawn(ns: &Netns, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `c` (killed after 20 s); panics if it failed.
fn wait_ok(mut c: Child, what: &str) {
    let t0 = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            let out = c.wait_with_output().unwrap();
            assert!(
                s.success(),
                "{what} failed ({s}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = c.kill();
            panic!("{what} did not finish in 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Until `ns` listens on TCP `port` (ss), at most 5 s.
fn wait_listen(ns: &Netns, port: u16) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if ns
            .exec(&["ss", "-Hltn", &format!("sport = :{port}")])
            .contains(&format!(":{port}"))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on {port} in {}", ns.name);
}

fn sock_addr(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(v) => format!("{v}:{port}"),
        IpAddr::V6(v) => format!("[{v}]:{port}"),
    }
}

/// A socat transfer of `payload` through the service: `upload` from pod A to pod B, else
/// the other way; the receiver's file must equal it.
fn transfer(t: &Topo, vip: IpAddr, sport: u16, payload: &Path, upload: bool) {
    let v6 = vip.is_ipv6();
    let (listen, connect) = if v6 {
        ("TCP6-LISTEN:8080,reuseaddr", "TCP6")
    } else {
        ("TCP4-LISTEN:8080,reuseaddr", "TCP4")
    };
    let out = t.dir.join(format!("out-{sport}"));
    let target = format!(
        "{connect}:{},sourceport={sport},reuseaddr",
        sock_addr(vip, 80)
    );
    let (server, client) = if upload {
        let s = spawn(
            &t.b,
            &["socat", "-u", listen, &format!("CREATE:{}", out.display())],
        );
        wait_listen(&t.b, 8080);
        let c = spawn(
            &t.a,
            &[
                "socat",
                "-u",
                &format!("OPEN:{}", payload.display()),
                &target,
            ],
        );
        (s, c)
    } else {
        let s = spawn(
            &t.b,
            &[
                "socat",
                "-u",
                &format!("OPEN:{}", payload.display()),
                listen,
            ],
        );
        wait_listen(&t.b, 8080);
        let c = spawn(
            &t.a,
            &["socat", "-u", &target, &format!("CREATE:{}", out.display())],
        );
        (s, c)
    };
    wait_ok(client, "socat client");
    wait_ok(server, "socat server");
    let got = std::fs::read(&out).unwrap();
    let want = std::fs::read(payload).unwrap();
    assert!(
        got == want,
        "{} bytes sent, {} received intact: {}",
        want.len(),
        got.len(),
        got.len() == want.len()
    );
}

/// A UDP exchange through the service `to` (or straight to pod B): pod A's socket (bound to
/// `client`, connected to `to`) sends, pod B's socket sees the client's own address (DNAT only) and answers, pod A's
/// connected socket accepts the answer (so it came from `to`: reverse NAT).
fn udp_exchange(t: &Topo, client: (IpAddr, u16), to: (IpAddr, u16), backend: IpAddr, n: usize) {
    let server =
        t.b.run(|| UdpSocket::bind(SocketAddr::new(backend, 5353)).unwrap());
    let cl =
        t.a.run(|| UdpSocket::bind(SocketAddr::new(client.0, client.1)).unwrap());
    cl.connect(SocketAddr::new(to.0, to.1)).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    cl.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..n {
        let msg = data(1200, i as u64 + 99);
        cl.send(&msg).unwrap();
        let (len, from) = server.recv_from(&mut buf).expect("B receives the datagram");
        assert_eq!(&buf[..len], &msg[..]);
        assert_eq!(from, SocketAddr::new(client.0, client.1), "source kept");
        server.send_to(&msg[..100], from).unwrap();
        let len = cl
            .recv(&mut buf)
            .expect("A receives the answer from the VIP");
        assert_eq!(&buf[..len], &msg[..100]);
    }
}

/// `{Tcp,Udp,Udp6}InCsumErrors` of a namespace, summed.
fn csum_errors(ns: &Netns) -> u64 {
    let out = ns.exec(&["nstat", "-asz"]);
    out.lines()
        .filter(|l| l.contains("InCsumErrors"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

#[test]
fn hits_forward_tcp_and_udp_with_dnat_and_reverse_nat_keeping_gso() {
    let t = Topo::new();
    t.kernel_slow_path();
    let (_loader, fp) = t.load(1024);
    let mut flows = fp.flows().expect("flow table");
    assert_eq!(flows.capacity(), 1024);
    assert!(Topo::tso_on(&t.a) && Topo::tso_on(&t.b), "pods keep TSO");

    let (a4, a6, b4, b6, v4, v6) = (
        ip("10.77.1.2"),
        ip("fd77:1::2"),
        ip("10.77.2.2"),
        ip("fd77:2::2"),
        ip("10.96.0.10"),
        ip("fd96::10"),
    );
    // TCP: peer forwarding for the uploads, egress forwarding with software checksums on
    // the way out (the receiving kernel verifies them) for the downloads. UDP likewise.
    let mut keys = Vec::new();
    let mut actions = Vec::new();
    for (proto, client, vip, backend, peer) in [
        (6, (a4, 40000), (v4, 80), (b4, 8080), true),
        (6, (a4, 40010), (v4, 80), (b4, 8080), false),
        (6, (a6, 40002), (v6, 80), (b6, 8080), true),
        (6, (a6, 40012), (v6, 80), (b6, 8080), false),
        (17, (a4, 40001), (v4, 53), (b4, 5353), false),
        (17, (a6, 40003), (v6, 53), (b6, 5353), true),
        // Pod to pod, routed: MACs and TTL only.
        (17, (a4, 40020), (b4, 5353), (b4, 5353), true),
        (17, (a6, 40021), (b6, 5353), (b6, 5353), false),
    ] {
        let (k, a) = service_flow(&t, proto, client, vip, backend, peer);
        keys.extend(k);
        actions.extend(a);
    }
    assert_eq!(flows.insert_batch(&keys, &actions).unwrap(), 16);
    assert_eq!(flows.len().unwrap(), 16);
    for iface in ["s7fa", "s7fb"] {
        t.node.exec(&["ethtool", "-K", iface, "tx", "off"]);
    }
    let _ = csum_errors(&t.a) + csum_errors(&t.b); // nstat -a resets its history
    let payload = t.dir.join("payload");
    std::fs::write(&payload, data(4 << 20, 1)).unwrap();

    let before = fp.counters().unwrap();
    transfer(&t, v4, 40000, &payload, true);
    let mid = fp.counters().unwrap();
    assert!(
        delta(&mid, &before, FastPathCounter::FastGsoSkbs) > 0,
        "GSO skbs forwarded whole (TSO stayed on): {mid:?}"
    );
    let up = flows.get(&keys[0]).unwrap().expect("entry");
    // All but the last GSO skbs, which carry the FIN to the slow path.
    assert!(up.packets > 1000 && up.bytes > (4 << 20) * 9 / 10, "{up:?}");
    assert!(up.last_seen_ns > 0);
    assert_eq!(up.generation, 7, "the worker's fields are kept");
    assert!(flows.get(&keys[1]).unwrap().unwrap().packets > 0, "ACKs");

    transfer(&t, v4, 40010, &payload, false);
    transfer(&t, v6, 40002, &payload, true);
    transfer(&t, v6, 40012, &payload, false);
    udp_exchange(&t, (a4, 40001), (v4, 53), b4, 5);
    udp_exchange(&t, (a6, 40003), (v6, 53), b6, 5);
    udp_exchange(&t, (a4, 40020), (b4, 5353), b4, 3);
    udp_exchange(&t, (a6, 40021), (b6, 5353), b6, 3);
    let after = fp.counters().unwrap();
    eprintln!("fast path counters: {:?}", after.iter().collect::<Vec<_>>());

    for (i, k) in keys.iter().enumerate() {
        let e = flows.get(k).unwrap().expect("entry");
        assert!(
            e.packets > 0,
            "flow direction {i} forwarded by the fast path: {e:?}"
        );
    }
    let udp = flows.get(&keys[8]).unwrap().unwrap();
    assert_eq!(udp.packets, 5, "one per datagram: {udp:?}");
    assert_eq!(delta(&after, &before, FastPathCounter::RedirectError), 0);
    assert_eq!(delta(&after, &before, FastPathCounter::RewriteError), 0);
    assert_eq!(delta(&after, &before, FastPathCounter::SlowGsoDrop), 0);
    assert_eq!(
        delta(&after, &before, FastPathCounter::FastGsoFin),
        0,
        "FINs go up, on GSO skbs too"
    );
    assert!(
        delta(&after, &before, FastPathCounter::FastFwdBytes) > 4 * (4 << 20) * 9 / 10,
        "{after:?}"
    );
    // The slow path saw the handshakes and the closes only.
    let slow = delta(&after, &before, FastPathCounter::SlowPath);
    assert!((8..200).contains(&slow), "slow path: {slow}");
    assert_eq!(csum_errors(&t.a) + csum_errors(&t.b), 0, "checksum errors");
}

#[test]
fn misses_and_tcp_flags_go_to_the_slow_path_socket_and_the_rest_to_the_kernel() {
    let t = Topo::new();
    let (s7fa, s7fs1) = (t.sa, t.node.ifindex("s7fs1"));
    assert!(s7fa < 1 << 24, "the slow-path MAC holds 24 bits of it");
    let (loader, fp) = t.load(64);
    let mut loader = loader;
    let mut flows = fp.flows().unwrap();
    let (k, a) = service_flow(
        &t,
        6,
        (ip("10.77.1.2"), 40000),
        (ip("10.96.0.10"), 80),
        (ip("10.77.2.2"), 8080),
        true,
    );
    assert_eq!(flows.insert_batch(&k, &a).unwrap(), 2);
    let mut w = t.node.run(|| {
        // s7fs1 as npslow1: the XDP program, registered as a pod interface (rule 7).
        loader.attach("s7fs1", 1).expect("XDP on s7fs1");
        loader
            .apply(&SteeringConfig {
                pod_ifindexes: vec![s7fs1],
                host_addrs: ["10.77.1.1", "10.77.2.1", "fd77:1::1", "fd77:2::1"]
                    .into_iter()
                    .map(ip)
                    .collect(),
                ..SteeringConfig::default()
            })
            .unwrap();
        let w = XskWorker::new(
            &XskConfig {
                ring_size: 256,
                frames_per_socket: 512,
                ..XskConfig::default()
            },
            &[XskBinding {
                iface: "s7fs1",
                queue: 0,
            }],
        )
        .expect("AF_XDP socket on s7fs1");
        loader.register_sockets(w.registrations()).unwrap();
        w
    });
    let before = fp.counters().unwrap();
    // Not ours: ARP, ND and pings to the gateways reach the node's kernel (it answers).
    t.a.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.77.1.1"]);
    t.a.exec(&["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", "fd77:1::1"]);
    // Misses: UDP to a service nobody offered, IPv4 and IPv6.
    t.a.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let s6 = UdpSocket::bind("[::]:0").unwrap();
        for _ in 0..3 {
            s.send_to(b"miss4", "10.96.0.10:9").unwrap();
            s6.send_to(b"miss6", "[fd96::10]:9").unwrap();
        }
    });
    // TCP with flags, of the offered flow: SYN, FIN, RST go up; a bare ACK is fast-pathed.
    let mz = |flags: &str| {
        t.a.exec(&[
            "mausezahn",
            "s7fp",
            "-q",
            "-c",
            "1",
            "-a",
            &mac_str(A_MAC),
            "-b",
            &mac_str(SA_MAC),
            "-A",
            "10.77.1.2",
            "-B",
            "10.96.0.10",
            "-t",
            "tcp",
            &format!("sp=40000,dp=80,flags={flags}"),
        ]);
    };
    for f in ["syn", "fin|ack", "rst", "ack"] {
        mz(f);
    }
    let frames = drain(&mut w, Duration::from_millis(400));
    let after = fp.counters().unwrap();

    // Every frame carries its ingress interface in the slow-path MAC: pod A's, but for one,
    // pod B's kernel's RST answering the bare ACK (a flag: the slow path too).
    let mut from_b = Vec::new();
    for f in &frames {
        let dst: [u8; 6] = f[..6].try_into().unwrap();
        match ifindex_from_slow_path_mac(&dst) {
            Some(i) if i == s7fa => assert_eq!(dst, slow_path_mac(s7fa)),
            Some(i) if i == t.sb => from_b.push(f),
            other => panic!("slow-path frame with MAC {dst:02x?} ({other:?})"),
        }
    }
    assert_eq!(from_b.len(), 1, "B's RST");
    assert_eq!(from_b[0][47] & 0x04, 0x04, "an RST");
    let seen: Vec<Seen> = frames.iter().filter_map(|f| parse(f)).collect();
    let udp = |payload: &[u8]| {
        seen.iter()
            .filter(|s| s.proto == 17 && s.dport == 9 && s.payload == payload)
            .count()
    };
    assert_eq!(udp(b"miss4"), 3, "{seen:?}");
    assert_eq!(udp(b"miss6"), 3, "{seen:?}");
    // TCP flags byte of the IPv4 frames to port 80 (14 + 20 + 13).
    let mut flags: Vec<u8> = frames
        .iter()
        .filter(|f| f.len() > 47 && f[23] == 6 && f[36..38] == [0, 80])
        .map(|f| f[47] & 0x17)
        .collect();
    flags.sort();
    assert_eq!(
        flags,
        vec![0x02, 0x04, 0x11],
        "SYN, RST, FIN|ACK up; ACK not"
    );
    assert_eq!(
        delta(&after, &before, FastPathCounter::FastFwdPackets),
        1,
        "the bare ACK"
    );
    assert_eq!(
        delta(&after, &before, FastPathCounter::SlowPath),
        3 + 3 + 3 + 1
    );
    assert!(
        delta(&after, &before, FastPathCounter::Pass) >= 2 + 2 + 2,
        "pings, ARP, ND: {after:?}"
    );
    assert_eq!(flows.get(&k[0]).unwrap().unwrap().packets, 1);

    // A GSO skb that misses (UDP GSO: one send of 6 x 1200 bytes, a single skb through pod
    // A's veth): dropped when the slow path is said not to segment; by default s7fs0's
    // transmit path (no GSO features while s7fs1 has a native XDP program) cuts it into 6
    // segments for the socket.
    let gso_send = |fill: u8| {
        t.a.run(|| {
            use nix::sys::socket::{setsockopt, sockopt::UdpGsoSegment};
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            setsockopt(&s, UdpGsoSegment, &1200).expect("UDP_SEGMENT");
            s.send_to(&[fill; 6 * 1200], "10.96.0.10:9").unwrap();
        })
    };
    let mut fp = fp;
    fp.set_slow_path_gso(false).unwrap();
    let before = fp.counters().unwrap();
    gso_send(b'd');
    let dropped = drain(&mut w, Duration::from_millis(300));
    let mid = fp.counters().unwrap();
    assert_eq!(
        delta(&mid, &before, FastPathCounter::SlowGsoDrop),
        1,
        "{mid:?}"
    );
    assert!(dropped.is_empty(), "{} frames", dropped.len());
    fp.set_slow_path_gso(true).unwrap();
    gso_send(b's');
    let segs = drain(&mut w, Duration::from_millis(300));
    let after = fp.counters().unwrap();
    assert_eq!(
        delta(&after, &mid, FastPathCounter::SlowGsoSkbs),
        1,
        "{after:?}"
    );
    assert_eq!(delta(&after, &mid, FastPathCounter::SlowPath), 1);
    assert_eq!(delta(&after, &mid, FastPathCounter::SlowGsoDrop), 0);
    let seen: Vec<Seen> = segs.iter().filter_map(|f| parse(f)).collect();
    assert_eq!(
        seen.len(),
        6,
        "segments: {:?}",
        segs.iter().map(Vec::len).collect::<Vec<_>>()
    );
    for (f, s) in segs.iter().zip(&seen) {
        assert_eq!(
            f[..6],
            slow_path_mac(s7fa),
            "each segment carries the slow-path MAC"
        );
        assert_eq!(s.payload, vec![b's'; 1200]);
    }
}

#[test]
fn last_seen_remove_clear_and_a_full_map() {
    let t = Topo::new();
    t.kernel_slow_path();
    let (_loader, fp) = t.load(4);
    let mut flows = fp.flows().unwrap();
    let (a4, b4, v4) = (ip("10.77.1.2"), ip("10.77.2.2"), ip("10.96.0.10"));
    let (k, a) = service_flow(&t, 17, (a4, 41000), (v4, 53), (b4, 5353), true);
    assert_eq!(flows.insert_batch(&k, &a).unwrap(), 2);
    assert_eq!(flows.last_seen(&k[0]).unwrap(), Some(0), "never hit yet");

    let mono = || nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    let t0 = mono();
    udp_exchange(&t, (a4, 41000), (v4, 53), b4, 2);
    let t1 = mono();
    let ns =
        |ts: nix::sys::time::TimeSpec| ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64;
    for key in &k {
        let seen = flows.last_seen(key).unwrap().expect("entry");
        assert!(
            (ns(t0)..=ns(t1)).contains(&seen),
            "last_seen {seen} within the exchange [{}, {}]",
            ns(t0),
            ns(t1)
        );
    }

    // A TTL that would expire goes to the slow path (the worker answers it), entry or not.
    let before = fp.counters().unwrap();
    t.a.run(|| {
        let s = UdpSocket::bind("10.77.1.2:41000").unwrap();
        s.set_ttl(1).unwrap();
        s.send_to(b"ttl", "10.96.0.10:53").unwrap();
    });
    std::thread::sleep(Duration::from_millis(100));
    let after = fp.counters().unwrap();
    assert_eq!(delta(&after, &before, FastPathCounter::SlowPath), 1);
    assert_eq!(delta(&after, &before, FastPathCounter::FastFwdPackets), 0);

    // Removed: the flow goes to the slow path (the kernel here), the entry stays gone.
    assert_eq!(flows.remove_batch(&k[..1]).unwrap(), 1);
    assert_eq!(flows.remove_batch(&k[..1]).unwrap(), 0, "already gone");
    assert_eq!(flows.last_seen(&k[0]).unwrap(), None);
    let before = fp.counters().unwrap();
    udp_exchange(&t, (a4, 41000), (v4, 53), b4, 2);
    let after = fp.counters().unwrap();
    assert_eq!(delta(&after, &before, FastPathCounter::SlowPath), 2);
    assert_eq!(
        delta(&after, &before, FastPathCounter::FastFwdPackets),
        2,
        "replies"
    );

    // A full map: the entries that fit go in, the others fail without disturbing them.
    let more: Vec<FlowKey> = (0..4)
        .map(|i| key(t.sa, 17, (a4, 42000 + i), (v4, 53)))
        .collect();
    let more_a = vec![a[0]; 4];
    assert_eq!(flows.insert_batch(&more, &more_a).unwrap(), 3, "1 + 3 = 4");
    assert!(flows.get(&k[1]).unwrap().is_some(), "the old entry kept");
    assert!(flows.get(&more[3]).unwrap().is_none());
    for m in &more[..3] {
        assert_eq!(flows.get(m).unwrap(), Some(a[0]));
    }
    assert_eq!(flows.len().unwrap(), 4);
    // Updating an entry of a full map works.
    assert_eq!(flows.insert_batch(&more[..1], &a[1..]).unwrap(), 1);
    assert_eq!(flows.get(&more[0]).unwrap(), Some(a[1]));

    // Cleared: everything goes to the slow path.
    assert_eq!(flows.clear().unwrap(), 4);
    assert_eq!(flows.len().unwrap(), 0);
    let before = fp.counters().unwrap();
    udp_exchange(&t, (a4, 41000), (v4, 53), b4, 2);
    let after = fp.counters().unwrap();
    assert_eq!(delta(&after, &before, FastPathCounter::SlowPath), 4);
    assert_eq!(delta(&after, &before, FastPathCounter::FastFwdPackets), 0);

    // Detached: the kernel alone forwards (the nft DNAT), nothing counted any more.
    let mut fp = fp;
    fp.detach(t.sa).unwrap();
    fp.detach(t.sb).unwrap();
    fp.detach(t.sb).unwrap();
    assert!(fp.attached().is_empty());
    let before = fp.counters().unwrap();
    udp_exchange(&t, (a4, 41000), (v4, 53), b4, 1);
    assert_eq!(fp.counters().unwrap(), before);
}

#[test]
fn batches_larger_than_a_clear_chunk() {
    let t = Topo::new();
    let (_loader, fp) = t.load(8192);
    let mut flows = fp.flows().unwrap();
    let (k, a) = service_flow(
        &t,
        17,
        (ip("10.77.1.2"), 1),
        (ip("10.96.0.10"), 53),
        (ip("10.77.2.2"), 5353),
        true,
    );
    let keys: Vec<FlowKey> = (0..5000u32)
        .map(|i| FlowKey {
            sport: (1000 + i as u16).to_be(),
            src: [
                10,
                77,
                (i >> 8) as u8,
                i as u8,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ],
            ..k[0]
        })
        .collect();
    let actions = vec![a[0]; keys.len()];
    for (ks, vs) in keys.chunks(1000).zip(actions.chunks(1000)) {
        assert_eq!(flows.insert_batch(ks, vs).unwrap(), 1000);
    }
    assert_eq!(flows.len().unwrap(), 5000);
    // 500 present, then 500 absent, then 500 present: the absent ones are skipped.
    assert_eq!(flows.remove_batch(&keys[..500]).unwrap(), 500);
    assert_eq!(flows.remove_batch(&keys[..1000]).unwrap(), 500);
    assert_eq!(flows.len().unwrap(), 4000);
    assert_eq!(flows.get(&keys[999]).unwrap(), None);
    assert_eq!(flows.get(&keys[1000]).unwrap(), Some(a[0]));
    assert!(
        flows.insert_batch(&keys[..2], &actions[..1]).is_err(),
        "lengths differ"
    );
    assert_eq!(flows.clear().unwrap(), 4000, "four chunks and a bit");
    assert_eq!(flows.len().unwrap(), 0);
    assert_eq!(flows.clear().unwrap(), 0);
    // Another handle on the same map sees the same entries.
    let other = fp.flows().unwrap();
    assert_eq!(flows.insert_batch(&k, &a).unwrap(), 2);
    assert_eq!(other.get(&k[1]).unwrap(), Some(a[1]));
}
