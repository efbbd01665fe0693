//! The speaker's I/O: one thread running a `mio` event loop that owns every socket and every
//! neighbour FSM. Nothing else touches them; the control thread talks to it through a channel.
//!
//! ```text
//!   control thread                        speaker thread (mio::Poll)
//!   ──────────────                        ──────────────────────────────────────────────
//!   Speaker::set_routes ──┐
//!   Speaker::shutdown  ───┼─ mpsc<Command> ─► drain commands ─► Neighbor::handle(RoutesChanged
//!                         └─ Waker::wake ──►   / ManualStop)          │
//!                                                                     ▼
//!   router TCP :179 ◄──────────── Conn.wbuf ◄── Action::Send ◄── Vec<Action>
//!   router TCP :179 ─► listener / Conn.rbuf ─► frame_len + Message::decode ─► Event ─► FSM
//!   timers: poll timeout = min(FSM deadlines, close deadlines) ─► Neighbor::poll_timers
//!
//!   Speaker::status ◄── Arc<Mutex<SpeakerStatus>> ◄── snapshot after every loop turn
//! ```
//!
//! Sockets get TCP-MD5 keys (listening and connecting) and GTSM (TTL 255 out, min TTL 254 in)
//! per neighbour before any SYN leaves, so a wrong key never gets a session at all.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{BgpConfig, ConfigError};
use crate::fsm::{Action, ConnId, Event, Neighbor, Params, StopMode};
use crate::packet::{frame_len, Context, Message};
use crate::status::{NeighborStatus, SpeakerStatus};
use crate::sys;

const WAKER: Token = Token(0);
const LISTEN_V4: Token = Token(1);
const LISTEN_V6: Token = Token(2);
/// Incoming connection ids; neighbour `i` allocates outgoing ids from `(i + 1) << 32`.
const INCOMING_BASE: ConnId = 1 << 48;
/// How long a closing connection may take to flush its last messages (NOTIFICATION).
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// How long shutdown waits for every connection to flush before the thread exits anyway: short
/// enough that the daemon still stops within 1 s of SIGTERM when a peer stopped reading (a
/// healthy session flushes its withdraw and NOTIFICATION at once).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen for BGP on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot set TCP-MD5 key for {peer} on the listening socket: {source}")]
    Md5 {
        peer: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the BGP event loop: {0}")]
    Poll(#[source] io::Error),
}

enum Command {
    SetRoutes(BTreeSet<IpNet>),
    Shutdown(StopMode),
}

/// The handle the control thread holds. Dropping it shuts the speaker down (withdrawing).
#[derive(Debug)]
pub struct Speaker {
    tx: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    status: Arc<Mutex<SpeakerStatus>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::SetRoutes(r) => write!(f, "SetRoutes({} prefixes)", r.len()),
            Command::Shutdown(m) => write!(f, "Shutdown({m:?})"),
        }
    }
}

/// Per-neighbour socket settings.
#[derive(Debug)]
struct NeighborIo {
    peer: SocketAddr,
    local: Option<IpAddr>,
    md5: Option<Vec<u8>>,
    ttl_security: bool,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    nb: usize,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    connecting: bool,
    close_by: Option<Instant>,
    writable_interest: bool,
}

impl Speaker {
    /// Binds the listeners (errors surface here), then starts the event loop thread with every
    /// neighbour started. `routes` is the initial set to announce. Graceful restart's F bit is
    /// set: a speaker whose restart does not touch forwarding (the standalone speaker).
    pub fn start(cfg: &BgpConfig, routes: BTreeSet<IpNet>) -> Result<Speaker, SpeakerError> {
        Speaker::start_with(cfg, routes, true)
    }

