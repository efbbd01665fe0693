//! The FSM driven without sockets: events in, actions out, time passed by hand.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nodeplane_bgp::fsm::{Action, ConnId, Event, Neighbor, Params, State, StopMode};
use nodeplane_bgp::packet::{
    Capability, Context, DecodeError, Family, Message, Notification, Open, Update,
};

const OUT: ConnId = 1 << 32;
const IN: ConnId = 1 << 48;

fn params() -> Params {
    Params {
        name: "leaf".into(),
        peer: "10.0.0.1".parse().unwrap(),
        local_as: 65001,
        remote_as: 65000,
        router_id: Ipv4Addr::new(10, 0, 0, 2),
        hold_time: 9,
        keepalive: None,
        connect_retry: Duration::from_secs(2),
        passive: false,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        next_hop_v4: None,
        next_hop_v6: Some("fd00::2".parse().unwrap()),
        communities: vec![],
        med: None,
        local_pref: 100,
        restart_time: Some(120),
        forwarding_preserved: true,
    }
}

fn peer_open(id: [u8; 4], hold: u16) -> Open {
    Open {
        my_as: 65000,
        hold_time: hold,
        bgp_id: Ipv4Addr::from(id),
        capabilities: vec![
            Capability::Multiprotocol { afi: 1, safi: 1 },
            Capability::Multiprotocol { afi: 2, safi: 1 },
            Capability::FourOctetAs(65000),
        ],
    }
}

fn routes(list: &[&str]) -> BTreeSet<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn sends(acts: &[Action]) -> Vec<&Message> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Send { msg, .. } => Some(msg),
            _ => None,
        })
        .collect()
}

fn notification(acts: &[Action]) -> Option<(u8, u8)> {
    sends(acts).into_iter().find_map(|m| match m {
        Message::Notification(n) => Some((n.code, n.subcode)),
        _ => None,
    })
}

/// Idle -> Connect -> OpenSent -> OpenConfirm -> Established; returns the Established actions.
fn establish(n: &mut Neighbor, t0: Instant) -> Vec<Action> {
    let a = n.handle(Event::ManualStart, t0);
    assert_eq!(a, vec![Action::Connect { conn: OUT }]);
    assert_eq!(n.state(), State::Connect);
    let a = n.handle(
        Event::TcpCrAcked {
            conn: OUT,
            local: "10.0.0.2:33000".parse().unwrap(),
        },
        t0,
    );
    assert!(matches!(sends(&a)[..], [Message::Open(_)]));
    assert_eq!(n.state(), State::OpenSent);
    let a = n.handle(
        Event::BgpOpen {
            conn: OUT,
            open: peer_open([10, 0, 0, 1], 6),
        },
        t0,
    );
    assert_eq!(sends(&a), vec![&Message::Keepalive]);
    assert_eq!(n.state(), State::OpenConfirm);
    let a = n.handle(Event::KeepAliveMsg { conn: OUT }, t0);
    assert_eq!(n.state(), State::Established);
    a
}

