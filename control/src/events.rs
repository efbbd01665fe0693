//! Flow events (DESIGN §3.8, like Hubble's): what the pipeline decided for new flows and
//! dropped frames, streamed to `nodeplane observe` without slowing forwarding.
//!
//! ```text
//!  worker i (per burst)              np-events thread                np-observe-k thread
//!  ────────────────────              ────────────────                ───────────────────
//!  observers == 0: nothing           sets observers = subscribers    one per subscriber:
//!  else, per frame:                  pops every worker queue         recv_timeout(1 s),
//!    new flow or drop?               sorts the round by time         JSON line per event,
//!    FlowEvent (Copy, 112 B) from    names each event once           {"stats":..} each 1 s;
//!    the burst's parse + Outcome     per subscriber: filter,         a write error ends it
//!    ArrayQueue::push ─────────────>   try_send ───────────────────> (gone: the fan-out
//!    (full: lost += 1)                 (full: dropped += 1 for it)    forgets it)
//! ```
//!
//! Cost on the worker: with no observer, one `Relaxed` load per burst. With observers, per
//! frame a test of the outcome and, for an event, a 112-byte copy and one lock-free push
//! (a CAS on the queue's tail); the original 5-tuple comes from the pipeline's own parse of the
//! burst ([`Pipeline::tuples`](nodeplane_dataplane::Pipeline::tuples)), taken before any
//! rewrite, so no frame is parsed twice. Nothing is allocated, locked or logged per packet.
//! The figures are in bench/RESULTS.md (`## Flow events`).
//!
//! Names are resolved on the np-events thread, with the tables of the event's generation
//! when they are still among the last [`TABLES_KEPT`] publications (else the newest tables,
//! and the service by the event's frontend).
//!
//! Loss is counted, never silent: `lost` on a worker when its queue is full (the fan-out fell
//! behind), `dropped` per subscriber when its channel is full (it reads too slowly). Neither
//! ever blocks a worker or the control thread.

use std::collections::VecDeque;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use crossbeam::queue::ArrayQueue;
use nodeplane_dataplane::events::{EventTap, FlowEvent, EVENT_QUEUE};
use nodeplane_dataplane::flow::{Addr, PROTO_ICMP, PROTO_ICMPV6};
use nodeplane_dataplane::tables::IfIndex;
use nodeplane_dataplane::{Action, CtStatus, DropReason, Tables};
use serde::{Deserialize, Serialize};

use nodeplane_dataplane::worker::{proto_name, proto_number, Clock};

/// Events queued per subscriber for its connection thread (beyond: dropped for it, counted).
pub const SUBSCRIBER_QUEUE: usize = 8_192;
/// Subscribers at most (`nodeplane observe` sessions); more are refused with an error.
pub const MAX_OBSERVERS: usize = 16;
/// Publications whose tables the fan-out keeps to name events of an older generation.
pub const TABLES_KEPT: usize = 4;
/// Events the fan-out takes from one worker queue per round (keeps rounds short).
const ROUND: usize = 4_096;
/// How often a subscriber connection gets a `stats` line (when idle, it also finds a client
/// that went away).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Which events a subscriber wants (`nodeplane observe --verdict .. --proto .. --ip ..
/// --service ..`); every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// `forwarded`, `dropped` or `passed`.
    #[serde(default)]
    pub verdict: Option<String>,
    /// `tcp`, `udp`, `icmp` (ICMPv6 included).
    #[serde(default)]
    pub proto: Option<String>,
    /// The original source or destination, or the backend.
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// A service name.
    #[serde(default)]
    pub service: Option<String>,
    /// A drop reason (`policy-denied`, `no-endpoint`, ...).
    #[serde(default)]
    pub reason: Option<String>,
}

impl EventFilter {
    pub fn check(&self) -> Result<(), String> {
        if let Some(v) = &self.verdict {
            if !["forwarded", "dropped", "passed"].contains(&v.as_str()) {
                return Err(format!(
                    "unknown verdict {v:?} (forwarded, dropped or passed)"
                ));
            }
        }
        if let Some(p) = &self.proto {
            if proto_number(p).is_none() {
                return Err(format!("unknown protocol {p:?} (tcp, udp or icmp)"));
            }
        }
        if let Some(r) = &self.reason {
            if DropReason::from_name(r).is_none() {
                return Err(format!("unknown drop reason {r:?}"));
            }
        }
        Ok(())
    }

