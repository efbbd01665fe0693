//! Scaling curves of the packet path (issue 11, item 5): per-packet cost of an established
//! packet and of a new connection against
//! - services (10, 1k, 10k, 100k; 10k live flows),
//! - live flows (10k, 100k, 1M; 10 services),
//! - ipcache prefixes (1k, 100k, 1M /32 entries besides the node's own; 10 services),
//! - policy rules per endpoint (10, 1k, 10k; the allowing rule last; 10 services),
//!
//! each written to `OUTDIR/<curve>.json` with an SVG chart beside it.
//!
//! Run: `bash scripts/bench.sh --curves` (builds this in release and writes bench/curves/).
//!
//! Wall clock, so load-dependent: every point is the median of 5 repetitions, and every point
//! also carries its ratio to the curve's first point, measured in the same run. The
//! established cost is the pipeline's own: the time to restore the 64 frames of a burst from
//! their templates is measured alone and subtracted, as in the criterion benchmark.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use nodeplane_bench::plot::{line_chart, Series};
use nodeplane_bench::{client_frame_from, state, xorshift};
use nodeplane_dataplane::{Action, MaglevCache, Outcome, Packet, Pipeline, Tables, BURST};
use nodeplane_state::{IpcacheEntry, PortRange, Rule, RuleAction, RuleProto, State};
use serde_json::json;

const REPS: usize = 5;
/// Established bursts per repetition.
const EST_BURSTS: usize = 1_500;
/// New-connection bursts per repetition.
const NEW_BURSTS: usize = 60;
/// Source addresses of the client endpoint: 10.244.0.10 + k.
const CLIENT_IPS: u32 = 200;
const PORTS: u32 = 60_000;
const FRAME: usize = 64;

fn client_ip(k: u32) -> [u8; 4] {
    [10, 244, (k / 200) as u8, 10 + (k % 200) as u8]
}

/// The i-th flow: (client address, service, source port). The (address, port) pair is unique
/// per flow, so that no two flows share a reply tuple when their services pick the same
/// backend (without source NAT such flows would clash).
fn tuple(i: u64, services: u32) -> ([u8; 4], u32, u16) {
    let port = (i % u64::from(PORTS)) as u16 + 1024;
    let ip = (i / u64::from(PORTS)) as u32;
    assert!(ip < CLIENT_IPS, "flow {i} out of range");
    let mut h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let svc = (xorshift(&mut h) % u64::from(services)) as u32;
    (client_ip(ip), svc, port)
}

/// A node with `services` services, room for `ct` flows and the client on every address.
fn base(services: u32, ct: u32) -> State {
    let mut s = state(services, ct);
    let client = s
        .endpoints
        .iter_mut()
        .find(|e| e.name == "client")
        .expect("client endpoint");
    client.ips = (0..CLIENT_IPS)
        .map(|k| IpAddr::V4(Ipv4Addr::from(client_ip(k))))
        .collect();
    s
}

fn with_ipcache(mut s: State, prefixes: u32) -> State {
    // /32s of remote pods in 100.64.0.0/10, 256 identities among them.
    s.ipcache.extend((0..prefixes).map(|i| {
        IpcacheEntry {
            prefix: format!("{}/32", Ipv4Addr::from((100u32 << 24 | 64 << 16) + i))
                .parse()
                .expect("prefix"),
            identity: 20_000 + i % 256,
        }
    }));
    s
}

fn with_rules(mut s: State, rules: u32) -> State {
    for p in &mut s.policies {
        let allow = p.ingress.pop().expect("the allowing rule");
        p.ingress = (1..rules)
            .map(|j| Rule {
                action: RuleAction::Allow,
                identities: vec![30_000 + j],
                cidrs: vec![],
                protocol: RuleProto::TCP,
                ports: vec![PortRange {
                    port: 9000 + (j % 1000) as u16,
                    end_port: None,
                }],
            })
            .collect();
        p.ingress.push(allow);
    }
    s
}

fn run(p: &mut Pipeline, bufs: &mut [Vec<u8>], out: &mut [Outcome], iface: u16, ts: u64) {
    let mut it = bufs.iter_mut();
    let mut pkts: [Packet<'_>; BURST] = std::array::from_fn(|i| Packet {
        data: it.next().expect("64 buffers").as_mut_slice(),
        iface,
        ts,
        tag: i as u64,
        parsed: None,
    });
    p.process_burst(&mut pkts, out);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Figures {
    established_ns: f64,
    new_ns: f64,
    build_ms: f64,
}

