//! The store killed and restarted under traffic: the source says so, sends no empty or partial
//! snapshot, resyncs when the store is back, and forwarding does not change.

mod etcd_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_support::{config, Running, Store, PREFIX};
use etherparse::PacketBuilder;
use nodeplane_control::source::etcd::server::LocalEtcd;
use nodeplane_control::source::etcd::EtcdSource;
use nodeplane_control::source::SourceEvent;
use nodeplane_dataplane::{MaglevCache, Outcome, Packet, Pipeline, Tables, BURST};
use nodeplane_state::{example, State};

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 2, 0x0a];
const NODE_CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const CLIENT: [u8; 4] = [10, 244, 1, 10];
const WEB_VIP: [u8; 4] = [10, 96, 0, 10];
const WEB1: [u8; 4] = [10, 244, 1, 21];
const MS: u64 = 1_000_000;

fn tcp(dst: [u8; 4], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC)
        .ipv4(CLIENT, dst, 64)
        .tcp(sport, dport, 100, 65000);
    b = if syn { b.syn() } else { b.ack(1) };
    let mut f = Vec::new();
    b.write(&mut f, b"GET / HTTP/1.1\r\n").unwrap();
    f
}

/// Flows from the client pod: to the web ClusterIP (Maglev, DNAT) and straight to a web pod
/// (policy), each a SYN then data; plus ports no rule allows.
fn traffic() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for i in 0..1500u16 {
        let sport = 20_000 + i;
        v.push(tcp(WEB_VIP, sport, 80, true));
        v.push(tcp(WEB_VIP, sport, 80, false));
        v.push(tcp(
            WEB1,
            sport,
            if i % 3 == 0 { 22 } else { 8080 },
            i % 2 == 0,
        ));
    }
    v
}

/// What the pipeline did with each packet: the outcome and the rewritten frame.
type Record = (String, Vec<u8>);

fn run_burst(p: &mut Pipeline, pkts: &[Vec<u8>], first: usize, out: &mut Vec<Record>) {
    let iface = p.tables().iface_index("pod-client").unwrap();
    let mut frames: Vec<Vec<u8>> = pkts.to_vec();
    let mut burst: Vec<Packet<'_>> = frames
        .iter_mut()
        .enumerate()
        .map(|(k, f)| Packet {
            data: f,
            iface,
            ts: (first + k) as u64 * MS,
            tag: (first + k) as u64,
            parsed: None,
        })
        .collect();
    let mut outcomes = vec![Outcome::default(); burst.len()];
    p.process_burst(&mut burst, &mut outcomes);
    drop(burst);
    for (o, f) in outcomes.iter().zip(frames) {
        out.push((format!("{o:?}"), f));
    }
}

fn tables(s: &State, gen: u64, cache: &mut MaglevCache) -> Arc<Tables> {
    Arc::new(Tables::build(s, gen, cache))
}