    pub fn matches(&self, r: &FlowRecord) -> bool {
        if self.verdict.as_ref().is_some_and(|v| *v != r.verdict) {
            return false;
        }
        if let Some(p) = self.proto.as_deref().and_then(proto_number) {
            let rp = match r.proto_number {
                PROTO_ICMPV6 => PROTO_ICMP,
                n => n,
            };
            if rp != p {
                return false;
            }
        }
        if let Some(ip) = self.ip {
            let backend = r
                .backend
                .as_deref()
                .and_then(|b| b.parse::<SocketAddr>().ok())
                .map(|s| s.ip());
            if r.src != Some(ip) && r.dst != Some(ip) && backend != Some(ip) {
                return false;
            }
        }
        if self
            .service
            .as_ref()
            .is_some_and(|s| r.service.as_ref() != Some(s))
        {
            return false;
        }
        if self
            .reason
            .as_ref()
            .is_some_and(|s| r.drop_reason.as_ref() != Some(s))
        {
            return false;
        }
        true
    }
}

/// One event with names: a line of `nodeplane observe --json` (`{"event": FlowRecord}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Unix time, nanoseconds.
    pub time_unix_ns: u64,
    pub worker: usize,
    /// Ingress interface.
    pub iface: String,
    /// `forwarded`, `dropped`, `passed` or `held`.
    pub verdict: String,
    pub drop_reason: Option<String>,
    /// Egress interface (forwarded).
    pub egress: Option<String>,
    /// Conntrack status: `new`, `established`, `reply`, `related` (none: no flow, e.g. a new
    /// flow denied before its entry was made).
    pub ct: Option<String>,
    pub proto: String,
    pub proto_number: u8,
    /// The original (pre-NAT) tuple; no addresses when the frame was not IP.
    pub src: Option<IpAddr>,
    pub sport: u16,
    pub dst: Option<IpAddr>,
    pub dport: u16,
    /// Local endpoints of the source and destination (the backend's, after DNAT).
    pub src_endpoint: Option<String>,
    pub dst_endpoint: Option<String>,
    pub service: Option<String>,
    /// The service frontend `VIP:port` the flow was sent to (its original destination).
    pub frontend: Option<String>,
    /// DNAT target `ip:port`.
    pub backend: Option<String>,
    pub src_identity: Option<u32>,
    pub dst_identity: Option<u32>,
    /// `none`, `allow`, `deny`, `audit`.
    pub policy: String,
}

/// One line of the `observe` stream after the first (the response).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamLine {
    Event(Box<FlowRecord>),
    Stats(StreamStats),
}

/// [`StreamLine`] as the daemon writes it (borrowing the shared record).
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
enum LineOut<'a> {
    Event(&'a FlowRecord),
    Stats(StreamStats),
}

/// Sent once a second (busy or idle): what this subscriber missed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStats {
    /// Events that matched but were dropped because this subscriber read too slowly.
    pub dropped: u64,
    /// Events lost on the workers (queues full) since this subscriber attached (all
    /// subscribers miss those).
    pub lost: u64,
}

/// The answer to an `observe` request (the stream's first line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObserveStarted {
    pub subscriber: u64,
    pub workers: usize,
    pub queue: usize,
}

