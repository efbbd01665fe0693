//! The slow-path veth pair of the kernel flow cache (`io.afxdp.fast_path: tc`): `npslow0`,
//! where the TC program on the pod interfaces redirects every frame the workers must see
//! (its egress), and `npslow1`, its peer, which carries the XDP program (registered as a pod
//! interface, so everything on it is steered) and one AF_XDP socket per worker queue.
//!
//! ```text
//!   pod veth ─ TC ingress ─ miss ─> bpf_redirect(npslow0) ─> npslow1 ─ XDP ─> worker w's socket
//!                                   (dst MAC: slow-path MAC of the pod veth's ifindex)
//! ```
//!
//! The pair lives in the daemon's network namespace; it is created at start (an earlier one,
//! left by a daemon that did not exit cleanly, is deleted first) with one queue per worker,
//! and deleted at a clean exit. Neither end has an address; IPv6 is off on both (no router or
//! neighbour solicitations of their own).

use std::process::Command;

/// The TC program redirects into this end.
pub const SLOW_TX: &str = "npslow0";
/// The workers' sockets are bound to this end's queues.
pub const SLOW_RX: &str = "npslow1";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn exists(name: &str) -> bool {
    std::path::Path::new(&format!("/sys/class/net/{name}")).exists()
}

/// Creates the pair afresh with `queues` queues per end and `mtu` (at least the pod
/// interfaces' largest: a frame longer than npslow0's MTU would not cross), both ends up.
pub fn create(queues: u32, mtu: u16) -> Result<(), String> {
    if exists(SLOW_TX) {
        // A pair left by an earlier daemon (its queue count may differ).
        delete()?;
    }
    let q = queues.max(1).to_string();
    let m = mtu.max(1500).to_string();
    ip(&[
        "link",
        "add",
        SLOW_TX,
        "mtu",
        &m,
        "numrxqueues",
        &q,
        "numtxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        SLOW_RX,
        "mtu",
        &m,
        "numrxqueues",
        &q,
        "numtxqueues",
        &q,
    ])?;
    for end in [SLOW_TX, SLOW_RX] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{end}/disable_ipv6"), "1");
        ip(&["link", "set", end, "up"])?;
    }
    Ok(())
}

/// Deletes the pair (one end takes the other with it); absent: nothing to do.
pub fn delete() -> Result<(), String> {
    if !exists(SLOW_TX) && !exists(SLOW_RX) {
        return Ok(());
    }
    let end = if exists(SLOW_TX) { SLOW_TX } else { SLOW_RX };
    ip(&["link", "del", end])
}
