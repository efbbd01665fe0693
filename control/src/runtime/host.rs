//! The node's own traffic through nodeplane: the host interface (a veth pair) and the kernel
//! routes and rules that send the node's traffic to services, node ports and pods into it.
//!
//! ```text
//!   node's stack (sockets, kubelet, host-network pods)
//!      │ output route lookup of a locally originated packet ("iif lo"):
//!      │   pref 90   iif lo to <node IP> ipproto P dport <node port>  lookup 7601 ─┐
//!      │   pref 100  lookup local        (moved from pref 0, so that pref 90 is first)
//!      │   pref 999  iif lo from <kernel address on a pod interface>  lookup main
//!      │   pref 1000 iif lo lookup 7600: PodCIDRs, frontends, 169.254.0.1, 100::1 ┐ │
//!      │   pref 1001 fwmark 0x1000000/0x1000000 lookup 7602: default (nft-marked) ┤ │
//!      ▼                                          via 169.254.0.1 / fe80::1   ▼ ▼
//!   peer (nph0) ══ veth ══ host interface (nph1): XDP steers every frame to the workers
//!   ◄── replies to the node, service traffic to host-network backends: the pipeline forwards
//!       frames for a node IP out of the host interface, to the peer's MAC
//! ```
//!
//! The gateways `169.254.0.1` and `fe80::1` exist only as permanent neighbour entries on the
//! peer with the host interface's MAC, so the kernel never resolves anything there. Routes
//! carry `src <node IP>`: the node's traffic through the pair comes from a node IP, which the
//! pipeline takes as the host (policy always allows it, as Kubernetes' NetworkPolicy does).
//! Rule pref 999 keeps the kernel's answers from the pods' gateway address (a DNS stub, ping
//! of the gateway: traffic the XDP program passes to the kernel on the pod interfaces) on the
//! kernel's own routes, beside the flows they answer.
//!
//! A remote client of a host-network backend under `external_traffic_policy: Local` keeps its
//! address (the pipeline DNATs only), so the node's stack would answer it by its main table,
//! out of the uplink and never un-NATed. Connections that arrive from the peer are therefore
//! marked in the kernel's conntrack (nftables table `inet nodeplane_host`: prerouting
//! `iifname <peer> ct direction original`, ct mark bit [`MARK`]), the node's packets of such
//! connections get the bit as their packet mark (a `type route` output chain: the kernel routes
//! them again after the mark), and `fwmark MARK/MARK lookup 7602` (pref 1001) sends them back
//! into the pair, whose pipeline reverse-translates them like any reply. The incoming packets
//! carry the mark too, with `src_valid_mark` on the peer, so that a strict reverse-path filter
//! (`net.ipv4.conf.all.rp_filter` 1) finds the client's address behind the peer.
//!
//! Everything is idempotent: the start flushes our tables (and the nftables table) and the rules at our preferences
//! and installs them again (a restart re-adopts the pair); every publication adds and removes
//! only what changed. Unpinned, the daemon's stop removes routes and rules (the kernel's own
//! paths take over); pinned, they stay, so that the node's traffic to services and pods is
//! dropped by the XDP program on the host interface while no daemon runs (fail closed, like
//! the pods' traffic). `nodeplane detach` removes them ([`teardown`]); the pair stays, inert.
//! Done with `ip` (iproute2) and `nft` (nftables) on the control thread, never on the packet
//! path.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use nodeplane_dataplane::flow::{PROTO_TCP, PROTO_UDP};
use nodeplane_dataplane::{snat, Tables};
use nodeplane_state::InterfaceRole;