/// Resolves an event against the tables (of its generation if still kept).
pub fn resolve(ev: &FlowEvent, kept: &VecDeque<Arc<Tables>>, wall_offset: u64) -> FlowRecord {
    let exact = kept.iter().find(|t| t.generation == ev.generation);
    let t = exact.or_else(|| kept.back());
    let ip = |a: Addr| (ev.proto != 0).then(|| a.to_ip());
    let iface = |i: IfIndex| {
        t.and_then(|t| t.ifaces.get(usize::from(i)))
            .map(|i| i.name.clone())
            .unwrap_or_else(|| format!("if{i}"))
    };
    let (verdict, reason, egress) = match ev.action {
        Action::Forward(e) => ("forwarded", None, Some(iface(e))),
        Action::Pass => ("passed", None, None),
        Action::Drop(r) => ("dropped", Some(r.name().to_string()), None),
        Action::Held => ("held", None, None),
    };
    // The service by index under the event's own tables; else by frontend in the newest.
    let service = t.and_then(|t| {
        let idx = match exact {
            Some(_) => ev.service,
            None => ev
                .service
                .and_then(|_| t.frontend(ev.dst, ev.dport, ev.proto)),
        };
        idx.and_then(|i| t.services.get(i as usize))
            .map(|s| s.name.clone())
    });
    // For a flow's original direction the original destination is the frontend.
    let frontend = match (ev.service, ev.ct) {
        (Some(_), CtStatus::New | CtStatus::Established | CtStatus::None) => {
            Some(nodeplane_dataplane::flow::fmt_socket(ev.dst, ev.dport))
        }
        _ => None,
    };
    let endpoint = |a: Addr| {
        t.and_then(|t| t.endpoint_of(&a))
            .and_then(|i| t.and_then(|t| t.endpoints.get(i as usize)))
            .map(|e| e.name.clone())
    };
    let dst_local = ev.backend.map(|(a, _)| a).unwrap_or(ev.dst);
    FlowRecord {
        time_unix_ns: ev.ts.wrapping_add(wall_offset),
        worker: usize::from(ev.worker),
        iface: iface(ev.iface),
        verdict: verdict.into(),
        drop_reason: reason,
        egress,
        ct: ev.ct.name().map(str::to_string),
        proto: if ev.proto == 0 {
            "-".into()
        } else {
            proto_name(ev.proto)
        },
        proto_number: ev.proto,
        src: ip(ev.src),
        sport: ev.sport,
        dst: ip(ev.dst),
        dport: ev.dport,
        src_endpoint: (ev.proto != 0).then(|| endpoint(ev.src)).flatten(),
        dst_endpoint: (ev.proto != 0).then(|| endpoint(dst_local)).flatten(),
        service,
        frontend,
        backend: ev
            .backend
            .map(|(a, p)| nodeplane_dataplane::flow::fmt_socket(a, p)),
        src_identity: ev.src_identity,
        dst_identity: ev.dst_identity,
        policy: ev.policy.name().into(),
    }
}

impl FlowRecord {
    /// One line like `hubble observe`'s:
    /// `23:01:02.123456 w0 pod-client 10.244.1.10:40000 (client) -> 10.96.0.10:80 service web
    /// => 10.244.1.21:8080 (web-1) tcp new FORWARDED to pod-web1 policy=allow ids 2001->3001`.
    pub fn human(&self) -> String {
        let secs = self.time_unix_ns / 1_000_000_000;
        let micros = (self.time_unix_ns % 1_000_000_000) / 1_000;
        let day = secs % 86_400;
        let mut s = format!(
            "{:02}:{:02}:{:02}.{micros:06} w{} {} ",
            day / 3600,
            day / 60 % 60,
            day % 60,
            self.worker,
            self.iface
        );
        let ports = matches!(self.proto_number, 6 | 17);
        let sock = |ip: Option<IpAddr>, port: u16| match (ip, ports) {
            (None, _) => "?".to_string(),
            (Some(ip), true) => SocketAddr::new(ip, port).to_string(),
            (Some(ip), false) => ip.to_string(),
        };
        s += &sock(self.src, self.sport);
        if let Some(e) = &self.src_endpoint {
            s += &format!(" ({e})");
        }
        s += " -> ";
        s += &sock(self.dst, self.dport);
        if let Some(svc) = &self.service {
            s += &format!(" service {svc}");
        }
        if let Some(b) = &self.backend {
            s += &format!(" => {b}");
        }
        if let Some(e) = &self.dst_endpoint {
            s += &format!(" ({e})");
        }
        s += &format!(" {}", self.proto);
        if let Some(ct) = &self.ct {
            s += &format!(" {ct}");
        }
        s += &format!(" {}", self.verdict.to_uppercase());
        if let Some(r) = &self.drop_reason {
            s += &format!(" ({r})");
        }
        if let Some(e) = &self.egress {
            s += &format!(" to {e}");
        }
        if self.policy != "none" {
            s += &format!(" policy={}", self.policy);
        }
        if let (Some(a), Some(b)) = (self.src_identity, self.dst_identity) {
            s += &format!(" ids {a}->{b}");
        }
        s
    }
}

