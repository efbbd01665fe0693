//! RFC 4271 §8 finite state machine of one neighbour, pure: events in, actions out, time passed
//! in by the caller. No sockets, no clocks, no threads: `network.rs` drives it with real
//! sockets, the tests drive it with hand-made events.
//!
//! Connections are named by [`ConnId`]. The FSM asks for outgoing connections
//! ([`Action::Connect`]) and is told about incoming ones ([`Event::TcpConnectionConfirmed`]).
//! Collisions (RFC 4271 §6.8): while a session is in OpenSent/OpenConfirm a second connection
//! is held in `incoming` until its OPEN arrives; then the BGP identifiers decide which one
//! survives, and the loser gets Cease/Connection Collision Resolution.
//!
//! Routes: the FSM keeps the Adj-RIB-Out (`advertised`). Entering Established it announces the
//! desired routes and then End-of-RIB per family (RFC 4724); route changes are diffed against
//! `advertised` and sent at once. Received UPDATEs are checked and dropped: we import nothing.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;

use crate::packet::error::{code, subcode};
use crate::packet::update::{pack_updates, pack_withdrawals, ErrorAction};
use crate::packet::{
    AsPath, Capability, Community, Context, DecodeError, Family, GrFamily, GracefulRestart,
    Message, MpReach, Notification, Open, Origin, PathAttributes, RouteRefresh, Update, AS_TRANS,
};

pub type ConnId = u64;

/// Hold time used between connecting and receiving the peer's OPEN (RFC 4271 §8.2.2: "a
/// large value", 4 minutes suggested).
const LARGE_HOLD: Duration = Duration::from_secs(240);
const IDLE_HOLD_INITIAL: Duration = Duration::from_secs(1);
const IDLE_HOLD_MAX: Duration = Duration::from_secs(60);
/// A session that stayed up this long resets the reconnect backoff when it drops.
const STABLE_SESSION: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

/// How a manual stop ends the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Withdraw every route, send Cease/Administrative Shutdown, close.
    Withdraw,
    /// Close without NOTIFICATION so graceful-restart-aware routers keep our routes (RFC 4724
    /// restarting speaker) until we come back and send End-of-RIB.
    Restart,
}

/// The inputs. The comment names the RFC 4271 §8.1 event each one is.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "control plane, one event at a time"
)]
pub enum Event {
    /// Event 1.
    ManualStart,
    /// Event 2.
    ManualStop(StopMode),
    /// Event 3 (fired by the idle hold timer, §8.1.1 DampPeerOscillations).
    AutomaticStart,
    /// Event 9.
    ConnectRetryTimerExpires,
    /// Event 10.
    HoldTimerExpires,
    /// Event 11.
    KeepaliveTimerExpires,
    /// Event 13.
    IdleHoldTimerExpires,
    /// Event 16/17 for our outgoing connection (`Tcp_CR_Acked`).
    TcpCrAcked { conn: ConnId, local: SocketAddr },
    /// Event 17: the peer connected to us.
    TcpConnectionConfirmed { conn: ConnId, local: SocketAddr },
    /// Event 18.
    TcpConnectionFails { conn: ConnId, reason: String },
    /// Event 19.
    BgpOpen { conn: ConnId, open: Open },
    /// Events 21, 22, 28: BGPHeaderErr, BGPOpenMsgErr, UpdateMsgErr (session-reset class).
    MessageError { conn: ConnId, error: DecodeError },
    /// Events 24/25.
    NotifMsg {
        conn: ConnId,
        notification: Notification,
    },
    /// Event 26.
    KeepAliveMsg { conn: ConnId },
    /// Event 27.
    UpdateMsg { conn: ConnId, update: Update },
    /// RFC 2918 ROUTE-REFRESH received.
    RouteRefreshMsg { conn: ConnId, refresh: RouteRefresh },
    /// Not an RFC event: the routes to announce changed (Loc-RIB of an originate-only speaker).
    RoutesChanged(BTreeSet<IpNet>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "control plane, one action at a time"
)]
pub enum Action {
    /// Open a TCP connection to the peer and report it as `TcpCrAcked`/`TcpConnectionFails`.
    Connect {
        conn: ConnId,
    },
    Send {
        conn: ConnId,
        msg: Message,
    },
    /// Flush what was sent, then close.
    Close {
        conn: ConnId,
    },
}

