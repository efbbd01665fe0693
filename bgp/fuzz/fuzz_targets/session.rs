//! `cd bgp && cargo +nightly fuzz run session fuzz/corpus/session fuzz/seeds/session`: one
//! neighbour's FSM against a scripted peer. The input is the peer's byte stream, cut into
//! chunks as TCP may deliver them, interleaved with time passing, route changes, stops,
//! starts, dropped and colliding connections. Its bytes go through the speaker's own stream
//! reader (`network::read_events`) into the FSM, as `network.rs` does with a socket.
//!
//! Checked: every framed message round-trips through our codec and agrees with netgauze
//! (`fuzz/src/lib.rs`); the reader consumes exactly the whole messages (all after a fatal
//! one); every message the FSM sends encodes, decodes back equal and is read by netgauze;
//! the routes the peer was told (the UPDATEs sent on a connection, applied in order) are
//! the FSM's Adj-RIB-Out whenever it is Established, and that is empty when it is not.
//!
//! ```text
//!  [0] flags: bit 0 passive, bit 1 iBGP, bit 2 a 4-octet local AS, bit 3 the peer connects
//!  ops: op & 3 = 0: [len][len bytes] from the peer      1: (op >> 2) seconds pass
//!       2: routes = the subset (op >> 2) of ROUTES      3: (op >> 2) % 5: stop (withdraw),
//!       stop (graceful restart), start, the peer closes, the peer connects (again)
//! ```
#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use nodeplane_bgp::fsm::{Action, ConnId, Event, Neighbor, Params, State, StopMode};
use nodeplane_bgp::network::read_events;
use nodeplane_bgp::packet::{frame_len, Family, Message};
use nodeplane_bgp_fuzz::{check_sent, round_trip};

const ROUTES: [&str; 6] = [
    "10.244.1.0/24",
    "10.244.2.0/25",
    "192.0.2.10/32",
    "fd00:244:1::/64",
    "fd00:244:2::/64",
    "2001:db8::10/128",
];

fn routes(mask: u8) -> BTreeSet<IpNet> {
    ROUTES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, r)| r.parse().expect("route"))
        .collect()
}

struct Peer {
    /// The connection the peer's bytes arrive on (the latest it opened or accepted).
    conn: Option<ConnId>,
    rbuf: Vec<u8>,
    next_incoming: ConnId,
    /// Per connection: the routes the UPDATEs sent on it announce (the peer's Adj-RIB-In).
    told: HashMap<ConnId, BTreeSet<IpNet>>,
    local: SocketAddr,
}

impl Peer {
    /// Carries out the FSM's actions: connects succeed at once, sends are checked and applied
    /// to the peer's view, closes end the connection.
    fn act(&mut self, n: &mut Neighbor, actions: Vec<Action>, now: Instant) {
        let mut queue = actions;
        while !queue.is_empty() {
            let mut more = Vec::new();
            for a in queue {
                match a {
                    Action::Connect { conn } => {
                        self.open(conn);
                        more.extend(n.handle(
                            Event::TcpCrAcked {
                                conn,
                                local: self.local,
                            },
                            now,
                        ));
                    }
                    Action::Send { conn, msg } => {
                        check_sent(&msg, &n.context());
                        if let Message::Update(u) = &msg {
                            let rib = self.told.entry(conn).or_default();
                            for p in &u.withdrawn {
                                rib.remove(&IpNet::V4(*p));
                            }
                            for p in u.attrs.mp_unreach.iter().flat_map(|m| &m.withdrawn) {
                                rib.remove(p);
                            }
                            rib.extend(u.nlri.iter().map(|p| IpNet::V4(*p)));
                            rib.extend(u.attrs.mp_reach.iter().flat_map(|m| m.nlri.clone()));
                        }
                    }
                    Action::Close { conn } => {
                        self.told.remove(&conn);
                        if self.conn == Some(conn) {
                            self.conn = None;
                            self.rbuf.clear();
                        }
                    }
                }
            }
            queue = more;
        }
    }

    fn open(&mut self, conn: ConnId) {
        self.conn = Some(conn);
        self.rbuf.clear();
        self.told.insert(conn, BTreeSet::new());
    }

