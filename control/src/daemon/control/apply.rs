//! A new state: validated whole, vetoed or admitted by the I/O, compiled with the runtime
//! overrides into the next generation and published (the first one starts the I/O and the
//! workers), or rejected with the last good state kept. Also the generations that follow
//! from it: the neighbour watcher's gateway MAC, and the Maglev tables finished after the
//! publication.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeplane_dataplane::Tables;
use nodeplane_state::State;

use super::{unix_now, Control};
use crate::api::Rejection;
use crate::runtime::neigh::NeighbourReport;
use crate::source::SourceEvent;
use nodeplane_dataplane::publish::Publisher;

/// Time a state change may spend building Maglev tables before it is published (the rest are
/// built right after, in steps of `MAGLEV_STEP`, and published as the next generation).
const MAGLEV_BUDGET: Duration = Duration::from_millis(40);
const MAGLEV_STEP: Duration = Duration::from_millis(20);
/// How often a state whose packet I/O could not start is tried again.
pub(super) const START_RETRY: Duration = Duration::from_secs(5);

impl Control {
    /// Retries a state whose I/O could not start (called by the event loop once a second).
    pub fn retry_start(&mut self) {
        if self
            .start_pending
            .as_ref()
            .is_some_and(|(_, _, at)| at.elapsed() >= START_RETRY)
        {
            if let Some((state, origin, _)) = self.start_pending.take() {
                crate::info_limited!(
                    "io-start-retry",
                    "retrying the start of the packet I/O with the state from {origin}"
                );
                self.apply(state, origin);
            }
        }
    }

    /// Frees the snapshots the workers switched away from (on this thread, not theirs).
    pub fn reap(&mut self) {
        if let Some(p) = &self.publisher {
            p.reap();
        }
    }

    pub fn on_source(&mut self, ev: SourceEvent) {
        match ev {
            SourceEvent::Snapshot { state, origin } => self.apply(*state, origin),
            SourceEvent::Rejected { origin, error } => self.reject(origin, error),
            SourceEvent::Health { connected, detail } => {
                if connected != self.source_connected {
                    // A flapping store (the list works, the watch fails) repeats both.
                    if connected {
                        crate::info_limited!(
                            "source-connected",
                            "state source {} connected: {detail}",
                            self.source
                        );
                    } else {
                        crate::error_limited!(
                            "source-disconnected",
                            "state source {} DISCONNECTED: {detail}; forwarding continues on generation {}",
                            self.source, self.generation
                        );
                    }
                }
                self.source_connected = connected;
                self.source_detail = detail;
            }
            SourceEvent::Attempt => self.source_attempts += 1,
            SourceEvent::Synced => self.source_syncs += 1,
        }
    }

    fn reject(&mut self, origin: String, error: String) {
        self.rejections += 1;
        self.stale = true;
        // Limited: a state whose I/O cannot start is retried (and rejected) every 5 s; the
        // last rejection is in `nodeplane status` whatever the log shows.
        crate::error_limited!(
            "state-rejected",
            "REJECTED new state from {origin}; keeping generation {} (last good state): {error}",
            self.generation
        );
        self.last_rejection = Some(Rejection {
            origin,
            error,
            at: unix_now(),
        });
    }

