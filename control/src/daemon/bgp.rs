//! The BGP speaker run by the daemon (config `bgp:`): started with the routes of the first
//! accepted state, told the routes of every later accepted state when they differ, stopped
//! with the daemon (withdraw, or graceful restart).
//!
//! ```text
//!  control thread                                      bgp-speaker thread (nodeplane_bgp)
//!  Control::apply ─ accepted state ─> routes_from_state ─ changed? ─> Speaker::set_routes
//!  event loop, once a second ─> tick(): start retry, dead-thread check, neighbour lines
//!  `bgp-status` / `status` <── Speaker::status (a snapshot the speaker refreshes)
//! ```
//!
//! Stability first (DESIGN.md §3.3): nothing here can stop or slow forwarding. The speaker
//! owns its sockets in its own thread; a speaker that cannot start (port taken) or whose
//! thread died is logged at error level, shown by `nodeplane status`/`bgp status`, and started
//! again with backoff. A rejected state never reaches this module: the last accepted routes
//! stay announced.
//!
//! The speaker itself logs nothing per session; [`Bgp::tick`] compares each neighbour with the
//! last look and logs what changed (established, lost, a new error while down), rate-limited
//! (`bgp-neighbor-*` keys, docs/config.md "Logs") so a flapping router cannot flood the log.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nodeplane_bgp::fsm::State as PeerState;
use nodeplane_bgp::{
    log_list, routes_from_state, BgpConfig, NeighborStatus, Speaker, SpeakerStatus, StopMode,
};
use nodeplane_state::State;

use crate::api::{BgpNeighborSummary, BgpStatus, BgpSummary};

/// First wait before a failed start is tried again; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Bgp {
    cfg: BgpConfig,
    speaker: Option<Speaker>,
    /// Routes of the last accepted state (None: no state accepted yet).
    routes: Option<BTreeSet<IpNet>>,
    /// Why the speaker is not running.
    error: Option<String>,
    /// When a speaker that is not running is started again, and the wait after that.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Each neighbour as [`Bgp::tick`] last saw it (index = config order).
    seen: Vec<Seen>,
    /// Graceful restart's F bit at start: forwarding survived the daemon's restart (its
    /// conntrack snapshot was restored). False until told: after a crash there is no snapshot.
    forwarding_preserved: bool,
}

/// What the neighbour lines are computed from.
#[derive(Debug, Clone, Default, PartialEq)]
struct Seen {
    established: bool,
    /// `established_transitions`: catches a session that came and went between two looks.
    sessions: u64,
    last_error: Option<String>,
}

/// A neighbour line to log.
#[derive(Debug, Clone, PartialEq)]
enum PeerLine {
    Up(usize, String),
    Lost(usize, String),
    Error(usize, String),
}

/// The lines for what changed since `seen`, which is updated.
fn peer_lines(seen: &mut Vec<Seen>, now: &[NeighborStatus]) -> Vec<PeerLine> {
    seen.resize(now.len(), Seen::default());
    let mut out = Vec::new();
    for (i, (s, n)) in seen.iter_mut().zip(now).enumerate() {
        let up = n.state == PeerState::Established;
        let sessions = n.counters.established_transitions;
        let new = sessions.saturating_sub(s.sessions);
        let who = format!(
            "bgp: neighbour {} ({}, AS {})",
            n.name, n.address, n.remote_as
        );
        let err = n.last_error.as_deref().unwrap_or("no error recorded");
        let more = if new > 1 {
            format!(" ({new} sessions since the last look)")
        } else {
            String::new()
        };
        if up && (!s.established || new > 0) {
            out.push(PeerLine::Up(i, format!("{who} Established{more}")));
        } else if !up && (s.established || new > 0) {
            out.push(PeerLine::Lost(
                i,
                format!("{who} session lost, now {:?}: {err}{more}", n.state),
            ));
        } else if !up && n.last_error.is_some() && n.last_error != s.last_error {
            out.push(PeerLine::Error(i, format!("{who} {:?}: {err}", n.state)));
        }
        *s = Seen {
            established: up,
            sessions,
            last_error: n.last_error.clone(),
        };
    }
    out
}

