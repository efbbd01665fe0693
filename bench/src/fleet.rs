//! Fleet simulation (benchmark harness, `bench/src/bin/fleet.rs`; not part of the daemon): N lightweight agents, each
//! with its own etcd connection and watch, on one tokio runtime; the store is killed for a while
//! and restarted; every agent reconnects on the [`Reconnect`] schedule of the real source. The
//! report is the reconnect-rate profile after the restart.
//!
//! An agent is the etcd source minus state assembly: connect (TCP probe + client), count the
//! nodes under `<prefix>/nodes/` at revision R, watch `<prefix>/` from R + 1, and on any failure
//! back off with [`Reconnect`] using the node count as the cluster size.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{ConnectOptions, GetOptions, WatchOptions};
use serde::Serialize;
use tokio::time::Instant;

use nodeplane_control::source::etcd::server::LocalEtcd;
use nodeplane_control::source::etcd::{
    connect, sleep_checking, BackoffConfig, EtcdConfig, Reconnect,
};

#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub agents: usize,
    pub outage: Duration,
    pub backoff: BackoffConfig,
    /// Connects and attempts are counted in buckets of this width.
    pub bucket: Duration,
    /// Give up waiting for all agents this long after the restart.
    pub give_up: Duration,
    pub prefix: String,
}

