//! Namespaces, veths and frame helpers for the root tests. Everything created is named
//! `np-<NP_LAB_TAG>x*` (or by the test, with its own prefix: `Netns::named`) and deleted by name on drop,
//! also when a test fails.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    fs::File,
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use nix::sched::{setns, CloneFlags};
use nodeplane_dataplane::afxdp::{SocketId, XskWorker};

/// Fails (never skips) when the tests cannot run.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests need root (network namespaces, XDP, AF_XDP); run as root"
    );
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, returning whether it succeeded.
pub fn sh_ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `np-<NP_LAB_TAG>x<tag><pid><seq><suffix>`: unique per test and per run. `NP_LAB_TAG`
    /// (environment, default empty) keeps several people's runs on one machine apart, as for
    /// the control crate's labs.
    pub fn new(tag: &str, suffix: &str) -> Netns {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "np-{}x{tag}{}{seq}{suffix}",
            lab_tag(),
            std::process::id() % 100_000
        );
        let _ = sh_ok(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// A namespace of exactly this name (a leftover of that name is deleted first).
    pub fn named(name: String) -> Netns {
        let _ = sh_ok(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// `ip netns exec NAME args...`
    pub fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    pub fn exec_ok(&self, args: &[&str]) -> bool {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh_ok(&v)
    }

    /// Runs `f` on a thread inside this namespace (both aya and libxdp resolve interface
    /// names in the calling thread's namespace).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&path);
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    pub fn ifindex(&self, iface: &str) -> u32 {
        let out = self.ip(&["-o", "link", "show", iface]);
        out.split(':').next().unwrap().trim().parse().unwrap()
    }
}

/// `NP_LAB_TAG` from the environment (empty when unset).
pub fn lab_tag() -> String {
    std::env::var("NP_LAB_TAG").unwrap_or_default()
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    setns(&f, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veths (and their peers elsewhere).
        let _ = sh_ok(&["ip", "netns", "del", &self.name]);
    }
}

/// A veth pair with 2 queues each way: `a_if` in `a`, `b_if` in `b`, both up.
pub fn veth(a: &Netns, a_if: &str, a_mac: &str, b: &Netns, b_if: &str, b_mac: &str) {
    a.ip(&[
        "link",
        "add",
        a_if,
        "address",
        a_mac,
        "numrxqueues",
        "2",
        "numtxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "address",
        b_mac,
        "numrxqueues",
        "2",
        "numtxqueues",
        "2",
        "netns",
        &b.name,
    ]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// The standard two-namespace test bed:
///
/// ```text
///   node ns (XDP + AF_XDP)                    peer ns (kernel clients)
///   v0 192.168.50.1/24 fd00:50::1/64  <====>  v1 192.168.50.2/24 fd00:50::2/64
///      02:00:00:00:50:01                          02:00:00:00:50:02
///                                               routes: 10.99.0.0/24, 198.51.100.0/24,
///                                               fd00:99::/64 via the node
/// ```
#[derive(Debug)]
pub struct Bed {
    pub node: Netns,
    pub peer: Netns,
}

pub const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0x50, 1];
pub const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0x50, 2];
pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
pub const PEER_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);

impl Bed {
    pub fn new(tag: &str) -> Bed {
        let node = Netns::new(tag, "n");
        let peer = Netns::new(tag, "p");
        veth(
            &node,
            "v0",
            "02:00:00:00:50:01",
            &peer,
            "v1",
            "02:00:00:00:50:02",
        );
        node.ip(&["addr", "add", "192.168.50.1/24", "dev", "v0"]);
        node.ip(&["addr", "add", "fd00:50::1/64", "dev", "v0", "nodad"]);
        peer.ip(&["addr", "add", "192.168.50.2/24", "dev", "v1"]);
        peer.ip(&["addr", "add", "fd00:50::2/64", "dev", "v1", "nodad"]);
        peer.ip(&["route", "add", "10.99.0.0/24", "via", "192.168.50.1"]);
        peer.ip(&["route", "add", "198.51.100.0/24", "via", "192.168.50.1"]);
        peer.ip(&["-6", "route", "add", "fd00:99::/64", "via", "fd00:50::1"]);
        // The peer keeps its default offloads: its kernel sends TCP/UDP on veth with partial
        // checksums (CHECKSUM_PARTIAL), which `reflect` completes as the pipeline does.
        Bed { node, peer }
    }
}

/// Fields of an Ethernet + IPv4/IPv6 + UDP/ICMP frame the tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub dst_ip: std::net::IpAddr,
    pub proto: u8,
    pub dport: u16,
    pub payload: Vec<u8>,
}