/// Routing table of the PodCIDRs and service frontends (rule pref [`PREF_MAIN`]).
pub const TABLE: u32 = 7600;
/// Routing table of the node IPs, for node ports (rules pref [`PREF_NODEPORT`]).
pub const TABLE_NODEPORT: u32 = 7601;
pub const PREF_NODEPORT: u32 = 90;
/// Where the `local` table's rule moves from pref 0.
pub const PREF_LOCAL: u32 = 100;
pub const PREF_EXEMPT: u32 = 999;
pub const PREF_MAIN: u32 = 1000;
/// Routing table of the replies to connections that came in from the peer (rule pref
/// [`PREF_MARK`], `fwmark` [`MARK`]): a default route back into the pair.
pub const TABLE_MARK: u32 = 7602;
/// After the others (a marked reply never goes to a node IP or a pod gateway address, and the
/// `local` rule must come first for the marked packets the peer delivers to a node IP),
/// before `main` (32766).
pub const PREF_MARK: u32 = 1001;
/// The conntrack and packet mark bit of connections from the peer (one bit, set with `or`
/// and matched under its mask, so other marks on the node keep their bits). Clear of
/// kube-proxy's 0x4000/0x8000, Cilium's and Calico's low bits, Tailscale's 0xff0000 and
/// WireGuard's 0xca6c; Calico and Cilium also use the high half, but nodeplane replaces them.
pub const MARK: u32 = 0x0100_0000;
/// nodeplane's own nftables table ([`nft_ruleset`]).
pub const NFT_TABLE: &str = "nodeplane_host";
const GW4: &str = "169.254.0.1";
const GW6: &str = "fe80::1";

/// The host interface of a state: (name, peer, MAC, peer's MAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIface {
    pub name: String,
    pub peer: String,
    pub mac: String,
    pub peer_mac: String,
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The host interface of the tables (validation makes sure it has a peer and its MAC).
pub fn host_iface(t: &Tables) -> Option<HostIface> {
    let i = t.ifaces.iter().find(|i| i.role == InterfaceRole::Host)?;
    Some(HostIface {
        name: i.name.clone(),
        peer: i.peer.clone()?,
        mac: mac(i.mac),
        peer_mac: mac(i.gateway_mac?),
    })
}

/// What the kernel must hold: `ip` batch lines of routes and rules, each its own key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// `route replace ...` arguments after `route replace`.
    pub routes: BTreeSet<String>,
    /// `rule add ...` arguments (with `-4`/`-6` family first).
    pub rules: BTreeSet<String>,
}

