//! Raw AF_XDP forwarder between two interfaces: the baseline of the end-to-end benchmark
//! (`bench/e2e/run.sh`). It does the least a forwarder can do on nodeplane's socket API: every
//! unicast IP frame arriving on A (or B) is steered to one worker, its MACs are rewritten
//! (source: the egress interface's MAC, destination: the peer given for that side) and its
//! descriptor is handed to the socket of the other interface on the same queue (one shared
//! UMEM, no copy). No parsing beyond L2, no state: what is left between this and nodeplane's
//! figure is the pipeline's cost.
//!
//! ```text
//! ip netns exec NS l2fwd A B --peer-a MAC --peer-b MAC [--queues 2] [--core 0] [--seconds S]
//! ```
//!
//! Stops on SIGTERM/SIGINT (or after `--seconds`); then prints one JSON line with the totals
//! and each socket's user and kernel counters.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeplane_dataplane::afxdp::{Action, SocketId, XskBinding, XskConfig, XskWorker};
use nodeplane_xdp::{Loader, SteeringConfig};

struct Args {
    a: String,
    b: String,
    peer_a: [u8; 6],
    peer_b: [u8; 6],
    queues: u32,
    core: Option<usize>,
    seconds: Option<f64>,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split(':');
    for o in &mut out {
        *o = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

const USAGE: &str =
    "usage: l2fwd A B --peer-a MAC --peer-b MAC [--queues N] [--core C] [--seconds S]";

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut names = Vec::new();
    let (mut peer_a, mut peer_b) = (None, None);
    let (mut queues, mut core, mut seconds) = (1u32, None, None);
    while let Some(arg) = it.next() {
        let mut val = |what: &str| it.next().ok_or(format!("{arg} needs {what}"));
        match arg.as_str() {
            "--peer-a" => peer_a = Some(parse_mac(&val("a MAC")?).ok_or("bad --peer-a MAC")?),
            "--peer-b" => peer_b = Some(parse_mac(&val("a MAC")?).ok_or("bad --peer-b MAC")?),
            "--queues" => {
                queues = val("1..=32")?
                    .parse()
                    .ok()
                    .filter(|q| (1..=32).contains(q))
                    .ok_or("--queues needs 1..=32")?
            }
            "--core" => core = Some(val("a core")?.parse().map_err(|_| "bad --core")?),
            "--seconds" => seconds = Some(val("seconds")?.parse().map_err(|_| "bad --seconds")?),
            s if !s.starts_with('-') => names.push(s.to_owned()),
            s => return Err(format!("unknown argument {s}\n{USAGE}")),
        }
    }
    let [a, b] = <[String; 2]>::try_from(names).map_err(|_| USAGE.to_string())?;
    Ok(Args {
        a,
        b,
        peer_a: peer_a.ok_or(USAGE)?,
        peer_b: peer_b.ok_or(USAGE)?,
        queues,
        core,
        seconds,
    })
}

fn own_mac(iface: &str) -> Result<[u8; 6], String> {
    let p = format!("/sys/class/net/{iface}/address");
    let s = std::fs::read_to_string(&p).map_err(|e| format!("cannot read {p}: {e}"))?;
    parse_mac(&s).ok_or(format!("{p}: not a MAC: {s}"))
}

/// Where frames received on a socket go: the other interface's socket on the same queue, with
/// these MACs.
#[derive(Clone, Copy)]
struct Route {
    out: SocketId,
    dst: [u8; 6],
    src: [u8; 6],
}

/// Warnings of `nodeplane-xdp` (e.g. a fallback to generic XDP) on stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("l2fwd: {} {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if log::set_logger(&StderrLog).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    if let Some(c) = a.core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
            return Err(format!("cannot pin to core {c}").into());
        }
    }
    let (mac_a, mac_b) = (own_mac(&a.a)?, own_mac(&a.b)?);
    let mut loader = Loader::load()?;
    let mode_a = loader.attach(&a.a, a.queues)?;
    let mode_b = loader.attach(&a.b, a.queues)?;
    let ifindexes = loader.attached().iter().map(|i| i.ifindex).collect();
    loader.apply(&SteeringConfig {
        pod_ifindexes: ifindexes,
        ..SteeringConfig::default()
    })?;
    // Sockets 0..q on A, q..2q on B.
    let bindings: Vec<XskBinding<'_>> = [&a.a, &a.b]
        .into_iter()
        .flat_map(|iface| (0..a.queues).map(move |queue| XskBinding { iface, queue }))
        .collect();
    let mut w = XskWorker::new(&XskConfig::default(), &bindings)?;
    loader.register_sockets(w.registrations())?;
    let q = a.queues as u8;
    let routes: Vec<(SocketId, Route)> = (0..q)
        .flat_map(|i| {
            [
                (
                    SocketId(i),
                    Route {
                        out: SocketId(q + i),
                        dst: a.peer_b,
                        src: mac_b,
                    },
                ),
                (
                    SocketId(q + i),
                    Route {
                        out: SocketId(i),
                        dst: a.peer_a,
                        src: mac_a,
                    },
                ),
            ]
        })
        .collect();
    eprintln!(
        "l2fwd: {} ({mode_a}) <-> {} ({mode_b}), {} queues, {} sockets on one UMEM",
        a.a,
        a.b,
        a.queues,
        routes.len()
    );

    let start = Instant::now();
    let (mut fwd, mut bursts, mut empty_polls) = (0u64, 0u64, 0u64);
    let deadline = a.seconds.map(Duration::from_secs_f64);
    while !stop.load(Ordering::Relaxed) {
        let mut got = 0;
        for &(id, r) in &routes {
            let mut b = w.rx_burst(id, 64);
            let n = b.len();
            if n == 0 {
                continue;
            }
            got += n;
            bursts += 1;
            for (frame, action) in b.frames_mut() {
                if frame.len() >= 12 {
                    frame[..6].copy_from_slice(&r.dst);
                    frame[6..12].copy_from_slice(&r.src);
                    *action = Action::Tx(r.out);
                }
            }
            fwd += n as u64;
            b.finish();
        }
        if got == 0 {
            empty_polls += 1;
            w.service();
            // Same idle wait as nodeplane's worker with one worker (poll, at most 2 ms).
            w.wait_rx(2)?;
            if deadline.is_some_and(|d| start.elapsed() >= d) {
                break;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let socks: Vec<serde_json::Value> = routes
        .iter()
        .map(|&(id, _)| {
            let (iface, queue) = w.binding(id);
            let s = w.stats(id);
            let k = w.kernel_stats(id).ok();
            serde_json::json!({
                "iface": iface, "queue": queue,
                "rx": s.rx, "tx": s.tx, "tx_completed": s.tx_completed,
                "tx_ring_full": s.tx_ring_full, "dropped": s.dropped,
                "fill_starved": s.fill_starved, "tx_kicks": s.tx_kicks, "fill_kicks": s.fill_kicks,
                "k_rx_dropped": k.as_ref().map(|k| k.rx_dropped()),
                "k_rx_ring_full": k.as_ref().map(|k| k.rx_ring_full()),
                "k_fill_ring_empty": k.as_ref().map(|k| k.rx_fill_ring_empty_descs()),
                "k_tx_ring_empty": k.as_ref().map(|k| k.tx_ring_empty_descs()),
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "seconds": secs,
            "forwarded": fwd,
            "bursts": bursts,
            "frames_per_burst": if bursts > 0 { fwd as f64 / bursts as f64 } else { 0.0 },
            "empty_polls": empty_polls,
            "accounting": w.check_accounting().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
            "sockets": socks,
        })
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("l2fwd: {e}");
            ExitCode::FAILURE
        }
    }
}
