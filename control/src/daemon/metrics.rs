//! Prometheus metrics (`metrics_listen` in the config): per-reason drops, forwarding counters,
//! conntrack fill, state and source health, policy mode, BGP sessions (DESIGN.md §3.8).
//!
//! ```text
//!  control thread, once a second ── render(status) ──> latest text (Arc<str> behind a Mutex)
//!  np-metrics thread: accept ── GET /metrics ──> latest text          (never touches workers)
//! ```
//!
//! The text is rendered from the same [`Status`] that `nodeplane status` shows, once a second,
//! so a scrape costs the daemon nothing but a copy and a scraper that hangs only holds up the
//! metrics thread (each connection has a 1 s read/write timeout), never the control loop.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nodeplane_dataplane::DropReason;

use crate::api::Status;

/// Longest request read before answering (a GET line and a few headers).
const MAX_REQUEST: usize = 8192;
const IO_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct MetricsError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// The metrics endpoint: a listener thread serving the text last published.
#[derive(Debug)]
pub struct MetricsServer {
    latest: Arc<Mutex<Arc<str>>>,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn start(addr: SocketAddr) -> Result<MetricsServer, MetricsError> {
        let listener = TcpListener::bind(addr).map_err(|source| MetricsError { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| MetricsError { addr, source })?;
        let latest: Arc<Mutex<Arc<str>>> = Arc::new(Mutex::new(Arc::from("")));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (latest.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("np-metrics".into())
            .spawn(move || serve(listener, l, s))
            .map_err(|source| MetricsError { addr, source })?;
        Ok(MetricsServer {
            latest,
            stop,
            addr,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the text scrapes get.
    pub fn publish(&self, text: String) {
        let text: Arc<str> = Arc::from(text);
        match self.latest.lock() {
            Ok(mut g) => *g = text,
            Err(p) => *p.into_inner() = text,
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, latest: Arc<Mutex<Arc<str>>>, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut c) = conn else { continue };
        let text = match latest.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        if let Err(e) = answer(&mut c, &text) {
            log::debug!("metrics: {e}");
        }
    }
}

fn answer(c: &mut TcpStream, text: &str) -> std::io::Result<()> {
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    c.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut req = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < MAX_REQUEST {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = req.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (status, ctype, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) if path == "/metrics" || path.starts_with("/metrics?") => {
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text)
        }
        (Some("GET"), Some(_)) => ("404 Not Found", "text/plain", "only /metrics here\n"),
        _ => ("400 Bad Request", "text/plain", "GET /metrics\n"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())?;
    c.write_all(body.as_bytes())?;
    c.flush()
}

/// One metric family: HELP and TYPE, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn one(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    Family::new(out, name, kind, help).sample(name, &[], value);
}

type WorkerCounter = fn(&crate::worker::WorkerStats) -> u64;

/// The Prometheus text exposition of a status.
pub fn render(s: &Status) -> String {
    let mut o = String::with_capacity(8192);
    let b = |v: bool| u8::from(v);
    one(
        &mut o,
        "nodeplane_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        s.uptime_s,
    );
    let mut f = Family::new(
        &mut o,
        "nodeplane_state",
        "gauge",
        "1 for the daemon's state condition: waiting (no valid state yet), ok, stale (the last change was rejected; running on the last good state).",
    );
    for st in ["waiting", "ok", "stale"] {
        f.sample("nodeplane_state", &[("state", st)], b(s.state == st));
    }
    one(
        &mut o,
        "nodeplane_state_generation",
        "gauge",
        "Generation of the published tables.",
        s.generation,
    );
    one(
        &mut o,
        "nodeplane_state_publications_total",
        "counter",
        "States published to the workers.",
        s.publications,
    );
    one(
        &mut o,
        "nodeplane_state_rejections_total",
        "counter",
        "Desired states rejected whole by validation.",
        s.rejections,
    );
    if let Some(ms) = s.last_publish_ms {
        one(
            &mut o,
            "nodeplane_state_last_publish_seconds",
            "gauge",
            "Compile and publish time of the last publication.",
            ms / 1000.0,
        );
    }
    let mut f = Family::new(
        &mut o,
        "nodeplane_source_connected",
        "gauge",
        "Whether the state source (directory or etcd) is reachable.",
    );
    f.sample(
        "nodeplane_source_connected",
        &[("source", &s.source)],
        b(s.source_connected),
    );
    let mut f = Family::new(
        &mut o,
        "nodeplane_policy_mode",
        "gauge",
        "1 for the policy mode in force (the emergency override if set, else the state's).",
    );
    for m in ["enforce", "audit", "allow-all"] {
        f.sample(
            "nodeplane_policy_mode",
            &[("mode", m)],
            b(s.policy_mode.effective == m),
        );
    }
    one(
        &mut o,
        "nodeplane_policy_mode_overridden",
        "gauge",
        "1 while an operator's runtime override of the policy mode is in force.",
        b(s.policy_mode.r#override.is_some()),
    );
    one(
        &mut o,
        "nodeplane_services",
        "gauge",
        "Services in the running state.",
        s.services,
    );
    one(
        &mut o,
        "nodeplane_endpoints",
        "gauge",
        "Local endpoints in the running state.",
        s.endpoints,
    );
    one(
        &mut o,
        "nodeplane_ipcache_entries",
        "gauge",
        "ipcache prefixes in the running state.",
        s.ipcache_entries,
    );

    let counters: [(&str, &str, WorkerCounter); 6] = [
        (
            "nodeplane_packets_total",
            "Frames processed by the pipeline.",
            |w| w.packets,
        ),
        ("nodeplane_forwarded_total", "Frames forwarded.", |w| {
            w.forwarded
        }),
        (
            "nodeplane_passed_total",
            "Frames passed to the kernel.",
            |w| w.passed,
        ),
        (
            "nodeplane_dropped_total",
            "Frames dropped (all reasons).",
            |w| w.dropped,
        ),
        (
            "nodeplane_conntrack_created_total",
            "Conntrack entries created.",
            |w| w.ct_created,
        ),
        (
            "nodeplane_conntrack_evicted_total",
            "Closing conntrack entries evicted for a new flow (table full).",
            |w| w.ct_evicted,
        ),
    ];
    for (name, help, get) in counters {
        let mut f = Family::new(&mut o, name, "counter", help);
        for w in &s.workers {
            f.sample(name, &[("worker", &w.worker.to_string())], get(w));
        }
    }
    let mut f = Family::new(
        &mut o,
        "nodeplane_drops_total",
        "counter",
        "Frames dropped, by worker and reason (every reason, zero included).",
    );
    for w in &s.workers {
        let worker = w.worker.to_string();
        for r in DropReason::ALL {
            let n = w.drops.get(r.name()).copied().unwrap_or(0);
            f.sample(
                "nodeplane_drops_total",
                &[("worker", &worker), ("reason", r.name())],
                n,
            );
        }
    }
    let mut f = Family::new(
        &mut o,
        "nodeplane_conntrack_entries",
        "gauge",
        "Conntrack entries in use.",
    );
    for w in &s.workers {
        f.sample(
            "nodeplane_conntrack_entries",
            &[("worker", &w.worker.to_string())],
            w.ct_entries,
        );
    }
    let mut f = Family::new(
        &mut o,
        "nodeplane_conntrack_capacity",
        "gauge",
        "Conntrack entries available (max_entries per worker).",
    );
    for w in &s.workers {
        f.sample(
            "nodeplane_conntrack_capacity",
            &[("worker", &w.worker.to_string())],
            w.ct_capacity,
        );
    }

    if let Some(bgp) = &s.bgp {
        one(
            &mut o,
            "nodeplane_bgp_speaker_running",
            "gauge",
            "Whether the BGP speaker runs.",
            b(bgp.speaker == "running"),
        );
        one(
            &mut o,
            "nodeplane_bgp_routes",
            "gauge",
            "Prefixes the running state asks to announce.",
            bgp.routes,
        );
        let mut f = Family::new(
            &mut o,
            "nodeplane_bgp_session_established",
            "gauge",
            "1 while the BGP session with the neighbour is Established.",
        );
        for n in &bgp.neighbors {
            let addr = n.address.to_string();
            f.sample(
                "nodeplane_bgp_session_established",
                &[("neighbor", &n.name), ("address", &addr)],
                b(n.state == nodeplane_bgp::fsm::State::Established),
            );
        }
    }
    o
}