/// Builds `s`'s tables, opens `flows` flows, and times established and new packets.
fn measure(s: &State, services: u32, flows: u64) -> Figures {
    let start = Instant::now();
    let t = Arc::new(Tables::build(s, 1, &mut MaglevCache::default()));
    let build_ms = start.elapsed().as_secs_f64() * 1e3;
    let pc = t.iface_index("pod-client").expect("iface");
    let mut p = Pipeline::new(t);
    // As a worker whose flow events nobody observes (the default of a running node).
    p.set_record_tuples(false);

    // Open the flows; keep each one's ACK frame in one flat array.
    let mut acks = vec![0u8; flows as usize * FRAME];
    for i in 0..flows {
        let (src, svc, port) = tuple(i, services);
        let mut syn = client_frame_from(src, svc, port, true);
        let o = p.process_one(&mut syn, pc, 1);
        assert!(matches!(o.action, Action::Forward(_)), "flow {i}: {o:?}");
        let ack = client_frame_from(src, svc, port, false);
        acks[i as usize * FRAME..][..FRAME].copy_from_slice(&ack);
    }

    let mut bufs = vec![vec![0u8; FRAME]; BURST];
    let mut out = [Outcome::default(); BURST];
    let mut rng = 0x9e37_79b9u64;
    let restore = |bufs: &mut [Vec<u8>], rng: &mut u64| {
        for b in bufs.iter_mut() {
            let f = (xorshift(rng) % flows) as usize;
            b.copy_from_slice(&acks[f * FRAME..][..FRAME]);
        }
    };
    // One unmeasured repetition first: page faults, caches and the CPU's clock settle.
    for _ in 0..EST_BURSTS {
        restore(&mut bufs, &mut rng);
        run(&mut p, &mut bufs, &mut out, pc, 2);
    }
    let mut est = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let mut r = rng;
        let t0 = Instant::now();
        for _ in 0..EST_BURSTS {
            restore(&mut bufs, &mut r);
            std::hint::black_box(&bufs);
        }
        let copy = t0.elapsed();
        let t1 = Instant::now();
        for _ in 0..EST_BURSTS {
            restore(&mut bufs, &mut rng);
            run(&mut p, &mut bufs, &mut out, pc, 2);
        }
        let total = t1.elapsed();
        let own = total.saturating_sub(copy);
        est.push(own.as_secs_f64() * 1e9 / (EST_BURSTS * BURST) as f64);
    }

    // New connections on tuples after the established ones, each used once.
    let mut next = flows;
    let mut new = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let mut ns = 0.0;
        for _ in 0..NEW_BURSTS {
            for b in bufs.iter_mut() {
                let (src, svc, port) = tuple(next, services);
                next += 1;
                b.copy_from_slice(&client_frame_from(src, svc, port, true));
            }
            let t0 = Instant::now();
            run(&mut p, &mut bufs, &mut out, pc, 3);
            ns += t0.elapsed().as_secs_f64() * 1e9;
        }
        new.push(ns / (NEW_BURSTS * BURST) as f64);
    }
    let c = p.counters();
    assert_eq!(c.dropped, 0, "no drops while measuring: {:?}", c.drops);
    Figures {
        established_ns: median(est),
        new_ns: median(new),
        build_ms,
    }
}

/// Room for the established flows and every new connection of the run.
fn ct_for(flows: u64) -> u32 {
    (flows + (REPS * NEW_BURSTS * BURST) as u64 + 4096) as u32
}

fn write_curve(dir: &Path, name: &str, x_label: &str, points: &[(u64, Figures)]) {
    let (e0, n0) = (points[0].1.established_ns, points[0].1.new_ns);
    let rows: Vec<_> = points
        .iter()
        .map(|(x, f)| {
            json!({
                "x": x,
                "established_ns": (f.established_ns * 10.0).round() / 10.0,
                "new_connection_ns": (f.new_ns * 10.0).round() / 10.0,
                "established_ratio": (f.established_ns / e0 * 100.0).round() / 100.0,
                "new_connection_ratio": (f.new_ns / n0 * 100.0).round() / 100.0,
                "tables_build_ms": (f.build_ms * 10.0).round() / 10.0,
            })
        })
        .collect();
    let doc = json!({
        "curve": name,
        "x": x_label,
        "unit": "ns per packet (wall clock, median of 5; ratios to the first point, same run)",
        "command": "bash scripts/bench.sh --curves",
        "points": rows,
    });
    let json_path = dir.join(format!("{name}.json"));
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&doc).expect("json") + "\n",
    )
    .expect("write json");
    let series = [
        Series {
            name: "established packet".into(),
            points: points
                .iter()
                .map(|(x, f)| (*x as f64, f.established_ns))
                .collect(),
        },
        Series {
            name: "new connection".into(),
            points: points.iter().map(|(x, f)| (*x as f64, f.new_ns)).collect(),
        },
    ];
    let svg = line_chart(
        &format!("Per-packet cost against {x_label}"),
        x_label,
        "ns per packet",
        &series,
    );
    std::fs::write(dir.join(format!("{name}.svg")), svg).expect("write svg");
    println!("{}", json_path.display());
    for (x, f) in points {
        println!(
            "  {x:>9} {x_label}: established {:>7.1} ns ({:.2}x)  new {:>7.1} ns ({:.2}x)  build {:>8.1} ms",
            f.established_ns,
            f.established_ns / e0,
            f.new_ns,
            f.new_ns / n0,
            f.build_ms
        );
    }
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "bench/curves".into()),
    );
    std::fs::create_dir_all(&dir).expect("output directory");
    let only = std::env::args().nth(2);
    let want = |c: &str| only.as_deref().is_none_or(|o| o == c);
    let flows = 10_000;

    if want("services") {
        let pts: Vec<_> = [10u32, 1_000, 10_000, 100_000]
            .iter()
            .map(|&n| (u64::from(n), measure(&base(n, ct_for(flows)), n, flows)))
            .collect();
        write_curve(&dir, "services", "services", &pts);
    }
    if want("flows") {
        let pts: Vec<_> = [10_000u64, 100_000, 1_000_000]
            .iter()
            .map(|&f| (f, measure(&base(10, ct_for(f)), 10, f)))
            .collect();
        write_curve(&dir, "flows", "live flows", &pts);
    }
    if want("ipcache") {
        let pts: Vec<_> = [1_000u32, 100_000, 1_000_000]
            .iter()
            .map(|&n| {
                let s = with_ipcache(base(10, ct_for(flows)), n);
                (u64::from(n), measure(&s, 10, flows))
            })
            .collect();
        write_curve(&dir, "ipcache", "ipcache prefixes", &pts);
    }
    if want("rules") {
        let pts: Vec<_> = [10u32, 1_000, 10_000]
            .iter()
            .map(|&r| {
                let s = with_rules(base(10, ct_for(flows)), r);
                (u64::from(r), measure(&s, 10, flows))
            })
            .collect();
        write_curve(&dir, "rules", "policy rules per endpoint", &pts);
    }
}