/// A subscriber as the fan-out holds it.
#[derive(Debug)]
struct Sub {
    filter: EventFilter,
    tx: Sender<Arc<FlowRecord>>,
    dropped: Arc<AtomicU64>,
    /// Set by its connection thread when it ends.
    gone: Arc<AtomicBool>,
}

/// A worker's queue and its `lost` counter, as the hub holds them.
type WorkerQueue = (Arc<ArrayQueue<FlowEvent>>, Arc<AtomicU64>);

/// The daemon's event hub: shared by the control thread (registers worker queues, tables,
/// subscribers), the np-events fan-out thread and the subscribers' connection threads.
#[derive(Debug)]
pub struct EventHub {
    observers: Arc<AtomicUsize>,
    /// Clock nanoseconds + this = unix nanoseconds.
    wall_offset: u64,
    queues: Mutex<Vec<WorkerQueue>>,
    tables: Mutex<VecDeque<Arc<Tables>>>,
    new_subs: Sender<Sub>,
    subs_rx: Mutex<Option<Receiver<Sub>>>,
    /// Subscribers attached (connection threads alive), for the limit.
    attached: AtomicUsize,
    next_id: AtomicU64,
}

impl EventHub {
    pub fn new(clock: Clock) -> Arc<EventHub> {
        let mono = clock.now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let (tx, rx) = bounded(MAX_OBSERVERS * 2);
        Arc::new(EventHub {
            observers: Arc::new(AtomicUsize::new(0)),
            wall_offset: wall.wrapping_sub(mono),
            queues: Mutex::new(Vec::new()),
            tables: Mutex::new(VecDeque::new()),
            new_subs: tx,
            subs_rx: Mutex::new(Some(rx)),
            attached: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        })
    }

