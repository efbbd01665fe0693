//! The uplink's next hop: the gateway's MAC from the kernel's neighbour table (rtnetlink).
//!
//! The kernel keeps ARP/ND (the XDP program passes them); the runtime reads its result:
//! 1. the gateway address: the default route(s) of the main table whose output interface is
//!    the uplink (`RTM_GETROUTE` dump, IPv4 then IPv6);
//! 2. its MAC: the neighbour entry of that address on the uplink (`RTM_GETNEIGH` dump), usable
//!    in states REACHABLE, STALE, DELAY, PROBE, PERMANENT;
//! 3. when the entry is missing or not REACHABLE/PERMANENT, a resolution trigger: one UDP
//!    datagram from the node to the gateway's discard port (9), through the kernel, which makes
//!    the kernel resolve (or re-confirm) the neighbour. Rate-limited by the caller's refresh
//!    period. Traffic forwarded by nodeplane bypasses the kernel, so without this trigger a
//!    STALE entry would never be re-confirmed.
//!
//! Unresolved means the pipeline's uplink `gateway_mac` is `None` and it drops uplink-bound
//! packets as `no-neighbor` (counted), never a silent black hole.
//!
//! The netlink socket goes through nix's safe socket API; message parsing
//! is pure and unit-tested.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const RT_TABLE_MAIN: u32 = 254;

/// Neighbour states (`NUD_*`).
pub mod nud {
    pub const INCOMPLETE: u16 = 0x01;
    pub const REACHABLE: u16 = 0x02;
    pub const STALE: u16 = 0x04;
    pub const DELAY: u16 = 0x08;
    pub const PROBE: u16 = 0x10;
    pub const FAILED: u16 = 0x20;
    pub const NOARP: u16 = 0x40;
    pub const PERMANENT: u16 = 0x80;
    /// States whose link-layer address can be used.
    pub const USABLE: u16 = REACHABLE | STALE | DELAY | PROBE | PERMANENT;
    /// States that need no re-confirmation.
    pub const FRESH: u16 = REACHABLE | PERMANENT | NOARP;
}

/// A default route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRoute {
    pub gateway: IpAddr,
    pub oif: u32,
}

/// A neighbour table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub dst: IpAddr,
    pub mac: Option<[u8; 6]>,
    pub state: u16,
}

pub(crate) fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let v = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((ty, v))
    })
}

fn ip_of(family: u8, v: &[u8]) -> Option<IpAddr> {
    match (i32::from(family), v.len()) {
        (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        (libc::AF_INET6, 16) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(v);
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

fn u32_of(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

/// Parses an `RTM_NEWROUTE` payload (rtmsg + attributes): a default route of the main table
/// with a gateway and an output interface, or `None`.
pub fn parse_route(p: &[u8]) -> Option<DefaultRoute> {
    if p.len() < 12 {
        return None;
    }
    let (family, dst_len, mut table) = (p[0], p[1], u32::from(p[4]));
    if dst_len != 0 {
        return None;
    }
    let (mut gw, mut oif, mut has_dst) = (None, None, false);
    for (ty, v) in attrs(&p[12..]) {
        match ty {
            RTA_GATEWAY => gw = ip_of(family, v),
            RTA_OIF => oif = u32_of(v),
            RTA_TABLE => table = u32_of(v).unwrap_or(table),
            RTA_DST => has_dst = true,
            _ => {}
        }
    }
    if table != RT_TABLE_MAIN || has_dst {
        return None;
    }
    Some(DefaultRoute {
        gateway: gw?,
        oif: oif?,
    })
}

/// Parses an `RTM_NEWNEIGH` payload (ndmsg + attributes).
pub fn parse_neigh(p: &[u8]) -> Option<Neighbour> {
    if p.len() < 12 {
        return None;
    }
    let family = p[0];
    let ifindex = u32::try_from(i32::from_ne_bytes(p[4..8].try_into().ok()?)).ok()?;
    let state = u16::from_ne_bytes([p[8], p[9]]);
    let (mut dst, mut mac) = (None, None);
    for (ty, v) in attrs(&p[12..]) {
        match ty {
            NDA_DST => dst = ip_of(family, v),
            NDA_LLADDR if v.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(v);
                mac = Some(m);
            }
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex,
        dst: dst?,
        mac,
        state,
    })
}

/// Walks the netlink messages in `buf`: calls `f(type, payload)` per message; returns
/// `Ok(true)` at `NLMSG_DONE`, an error for `NLMSG_ERROR` with a non-zero code.
pub(crate) fn walk(mut buf: &[u8], mut f: impl FnMut(u16, &[u8])) -> io::Result<bool> {
    while buf.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap_or([0; 4])) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < NLMSG_HDR || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        let payload = &buf[NLMSG_HDR..len];
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = payload
                    .get(..4)
                    .map(|c| i32::from_ne_bytes(c.try_into().unwrap_or([0; 4])))
                    .unwrap_or(0);
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
            }
            _ => f(ty, payload),
        }
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    Ok(false)
}

