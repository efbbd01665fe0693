//! The only module with `unsafe`: socket options the std/socket2 APIs lack (TCP-MD5,
//! IP_MINTTL/IPV6_MINHOPCOUNT) and the async-signal-safe handler for SIGTERM/SIGINT/SIGUSR1.
#![expect(unsafe_code, reason = "setsockopt and signal(2) have no safe wrapper")]

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};

/// From linux/tcp.h.
pub const TCP_MD5SIG_MAXKEYLEN: usize = 80;

/// `struct tcp_md5sig` (linux/tcp.h): a 128-byte `sockaddr_storage`, flags, prefix length,
/// key length, ifindex, then the key. Built as bytes so no sockaddr casts are needed.
#[repr(C, align(8))]
struct TcpMd5Sig([u8; 128 + 1 + 1 + 2 + 4 + TCP_MD5SIG_MAXKEYLEN]);

fn md5sig(peer: IpAddr, key: &[u8]) -> TcpMd5Sig {
    let mut s = TcpMd5Sig([0; 216]);
    let b = &mut s.0;
    match peer {
        IpAddr::V4(a) => {
            b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[4..8].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b[8..24].copy_from_slice(&a.octets());
        }
    }
    let n = key.len().min(TCP_MD5SIG_MAXKEYLEN);
    b[130..132].copy_from_slice(&(n as u16).to_ne_bytes());
    b[136..136 + n].copy_from_slice(&key[..n]);
    s
}

fn setsockopt_raw(fd: &impl AsRawFd, level: i32, name: i32, val: &[u8]) -> io::Result<()> {
    // SAFETY: `val` is a live buffer of `val.len()` bytes for the duration of the call and the
    // kernel only reads from it; `fd` is an open socket owned by the caller.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            val.as_ptr().cast(),
            val.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Installs (or with an empty key, removes) the RFC 2385 key for `peer` on a socket, listening
/// or about to connect.
pub fn set_tcp_md5(fd: &impl AsRawFd, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    let sig = md5sig(peer, key);
    setsockopt_raw(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig.0)
}

/// GTSM receive side: drop segments arriving with a TTL / hop limit below `min`.
pub fn set_min_ttl(fd: &impl AsRawFd, v6: bool, min: u8) -> io::Result<()> {
    let v = (min as libc::c_int).to_ne_bytes();
    if v6 {
        setsockopt_raw(fd, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, &v)
    } else {
        setsockopt_raw(fd, libc::IPPROTO_IP, libc::IP_MINTTL, &v)
    }
}

static SIGNALS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALS.fetch_or(1 << (sig as u32 & 31), Ordering::SeqCst);
}

/// Routes SIGTERM, SIGINT and SIGUSR1 to a flag read by [`take_signals`].
pub fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1] {
        // SAFETY: `on_signal` is an `extern "C" fn(c_int)` that only touches an atomic, which
        // is what signal(2) requires of a handler.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Signals received since the last call, as a bit set (`1 << SIGTERM`, ...).
pub fn take_signals() -> u32 {
    SIGNALS.swap(0, Ordering::SeqCst)
}