#[test]
fn establishes_and_announces_then_end_of_rib() {
    let t0 = Instant::now();
    let mut n = Neighbor::new(params(), OUT);
    n.handle(
        Event::RoutesChanged(routes(&["10.244.1.0/24", "fd00:244:1::/64"])),
        t0,
    );
    let a = establish(&mut n, t0);
    let ups: Vec<&Update> = sends(&a)
        .into_iter()
        .map(|m| match m {
            Message::Update(u) => u,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    // v4 announce, v4 EoR, v6 announce, v6 EoR.
    assert_eq!(ups.len(), 4);
    assert_eq!(ups[0].nlri, vec!["10.244.1.0/24".parse().unwrap()]);
    assert_eq!(ups[0].attrs.next_hop, Some("10.0.0.2".parse().unwrap()));
    assert_eq!(ups[1].is_end_of_rib(), Some(Family::Ipv4Unicast));
    assert_eq!(
        ups[2].attrs.mp_reach.as_ref().unwrap().nlri,
        vec!["fd00:244:1::/64".parse::<IpNet>().unwrap()]
    );
    assert_eq!(ups[3].is_end_of_rib(), Some(Family::Ipv6Unicast));
    assert_eq!(n.negotiated().unwrap().hold_time, 6, "min of 9 and 6");
    assert_eq!(n.negotiated().unwrap().keepalive, 2);
    assert_eq!(n.advertised().len(), 2);
}

#[test]
fn route_changes_are_diffed() {
    let t0 = Instant::now();
    let mut n = Neighbor::new(params(), OUT);
    n.handle(Event::RoutesChanged(routes(&["10.244.1.0/24"])), t0);
    establish(&mut n, t0);
    let a = n.handle(Event::RoutesChanged(routes(&["10.244.2.0/25"])), t0);
    let ups = sends(&a);
    assert_eq!(ups.len(), 2);
    let Message::Update(w) = ups[0] else { panic!() };
    assert_eq!(w.withdrawn, vec!["10.244.1.0/24".parse().unwrap()]);
    let Message::Update(u) = ups[1] else { panic!() };
    assert_eq!(u.nlri, vec!["10.244.2.0/25".parse().unwrap()]);
    assert_eq!(n.advertised(), &routes(&["10.244.2.0/25"]));
    // Same set again: nothing to send.
    assert!(n
        .handle(Event::RoutesChanged(routes(&["10.244.2.0/25"])), t0)
        .is_empty());
}

#[test]
fn timers_keepalive_and_hold_expiry() {
    let t0 = Instant::now();
    let mut n = Neighbor::new(params(), OUT);
    establish(&mut n, t0);
    assert_eq!(n.next_deadline(), Some(t0 + Duration::from_secs(2)));
    let a = n.poll_timers(t0 + Duration::from_secs(2));
    assert_eq!(sends(&a), vec![&Message::Keepalive]);
    // The peer goes quiet: hold (6 s) expires.
    let a = n.poll_timers(t0 + Duration::from_secs(6));
    assert_eq!(notification(&a), Some((4, 0)));
    assert!(a.contains(&Action::Close { conn: OUT }));
    assert_eq!(n.state(), State::Idle);
    assert_eq!(n.last_error.as_deref(), Some("hold timer expired"));
    // Backoff then automatic restart.
    let wait = n.idle_hold_remaining(t0 + Duration::from_secs(6)).unwrap();
    assert!(wait >= Duration::from_millis(750) && wait <= Duration::from_secs(1));
    let a = n.poll_timers(t0 + Duration::from_secs(8));
    assert!(matches!(a[..], [Action::Connect { .. }]));
    assert_eq!(n.state(), State::Connect);
}

#[test]
fn backoff_grows_while_the_peer_keeps_failing() {
    let mut t = Instant::now();
    let mut n = Neighbor::new(params(), OUT);
    let mut a = n.handle(Event::ManualStart, t);
    let mut waits = Vec::new();
    for _ in 0..5 {
        let Some(&Action::Connect { conn }) = a.first() else {
            panic!("expected a connect, got {a:?}")
        };
        n.handle(
            Event::TcpCrAcked {
                conn,
                local: "10.0.0.2:1".parse().unwrap(),
            },
            t,
        );
        let e = n.handle(
            Event::MessageError {
                conn,
                error: garbage_error(),
            },
            t,
        );
        assert_eq!(
            notification(&e),
            Some((1, 1)),
            "garbage gets a NOTIFICATION"
        );
        assert_eq!(n.state(), State::Idle);
        let w = n.idle_hold_remaining(t).unwrap();
        waits.push(w);
        t += w;
        a = n.poll_timers(t);
    }
    assert!(waits.windows(2).all(|w| w[1] > w[0]), "{waits:?}");
}

fn garbage_error() -> DecodeError {
    nodeplane_bgp::packet::frame_len(&[0u8; 19]).unwrap_err()
}

#[test]
fn open_errors_send_notifications() {
    let t0 = Instant::now();
    let mut n = Neighbor::new(params(), OUT);
    n.handle(Event::ManualStart, t0);
    n.handle(
        Event::TcpCrAcked {
            conn: OUT,
            local: "10.0.0.2:1".parse().unwrap(),
        },
        t0,
    );
    let mut bad = peer_open([10, 0, 0, 1], 9);
    bad.capabilities.push(Capability::FourOctetAs(65099));
    bad.capabilities.remove(2);
    let a = n.handle(
        Event::BgpOpen {
            conn: OUT,
            open: bad,
        },
        t0,
    );
    assert_eq!(notification(&a), Some((2, 2)), "bad peer AS");
    assert_eq!(n.state(), State::Idle);
}

#[test]
fn unexpected_keepalive_in_opensent_is_an_fsm_error() {
    let t0 = Instant::now();
    let mut n = Neighbor::new(params(), OUT);
    n.handle(Event::ManualStart, t0);
    n.handle(
        Event::TcpCrAcked {
            conn: OUT,
            local: "10.0.0.2:1".parse().unwrap(),
        },
        t0,
    );
    let a = n.handle(Event::KeepAliveMsg { conn: OUT }, t0);
    assert_eq!(notification(&a), Some((5, 1)));
}

#[test]
fn collision_keeps_the_connection_of_the_higher_identifier() {
    // Peer 10.0.0.9 > our 10.0.0.2: its connection (incoming) wins.
    let t0 = Instant::now();
    let mut n = Neighbor::new(params(), OUT);
    n.handle(Event::ManualStart, t0);
    n.handle(
        Event::TcpCrAcked {
            conn: OUT,
            local: "10.0.0.2:1".parse().unwrap(),
        },
        t0,
    );
    let a = n.handle(
        Event::TcpConnectionConfirmed {
            conn: IN,
            local: "10.0.0.2:179".parse().unwrap(),
        },
        t0,
    );
    assert!(a.is_empty(), "held until its OPEN arrives");
    let a = n.handle(
        Event::BgpOpen {
            conn: IN,
            open: peer_open([10, 0, 0, 9], 9),
        },
        t0,
    );
    assert!(a.contains(&Action::Send {
        conn: OUT,
        msg: Message::Notification(Notification::new(6, 7, vec![]))
    }));
    assert!(a.contains(&Action::Close { conn: OUT }));
    assert_eq!(n.state(), State::OpenConfirm);
    assert!(n.owns(IN) && !n.owns(OUT));

    // Peer 10.0.0.1 < ours: the incoming one is closed, ours goes on.
    let mut n = Neighbor::new(params(), OUT);
    n.handle(Event::ManualStart, t0);
    n.handle(
        Event::TcpCrAcked {
            conn: OUT,
            local: "10.0.0.2:1".parse().unwrap(),
        },
        t0,
    );
    n.handle(
        Event::TcpConnectionConfirmed {
            conn: IN,
            local: "10.0.0.2:179".parse().unwrap(),
        },
        t0,
    );
    let a = n.handle(
        Event::BgpOpen {
            conn: IN,
            open: peer_open([10, 0, 0, 1], 9),
        },
        t0,
    );
    assert!(a.contains(&Action::Close { conn: IN }));
    assert_eq!(n.state(), State::OpenSent);
    assert!(n.owns(OUT) && !n.owns(IN));
}

#[test]
fn manual_stop_withdraws_then_ceases_or_restarts_silently() {
    let t0 = Instant::now();
    let mut n = Neighbor::new(params(), OUT);
    n.handle(
        Event::RoutesChanged(routes(&["10.244.1.0/24", "fd00:244:1::/64"])),
        t0,
    );
    establish(&mut n, t0);
    let a = n.handle(Event::ManualStop(StopMode::Withdraw), t0);
    let m = sends(&a);
    assert_eq!(m.len(), 3, "{m:?}");
    let Message::Update(w4) = m[0] else { panic!() };
    assert_eq!(w4.withdrawn.len(), 1);
    let Message::Update(w6) = m[1] else { panic!() };
    assert_eq!(w6.attrs.mp_unreach.as_ref().unwrap().withdrawn.len(), 1);
    assert_eq!(notification(&a), Some((6, 2)));
    assert_eq!(a.last(), Some(&Action::Close { conn: OUT }));
    assert_eq!(n.state(), State::Idle);

    let mut n = Neighbor::new(params(), OUT);
    n.handle(Event::RoutesChanged(routes(&["10.244.1.0/24"])), t0);
    establish(&mut n, t0);
    let a = n.handle(Event::ManualStop(StopMode::Restart), t0);
    assert_eq!(
        a,
        vec![Action::Close { conn: OUT }],
        "no withdraw, no NOTIFICATION"
    );
}

#[test]
fn graceful_restart_bit_only_before_the_first_session() {
    let t0 = Instant::now();
    let mut n = Neighbor::new(params(), OUT);
    let gr = |o: &Open| o.graceful_restart().unwrap().restart_state;
    assert!(gr(&n.our_open()));
    establish(&mut n, t0);
    assert!(!gr(&n.our_open()));
}

/// The F bit of each family in our encoded GR capability (code 64: restart flags and time,
/// then AFI, SAFI, flags per family).
fn f_bits(open: &Open) -> Vec<bool> {
    let bytes = Message::Open(open.clone())
        .to_bytes(&Context::default())
        .unwrap();
    let at = bytes
        .windows(2)
        .position(|w| w == [64, 2 + 4 * 2])
        .expect("GR capability with two families");
    let families = &bytes[at + 4..at + 4 + 8];
    assert_eq!(&families[..3], &[0, 1, 1], "IPv4 unicast first");
    assert_eq!(&families[4..7], &[0, 2, 1], "IPv6 unicast second");
    vec![families[3] == 0x80, families[7] == 0x80]
}

#[test]
fn forwarding_state_bit_says_whether_forwarding_survived() {
    let t0 = Instant::now();
    // A clean stop with a conntrack snapshot restored: F set for every family.
    let n = Neighbor::new(params(), OUT);
    assert_eq!(f_bits(&n.our_open()), [true, true]);
    // After a crash (nothing restored): F clear, so routers drop our stale routes at once.
    let mut n = Neighbor::new(
        Params {
            forwarding_preserved: false,
            ..params()
        },
        OUT,
    );
    let open = n.our_open();
    assert!(open.graceful_restart().unwrap().restart_state);
    assert_eq!(f_bits(&open), [false, false]);
    // Once a session has been up, the process and its forwarding ran on: later OPENs set it.
    establish(&mut n, t0);
    assert_eq!(f_bits(&n.our_open()), [true, true]);
}

#[test]
fn malformed_updates_are_counted_and_dropped() {
    let t0 = Instant::now();
    let mut n = Neighbor::new(params(), OUT);
    establish(&mut n, t0);
    let bytes = [
        &[0xff; 16][..],
        &[0, 31, 2, 0, 0, 0, 4, 0x40, 1, 1, 9, 24, 10, 1, 2],
    ]
    .concat();
    let Ok(Message::Update(update)) = Message::decode(&bytes, &n.context()) else {
        panic!()
    };
    let a = n.handle(Event::UpdateMsg { conn: OUT, update }, t0);
    assert!(a.is_empty(), "imports nothing, keeps the session");
    assert_eq!(n.state(), State::Established);
    assert_eq!(n.counters.updates_malformed, 1);
    assert!(n
        .last_error
        .as_deref()
        .unwrap()
        .contains("treat-as-withdraw"));
}

#[test]
fn stray_connection_events_are_closed() {
    let t0 = Instant::now();
    let mut n = Neighbor::new(params(), OUT);
    establish(&mut n, t0);
    let a = n.handle(Event::KeepAliveMsg { conn: 77 }, t0);
    assert_eq!(a, vec![Action::Close { conn: 77 }]);
    let a = n.handle(
        Event::TcpConnectionConfirmed {
            conn: IN,
            local: "10.0.0.2:179".parse().unwrap(),
        },
        t0,
    );
    assert_eq!(notification(&a), Some((6, 7)));
    assert_eq!(n.state(), State::Established);
}

/// A SYN nobody answers (a silent peer, a filter, a TCP-MD5 key mismatch): each ConnectRetry
/// expiry closes the attempt, counts it and says so in `last_error`, replacing an older reason;
/// a new attempt follows at the ConnectRetry pace, never faster.
#[test]
fn an_unanswered_connect_is_counted_and_named() {
    let t0 = Instant::now();
    let mut n = Neighbor::new(params(), OUT);
    n.last_error = Some("received Cease: other configuration change (6/6)".into());
    let a = n.handle(Event::ManualStart, t0);
    assert_eq!(a, vec![Action::Connect { conn: OUT }]);
    assert_eq!(n.counters.connect_attempts, 1);
    // Nothing before the 2 s ConnectRetry.
    assert!(n.poll_timers(t0 + Duration::from_millis(1900)).is_empty());
    let a = n.poll_timers(t0 + Duration::from_secs(2));
    assert_eq!(
        a,
        vec![
            Action::Close { conn: OUT },
            Action::Connect { conn: OUT + 1 }
        ]
    );
    assert_eq!(n.state(), State::Connect);
    assert_eq!(n.counters.connect_timeouts, 1);
    assert_eq!(n.counters.connect_attempts, 2);
    assert_eq!(
        n.last_error.as_deref(),
        Some("connect: no answer within 2 s")
    );
    // A refused connect is a failure of its own kind, not a timeout.
    n.handle(
        Event::TcpConnectionFails {
            conn: OUT + 1,
            reason: "Connection refused".into(),
        },
        t0 + Duration::from_secs(3),
    );
    assert_eq!(n.state(), State::Active);
    assert!(n.poll_timers(t0 + Duration::from_millis(4900)).is_empty());
    let a = n.poll_timers(t0 + Duration::from_secs(5));
    assert_eq!(a, vec![Action::Connect { conn: OUT + 2 }]);
    assert_eq!(n.counters.connect_timeouts, 1);
    assert_eq!(n.counters.connect_attempts, 3);
}
