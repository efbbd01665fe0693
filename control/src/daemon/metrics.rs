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

use nodeplane_dataplane::worker::SvcTraffic;

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
            crate::log_limited!(log::Level::Debug, "metrics-answer", "metrics: {e}");
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

type WorkerCounter = fn(&nodeplane_dataplane::worker::WorkerStats) -> u64;
type SvcCounter = fn(&SvcTraffic) -> u64;

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
    one(
        &mut o,
        "nodeplane_source_attempts_total",
        "counter",
        "Attempts to reach the state store (etcd connections tried), bounded by the reconnect schedule.",
        s.source_attempts,
    );
    one(
        &mut o,
        "nodeplane_source_syncs_total",
        "counter",
        "Whole reads of the state store (etcd: one list per successful reconnect).",
        s.source_syncs,
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

    let counters: [(&str, &str, WorkerCounter); 15] = [
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
            "nodeplane_checksums_completed_total",
            "Partial TCP/UDP checksums (senders with TX checksum offload) completed before forwarding.",
            |w| w.csum_completed,
        ),
        (
            "nodeplane_checksums_offloaded_total",
            "Partial TCP/UDP checksums passed on for the kernel to finish (AF_XDP TX metadata).",
            |w| w.csum_offloaded,
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
        (
            "nodeplane_rejects_sent_total",
            "New flows to a service without a usable endpoint answered with a TCP reset or an ICMP port unreachable.",
            |w| w.rejects_sent,
        ),
        (
            "nodeplane_rejects_suppressed_total",
            "Rejects not sent because the worker's reject rate limit (1000/s, burst 50) was reached.",
            |w| w.rejects_suppressed,
        ),
        (
            "nodeplane_mtu_icmp_sent_total",
            "Packets larger than their egress interface's MTU answered with an ICMP fragmentation-needed / ICMPv6 packet-too-big (each also dropped frag-needed).",
            |w| w.mtu_icmp_sent,
        ),
        (
            "nodeplane_mtu_icmp_suppressed_total",
            "ICMP fragmentation-needed / packet-too-big not sent because the worker's rate limit (1000/s, burst 50) was reached.",
            |w| w.mtu_icmp_suppressed,
        ),
        (
            "nodeplane_worker_panics_total",
            "Panics caught on the worker path (the burst's frames dropped, the worker goes on).",
            |w| w.worker_panics,
        ),
        (
            "nodeplane_events_emitted_total",
            "Flow events recorded by the worker (only while `nodeplane observe` runs).",
            |w| w.events.emitted,
        ),
        (
            "nodeplane_events_lost_total",
            "Flow events dropped on the worker because its event queue was full (the fan-out fell behind).",
            |w| w.events.lost,
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

    one(
        &mut o,
        "nodeplane_event_observers",
        "gauge",
        "`nodeplane observe` sessions attached (workers record flow events only while not 0).",
        s.event_observers,
    );
    one(
        &mut o,
        "nodeplane_workers_dead",
        "gauge",
        "Worker threads that ended: their queues are not served until nodeplane restarts.",
        s.dead_workers.len(),
    );
    afxdp(&mut o, s);
    let per_service: [(&str, &str, SvcCounter); 4] = [
        (
            "nodeplane_service_flows_total",
            "New flows forwarded to a backend of the service.",
            |t| t.flows,
        ),
        (
            "nodeplane_service_packets_total",
            "Frames of the service's flows forwarded (requests and replies).",
            |t| t.packets,
        ),
        (
            "nodeplane_service_bytes_total",
            "Bytes of the service's flows forwarded (requests and replies).",
            |t| t.bytes,
        ),
        (
            "nodeplane_service_dropped_total",
            "Frames of the service's flows dropped (any reason).",
            |t| t.dropped,
        ),
    ];
    for (name, help, get) in per_service {
        let mut f = Family::new(&mut o, name, "counter", help);
        for (svc, t) in &s.service_traffic {
            f.sample(name, &[("service", svc)], get(t));
        }
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

/// The AF_XDP runtime's families (none with another I/O): the XDP program's exits, the
/// hand-off between workers, and frames the kernel lost before any worker saw them.
fn afxdp(o: &mut String, s: &Status) {
    if let Some(io) = s.io.as_ref().filter(|io| !io.xdp.is_empty()) {
        let name = "nodeplane_xdp_frames_total";
        let mut f = Family::new(
            o,
            name,
            "counter",
            "Frames seen by the XDP program, by exit (redirect_*: to a socket; pass_*: to the \
             kernel; pass_no_socket: steered traffic with no socket, i.e. not policed).",
        );
        for (exit, n) in &io.xdp {
            f.sample(name, &[("exit", exit)], n);
        }
        let name = "nodeplane_afxdp_interface_events_total";
        let mut f = Family::new(
            o,
            name,
            "counter",
            "Interfaces of the state that went away while running (gone: their sockets taken out \
             of service, frames to them dropped iface-down) and came back (reattached: XDP and \
             sockets again; reattach_failed: an attempt that failed, retried every second).",
        );
        for (event, n) in [
            ("gone", io.links.gone),
            ("reattached", io.links.reattached),
            ("reattach_failed", io.links.reattach_failed),
        ] {
            f.sample(name, &[("event", event)], n);
        }
        let name = "nodeplane_afxdp_interfaces_down";
        let mut f = Family::new(
            o,
            name,
            "gauge",
            "Interfaces of the state that are gone now (or back and not re-attached yet).",
        );
        f.sample(name, &[], io.down.len() as u64);
    }
    if let Some(fp) = s.io.as_ref().and_then(|io| io.fast_path.as_ref()) {
        let name = "nodeplane_fast_path_total";
        let mut f = Family::new(
            o,
            name,
            "counter",
            "The TC fast path's exits (io.afxdp.fast_path: tc), summed over CPUs: \
             fast_fwd_packets/bytes (forwarded by the kernel flow cache; a GSO skb counts its \
             segments), fast_gso_skbs, slow_path (to the workers), slow_gso_drop (a GSO skb \
             the slow path could not take: dropped, TCP resends it), pass (the kernel's), errors.",
        );
        for (exit, n) in fp {
            f.sample(name, &[("counter", exit)], n);
        }
    }
    let offload: Vec<_> = s
        .workers
        .iter()
        .filter_map(|w| Some((w.worker.to_string(), w.io.afxdp.as_ref()?.offload?)))
        .collect();
    if !offload.is_empty() {
        let name = "nodeplane_offload_total";
        let mut f = Family::new(
            o,
            name,
            "counter",
            "The workers' side of the kernel flow cache: flow directions offered (and offered \
             again), refused by a full map (offload_full), failed map operations \
             (offload_errors), withdrawn (closed, ended, expired), refreshed at expiry because \
             the kernel forwarded them, map clears, slow-path frames received and unknown.",
        );
        for (worker, c) in &offload {
            for (event, n) in [
                ("offered", c.offered),
                ("reoffered", c.reoffered),
                ("offload_full", c.offload_full),
                ("offload_errors", c.offload_errors),
                ("withdrawn", c.withdrawn),
                ("refreshed", c.refreshed),
                ("expired", c.expired),
                ("cleared", c.cleared),
                ("slow_path_rx", c.slow_path_rx),
                ("slow_path_unknown", c.slow_path_unknown),
            ] {
                f.sample(name, &[("worker", worker), ("event", event)], n);
            }
        }
    }
    let workers: Vec<_> = s
        .workers
        .iter()
        .filter_map(|w| Some((w.worker.to_string(), w.io.afxdp.as_ref()?)))
        .collect();
    if workers.is_empty() {
        return;
    }
    let name = "nodeplane_afxdp_handoff_frames_total";
    let mut f = Family::new(
        o,
        name,
        "counter",
        "Frames handed to the worker owning their flow (out), received from other workers (in), \
         and hand-offs dropped (full queue, no free batch, too long).",
    );
    for (worker, a) in &workers {
        let c = &a.counters;
        for (dir, n) in [
            ("out", c.handed_off),
            ("in", c.handed_in),
            ("dropped", c.handoff_dropped + c.handoff_too_long),
        ] {
            f.sample(name, &[("worker", worker), ("direction", dir)], n);
        }
    }
    let name = "nodeplane_afxdp_kernel_dropped_total";
    let mut f = Family::new(
        o,
        name,
        "counter",
        "Frames the kernel could not deliver to an AF_XDP socket (XDP_STATISTICS), lost before \
         the pipeline: rx_dropped (no free frame in the fill ring, among others), rx_ring_full \
         (the worker did not keep up), invalid descriptors.",
    );
    for (worker, a) in &workers {
        for sock in &a.sockets {
            let Some(k) = sock.kernel else { continue };
            let queue = sock.queue.to_string();
            for (reason, n) in [
                ("rx_dropped", k.rx_dropped),
                ("rx_ring_full", k.rx_ring_full),
                ("rx_invalid_descs", k.rx_invalid_descs),
                ("tx_invalid_descs", k.tx_invalid_descs),
            ] {
                f.sample(
                    name,
                    &[
                        ("worker", worker),
                        ("iface", &sock.iface),
                        ("queue", &queue),
                        ("reason", reason),
                    ],
                    n,
                );
            }
        }
    }
    let name = "nodeplane_afxdp_chains_total";
    let mut f = Family::new(
        o,
        name,
        "counter",
        "Packets that travelled as chains of UMEM frames (io.afxdp.multi_buffer): received (rx), \
         sent (tx), and chains dropped on receipt (rx_dropped: too many frames or bytes, or no \
         last buffer).",
    );
    for (worker, a) in &workers {
        for sock in &a.sockets {
            let queue = sock.queue.to_string();
            for (kind, n) in [
                ("rx", sock.rx_chains),
                ("tx", sock.tx_chains),
                ("rx_dropped", sock.rx_chain_dropped),
            ] {
                f.sample(
                    name,
                    &[
                        ("worker", worker),
                        ("iface", &sock.iface),
                        ("queue", &queue),
                        ("kind", kind),
                    ],
                    n,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status as `nodeplane status --json` prints it for the AF_XDP runtime (from the e2e
    /// lab, one socket kept).
    const AFXDP_STATUS: &str = r#"{"applied_at":1796599082,"bgp":null,"dead_workers":[{"worker":1,"reason":"thread ended"}],
      "endpoints":3,"generation":2,"io":{"attached":["uplink0 (native, 2 queues)"],"kind":"afxdp",
      "xdp":{"pass_host":3,"pass_no_socket":0,"redirect_fragment":2,"redirect_nodeport":7}},
      "ipcache_entries":2,"last_publish_ms":186.2,"last_rejection":null,"node":"node-1",
      "policy_mode":{"effective":"enforce","override":null,"state":"enforce"},"publications":2,
      "rejections":0,"removed_flow_action":"drop","services":5,"source":"dir x","source_connected":true,
      "source_detail":"","state":"ok","state_origin":"dir x","uptime_s":1,
      "workers":[{"ct_capacity":262144,"ct_created":6,"ct_entries":6,"ct_evicted":0,"ct_expired":0,
        "ct_full_drops":0,"dropped":0,"drops":{},"forwarded":35,"generation":2,"held":0,
        "io":{"afxdp":{"accounting":null,"core":0,"counters":{"handed_in":4,"handed_off":5,
          "handoff_abandoned":0,"handoff_dropped":1,"handoff_too_long":1,"pass_dropped":0,
          "poll_errors":0,"rx":35,"tx_copy_failed":0,"tx_no_socket":0},
          "sockets":[{"dropped":0,"fill_kick_errors":0,"fill_kicks":0,"fill_starved":0,"iface":"uplink0",
            "kernel":{"rx_dropped":9,"rx_fill_ring_empty_descs":0,"rx_invalid_descs":0,"rx_ring_full":3,
              "tx_invalid_descs":0,"tx_ring_empty_descs":1522},
            "queue":1,"released":0,"rx":2,"tx":6,"tx_completed":6,"tx_kick_errors":0,"tx_kicks":6,
            "tx_ring_full":0,"rx_chains":7,"tx_chains":5,"rx_chain_dropped":1}]},
          "finished":false,"passed":0,"rx_packets":35,"tx":{}},
        "packets":35,"panic_dropped":0,"passed":0,"rst_sent":0,"rejects_sent":4,
        "rejects_suppressed":1,"worker":0,"worker_panics":2}],
      "service_traffic":{"web":{"packets":10,"bytes":900,"flows":2,"dropped":1}}}"#;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn afxdp_families_show_xdp_exits_hand_off_kernel_drops_and_dead_workers() {
        let s: Status = serde_json::from_str(AFXDP_STATUS).expect("status JSON");
        let t = render(&s);
        assert_eq!(
            sample(
                &t,
                r#"nodeplane_xdp_frames_total{exit="redirect_fragment"}"#
            ),
            Some(2.0),
            "{t}"
        );
        assert_eq!(
            sample(&t, r#"nodeplane_xdp_frames_total{exit="pass_no_socket"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &t,
                r#"nodeplane_afxdp_handoff_frames_total{worker="0",direction="out"}"#
            ),
            Some(5.0)
        );
        assert_eq!(
            sample(
                &t,
                r#"nodeplane_afxdp_handoff_frames_total{worker="0",direction="dropped"}"#
            ),
            Some(2.0),
            "full queue and too long"
        );
        assert_eq!(
            sample(
                &t,
                r#"nodeplane_afxdp_kernel_dropped_total{worker="0",iface="uplink0",queue="1",reason="rx_ring_full"}"#
            ),
            Some(3.0)
        );
        for (kind, v) in [("rx", 7.0), ("tx", 5.0), ("rx_dropped", 1.0)] {
            assert_eq!(
                sample(
                    &t,
                    &format!(
                        r#"nodeplane_afxdp_chains_total{{worker="0",iface="uplink0",queue="1",kind="{kind}"}}"#
                    )
                ),
                Some(v),
                "{kind}"
            );
        }
        assert_eq!(sample(&t, "nodeplane_workers_dead"), Some(1.0));
        assert_eq!(
            sample(&t, r#"nodeplane_worker_panics_total{worker="0"}"#),
            Some(2.0)
        );
        assert_eq!(
            sample(&t, r#"nodeplane_rejects_sent_total{worker="0"}"#),
            Some(4.0)
        );
        assert_eq!(
            sample(&t, r#"nodeplane_rejects_suppressed_total{worker="0"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, r#"nodeplane_events_emitted_total{worker="0"}"#),
            Some(0.0),
            "a status without events counters (older daemon) reads as 0"
        );
        assert_eq!(sample(&t, "nodeplane_event_observers"), Some(0.0));
        for (family, v) in [
            ("flows", 2.0),
            ("packets", 10.0),
            ("bytes", 900.0),
            ("dropped", 1.0),
        ] {
            assert_eq!(
                sample(
                    &t,
                    &format!("nodeplane_service_{family}_total{{service=\"web\"}}")
                ),
                Some(v),
                "{family}"
            );
        }
        // Every family is declared once.
        for family in [
            "nodeplane_xdp_frames_total",
            "nodeplane_afxdp_handoff_frames_total",
            "nodeplane_afxdp_kernel_dropped_total",
            "nodeplane_afxdp_chains_total",
            "nodeplane_afxdp_interface_events_total",
        ] {
            assert_eq!(
                t.matches(&format!("# TYPE {family} counter\n")).count(),
                1,
                "{family}"
            );
        }
    }

    #[test]
    fn fast_path_families_only_with_a_fast_path() {
        let mut s: Status = serde_json::from_str(AFXDP_STATUS).expect("status JSON");
        let t = render(&s);
        assert!(!t.contains("nodeplane_fast_path_total"), "{t}");
        assert!(!t.contains("nodeplane_offload_total"), "{t}");
        if let Some(io) = s.io.as_mut() {
            io.fast_path = Some(
                [("fast_fwd_packets", 42u64), ("slow_gso_drop", 3)]
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
            );
        }
        if let Some(a) = s.workers[0].io.afxdp.as_mut() {
            a.offload = Some(nodeplane_dataplane::offload::Counters {
                offered: 7,
                offload_full: 2,
                ..Default::default()
            });
        }
        let t = render(&s);
        assert_eq!(
            sample(
                &t,
                r#"nodeplane_fast_path_total{counter="fast_fwd_packets"}"#
            ),
            Some(42.0),
            "{t}"
        );
        assert_eq!(
            sample(&t, r#"nodeplane_fast_path_total{counter="slow_gso_drop"}"#),
            Some(3.0)
        );
        assert_eq!(
            sample(&t, r#"nodeplane_offload_total{worker="0",event="offered"}"#),
            Some(7.0),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                r#"nodeplane_offload_total{worker="0",event="offload_full"}"#
            ),
            Some(2.0)
        );
    }

    #[test]
    fn no_afxdp_families_without_afxdp() {
        let mut s: Status = serde_json::from_str(AFXDP_STATUS).expect("status JSON");
        s.io = None;
        s.workers[0].io.afxdp = None;
        let t = render(&s);
        assert!(!t.contains("nodeplane_xdp_frames_total"), "{t}");
        assert!(!t.contains("nodeplane_afxdp_"), "{t}");
        assert_eq!(sample(&t, "nodeplane_workers_dead"), Some(1.0));
    }
}