pub fn parse(frame: &[u8]) -> Option<Seen> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    match ethertype {
        0x0800 => {
            let ihl = usize::from(frame.get(14)? & 0xf) * 4;
            let proto = frame[14 + 9];
            let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
            let l4 = 14 + ihl;
            let dport = u16::from_be_bytes([*frame.get(l4 + 2)?, *frame.get(l4 + 3)?]);
            Some(Seen {
                dst_ip: dst.into(),
                proto,
                dport,
                payload: frame.get(l4 + 8..)?.to_vec(),
            })
        }
        0x86dd => {
            let proto = *frame.get(20)?;
            let mut a = [0u8; 16];
            a.copy_from_slice(frame.get(38..54)?);
            let dport = u16::from_be_bytes([*frame.get(56)?, *frame.get(57)?]);
            Some(Seen {
                dst_ip: std::net::Ipv6Addr::from(a).into(),
                proto,
                dport,
                payload: frame.get(62..)?.to_vec(),
            })
        }
        _ => None,
    }
}

/// Turns a received IPv4/IPv6 UDP datagram or ICMP(v6) echo request into its reply in place:
/// swaps MACs, addresses and ports (checksums are unchanged by swaps), echo request becomes
/// echo reply with its checksum adjusted. Returns false for anything else.
pub fn reflect(f: &mut [u8]) -> bool {
    if f.len() < 14 {
        return false;
    }
    complete_partial_checksum(f);
    for i in 0..6 {
        f.swap(i, i + 6);
    }
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 if f.len() >= 34 => {
            let ihl = usize::from(f[14] & 0xf) * 4;
            for i in 0..4 {
                f.swap(26 + i, 30 + i);
            }
            let l4 = 14 + ihl;
            match f[23] {
                17 if f.len() >= l4 + 8 => {
                    f.swap(l4, l4 + 2);
                    f.swap(l4 + 1, l4 + 3);
                    true
                }
                1 if f.len() >= l4 + 4 && f[l4] == 8 => {
                    f[l4] = 0;
                    // RFC 1624: type 8 -> 0 lowers the sum by 0x0800.
                    let c = u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]);
                    let c = ones_add(c, 0x0800);
                    f[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
                    true
                }
                _ => false,
            }
        }
        0x86dd if f.len() >= 54 => {
            for i in 0..16 {
                f.swap(22 + i, 38 + i);
            }
            let l4 = 54;
            match f[20] {
                17 if f.len() >= l4 + 8 => {
                    f.swap(l4, l4 + 2);
                    f.swap(l4 + 1, l4 + 3);
                    true
                }
                58 if f.len() >= l4 + 4 && f[l4] == 128 => {
                    f[l4] = 129;
                    let c = u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]);
                    // Type 128 -> 129 raises the sum by 0x0100: subtract it from the checksum.
                    let c = ones_add(c, !0x0100);
                    f[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
                    true
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// Frames whose partial TCP/UDP checksum the reflectors completed (the peer's kernel sends
/// them at default offloads), with nodeplane's own detection and completion.
pub static COMPLETED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn complete_partial_checksum(f: &mut [u8]) {
    use nodeplane_dataplane::parse::{parse, Parsed};
    if let Ok(Parsed::Ip(m)) = parse(f) {
        if nodeplane_dataplane::partial::complete(f, &m) {
            COMPLETED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn ones_add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// Receives from every socket until nothing arrived for `idle`.
pub fn drain(w: &mut XskWorker, idle: Duration) -> Vec<Vec<u8>> {
    let ids: Vec<SocketId> = w.socket_ids().collect();
    let mut out = Vec::new();
    let mut last = Instant::now();
    loop {
        let mut got = 0;
        for &id in &ids {
            let b = w.rx_burst(id, 64);
            got += b.len();
            for i in 0..b.len() {
                out.push(b.frame(i).to_vec());
            }
            b.finish();
        }
        if got > 0 {
            last = Instant::now();
        } else if last.elapsed() > idle {
            return out;
        } else {
            w.wait_rx(10).expect("poll");
        }
    }
}