    /// [`Speaker::start`], saying whether forwarding survived the restart (graceful restart's
    /// F bit in the OPENs before the first session: RFC 4724 §3). Clear, routers drop our
    /// stale routes at once instead of forwarding into a dataplane that lost its state.
    pub fn start_with(
        cfg: &BgpConfig,
        routes: BTreeSet<IpNet>,
        forwarding_preserved: bool,
    ) -> Result<Speaker, SpeakerError> {
        cfg.validate()?;
        let communities = cfg.communities();
        let mut ios = Vec::new();
        let mut neighbors = Vec::new();
        for (i, n) in cfg.neighbors.iter().enumerate() {
            ios.push(NeighborIo {
                peer: SocketAddr::new(n.address, n.port),
                local: n.local_address,
                md5: n.md5_key(i)?,
                ttl_security: n.ttl_security,
            });
            let params = Params {
                name: n.display_name(),
                peer: n.address,
                local_as: cfg.local_as,
                remote_as: n.remote_as,
                router_id: cfg.router_id,
                hold_time: n.hold_time_secs,
                keepalive: n.keepalive_secs,
                connect_retry: Duration::from_secs(n.connect_retry_secs as u64),
                passive: n.passive,
                families: n.families.iter().map(|&f| f.into()).collect(),
                next_hop_v4: n.next_hop_ipv4,
                next_hop_v6: n.next_hop_ipv6,
                communities: communities.clone(),
                med: cfg.announce.med,
                local_pref: cfg.announce.local_pref,
                restart_time: cfg
                    .graceful_restart
                    .enabled
                    .then_some(cfg.graceful_restart.restart_time_secs),
                forwarding_preserved,
            };
            neighbors.push(Neighbor::new(params, (i as ConnId + 1) << 32));
        }
        let poll = Poll::new().map_err(SpeakerError::Poll)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(SpeakerError::Poll)?);
        let mut listeners = Vec::new();
        if cfg.listen_port != 0 {
            for v6 in [false, true] {
                let of_family: Vec<&NeighborIo> =
                    ios.iter().filter(|io| io.peer.is_ipv6() == v6).collect();
                if of_family.is_empty() {
                    continue;
                }
                let mut l = listen(v6, cfg.listen_port, &of_family)?;
                let token = if v6 { LISTEN_V6 } else { LISTEN_V4 };
                poll.registry()
                    .register(&mut l, token, Interest::READABLE)
                    .map_err(SpeakerError::Poll)?;
                listeners.push((token, l));
            }
        }
        let status = Arc::new(Mutex::new(SpeakerStatus::default()));
        let (tx, rx) = mpsc::channel();
        let mut lp = Loop {
            poll,
            listeners,
            conns: HashMap::new(),
            neighbors,
            ios,
            rx,
            status: status.clone(),
            next_incoming: INCOMING_BASE,
            shutdown_by: None,
            local_as: cfg.local_as,
            router_id: cfg.router_id,
            desired: routes.clone(),
            poll_failures: 0,
            accept_failures: 0,
        };
        let now = Instant::now();
        let mut pending = Vec::new();
        for i in 0..lp.neighbors.len() {
            pending.push((i, Event::RoutesChanged(routes.clone())));
            pending.push((i, Event::ManualStart));
        }
        lp.dispatch(pending, now);
        lp.publish_status();
        let thread = std::thread::Builder::new()
            .name("bgp-speaker".into())
            .spawn(move || lp.run())
            .map_err(SpeakerError::Poll)?;
        Ok(Speaker {
            tx,
            waker,
            status,
            thread: Some(thread),
        })
    }

    /// Replaces the set of routes to announce; the difference goes out at once.
    pub fn set_routes(&self, routes: BTreeSet<IpNet>) {
        if self.tx.send(Command::SetRoutes(routes)).is_ok() {
            let _ = self.waker.wake();
        }
    }

    pub fn status(&self) -> SpeakerStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// A shared view of the status, refreshed by the event loop (for the status socket).
    pub fn status_handle(&self) -> Arc<Mutex<SpeakerStatus>> {
        self.status.clone()
    }

    /// Whether the event loop thread is still there (false after a panic in it: the owner
    /// reports it and may start a new speaker).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops every session (see [`StopMode`]) and waits for the event loop to finish.
    pub fn shutdown(mut self, mode: StopMode) {
        self.stop(mode);
    }

    fn stop(&mut self, mode: StopMode) {
        if let Some(t) = self.thread.take() {
            if self.tx.send(Command::Shutdown(mode)).is_ok() {
                let _ = self.waker.wake();
            }
            let _ = t.join();
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.stop(StopMode::Withdraw);
    }
}