/// Per-neighbour settings, resolved from the config.
#[derive(Debug, Clone)]
pub struct Params {
    pub name: String,
    pub peer: IpAddr,
    pub local_as: u32,
    pub remote_as: u32,
    pub router_id: Ipv4Addr,
    pub hold_time: u16,
    pub keepalive: Option<u16>,
    pub connect_retry: Duration,
    pub passive: bool,
    pub families: Vec<Family>,
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
    pub communities: Vec<Community>,
    pub med: Option<u32>,
    pub local_pref: u32,
    /// Graceful restart time to advertise; `None` = no GR capability.
    pub restart_time: Option<u16>,
    /// The F bit of our GR capability in the OPENs sent while restarting (before our first
    /// session): whether the dataplane really kept forwarding across the restart. Once a
    /// session has been up, the process (and its forwarding) ran on, so later OPENs set it.
    pub forwarding_preserved: bool,
}

impl Params {
    pub fn is_ibgp(&self) -> bool {
        self.local_as == self.remote_as
    }
}

/// What the OPEN exchange settled.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Negotiated {
    pub peer_router_id: Ipv4Addr,
    pub peer_as: u32,
    pub hold_time: u16,
    pub keepalive: u16,
    pub four_octet_as: bool,
    pub families: Vec<String>,
    pub peer_graceful_restart: bool,
}

/// Counters and facts for `nodeplane bgp status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub messages_in: u64,
    pub messages_out: u64,
    pub updates_in: u64,
    pub updates_out: u64,
    /// RFC 7606 errors survived (treat-as-withdraw / attribute-discard).
    pub updates_malformed: u64,
    pub established_transitions: u64,
    pub notifications_in: u64,
    pub notifications_out: u64,
    /// TCP connections we opened towards the peer (one per ConnectRetry interval at most while
    /// it does not answer).
    #[serde(default)]
    pub connect_attempts: u64,
    /// Of those, the ones still unanswered when ConnectRetry expired: a peer that is down
    /// behind a silent network, a filter, or a TCP-MD5 key mismatch (the kernels drop wrongly
    /// signed segments without a word).
    #[serde(default)]
    pub connect_timeouts: u64,
}

/// The start of `last_error` for a connection attempt that got no answer (see
/// [`Counters::connect_timeouts`]).
pub const CONNECT_NO_ANSWER: &str = "connect: no answer within";

#[derive(Debug)]
pub struct Neighbor {
    pub params: Params,
    state: State,
    /// The connection the session runs on (from Connect onwards: the outgoing attempt).
    conn: Option<ConnId>,
    /// A second connection awaiting its OPEN for collision resolution.
    incoming: Option<ConnId>,
    local_addr: Option<SocketAddr>,
    next_conn: ConnId,
    connect_retry_at: Option<Instant>,
    hold_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    idle_hold_at: Option<Instant>,
    idle_hold: Duration,
    negotiated: Option<Negotiated>,
    /// Families both sides advertised.
    active_families: Vec<Family>,
    desired: BTreeSet<IpNet>,
    advertised: BTreeSet<IpNet>,
    established_at: Option<(Instant, SystemTime)>,
    /// Set until our first session comes up: the R bit of our GR capability.
    restarting: bool,
    started: bool,
    pub last_error: Option<String>,
    pub counters: Counters,
    jitter_seed: u64,
}