impl FleetOptions {
    pub fn new(agents: usize, outage: Duration, jitter: bool) -> Self {
        let backoff = BackoffConfig {
            jitter,
            ..BackoffConfig::default()
        };
        let give_up = backoff.window(agents) * 3 + Duration::from_secs(10);
        FleetOptions {
            agents,
            outage,
            backoff,
            bucket: Duration::from_millis(100),
            give_up,
            prefix: "/nodeplane-fleet/v1".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub agents: usize,
    pub jitter: bool,
    pub outage_ms: u64,
    /// Window cap W for this cluster size (the backoff formula with `nodes = agents`).
    pub window_ms: u64,
    pub bucket_ms: u64,
    /// Successful (re)connects per bucket, from the restart on.
    pub connects: Vec<u32>,
    /// Connection attempts (TCP probe, successful or not) per bucket, from the restart on.
    pub attempts: Vec<u32>,
    /// Attempts made while the store was down.
    pub attempts_during_outage: u64,
    /// Largest number of connects within any 1 s (10 consecutive buckets of 100 ms).
    pub peak_connects_per_s: u32,
    /// Largest single bucket, scaled to per second.
    pub peak_bucket_per_s: f64,
    /// Peak connects/s over the mean rate N / W: the goal is <= 2.
    pub peak_ratio: f64,
    /// Agents reconnected after the restart.
    pub back: usize,
    /// Restart → last agent reconnected; `None` if not all came back within `give_up`.
    pub time_to_all_back_ms: Option<u64>,
}

#[derive(Default)]
struct AgentLog {
    attempts: Vec<Instant>,
    connects: Vec<Instant>,
}

async fn agent(
    i: usize,
    cfg: Arc<EtcdConfig>,
    opts: ConnectOptions,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicUsize>,
) -> AgentLog {
    let mut log = AgentLog::default();
    let mut reconnect = Reconnect::new(cfg.backoff.clone(), 0x9e37_79b9 ^ i as u64);
    let mut nodes = 0usize;
    let prefix = format!("{}/", cfg.prefix);
    let nodes_prefix = format!("{}/nodes/", cfg.prefix);
    loop {
        if stop.load(Ordering::Relaxed) {
            return log;
        }
        log.attempts.push(Instant::now());
        let session = async {
            let mut client = connect(&cfg, opts.clone()).await?;
            let r = tokio::time::timeout(
                Duration::from_millis(cfg.request_timeout_ms),
                client.get(
                    nodes_prefix.as_str(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                ),
            )
            .await
            .map_err(|_| "list timed out".to_string())?
            .map_err(|e| e.to_string())?;
            let rev = r.header().map(|h| h.revision()).unwrap_or(0);
            let n = r.count() as usize;
            let stream = client
                .watch(
                    prefix.as_str(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(rev + 1),
                    ),
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((client, stream, n))
        };
        if let Ok((_client, mut stream, n)) = session.await {
            log.connects.push(Instant::now());
            nodes = n;
            reconnect.reset();
            connected.fetch_add(1, Ordering::Relaxed);
            loop {
                tokio::select! {
                    m = stream.message() => match m {
                        Ok(Some(_)) => continue,
                        _ => break,
                    },
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if stop.load(Ordering::Relaxed) {
                            return log;
                        }
                    }
                }
            }
            connected.fetch_sub(1, Ordering::Relaxed);
        }
        let next = reconnect.next_attempt(Instant::now(), nodes);
        if !sleep_checking(next, &stop).await {
            return log;
        }
    }
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Runs one simulation against `etcd` (which must be running): registers `agents` node keys,
/// starts the agents, waits until all are connected, kills etcd for `outage`, restarts it and
/// records until all agents are back (or `give_up`).
pub fn run(etcd: &mut LocalEtcd, o: &FleetOptions) -> Result<FleetReport, String> {
    let mut cfg = EtcdConfig::new(vec![etcd.endpoint()], "fleet");
    cfg.prefix = o.prefix.clone();
    cfg.backoff = o.backoff.clone();
    cfg.request_timeout_ms = 3_000;
    let cfg = Arc::new(cfg);
    let opts = cfg.connect_options().map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;

    // The cluster: one node key per agent (the backoff window derives from this count).
    rt.block_on(async {
        let mut c = connect(&cfg, opts.clone()).await?;
        c.delete(
            format!("{}/", cfg.prefix),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| e.to_string())?;
        for i in 0..o.agents {
            c.put(format!("{}/nodes/agent-{i}", cfg.prefix), "{}", None)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    })?;

    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let runner = {
        let (stop, connected, cfg) = (stop.clone(), connected.clone(), cfg.clone());
        let n = o.agents;
        std::thread::spawn(move || {
            rt.block_on(async move {
                let mut tasks = Vec::with_capacity(n);
                for i in 0..n {
                    tasks.push(tokio::spawn(agent(
                        i,
                        cfg.clone(),
                        opts.clone(),
                        stop.clone(),
                        connected.clone(),
                    )));
                }
                let mut logs = Vec::with_capacity(n);
                for t in tasks {
                    logs.push(t.await.unwrap_or_default());
                }
                logs
            })
        })
    };
    let finish = |stop: &AtomicBool| {
        stop.store(true, Ordering::Relaxed);
    };
    if !wait_until(Duration::from_secs(120), || {
        connected.load(Ordering::Relaxed) == o.agents
    }) {
        finish(&stop);
        let _ = runner.join();
        return Err(format!(
            "only {} of {} agents connected initially",
            connected.load(Ordering::Relaxed),
            o.agents
        ));
    }
    let down_at = Instant::now();
    etcd.kill();
    // All watches break at once: wait until every agent noticed.
    wait_until(Duration::from_secs(10), || {
        connected.load(Ordering::Relaxed) == 0
    });
    std::thread::sleep(o.outage.saturating_sub(down_at.elapsed()));
    if let Err(e) = etcd.restart() {
        finish(&stop);
        let _ = runner.join();
        return Err(format!("restart etcd: {e}"));
    }
    // The restart returns once etcd answers /health; agents may connect from its first
    // accepting moment, which lies at most one health poll (50 ms) earlier.
    let up_at = Instant::now();
    wait_until(o.give_up, || connected.load(Ordering::Relaxed) == o.agents);
    finish(&stop);
    let logs = runner.join().map_err(|_| "agent runtime panicked")?;

    let window = o.backoff.window(o.agents);
    let bucket = o.bucket.max(Duration::from_millis(1));
    let nb = (o.give_up.as_nanos() / bucket.as_nanos()) as usize + 1;
    let mut connects = vec![0u32; nb];
    let mut attempts = vec![0u32; nb];
    let mut attempts_during_outage = 0u64;
    let mut back = 0usize;
    let mut last_back = Duration::ZERO;
    let slot = |t: Instant| -> Option<usize> {
        let since = t.checked_duration_since(up_at)?;
        let i = (since.as_nanos() / bucket.as_nanos()) as usize;
        (i < nb).then_some(i)
    };
    for l in &logs {
        for &a in &l.attempts {
            if a >= down_at && a < up_at {
                attempts_during_outage += 1;
            }
            if let Some(i) = slot(a.max(up_at)) {
                if a + Duration::from_millis(60) >= up_at {
                    attempts[i] += 1;
                }
            }
        }
        // First connect after the restart (a connect in the last health-poll gap counts at 0).
        if let Some(&c) = l
            .connects
            .iter()
            .find(|&&c| c + Duration::from_millis(60) >= up_at && c > down_at)
        {
            back += 1;
            let c = c.max(up_at);
            last_back = last_back.max(c - up_at);
            if let Some(i) = slot(c) {
                connects[i] += 1;
            }
        }
    }
    let used = connects.iter().rposition(|&c| c > 0).map_or(1, |i| i + 1);
    connects.truncate(used.max(1));
    attempts.truncate(used.max(1));
    let per_s = (Duration::from_secs(1).as_nanos() / bucket.as_nanos()).max(1) as usize;
    let peak_connects_per_s = (0..connects.len())
        .map(|i| {
            connects[i..(i + per_s).min(connects.len())]
                .iter()
                .sum::<u32>()
        })
        .max()
        .unwrap_or(0);
    let peak_bucket_per_s =
        f64::from(connects.iter().copied().max().unwrap_or(0)) / bucket.as_secs_f64();
    let mean = o.agents as f64 / window.as_secs_f64();
    Ok(FleetReport {
        agents: o.agents,
        jitter: o.backoff.jitter,
        outage_ms: o.outage.as_millis() as u64,
        window_ms: window.as_millis() as u64,
        bucket_ms: bucket.as_millis() as u64,
        connects,
        attempts,
        attempts_during_outage,
        peak_connects_per_s,
        peak_bucket_per_s,
        peak_ratio: f64::from(peak_connects_per_s) / mean,
        back,
        time_to_all_back_ms: (back == o.agents).then_some(last_back.as_millis() as u64),
    })
}
