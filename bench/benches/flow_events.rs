//! The cost of flow events on the worker (DESIGN §3.8: "200K events/s without slowing
//! forwarding"): the same burst loop through the pipeline, with nobody observing (one
//! `Relaxed` load per burst) and with an observer (per frame: the outcome test; per event: a
//! `FlowEvent` from the burst's own parse and an `ArrayQueue` push, drained by a consumer
//! thread as the daemon's fan-out does).
//!
//! The mix is new-flow-heavy: of each burst of 64 frames, 16 are SYNs of new connections (an
//! event each) and 48 are ACKs of 10k established flows (no event). At the pipeline's rate
//! that is far above 200K events/s; the summary prints the events/s it amounts to.
//!
//! The burst code is the worker's (`Worker::turn_inner`): `observed()` once, then either
//! `process_burst` alone or `process_burst` + `EventTap::record_burst`. Timed: that only
//! (restoring the frames and, every 3750 bursts, re-making the conntrack are outside).
//!
//! `flow_events/record_burst` times the recording alone (per event: criterion's elements).
//!
//! Run: `cargo bench -p nodeplane-bench --bench flow_events`

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use nodeplane_bench::{client_frame, state};
use nodeplane_dataplane::events::{EventTap, FlowEvent};
use nodeplane_dataplane::{Action, MaglevCache, Outcome, Packet, Pipeline, Tables, BURST};

const SERVICES: u32 = 100;
const ESTABLISHED: usize = 10_000;
const NEW_PER_BURST: usize = 16;
/// New-connection source ports per conntrack generation (then it is re-made, untimed).
const SPORTS: u32 = 60_000;

struct Mix {
    p: Pipeline,
    iface: u16,
    acks: Vec<Vec<u8>>,
    bufs: Vec<Vec<u8>>,
    out: Vec<Outcome>,
    next_ack: usize,
    next_sport: u32,
    tap: EventTap,
}

impl Mix {
    fn new(tap: EventTap) -> Mix {
        let t = Arc::new(Tables::build(
            &state(SERVICES, 1 << 18),
            1,
            &mut MaglevCache::default(),
        ));
        let iface = t.iface_index("pod-client").expect("iface");
        let acks = (0..ESTABLISHED)
            .map(|i| client_frame(i as u32 % SERVICES, 1024 + i as u16, false))
            .collect();
        let mut m = Mix {
            p: Pipeline::new(t),
            iface,
            acks,
            bufs: vec![client_frame(0, 1, true); BURST],
            out: vec![Outcome::default(); BURST],
            next_ack: 0,
            next_sport: SPORTS,
            tap,
        };
        m.remake();
        m
    }

    /// A fresh conntrack with the established flows (untimed).
    fn remake(&mut self) {
        self.p.conntrack_mut().flush();
        for i in 0..ESTABLISHED {
            let mut syn = client_frame(i as u32 % SERVICES, 1024 + i as u16, true);
            let o = self.p.process_one(&mut syn, self.iface, 1);
            assert!(matches!(o.action, Action::Forward(_)), "{o:?}");
        }
        self.next_sport = 0;
    }

    /// Restores the next burst's frames (untimed): 16 new SYNs spread over the burst.
    fn restore(&mut self) {
        if self.next_sport + NEW_PER_BURST as u32 > SPORTS {
            self.remake();
        }
        for (i, b) in self.bufs.iter_mut().enumerate() {
            if i % (BURST / NEW_PER_BURST) == 0 {
                let s = self.next_sport;
                self.next_sport += 1;
                // Ports above the established flows' range: always a new connection.
                *b = client_frame(s % SERVICES, (20_000 + s % 40_000) as u16, true);
                if s >= 40_000 {
                    // Second lap of ports: another service's VIP keeps the tuple unused.
                    *b = client_frame((s + 7) % SERVICES, (20_000 + s % 40_000) as u16, true);
                }
            } else {
                b.copy_from_slice(&self.acks[self.next_ack]);
                self.next_ack = (self.next_ack + 1) % ESTABLISHED;
            }
        }
    }