impl Neighbor {
    /// `conn_base` keeps the FSM's connection ids apart from the ones the caller allocates for
    /// incoming connections.
    pub fn new(params: Params, conn_base: ConnId) -> Neighbor {
        let seed = match params.peer {
            IpAddr::V4(a) => u32::from(a) as u64,
            IpAddr::V6(a) => u128::from(a) as u64,
        } ^ u32::from(params.router_id) as u64;
        Neighbor {
            restarting: params.restart_time.is_some(),
            params,
            state: State::Idle,
            conn: None,
            incoming: None,
            local_addr: None,
            next_conn: conn_base,
            connect_retry_at: None,
            hold_at: None,
            keepalive_at: None,
            idle_hold_at: None,
            idle_hold: IDLE_HOLD_INITIAL,
            negotiated: None,
            active_families: Vec::new(),
            desired: BTreeSet::new(),
            advertised: BTreeSet::new(),
            established_at: None,
            started: false,
            last_error: None,
            counters: Counters::default(),
            jitter_seed: seed | 1,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    pub fn advertised(&self) -> &BTreeSet<IpNet> {
        &self.advertised
    }

    pub fn established_since(&self) -> Option<SystemTime> {
        self.established_at.map(|(_, t)| t)
    }

    /// The connection ids this FSM currently owns.
    pub fn owns(&self, conn: ConnId) -> bool {
        self.conn == Some(conn) || self.incoming == Some(conn)
    }

    /// Codec settings for messages on this session.
    pub fn context(&self) -> Context {
        Context {
            four_octet_as: self.negotiated.as_ref().is_none_or(|n| n.four_octet_as),
        }
    }

    /// The earliest timer deadline, for the event loop's poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.connect_retry_at,
            self.hold_at,
            self.keepalive_at,
            self.idle_hold_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires every timer due at `now`.
    pub fn poll_timers(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.idle_hold_at) {
            self.idle_hold_at = None;
            out.extend(self.handle(Event::IdleHoldTimerExpires, now));
        }
        if due(self.connect_retry_at) {
            self.connect_retry_at = None;
            out.extend(self.handle(Event::ConnectRetryTimerExpires, now));
        }
        if due(self.hold_at) {
            self.hold_at = None;
            out.extend(self.handle(Event::HoldTimerExpires, now));
        }
        if due(self.keepalive_at) {
            self.keepalive_at = None;
            out.extend(self.handle(Event::KeepaliveTimerExpires, now));
        }
        out
    }

    /// Feeds one event; returns what to do, in order.
    pub fn handle(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.step(ev, now, &mut out);
        for a in &out {
            if let Action::Send { msg, .. } = a {
                self.counters.messages_out += 1;
                match msg {
                    Message::Update(_) => self.counters.updates_out += 1,
                    Message::Notification(_) => self.counters.notifications_out += 1,
                    _ => {}
                }
            }
        }
        out
    }

    fn step(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        use Event as E;
        use State as S;

        // Events about connections that are not (or no longer) ours: close strays, ignore rest.
        if let Some(conn) = event_conn(&ev) {
            let is_new_incoming = matches!(ev, E::TcpConnectionConfirmed { .. });
            if !is_new_incoming && !self.owns(conn) {
                if !matches!(ev, E::TcpConnectionFails { .. }) {
                    out.push(Action::Close { conn });
                }
                return;
            }
            if self.incoming == Some(conn) {
                self.step_incoming(ev, now, out);
                return;
            }
            if let E::MessageError { error, .. } = &ev {
                self.counters.messages_in += 1;
                self.fail_with(now, error_notification(error), error.to_string(), out);
                return;
            }
            if let E::NotifMsg { notification, .. } = &ev {
                self.counters.messages_in += 1;
                self.counters.notifications_in += 1;
                let msg = format!("received {notification}");
                self.drop_session(now, msg, out);
                return;
            }
        }
        if let E::RoutesChanged(routes) = ev {
            self.desired = routes;
            if self.state == S::Established {
                self.sync_routes(out);
            }
            return;
        }

        match (self.state, ev) {
            // Idle
            (S::Idle, E::ManualStart) => {
                self.started = true;
                self.start(now, out);
            }
            (S::Idle, E::AutomaticStart | E::IdleHoldTimerExpires) if self.started => {
                self.start(now, out);
            }
            (S::Idle, E::TcpConnectionConfirmed { conn, .. }) => {
                // Not started, or backing off: refuse.
                out.push(Action::Close { conn });
            }
            (S::Idle, _) => {}

            // Connect / Active
            (S::Connect | S::Active, E::ConnectRetryTimerExpires) => {
                if let Some(old) = self.conn.take() {
                    out.push(Action::Close { conn: old });
                    if self.state == S::Connect {
                        // Our SYN was never answered: say so rather than keep showing the
                        // reason of an older failure.
                        self.counters.connect_timeouts += 1;
                        self.last_error = Some(format!(
                            "{CONNECT_NO_ANSWER} {} s",
                            self.params.connect_retry.as_secs_f64()
                        ));
                    }
                }
                self.connect_retry_at = Some(now + self.params.connect_retry);
                if self.params.passive {
                    self.state = S::Active;
                } else {
                    self.connect(out);
                    self.state = S::Connect;
                }
            }
            (S::Connect, E::TcpCrAcked { conn, local }) => {
                self.connection_up(conn, local, now, out);
            }
            (S::Connect | S::Active, E::TcpConnectionConfirmed { conn, local }) => {
                if let Some(old) = self.conn.take() {
                    out.push(Action::Close { conn: old });
                }
                self.connection_up(conn, local, now, out);
            }
            (S::Connect, E::TcpConnectionFails { reason, .. }) => {
                self.conn = None;
                self.last_error = Some(format!("connect failed: {reason}"));
                self.connect_retry_at = Some(now + self.params.connect_retry);
                self.state = S::Active;
            }

            // OpenSent / OpenConfirm / Established: a second connection from the peer.
            (S::OpenSent | S::OpenConfirm, E::TcpConnectionConfirmed { conn, .. }) => {
                if let Some(old) = self.incoming.replace(conn) {
                    out.push(Action::Close { conn: old });
                }
            }
            (S::Established, E::TcpConnectionConfirmed { conn, .. }) => {
                out.push(Action::Send {
                    conn,
                    msg: cease(subcode::CONNECTION_COLLISION_RESOLUTION),
                });
                out.push(Action::Close { conn });
            }

            (S::OpenSent, E::BgpOpen { conn, open }) => {
                self.counters.messages_in += 1;
                if let Err(n) = self.check_open(&open) {
                    let reason = format!("bad OPEN from peer: {n}");
                    self.fail_with(now, n, reason, out);
                    return;
                }
                self.accept_open(conn, &open, now, out);
            }
            (S::OpenConfirm | S::Established, E::BgpOpen { .. }) => {
                self.counters.messages_in += 1;
                let n = fsm_error(self.state);
                self.fail_with(now, n, "unexpected OPEN".into(), out);
            }

            (S::OpenConfirm, E::KeepAliveMsg { .. }) => {
                self.counters.messages_in += 1;
                self.restart_hold(now);
                self.establish(now, out);
            }
            (S::Established, E::KeepAliveMsg { .. }) => {
                self.counters.messages_in += 1;
                self.restart_hold(now);
            }
            (S::OpenConfirm | S::Established, E::KeepaliveTimerExpires) => {
                if let Some(conn) = self.conn {
                    out.push(Action::Send {
                        conn,
                        msg: Message::Keepalive,
                    });
                }
                self.restart_keepalive(now);
            }
            (S::Established, E::UpdateMsg { update, .. }) => {
                self.counters.messages_in += 1;
                self.counters.updates_in += 1;
                self.restart_hold(now);
                // Import nothing. RFC 7606: treat-as-withdraw and attribute-discard both end
                // here for an originate-only speaker; count them so they are visible.
                if !update.malformed.is_empty() {
                    self.counters.updates_malformed += 1;
                    let m = update.malformed[0];
                    let what = match m.action {
                        ErrorAction::TreatAsWithdraw => "treat-as-withdraw",
                        ErrorAction::AttributeDiscard => "attribute-discard",
                    };
                    self.last_error = Some(format!(
                        "malformed UPDATE from peer ({what}, attribute {}): {}",
                        m.attr, m.reason
                    ));
                }
            }
            (S::Established, E::RouteRefreshMsg { refresh, .. }) => {
                self.counters.messages_in += 1;
                self.restart_hold(now);
                if let Some(f) = Family::from_afi_safi(refresh.afi, refresh.safi) {
                    if self.active_families.contains(&f) {
                        let routes: Vec<IpNet> = self
                            .advertised
                            .iter()
                            .filter(|p| Family::of(p) == f)
                            .copied()
                            .collect();
                        self.announce(f, &routes, out);
                    }
                }
            }
            (
                S::OpenSent | S::OpenConfirm,
                E::KeepAliveMsg { .. } | E::UpdateMsg { .. } | E::RouteRefreshMsg { .. },
            ) => {
                self.counters.messages_in += 1;
                let n = fsm_error(self.state);
                self.fail_with(now, n, "unexpected message before Established".into(), out);
            }

            (S::OpenSent | S::OpenConfirm | S::Established, E::HoldTimerExpires) => {
                let n = Notification::new(code::HOLD_TIMER_EXPIRED, 0, Vec::new());
                self.fail_with(now, n, "hold timer expired".into(), out);
            }
            (
                S::OpenSent | S::OpenConfirm | S::Established,
                E::TcpConnectionFails { reason, .. },
            ) => {
                self.drop_session(now, format!("connection lost: {reason}"), out);
            }

            (_, E::ManualStop(mode)) => {
                self.stop(mode, out);
            }
            // Everything else: not applicable in this state (e.g. a timer that was just
            // cancelled, a second ManualStart).
            _ => {}
        }
    }

    /// Events on the connection held for collision resolution.
    fn step_incoming(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Some(conn) = self.incoming else { return };
        match ev {
            Event::BgpOpen { open, .. } => {
                self.counters.messages_in += 1;
                if self.check_open(&open).is_err() {
                    self.incoming = None;
                    out.push(Action::Close { conn });
                    return;
                }
                // RFC 4271 §6.8: the connection opened by the speaker with the higher BGP
                // identifier survives.
                if u32::from(self.params.router_id) < u32::from(open.bgp_id) {
                    if let Some(old) = self.conn.take() {
                        out.push(Action::Send {
                            conn: old,
                            msg: cease(subcode::CONNECTION_COLLISION_RESOLUTION),
                        });
                        out.push(Action::Close { conn: old });
                    }
                    self.incoming = None;
                    self.conn = Some(conn);
                    out.push(Action::Send {
                        conn,
                        msg: Message::Open(self.our_open()),
                    });
                    self.accept_open(conn, &open, now, out);
                } else {
                    self.incoming = None;
                    out.push(Action::Send {
                        conn,
                        msg: cease(subcode::CONNECTION_COLLISION_RESOLUTION),
                    });
                    out.push(Action::Close { conn });
                }
            }
            Event::TcpConnectionFails { .. } => self.incoming = None,
            _ => {
                // Anything but OPEN first is an error on that connection only.
                self.incoming = None;
                out.push(Action::Close { conn });
            }
        }
    }

    fn start(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.connect_retry_at = Some(now + self.params.connect_retry);
        if self.params.passive {
            self.state = State::Active;
        } else {
            self.connect(out);
            self.state = State::Connect;
        }
    }

    fn connect(&mut self, out: &mut Vec<Action>) {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conn = Some(conn);
        self.counters.connect_attempts += 1;
        out.push(Action::Connect { conn });
    }

    fn connection_up(
        &mut self,
        conn: ConnId,
        local: SocketAddr,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.conn = Some(conn);
        self.local_addr = Some(local);
        self.connect_retry_at = None;
        out.push(Action::Send {
            conn,
            msg: Message::Open(self.our_open()),
        });
        self.hold_at = Some(now + LARGE_HOLD);
        self.state = State::OpenSent;
    }

    pub fn our_open(&self) -> Open {
        let p = &self.params;
        let mut capabilities: Vec<Capability> = p
            .families
            .iter()
            .map(|f| {
                let (afi, safi) = f.afi_safi();
                Capability::Multiprotocol { afi, safi }
            })
            .collect();
        capabilities.push(Capability::RouteRefresh);
        if let Some(restart_time) = p.restart_time {
            capabilities.push(Capability::GracefulRestart(GracefulRestart {
                restart_state: self.restarting,
                notification: false,
                restart_time,
                families: p
                    .families
                    .iter()
                    .map(|f| {
                        let (afi, safi) = f.afi_safi();
                        GrFamily {
                            afi,
                            safi,
                            forwarding_preserved: p.forwarding_preserved || !self.restarting,
                        }
                    })
                    .collect(),
            }));
        }
        capabilities.push(Capability::FourOctetAs(p.local_as));
        Open {
            my_as: u16::try_from(p.local_as).unwrap_or(AS_TRANS),
            hold_time: p.hold_time,
            bgp_id: p.router_id,
            capabilities,
        }
    }

    fn check_open(&self, open: &Open) -> Result<(), Notification> {
        let p = &self.params;
        if open.asn() != p.remote_as || (!open.has_four_octet_as() && open.my_as == AS_TRANS) {
            return Err(Notification::new(
                code::OPEN_MESSAGE,
                subcode::BAD_PEER_AS,
                Vec::new(),
            ));
        }
        if open.bgp_id == p.router_id {
            return Err(Notification::new(
                code::OPEN_MESSAGE,
                subcode::BAD_BGP_IDENTIFIER,
                Vec::new(),
            ));
        }
        Ok(())
    }

    fn accept_open(&mut self, conn: ConnId, open: &Open, now: Instant, out: &mut Vec<Action>) {
        let hold = self.params.hold_time.min(open.hold_time);
        let keepalive = match (hold, self.params.keepalive) {
            (0, _) => 0,
            (h, Some(k)) => k.min(h / 3).max(1),
            (h, None) => (h / 3).max(1),
        };
        let theirs = open.families();
        self.active_families = self
            .params
            .families
            .iter()
            .copied()
            .filter(|f| theirs.contains(&f.afi_safi()))
            .collect();
        self.negotiated = Some(Negotiated {
            peer_router_id: open.bgp_id,
            peer_as: open.asn(),
            hold_time: hold,
            keepalive,
            four_octet_as: open.has_four_octet_as(),
            families: self.active_families.iter().map(|f| f.to_string()).collect(),
            peer_graceful_restart: open.graceful_restart().is_some(),
        });
        out.push(Action::Send {
            conn,
            msg: Message::Keepalive,
        });
        self.restart_keepalive(now);
        self.restart_hold(now);
        self.state = State::OpenConfirm;
    }

    fn restart_hold(&mut self, now: Instant) {
        self.hold_at = match self.negotiated.as_ref().map(|n| n.hold_time) {
            Some(0) => None,
            Some(h) => Some(now + Duration::from_secs(h as u64)),
            None => Some(now + LARGE_HOLD),
        };
    }

    fn restart_keepalive(&mut self, now: Instant) {
        self.keepalive_at = match self.negotiated.as_ref().map(|n| n.keepalive) {
            Some(0) | None => None,
            Some(k) => Some(now + Duration::from_secs(k as u64)),
        };
    }

    fn establish(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.state = State::Established;
        self.established_at = Some((now, SystemTime::now()));
        self.counters.established_transitions += 1;
        self.last_error = None;
        self.restarting = false;
        self.advertised.clear();
        let families = self.active_families.clone();
        for f in families {
            let routes: Vec<IpNet> = self
                .desired
                .iter()
                .filter(|p| Family::of(p) == f)
                .copied()
                .collect();
            if self.announce(f, &routes, out) {
                self.advertised.extend(routes);
            }
            if let Some(conn) = self.conn {
                out.push(Action::Send {
                    conn,
                    msg: Message::Update(Update::end_of_rib(f)),
                });
            }
        }
    }

    /// Diffs desired against advertised and sends the difference.
    fn sync_routes(&mut self, out: &mut Vec<Action>) {
        for f in self.active_families.clone() {
            let want: BTreeSet<IpNet> = self
                .desired
                .iter()
                .filter(|p| Family::of(p) == f)
                .copied()
                .collect();
            let have: BTreeSet<IpNet> = self
                .advertised
                .iter()
                .filter(|p| Family::of(p) == f)
                .copied()
                .collect();
            let gone: Vec<IpNet> = have.difference(&want).copied().collect();
            let new: Vec<IpNet> = want.difference(&have).copied().collect();
            if !gone.is_empty() {
                if let Some(conn) = self.conn {
                    for u in pack_withdrawals(f, &gone) {
                        out.push(Action::Send {
                            conn,
                            msg: Message::Update(u),
                        });
                    }
                }
                for p in &gone {
                    self.advertised.remove(p);
                }
            }
            if !new.is_empty() && self.announce(f, &new, out) {
                self.advertised.extend(new);
            }
        }
    }

    /// Sends announcements of `routes` (one family). False when no next hop is known.
    fn announce(&mut self, f: Family, routes: &[IpNet], out: &mut Vec<Action>) -> bool {
        if routes.is_empty() {
            return true;
        }
        let (Some(conn), Some(attrs)) = (self.conn, self.attributes(f)) else {
            self.last_error = Some(format!("no {f} next hop: set next_hop_ipv4/next_hop_ipv6"));
            return false;
        };
        let ctx = self.context();
        for u in pack_updates(routes, &attrs, &ctx) {
            out.push(Action::Send {
                conn,
                msg: Message::Update(u),
            });
        }
        true
    }

    /// Path attributes of our routes of family `f` on this session.
    pub fn attributes(&self, f: Family) -> Option<PathAttributes> {
        let p = &self.params;
        let local = self.local_addr.map(|a| a.ip());
        let mut attrs = PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(if p.is_ibgp() {
                AsPath::default()
            } else {
                AsPath::sequence(vec![p.local_as])
            }),
            med: p.med,
            local_pref: p.is_ibgp().then_some(p.local_pref),
            communities: p.communities.clone(),
            ..Default::default()
        };
        match f {
            Family::Ipv4Unicast => {
                let nh = p.next_hop_v4.or(match local {
                    Some(IpAddr::V4(a)) => Some(a),
                    _ => None,
                })?;
                attrs.next_hop = Some(nh);
            }
            Family::Ipv6Unicast => {
                let nh = p.next_hop_v6.or(match local {
                    Some(IpAddr::V6(a)) => Some(a),
                    _ => None,
                })?;
                let (afi, safi) = f.afi_safi();
                attrs.mp_reach = Some(MpReach {
                    afi,
                    safi,
                    next_hop: vec![IpAddr::V6(nh)],
                    nlri: Vec::new(),
                });
            }
        }
        Some(attrs)
    }

