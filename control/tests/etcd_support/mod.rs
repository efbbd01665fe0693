//! Shared by the etcd tests: a synchronous writer for the store and a running source.
#![allow(dead_code)]

pub mod pki;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError};
use etcd_client::{Client, ConnectOptions, DeleteOptions};
use nodeplane_control::source::etcd::{EtcdConfig, EtcdSource, NodeRecord};
use nodeplane_control::source::{SourceEvent, StateSource};
use nodeplane_state::State;

pub const PREFIX: &str = "/nodeplane/v1";

/// A client on its own small runtime, for writing test data.
pub struct Store {
    pub rt: tokio::runtime::Runtime,
    pub client: Client,
}

impl Store {
    pub fn connect(endpoint: &str) -> Store {
        Self::connect_with(endpoint, None)
    }

    /// With TLS files and/or credentials (`ConnectOptions::with_tls`, `with_user`).
    pub fn connect_with(endpoint: &str, opts: Option<ConnectOptions>) -> Store {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt
            .block_on(Client::connect([endpoint], opts))
            .unwrap_or_else(|e| panic!("connect to the test etcd {endpoint}: {e}"));
        Store { rt, client }
    }

    pub fn put(&mut self, key: &str, value: &str) -> i64 {
        let r = self
            .rt
            .block_on(self.client.put(key, value, None))
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        r.header().unwrap().revision()
    }

    /// The store's current revision (every write advances it).
    pub fn revision(&mut self) -> i64 {
        let r = self
            .rt
            .block_on(self.client.status())
            .unwrap_or_else(|e| panic!("status: {e}"));
        r.header().unwrap().revision()
    }

    pub fn delete(&mut self, key: &str) {
        self.rt
            .block_on(self.client.delete(key, None))
            .unwrap_or_else(|e| panic!("delete {key}: {e}"));
    }

    pub fn delete_prefix(&mut self, prefix: &str) {
        self.rt
            .block_on(
                self.client
                    .delete(prefix, Some(DeleteOptions::new().with_prefix())),
            )
            .unwrap_or_else(|e| panic!("delete {prefix}: {e}"));
    }

    pub fn compact(&mut self, rev: i64) {
        self.rt
            .block_on(self.client.compact(rev, None))
            .unwrap_or_else(|e| panic!("compact {rev}: {e}"));
    }

    /// Writes `state` for node `node` in the documented layout.
    pub fn put_state(&mut self, node: &str, state: &State) {
        let rec = NodeRecord {
            node: Some(state.node.clone()),
            interfaces: state.interfaces.clone(),
            endpoints: state.endpoints.clone(),
        };
        self.put(
            &format!("{PREFIX}/nodes/{node}"),
            &serde_json::to_string(&rec).unwrap(),
        );
        for s in &state.services {
            self.put(
                &format!("{PREFIX}/services/{}", s.name),
                &serde_json::to_string(s).unwrap(),
            );
        }
        for i in &state.ipcache {
            self.put(
                &format!("{PREFIX}/ipcache/{}", i.prefix),
                &serde_json::to_string(i).unwrap(),
            );
        }
        for p in &state.policies {
            self.put(
                &format!("{PREFIX}/policies/{node}/{}", p.endpoint),
                &serde_json::to_string(p).unwrap(),
            );
        }
    }
}