/// The routes and rules for these tables. `exempt`: the kernel's addresses on the pod
/// interfaces (the pods' gateway), whose answers keep the kernel's routes.
pub fn plan(t: &Tables, h: &HostIface, exempt: &[IpAddr]) -> Plan {
    let mut p = Plan::default();
    let src4 = t.node_ips.iter().map(|a| a.to_ip()).find(IpAddr::is_ipv4);
    let src6 = t.node_ips.iter().map(|a| a.to_ip()).find(IpAddr::is_ipv6);
    let via = |dst: IpAddr, table: u32| -> Option<String> {
        let (gw, src, len) = match dst {
            IpAddr::V4(_) => (GW4, src4?, 32),
            IpAddr::V6(_) => (GW6, src6?, 128),
        };
        let _ = len;
        Some(format!(
            "{dst} via {gw} dev {} onlink src {src} table {table}",
            h.peer
        ))
    };
    let mut dsts: BTreeSet<String> = BTreeSet::new();
    for (net, len) in &t.pod_cidrs {
        let a = net.to_ip();
        if let Some(r) = via(a, TABLE) {
            dsts.insert(r.replacen(&a.to_string(), &format!("{a}/{len}"), 1));
        }
    }
    for a in t.service_ips.keys() {
        let ip = a.to_ip();
        let len = if ip.is_ipv4() { 32 } else { 128 };
        if let Some(r) = via(ip, TABLE) {
            dsts.insert(r.replacen(&ip.to_string(), &format!("{ip}/{len}"), 1));
        }
    }
    // The host-network masquerade sources (`snat::HOST_SNAT_V4`, `HOST_SNAT_V6`): the node's
    // answers to a remote client of a host-network backend go to them, back into the pair.
    for v6 in [false, true] {
        let ip = snat::host_snat_addr(v6).to_ip();
        let len = if v6 { 128 } else { 32 };
        if let Some(r) = via(ip, TABLE) {
            dsts.insert(r.replacen(&ip.to_string(), &format!("{ip}/{len}"), 1));
        }
    }
    p.routes = dsts;
    let mut np_addrs = BTreeSet::new();
    for k in t.frontends.keys() {
        if !t.is_node_ip(&k.addr) {
            continue;
        }
        let proto = match k.proto {
            PROTO_TCP => "tcp",
            PROTO_UDP => "udp",
            _ => continue,
        };
        let ip = k.addr.to_ip();
        let fam = if ip.is_ipv4() { "-4" } else { "-6" };
        let len = if ip.is_ipv4() { 32 } else { 128 };
        p.rules.insert(format!(
            "{fam} pref {PREF_NODEPORT} iif lo to {ip}/{len} ipproto {proto} dport {} lookup {TABLE_NODEPORT}",
            k.port
        ));
        np_addrs.insert(ip);
    }
    for ip in np_addrs {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        if let Some(r) = via(ip, TABLE_NODEPORT) {
            p.routes
                .insert(r.replacen(&ip.to_string(), &format!("{ip}/{len}"), 1));
        }
    }
    for fam in ["-4", "-6"] {
        p.rules
            .insert(format!("{fam} pref {PREF_MAIN} iif lo lookup {TABLE}"));
        p.rules.insert(format!(
            "{fam} pref {PREF_MARK} fwmark {MARK:#x}/{MARK:#x} lookup {TABLE_MARK}"
        ));
    }
    // The replies to connections from the peer (marked by `nft_ruleset`): back into the pair.
    if src4.is_some() {
        p.routes.insert(format!(
            "default via {GW4} dev {} onlink table {TABLE_MARK}",
            h.peer
        ));
    }
    if src6.is_some() {
        p.routes.insert(format!(
            "default via {GW6} dev {} onlink table {TABLE_MARK}",
            h.peer
        ));
    }
    for a in exempt {
        if t.is_node_ip(&(*a).into()) {
            continue;
        }
        let (fam, len) = if a.is_ipv4() { ("-4", 32) } else { ("-6", 128) };
        p.rules.insert(format!(
            "{fam} pref {PREF_EXEMPT} iif lo from {a}/{len} lookup main"
        ));
    }
    p
}

/// Runs `ip -batch -` with these lines (a line starting with `-4 ` or `-6 ` in a batch of
/// that family: a batch line takes no options); `force`: go on after an error (deletions of
/// what may be gone already).
fn ip_batch(lines: &[String], force: bool) -> Result<(), String> {
    for fam in ["-4", "-6", ""] {
        let group: Vec<String> = lines
            .iter()
            .filter_map(|l| match l.split_once(' ') {
                Some((f, rest)) if f == "-4" || f == "-6" => (f == fam).then(|| rest.to_string()),
                _ => fam.is_empty().then(|| l.clone()),
            })
            .collect();
        ip_batch_family(fam, &group, force)?;
    }
    Ok(())
}