    fn stop(&mut self, mode: StopMode, out: &mut Vec<Action>) {
        if let Some(conn) = self.conn {
            if mode == StopMode::Withdraw {
                if self.state == State::Established {
                    for f in self.active_families.clone() {
                        let gone: Vec<IpNet> = self
                            .advertised
                            .iter()
                            .filter(|p| Family::of(p) == f)
                            .copied()
                            .collect();
                        for u in pack_withdrawals(f, &gone) {
                            out.push(Action::Send {
                                conn,
                                msg: Message::Update(u),
                            });
                        }
                    }
                }
                if matches!(
                    self.state,
                    State::OpenSent | State::OpenConfirm | State::Established
                ) {
                    out.push(Action::Send {
                        conn,
                        msg: Message::Notification(Notification::shutdown(
                            "nodeplane speaker shutting down",
                        )),
                    });
                }
            }
            out.push(Action::Close { conn });
        }
        if let Some(conn) = self.incoming.take() {
            out.push(Action::Close { conn });
        }
        self.started = false;
        self.reset_session();
        self.idle_hold_at = None;
        self.last_error = Some(match mode {
            StopMode::Withdraw => "administratively stopped".into(),
            StopMode::Restart => "stopped for restart (routes kept by graceful restart)".into(),
        });
    }