/// Sends one dump request (`msg_type` with a header of `hdr_len` zero bytes but the family)
/// and feeds every reply message to `f`. The socket goes through nix's safe wrappers; a
/// receive waits at most one second, so a kernel that never answers is an error, not a hang.
fn dump(
    msg_type: u16,
    family: u8,
    hdr_len: usize,
    mut f: impl FnMut(u16, &[u8]),
) -> io::Result<()> {
    use nix::sys::socket::{
        recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
        SockProtocol, SockType,
    };
    use nix::sys::time::TimeVal;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(1, 0))?;
    let total = NLMSG_HDR + hdr_len;
    let mut req = vec![0u8; total];
    req[0..4].copy_from_slice(&(total as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&msg_type.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[NLMSG_HDR] = family;
    // Port id 0: the kernel.
    sendto(
        fd.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        if n == 0 || walk(&buf[..n], &mut f)? {
            return Ok(());
        }
    }
}

/// The main table's default routes (both families).
pub fn default_routes() -> io::Result<Vec<DefaultRoute>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        dump(RTM_GETROUTE, family, 12, |ty, p| {
            if ty == RTM_NEWROUTE {
                out.extend(parse_route(p));
            }
        })?;
    }
    Ok(out)
}

/// The kernel's neighbour table (both families).
pub fn neighbours() -> io::Result<Vec<Neighbour>> {
    let mut out = Vec::new();
    dump(RTM_GETNEIGH, libc::AF_UNSPEC as u8, 12, |ty, p| {
        if ty == RTM_NEWNEIGH {
            out.extend(parse_neigh(p));
        }
    })?;
    Ok(out)
}

/// What the kernel knows about the uplink's gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayStatus {
    /// The gateway address (the IPv4 default route's first, else IPv6's).
    pub gateway: Option<IpAddr>,
    /// A usable MAC, if any.
    pub mac: Option<[u8; 6]>,
    /// The neighbour state (0: no entry).
    pub state: u16,
}

impl GatewayStatus {
    /// Whether the kernel should be asked to (re-)resolve.
    pub fn needs_trigger(&self) -> bool {
        self.gateway.is_some() && self.state & nud::FRESH == 0
    }
}

/// Picks the gateway of `uplink` from the routes and its MAC from the neighbours.
pub fn gateway_status(uplink: u32, routes: &[DefaultRoute], neigh: &[Neighbour]) -> GatewayStatus {
    let mut gws: Vec<IpAddr> = routes
        .iter()
        .filter(|r| r.oif == uplink)
        .map(|r| r.gateway)
        .collect();
    gws.sort_by_key(|g| g.is_ipv6());
    let mut st = GatewayStatus {
        gateway: gws.first().copied(),
        mac: None,
        state: 0,
    };
    // The first gateway with a usable entry gives the MAC (v4 and v6 of one router agree).
    for gw in &gws {
        if let Some(n) = neigh.iter().find(|n| n.ifindex == uplink && n.dst == *gw) {
            if n.state & nud::USABLE != 0 && n.mac.is_some() {
                return GatewayStatus {
                    gateway: Some(*gw),
                    mac: n.mac,
                    state: n.state,
                };
            }
            if st.state == 0 {
                st.state = n.state;
            }
        }
    }
    st
}