    /// Bytes from the peer: framed, round-tripped and read into events as `network.rs` does.
    fn receive(&mut self, n: &mut Neighbor, bytes: &[u8], now: Instant) {
        let Some(conn) = self.conn else {
            return;
        };
        self.rbuf.extend_from_slice(bytes);
        let ctx = n.context();
        let mut whole = 0;
        while let Ok(Some(len)) = frame_len(&self.rbuf[whole..]) {
            round_trip(&self.rbuf[whole..whole + len], &ctx);
            whole += len;
        }
        let mut events = Vec::new();
        let read = read_events(&self.rbuf, conn, &ctx, &mut events);
        if read.fatal {
            assert_eq!(read.consumed, self.rbuf.len(), "a fatal event consumes all");
        } else {
            assert_eq!(
                read.consumed, whole,
                "the reader consumes exactly the whole messages"
            );
            assert_eq!(events.len(), whole_count(&self.rbuf[..whole]));
        }
        self.rbuf.drain(..read.consumed);
        for ev in events {
            let acts = n.handle(ev, now);
            self.act(n, acts, now);
        }
    }
}

fn whole_count(mut b: &[u8]) -> usize {
    let mut k = 0;
    while let Ok(Some(len)) = frame_len(b) {
        b = &b[len..];
        k += 1;
    }
    k
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut ops)) = data.split_first() else {
        return;
    };
    let local_as = if flags & 4 != 0 { 4_200_000_001 } else { 65001 };
    let params = Params {
        name: "leaf".into(),
        peer: "10.0.0.1".parse().expect("ip"),
        local_as,
        remote_as: if flags & 2 != 0 { local_as } else { 65000 },
        router_id: Ipv4Addr::new(10, 0, 0, 2),
        hold_time: 9,
        keepalive: None,
        connect_retry: Duration::from_secs(2),
        passive: flags & 1 != 0,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        next_hop_v4: None,
        next_hop_v6: Some("fd00::2".parse().expect("ip")),
        communities: vec!["65000:100".parse().expect("community")],
        med: Some(10),
        local_pref: 200,
        restart_time: Some(120),
        forwarding_preserved: flags & 16 != 0,
    };
    let mut now = Instant::now();
    let mut n = Neighbor::new(params, 1 << 32);
    let mut peer = Peer {
        conn: None,
        rbuf: Vec::new(),
        next_incoming: 1 << 48,
        told: HashMap::new(),
        local: "10.0.0.2:40000".parse().expect("addr"),
    };
    let acts = n.handle(Event::RoutesChanged(routes(0b11_1111)), now);
    peer.act(&mut n, acts, now);
    let acts = n.handle(Event::ManualStart, now);
    peer.act(&mut n, acts, now);
    let mut incoming = flags & 8 != 0;
    loop {
        if incoming {
            incoming = false;
            let conn = peer.next_incoming;
            peer.next_incoming += 1;
            peer.open(conn);
            let acts = n.handle(
                Event::TcpConnectionConfirmed {
                    conn,
                    local: peer.local,
                },
                now,
            );
            peer.act(&mut n, acts, now);
        }
        let Some((&op, rest)) = ops.split_first() else {
            break;
        };
        ops = rest;
        let arg = op >> 2;
        match op & 3 {
            0 => {
                let len = ops
                    .first()
                    .map_or(0, |l| usize::from(*l))
                    .min(ops.len().saturating_sub(1));
                let (chunk, rest) = ops.get(1..).unwrap_or_default().split_at(len);
                ops = rest;
                peer.receive(&mut n, chunk, now);
            }
            1 => {
                now += Duration::from_secs(u64::from(arg));
                while n.next_deadline().is_some_and(|d| d <= now) {
                    let acts = n.poll_timers(now);
                    peer.act(&mut n, acts, now);
                }
            }
            2 => {
                let acts = n.handle(Event::RoutesChanged(routes(arg)), now);
                peer.act(&mut n, acts, now);
            }
            _ => {
                let ev = match arg % 5 {
                    0 => Some(Event::ManualStop(StopMode::Withdraw)),
                    1 => Some(Event::ManualStop(StopMode::Restart)),
                    2 => Some(Event::ManualStart),
                    3 => peer.conn.take().map(|conn| {
                        peer.rbuf.clear();
                        peer.told.remove(&conn);
                        Event::TcpConnectionFails {
                            conn,
                            reason: "closed by peer".into(),
                        }
                    }),
                    _ => {
                        incoming = true;
                        None
                    }
                };
                if let Some(ev) = ev {
                    let acts = n.handle(ev, now);
                    peer.act(&mut n, acts, now);
                }
            }
        }
        if n.state() == State::Established {
            assert!(
                n.negotiated().is_some(),
                "Established without a negotiation"
            );
            assert!(
                peer.told
                    .iter()
                    .any(|(c, rib)| n.owns(*c) && rib == n.advertised()),
                "the peer was told {:?}, the Adj-RIB-Out is {:?}",
                peer.told,
                n.advertised()
            );
        } else {
            assert!(
                n.advertised().is_empty(),
                "{:?} with an Adj-RIB-Out {:?}",
                n.state(),
                n.advertised()
            );
        }
    }
});
