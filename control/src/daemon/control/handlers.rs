//! The control socket's requests: status, services, backends, ipcache, identities, policy,
//! conntrack list and flush, explain, and the hand-over of `observe` connections to the event
//! hub. Answers come from the published tables and, through the workers' channels, from the
//! workers themselves.

use std::collections::BTreeMap;
use std::net::IpAddr;

use nodeplane_dataplane::flow::{fmt_socket, Addr};
use nodeplane_dataplane::Tables;
use nodeplane_state::{reserved, State};

use super::super::bgp::Bgp;
use super::Control;
use crate::api::server::Reply;
use crate::api::{
    BackendRow, CtFlushed, CtList, ExternalRow, IdentityRow, InterfaceMtu, IpcacheEntry,
    PolicyModeStatus, PolicyView, Request, Response, ServiceRow, Status,
};
use crate::capture::{CaptureHub, CaptureSpec, CaptureStarted};
use crate::events::ObserveStarted;
use nodeplane_dataplane::worker::{
    proto_name, Answer, CtFilter, Query, RemovedFlowAction, SvcTraffic, WorkerStats,
};

const DEFAULT_CT_LIMIT: usize = 10_000;

impl Control {
    /// A connection the server handed over after an `observe` answer: it becomes a
    /// subscriber served on its own thread.
    pub fn attach_observer(
        &mut self,
        ticket: u64,
        stream: Option<(std::os::unix::net::UnixStream, Vec<u8>)>,
    ) {
        if CaptureHub::owns(ticket) {
            let spec = self.captures_pending.remove(&ticket);
            match (spec, stream) {
                (Some(spec), Some((s, pending))) => {
                    self.capture
                        .attach(ticket, spec, s, pending, self.stop.clone())
                }
                (Some(_), None) => self.capture.release(),
                (None, _) => {}
            }
            return;
        }
        let filter = self.observers_pending.remove(&ticket);
        match (filter, stream) {
            (Some(f), Some((s, pending))) => {
                self.events.attach(ticket, f, s, pending, self.stop.clone())
            }
            (Some(_), None) => self.events.release(),
            (None, _) => {}
        }
    }

