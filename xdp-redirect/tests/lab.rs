//! `scripts/lab.sh` builds the example node (a private copy, namespaces prefixed `np-<NP_LAB_TAG>xlab*`),
//! its kernel baseline forwards, and the XDP program with the example's steering splits its
//! traffic as documented: pod traffic to the sockets, ARP/ND/gateway/node-IP traffic to the
//! kernel.

mod common;

use std::{net::UdpSocket, process::Command, time::Duration};

use common::*;
use nodeplane_dataplane::afxdp::{SocketId, XskBinding, XskConfig, XskWorker};
use nodeplane_xdp::{Counter, Loader, NodePort, Proto, SteeringConfig};

struct Lab {
    prefix: String,
}

impl Lab {
    fn up() -> Lab {
        let prefix = format!(
            "np-{}xlab{}-",
            std::env::var("NP_LAB_TAG").unwrap_or_default(),
            std::process::id() % 100_000
        );
        let lab = Lab { prefix };
        lab.run("up");
        lab
    }

    fn run(&self, cmd: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/lab.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(cmd)
            .env("NP_LAB_PREFIX", &self.prefix)
            .output()
            .expect("run lab.sh");
        assert!(
            out.status.success(),
            "lab.sh {cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn ping(&self, from: &str, to: &str) -> bool {
        let v6 = to.contains(':');
        let mut args = vec!["ip", "netns", "exec"];
        let ns = self.ns(from);
        args.push(&ns);
        args.push("ping");
        if v6 {
            args.push("-6");
        }
        args.extend_from_slice(&["-c", "2", "-i", "0.2", "-W", "2", to]);
        sh_ok(&args)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.run("down");
    }
}

fn ns_ifindex(ns: &str, iface: &str) -> u32 {
    let out = sh(&["ip", "-n", ns, "-o", "link", "show", iface]);
    out.split(':').next().unwrap().trim().parse().unwrap()
}

#[test]
fn lab_up_forwards_and_xdp_splits_its_traffic() {
    require_root();
    let lab = Lab::up();
    // Kernel baseline (no XDP yet): pod to pod, pod to router, router to pod, both families.
    for (from, to) in [
        ("client", "10.244.1.21"),
        ("client", "fd00:244:1::22"),
        ("web1", "192.168.100.1"),
        ("router", "10.244.1.10"),
        ("router", "fd00:244:1::21"),
    ] {
        assert!(lab.ping(from, to), "kernel baseline: {from} -> {to}");
    }

    let node = lab.ns("node");
    let pods: Vec<u32> = ["pod-client", "pod-web1", "pod-web2"]
        .iter()
        .map(|i| ns_ifindex(&node, i))
        .collect();
    let cfg = SteeringConfig {
        pod_ifindexes: pods,
        prefixes: [
            "10.244.1.0/24",
            "fd00:244:1::/64",
            "10.96.0.10/32",
            "fd00:96::10/128",
            "203.0.113.10/32",
        ]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect(),
        host_addrs: [
            "192.168.100.2",
            "fd00:100::2",
            "10.244.1.1",
            "fd00:244:1::1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect(),
        nodeports: vec![NodePort {
            addr: "192.168.100.2".parse().unwrap(),
            proto: Proto::Tcp,
            port: 30080,
        }],
        ..SteeringConfig::default()
    };
    let node_path = format!("/run/netns/{node}");
    let client_path = format!("/run/netns/{}", lab.ns("client"));
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&node_path);
            let mut loader = Loader::load().expect("load");
            let ifaces = ["uplink0", "pod-client", "pod-web1", "pod-web2"];
            for i in ifaces {
                loader.attach(i, 2).unwrap_or_else(|e| panic!("{e}"));
            }
            loader.apply(&cfg).expect("apply example steering");
            let bindings: Vec<XskBinding<'_>> = ifaces
                .iter()
                .flat_map(|&iface| (0..2).map(move |queue| XskBinding { iface, queue }))
                .collect();
            let cfg = XskConfig {
                ring_size: 256,
                frames_per_socket: 512,
                ..XskConfig::default()
            };
            let mut w = XskWorker::new(&cfg, &bindings).expect("8 AF_XDP sockets, one UMEM");
            loader
                .register_sockets(w.registrations())
                .expect("register");
            let before = loader.counters().unwrap();

            // Gateway and node IPs stay with the kernel, ARP/ND included.
            assert!(lab.ping("client", "10.244.1.1"));
            assert!(lab.ping("client", "fd00:244:1::1"));
            assert!(lab.ping("router", "192.168.100.2"));
            assert!(lab.ping("router", "fd00:100::2"));
            // Pod to pod UDP is steered (pod rule).
            std::thread::scope(|s2| {
                s2.spawn(|| {
                    enter(&client_path);
                    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                    for _ in 0..5 {
                        sock.send_to(b"to-web1", "10.244.1.21:8080").unwrap();
                    }
                });
            });
            std::thread::sleep(Duration::from_millis(100));
            let ids: Vec<SocketId> = w.socket_ids().collect();
            let names: Vec<String> = ids.iter().map(|&id| w.binding(id).0.to_owned()).collect();
            let mut from_client = 0;
            for _ in 0..20 {
                for &id in &ids {
                    let b = w.rx_burst(id, 64);
                    for i in 0..b.len() {
                        let seen = parse(b.frame(i));
                        if names[usize::from(id.0)] == "pod-client"
                            && seen.is_some_and(|s| s.dport == 8080 && s.payload == b"to-web1")
                        {
                            from_client += 1;
                        }
                    }
                }
                if from_client == 5 {
                    break;
                }
                w.wait_rx(20).unwrap();
            }
            assert_eq!(from_client, 5, "pod UDP reaches the pod-client socket");
            let after = loader.counters().unwrap();
            let d = |c| after.get(c) - before.get(c);
            assert!(d(Counter::PassHost) >= 8, "pings to gateway and node IPs");
            assert!(d(Counter::PassNotIp) >= 1 || d(Counter::PassNd) >= 1);
            assert!(d(Counter::RedirectPod) >= 5);
            assert_eq!(d(Counter::PassNoSocket), 0);
            w.check_accounting().expect("accounting");
        });
    });
}
