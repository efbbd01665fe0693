//! The service manager's side channel (systemd's `sd_notify` protocol, `Type=notify`):
//! `READY=1` once the first state is published and its workers run, `WATCHDOG=1` from the
//! event loop at half the unit's `WatchdogSec=`, `RELOADING=1` … `READY=1` around a SIGHUP
//! reload, `STOPPING=1` at a stop, and a `STATUS=` line whenever the summary changes.
//!
//! Until the first state runs, the daemon is "activating": it extends the unit's start timeout
//! every second (`EXTEND_TIMEOUT_USEC`), so a node waiting for its store (etcd down at boot) is
//! never killed for slowness and restart-looped, while a daemon that hangs stops extending
//! and is. Without `NOTIFY_SOCKET` (not started by systemd) every call is a no-op.
//!
//! The watchdog pings come from the control thread's event loop, so they stop when that loop
//! stops turning (a deadlock, a state build that never ends); the workers have their own
//! supervision (`Control::check_workers`).

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// How far each extension moves the start timeout (sent every second while waiting).
const EXTEND: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Notifier {
    /// Half of `WATCHDOG_USEC`, if the unit has a watchdog for this process.
    ping_every: Option<Duration>,
    last_ping: Option<Instant>,
    last_extend: Option<Instant>,
    ready: bool,
    status: String,
    /// A failed send is logged once, not at every tick.
    warned: bool,
}

impl Notifier {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`, which must be ours if set).
    pub fn from_env() -> Notifier {
        Notifier {
            ping_every: sd_notify::watchdog_enabled().map(|d| d / 2),
            last_ping: None,
            last_extend: None,
            ready: false,
            status: String::new(),
            warned: false,
        }
    }

    /// The longest the event loop may sleep between two [`Notifier::tick`]s.
    pub fn max_wait(&self) -> Duration {
        self.ping_every
            .map_or(Duration::from_secs(1), |p| p.min(Duration::from_secs(1)))
    }

    /// Whether `READY=1` was sent.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Called by the event loop at least every [`Notifier::max_wait`]: `running` is whether
    /// the first state is published and its workers run; `status` the one-line summary.
    pub fn tick(&mut self, running: bool, status: String) {
        let now = Instant::now();
        let mut msg = Vec::new();
        if status != self.status {
            self.status = status;
            msg.push(NotifyState::Status(&self.status));
        }
        let extend_usec = u32::try_from(EXTEND.as_micros()).unwrap_or(u32::MAX);
        if running && !self.ready {
            self.ready = true;
            msg.push(NotifyState::Ready);
        } else if !self.ready
            && self
                .last_extend
                .is_none_or(|t| now - t >= Duration::from_secs(1))
        {
            self.last_extend = Some(now);
            msg.push(NotifyState::ExtendTimeoutUsec(extend_usec));
        }
        if let Some(every) = self.ping_every {
            if self.last_ping.is_none_or(|t| now - t >= every) {
                self.last_ping = Some(now);
                msg.push(NotifyState::Watchdog);
            }
        }
        send(&mut self.warned, &msg);
    }

    /// Before a SIGHUP reload.
    pub fn reloading(&mut self) {
        send(&mut self.warned, &[NotifyState::Reloading]);
    }

    /// After a SIGHUP reload (accepted or not: the daemon runs either way).
    pub fn reloaded(&mut self) {
        if self.ready {
            send(&mut self.warned, &[NotifyState::Ready]);
        }
    }

    /// At the start of a stop.
    pub fn stopping(&mut self) {
        send(&mut self.warned, &[NotifyState::Stopping]);
    }
}

/// One datagram to `NOTIFY_SOCKET` (nothing without it); a failure is logged once.
fn send(warned: &mut bool, msg: &[NotifyState<'_>]) {
    if msg.is_empty() {
        return;
    }
    if let Err(e) = sd_notify::notify(msg) {
        if !*warned {
            *warned = true;
            log::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
        }
    }
}