    /// Validates a state whole, compiles it and publishes it; or rejects it.
    pub fn apply(&mut self, state: State, origin: String) {
        if let Err(e) = nodeplane_state::validate(&state) {
            self.reject(origin, e.to_string());
            return;
        }
        if let Err(e) = self.io.admit(&state) {
            self.reject(origin, e);
            return;
        }
        let t0 = Instant::now();
        self.start_pending = None;
        if let Err(e) = self.publish_generation(&state, &origin) {
            if !self.io_started {
                // Nothing runs yet: the same state is retried, so the node starts forwarding
                // once the cause (a missing interface, a busy queue) is gone.
                self.start_pending = Some((state, origin.clone(), Instant::now()));
            }
            self.reject(origin, e);
            return;
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        log::info!(
            "published generation {} from {origin}: {} services, {} endpoints, {} ipcache entries in {ms:.1} ms",
            self.generation,
            state.services.len(),
            state.endpoints.len(),
            state.ipcache.len()
        );
        if let Some(b) = &mut self.bgp {
            // The workers have started by now, with the snapshot's flows if there was one.
            let restored = self
                .restore_report
                .as_ref()
                .is_some_and(|r| r.result == "restored");
            b.set_forwarding_preserved(restored);
            b.on_state(&state);
        }
        self.state = Some(Arc::new(state));
        self.origin = Some(origin);
        self.applied_at = Some(unix_now());
        self.last_publish_ms = Some(ms);
        self.stale = false;
    }

    /// Compiles `state` with the runtime overrides into the next generation, lets the I/O
    /// prepare it (start it and its workers, the first time), and publishes it. On error
    /// nothing changed: in particular a first start whose workers cannot all be started is
    /// undone whole (the I/O stopped: no steering toward sockets that nobody serves).
    fn publish_generation(&mut self, state: &State, origin: &str) -> Result<(), String> {
        let t0 = Instant::now();
        let generation = self.generation + 1;
        self.refresh_mtus(state);
        if !self.io_started && self.overrides.uplink_gateway_mac.is_none() {
            // The first tables carry the gateway's MAC when the kernel has or resolves it
            // (bounded wait): running means uplink-bound frames go out from the first one.
            self.overrides.uplink_gateway_mac = self.io.start_gateway_mac(state);
        }
        let effective = self.overrides.apply(state);
        // Maglev tables not built within the budget are finished by `step_completion`, so a
        // large change reaches the workers quickly (see `MaglevCache`).
        let tables = Arc::new(Tables::build_within(
            &effective,
            generation,
            &mut self.cache,
            Some(t0 + MAGLEV_BUDGET),
        ));
        if self.io_started {
            self.io.prepare(&tables)?;
            self.events.set_tables(&tables);
            if let Some(p) = &self.publisher {
                p.publish(Arc::clone(&tables));
            }
        } else {
            let ios = self.io.start(&tables, self.workers_wanted)?;
            let p = Publisher::new(Arc::clone(&tables));
            if self.mode_override.is_some() {
                p.set_policy_mode(self.mode_override);
            }
            self.events.set_tables(&tables);
            match self.spawn_workers(&p, ios) {
                Ok(workers) => {
                    self.workers = workers;
                    self.publisher = Some(p);
                    self.io_started = true;
                }
                Err(e) => {
                    self.io.stop();
                    return Err(e);
                }
            }
        }
        self.completing = tables.maglev_pending > 0;
        if self.completing {
            log::info!(
                "generation {generation}: {} Maglev tables still to build; their services hash modulo their backends until then",
                tables.maglev_pending
            );
        }
        self.note_uplink_mac(&tables);
        self.health.update(&tables);
        self.cache.prune();
        self.generation = generation;
        self.publications += 1;
        log::debug!("generation {generation} published ({origin})");
        Ok(())
    }

    /// Records which uplink gateway MAC the tables carry and where it came from.
    fn note_uplink_mac(&mut self, t: &Tables) {
        let mac = t
            .uplink()
            .and_then(|u| t.ifaces[usize::from(u)].gateway_mac);
        self.uplink_mac = (
            mac.map(|m| nodeplane_state::MacAddr(m).to_string()),
            match (mac, self.overrides.uplink_gateway_mac) {
                (Some(_), Some(_)) => "kernel",
                (Some(_), None) => "state",
                (None, _) => "none",
            },
        );
        if let Some(n) = self.neighbour.as_mut() {
            n.mac.clone_from(&self.uplink_mac.0);
            n.source = self.uplink_mac.1.into();
        }
    }

    /// A reading of the neighbour watcher: a changed gateway MAC becomes a new generation of
    /// the running state (never of a rejected one).
    pub fn on_neighbour(&mut self, r: NeighbourReport) {
        let mut status = r.status;
        status.mac.clone_from(&self.uplink_mac.0);
        status.source = self.uplink_mac.1.into();
        self.neighbour = Some(status);
        if r.mac == self.overrides.uplink_gateway_mac {
            return;
        }
        self.overrides.uplink_gateway_mac = r.mac;
        let Some(state) = self.state.clone() else {
            return;
        };
        match self.publish_generation(&state, "neighbour") {
            // A flapping neighbour republishes at every change.
            Ok(()) => crate::info_limited!(
                "neighbour-published",
                "published generation {}: uplink gateway MAC {}",
                self.generation,
                self.neighbour
                    .as_ref()
                    .and_then(|n| n.mac.clone())
                    .unwrap_or_else(|| "none (uplink-bound packets drop no-neighbor)".into())
            ),
            Err(e) => crate::error_limited!(
                "neighbour-not-published",
                "gateway MAC change not published: {e}"
            ),
        }
    }

    /// A link notification from the I/O's watcher, or the once-a-second check (`None`): the
    /// I/O follows interfaces that went away or came back (AF_XDP re-attaches them).
    pub fn on_link(&mut self, event: Option<&crate::runtime::link::LinkEvent>) {
        if !self.io_started {
            return;
        }
        self.io.links(event);
        // An interface's MTU changed (a link notification says so; the once-a-second check
        // catches one whose notification was lost): the tables carry the new one.
        let Some(state) = self.state.clone() else {
            return;
        };
        if !self.refresh_mtus(&state) {
            return;
        }
        match self.publish_generation(&state, "mtu") {
            Ok(()) => log::info!(
                "published generation {}: interface MTUs now {}",
                self.generation,
                self.overrides
                    .mtus
                    .iter()
                    .map(|(n, m)| format!("{n}={m}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Err(e) => crate::error_limited!("mtu-not-published", "MTU change not published: {e}"),
        }
    }

    /// Reads the kernel's MTU of the state's interfaces through the I/O into the overrides;
    /// `true` when they changed.
    fn refresh_mtus(&mut self, state: &nodeplane_state::State) -> bool {
        let names: Vec<&str> = state.interfaces.iter().map(|i| i.name.as_str()).collect();
        let mtus = self.io.mtus(&names);
        if mtus == self.overrides.mtus {
            return false;
        }
        self.overrides.mtus = mtus;
        true
    }

    /// Whether Maglev tables of the running state are still being built.
    pub fn completing(&self) -> bool {
        self.completing
    }

    /// Builds pending Maglev tables for a short slice of time; when all are built, publishes
    /// the complete tables as the next generation. Called by the event loop between events, so
    /// the control socket stays responsive during a long build.
    pub fn step_completion(&mut self) {
        if !self.completing {
            return;
        }
        let Some(state) = self.state.clone() else {
            self.completing = false;
            return;
        };
        if self.cache.fill(Instant::now() + MAGLEV_STEP) > 0 {
            return;
        }
        let generation = self.generation + 1;
        let effective = self.overrides.apply(&state);
        let tables = Arc::new(Tables::build(&effective, generation, &mut self.cache));
        // The steering of this state is in force already; an error here is logged, and the
        // complete tables are published anyway (they steer the same destinations).
        if let Err(e) = self.io.prepare(&tables) {
            log::error!("generation {generation}: {e}");
        }
        self.note_uplink_mac(&tables);
        self.events.set_tables(&tables);
        if let Some(p) = &self.publisher {
            p.publish(tables);
        }
        self.cache.prune();
        self.generation = generation;
        self.completing = false;
        self.publications += 1;
        log::info!("published generation {generation}: every Maglev table built");
    }
}
