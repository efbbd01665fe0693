//! The control thread against a test I/O backend: overrides, vetoes and steering errors, an
//! all-or-none worker start, a worker thread that died.

use super::apply::START_RETRY;
use super::*;
use crate::api::{Request, Response, Status};
use crate::runtime::neigh::NeighbourReport;
use nodeplane_dataplane::worker::PacketIo;
use nodeplane_dataplane::Tables;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

/// What the control thread asked of the I/O, and switches to make it fail.
#[derive(Debug, Default)]
struct Calls {
    started: usize,
    stopped: usize,
    prepared: Vec<u64>,
    fail_prepare: bool,
    veto: Option<String>,
    /// The I/O of this worker panics when its thread starts (outside the turn's catch).
    die: Option<usize>,
    /// `worker_died` calls.
    died: Vec<usize>,
}

/// Panics on its worker's thread before the loop: the thread dies.
struct DyingIo;

impl PacketIo for DyingIo {
    fn start(&mut self) {
        panic!("injected: the I/O cannot start");
    }
    fn bind(&mut self, _: &Arc<Tables>) {}
    fn burst(
        &mut self,
        _: u64,
        _: &mut dyn FnMut(
            &mut [nodeplane_dataplane::Packet<'_>],
            &mut [nodeplane_dataplane::Outcome],
        ),
    ) -> usize {
        0
    }
    fn send(&mut self, _: u16, _: &[u8]) {}
    fn idle(&mut self, _: Duration) {}
    fn stats(&self) -> nodeplane_dataplane::worker::IoStats {
        nodeplane_dataplane::worker::IoStats::default()
    }
}

struct TestBackend(Arc<Mutex<Calls>>);

impl IoBackend for TestBackend {
    fn kind(&self) -> &'static str {
        "test"
    }
    fn admit(&self, _: &State) -> Result<(), String> {
        match &self.0.lock().unwrap().veto {
            Some(v) => Err(v.clone()),
            None => Ok(()),
        }
    }
    fn start(&mut self, _: &Arc<Tables>, workers: usize) -> Result<Vec<Box<dyn PacketIo>>, String> {
        let mut c = self.0.lock().unwrap();
        c.started += 1;
        Ok((0..workers)
            .map(|i| {
                if c.die == Some(i) {
                    Box::new(DyingIo) as Box<dyn PacketIo>
                } else {
                    Box::new(super::super::NullIo) as Box<dyn PacketIo>
                }
            })
            .collect())
    }
    fn stop(&mut self) {
        self.0.lock().unwrap().stopped += 1;
    }
    fn worker_died(&mut self, worker: usize) {
        self.0.lock().unwrap().died.push(worker);
    }
    fn prepare(&mut self, t: &Arc<Tables>) -> Result<(), String> {
        let mut c = self.0.lock().unwrap();
        if c.fail_prepare {
            return Err("steering maps full".into());
        }
        c.prepared.push(t.generation);
        Ok(())
    }
}

fn uplink_mac(c: &Control) -> Option<[u8; 6]> {
    let t = c.publisher.as_ref().unwrap().current();
    t.uplink()
        .and_then(|u| t.ifaces[usize::from(u)].gateway_mac)
}

fn report(mac: Option<[u8; 6]>) -> NeighbourReport {
    NeighbourReport {
        mac,
        status: NeighbourStatus {
            uplink: Some("uplink0".into()),
            lookups: 1,
            ..NeighbourStatus::default()
        },
    }
}