#[test]
fn store_killed_and_restarted_under_traffic_changes_nothing() {
    let mut e = LocalEtcd::start().unwrap_or_else(|e| panic!("cannot run the test etcd: {e}"));
    let mut st = Store::connect(&e.endpoint());
    st.put_state("n1", &example::state().unwrap());
    let r = Running::start(
        EtcdSource::with_local(config(&e.endpoint(), "n1"), None).unwrap(),
        None,
    );
    let (s1, _) = r.next_snapshot(Duration::from_secs(10));
    nodeplane_state::validate(&s1).unwrap();
    let pkts = traffic();

    // Baseline: the same packets, the first state only, no outage.
    let mut cache = MaglevCache::default();
    let mut base = Pipeline::new(tables(&s1, 1, &mut cache));
    let mut want = Vec::new();
    for (i, chunk) in pkts.chunks(BURST).enumerate() {
        run_burst(&mut base, chunk, i * BURST, &mut want);
    }
    assert!(
        want.iter().any(|(o, _)| o.contains("Forward"))
            && want.iter().any(|(o, _)| o.contains("Drop")),
        "the traffic exercises forwarding and drops"
    );

    // Live: the pipeline takes every snapshot the source sends, between bursts, while the
    // store is killed and restarted. The capture spans ~6 s of wall time.
    let mut live = Pipeline::new(tables(&s1, 1, &mut cache));
    let mut gen = 1;
    let mut got = Vec::new();
    let mut events = Vec::new();
    let chunks: Vec<&[Vec<u8>]> = pkts.chunks(BURST).collect();
    let per_burst = Duration::from_millis(6000 / chunks.len() as u64);
    let started = Instant::now();
    let (mut killed, mut restarted) = (None, None);
    for (i, chunk) in chunks.iter().enumerate() {
        while let Some(ev) = r.rx.try_recv().ok().and_then(|e| r.count(e)) {
            if let SourceEvent::Snapshot { state, .. } = &ev {
                gen += 1;
                live.set_tables(tables(state, gen, &mut cache));
            }
            events.push((started.elapsed(), ev));
        }
        run_burst(&mut live, chunk, i * BURST, &mut got);
        if killed.is_none() && started.elapsed() > Duration::from_millis(1000) {
            e.kill();
            killed = Some(started.elapsed());
        }
        if restarted.is_none() && started.elapsed() > Duration::from_millis(3000) {
            e.restart().unwrap();
            restarted = Some(started.elapsed());
        }
        std::thread::sleep(per_burst);
    }
    // Wait for the resync after the restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && !events.iter().any(|(t, ev)| {
            matches!(
                ev,
                SourceEvent::Health {
                    connected: true,
                    ..
                }
            ) && Some(*t) > restarted
        })
    {
        if let Some(ev) =
            r.rx.recv_timeout(Duration::from_millis(100))
                .ok()
                .and_then(|e| r.count(e))
        {
            events.push((started.elapsed(), ev));
        }
    }
    let (killed, restarted) = (killed.unwrap(), restarted.unwrap());
    let down = events
        .iter()
        .position(|(t, ev)| {
            matches!(
                ev,
                SourceEvent::Health {
                    connected: false,
                    ..
                }
            ) && *t >= killed
        })
        .unwrap_or_else(|| panic!("no Health{{connected:false}} after the kill: {events:?}"));
    let (down_t, _) = &events[down];
    assert!(
        *down_t < restarted,
        "the loss was reported during the outage"
    );
    assert!(
        events[down..].iter().any(|(t, ev)| *t >= restarted
            && matches!(ev, SourceEvent::Health { connected: true, detail } if detail.contains("synced"))),
        "resynced after the restart: {events:?}"
    );
    for (_, ev) in &events {
        match ev {
            SourceEvent::Snapshot { state, .. } => {
                assert_eq!(
                    **state, s1,
                    "no empty, partial or different state during the outage"
                )
            }
            SourceEvent::Rejected { error, .. } => panic!("rejection during the outage: {error}"),
            SourceEvent::Health { .. } | SourceEvent::Attempt | SourceEvent::Synced => {}
        }
    }
    // Forwarding: identical outcomes and identical bytes, packet for packet.
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "packet {i} differs");
    }

    // The watch works after the restart: a change shows up.
    let mut svc = s1.services[0].clone();
    svc.name = "after".into();
    svc.frontends.truncate(1);
    svc.frontends[0].port = 8082;
    svc.backends.retain(|b| b.ip.is_ipv4());
    let mut st = Store::connect(&e.endpoint());
    st.put(
        &format!("{PREFIX}/services/after"),
        &serde_json::to_string(&svc).unwrap(),
    );
    let (s2, _) = r.next_snapshot(Duration::from_secs(10));
    assert!(s2.services.iter().any(|s| s.name == "after"));
    assert_eq!(s2.services.len(), s1.services.len() + 1);
}