impl Bgp {
    pub fn new(cfg: BgpConfig) -> Bgp {
        Bgp {
            cfg,
            speaker: None,
            routes: None,
            error: None,
            retry_at: None,
            backoff: RETRY_MIN,
            seen: Vec::new(),
            forwarding_preserved: false,
        }
    }

    /// Whether forwarding survived this start (a conntrack snapshot written at a clean stop was
    /// restored); the speaker's OPENs say so in graceful restart's F bit. Takes effect at the
    /// speaker's (next) start.
    pub fn set_forwarding_preserved(&mut self, preserved: bool) {
        self.forwarding_preserved = preserved;
    }

    /// An accepted (published) state: start the speaker with its routes the first time, else
    /// announce the difference if there is one.
    pub fn on_state(&mut self, state: &State) {
        let routes = routes_from_state(state, &self.cfg.announce);
        let first = self.routes.is_none();
        if self.routes.as_ref() == Some(&routes) {
            return;
        }
        self.routes = Some(routes.clone());
        match &self.speaker {
            Some(s) => {
                log::info!("bgp: routes now {}", log_list(&routes));
                s.set_routes(routes);
            }
            // Not started yet; a failed speaker takes the new routes at its next start.
            None if first => self.start(),
            None => log::info!(
                "bgp: routes now {} (speaker not running)",
                log_list(&routes)
            ),
        }
    }

    fn start(&mut self) {
        let Some(routes) = self.routes.clone() else {
            return;
        };
        match Speaker::start_with(&self.cfg, routes.clone(), self.forwarding_preserved) {
            Ok(s) => {
                log::info!(
                    "bgp: speaker AS {} id {} started, {} neighbour(s), announcing {}, forwarding state {}",
                    self.cfg.local_as,
                    self.cfg.router_id,
                    self.cfg.neighbors.len(),
                    log_list(&routes),
                    if self.forwarding_preserved {
                        "preserved (conntrack restored)"
                    } else {
                        "not preserved"
                    }
                );
                self.speaker = Some(s);
                self.error = None;
                self.retry_at = None;
                self.backoff = RETRY_MIN;
            }
            Err(e) => self.failed(e.to_string()),
        }
    }

    fn failed(&mut self, error: String) {
        crate::error_limited!(
            "bgp-speaker-failed",
            "bgp: speaker NOT RUNNING: {error}; forwarding is not affected; next start in {} s",
            self.backoff.as_secs()
        );
        self.error = Some(error);
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
    }

    /// Called by the event loop about once a second: notices a speaker thread that died and
    /// starts a speaker that is not running when its time has come.
    pub fn tick(&mut self) {
        if self.speaker.as_ref().is_some_and(|s| !s.is_running()) {
            // Dropping the handle of a finished thread only joins it.
            self.speaker = None;
            self.failed("the speaker thread stopped unexpectedly".into());
        }
        if self.speaker.is_none() && self.retry_at.is_some_and(|t| Instant::now() >= t) {
            self.start();
        }
        let Some(s) = &self.speaker else { return };
        for line in peer_lines(&mut self.seen, &s.status().neighbors) {
            match line {
                // One bucket per neighbour: a flapping router holds back only its own lines.
                PeerLine::Up(i, l) => crate::info_limited!(("bgp-neighbor-up", i), "{l}"),
                PeerLine::Lost(i, l) => crate::warn_limited!(("bgp-neighbor-lost", i), "{l}"),
                PeerLine::Error(i, l) => crate::warn_limited!(("bgp-neighbor-error", i), "{l}"),
            }
        }
    }

    /// Stops the speaker: withdraw + Cease, or close only (graceful restart). Waits for the
    /// last messages to be flushed (at most ~2 s).
    pub fn stop(&mut self, mode: StopMode) {
        if let Some(s) = self.speaker.take() {
            log::info!("bgp: stopping the speaker ({mode:?})");
            s.shutdown(mode);
        }
        self.retry_at = None;
    }