    /// Send a NOTIFICATION on the session connection, then drop the session.
    fn fail_with(&mut self, now: Instant, n: Notification, reason: String, out: &mut Vec<Action>) {
        if let Some(conn) = self.conn {
            out.push(Action::Send {
                conn,
                msg: Message::Notification(n),
            });
        }
        self.drop_session(now, reason, out);
    }

    /// Close everything, go Idle and schedule an automatic restart with backoff.
    fn drop_session(&mut self, now: Instant, reason: String, out: &mut Vec<Action>) {
        for conn in [self.conn, self.incoming].into_iter().flatten() {
            out.push(Action::Close { conn });
        }
        let was_stable = self
            .established_at
            .is_some_and(|(t, _)| now.duration_since(t) >= STABLE_SESSION);
        if was_stable {
            self.idle_hold = IDLE_HOLD_INITIAL;
        }
        self.last_error = Some(reason);
        self.reset_session();
        // Jitter 75-100 % of the backoff, so a fleet of nodes does not reconnect in step.
        self.jitter_seed ^= self.jitter_seed << 13;
        self.jitter_seed ^= self.jitter_seed >> 7;
        self.jitter_seed ^= self.jitter_seed << 17;
        let frac = 0.75 + (self.jitter_seed % 1000) as f64 / 4000.0;
        self.idle_hold_at = Some(now + self.idle_hold.mul_f64(frac));
        self.idle_hold = (self.idle_hold * 2).min(IDLE_HOLD_MAX);
    }

