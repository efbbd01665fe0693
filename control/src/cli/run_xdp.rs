//! `nodeplane run-xdp`: the AF_XDP runtime on the interfaces of a state, in the calling
//! process's network namespace. Loads the state once; SIGHUP re-reads it (validated whole, kept
//! on error); SIGTERM/SIGINT stop it (workers joined, sockets closed, XDP detached).
//!
//! Until the daemon (`nodeplane run --config`, io `afxdp`) takes this runtime over, this is the
//! entry point of the AF_XDP dataplane; see docs/runtime.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeplane_control::runtime::{Runtime, RuntimeConfig};
use nodeplane_xdp::XskConfig;

use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct RunXdpArgs {
    /// State file or directory of YAML files.
    #[arg(long)]
    state: PathBuf,
    /// Worker threads; worker w owns queue q of every interface where q % workers == w.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Do not pin workers to cores.
    #[arg(long)]
    no_pin: bool,
    /// AF_XDP ring size (power of two).
    #[arg(long, default_value_t = 1024)]
    ring_size: u32,
    /// UMEM frames per socket (at least the ring size).
    #[arg(long, default_value_t = 2048)]
    frames_per_socket: u32,
    /// Write the runtime's counters as JSON to this file every 500 ms (and at exit).
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Seconds between reads of the uplink gateway's neighbour entry.
    #[arg(long, default_value_t = 2.0)]
    neigh_refresh: f64,
    /// Log level: error, warn, info, debug.
    #[arg(long, default_value = "info")]
    log_level: String,
}

struct StderrLog(log::LevelFilter);

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("nodeplane: {} {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn write_stats(rt: &Runtime, path: &Option<PathBuf>) {
    if let Some(p) = path {
        let json = serde_json::to_string_pretty(&rt.stats()).unwrap_or_default();
        let tmp = p.with_extension("tmp");
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, p);
        }
    }
}

pub fn run(args: RunXdpArgs) -> CliResult {
    let level = match args.log_level.as_str() {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => log::LevelFilter::Info,
    };
    let _ = log::set_boxed_logger(Box::new(StderrLog(level)));
    log::set_max_level(level);
    if !(0.1..=3600.0).contains(&args.neigh_refresh) {
        return Err(format!(
            "--neigh-refresh {} is not in 0.1..=3600",
            args.neigh_refresh
        )
        .into());
    }

    let state = nodeplane_state::load_path(&args.state)?;
    let cfg = RuntimeConfig {
        workers: args.workers,
        pin: !args.no_pin,
        xsk: XskConfig {
            ring_size: args.ring_size,
            frames_per_socket: args.frames_per_socket,
            ..XskConfig::default()
        },
        neigh_refresh: Duration::from_secs_f64(args.neigh_refresh),
        ..RuntimeConfig::default()
    };

    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))?;

    let mut rt = Runtime::start(state, cfg)?;
    let s = rt.stats();
    eprintln!(
        "nodeplane: running on {} with {} worker(s); SIGHUP reloads {}, SIGTERM stops",
        s.attached.join(", "),
        s.workers.len(),
        args.state.display()
    );
    let mut last_stats = Instant::now();
    write_stats(&rt, &args.stats_file);
    while !term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        if hup.swap(false, Ordering::Relaxed) {
            match nodeplane_state::load_path(&args.state)
                .map_err(|e| e.to_string())
                .and_then(|st| rt.set_state(st).map_err(|e| e.to_string()))
            {
                Ok(()) => log::info!(
                    "reloaded {} (generation {})",
                    args.state.display(),
                    rt.tables().generation
                ),
                Err(e) => log::error!("reload rejected, keeping the running state: {e}"),
            }
        }
        rt.tick();
        if last_stats.elapsed() >= Duration::from_millis(500) {
            write_stats(&rt, &args.stats_file);
            last_stats = Instant::now();
        }
    }
    let t0 = Instant::now();
    let stats = rt.stop();
    if let Some(p) = &args.stats_file {
        let _ = std::fs::write(p, serde_json::to_string_pretty(&stats).unwrap_or_default());
    }
    let packets: u64 = stats.workers.iter().map(|w| w.packets).sum();
    let bad: Vec<String> = stats
        .workers
        .iter()
        .filter(|w| w.accounting != "ok")
        .map(|w| format!("worker {}: {}", w.worker, w.accounting))
        .collect();
    eprintln!(
        "nodeplane: stopped in {} ms ({packets} packets processed), XDP detached",
        t0.elapsed().as_millis()
    );
    if !bad.is_empty() {
        return Err(format!("frame accounting broken: {}", bad.join("; ")).into());
    }
    Ok(ExitCode::SUCCESS)
}
