//! The link watcher: the kernel's link notifications (rtnetlink group `RTNLGRP_LINK`) for the
//! dataplane's interfaces, so that an interface deleted and re-created (a pod's veth) is
//! noticed at once: the control thread then takes its sockets out of service, and attaches the
//! XDP program to the new interface as soon as it exists (fail closed), then binds its sockets
//! again (`AfXdpBackend::reconcile_links`).
//!
//! The watcher only says "something happened to one of ours" (name, ifindex, when it heard
//! it); the control thread compares every interface's current ifindex with the one it
//! attached to (level-triggered), so a lost or coalesced notification (the socket's buffer
//! overflowed: `ENOBUFS`) is caught by a resync report, and the control thread also
//! reconciles once a second. Its own thread, parked in `recv` (100 ms timeout, to see its stop
//! flag): never on the packet path.
//!
//! The netlink socket goes through nix's safe socket API; message parsing is pure and
//! unit-tested.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::neigh::{attrs, walk};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const IFLA_IFNAME: u16 = 3;
/// `RTMGRP_LINK`: the link group's bit in a netlink bind.
const RTMGRP_LINK: u32 = 1;
/// `struct ifinfomsg`.
const IFINFOMSG_LEN: usize = 16;

/// What a link notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkChange {
    /// `RTM_NEWLINK`: created, or changed (flags, addresses, ...).
    New,
    /// `RTM_DELLINK`: unregistered (deleted, or moved to another namespace).
    Del,
}

/// One link notification about an interface of the dataplane, or a resync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEvent {
    /// None: notifications may have been lost (socket overflow): reconcile everything.
    pub change: Option<LinkChange>,
    pub ifindex: u32,
    pub name: String,
    /// When the watcher read it (the window to the XDP attach is measured from here).
    pub at: Instant,
}

/// Parses an `RTM_NEWLINK`/`RTM_DELLINK` payload (ifinfomsg + attributes): (ifindex, name).
pub fn parse_link(p: &[u8]) -> Option<(u32, String)> {
    if p.len() < IFINFOMSG_LEN {
        return None;
    }
    let ifindex = u32::try_from(i32::from_ne_bytes(p[4..8].try_into().ok()?)).ok()?;
    let name = attrs(&p[IFINFOMSG_LEN..]).find_map(|(ty, v)| {
        (ty == IFLA_IFNAME).then(|| {
            let v = v.split(|b| *b == 0).next().unwrap_or(v);
            String::from_utf8_lossy(v).into_owned()
        })
    })?;
    Some((ifindex, name))
}

/// The link notifications in one datagram that concern `names`.
pub fn link_events(buf: &[u8], names: &[String], at: Instant) -> io::Result<Vec<LinkEvent>> {
    let mut out = Vec::new();
    walk(buf, |ty, p| {
        let change = match ty {
            RTM_NEWLINK => LinkChange::New,
            RTM_DELLINK => LinkChange::Del,
            _ => return,
        };
        if let Some((ifindex, name)) = parse_link(p) {
            if names.contains(&name) {
                out.push(LinkEvent {
                    change: Some(change),
                    ifindex,
                    name,
                    at,
                });
            }
        }
    })?;
    Ok(out)
}

/// The kernel's MTU of interface `name` (sysfs of the calling thread's network namespace), if
/// it exists; an MTU beyond 65535 (no frame carries one) reads as 65535.
pub fn mtu(name: &str) -> Option<u16> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu")).ok()?;
    let m: u32 = s.trim().parse().ok()?;
    Some(u16::try_from(m).unwrap_or(u16::MAX))
}

/// A netlink socket subscribed to the link group (in the calling thread's namespace).
pub fn subscribe() -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, NetlinkAddr, SockFlag, SockProtocol,
        SockType,
    };
    use nix::sys::time::TimeVal;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 100_000))?;
    // Room for a burst of notifications (a namespace with many interfaces torn down at once).
    let _ = setsockopt(&fd, sockopt::RcvBuf, &(1 << 20));
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, RTMGRP_LINK))?;
    Ok(fd)
}

/// Reads link notifications until `stop`; reports those about `names` (and a resync after a
/// lost notification or an error). `fd` comes from [`subscribe`] (subscribed before the
/// caller read the interfaces' state, so nothing falls in between).
pub fn watch(
    fd: std::os::fd::OwnedFd,
    names: Vec<String>,
    stop: &AtomicBool,
    mut report: impl FnMut(LinkEvent),
) {
    use nix::errno::Errno;
    use nix::sys::socket::{recv, MsgFlags};
    let mut buf = vec![0u8; 64 * 1024];
    let resync = |report: &mut dyn FnMut(LinkEvent)| {
        report(LinkEvent {
            change: None,
            ifindex: 0,
            name: String::new(),
            at: Instant::now(),
        });
    };
    while !stop.load(Ordering::Relaxed) {
        match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => {}
            Ok(n) => match link_events(&buf[..n], &names, Instant::now()) {
                Ok(evs) => evs.into_iter().for_each(&mut report),
                Err(e) => {
                    log::warn!("link watcher: {e}; reconciling every interface");
                    resync(&mut report);
                }
            },
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(Errno::ENOBUFS) => {
                crate::warn_limited!(
                    "link-watch-overflow",
                    "link watcher: notifications lost (ENOBUFS); reconciling every interface"
                );
                resync(&mut report);
            }
            Err(e) => {
                crate::error_limited!(
                    "link-watch-error",
                    "link watcher: {e}; the control thread still reconciles once a second"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, ifindex: i32, name: &str) -> Vec<u8> {
        let mut p = vec![0u8; IFINFOMSG_LEN];
        p[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        let mut v = name.as_bytes().to_vec();
        v.push(0);
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        a.extend_from_slice(&v);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        p.extend(a);
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + p.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend(p);
        m
    }

    #[test]
    fn parses_new_and_del_link_of_our_interfaces_only() {
        let at = Instant::now();
        let mut buf = msg(RTM_DELLINK, 7, "pod-web2");
        buf.extend(msg(RTM_NEWLINK, 9, "pod-other"));
        buf.extend(msg(RTM_NEWLINK, 12, "pod-web2"));
        buf.extend(msg(24, 12, "pod-web2")); // RTM_NEWROUTE: not a link message
        let names = vec!["pod-web2".to_string(), "uplink0".to_string()];
        let evs = link_events(&buf, &names, at).unwrap();
        assert_eq!(
            evs.iter()
                .map(|e| (e.change, e.ifindex, e.name.as_str()))
                .collect::<Vec<_>>(),
            vec![
                (Some(LinkChange::Del), 7, "pod-web2"),
                (Some(LinkChange::New), 12, "pod-web2"),
            ]
        );
    }

    #[test]
    fn a_truncated_or_nameless_message_is_no_event() {
        assert_eq!(parse_link(&[0u8; 8]), None);
        assert_eq!(parse_link(&[0u8; IFINFOMSG_LEN]), None);
        let mut bad = msg(RTM_NEWLINK, 3, "x");
        bad[0] = 200; // longer than the buffer
        assert!(link_events(&bad, &["x".into()], Instant::now()).is_err());
    }
}
