//! Fleet simulation: N simulated agents watch one local etcd; etcd is killed for the outage and
//! restarted; the reconnect-rate profile is reported with and without jitter.
//!
//! ```text
//! cargo run --release -p nodeplane-bench --bin fleet -- [--agents 1000] [--outage-s 30]
//!     [--per-node-ms 10] [--base-ms 500] [--cap-ms 5000] [--json bench/fleet/results.json]
//! ```

use std::time::Duration;

use nodeplane_bench::fleet::{self, FleetOptions, FleetReport};
use nodeplane_control::source::etcd::server::LocalEtcd;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match args.iter().position(|a| a == name) {
        Some(i) => match args.get(i + 1).map(|v| v.parse()) {
            Some(Ok(v)) => v,
            _ => {
                eprintln!("fleet: {name} needs a value");
                std::process::exit(2);
            }
        },
        None => default,
    }
}

fn print(r: &FleetReport) {
    println!(
        "jitter={:<5} agents={} window={} ms outage={} ms: peak {} connects/s (1 s window), \
         peak bucket {:.0}/s, mean N/W {:.1}/s, ratio peak/(N/W) {:.2}, back {}/{}, \
         all back after {}, {} attempts during the outage",
        r.jitter,
        r.agents,
        r.window_ms,
        r.outage_ms,
        r.peak_connects_per_s,
        r.peak_bucket_per_s,
        r.agents as f64 / (r.window_ms as f64 / 1000.0),
        r.peak_ratio,
        r.back,
        r.agents,
        r.time_to_all_back_ms
            .map_or("never".to_string(), |t| format!("{t} ms")),
        r.attempts_during_outage,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let agents: usize = arg(&args, "--agents", 1000);
    let outage = Duration::from_secs_f64(arg(&args, "--outage-s", 30.0));
    let json: String = arg(&args, "--json", "bench/fleet/results.json".to_string());
    let mut etcd = match LocalEtcd::start() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("fleet: {e}");
            std::process::exit(1);
        }
    };
    let mut reports = Vec::new();
    for jitter in [true, false] {
        let mut o = FleetOptions::new(agents, outage, jitter);
        o.backoff.per_node_ms = arg(&args, "--per-node-ms", o.backoff.per_node_ms);
        o.backoff.base_ms = arg(&args, "--base-ms", o.backoff.base_ms);
        o.backoff.cap_ms = arg(&args, "--cap-ms", o.backoff.cap_ms);
        o.give_up = o.backoff.window(agents) * 3 + Duration::from_secs(10);
        match fleet::run(&mut etcd, &o) {
            Ok(r) => {
                print(&r);
                reports.push(r);
            }
            Err(e) => {
                eprintln!("fleet: {e}");
                std::process::exit(1);
            }
        }
    }
    let out = serde_json::json!({ "runs": reports });
    if let Err(e) = std::fs::write(
        &json,
        serde_json::to_string_pretty(&out).unwrap_or_default(),
    ) {
        eprintln!("fleet: cannot write {json}: {e}");
        std::process::exit(1);
    }
    println!("wrote {json}");
}
