//! Root test against the real kernel: the XDP link pinned in a bpffs outlives its loader (as
//! it outlives the daemon), with the program still dropping (or passing) the steered traffic
//! that finds no socket; a new loader takes the pinned link over in place; unpinning detaches.
//!
//! ```text
//!   node ns np-b-pn<pid>n (XDP on v0; 10.99.0.1 on lo)      peer ns np-b-pn<pid>p
//!   v0 192.168.50.1/24  <==================================>  v1 192.168.50.2/24
//!                                                             route 10.99.0.0/24 via .1
//! ```
//!
//! 10.99.0.0/24 is steered: a ping from the peer to 10.99.0.1 reaches the node's kernel (which
//! answers it) only when the program passes steered traffic without a socket. Each test mounts
//! its own bpffs (unmounted on drop, also on failure: the pins go with it). The second loader
//! reuses the first one's pinned program and maps (same build): no load, counters go on.

mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::*;
use nodeplane_dataplane::afxdp::{XskBinding, XskConfig, XskWorker};
use nodeplane_xdp::{pin, AttachMode, Counter, Counters, Loader, SteeringConfig};

/// A bpffs mounted at a private directory; unmounted (dropping every pin in it) on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount(name: &str) -> Bpffs {
        let dir = std::env::temp_dir().join(name);
        let _ = sh_ok(&["umount", "-l", dir.to_str().unwrap()]);
        std::fs::create_dir_all(&dir).unwrap();
        sh(&["mount", "-t", "bpf", "bpf", dir.to_str().unwrap()]);
        assert!(pin::is_bpffs(&dir));
        Bpffs(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = sh_ok(&["umount", "-l", self.0.to_str().unwrap()]);
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn xdp_state(ns: &Netns, iface: &str) -> &'static str {
    let out = ns.ip(&["link", "show", iface]);
    let first = out.lines().next().unwrap_or_default();
    let words: Vec<&str> = first.split_whitespace().collect();
    if words.contains(&"xdpgeneric") {
        "generic"
    } else if words.contains(&"xdp") || words.contains(&"xdpdrv") {
        "native"
    } else {
        "none"
    }
}