fn listen(v6: bool, port: u16, peers: &[&NeighborIo]) -> Result<TcpListener, SpeakerError> {
    let addr = if v6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
    };
    let lerr = |source| SpeakerError::Listen { addr, source };
    let s =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(lerr)?;
    s.set_reuse_address(true).map_err(lerr)?;
    if v6 {
        s.set_only_v6(true).map_err(lerr)?;
    }
    for p in peers {
        if let Some(key) = &p.md5 {
            sys::set_tcp_md5(&s, p.peer.ip(), key).map_err(|source| SpeakerError::Md5 {
                peer: p.peer.ip(),
                source,
            })?;
        }
    }
    // GTSM on the listener only when every peer of the family uses it (it applies to all);
    // otherwise it is set on each accepted socket of a GTSM peer.
    if peers.iter().all(|p| p.ttl_security) {
        sys::set_min_ttl(&s, v6, 254).map_err(lerr)?;
    }
    s.set_nonblocking(true).map_err(lerr)?;
    s.bind(&addr.into()).map_err(lerr)?;
    s.listen(16).map_err(lerr)?;
    Ok(TcpListener::from_std(s.into()))
}

fn connect_socket(io: &NeighborIo) -> io::Result<TcpStream> {
    let v6 = io.peer.is_ipv6();
    let s = Socket::new(
        Domain::for_address(io.peer),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    if let Some(key) = &io.md5 {
        sys::set_tcp_md5(&s, io.peer.ip(), key)?;
    }
    if io.ttl_security {
        set_gtsm(&s, v6)?;
    }
    if let Some(local) = io.local {
        s.bind(&SocketAddr::new(local, 0).into())?;
    }
    match s.connect(&io.peer.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

fn set_gtsm(s: &(impl std::os::fd::AsRawFd + std::os::fd::AsFd), v6: bool) -> io::Result<()> {
    let sock = socket2::SockRef::from(s);
    if v6 {
        sock.set_unicast_hops_v6(255)?;
    } else {
        sock.set_ttl_v4(255)?;
    }
    sys::set_min_ttl(s, v6, 254)
}

struct Loop {
    poll: Poll,
    listeners: Vec<(Token, TcpListener)>,
    conns: HashMap<ConnId, Conn>,
    neighbors: Vec<Neighbor>,
    ios: Vec<NeighborIo>,
    rx: mpsc::Receiver<Command>,
    status: Arc<Mutex<SpeakerStatus>>,
    next_incoming: ConnId,
    shutdown_by: Option<Instant>,
    local_as: u32,
    router_id: Ipv4Addr,
    desired: BTreeSet<IpNet>,
    /// Consecutive failures of poll and of accept: the first of a run is logged, then every
    /// [`FAULT_LOG_EVERY`]th with the count (a failing poll is retried every 100 ms).
    poll_failures: u64,
    accept_failures: u64,
}

/// See [`Loop::poll_failures`].
const FAULT_LOG_EVERY: u64 = 100;

/// Whether the `n`th failure of a run is logged.
fn logged_failure(n: u64) -> bool {
    n == 1 || n % FAULT_LOG_EVERY == 0
}

impl Loop {
    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        loop {
            let now = Instant::now();
            if let Some(by) = self.shutdown_by {
                if self.conns.is_empty() || now >= by {
                    break;
                }
            }
            let deadline = self
                .neighbors
                .iter()
                .filter_map(|n| n.next_deadline())
                .chain(self.conns.values().filter_map(|c| c.close_by))
                .chain(self.shutdown_by)
                .min();
            let timeout = deadline.map(|d| d.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.poll_failures += 1;
                    if logged_failure(self.poll_failures) {
                        log::error!(
                            "bgp: poll failed: {e} ({} in a row; retried every 100 ms)",
                            self.poll_failures
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            self.poll_failures = 0;
            let now = Instant::now();
            let mut pending = Vec::new();
            for ev in events.iter() {
                match ev.token() {
                    WAKER => self.drain_commands(&mut pending),
                    t @ (LISTEN_V4 | LISTEN_V6) => self.accept(t, now, &mut pending),
                    Token(t) => self.conn_ready(t as ConnId, now, &mut pending),
                }
            }
            for i in 0..self.neighbors.len() {
                let actions = self.neighbors[i].poll_timers(now);
                let ctx = self.neighbors[i].context();
                apply_actions(
                    &mut pending,
                    i,
                    actions,
                    ctx,
                    &mut self.conns,
                    &self.ios,
                    &self.poll,
                    now,
                );
            }
            self.dispatch(pending, now);
            self.expire_closing(now);
            self.publish_status();
        }
        // Whatever is left after the grace period is closed by dropping it.
        self.conns.clear();
        self.publish_status();
    }

    fn drain_commands(&mut self, pending: &mut Vec<(usize, Event)>) {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::SetRoutes(routes) => {
                    self.desired = routes.clone();
                    for i in 0..self.neighbors.len() {
                        pending.push((i, Event::RoutesChanged(routes.clone())));
                    }
                }
                Command::Shutdown(mode) => {
                    for (_, mut l) in self.listeners.drain(..) {
                        let _ = self.poll.registry().deregister(&mut l);
                    }
                    for i in 0..self.neighbors.len() {
                        pending.push((i, Event::ManualStop(mode)));
                    }
                    self.shutdown_by = Some(Instant::now() + SHUTDOWN_GRACE);
                }
            }
        }
    }

    fn accept(&mut self, token: Token, now: Instant, pending: &mut Vec<(usize, Event)>) {
        let Some((_, listener)) = self.listeners.iter().find(|(t, _)| *t == token) else {
            return;
        };
        loop {
            let (mut stream, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.accept_failures += 1;
                    if logged_failure(self.accept_failures) {
                        log::warn!(
                            "bgp: accept failed: {e} ({} in a row)",
                            self.accept_failures
                        );
                    }
                    return;
                }
            };
            self.accept_failures = 0;
            let peer_ip = canonical(peer.ip());
            // Unknown peers are closed at once (dropping the stream).
            let Some(nb) = self.ios.iter().position(|io| io.peer.ip() == peer_ip) else {
                continue;
            };
            if self.shutdown_by.is_some() {
                continue;
            }
            if self.ios[nb].ttl_security && set_gtsm(&stream, peer.is_ipv6()).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            let conn = self.next_incoming;
            self.next_incoming += 1;
            if self
                .poll
                .registry()
                .register(&mut stream, Token(conn as usize), Interest::READABLE)
                .is_err()
            {
                continue;
            }
            let local = stream.local_addr().unwrap_or(SocketAddr::new(peer_ip, 0));
            self.conns.insert(
                conn,
                Conn {
                    stream,
                    nb,
                    rbuf: Vec::new(),
                    wbuf: Vec::new(),
                    connecting: false,
                    close_by: None,
                    writable_interest: false,
                },
            );
            let _ = now;
            pending.push((nb, Event::TcpConnectionConfirmed { conn, local }));
        }
    }

    fn conn_ready(&mut self, conn: ConnId, now: Instant, pending: &mut Vec<(usize, Event)>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let nb = c.nb;
        if c.connecting {
            match c.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    self.remove(conn);
                    pending.push((
                        nb,
                        Event::TcpConnectionFails {
                            conn,
                            reason: e.to_string(),
                        },
                    ));
                    return;
                }
            }
            match c.stream.peer_addr() {
                Ok(_) => {
                    c.connecting = false;
                    let local = c
                        .stream
                        .local_addr()
                        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
                    pending.push((nb, Event::TcpCrAcked { conn, local }));
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    self.remove(conn);
                    pending.push((
                        nb,
                        Event::TcpConnectionFails {
                            conn,
                            reason: e.to_string(),
                        },
                    ));
                    return;
                }
            }
        }
        if flush(c).is_err() {
            self.remove(conn);
            pending.push((
                nb,
                Event::TcpConnectionFails {
                    conn,
                    reason: "write failed".into(),
                },
            ));
            return;
        }
        self.update_interest(conn);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.close_by.is_some() {
            // Closing: drain and ignore whatever the peer still sends.
            let mut sink = [0u8; 4096];
            while matches!(c.stream.read(&mut sink), Ok(n) if n > 0) {}
            if c.wbuf.is_empty() {
                self.remove(conn);
            }
            return;
        }
        let mut eof = None;
        let mut buf = [0u8; 16384];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    eof = Some("closed by peer".to_string());
                    break;
                }
                Ok(n) => c.rbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eof = Some(e.to_string());
                    break;
                }
            }
        }
        let ctx = self.neighbors[nb].context();
        let mut events = Vec::new();
        let read = read_events(&c.rbuf, conn, &ctx, &mut events);
        pending.extend(events.into_iter().map(|ev| (nb, ev)));
        if read.fatal {
            eof = None;
        }
        c.rbuf.drain(..read.consumed);
        if let Some(reason) = eof {
            self.remove(conn);
            pending.push((nb, Event::TcpConnectionFails { conn, reason }));
        }
        let _ = now;
    }

    /// Runs events through their FSMs and carries out the resulting actions, which may
    /// produce further events (a connect that fails at once).
    fn dispatch(&mut self, mut pending: Vec<(usize, Event)>, now: Instant) {
        let mut i = 0;
        while i < pending.len() {
            let (nb, ev) = std::mem::replace(&mut pending[i], (usize::MAX, Event::AutomaticStart));
            i += 1;
            if nb >= self.neighbors.len() {
                continue;
            }
            let actions = self.neighbors[nb].handle(ev, now);
            let ctx = self.neighbors[nb].context();
            let mut more = Vec::new();
            apply_actions(
                &mut more,
                nb,
                actions,
                ctx,
                &mut self.conns,
                &self.ios,
                &self.poll,
                now,
            );
            pending.extend(more);
        }
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for c in conns {
            self.update_interest(c);
        }
    }

    fn update_interest(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let want = c.connecting || !c.wbuf.is_empty();
        if want != c.writable_interest {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if self
                .poll
                .registry()
                .reregister(&mut c.stream, Token(conn as usize), interest)
                .is_ok()
            {
                c.writable_interest = want;
            }
        }
        if c.close_by.is_some() && c.wbuf.is_empty() {
            self.remove(conn);
        }
    }

    fn expire_closing(&mut self, now: Instant) {
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.close_by.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.remove(id);
        }
    }

    fn remove(&mut self, conn: ConnId) {
        if let Some(mut c) = self.conns.remove(&conn) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn publish_status(&self) {
        let now = Instant::now();
        let neighbors = self
            .neighbors
            .iter()
            .zip(&self.ios)
            .map(|(n, io)| NeighborStatus::of(n, io.md5.is_some(), io.ttl_security, now))
            .collect();
        let snapshot = SpeakerStatus {
            local_as: self.local_as,
            router_id: self.router_id,
            routes: self.desired.iter().copied().collect(),
            neighbors,
        };
        if let Ok(mut s) = self.status.lock() {
            *s = snapshot;
        }
    }
}

