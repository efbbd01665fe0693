//! Per-stage and whole-pipeline cost, in bursts of 64 frames (criterion's "elements" are
//! packets, so thrpt is packets/s and time/64 is ns/packet).
//!
//! Every pipeline iteration first restores its 64 frames from pristine templates (the pipeline
//! rewrites frames in place); `baseline/restore_burst` measures exactly that restore alone in
//! the same run, so `pipeline − baseline` is the pipeline's own cost.
//!
//! Run: `cargo bench -p nodeplane-bench --bench pipeline`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nodeplane_bench::{client_frame, state, xorshift, CLIENT};
use nodeplane_dataplane::conntrack::{Nat, NewFlow};
use nodeplane_dataplane::flow::{Addr, FlowKey, PROTO_TCP};
use nodeplane_dataplane::parse::{parse, Parsed};
use nodeplane_dataplane::{
    rewrite, MaglevCache, Outcome, Packet, Pipeline, PolicyVerdict, Tables, BURST,
};

const FLOWS: usize = 10_000;

fn tables(services: u32, ct: u32) -> Arc<Tables> {
    Arc::new(Tables::build(
        &state(services, ct),
        1,
        &mut MaglevCache::default(),
    ))
}

/// Frames restored and run through the pipeline as one burst.
struct Burst {
    templates: Vec<Vec<u8>>,
    bufs: Vec<Vec<u8>>,
    out: Vec<Outcome>,
}

impl Burst {
    fn new(templates: Vec<Vec<u8>>) -> Burst {
        Burst {
            bufs: templates.clone(),
            out: vec![Outcome::default(); templates.len()],
            templates,
        }
    }

    /// Restores frames `[from, from + 64)` (cyclic) into the burst buffers.
    #[inline]
    fn restore(&mut self, from: usize) {
        let n = self.templates.len();
        for (i, b) in self.bufs.iter_mut().enumerate() {
            let t = &self.templates[(from + i) % n];
            b.copy_from_slice(t);
        }
    }

    #[inline]
    fn run(&mut self, p: &mut Pipeline, iface: u16, ts: u64) {
        let mut pkts: [Packet<'_>; BURST] = {
            let mut it = self.bufs.iter_mut();
            std::array::from_fn(|i| Packet {
                data: it.next().expect("64 buffers").as_mut_slice(),
                iface,
                ts,
                tag: i as u64,
                parsed: None,
            })
        };
        p.process_burst(&mut pkts, &mut self.out);
    }
}

fn established(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline/established");
    g.throughput(Throughput::Elements(BURST as u64));
    for services in [10u32, 100_000] {
        let t = tables(services, 262_144);
        let pc = t.iface_index("pod-client").expect("iface");
        let mut p = Pipeline::new(t);
        // As a worker whose flow events nobody observes (the default of a running node).
        p.set_record_tuples(false);
        let mut rng = 1u64;
        let mut acks = Vec::with_capacity(FLOWS);
        for i in 0..FLOWS {
            let svc = (xorshift(&mut rng) % u64::from(services)) as u32;
            let sport = 10_000 + i as u16;
            let mut syn = client_frame(svc, sport, true);
            let o = p.process_one(&mut syn, pc, 1);
            assert!(
                matches!(o.action, nodeplane_dataplane::Action::Forward(_)),
                "{o:?}"
            );
            acks.push(client_frame(svc, sport, false));
        }
        // 64 buffers restored from a rotating window over the 10k flows' ACK frames.
        let mut all = Burst::new(acks);
        all.bufs.truncate(BURST);
        all.out.truncate(BURST);
        let mut from = 0;
        g.bench_function(BenchmarkId::from_parameter(services), |b| {
            b.iter(|| {
                all.restore(from);
                from = (from + BURST) % FLOWS;
                all.run(&mut p, pc, 2);
                black_box(&all.out);
            })
        });
        let c = p.counters();
        assert_eq!(c.dropped, 0, "no drops while benchmarking: {:?}", c.drops);
    }
    g.finish();
}