    /// The worker's burst (see `Worker::turn_inner`), timed by the caller.
    #[inline(never)]
    fn burst(&mut self) {
        let mut it = self.bufs.iter_mut();
        let mut pkts: [Packet<'_>; BURST] = std::array::from_fn(|i| Packet {
            data: it.next().expect("64 buffers").as_mut_slice(),
            iface: self.iface,
            ts: 2,
            tag: i as u64,
            parsed: None,
        });
        if self.tap.observed() {
            self.p.process_burst(&mut pkts, &mut self.out);
            let tuples = self.p.tuples(BURST);
            self.tap.record_burst(0, 1, &pkts, &self.out, tuples);
        } else {
            self.p.process_burst(&mut pkts, &mut self.out);
        }
        black_box(&self.out);
    }

    /// The recording alone, again on the last burst's outcomes (16 events of 64 frames).
    #[inline(never)]
    fn record_again(&mut self) {
        let mut it = self.bufs.iter_mut();
        let pkts: [Packet<'_>; BURST] = std::array::from_fn(|i| Packet {
            data: it.next().expect("64 buffers").as_mut_slice(),
            iface: self.iface,
            ts: 2,
            tag: i as u64,
            parsed: None,
        });
        let tuples = self.p.tuples(BURST);
        self.tap.record_burst(0, 1, &pkts, &self.out, tuples);
    }

    /// Runs `bursts` bursts; returns the time spent in [`Mix::burst`].
    fn run(&mut self, bursts: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..bursts {
            self.restore();
            let t0 = Instant::now();
            self.burst();
            total += t0.elapsed();
        }
        total
    }
}

/// The unobserved and the observed mix, and a consumer that drains the observed one's queue
/// (like the np-events thread: pops, sleeps 2 ms when empty).
struct Setup {
    base: Mix,
    observed: Mix,
    stop: Arc<AtomicBool>,
    consumer: Option<std::thread::JoinHandle<u64>>,
}

impl Setup {
    fn new() -> Setup {
        let base = Mix::new(EventTap::detached());
        let (tap, flag, queue) = EventTap::standalone(nodeplane_dataplane::events::EVENT_QUEUE);
        flag.store(1, Ordering::Relaxed);
        let observed = Mix::new(tap);
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let consumer = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let mut got = false;
                while let Some(e) = queue.pop() {
                    black_box::<FlowEvent>(e);
                    n += 1;
                    got = true;
                }
                if !got {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            n
        });
        Setup {
            base,
            observed,
            stop,
            consumer: Some(consumer),
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.consumer.take() {
            let _ = c.join();
        }
    }
}

fn criterion_groups(c: &mut Criterion, s: &mut Setup) {
    let mut g = c.benchmark_group("flow_events/new_flow_mix");
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function(BenchmarkId::from_parameter("no_observer"), |b| {
        b.iter_custom(|iters| s.base.run(iters))
    });
    g.bench_function(BenchmarkId::from_parameter("observer"), |b| {
        b.iter_custom(|iters| s.observed.run(iters))
    });
    g.finish();
    // The worker's added work per observed burst of this mix, alone (16 events of 64 frames;
    // the consumer drains the queue meanwhile).
    let mut g = c.benchmark_group("flow_events/record_burst");
    g.throughput(Throughput::Elements(NEW_PER_BURST as u64));
    s.observed.restore();
    s.observed.burst();
    g.bench_function(BenchmarkId::from_parameter("16_events_of_64"), |b| {
        b.iter(|| s.observed.record_again())
    });
    g.finish();
}

/// Interleaved short rounds of both, so that machine noise (a shared 2-vCPU machine) hits both
/// alike; prints the medians in ns/packet, the median of the per-round ratios and the event
/// rate.
fn summary(s: &mut Setup) {
    const ROUNDS: usize = 60;
    const BURSTS: u64 = 500;
    let per_pkt = |d: Duration| d.as_nanos() as f64 / (BURSTS * BURST as u64) as f64;
    let counts0 = s.observed.tap.counts();
    let (mut base, mut obs, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let mut obs_time = Duration::ZERO;
    for _ in 0..ROUNDS {
        let b = s.base.run(BURSTS);
        let o = s.observed.run(BURSTS);
        obs_time += o;
        base.push(per_pkt(b));
        obs.push(per_pkt(o));
        ratio.push(o.as_secs_f64() / b.as_secs_f64());
    }
    let counts = s.observed.tap.counts();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let pkts = (ROUNDS as u64 * BURSTS * BURST as u64) as f64;
    let events = (counts.emitted - counts0.emitted + counts.lost - counts0.lost) as f64;
    println!(
        "flow_events summary ({ROUNDS} interleaved rounds of {BURSTS} bursts, medians): no observer {:.1} ns/packet, observer {:.1} ns/packet, ratio {:.3}; {:.0} events/s at the observed rate ({:.2} Mpps), {:.1} events per burst, {} lost",
        median(&mut base),
        median(&mut obs),
        median(&mut ratio),
        events / obs_time.as_secs_f64(),
        pkts / obs_time.as_secs_f64() / 1e6,
        events / (ROUNDS as u64 * BURSTS) as f64,
        counts.lost - counts0.lost,
    );
}

fn main() {
    let mut s = Setup::new();
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);
    criterion_groups(&mut c, &mut s);
    summary(&mut s);
    c.final_summary();
}