fn ip_batch_family(fam: &str, lines: &[String], force: bool) -> Result<(), String> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if !fam.is_empty() {
        cmd.arg(fam);
    }
    if force {
        cmd.arg("-force");
    }
    let mut c = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if let Some(mut i) = c.stdin.take() {
        let text = lines.join("\n") + "\n";
        i.write_all(text.as_bytes())
            .map_err(|e| format!("ip -batch: {e}"))?;
    }
    let out = c
        .wait_with_output()
        .map_err(|e| format!("ip -batch: {e}"))?;
    if out.status.success() || force {
        Ok(())
    } else {
        Err(format!(
            "ip -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// nodeplane's nftables table for a host interface whose peer is `peer`, as one `nft -f`
/// transaction that replaces whatever table of that name exists (the first two lines make
/// sure there is one to delete). Connections whose first packet arrived from the peer get the
/// [`MARK`] bit in their conntrack mark (and that packet in its mark, for the reverse-path
/// filter); the node's own packets of such connections get it as their packet mark, and the
/// `type route` chain makes the kernel route them again (to the rule of [`PREF_MARK`]). After
/// conntrack (priority -200), at mangle (-150).
pub fn nft_ruleset(peer: &str) -> String {
    format!(
        "table inet {NFT_TABLE}\n\
         delete table inet {NFT_TABLE}\n\
         table inet {NFT_TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority mangle; policy accept;\n\
         \t\tiifname \"{peer}\" ct direction original ct mark set ct mark or {MARK:#x} meta mark set meta mark or {MARK:#x}\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype route hook output priority mangle; policy accept;\n\
         \t\tct mark and {MARK:#x} == {MARK:#x} meta mark set meta mark or {MARK:#x}\n\
         \t}}\n\
         }}\n"
    )
}

/// Runs `nft -f -` with `script`.
fn nft(script: &str) -> Result<(), String> {
    let mut c = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft (nftables): {e}"))?;
    if let Some(mut i) = c.stdin.take() {
        i.write_all(script.as_bytes())
            .map_err(|e| format!("nft -f: {e}"))?;
    }
    let out = c.wait_with_output().map_err(|e| format!("nft -f: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -f failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `nft` is there and talks to the kernel's nf_tables (`nft list tables`): checked before the
/// host interface changes anything, so that a node without nftables gets one clear error
/// instead of a half-installed host interface.
pub fn require_nft(iface: &str) -> Result<(), String> {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map_err(|e| {
            format!(
                "the host interface {iface} needs nft (package nftables) to route the replies of \
                 host-network backends back into the pair; cannot run nft: {e}"
            )
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "the host interface {iface} needs nftables: nft list tables: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes nodeplane's nftables table if it exists; nothing when nft is not installed (then
/// no daemon can have created it).
fn nft_teardown() -> Result<(), String> {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).output() else {
        return Ok(());
    };
    let listed = String::from_utf8_lossy(&out.stdout);
    if listed
        .lines()
        .any(|l| l.trim() == format!("table inet {NFT_TABLE}"))
    {
        nft(&format!("delete table inet {NFT_TABLE}\n"))?;
    }
    Ok(())
}

fn sysctl(key: &str, value: &str) -> Result<(), String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|e| format!("sysctl {key}={value}: {e}"))
}

fn exists(name: &str) -> bool {
    std::path::Path::new(&format!("/sys/class/net/{name}")).exists()
}

/// Creates the pair when it is missing (`queues` RX/TX queues per end) or adopts it: both ends
/// up with the state's MACs, the peer's reverse-path filter off and local sources accepted
/// (a node port's reply comes from a node IP), IPv6 off on nodeplane's end (it holds no
/// address), and the gateways as permanent neighbours of the peer.
pub fn ensure_pair(h: &HostIface, queues: u32) -> Result<(), String> {
    require_nft(&h.name)?;
    let q = queues.max(1).to_string();
    if !exists(&h.name) {
        if exists(&h.peer) {
            return Err(format!(
                "host interface {} is missing but its peer {} exists; delete {} or create the pair",
                h.name, h.peer, h.peer
            ));
        }
        ip(&[
            "link",
            "add",
            &h.name,
            "address",
            &h.mac,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &h.peer,
            "address",
            &h.peer_mac,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
        ])?;
        log::info!(
            "host interface: created the veth pair {} (nodeplane) / {} (the node's stack) with {q} queues",
            h.name,
            h.peer
        );
    } else if !exists(&h.peer) {
        return Err(format!(
            "host interface {} exists but its peer {} does not",
            h.name, h.peer
        ));
    }
    ip(&["link", "set", &h.name, "address", &h.mac])?;
    ip(&["link", "set", &h.peer, "address", &h.peer_mac])?;
    let _ = sysctl(&format!("net.ipv6.conf.{}.disable_ipv6", h.name), "1");
    let _ = sysctl(&format!("net.ipv6.conf.{}.accept_dad", h.peer), "0");
    sysctl(&format!("net.ipv4.conf.{}.rp_filter", h.peer), "0")?;
    sysctl(&format!("net.ipv4.conf.{}.accept_local", h.peer), "1")?;
    // The reverse-path check of a marked packet from the peer uses its mark (table 7602).
    sysctl(&format!("net.ipv4.conf.{}.src_valid_mark", h.peer), "1")?;
    ip(&["link", "set", &h.name, "up"])?;
    ip(&["link", "set", &h.peer, "up"])?;
    ip_batch(
        &[
            format!(
                "neigh replace {GW4} lladdr {} dev {} nud permanent",
                h.mac, h.peer
            ),
            format!(
                "-6 neigh replace {GW6} lladdr {} dev {} nud permanent",
                h.mac, h.peer
            ),
        ],
        false,
    )
}

/// The `local` table's rule at [`PREF_LOCAL`] instead of 0 (added first, then the old one
/// removed: local delivery is never without a rule), or back at 0 (`to_zero`).
fn move_local_rule(to_zero: bool) -> Result<(), String> {
    let (add, del) = if to_zero {
        (0, PREF_LOCAL)
    } else {
        (PREF_LOCAL, 0)
    };
    for fam in ["-4", "-6"] {
        let rules = ip(&[fam, "rule", "show"])?;
        let has = |pref: u32| {
            rules
                .lines()
                .any(|l| l.starts_with(&format!("{pref}:")) && l.contains("lookup local"))
        };
        if !has(add) {
            ip(&[
                fam,
                "rule",
                "add",
                "pref",
                &add.to_string(),
                "lookup",
                "local",
            ])?;
        }
        if has(del) {
            ip(&[
                fam,
                "rule",
                "del",
                "pref",
                &del.to_string(),
                "lookup",
                "local",
            ])?;
        }
    }
    Ok(())
}

/// Removes every rule at our preferences, flushes our tables and deletes the nftables table;
/// the `local` rule back at 0.
/// For `nodeplane detach` and the stop of an unpinned daemon; idempotent.
pub fn teardown() -> Result<(), String> {
    let mut lines = Vec::new();
    for fam in ["-4", "-6"] {
        // Only our rules: at our preferences, naming our tables (or, pref 999, `iif lo ...
        // lookup main`); each deleted by its own selector as `ip rule show` prints it.
        for l in ip(&[fam, "rule", "show"])?.lines() {
            let Some((pref, spec)) = l.split_once(':') else {
                continue;
            };
            let spec = spec.trim();
            let ours = match pref.trim().parse::<u32>() {
                Ok(PREF_NODEPORT) => spec.ends_with(&format!("lookup {TABLE_NODEPORT}")),
                Ok(PREF_MAIN) => spec.ends_with(&format!("lookup {TABLE}")),
                Ok(PREF_MARK) => spec.ends_with(&format!("lookup {TABLE_MARK}")),
                Ok(PREF_EXEMPT) => spec.contains("iif lo") && spec.ends_with("lookup main"),
                _ => false,
            };
            if ours {
                lines.push(format!("{fam} rule del pref {} {spec}", pref.trim()));
            }
        }
        for t in [TABLE, TABLE_NODEPORT, TABLE_MARK] {
            lines.push(format!("{fam} route flush table {t}"));
        }
    }
    ip_batch(&lines, true)?;
    nft_teardown()?;
    move_local_rule(true)
}

/// The routes and rules installed; [`Installed::sync`] moves the kernel to a new [`Plan`].
#[derive(Debug, Default)]
pub struct Installed {
    plan: Plan,
}

impl Installed {
    /// From scratch: whatever an earlier daemon left is removed first (the `local` rule stays
    /// moved), then the nftables table and `plan` installed.
    pub fn start(h: &HostIface, plan: &Plan) -> Result<Installed, String> {
        teardown()?;
        move_local_rule(false)?;
        nft(&nft_ruleset(&h.peer))?;
        let mut i = Installed::default();
        i.sync(plan)?;
        Ok(i)
    }

    /// Adds what `plan` has and the kernel lacks, then removes what it no longer has.
    pub fn sync(&mut self, plan: &Plan) -> Result<(), String> {
        let mut lines = Vec::new();
        for r in plan.routes.difference(&self.plan.routes) {
            lines.push(format!("route replace {r}"));
        }
        for r in plan.rules.difference(&self.plan.rules) {
            let (fam, rest) = r.split_at(2);
            lines.push(format!("{fam} rule add{rest}"));
        }
        ip_batch(&lines, false)?;
        let mut gone = Vec::new();
        for r in self.plan.routes.difference(&plan.routes) {
            gone.push(format!("route del {r}"));
        }
        for r in self.plan.rules.difference(&plan.rules) {
            let (fam, rest) = r.split_at(2);
            gone.push(format!("{fam} rule del{rest}"));
        }
        ip_batch(&gone, true)?;
        if !lines.is_empty() || !gone.is_empty() {
            log::info!(
                "host interface: {} route(s), {} rule(s) (+{} -{})",
                plan.routes.len(),
                plan.rules.len(),
                lines.len(),
                gone.len()
            );
        }
        self.plan = plan.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeplane_dataplane::MaglevCache;

    #[test]
    fn plan_of_the_example_node() {
        let state = nodeplane_state::example::state().unwrap();
        let t = Tables::build(&state, 1, &mut MaglevCache::default());
        let h = HostIface {
            name: "nph1".into(),
            peer: "nph0".into(),
            mac: "02:00:00:00:00:11".into(),
            peer_mac: "02:00:00:00:00:10".into(),
        };
        let p = plan(&t, &h, &["10.244.1.1".parse().unwrap()]);
        for r in [
            "10.244.1.0/24 via 169.254.0.1 dev nph0 onlink src 192.168.100.2 table 7600",
            "fd00:244:1::/64 via fe80::1 dev nph0 onlink src fd00:100::2 table 7600",
            "10.96.0.10/32 via 169.254.0.1 dev nph0 onlink src 192.168.100.2 table 7600",
            "169.254.0.1/32 via 169.254.0.1 dev nph0 onlink src 192.168.100.2 table 7600",
            "100::1/128 via fe80::1 dev nph0 onlink src fd00:100::2 table 7600",
            "fd00:96::10/128 via fe80::1 dev nph0 onlink src fd00:100::2 table 7600",
            "192.168.100.2/32 via 169.254.0.1 dev nph0 onlink src 192.168.100.2 table 7601",
            "default via 169.254.0.1 dev nph0 onlink table 7602",
            "default via fe80::1 dev nph0 onlink table 7602",
        ] {
            assert!(p.routes.contains(r), "{r} in {:#?}", p.routes);
        }
        for r in [
            "-4 pref 90 iif lo to 192.168.100.2/32 ipproto tcp dport 30080 lookup 7601",
            "-6 pref 90 iif lo to fd00:100::2/128 ipproto udp dport 30054 lookup 7601",
            "-4 pref 999 iif lo from 10.244.1.1/32 lookup main",
            "-4 pref 1000 iif lo lookup 7600",
            "-6 pref 1000 iif lo lookup 7600",
            "-4 pref 1001 fwmark 0x1000000/0x1000000 lookup 7602",
            "-6 pref 1001 fwmark 0x1000000/0x1000000 lookup 7602",
        ] {
            assert!(p.rules.contains(r), "{r} in {:#?}", p.rules);
        }
        // The nftables table marks what comes from this pair's peer.
        let nft = nft_ruleset(&h.peer);
        assert!(
            nft.contains("iifname \"nph0\" ct direction original ct mark set ct mark or 0x1000000"),
            "{nft}"
        );
        assert!(nft.contains("type route hook output"), "{nft}");
        // No node IP is a service route: the node's own addresses stay local.
        assert!(!p
            .routes
            .iter()
            .any(|r| r.contains("table 7600") && r.starts_with("192.168.100.2")));
    }
}