    /// A new worker's tap (its queue is allocated here, before the worker starts).
    pub fn tap(&self) -> EventTap {
        let queue = Arc::new(ArrayQueue::new(EVENT_QUEUE));
        let lost = Arc::new(AtomicU64::new(0));
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Arc::clone(&queue), Arc::clone(&lost)));
        EventTap::new(Arc::clone(&self.observers), queue, lost)
    }

    /// Forgets the registered worker queues (before workers are started again).
    pub fn clear_queues(&self) {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Every publication: names of later events come from these tables.
    pub fn set_tables(&self, t: &Arc<Tables>) {
        let mut k = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        k.push_back(Arc::clone(t));
        while k.len() > TABLES_KEPT {
            k.pop_front();
        }
    }

    /// Subscribers the fan-out serves now.
    pub fn observers(&self) -> usize {
        self.observers.load(Ordering::Relaxed)
    }

    fn lost_total(&self) -> u64 {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, l)| l.load(Ordering::Relaxed))
            .sum()
    }

    pub fn workers(&self) -> usize {
        self.queues.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Reserves a subscriber slot (the control thread, on an `observe` request).
    pub fn reserve(&self) -> Result<u64, String> {
        let n = self.attached.fetch_add(1, Ordering::Relaxed);
        if n >= MAX_OBSERVERS {
            self.attached.fetch_sub(1, Ordering::Relaxed);
            return Err(format!(
                "too many observers (at most {MAX_OBSERVERS}); try again later"
            ));
        }
        Ok(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Gives a reserved slot back (the connection could not be handed over).
    pub fn release(&self) {
        self.attached.fetch_sub(1, Ordering::Relaxed);
    }

    /// Serves a subscriber on its own thread: the connection gets `pending` (the lines the
    /// control socket still owed it, ending with the `observe` response), then the events
    /// matching `filter` until it goes away or `stop` is set.
    pub fn attach(
        self: &Arc<EventHub>,
        id: u64,
        filter: EventFilter,
        stream: UnixStream,
        pending: Vec<u8>,
        stop: Arc<AtomicBool>,
    ) {
        let (tx, rx) = bounded(SUBSCRIBER_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let gone = Arc::new(AtomicBool::new(false));
        let sub = Sub {
            filter,
            tx,
            dropped: Arc::clone(&dropped),
            gone: Arc::clone(&gone),
        };
        if self.new_subs.try_send(sub).is_err() {
            log::warn!("observer {id}: the event fan-out is not running; closed");
            self.release();
            return;
        }
        let hub = Arc::clone(self);
        let lost0 = hub.lost_total();
        let spawned = std::thread::Builder::new()
            .name(format!("np-observe-{id}"))
            .spawn(move || {
                let r = stream_to(&hub, stream, &pending, &rx, &dropped, lost0, &stop);
                gone.store(true, Ordering::Relaxed);
                drop(rx);
                log::info!(
                    "observer {id} detached ({}); {} events dropped for it",
                    match r {
                        Ok(()) => "daemon stopping".to_string(),
                        Err(e) => e.to_string(),
                    },
                    dropped.load(Ordering::Relaxed)
                );
                hub.release();
            });
        match spawned {
            Ok(_) => log::info!("observer {id} attached"),
            Err(e) => {
                log::error!("observer {id}: cannot start its thread: {e}");
                self.release();
            }
        }
    }

    /// Starts the fan-out thread (once).
    pub fn start(
        self: &Arc<EventHub>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let rx = self
            .subs_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| std::io::Error::other("event fan-out already started"))?;
        let hub = Arc::clone(self);
        std::thread::Builder::new()
            .name("np-events".into())
            .spawn(move || fan_out(&hub, &rx, &stop))
    }
}

/// The fan-out loop (np-events thread).
fn fan_out(hub: &EventHub, new_subs: &Receiver<Sub>, stop: &AtomicBool) {
    let mut subs: Vec<Sub> = Vec::new();
    let mut batch: Vec<FlowEvent> = Vec::with_capacity(ROUND * 4);
    while !stop.load(Ordering::Relaxed) {
        while let Ok(s) = new_subs.try_recv() {
            subs.push(s);
        }
        hub.observers.store(subs.len(), Ordering::Relaxed);
        batch.clear();
        let queues: Vec<_> = hub
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(q, _)| Arc::clone(q))
            .collect();
        for q in &queues {
            for _ in 0..ROUND {
                match q.pop() {
                    Some(e) => batch.push(e),
                    None => break,
                }
            }
        }
        if subs.is_empty() {
            // Events recorded just before the last subscriber left are discarded (above), so a
            // later subscriber never sees stale ones. Wait for a subscriber.
            if let Ok(s) = new_subs.recv_timeout(Duration::from_millis(50)) {
                subs.push(s);
            }
            continue;
        }
        if batch.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        } else {
            batch.sort_unstable_by_key(|e| e.ts);
            let kept = hub.tables.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for ev in &batch {
                // Named once per event, then filtered per subscriber.
                let rec = Arc::new(resolve(ev, &kept, hub.wall_offset));
                for s in &subs {
                    if !s.filter.matches(&rec) {
                        continue;
                    }
                    match s.tx.try_send(Arc::clone(&rec)) {
                        Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                        Err(TrySendError::Full(_)) => {
                            s.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        // A subscriber whose connection thread ended is gone.
        subs.retain(|s| !s.gone.load(Ordering::Relaxed));
    }
    hub.observers.store(0, Ordering::Relaxed);
}

/// A subscriber's connection thread: writes JSON lines until the client goes away.
fn stream_to(
    hub: &EventHub,
    stream: UnixStream,
    pending: &[u8],
    rx: &Receiver<Arc<FlowRecord>>,
    dropped: &AtomicU64,
    lost0: u64,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    // A client that stops reading blocks only this thread, and only this long per write.
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    (&stream).write_all(pending)?;
    let mut w = BufWriter::with_capacity(64 * 1024, &stream);
    let line = |w: &mut BufWriter<&UnixStream>, l: &LineOut<'_>| -> std::io::Result<()> {
        serde_json::to_writer(&mut *w, l)?;
        w.write_all(b"\n")
    };
    let stats = || StreamStats {
        dropped: dropped.load(Ordering::Relaxed),
        lost: hub.lost_total().saturating_sub(lost0),
    };
    let mut last_stats = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(HEARTBEAT) {
            Ok(first) => {
                let mut next = Some(first);
                while let Some(r) = next {
                    line(&mut w, &LineOut::Event(&r))?;
                    next = rx.try_recv().ok();
                }
                // A stream that is never idle still learns what it missed, once a second.
                if last_stats.elapsed() >= HEARTBEAT {
                    line(&mut w, &LineOut::Stats(stats()))?;
                    last_stats = Instant::now();
                }
                w.flush()?;
            }
            Err(RecvTimeoutError::Timeout) => {
                line(&mut w, &LineOut::Stats(stats()))?;
                last_stats = Instant::now();
                w.flush()?;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeplane_dataplane::events::EventCounts;
    use nodeplane_dataplane::flow::FlowKey;
    use nodeplane_dataplane::parse::{parse, tuple};
    use nodeplane_dataplane::{MaglevCache, Outcome, Pipeline};

    fn tcp_syn(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 2, 0x0a], [2, 0, 0, 0, 1, 1])
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 1, 65000)
            .syn()
            .write(&mut f, b"")
            .unwrap();
        f
    }

    fn example() -> Arc<Tables> {
        let s = nodeplane_state::example::state().unwrap();
        Arc::new(Tables::build(&s, 1, &mut MaglevCache::default()))
    }

    /// Runs one frame through a pipeline and returns the resolved event (if one is wanted).
    fn event_of(t: &Arc<Tables>, p: &mut Pipeline, frame: &[u8]) -> Option<FlowRecord> {
        let pc = t.iface_index("pod-client").unwrap();
        let mut data = frame.to_vec();
        let parsed = parse(frame);
        let o = p.process_one(&mut data, pc, 5);
        assert_eq!(
            p.tuples(1)[0],
            tuple(&parsed),
            "the pipeline keeps the original 5-tuple"
        );
        FlowEvent::wanted(&o).then(|| {
            let ev = FlowEvent::new(0, t.generation, pc, 5, &p.tuples(1)[0], &o);
            resolve(&ev, &VecDeque::from([Arc::clone(t)]), 0)
        })
    }

    #[test]
    fn a_new_flow_to_a_service_is_named_with_its_original_tuple() {
        let t = example();
        let mut p = Pipeline::new(Arc::clone(&t));
        let r = event_of(
            &t,
            &mut p,
            &tcp_syn([10, 244, 1, 10], [10, 96, 0, 10], 40000, 80),
        )
        .expect("a new flow makes an event");
        assert_eq!(r.verdict, "forwarded");
        assert_eq!(r.ct.as_deref(), Some("new"));
        assert_eq!(r.service.as_deref(), Some("web"));
        assert_eq!(r.frontend.as_deref(), Some("10.96.0.10:80"));
        assert_eq!(r.dst, Some("10.96.0.10".parse().unwrap()), "pre-NAT");
        assert_eq!((r.sport, r.dport), (40000, 80));
        let backend: SocketAddr = r.backend.as_deref().unwrap().parse().unwrap();
        assert!(backend.ip().to_string().starts_with("10.244.1.2"), "{r:?}");
        assert_eq!(r.iface, "pod-client");
        let line = r.human();
        assert!(
            line.contains("10.244.1.10:40000 (client) -> 10.96.0.10:80 service web => 10.244.1.2")
                && line.contains(" tcp new FORWARDED to pod-web"),
            "{line}"
        );
        assert_eq!(r.src_endpoint.as_deref(), Some("client"));
        assert!(r.dst_endpoint.is_some(), "{r:?}");
        // The same flow's next packet is established: no event.
        let mut ack = tcp_syn([10, 244, 1, 10], [10, 96, 0, 10], 40000, 80);
        ack[47] = 0x10; // ACK instead of SYN (checksums are not checked on TCP)
        assert_eq!(event_of(&t, &mut p, &ack), None);
    }

    #[test]
    fn a_policy_drop_carries_its_reason_and_filters_select() {
        let t = example();
        let mut p = Pipeline::new(Arc::clone(&t));
        // client -> web-1:9050/tcp is denied by web-1's ingress rules.
        let r = event_of(
            &t,
            &mut p,
            &tcp_syn([10, 244, 1, 10], [10, 244, 1, 21], 40001, 9050),
        )
        .expect("a drop makes an event");
        assert_eq!(r.verdict, "dropped");
        assert_eq!(r.drop_reason.as_deref(), Some("policy-denied"));
        assert_eq!(r.policy, "deny");

        let f = |json: &str| -> EventFilter { serde_json::from_str(json).unwrap() };
        assert!(f(r#"{"verdict":"dropped"}"#).matches(&r));
        assert!(!f(r#"{"verdict":"forwarded"}"#).matches(&r));
        assert!(f(r#"{"proto":"tcp","ip":"10.244.1.21"}"#).matches(&r));
        assert!(!f(r#"{"proto":"udp"}"#).matches(&r));
        assert!(!f(r#"{"ip":"10.244.1.99"}"#).matches(&r));
        assert!(!f(r#"{"service":"web"}"#).matches(&r));
        assert!(f(r#"{"reason":"policy-denied"}"#).matches(&r));
        assert!(f(r#"{"verdict":"lost"}"#).check().is_err());
        assert!(f(r#"{"reason":"nope"}"#).check().is_err());
        assert!(serde_json::from_str::<EventFilter>(r#"{"colour":"red"}"#).is_err());
    }

    #[test]
    fn events_are_named_with_the_tables_of_their_generation() {
        let t1 = example();
        let mut p = Pipeline::new(Arc::clone(&t1));
        let pc = t1.iface_index("pod-client").unwrap();
        let mut f = tcp_syn([10, 244, 1, 10], [10, 96, 0, 10], 40000, 80);
        let o = p.process_one(&mut f, pc, 5);
        let ev = FlowEvent::new(0, 1, pc, 5, &p.tuples(1)[0], &o);
        // Generation 2 puts a service in front: every index moves by one.
        let mut s2 = nodeplane_state::example::state().unwrap();
        let mut first = s2.services[0].clone();
        first.name = "a-first".into();
        first.frontends = vec![nodeplane_state::Frontend {
            ip: "10.96.0.97".parse().unwrap(),
            port: 80,
            protocol: nodeplane_state::L4Proto::TCP,
        }];
        s2.services.insert(0, first);
        let t2 = Arc::new(Tables::build(&s2, 2, &mut MaglevCache::default()));
        let web1 = t1.service_by_name["web"];
        assert_ne!(t2.services[web1 as usize].name, "web", "the index moved");
        // Generation 1 still kept: its own index names it.
        let kept = VecDeque::from([Arc::clone(&t1), Arc::clone(&t2)]);
        assert_eq!(resolve(&ev, &kept, 0).service.as_deref(), Some("web"));
        // Generation 1 gone: named by its frontend in the newest tables, not by a stale index.
        let kept = VecDeque::from([Arc::clone(&t2)]);
        assert_eq!(resolve(&ev, &kept, 0).service.as_deref(), Some("web"));
    }

    #[test]
    fn a_tap_counts_what_its_full_queue_refuses() {
        let (mut tap, flag, q) = EventTap::standalone(2);
        assert!(!tap.observed());
        flag.store(1, Ordering::Relaxed);
        assert!(tap.observed());
        let ev = FlowEvent::new(
            0,
            1,
            0,
            1,
            &FlowKey::default(),
            &Outcome {
                action: Action::Drop(DropReason::NoEndpoint),
                ..Outcome::default()
            },
        );
        for _ in 0..5 {
            tap.push(ev);
        }
        assert_eq!(
            tap.counts(),
            EventCounts {
                emitted: 2,
                lost: 3
            }
        );
        assert_eq!(q.len(), 2);
        // Sizes: one event must stay a small copy.
        assert!(std::mem::size_of::<FlowEvent>() <= 128);
    }
}
