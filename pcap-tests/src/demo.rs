//! The bundled demo capture (`examples/capture/`): a few minutes in the life of the example
//! node (`examples/state/`), written by `cargo run -p nodeplane-pcap-tests --bin gen-demo`.
//!
//! What it holds, per input interface:
//! - `pod-client`: an HTTP request to the `web` ClusterIP (handshake, request, close), the same
//!   over IPv6, a DNS query to the `dns` ClusterIP, a connection to a web pod's port 9050 that
//!   policy denies, a ping to a web pod (denied: no ICMP rule), a connection to the outside
//!   world, an ARP request and a packet with a spoofed source address;
//! - `uplink0`: NodePort TCP and UDP connections from the outside, the LoadBalancer VIP, and SSH
//!   to the node (the kernel's traffic);
//! - `pod-web1` / `pod-web2`: the backends' replies, from whichever backend the pipeline chose.
//!
//! The backend of each flow is learned by running the real pipeline over the requests, so the
//! replies come from the right pod on the right interface.

use std::sync::Arc;
use std::time::Duration;

use etherparse::PacketBuilder;
use nodeplane_dataplane::{Action, MaglevCache, Pipeline, Tables};
use nodeplane_state::State;

use crate::pcapio::EPOCH_SECS;

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 2, 0x0a];
const CLIENT: [u8; 4] = [10, 244, 1, 10];
const CLIENT6: [u8; 16] = [0xfd, 0, 2, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
const OUTSIDE: [u8; 4] = [198, 51, 100, 7];

/// One input interface's frames.
pub type Capture = Vec<(String, Frames)>;

/// Timestamped frames of one interface.
pub type Frames = Vec<(Duration, Vec<u8>)>;

#[derive(Clone, Copy)]
enum L4 {
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16 },
    Echo { id: u16 },
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const FIN: u8 = 0x01;

fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: &[u8],
    dst: &[u8],
    l4: L4,
    data: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let ip = if src.len() == 4 {
        eth.ipv4(src.try_into().expect("v4"), dst.try_into().expect("v4"), 64)
    } else {
        eth.ipv6(src.try_into().expect("v6"), dst.try_into().expect("v6"), 64)
    };
    let mut out = Vec::new();
    match l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
        } => {
            let mut b = ip.tcp(sport, dport, 1000, 64240);
            if flags & SYN != 0 {
                b = b.syn();
            }
            if flags & ACK != 0 {
                b = b.ack(2000);
            }
            if flags & PSH != 0 {
                b = b.psh();
            }
            if flags & FIN != 0 {
                b = b.fin();
            }
            b.write(&mut out, data).expect("tcp frame");
        }
        L4::Udp { sport, dport } => ip.udp(sport, dport).write(&mut out, data).expect("udp"),
        L4::Echo { id } => {
            if src.len() == 4 {
                ip.icmpv4_echo_request(id, 1)
                    .write(&mut out, data)
                    .expect("icmp")
            } else {
                ip.icmpv6_echo_request(id, 1)
                    .write(&mut out, data)
                    .expect("icmpv6")
            }
        }
    }
    out
}

fn reverse(l4: L4, flags: u8) -> L4 {
    match l4 {
        L4::Tcp { sport, dport, .. } => L4::Tcp {
            sport: dport,
            dport: sport,
            flags,
        },
        L4::Udp { sport, dport } => L4::Udp {
            sport: dport,
            dport: sport,
        },
        e => e,
    }
}

struct Builder {
    pipeline: Pipeline,
    tables: Arc<Tables>,
    t: u64,
    out: Capture,
}

impl Builder {
    fn push(&mut self, iface: &str, f: Vec<u8>) -> Action {
        self.t += 1_000_000;
        let idx = self
            .tables
            .iface_index(iface)
            .expect("interface of the example");
        let mut copy = f.clone();
        let o = self.pipeline.process_one(&mut copy, idx, self.t);
        let ts = Duration::from_nanos(EPOCH_SECS * 1_000_000_000 + self.t);
        match self.out.iter_mut().find(|(n, _)| n == iface) {
            Some((_, v)) => v.push((ts, f)),
            None => self.out.push((iface.to_string(), vec![(ts, f)])),
        }
        o.action
    }