#[test]
fn overrides_io_veto_and_steering_errors() {
    let calls = Arc::new(Mutex::new(Calls::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut c = Control::new(
        "test".into(),
        1,
        Box::new(TestBackend(calls.clone())),
        RemovedFlowAction::Drop,
        stop.clone(),
    );
    let state = nodeplane_state::example::state().unwrap();
    let static_mac = state
        .interfaces
        .iter()
        .find_map(|i| i.gateway_mac)
        .map(|m| m.0);
    c.apply(state.clone(), "s1".into());
    assert_eq!(c.generation(), 1);
    assert_eq!(calls.lock().unwrap().started, 1, "I/O started once");
    assert_eq!(uplink_mac(&c), static_mac, "no kernel MAC yet: the state's");

    // The kernel resolved the gateway: a new generation carries its MAC.
    let k = [2, 0, 0, 0, 0, 0xfe];
    c.on_neighbour(report(Some(k)));
    assert_eq!(c.generation(), 2);
    assert_eq!(uplink_mac(&c), Some(k));
    let n = c.status().io.unwrap().neighbour.unwrap();
    assert_eq!((n.source.as_str(), n.lookups), ("kernel", 1));
    // The same MAC again: nothing to publish.
    c.on_neighbour(report(Some(k)));
    assert_eq!(c.generation(), 2);
    assert_eq!(
        calls.lock().unwrap().prepared,
        vec![2],
        "steering re-applied"
    );
    // A new source state keeps the kernel's MAC.
    c.apply(state.clone(), "s2".into());
    assert_eq!((c.generation(), uplink_mac(&c)), (3, Some(k)));
    // The I/O vetoes a state (interfaces changed): rejected whole, last good kept.
    calls.lock().unwrap().veto = Some("interfaces changed".into());
    c.apply(state.clone(), "s3".into());
    assert_eq!(c.generation(), 3);
    let st = c.status();
    assert_eq!(st.state, "stale");
    assert!(st
        .last_rejection
        .unwrap()
        .error
        .contains("interfaces changed"));
    calls.lock().unwrap().veto = None;
    // Steering cannot be applied: rejected, nothing published.
    calls.lock().unwrap().fail_prepare = true;
    c.apply(state.clone(), "s4".into());
    assert_eq!(c.generation(), 3);
    assert!(c
        .status()
        .last_rejection
        .unwrap()
        .error
        .contains("steering"));
    calls.lock().unwrap().fail_prepare = false;
    // The kernel lost the entry: back to the state's static MAC.
    c.on_neighbour(report(None));
    assert_eq!((c.generation(), uplink_mac(&c)), (4, static_mac));
    assert_eq!(c.status().io.unwrap().neighbour.unwrap().source, "state");
    assert_eq!(calls.lock().unwrap().started, 1, "never restarted");

    stop.store(true, Ordering::Relaxed);
    assert_eq!(c.join_workers().len(), 1);
}

fn control(calls: &Arc<Mutex<Calls>>, workers: usize) -> (Control, Arc<AtomicBool>) {
    let stop = Arc::new(AtomicBool::new(false));
    let c = Control::new(
        "test".into(),
        workers,
        Box::new(TestBackend(calls.clone())),
        RemovedFlowAction::Drop,
        stop.clone(),
    );
    (c, stop)
}

#[test]
fn a_worker_that_cannot_be_spawned_undoes_the_start() {
    let calls = Arc::new(Mutex::new(Calls::default()));
    let (mut c, stop) = control(&calls, 3);
    c.fail_spawn = Some(2);
    let state = nodeplane_state::example::state().unwrap();
    c.apply(state.clone(), "s1".into());
    // Workers 0 and 1 were spawned and called off; the I/O was stopped (AF_XDP: XDP
    // detached, so no queue is steered to a socket nobody serves); nothing published.
    assert_eq!(c.generation(), 0);
    assert!(c.workers.is_empty() && c.publisher.is_none());
    let c1 = calls.lock().unwrap();
    assert_eq!((c1.started, c1.stopped), (1, 1));
    drop(c1);
    let st = c.status();
    assert_eq!(st.state, "waiting");
    assert!(st
        .last_rejection
        .unwrap()
        .error
        .contains("cannot start worker thread 2"));
    // The start is retried with the same state and then succeeds.
    c.fail_spawn = None;
    assert!(c.start_pending.is_some());
    c.start_pending.as_mut().unwrap().2 -= START_RETRY;
    c.retry_start();
    assert_eq!(c.generation(), 1);
    assert_eq!(calls.lock().unwrap().started, 2);
    assert_eq!(c.status().workers.len(), 3);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(c.join_workers().len(), 3);
    assert_eq!(calls.lock().unwrap().stopped, 2);
}

#[test]
fn a_worker_thread_that_died_makes_the_node_unhealthy() {
    let calls = Arc::new(Mutex::new(Calls {
        die: Some(1),
        ..Calls::default()
    }));
    let (mut c, stop) = control(&calls, 2);
    c.apply(nodeplane_state::example::state().unwrap(), "s1".into());
    assert_eq!(c.generation(), 1);
    // The status request notices the dead thread (the event loop also checks every second).
    let t0 = Instant::now();
    let st = loop {
        let Response { ok, result, error } = c.handle(Request::Status {});
        assert!(ok, "{error:?}");
        let st: Status = serde_json::from_value(result.unwrap()).unwrap();
        if !st.dead_workers.is_empty() || t0.elapsed() > Duration::from_secs(5) {
            break st;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(st.state, "unhealthy");
    assert_eq!(st.dead_workers.len(), 1);
    assert_eq!(st.dead_workers[0].worker, 1);
    assert!(
        st.dead_workers[0]
            .reason
            .contains("injected: the I/O cannot start"),
        "{:?}",
        st.dead_workers
    );
    // The live worker still answers.
    assert_eq!(st.workers.len(), 1);
    assert_eq!(st.workers[0].worker, 0);
    assert_eq!(
        calls.lock().unwrap().died,
        vec![1],
        "the I/O was told once (AF_XDP: drop its queues' traffic)"
    );
    stop.store(true, Ordering::Relaxed);
    assert_eq!(c.join_workers().len(), 1);
    assert_eq!(c.dead_workers().len(), 1, "listed once");
    assert_eq!(calls.lock().unwrap().died, vec![1], "not again at stop");
}

/// A good snapshot: each flow goes into the worker that owns it, before traffic; `ct save`
/// writes them back. Bad ones (truncated, corrupt, foreign version, not a snapshot): reported,
/// moved aside, nothing loaded.
/// A speaker on an ephemeral port whose neighbour nobody answers for (TEST-NET-1).
fn bgp_cfg() -> nodeplane_bgp::BgpConfig {
    nodeplane_bgp::BgpConfig::from_yaml_str(
        "local_as: 65001\nrouter_id: 10.0.0.2\nlisten_port: 0\nneighbors:\n  - { address: 192.0.2.1, remote_as: 65000, families: [ipv4], connect_retry_secs: 60 }\n",
        std::path::Path::new("test"),
    )
    .unwrap()
}

#[test]
fn snapshot_restores_into_the_owners_and_bad_ones_load_nothing() {
    use nodeplane_dataplane::conntrack::{FlowState, Nat};
    use nodeplane_dataplane::owner::{owner_hash, owner_of, OwnerIndex};
    use nodeplane_dataplane::snapshot::{SavedFlow, Snapshot};
    use nodeplane_dataplane::{Addr, FlowKey, PolicyVerdict};

    let state = nodeplane_state::example::state().unwrap();
    let flows: Vec<SavedFlow> = (0..40u16)
        .map(|i| {
            let orig = FlowKey {
                src: Addr::v4([10, 244, 1, 10]),
                dst: Addr::v4([10, 96, 0, 10]),
                sport: 40_000 + i,
                dport: 80,
                proto: 6,
            };
            let backend = Addr::v4([10, 244, 1, 21 + (i % 2) as u8]);
            SavedFlow {
                orig,
                reply: FlowKey {
                    src: backend,
                    dst: orig.src,
                    sport: 8080,
                    dport: orig.sport,
                    proto: 6,
                },
                state: FlowState::Established,
                fins: 0,
                policy: PolicyVerdict::Allow,
                ended: None,
                src_identity: 0,
                dst_identity: 0,
                nat: Some(Nat {
                    vip: orig.dst,
                    vip_port: 80,
                    backend,
                    backend_port: 8080,
                    service: 0,
                }),
                packets: [3, 2],
                bytes: [180, 120],
                age_ns: 1_000_000_000,
                idle_ns: 1_000,
                remaining_ns: 3_600_000_000_000,
            }
        })
        .collect();
    let mut good = Snapshot::new(super::snapshot::unix_ms());
    good.flows = flows.clone();
    let good = good.encode();

    let dir = tempfile::tempdir().unwrap();
    let start = |bytes: &[u8]| {
        let path = dir.path().join("ct.snap");
        let _ = std::fs::remove_file(path.with_extension("snap.bad"));
        std::fs::write(&path, bytes).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut c = Control::new(
            "test".into(),
            2,
            Box::new(TestBackend(Arc::new(Mutex::new(Calls::default())))),
            RemovedFlowAction::Drop,
            stop.clone(),
        );
        c.keep_snapshot_at(path.clone());
        c.set_bgp(Bgp::new(bgp_cfg()));
        c.apply(state.clone(), "s1".into());
        (c, stop, path)
    };
    let rows = |c: &mut Control| -> Vec<(usize, u16)> {
        let r = c.handle(Request::CtList {
            filter: Default::default(),
            limit: None,
            count_only: false,
        });
        let mut v: Vec<(usize, u16)> = r.result.unwrap()["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["worker"].as_u64().unwrap() as usize,
                    r["sport"].as_u64().unwrap() as u16,
                )
            })
            .collect();
        v.sort();
        v
    };

    let (mut c, stop, path) = start(&good);
    let t = c.publisher.as_ref().unwrap().current();
    let idx = OwnerIndex::new(&t);
    let mut want: Vec<(usize, u16)> = flows
        .iter()
        .map(|f| {
            let k = f.orig;
            let h = owner_hash(&t, &idx, k.src, k.sport, k.dst, k.dport, k.proto);
            (owner_of(h, 2), k.sport)
        })
        .collect();
    want.sort();
    assert!(want.iter().any(|w| w.0 == 0) && want.iter().any(|w| w.0 == 1));
    assert_eq!(rows(&mut c), want, "every flow in its owner");
    let r = c.status().conntrack_restore.unwrap();
    assert_eq!((r.result.as_str(), r.flows_restored), ("restored", 40));
    let bgp = c.bgp.as_ref().unwrap().status();
    assert_eq!(bgp.speaker, "running");
    assert!(bgp.forwarding_preserved, "snapshot restored: GR F bit set");
    assert!(!path.exists(), "used once");
    let saved = c.save_snapshot().unwrap();
    assert_eq!(saved.flows, 40);
    assert_eq!(
        Snapshot::decode(&std::fs::read(&path).unwrap())
            .unwrap()
            .flows
            .len(),
        40
    );
    stop.store(true, Ordering::Relaxed);
    c.join_workers();

    let mut foreign = good.clone();
    foreign[8] = 9;
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 1;
    for (name, bytes, says) in [
        ("truncated", &good[..good.len() - 1], "truncated"),
        ("corrupt", &corrupt[..], "checksum"),
        ("foreign version", &foreign[..], "version 9"),
        ("not a snapshot", &b"hello"[..], "bad magic"),
    ] {
        let (mut c, stop, path) = start(bytes);
        let r = c.status().conntrack_restore.unwrap();
        assert_eq!(r.result, "ignored", "{name}");
        let bgp = c.bgp.as_ref().unwrap().status();
        assert_eq!(bgp.speaker, "running", "{name}");
        assert!(
            !bgp.forwarding_preserved,
            "{name}: nothing restored, F bit clear"
        );
        assert!(r.error.as_deref().unwrap().contains(says), "{name}: {r:?}");
        assert!(rows(&mut c).is_empty(), "{name}: nothing loaded");
        assert!(!path.exists(), "{name}");
        assert_eq!(
            std::fs::read(path.with_extension("snap.bad")).unwrap(),
            bytes,
            "{name}: moved aside"
        );
        stop.store(true, Ordering::Relaxed);
        c.join_workers();
    }
}