    fn reset_session(&mut self) {
        self.state = State::Idle;
        self.conn = None;
        self.incoming = None;
        self.local_addr = None;
        self.connect_retry_at = None;
        self.hold_at = None;
        self.keepalive_at = None;
        self.negotiated = None;
        self.active_families.clear();
        self.advertised.clear();
        self.established_at = None;
    }

    /// Remaining time until the automatic restart, when backing off.
    pub fn idle_hold_remaining(&self, now: Instant) -> Option<Duration> {
        self.idle_hold_at.map(|t| t.saturating_duration_since(now))
    }
}

fn event_conn(ev: &Event) -> Option<ConnId> {
    use Event as E;
    match ev {
        E::TcpCrAcked { conn, .. }
        | E::TcpConnectionConfirmed { conn, .. }
        | E::TcpConnectionFails { conn, .. }
        | E::BgpOpen { conn, .. }
        | E::MessageError { conn, .. }
        | E::NotifMsg { conn, .. }
        | E::KeepAliveMsg { conn }
        | E::UpdateMsg { conn, .. }
        | E::RouteRefreshMsg { conn, .. } => Some(*conn),
        _ => None,
    }
}

fn cease(sub: u8) -> Message {
    Message::Notification(Notification::new(code::CEASE, sub, Vec::new()))
}

fn fsm_error(state: State) -> Notification {
    let sub = match state {
        State::OpenSent => subcode::UNEXPECTED_IN_OPENSENT,
        State::OpenConfirm => subcode::UNEXPECTED_IN_OPENCONFIRM,
        _ => subcode::UNEXPECTED_IN_ESTABLISHED,
    };
    Notification::new(code::FSM, sub, Vec::new())
}

fn error_notification(e: &DecodeError) -> Notification {
    Notification::new(e.code, e.subcode, e.data.clone())
}