fn new_connections(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline/new_connections");
    g.throughput(Throughput::Elements(BURST as u64));
    for services in [10u32, 100_000] {
        let t = tables(services, 1 << 20);
        let pc = t.iface_index("pod-client").expect("iface");
        let mut p = Pipeline::new(t);
        let mut rng = 7u64;
        g.bench_function(BenchmarkId::from_parameter(services), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut sport: u32 = 0;
                for _ in 0..iters {
                    // A fresh burst of SYNs on unused 5-tuples (outside the timing).
                    let frames: Vec<Vec<u8>> = (0..BURST)
                        .map(|_| {
                            sport += 1;
                            let svc = (xorshift(&mut rng) % u64::from(services)) as u32;
                            client_frame(svc, (sport % 60_000) as u16 + 1024, true)
                        })
                        .collect();
                    if sport >= 60_000 {
                        sport = 0;
                        p.conntrack_mut().flush();
                    }
                    let mut burst = Burst::new(frames);
                    let start = Instant::now();
                    burst.run(&mut p, pc, 1);
                    total += start.elapsed();
                    black_box(&burst.out);
                }
                total
            })
        });
    }
    g.finish();
}

fn baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Elements(BURST as u64));
    let frames: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| client_frame(0, 10_000 + i as u16, false))
        .collect();
    let mut all = Burst::new(frames);
    all.bufs.truncate(BURST);
    let mut from = 0;
    g.bench_function("restore_burst", |b| {
        b.iter(|| {
            all.restore(from);
            from = (from + BURST) % FLOWS;
            black_box(&all.bufs);
        })
    });
    g.finish();
}

