//! Update cost (issue 4, item 7): how long until a new state of 10k services and 100k ipcache
//! entries reaches a worker. Measured from "the control thread has the parsed state" to "a
//! worker's per-burst check saw the new snapshot": validate + `Tables::build` + publish +
//! pick-up. The worker spins on `Subscriber::poll` as it does between bursts.
//!
//! Run: `cargo bench -p nodeplane-bench --bench update_cost` (prints a table; figures go to
//! `bench/RESULTS.md`, "Control plane").

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeplane_dataplane::publish::Publisher;
use nodeplane_dataplane::{MaglevCache, Pipeline, Tables};
use nodeplane_state::{
    example, Backend, BackendState, Frontend, IpcacheEntry, L4Proto, Service, ServiceType, State,
};

const SERVICES: u32 = 10_000;
const IPCACHE: u32 = 100_000;

/// The example node plus `SERVICES` services and `IPCACHE` ipcache entries. `sets` distinct
/// backend sets (2 backends each) are shared round-robin by the services.
fn state(sets: u32, port_bump: u16) -> State {
    let mut s = example::state().expect("example");
    for i in 0..SERVICES {
        let set = i % sets;
        s.services.push(Service {
            name: format!("svc-{i}"),
            kind: ServiceType::ClusterIP,
            frontends: vec![Frontend {
                ip: format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256)
                    .parse()
                    .unwrap(),
                port: 80,
                protocol: L4Proto::TCP,
            }],
            node_ports: vec![],
            algorithm: Default::default(),
            affinity: None,
            internal_traffic_policy: Default::default(),
            external_traffic_policy: Default::default(),
            health_check_node_port: None,
            load_balancer_source_ranges: Vec::new(),
            global: false,
            backends: (0..2u32)
                .map(|b| {
                    let n = set * 2 + b;
                    Backend {
                        ip: format!("10.{}.{}.{}", 200 + n / 65536, (n / 256) % 256, n % 256)
                            .parse()
                            .unwrap(),
                        port: 8080 + if i == 0 { port_bump } else { 0 },
                        weight: 1,
                        state: BackendState::Active,
                        ready: None,
                        serving: None,
                        terminating: None,
                    }
                })
                .collect(),
        });
    }
    for i in 0..IPCACHE {
        s.ipcache.push(IpcacheEntry {
            prefix: format!("172.{}.{}.{}/32", 16 + i / 65536, (i / 256) % 256, i % 256)
                .parse()
                .unwrap(),
            identity: 10_000 + i % 1000,
        });
    }
    s
}

struct Sample {
    validate: Duration,
    build: Duration,
    pickup: Duration,
    total: Duration,
    /// Maglev tables left for after the first publication.
    pending: usize,
    /// Until the worker saw the generation with every Maglev table built.
    complete: Option<Duration>,
}

/// A worker thread that records when it first sees each generation.
struct Observer {
    seen_gen: Arc<AtomicU64>,
    seen_at_ns: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Observer {
    fn start(p: &Publisher) -> Observer {
        let seen_gen = Arc::new(AtomicU64::new(0));
        let seen_at_ns = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let mut sub = p.subscribe();
        let (g, a, s) = (seen_gen.clone(), seen_at_ns.clone(), stop.clone());
        let join = std::thread::spawn(move || {
            let mut pipe = Pipeline::new(sub.current());
            while !s.load(Ordering::Relaxed) {
                if sub.poll(&mut pipe) {
                    a.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    g.store(pipe.tables().generation, Ordering::Release);
                }
                std::hint::spin_loop();
            }
        });
        Observer {
            seen_gen,
            seen_at_ns,
            stop,
            epoch,
            join: Some(join),
        }
    }

    fn wait(&self, gen: u64) -> Instant {
        while self.seen_gen.load(Ordering::Acquire) < gen {
            std::hint::spin_loop();
        }
        self.epoch + Duration::from_nanos(self.seen_at_ns.load(Ordering::Relaxed))
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Time the control thread may spend on Maglev tables before publishing (as the daemon does).
const MAGLEV_BUDGET: Duration = Duration::from_millis(40);

fn apply(
    p: &Publisher,
    obs: &Observer,
    s: &State,
    gen: &mut u64,
    cache: &mut MaglevCache,
) -> Sample {
    *gen += 1;
    let t0 = Instant::now();
    nodeplane_state::validate(s).expect("valid");
    let t1 = Instant::now();
    let t = Arc::new(Tables::build_within(
        s,
        *gen,
        cache,
        Some(t1 + MAGLEV_BUDGET),
    ));
    let pending = t.maglev_pending;
    let t2 = Instant::now();
    p.publish(t);
    let seen = obs.wait(*gen);
    // Then the pending Maglev tables, in steps, published as the next generation.
    let complete = (pending > 0).then(|| {
        while cache.fill(Instant::now() + Duration::from_millis(20)) > 0 {}
        *gen += 1;
        p.publish(Arc::new(Tables::build(s, *gen, cache)));
        obs.wait(*gen).saturating_duration_since(t0)
    });
    cache.prune();
    // The control thread frees the previous snapshot (the worker handed it back).
    p.reap();
    Sample {
        validate: t1 - t0,
        build: t2 - t1,
        pickup: seen.saturating_duration_since(t2),
        total: seen.saturating_duration_since(t0),
        pending,
        complete,
    }
}

fn row(name: &str, s: &Sample) {
    println!(
        "{name:<58} {:>9.1} {:>9.1} {:>10.1} {:>9.1} {:>8} {:>11}",
        s.validate.as_secs_f64() * 1e3,
        s.build.as_secs_f64() * 1e3,
        s.pickup.as_secs_f64() * 1e6,
        s.total.as_secs_f64() * 1e3,
        s.pending,
        s.complete
            .map(|c| format!("{:.1}", c.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "-".into()),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let base = example::state().expect("example");
    let mut cache = MaglevCache::default();
    let p = Publisher::new(Arc::new(Tables::build(&base, 1, &mut cache)));
    let obs = Observer::start(&p);
    obs.wait(1);
    println!(
        "update cost: {SERVICES} services (2 backends each, Maglev M={}) + {IPCACHE} ipcache entries",
        base.node.maglev_table_size
    );
    println!(
        "{:<58} {:>9} {:>9} {:>10} {:>9} {:>8} {:>11}",
        "case", "valid ms", "build ms", "pickup us", "total ms", "pending", "complete ms"
    );
    let mut gen = 1;
    let mut apply_row = |name: &str, s: &State, cache: &mut MaglevCache| {
        let r = apply(&p, &obs, s, &mut gen, cache);
        row(name, &r);
    };
    // Baseline in the same run: the example node alone (4 services).
    apply_row("example node (4 services, baseline)", &base, &mut cache);

    let shared = state(100, 0);
    apply_row(
        "10k services, 100 backend sets, cold Maglev cache",
        &shared,
        &mut cache,
    );
    apply_row("  same state again (warm cache)", &shared, &mut cache);
    let shared2 = state(100, 1);
    apply_row("  one service changed (warm cache)", &shared2, &mut cache);

    let mut cold = MaglevCache::default();
    let distinct = state(SERVICES, 0);
    apply_row(
        "10k services, 10k distinct backend sets, cold cache",
        &distinct,
        &mut cold,
    );
    let distinct2 = state(SERVICES, 1);
    apply_row("  one service changed (warm cache)", &distinct2, &mut cold);
    drop(cold);
    drop(cache);
}