    fn speaker_state(&self) -> &'static str {
        if self.speaker.is_some() {
            "running"
        } else if self.error.is_some() {
            "failed"
        } else {
            "waiting"
        }
    }

    pub fn status(&self) -> BgpStatus {
        let status = match &self.speaker {
            Some(s) => s.status(),
            None => SpeakerStatus::not_running(
                &self.cfg,
                self.routes.as_ref().unwrap_or(&BTreeSet::new()),
                self.error.as_deref(),
            ),
        };
        BgpStatus {
            speaker: self.speaker_state().into(),
            error: self.error.clone(),
            forwarding_preserved: self.forwarding_preserved,
            status,
        }
    }

    pub fn summary(&self) -> BgpSummary {
        let s = self.status();
        BgpSummary {
            speaker: s.speaker,
            error: s.error,
            local_as: s.status.local_as,
            routes: s.status.routes.len(),
            neighbors: s
                .status
                .neighbors
                .into_iter()
                .map(|n| BgpNeighborSummary {
                    name: n.name,
                    address: n.address,
                    remote_as: n.remote_as,
                    state: n.state,
                    established_since_unix_ms: n.established_since_unix_ms,
                    announced: n.announced.len(),
                    last_error: n.last_error,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn cfg(listen_port: u16) -> BgpConfig {
        // A neighbour nobody answers for (TEST-NET-1); active opens fail quietly.
        BgpConfig::from_yaml_str(
            &format!(
                "local_as: 65001\nrouter_id: 10.0.0.2\nlisten_port: {listen_port}\nneighbors:\n  - {{ address: 192.0.2.1, remote_as: 65000, families: [ipv4], connect_retry_secs: 60 }}\n"
            ),
            std::path::Path::new("test"),
        )
        .unwrap()
    }

    fn state(cidrs: &[&str]) -> State {
        nodeplane_state::load_sources([(
            "s.yaml",
            format!("node:\n  name: n1\n  pod_cidrs: [{}]\n", cidrs.join(", ")),
        )])
        .unwrap()
    }

    #[test]
    fn starts_with_the_first_state_and_follows_changes() {
        let mut b = Bgp::new(cfg(0));
        assert_eq!(b.status().speaker, "waiting");
        assert_eq!(b.status().status.neighbors[0].name, "192.0.2.1");
        b.on_state(&state(&["10.244.1.0/24"]));
        let s = b.status();
        assert_eq!(s.speaker, "running");
        assert_eq!(s.status.routes, vec!["10.244.1.0/24".parse().unwrap()]);
        b.on_state(&state(&["10.244.2.0/24"]));
        // The speaker thread takes the command asynchronously.
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.status().status.routes != vec!["10.244.2.0/24".parse::<IpNet>().unwrap()] {
            assert!(Instant::now() < deadline, "{:?}", b.status());
            std::thread::sleep(Duration::from_millis(10));
        }
        let sum = b.summary();
        assert_eq!((sum.routes, sum.local_as), (1, 65001));
        assert_eq!(sum.neighbors[0].address.to_string(), "192.0.2.1");
        b.stop(StopMode::Withdraw);
        assert!(b.speaker.is_none());
    }

    /// The withdrawal path of a VIP whose last backend goes: the accepted state reaches
    /// `on_state`, `routes_from_state` drops the VIP, `set_routes` wakes the speaker thread,
    /// which takes the new set (and sends the UPDATE to every established neighbour) in the
    /// same loop turn. Measured here from `on_state` to the speaker's own route set.
    #[test]
    fn vip_is_withdrawn_within_100_ms_of_its_last_backend_going() {
        let mut cfg = cfg(0);
        cfg.announce.announce_service_vips = true;
        let state = |backend_state: &str| {
            nodeplane_state::load_sources([(
                "s.yaml",
                format!(
                    "node:\n  name: n1\n  pod_cidrs: [10.244.1.0/24]\nservices:\n  - name: lb\n    type: LoadBalancer\n    frontends: [{{ip: 192.0.2.10, port: 80}}]\n    backends: [{{ip: 10.244.1.5, port: 8080, state: {backend_state}}}]\n"
                ),
            )])
            .unwrap()
        };
        let vip: IpNet = "192.0.2.10/32".parse().unwrap();
        let pod: IpNet = "10.244.1.0/24".parse().unwrap();
        let mut b = Bgp::new(cfg);
        b.on_state(&state("active"));
        assert_eq!(b.status().status.routes, vec![pod, vip]);
        let t0 = Instant::now();
        b.on_state(&state("quarantined"));
        while b.status().status.routes != vec![pod] {
            assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", b.status());
            std::thread::sleep(Duration::from_micros(200));
        }
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(100),
            "withdrawal took {took:?}"
        );
        // And back when a backend is active again.
        b.on_state(&state("active"));
        let t0 = Instant::now();
        while b.status().status.routes != vec![pod, vip] {
            assert!(
                t0.elapsed() < Duration::from_millis(100),
                "{:?}",
                b.status()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        b.stop(StopMode::Withdraw);
    }

    #[test]
    fn a_speaker_that_cannot_start_is_reported_and_retried() {
        let taken = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut b = Bgp::new(cfg(port));
        b.on_state(&state(&["10.244.1.0/24"]));
        let s = b.status();
        assert_eq!(s.speaker, "failed");
        let err = s.error.unwrap();
        assert!(err.contains(&format!(":{port}")), "{err}");
        assert_eq!(
            s.status.neighbors[0].last_error.as_deref(),
            Some(err.as_str())
        );
        // Routes change while it is down: kept for the next start.
        b.on_state(&state(&["10.244.3.0/24"]));
        assert_eq!(
            b.status().status.routes,
            vec!["10.244.3.0/24".parse().unwrap()]
        );
        // Not yet time: still down. Then the port is free and the time has come.
        b.tick();
        assert_eq!(b.status().speaker, "failed");
        drop(taken);
        b.retry_at = Some(Instant::now());
        b.tick();
        let s = b.status();
        assert_eq!(s.speaker, "running", "{s:?}");
        assert_eq!(s.error, None);
        assert_eq!(s.status.routes, vec!["10.244.3.0/24".parse().unwrap()]);
        b.stop(StopMode::Withdraw);
    }

    #[test]
    fn neighbour_lines_say_what_changed_once() {
        let base = SpeakerStatus::not_running(&cfg(0), &BTreeSet::new(), None).neighbors;
        let at = |state, sessions, err: Option<&str>| {
            let mut n = base.clone();
            n[0].state = state;
            n[0].counters.established_transitions = sessions;
            n[0].last_error = err.map(str::to_string);
            n
        };
        let mut seen = Vec::new();
        let who = "bgp: neighbour 192.0.2.1 (192.0.2.1, AS 65000)";
        assert_eq!(
            peer_lines(&mut seen, &at(PeerState::Active, 0, None)),
            vec![]
        );
        let refused = Some("connect failed: refused");
        let lines = peer_lines(&mut seen, &at(PeerState::Active, 0, refused));
        assert_eq!(
            lines,
            vec![PeerLine::Error(
                0,
                format!("{who} Active: connect failed: refused")
            )]
        );
        // The same error at every retry: said once.
        assert_eq!(
            peer_lines(&mut seen, &at(PeerState::Idle, 0, refused)),
            vec![]
        );
        let lines = peer_lines(&mut seen, &at(PeerState::Established, 1, None));
        assert_eq!(lines, vec![PeerLine::Up(0, format!("{who} Established"))]);
        assert_eq!(
            peer_lines(&mut seen, &at(PeerState::Established, 1, None)),
            vec![]
        );
        let hold = Some("hold timer expired");
        let lines = peer_lines(&mut seen, &at(PeerState::Idle, 1, hold));
        assert_eq!(
            lines,
            vec![PeerLine::Lost(
                0,
                format!("{who} session lost, now Idle: hold timer expired")
            )]
        );
        // Two sessions came and went between looks: not missed.
        let lines = peer_lines(&mut seen, &at(PeerState::Idle, 3, hold));
        assert_eq!(
            lines,
            vec![PeerLine::Lost(
                0,
                format!(
                "{who} session lost, now Idle: hold timer expired (2 sessions since the last look)"
            )
            )]
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Bgp::new(cfg(0));
        for _ in 0..10 {
            b.failed("x".into());
        }
        assert_eq!(b.backoff, RETRY_MAX);
        assert!(b.retry_at.unwrap() > Instant::now() + RETRY_MAX / 2);
    }
}