/// Carries out `actions` of neighbour `nb`; events they cause (connect failures) are pushed
/// onto `more`.
#[expect(
    clippy::too_many_arguments,
    reason = "split borrows of the loop's fields"
)]
fn apply_actions(
    more: &mut Vec<(usize, Event)>,
    nb: usize,
    actions: Vec<Action>,
    ctx: Context,
    conns: &mut HashMap<ConnId, Conn>,
    ios: &[NeighborIo],
    poll: &Poll,
    now: Instant,
) {
    for a in actions {
        match a {
            Action::Connect { conn } => match connect_socket(&ios[nb]) {
                Ok(mut stream) => {
                    let r = poll.registry().register(
                        &mut stream,
                        Token(conn as usize),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    if let Err(e) = r {
                        more.push((
                            nb,
                            Event::TcpConnectionFails {
                                conn,
                                reason: e.to_string(),
                            },
                        ));
                        continue;
                    }
                    conns.insert(
                        conn,
                        Conn {
                            stream,
                            nb,
                            rbuf: Vec::new(),
                            wbuf: Vec::new(),
                            connecting: true,
                            close_by: None,
                            writable_interest: true,
                        },
                    );
                }
                Err(e) => more.push((
                    nb,
                    Event::TcpConnectionFails {
                        conn,
                        reason: e.to_string(),
                    },
                )),
            },
            Action::Send { conn, msg } => {
                let Some(c) = conns.get_mut(&conn) else {
                    continue;
                };
                if c.close_by.is_some() {
                    continue;
                }
                if let Err(e) = msg.encode(&ctx, &mut c.wbuf) {
                    log::error!("bgp: not sending {}: {e}", msg.kind_name());
                    continue;
                }
                if flush(c).is_err() {
                    if let Some(mut c) = conns.remove(&conn) {
                        let _ = poll.registry().deregister(&mut c.stream);
                    }
                    more.push((
                        nb,
                        Event::TcpConnectionFails {
                            conn,
                            reason: "write failed".into(),
                        },
                    ));
                }
            }
            Action::Close { conn } => {
                if let Some(c) = conns.get_mut(&conn) {
                    let _ = flush(c);
                    if c.wbuf.is_empty() || c.connecting {
                        if let Some(mut c) = conns.remove(&conn) {
                            let _ = poll.registry().deregister(&mut c.stream);
                            let _ = c.stream.shutdown(std::net::Shutdown::Both);
                        }
                    } else {
                        c.close_by = Some(now + CLOSE_LINGER);
                    }
                }
            }
        }
    }
}

fn flush(c: &mut Conn) -> io::Result<()> {
    if c.connecting {
        return Ok(());
    }
    while !c.wbuf.is_empty() {
        match c.stream.write(&c.wbuf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                c.wbuf.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What [`read_events`] did with a connection's receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Bytes to drop from the front of the buffer (whole messages; all of it after a fatal
    /// event).
    pub consumed: usize,
    /// The last event ends the session (a NOTIFICATION, or a message that cannot be decoded
    /// or framed): nothing after it is read.
    pub fatal: bool,
}

/// The stream reader of one connection: frames and decodes every whole message at the front of
/// `buf` (bytes received so far) into its FSM event, in order, with the session's codec
/// settings. Stops at the first fatal event; a partial message at the end waits for more bytes.
pub fn read_events(buf: &[u8], conn: ConnId, ctx: &Context, out: &mut Vec<Event>) -> ReadOutcome {
    let mut consumed = 0;
    loop {
        let rest = &buf[consumed..];
        match frame_len(rest) {
            Ok(None) => break,
            Ok(Some(len)) => {
                let ev = match Message::decode(&rest[..len], ctx) {
                    Ok(msg) => msg_event(conn, msg),
                    Err(error) => Event::MessageError { conn, error },
                };
                consumed += len;
                let fatal = matches!(ev, Event::MessageError { .. } | Event::NotifMsg { .. });
                out.push(ev);
                if fatal {
                    return ReadOutcome {
                        consumed: buf.len(),
                        fatal: true,
                    };
                }
            }
            Err(error) => {
                out.push(Event::MessageError { conn, error });
                return ReadOutcome {
                    consumed: buf.len(),
                    fatal: true,
                };
            }
        }
    }
    ReadOutcome {
        consumed,
        fatal: false,
    }
}

fn msg_event(conn: ConnId, msg: Message) -> Event {
    match msg {
        Message::Open(open) => Event::BgpOpen { conn, open },
        Message::Update(update) => Event::UpdateMsg { conn, update },
        Message::Notification(notification) => Event::NotifMsg { conn, notification },
        Message::Keepalive => Event::KeepAliveMsg { conn },
        Message::RouteRefresh(refresh) => Event::RouteRefreshMsg { conn, refresh },
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_socket_faults_logs_its_first_and_every_hundredth() {
        let logged: Vec<u64> = (1..=250).filter(|&n| logged_failure(n)).collect();
        assert_eq!(logged, vec![1, 100, 200]);
    }
}