/// Queries the kernel for the gateway of the interface with index `uplink`.
pub fn query_gateway(uplink: u32) -> io::Result<GatewayStatus> {
    let routes = default_routes()?;
    let neigh = neighbours()?;
    Ok(gateway_status(uplink, &routes, &neigh))
}

/// Makes the kernel resolve `gateway`: one UDP datagram to its discard port through the
/// kernel's stack (the kernel queues it while it resolves the neighbour).
pub fn trigger_resolution(gateway: IpAddr) -> io::Result<()> {
    let bind: SocketAddr = if gateway.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(bind)?;
    s.send_to(b"\0", SocketAddr::new(gateway, 9))?;
    Ok(())
}

/// The gateway's MAC for the daemon's first tables: what the kernel has (a usable entry is
/// taken at once), else what it resolves within `wait` after one trigger (looked up every
/// 2 ms). Called before the first publication, so that the node does not report itself
/// running while its first uplink-bound frames (a NodePort's SYN-ACK to the router) would
/// drop `no-neighbor` until the watcher's first report is published. `None`: no gateway, no
/// answer within `wait`, or a lookup error (the watcher goes on from there).
pub fn resolve_at_start(ifindex: u32, wait: std::time::Duration) -> Option<[u8; 6]> {
    let t0 = std::time::Instant::now();
    let mut triggered = false;
    loop {
        let st = query_gateway(ifindex).ok()?;
        if st.mac.is_some() {
            return st.mac;
        }
        let gw = st.gateway?;
        if t0.elapsed() >= wait {
            return None;
        }
        if !triggered {
            triggered = true;
            if let Err(e) = trigger_resolution(gw) {
                log::debug!("resolution trigger toward {gw} failed: {e}");
                return None;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// What the watcher last learnt about the uplink's gateway (shown by `nodeplane status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NeighbourStatus {
    pub uplink: Option<String>,
    pub gateway: Option<IpAddr>,
    /// The MAC in the published tables (the kernel's, else the state's static value).
    pub mac: Option<String>,
    /// Where `mac` came from: `kernel`, `state` or `none`.
    pub source: String,
    /// The kernel's neighbour state of the gateway (`NUD_*`, 0: no entry).
    pub kernel_state: u16,
    pub lookups: u64,
    pub lookup_errors: u64,
    /// Resolution triggers sent (entry missing or not REACHABLE).
    pub triggers: u64,
    /// Lookups that found no usable MAC.
    pub unresolved: u64,
}

/// One reading of the watcher: the gateway's MAC as the kernel last told it (`None`: the
/// kernel has no usable entry) and the counters so far. A lookup that failed (netlink error)
/// changes nothing but the counters: the MAC of the last successful lookup is reported again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourReport {
    pub mac: Option<[u8; 6]>,
    pub status: NeighbourStatus,
}

/// What the watcher knows between lookups: the counters and the MAC of the last successful
/// lookup.
#[derive(Debug, Default)]
struct Readings {
    status: NeighbourStatus,
    mac: Option<[u8; 6]>,
    /// Consecutive failed lookups (the first one of a run is logged, and the recovery).
    failing: u64,
    /// The last reading found no usable entry while a MAC was known: the MAC is kept for
    /// one more reading, taken soon, and while the kernel resolves (a re-created uplink is a
    /// new device with an empty neighbour table: the trigger resolves the same router within
    /// milliseconds, and clearing the MAC in between would drop the uplink-bound frames of
    /// that moment).
    clearing: bool,
}

impl Readings {
    /// Folds one lookup in; returns the gateway to send a resolution trigger to, if any.
    fn fold(&mut self, lookup: io::Result<GatewayStatus>) -> Option<IpAddr> {
        self.status.lookups += 1;
        match lookup {
            Ok(st) => {
                if self.failing > 0 {
                    crate::info_limited!(
                        "neighbour-lookup-ok",
                        "neighbour lookup for the uplink gateway works again (after {} failures)",
                        self.failing
                    );
                    self.failing = 0;
                }
                self.status.gateway = st.gateway;
                self.status.kernel_state = st.state;
                if st.mac.is_none() {
                    self.status.unresolved += 1;
                }
                // No usable entry while a MAC is known: kept for the next reading, and for as
                // long as the kernel is resolving (INCOMPLETE); cleared when the entry is still
                // missing after a trigger, or FAILED.
                if st.mac.is_none()
                    && self.mac.is_some()
                    && (!self.clearing || st.state & nud::INCOMPLETE != 0)
                {
                    self.clearing = true;
                } else if st.mac != self.mac {
                    self.clearing = false;
                    // Limited: a gateway that flaps (resolved, unresolved, ...) logs each change.
                    crate::info_limited!(
                        "neighbour-mac",
                        "uplink gateway {:?}: kernel MAC {} (neighbour state {:#x})",
                        st.gateway,
                        st.mac
                            .map(|m| nodeplane_state::MacAddr(m).to_string())
                            .unwrap_or_else(|| "unresolved".into()),
                        st.state
                    );
                    self.mac = st.mac;
                } else {
                    self.clearing = false;
                }
                if st.needs_trigger() {
                    self.status.triggers += 1;
                    st.gateway
                } else {
                    None
                }
            }
            Err(e) => {
                // A failed lookup says nothing about the neighbour: keep the last MAC (a
                // transient netlink error must not clear the gateway and republish).
                self.status.lookup_errors += 1;
                self.failing += 1;
                if self.failing == 1 {
                    crate::warn_limited!(
                        "neighbour-lookup-failed",
                        "neighbour lookup for the uplink gateway failed: {e}; keeping the last MAC until a lookup works"
                    );
                }
                None
            }
        }
    }

    fn report(&self) -> NeighbourReport {
        NeighbourReport {
            mac: self.mac,
            status: self.status.clone(),
        }
    }
}

/// Reads the uplink gateway's neighbour entry every `refresh` (first at once), triggers its
/// resolution when it is missing or not fresh, and reports every reading through `report`
/// (the daemon turns a changed MAC into a new publication). Runs until `stop` is set (set it,
/// then unpark the thread: it waits parked between lookups). A failed lookup keeps the last MAC (see [`NeighbourReport`]); no
/// usable entry reports `mac: None` (the state's static MAC, if any, applies; else
/// uplink-bound packets drop `no-neighbor`, counted). The uplink is looked up by name at
/// every reading: deleted and re-created, it has another ifindex (and routes over it); while
/// it is gone, the reading fails and keeps the last MAC.
pub fn watch(
    uplink: String,
    refresh: std::time::Duration,
    stop: &std::sync::atomic::AtomicBool,
    mut report: impl FnMut(NeighbourReport),
) {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let mut r = Readings {
        status: NeighbourStatus {
            uplink: Some(uplink.clone()),
            ..NeighbourStatus::default()
        },
        ..Readings::default()
    };
    let mut unresolved_streak = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let lookup = nix::net::if_::if_nametoindex(uplink.as_str())
            .map_err(|e| io::Error::other(format!("uplink {uplink}: {e}")))
            .and_then(query_gateway);
        if let Some(gw) = r.fold(lookup) {
            if let Err(e) = trigger_resolution(gw) {
                log::debug!("resolution trigger toward {gw} failed: {e}");
            }
        }
        report(r.report());
        // Unresolved: look again soon (the trigger usually resolves within milliseconds),
        // backing off 20, 40, 80 ... ms up to the refresh period; resolved: every `refresh`.
        let wait = if r.mac.is_none() || r.clearing {
            unresolved_streak = (unresolved_streak + 1).min(16);
            refresh.min(Duration::from_millis(10u64 << unresolved_streak.min(8)))
        } else {
            unresolved_streak = 0;
            refresh
        };
        // Parked, not asleep: whoever sets `stop` unparks this thread, so a stop never waits
        // for the rest of a period (spurious wake-ups just loop).
        while !stop.load(Ordering::Relaxed) {
            let Some(left) = wait.checked_sub(t0.elapsed()) else {
                break;
            };
            std::thread::park_timeout(left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(v);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn route(family: u8, dst_len: u8, table: u8, extra: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![family, dst_len, 0, 0, table, 3, 0, 1, 0, 0, 0, 0];
        for a in extra {
            p.extend_from_slice(a);
        }
        p
    }

    #[test]
    fn default_routes_are_parsed_and_others_ignored() {
        let v4 = route(
            libc::AF_INET as u8,
            0,
            254,
            &[
                attr(RTA_GATEWAY, &[192, 168, 100, 1]),
                attr(RTA_OIF, &7u32.to_ne_bytes()),
            ],
        );
        assert_eq!(
            parse_route(&v4),
            Some(DefaultRoute {
                gateway: "192.168.100.1".parse().unwrap(),
                oif: 7
            })
        );
        let gw6: Ipv6Addr = "fd00:100::1".parse().unwrap();
        let v6 = route(
            libc::AF_INET6 as u8,
            0,
            254,
            &[
                attr(RTA_TABLE, &254u32.to_ne_bytes()),
                attr(RTA_GATEWAY, &gw6.octets()),
                attr(RTA_OIF, &7u32.to_ne_bytes()),
            ],
        );
        assert_eq!(parse_route(&v6).unwrap().gateway, IpAddr::V6(gw6));
        // A /24, another table, no gateway: not default routes.
        let net = route(
            libc::AF_INET as u8,
            24,
            254,
            &[attr(RTA_OIF, &7u32.to_ne_bytes())],
        );
        assert_eq!(parse_route(&net), None);
        let local = route(
            libc::AF_INET as u8,
            0,
            255,
            &[
                attr(RTA_GATEWAY, &[1, 2, 3, 4]),
                attr(RTA_OIF, &7u32.to_ne_bytes()),
            ],
        );
        assert_eq!(parse_route(&local), None);
        let no_gw = route(
            libc::AF_INET as u8,
            0,
            254,
            &[attr(RTA_OIF, &7u32.to_ne_bytes())],
        );
        assert_eq!(parse_route(&no_gw), None);
        // Garbage never panics.
        for cut in 0..v6.len() {
            let _ = parse_route(&v6[..cut]);
        }
    }

    fn neigh(ifindex: i32, state: u16, dst: &[u8], mac: Option<[u8; 6]>) -> Vec<u8> {
        let family = if dst.len() == 4 {
            libc::AF_INET
        } else {
            libc::AF_INET6
        } as u8;
        let mut p = vec![family, 0, 0, 0];
        p.extend_from_slice(&ifindex.to_ne_bytes());
        p.extend_from_slice(&state.to_ne_bytes());
        p.extend_from_slice(&[0, 1]);
        p.extend_from_slice(&attr(NDA_DST, dst));
        if let Some(m) = mac {
            p.extend_from_slice(&attr(NDA_LLADDR, &m));
        }
        p
    }

    #[test]
    fn gateway_mac_from_neighbours() {
        let mac = [2, 0, 0, 0, 0, 0xfe];
        let n = parse_neigh(&neigh(7, nud::STALE, &[192, 168, 100, 1], Some(mac))).unwrap();
        assert_eq!(n.mac, Some(mac));
        assert_eq!(n.ifindex, 7);
        let routes = [DefaultRoute {
            gateway: "192.168.100.1".parse().unwrap(),
            oif: 7,
        }];
        let st = gateway_status(7, &routes, &[n]);
        assert_eq!(st.mac, Some(mac));
        assert!(st.needs_trigger(), "STALE is re-confirmed");
        let fresh = Neighbour {
            state: nud::REACHABLE,
            ..n
        };
        assert!(!gateway_status(7, &routes, &[fresh]).needs_trigger());
        // Incomplete / failed: no MAC, trigger.
        let inc = parse_neigh(&neigh(7, nud::INCOMPLETE, &[192, 168, 100, 1], None)).unwrap();
        let st = gateway_status(7, &routes, &[inc]);
        assert_eq!((st.mac, st.state), (None, nud::INCOMPLETE));
        assert!(st.needs_trigger());
        // Another interface's entry does not count; no entry at all: trigger.
        let other = Neighbour { ifindex: 8, ..n };
        let st = gateway_status(7, &routes, &[other]);
        assert_eq!(st.mac, None);
        assert!(st.needs_trigger());
        // No default route via the uplink: nothing to resolve.
        let st = gateway_status(9, &routes, &[n]);
        assert_eq!(st.gateway, None);
        assert!(!st.needs_trigger());
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_mac() {
        let gw: IpAddr = "192.168.100.1".parse().unwrap();
        let mac = [2, 0, 0, 0, 0, 0xfe];
        let found = |mac, state| {
            Ok(GatewayStatus {
                gateway: Some(gw),
                mac,
                state,
            })
        };
        let mut r = Readings::default();
        assert_eq!(r.fold(found(Some(mac), nud::REACHABLE)), None);
        assert_eq!(r.report().mac, Some(mac));
        // netlink fails (twice): same MAC, counted, no trigger.
        for n in 1..=2 {
            assert_eq!(
                r.fold(Err(io::Error::from_raw_os_error(libc::ENOBUFS))),
                None
            );
            let rep = r.report();
            assert_eq!(rep.mac, Some(mac), "kept after failure {n}");
            assert_eq!(rep.status.lookup_errors, n);
        }
        // A STALE entry is still used, and re-confirmed.
        assert_eq!(r.fold(found(Some(mac), nud::STALE)), Some(gw));
        assert_eq!(r.report().mac, Some(mac));
        // The kernel lost the neighbour: two successful lookups in a row say so (the first
        // keeps the MAC while its trigger resolves), the second clears it.
        assert_eq!(r.fold(found(None, 0)), Some(gw));
        assert_eq!(r.report().mac, Some(mac), "kept for one reading");
        assert_eq!(r.fold(found(None, nud::FAILED)), Some(gw));
        let rep = r.report();
        assert_eq!(rep.mac, None);
        assert_eq!(
            (
                rep.status.lookups,
                rep.status.unresolved,
                rep.status.triggers
            ),
            (6, 2, 3)
        );
        // A failure while unresolved stays unresolved.
        r.fold(Err(io::Error::from_raw_os_error(libc::EIO)));
        assert_eq!(r.report().mac, None);
        // Resolved again; one reading without an entry (an uplink re-created), then the
        // entry again: the MAC never left.
        r.fold(found(Some(mac), nud::REACHABLE));
        assert_eq!(r.fold(found(None, 0)), Some(gw));
        assert_eq!(r.report().mac, Some(mac));
        assert_eq!(r.fold(found(None, nud::INCOMPLETE)), Some(gw));
        assert_eq!(r.report().mac, Some(mac), "kept while the kernel resolves");
        r.fold(found(Some(mac), nud::REACHABLE));
        assert_eq!(r.report().mac, Some(mac));
        assert!(!r.clearing);
    }

    #[test]
    fn walk_stops_at_done_and_reports_errors() {
        let mut m = Vec::new();
        let payload = neigh(3, nud::REACHABLE, &[10, 0, 0, 1], Some([1; 6]));
        let len = (NLMSG_HDR + payload.len()) as u32;
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&RTM_NEWNEIGH.to_ne_bytes());
        m.extend_from_slice(&[0; 10]); // flags, seq, pid
        m.extend_from_slice(&payload);
        let mut done = vec![0u8; 20];
        done[0..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        let mut all = m.clone();
        all.extend_from_slice(&done);
        let mut seen = 0;
        assert!(walk(&all, |ty, p| {
            assert_eq!(ty, RTM_NEWNEIGH);
            assert!(parse_neigh(p).is_some());
            seen += 1;
        })
        .unwrap());
        assert_eq!(seen, 1);
        let mut err = vec![0u8; 20];
        err[0..4].copy_from_slice(&20u32.to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            walk(&err, |_, _| {}).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        assert!(walk(&m[..m.len() - 1], |_, _| {}).is_err());
    }
}