/// The XDP state once it is no longer `from` (or `from` after 5 s): a detach runs under RTNL.
fn xdp_state_after(ns: &Netns, iface: &str, from: &str) -> &'static str {
    let t0 = Instant::now();
    loop {
        let s = xdp_state(ns, iface);
        if s != from || t0.elapsed() > Duration::from_secs(5) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn delta(after: &Counters, before: &Counters, c: Counter) -> u64 {
    after.get(c) - before.get(c)
}

fn steering() -> SteeringConfig {
    SteeringConfig {
        prefixes: vec!["10.99.0.0/24".parse().unwrap()],
        host_addrs: vec!["192.168.50.1".parse().unwrap()],
        ..SteeringConfig::default()
    }
}

fn sockets() -> XskWorker {
    let cfg = XskConfig {
        ring_size: 256,
        frames_per_socket: 512,
        ..XskConfig::default()
    };
    XskWorker::new(&cfg, &[0, 1].map(|queue| XskBinding { iface: "v0", queue }))
        .expect("AF_XDP sockets on v0")
}

/// Pings 10.99.0.1 (steered) from the peer: whether it was answered.
fn ping(peer: &Netns, n: u32) -> bool {
    peer.exec_ok(&[
        "ping",
        "-c",
        &n.to_string(),
        "-i",
        "0.05",
        "-W",
        "1",
        "10.99.0.1",
    ])
}

#[test]
fn pinned_link_outlives_its_loader_and_is_taken_over_in_place() {
    require_root();
    let pid = std::process::id() % 100_000;
    let node = Netns::named(format!("np-b-pn{pid}n"));
    let peer = Netns::named(format!("np-b-pn{pid}p"));
    veth(
        &node,
        "v0",
        "02:00:00:00:52:01",
        &peer,
        "v1",
        "02:00:00:00:52:02",
    );
    node.ip(&["addr", "add", "192.168.50.1/24", "dev", "v0"]);
    node.ip(&["addr", "add", "10.99.0.1/32", "dev", "lo"]);
    peer.ip(&["addr", "add", "192.168.50.2/24", "dev", "v1"]);
    peer.ip(&["route", "add", "10.99.0.0/24", "via", "192.168.50.1"]);
    let fs = Bpffs::mount(&format!("np-b-pn{pid}-bpffs"));
    let dir = fs.0.join("nodeplane");
    assert!(ping(&peer, 1), "without XDP the node's kernel answers");
    let link = pin::link_path(&dir, "v0", AttachMode::Driver);

    // 1. A pinned loader that drops steered traffic without a socket.
    node.run(|| {
        assert!(!pin::ensure_pin_dir(&dir).expect("pin dir on the bpffs"));
        let mut l = Loader::load_pinned(&dir).expect("load");
        assert!(!l.reused(), "nothing pinned yet: loaded");
        assert!(dir
            .join(format!("prog-{}", nodeplane_xdp::object_tag()))
            .exists());
        l.set_no_socket_drop(true).expect("config map");
        l.reserve("v0", 2).expect("reserve");
        let w = sockets();
        l.register_sockets(w.registrations()).expect("register");
        assert_eq!(l.link("v0").expect("attach"), AttachMode::Driver);
        l.apply(&steering()).expect("steering");
        let a = &l.attached()[0];
        assert_eq!(
            (a.pinned.as_deref(), a.took_over),
            (Some(link.as_path()), false)
        );
        assert!(link.exists());
        let c0 = l.counters().unwrap();
        assert!(!ping(&peer, 3), "steered into the sockets, nobody answers");
        let c1 = l.counters().unwrap();
        assert!(delta(&c1, &c0, Counter::RedirectUplink) >= 3, "{c1:?}");
        // Closing the sockets removes them from the XSKMAP (the kernel's xsk_delete_from_maps):
        // the program finds no socket and drops, it does not redirect into closed sockets.
        drop(w);
        assert!(!ping(&peer, 3), "no socket: dropped");
        let c2 = l.counters().unwrap();
        assert_eq!(delta(&c2, &c1, Counter::RedirectUplink), 0, "{c2:?}");
        assert!(delta(&c2, &c1, Counter::DropNoSocket) >= 3, "{c2:?}");
        assert_eq!(delta(&c2, &c1, Counter::PassNoSocket), 0);
    });
    // 2. No loader at all (the daemon exited): still attached, still dropping.
    assert_eq!(xdp_state(&node, "v0"), "native", "the pinned link stays");
    assert!(
        !ping(&peer, 3),
        "fail-closed: the kernel does not get the steered traffic"
    );

    // An older build's maps (a directory stands in for them): removed once this build's
    // program is in every link.
    let old = dir.join("maps-0123456789abcdef");
    std::fs::create_dir(&old).unwrap();

    // 3. A new loader reuses the pinned program and maps, takes the pinned link over (no
    // detach) and passes (fail-open).
    node.run(|| {
        let mut l = Loader::load_pinned(&dir).expect("load");
        assert!(l.reused(), "same build: the pinned program is reused");
        assert_eq!(
            l.steering(),
            &steering().encode().unwrap(),
            "the steering maps read back"
        );
        let c = l.counters().unwrap();
        assert!(
            c.get(Counter::DropNoSocket) >= 6,
            "the drops while no loader ran are counted: {c:?}"
        );
        l.set_no_socket_drop(false).expect("config map");
        assert_eq!(l.attach("v0", 2).expect("take over"), AttachMode::Driver);
        assert!(l.attached()[0].took_over, "{:?}", l.attached());
        assert_eq!(
            pin::remove_other_versions(&dir, &nodeplane_xdp::object_tag()),
            1
        );
        assert!(!old.exists());
        l.apply(&steering()).expect("steering");
        let c0 = l.counters().unwrap();
        assert!(ping(&peer, 3), "passed to the kernel, which answers");
        let c1 = l.counters().unwrap();
        assert!(delta(&c1, &c0, Counter::PassNoSocket) >= 3, "{c1:?}");
    });
    assert_eq!(xdp_state(&node, "v0"), "native");
    assert!(ping(&peer, 2), "the new program stays, passing");

    // 4. Unpinning (`nodeplane detach`) detaches.
    let removed = pin::unpin_all(&dir).expect("unpin");
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(
        (removed[0].iface.as_str(), removed[0].mode),
        ("v0", AttachMode::Driver)
    );
    assert!(
        !Path::new(&dir).exists(),
        "links, program and maps unpinned"
    );
    assert_eq!(xdp_state_after(&node, "v0", "native"), "none");
    assert!(ping(&peer, 1));
}