    /// Handles one request line.
    pub fn handle_line(&mut self, line: &str) -> Response {
        let req: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => return Response::err(format!("malformed request: {e}")),
        };
        self.handle(req)
    }

    /// Handles one request line of the control socket: `observe` hands the connection over
    /// (it becomes an event stream), every other request is answered by [`Control::handle`].
    pub fn serve_line(&mut self, line: &str) -> Reply {
        let req: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => return Reply::Line(Response::err(format!("malformed request: {e}"))),
        };
        let filter = match req {
            Request::Observe { filter } => filter,
            Request::Capture {
                iface,
                count,
                duration_ms,
            } => return self.start_capture(iface, count, duration_ms),
            req => return Reply::Line(self.handle(req)),
        };
        if let Err(e) = filter.check() {
            return Reply::Line(Response::err(e));
        }
        let ticket = match self.events.reserve() {
            Ok(t) => t,
            Err(e) => return Reply::Line(Response::err(e)),
        };
        self.observers_pending.insert(ticket, filter);
        Reply::HandOff(
            Response::ok(ObserveStarted {
                subscriber: ticket,
                workers: self.events.workers(),
                queue: nodeplane_dataplane::events::EVENT_QUEUE,
            }),
            ticket,
        )
    }

    /// `capture`: checks the request against the running tables, reserves the one capture
    /// slot and hands the connection over (it becomes the frame stream).
    fn start_capture(
        &mut self,
        iface: String,
        count: Option<u64>,
        duration_ms: Option<u64>,
    ) -> Reply {
        let spec = match CaptureSpec::new(iface, count, duration_ms) {
            Ok(s) => s,
            Err(e) => return Reply::Line(Response::err(e)),
        };
        let Some(p) = self.publisher.clone() else {
            return Reply::Line(Response::err(
                "no valid state has been loaded yet (see `nodeplane status`)",
            ));
        };
        let t = p.current();
        if t.iface_index(&spec.iface).is_none() {
            return Reply::Line(Response::err(format!(
                "interface {:?} is not in the running state (known: {})",
                spec.iface,
                t.ifaces
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let ticket = match self.capture.reserve() {
            Ok(t) => t,
            Err(e) => return Reply::Line(Response::err(e)),
        };
        self.captures_pending.insert(ticket, spec);
        Reply::HandOff(
            Response::ok(CaptureStarted {
                session: ticket,
                workers: self.capture.workers(),
            }),
            ticket,
        )
    }

    pub fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Status {} => {
                self.check_workers();
                Response::ok(self.status())
            }
            Request::PolicyMode { mode } => self.set_mode(&mode),
            Request::CtList {
                filter,
                limit,
                count_only,
            } => self.ct_list(filter, limit, count_only),
            Request::CtFlush { filter } => self.ct_flush(filter),
            Request::CtSave {} => match self.save_snapshot() {
                Ok(saved) => Response::ok(saved),
                Err(e) => Response::err(e),
            },
            Request::Observe { .. } => {
                Response::err("observe streams events: send it on its own connection")
            }
            Request::Capture { .. } => {
                Response::err("capture streams frames: send it on its own connection")
            }
            Request::BgpStatus {} => match &self.bgp {
                Some(b) => Response::ok(b.status()),
                None => Response::err(
                    "BGP is not configured: the daemon's config has no `bgp:` section",
                ),
            },
            req => {
                let (Some(state), Some(p)) = (self.state.clone(), self.publisher.clone()) else {
                    return Response::err(
                        "no valid state has been loaded yet (see `nodeplane status`)",
                    );
                };
                let tables = p.current();
                match req {
                    Request::ServiceList {} => {
                        let traffic = Self::service_traffic(&self.worker_stats());
                        Response::ok(service_rows(&tables, &traffic))
                    }
                    Request::BackendList {} => self.backend_rows(&tables),
                    Request::IpcacheGet { ip } => ipcache_get(&tables, &state, &ip),
                    Request::ExternalList {} => Response::ok(external_rows(&state)),
                    Request::IdentityList {} => Response::ok(identity_rows(&state)),
                    Request::StateGet {} => Response::ok(&*state),
                    Request::PolicyGet { endpoint } => {
                        let mode = self.mode_status();
                        policy_get(&state, &endpoint, mode)
                    }
                    Request::Explain(e) => {
                        let answers = self.ask_explain(&e, &tables);
                        match answers {
                            Ok(x) => Response::ok(x),
                            Err(msg) => Response::err(msg),
                        }
                    }
                    _ => Response::err("unreachable request kind"),
                }
            }
        }
    }

    fn ask_explain(
        &self,
        e: &crate::api::ExplainRequest,
        tables: &Tables,
    ) -> Result<crate::api::Explanation, String> {
        let pkt = crate::explain::synthesize(e, tables)?;
        if self.workers.is_empty() {
            return Err("no worker is running".into());
        }
        let answers = self.ask(|| Query::Explain {
            frame: pkt.frame.clone(),
            iface: e.iface.clone(),
            keys: vec![pkt.key],
        })?;
        let mut found = None;
        let mut first = None;
        for (i, a) in answers.into_iter().enumerate() {
            if let Answer::Explained(x) = a {
                if x.flow.is_some() && found.is_none() {
                    found = Some((i, x));
                } else if first.is_none() {
                    first = Some((i, x));
                }
            }
        }
        let (worker, x) = found.or(first).ok_or("no worker answered")?;
        let state = self.state.clone().ok_or("no state")?;
        Ok(crate::explain::compose(e, &pkt, worker, &x, &state))
    }

    /// Per-service traffic summed over the workers' counters.
    fn service_traffic(workers: &[WorkerStats]) -> BTreeMap<String, SvcTraffic> {
        let mut all: BTreeMap<String, SvcTraffic> = BTreeMap::new();
        for w in workers {
            if let Some(c) = &w.services {
                for (name, t) in c.by_name() {
                    all.entry(name).or_default().add(&t);
                }
            }
        }
        all
    }

    fn worker_stats(&self) -> Vec<WorkerStats> {
        match self.ask(|| Query::Stats) {
            Ok(a) => a
                .into_iter()
                .filter_map(|a| match a {
                    Answer::Stats(s) => Some(*s),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                crate::warn_limited!("status-stats", "status: {e}");
                Vec::new()
            }
        }
    }

    pub fn status(&self) -> Status {
        let workers = self.worker_stats();
        let service_traffic = Self::service_traffic(&workers);
        let s = self.state.as_deref();
        Status {
            node: s.map(|s| s.node.name.clone()).unwrap_or_default(),
            state: if !self.dead.is_empty() {
                "unhealthy"
            } else if s.is_none() {
                "waiting"
            } else if self.stale {
                "stale"
            } else {
                "ok"
            }
            .into(),
            generation: self.generation,
            state_origin: self.origin.clone(),
            applied_at: self.applied_at,
            last_publish_ms: self.last_publish_ms,
            publications: self.publications,
            rejections: self.rejections,
            last_rejection: self.last_rejection.clone(),
            source: self.source.clone(),
            source_connected: self.source_connected,
            source_detail: self.source_detail.clone(),
            source_attempts: self.source_attempts,
            source_syncs: self.source_syncs,
            policy_mode: self.mode_status(),
            removed_flow_action: match self.removed {
                RemovedFlowAction::Drop => "drop",
                RemovedFlowAction::Rst => "rst",
            }
            .into(),
            services: s.map(|s| s.services.len()).unwrap_or(0),
            endpoints: s.map(|s| s.endpoints.len()).unwrap_or(0),
            ipcache_entries: s.map(|s| s.ipcache.len()).unwrap_or(0),
            uptime_s: self.started.elapsed().as_secs(),
            workers,
            dead_workers: self.dead.clone(),
            io: Some({
                let mut io = self.io.status();
                io.neighbour = self.neighbour.clone();
                io
            }),
            bgp: self.bgp.as_ref().map(Bgp::summary),
            service_traffic,
            event_observers: self.events.observers(),
            conntrack_restore: self.restore_report(),
            health_checks: self.health.ports(),
            mtus: self.interface_mtus(),
        }
    }

    /// Each interface of the state with the MTU the tables carry (the kernel's over the
    /// state's, as [`super::super::overrides::RuntimeOverrides`] merges them).
    fn interface_mtus(&self) -> Vec<InterfaceMtu> {
        let Some(s) = self.state.as_deref() else {
            return Vec::new();
        };
        s.interfaces
            .iter()
            .map(|i| {
                let kernel = self.overrides.mtus.iter().find(|(n, _)| *n == i.name);
                let (mtu, source) = match (kernel, i.mtu) {
                    (Some((_, m)), _) => (Some(*m), "kernel"),
                    (None, Some(m)) => (Some(m), "state"),
                    (None, None) => (None, "none"),
                };
                InterfaceMtu {
                    iface: i.name.clone(),
                    mtu,
                    source: source.into(),
                }
            })
            .collect()
    }

    fn ct_list(&self, filter: CtFilter, limit: Option<usize>, count_only: bool) -> Response {
        if let Err(e) = filter.check() {
            return Response::err(e);
        }
        let limit = if count_only {
            0
        } else {
            limit.unwrap_or(DEFAULT_CT_LIMIT)
        };
        match self.ask(|| Query::CtList {
            filter: filter.clone(),
            limit,
        }) {
            Ok(answers) => {
                let mut out = CtList {
                    matched: 0,
                    rows: Vec::new(),
                    truncated: false,
                };
                for a in answers {
                    if let Answer::Ct { rows, matched } = a {
                        out.matched += matched;
                        out.rows.extend(rows);
                    }
                }
                out.rows.truncate(limit);
                out.truncated = out.rows.len() < out.matched && !count_only;
                Response::ok(out)
            }
            Err(e) => Response::err(e),
        }
    }

    fn ct_flush(&self, filter: CtFilter) -> Response {
        if let Err(e) = filter.check() {
            return Response::err(e);
        }
        match self.ask(|| Query::CtFlush {
            filter: filter.clone(),
        }) {
            Ok(answers) => {
                let flushed = answers
                    .into_iter()
                    .map(|a| match a {
                        Answer::Flushed(n) => n,
                        _ => 0,
                    })
                    .sum();
                log::warn!("conntrack flush by the operator: {flushed} flows removed");
                Response::ok(CtFlushed { flushed })
            }
            Err(e) => Response::err(e),
        }
    }

    fn backend_rows(&self, t: &Tables) -> Response {
        // Live flows per backend, from every worker's conntrack.
        let mut flows: BTreeMap<(Addr, u16), usize> = BTreeMap::new();
        if let Ok(answers) = self.ask(|| Query::CtList {
            filter: CtFilter::default(),
            limit: usize::MAX,
        }) {
            for a in answers {
                if let Answer::Ct { rows, .. } = a {
                    for r in rows {
                        if let (Some(b), Some(p)) = (&r.backend, r.backend_port) {
                            if let Ok(ip) = b.parse::<IpAddr>() {
                                *flows.entry((Addr::from(ip), p)).or_default() += 1;
                            }
                        }
                    }
                }
            }
        }
        let mut rows = Vec::new();
        for s in &t.services {
            for b in &s.backends {
                rows.push(BackendRow {
                    service: s.name.clone(),
                    ip: b.addr.to_string(),
                    port: b.port,
                    weight: b.weight,
                    state: backend_state_name(b).into(),
                    flows: flows.get(&(b.addr, b.port)).copied().unwrap_or(0),
                });
            }
        }
        Response::ok(rows)
    }
}

/// A backend's condition in listings: `active` (ready), `serving-terminating` (takes new flows
/// only while no backend is ready), `terminating` (draining), `not-ready`, `quarantined`.
pub fn backend_state_name(b: &nodeplane_dataplane::tables::Backend) -> &'static str {
    match b.condition_name() {
        "ready" => "active",
        other => other,
    }
}

fn service_rows(t: &Tables, traffic: &BTreeMap<String, SvcTraffic>) -> Vec<ServiceRow> {
    let mut fronts: Vec<Vec<String>> = vec![Vec::new(); t.services.len()];
    let mut keys: Vec<_> = t.frontends.iter().collect();
    keys.sort_by_key(|(k, _)| (k.addr, k.port, k.proto));
    for (k, idx) in keys {
        if let Some(f) = fronts.get_mut(*idx as usize) {
            f.push(format!(
                "{}/{}",
                fmt_socket(k.addr, k.port),
                proto_name(k.proto)
            ));
        }
    }
    t.services
        .iter()
        .zip(fronts)
        .map(|(s, frontends)| {
            let count = |names: &[&str]| {
                s.backends
                    .iter()
                    .filter(|b| names.contains(&b.condition_name()))
                    .count()
            };
            ServiceRow {
                name: s.name.clone(),
                kind: format!("{:?}", s.kind),
                frontends,
                algorithm: format!("{:?}", s.algorithm).to_lowercase(),
                affinity_s: s.affinity_ns.map(|n| n / 1_000_000_000),
                backends: s.backends.len(),
                active: count(&["ready"]),
                terminating: count(&["terminating", "serving-terminating"]),
                quarantined: count(&["quarantined"]),
                traffic: traffic.get(&s.name).copied().unwrap_or_default(),
            }
        })
        .collect()
}

/// The identity of an address and where it comes from (shared with `explain`).
pub fn identity_source(t: &Tables, a: &Addr) -> (u32, Option<String>, String) {
    if let Some(ep) = t.endpoint_of(a) {
        let e = &t.endpoints[ep as usize];
        let len = if a.v6 { 128 } else { 32 };
        return (
            e.identity,
            Some(format!("{a}/{len}")),
            format!("endpoint {}", e.name),
        );
    }
    match t.ipcache.lookup(a) {
        Some((id, len)) => {
            let src = if id == reserved::HOST && t.is_node_ip(a) {
                "node".to_string()
            } else {
                "ipcache".to_string()
            };
            (id, Some(format!("{}/{len}", a.masked(len))), src)
        }
        None => (reserved::WORLD, None, "world".into()),
    }
}

/// `external-list`: the registered external workloads (VMs, bare metal), by name.
fn external_rows(s: &State) -> Vec<ExternalRow> {
    let mut rows: Vec<ExternalRow> = s
        .external_workloads
        .iter()
        .map(|w| ExternalRow {
            name: w.name.clone(),
            ips: w.ips.iter().map(|ip| ip.to_string()).collect(),
            identity: w.identity,
            labels: w.labels.clone(),
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}

fn ipcache_get(t: &Tables, s: &State, ip: &str) -> Response {
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return Response::err(format!("{ip:?} is not an IP address"));
    };
    let a = Addr::from(addr);
    let (identity, prefix, mut source) = identity_source(t, &a);
    if let Some(w) = s.external_workloads.iter().find(|w| w.ips.contains(&addr)) {
        source = format!("external {}", w.name);
    }
    Response::ok(IpcacheEntry {
        ip: addr.to_string(),
        identity,
        prefix,
        source,
    })
}

fn identity_rows(s: &State) -> Vec<IdentityRow> {
    let mut by_id: BTreeMap<u32, (String, Vec<String>)> = BTreeMap::new();
    by_id.insert(
        reserved::HOST,
        (
            "reserved:host".into(),
            s.node.node_ips.iter().map(|ip| ip.to_string()).collect(),
        ),
    );
    by_id.insert(
        reserved::WORLD,
        (
            "reserved:world".into(),
            vec!["0.0.0.0/0".into(), "::/0".into()],
        ),
    );
    for e in &s.endpoints {
        let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let member = if labels.is_empty() {
            e.name.clone()
        } else {
            format!("{} ({})", e.name, labels.join(","))
        };
        let entry = by_id
            .entry(e.identity)
            .or_insert_with(|| ("endpoint".into(), Vec::new()));
        entry.1.push(member);
    }
    for w in &s.external_workloads {
        let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let entry = by_id
            .entry(w.identity)
            .or_insert_with(|| ("external".into(), Vec::new()));
        entry.1.push(if labels.is_empty() {
            w.name.clone()
        } else {
            format!("{} ({})", w.name, labels.join(","))
        });
    }
    for c in &s.ipcache {
        let entry = by_id
            .entry(c.identity)
            .or_insert_with(|| ("ipcache".into(), Vec::new()));
        entry.1.push(c.prefix.to_string());
    }
    by_id
        .into_iter()
        .map(|(identity, (kind, members))| IdentityRow {
            identity,
            cluster: identity >> 24,
            kind,
            members,
        })
        .collect()
}

fn policy_get(s: &State, endpoint: &str, mode: PolicyModeStatus) -> Response {
    let Some(ep) = s.endpoints.iter().find(|e| e.name == endpoint) else {
        let known: Vec<&str> = s.endpoints.iter().map(|e| e.name.as_str()).collect();
        return Response::err(format!(
            "no local endpoint {endpoint:?} (known: {})",
            known.join(", ")
        ));
    };
    let p = s.policies.iter().find(|p| p.endpoint == endpoint);
    let ingress = p.map(|p| p.ingress.clone()).unwrap_or_default();
    let egress = p.map(|p| p.egress.clone()).unwrap_or_default();
    let default = |r: &Vec<nodeplane_state::Rule>| {
        if r.is_empty() {
            "default-allow"
        } else {
            "default-deny"
        }
        .to_string()
    };
    Response::ok(PolicyView {
        endpoint: ep.name.clone(),
        identity: ep.identity,
        ips: ep.ips.iter().map(|i| i.to_string()).collect(),
        mode,
        ingress_default: default(&ingress),
        egress_default: default(&egress),
        ingress,
        egress,
    })
}