/// Each stage alone, with 10 and with 100k services, on the packets each path sees: the ACK of
/// an established flow and the SYN of a new connection.
fn stages(c: &mut Criterion) {
    for services in [10u32, 100_000] {
        let mut g = c.benchmark_group(format!("stage/{services}"));
        g.throughput(Throughput::Elements(1));
        let svc = 3 % services;
        let ack = client_frame(svc, 40_000, false);
        let syn = client_frame(svc, 40_001, true);
        g.bench_function("parse_ack", |b| {
            b.iter(|| black_box(parse(black_box(&ack))))
        });
        g.bench_function("parse_syn", |b| {
            b.iter(|| black_box(parse(black_box(&syn))))
        });

        let t = tables(services, 262_144);
        let pc = t.iface_index("pod-client").expect("iface");
        let client = Addr::v4(CLIENT);
        // New connection: anti-spoofing (endpoint of the source), frontend, Maglev, identities,
        // policy, conntrack create.
        g.bench_function("anti_spoof_endpoint_of", |b| {
            b.iter(|| black_box(t.endpoint_of(black_box(&client))))
        });
        let vip = Addr::v4(nodeplane_bench::vip(services - 1));
        g.bench_function("frontend_lookup", |b| {
            b.iter(|| black_box(t.frontend(black_box(vip), 80, PROTO_TCP)))
        });
        g.bench_function("ipcache_lookup", |b| {
            let a = Addr::v4([10, 244, 1, 33]);
            b.iter(|| black_box(t.identity_of(black_box(&a))))
        });
        let key = FlowKey {
            src: client,
            dst: Addr::v4(nodeplane_bench::vip(svc)),
            sport: 40_000,
            dport: 80,
            proto: PROTO_TCP,
        };
        g.bench_function("maglev_select", |b| {
            let sel = &t.services[svc as usize].v4;
            b.iter(|| {
                let k = black_box(&key);
                let slot = nodeplane_dataplane::maglev::slot(k.stable_hash(), sel.maglev.len());
                black_box(sel.active[usize::from(sel.maglev[slot])])
            })
        });
        g.bench_function("policy_decide", |b| {
            let ep = &t.endpoints[5];
            let pol = ep.ingress.as_ref().expect("policy");
            b.iter(|| black_box(pol.decide(black_box(client), 1001, PROTO_TCP, 8080)))
        });

        // Conntrack with 10k flows in it: lookup of an established flow, and create + remove
        // of a new one (the table's size stays put).
        let mut p = Pipeline::new(Arc::clone(&t));
        let mut keys = Vec::with_capacity(FLOWS);
        for i in 0..FLOWS as u32 {
            let s = i % services;
            let sport = 1024 + i as u16;
            let mut f = client_frame(s, sport, true);
            p.process_one(&mut f, pc, 1);
            keys.push(FlowKey {
                src: client,
                dst: Addr::v4(nodeplane_bench::vip(s)),
                sport,
                dport: 80,
                proto: PROTO_TCP,
            });
        }
        let mut i = 0;
        g.bench_function("conntrack_lookup_10k_flows", |b| {
            b.iter(|| {
                i = (i + 7919) % keys.len();
                black_box(p.conntrack_mut().lookup(&keys[i], 2))
            })
        });
        let backend = Addr::v4([10, 244, 1, 20]);
        let mut sport = 0u16;
        g.bench_function("conntrack_create_remove", |b| {
            b.iter(|| {
                sport = sport.wrapping_add(1);
                let orig = FlowKey {
                    src: client,
                    dst: Addr::v4([10, 97, 0, 1]),
                    sport,
                    dport: 80,
                    proto: PROTO_TCP,
                };
                let reply = FlowKey {
                    src: backend,
                    dst: client,
                    sport: 8080,
                    dport: sport,
                    proto: PROTO_TCP,
                };
                let f = NewFlow {
                    orig,
                    reply,
                    nat: Some(Nat {
                        vip: orig.dst,
                        vip_port: 80,
                        backend,
                        backend_port: 8080,
                        service: 0,
                    }),
                    snat: None,
                    src_identity: 1001,
                    dst_identity: 1002,
                    policy: PolicyVerdict::Allow,
                    generation: 1,
                };
                let ct = p.conntrack_mut();
                if let Ok(slot) = ct.create(black_box(&f), 0x02, 74, 2) {
                    ct.remove(slot);
                }
            })
        });

        let mut buf = ack.clone();
        g.bench_function("rewrite_dnat", |b| {
            b.iter(|| {
                buf.copy_from_slice(&ack);
                let Ok(Parsed::Ip(mut m)) = parse(&buf) else {
                    unreachable!()
                };
                rewrite::set_addr(&mut buf, &mut m, true, Addr::v4([10, 244, 1, 20]));
                rewrite::set_port(&mut buf, &mut m, true, 8080);
                rewrite::decrement_ttl(&mut buf, &mut m);
                rewrite::set_macs(&mut buf, &[2, 0, 0, 0, 1, 2], &[2, 0, 0, 1, 0, 0]);
                black_box(&buf);
            })
        });
        g.finish();
    }
}

/// The `random` algorithm's weighted pick (issue 13 item 1): a division and a binary search
/// over the running weight sums, per new flow, for 2, 10 and 100 active backends with unequal
/// weights (1..=7).
fn random_select(c: &mut Criterion) {
    use nodeplane_dataplane::tables::{Backend, Selection};
    use nodeplane_state::BackendState;
    let mut g = c.benchmark_group("random_select");
    g.throughput(Throughput::Elements(1));
    for n in [2u16, 10, 100] {
        let backends: Vec<Backend> = (0..n)
            .map(|i| Backend {
                addr: Addr::v4([10, 244, 2, i as u8]),
                port: 8080,
                weight: i % 7 + 1,
                state: BackendState::Active,
                ready: true,
                serving: true,
                terminating: false,
                local: false,
                endpoint: None,
            })
            .collect();
        let sel = Selection::new((0..n).collect(), Arc::from(Vec::new()), &backends);
        let mut r = 0x2545_f491_4f6c_dd1d_u64;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                black_box(sel.pick_weighted(black_box(r)))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = baseline, stages, established, new_connections, random_select
}
criterion_main!(benches);