    /// A request from the client pod; when the pipeline forwards it to a local backend, that
    /// backend answers with `reply_flags` (TCP) or a datagram (UDP) on its own interface.
    fn exchange(&mut self, src: &[u8], dst: &[u8], l4: L4, data: &[u8], reply: Option<u8>) {
        let mac = self.tables.ifaces
            [usize::from(self.tables.iface_index("pod-client").expect("pod-client"))]
        .mac;
        let f = frame(CLIENT_MAC, mac, src, dst, l4, data);
        let mut probe = f.clone();
        let idx = self.tables.iface_index("pod-client").expect("pod-client");
        // Learn the backend from a throw-away pipeline copy of the decision.
        let o = {
            let tables = Arc::clone(&self.tables);
            let mut p = Pipeline::new(tables);
            p.process_one(&mut probe, idx, self.t + 1_000_000)
        };
        self.push("pod-client", f);
        if let (Action::Forward(eg), Some(flags)) = (o.action, reply) {
            let Some((b, _)) = o.backend else { return };
            let ep = self
                .tables
                .endpoints
                .iter()
                .find(|e| e.ips.contains(&b))
                .expect("local backend");
            let itf = self.tables.ifaces[usize::from(eg)].clone();
            let back = reverse(
                match l4 {
                    L4::Tcp { sport, .. } => L4::Tcp {
                        sport,
                        dport: o.backend.map(|x| x.1).unwrap_or(0),
                        flags: 0,
                    },
                    L4::Udp { sport, .. } => L4::Udp {
                        sport,
                        dport: o.backend.map(|x| x.1).unwrap_or(0),
                    },
                    e => e,
                },
                flags,
            );
            let f = frame(ep.mac, itf.mac, b.octets(), src, back, b"");
            self.push(&itf.name, f);
        }
    }
}

/// Builds the demo capture for the example state.
pub fn build(state: &State) -> Capture {
    let tables = Arc::new(Tables::build(state, 1, &mut MaglevCache::default()));
    let mut b = Builder {
        pipeline: Pipeline::new(Arc::clone(&tables)),
        tables,
        t: 0,
        out: Vec::new(),
    };
    let vip = [10, 96, 0, 10];
    let http = |flags| L4::Tcp {
        sport: 40_000,
        dport: 80,
        flags,
    };
    b.exchange(&CLIENT, &vip, http(SYN), b"", Some(SYN | ACK));
    b.exchange(&CLIENT, &vip, http(ACK), b"", None);
    b.exchange(
        &CLIENT,
        &vip,
        http(ACK | PSH),
        b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
        Some(ACK | PSH),
    );
    b.exchange(&CLIENT, &vip, http(ACK | FIN), b"", Some(ACK | FIN));
    b.exchange(&CLIENT, &vip, http(ACK), b"", None);

    let vip6 = [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
    let http6 = L4::Tcp {
        sport: 40_001,
        dport: 80,
        flags: SYN,
    };
    b.exchange(&CLIENT6, &vip6, http6, b"", Some(SYN | ACK));

    let dns = L4::Udp {
        sport: 53_000,
        dport: 53,
    };
    b.exchange(&CLIENT, &[10, 96, 0, 53], dns, b"\x12\x34query", Some(0));

    // Denied by web's ingress policy (9000-9100 deny) and by default deny (ICMP).
    let denied = L4::Tcp {
        sport: 40_002,
        dport: 9050,
        flags: SYN,
    };
    b.exchange(&CLIENT, &[10, 244, 1, 21], denied, b"", None);
    b.exchange(
        &CLIENT,
        &[10, 244, 1, 21],
        L4::Echo { id: 7 },
        b"ping",
        None,
    );
    // To the outside world: routed to the uplink's gateway.
    let out = L4::Tcp {
        sport: 40_003,
        dport: 443,
        flags: SYN,
    };
    b.exchange(&CLIENT, &[198, 51, 100, 10], out, b"", None);
    // A spoofed source on the client's interface.
    let spoof = L4::Udp {
        sport: 1,
        dport: 53,
    };
    b.exchange(&[10, 244, 1, 99], &[10, 96, 0, 53], spoof, b"x", None);
    // ARP: the kernel's.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&CLIENT);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 244, 1, 1]);
    b.push("pod-client", arp);

    // From the router side.
    let up = b.tables.iface_index("uplink0").expect("uplink0");
    let up_mac = b.tables.ifaces[usize::from(up)].mac;
    let node_ip = [192, 168, 100, 2];
    for (dst, l4) in [
        (
            node_ip,
            L4::Tcp {
                sport: 50_000,
                dport: 30_080,
                flags: SYN,
            },
        ),
        (
            node_ip,
            L4::Udp {
                sport: 50_001,
                dport: 30_053,
            },
        ),
        (
            [203, 0, 113, 10],
            L4::Tcp {
                sport: 50_002,
                dport: 80,
                flags: SYN,
            },
        ),
        (
            node_ip,
            L4::Tcp {
                sport: 50_003,
                dport: 22,
                flags: SYN,
            },
        ),
    ] {
        b.push(
            "uplink0",
            frame(ROUTER_MAC, up_mac, &OUTSIDE, &dst, l4, b""),
        );
    }
    b.out
}