/// A source running on its own thread; stopped (and joined) on drop.
pub struct Running {
    /// Every event the source sends; [`Running::next`] and [`Running::collect`] count the
    /// `Attempt` and `Synced` events (`attempts`, `syncs`) instead of returning them.
    pub rx: Receiver<SourceEvent>,
    pub attempts: std::cell::Cell<u64>,
    pub syncs: std::cell::Cell<u64>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Running {
    /// `bound`: channel capacity (0 = rendezvous: the source blocks until the test receives).
    pub fn start(source: EtcdSource, bound: Option<usize>) -> Running {
        let (tx, rx) = match bound {
            Some(n) => crossbeam::channel::bounded(n),
            None => crossbeam::channel::unbounded(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let handle = std::thread::spawn(move || Box::new(source).run(tx, s2));
        Running {
            rx,
            attempts: Default::default(),
            syncs: Default::default(),
            stop,
            handle: Some(handle),
        }
    }

    /// The next event other than `Attempt` and `Synced` (those are counted).
    pub fn next(&self, limit: Duration) -> SourceEvent {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => {
                    if let Some(e) = self.count(e) {
                        return e;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no event from the etcd source in {limit:?}")
                }
                Err(RecvTimeoutError::Disconnected) => panic!("the etcd source thread ended"),
            }
        }
    }

    /// Counts `Attempt` and `Synced`; returns every other event.
    pub fn count(&self, e: SourceEvent) -> Option<SourceEvent> {
        match e {
            SourceEvent::Attempt => self.attempts.set(self.attempts.get() + 1),
            SourceEvent::Synced => self.syncs.set(self.syncs.get() + 1),
            other => return Some(other),
        }
        None
    }

    /// The next snapshot, skipping health events; panics on a rejection.
    pub fn next_snapshot(&self, limit: Duration) -> (State, String) {
        let start = Instant::now();
        loop {
            let left = limit.saturating_sub(start.elapsed());
            match self.next(left) {
                SourceEvent::Snapshot { state, origin } => return (*state, origin),
                SourceEvent::Rejected { origin, error } => {
                    panic!("unexpected rejection from {origin}: {error}")
                }
                SourceEvent::Health { .. } | SourceEvent::Attempt | SourceEvent::Synced => {}
            }
        }
    }

    /// The source thread is still running (it never gives up on a failing store).
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// After a failure: the source reports itself connected on a later attempt and publishes
    /// the example node's endpoints.
    pub fn recovers(&self, limit: Duration) {
        match self.next(limit) {
            SourceEvent::Health { connected, detail } => assert!(connected, "{detail}"),
            other => panic!("expected the source to reconnect, got {other:?}"),
        }
        let (s, _) = self.next_snapshot(limit);
        assert_eq!(
            s.endpoints,
            nodeplane_state::example::state().unwrap().endpoints
        );
    }

    /// Everything that arrives within `d`.
    pub fn collect(&self, d: Duration) -> Vec<SourceEvent> {
        let end = Instant::now() + d;
        let mut v = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(e) => v.extend(self.count(e)),
                Err(_) => break,
            }
        }
        v
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock a source parked on a rendezvous send.
        while self.rx.try_recv().is_ok() {}
        if let Some(h) = self.handle.take() {
            let start = Instant::now();
            while !h.is_finished() && start.elapsed() < Duration::from_secs(10) {
                while self.rx.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = h.join();
        }
    }
}

/// A config for `node` against `endpoint` with short test timings.
pub fn config(endpoint: &str, node: &str) -> EtcdConfig {
    let mut c = EtcdConfig::new(vec![endpoint.to_string()], node);
    c.backoff.base_ms = 100;
    c.backoff.cap_ms = 400;
    c.backoff.per_node_ms = 0;
    c.debounce_ms = 30;
    c.request_timeout_ms = 2_000;
    c
}

/// Lines of `log` (an etcd log) that contain `needle`.
pub fn count_in_log(log: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_else(|e| panic!("read {}: {e}", log.display()))
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// `GET /metrics` of a [`LocalEtcd`](nodeplane_control::source::etcd::server::LocalEtcd) on
/// `127.0.0.1:port` (its `metrics_port`), from the caller's network namespace.
pub fn etcd_metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to etcd's metrics on {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The sum of `grpc_server_started_total` samples for gRPC method `method` (`Range`, `Watch`,
/// `Status`, ...) in an etcd metrics text: requests clients started since etcd started.
pub fn grpc_started(metrics: &str, method: &str) -> u64 {
    let tag = format!("grpc_method=\"{method}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("grpc_server_started_total{") && l.contains(&tag))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
