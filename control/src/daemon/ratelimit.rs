//! Rate-limited log lines, for whatever can repeat in a fault storm (etcd down, a state that
//! keeps failing, a neighbour that flaps, a control socket out of file descriptors).
//!
//! Each call site names a static key, optionally with an index (`("bgp-neighbor-lost", i)`:
//! one bucket per neighbour, so one flapping router cannot hold back another's lines). A key
//! lets [`BURST`] lines through at once and then one
//! per [`PERIOD`] (a token bucket); the lines in between are counted, not written. The next
//! line let through says how many were held back, `(N similar lines suppressed in the last
//! Xs)`, and carries the count as `suppressed` (docs/config.md, "Logs"). A storm that ends
//! still reports its count: the daemon's event loop calls [`flush`] once a second, which
//! writes `KEY: N similar lines suppressed in the last Xs` for every key that holds a count
//! and has a token again (so the flush is limited like the lines themselves).
//!
//! ```ignore
//! crate::warn_limited!("etcd-reconnect", "etcd attempt failed: {e}");
//! ```
//!
//! The limiter is one mutex-guarded map, taken once per line that would be logged: fine for
//! the control plane, never for the packet path (which logs nothing).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Lines a key may write at once.
pub const BURST: u32 = 3;
/// After a burst, one line per key per period.
pub const PERIOD: Duration = Duration::from_secs(10);

/// What a bucket is kept for: a call site's name, and an index where one call site speaks for
/// several things (a neighbour). Written `name` or `name[index]` in flushed counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub name: &'static str,
    pub index: Option<usize>,
}

impl From<&'static str> for Key {
    fn from(name: &'static str) -> Key {
        Key { name, index: None }
    }
}

impl From<(&'static str, usize)> for Key {
    fn from((name, i): (&'static str, usize)) -> Key {
        Key {
            name,
            index: Some(i),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            None => f.write_str(self.name),
            Some(i) => write!(f, "{}[{i}]", self.name),
        }
    }
}

/// A line let through, with what was held back before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passed {
    /// Lines of this key suppressed since the last one written.
    pub suppressed: u64,
    /// Since the first of them.
    pub over: Duration,
}

impl Passed {
    /// The text appended to the line: empty, or ` (N similar lines suppressed in the last Xs)`.
    pub fn suffix(&self) -> String {
        if self.suppressed == 0 {
            String::new()
        } else {
            format!(
                " ({} similar lines suppressed in the last {}s)",
                self.suppressed,
                secs(self.over)
            )
        }
    }
}

/// A count the flush writes: `key` held back `suppressed` lines and nothing came since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub key: Key,
    pub level: log::Level,
    pub target: &'static str,
    pub passed: Passed,
}

#[derive(Debug)]
struct Slot {
    tokens: u32,
    /// When the last token was added (or the slot made).
    refilled: Instant,
    suppressed: u64,
    first_suppressed: Option<Instant>,
    level: log::Level,
    target: &'static str,
}

/// Per-key token buckets; the clock is passed in (tests drive it, the macros use `Instant::now`).
#[derive(Debug)]
pub struct Limiter {
    burst: u32,
    period: Duration,
    slots: Mutex<HashMap<Key, Slot>>,
}

impl Limiter {
    pub fn new(burst: u32, period: Duration) -> Limiter {
        Limiter {
            burst: burst.max(1),
            period: period.max(Duration::from_millis(1)),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// One line of `key` at `now`: `Some` if it is to be written (with the count held back
    /// before it), `None` if it is suppressed (and counted).
    pub fn admit(
        &self,
        key: impl Into<Key>,
        level: log::Level,
        target: &'static str,
        now: Instant,
    ) -> Option<Passed> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(key.into()).or_insert(Slot {
            tokens: self.burst,
            refilled: now,
            suppressed: 0,
            first_suppressed: None,
            level,
            target,
        });
        self.refill(slot, now);
        if slot.tokens == 0 {
            slot.suppressed += 1;
            slot.first_suppressed.get_or_insert(now);
            return None;
        }
        slot.tokens -= 1;
        (slot.level, slot.target) = (level, target);
        Some(take(slot, now))
    }

    /// The counts to write now: keys holding suppressed lines that have a token again (the
    /// storm ended, or its next line has not come yet). Each takes its token.
    pub fn flush(&self, now: Instant) -> Vec<Pending> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (key, slot) in slots.iter_mut() {
            if slot.suppressed == 0 {
                continue;
            }
            self.refill(slot, now);
            if slot.tokens == 0 {
                continue;
            }
            slot.tokens -= 1;
            out.push(Pending {
                key: *key,
                level: slot.level,
                target: slot.target,
                passed: take(slot, now),
            });
        }
        out.sort_by_key(|p| p.key);
        out
    }

    fn refill(&self, slot: &mut Slot, now: Instant) {
        let n = now.saturating_duration_since(slot.refilled).as_nanos() / self.period.as_nanos();
        if n == 0 {
            return;
        }
        if slot.tokens as u128 + n >= self.burst as u128 {
            slot.tokens = self.burst;
            slot.refilled = now;
        } else {
            slot.tokens += n as u32;
            slot.refilled += self.period * n as u32;
        }
    }
}

/// The count held back so far, reset.
fn take(slot: &mut Slot, now: Instant) -> Passed {
    let p = Passed {
        suppressed: slot.suppressed,
        over: slot
            .first_suppressed
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
    };
    slot.suppressed = 0;
    slot.first_suppressed = None;
    p
}

/// Whole seconds, at least 1 (a count "in the last 0s" reads wrong).
fn secs(d: Duration) -> u64 {
    d.as_secs_f64().round().max(1.0) as u64
}

/// The daemon's limiter ([`BURST`], [`PERIOD`]), used by the macros.
pub fn global() -> &'static Limiter {
    static L: OnceLock<Limiter> = OnceLock::new();
    L.get_or_init(|| Limiter::new(BURST, PERIOD))
}

/// Writes the counts of storms that ended (the daemon calls it once a second).
pub fn flush() {
    for p in global().flush(Instant::now()) {
        if p.level <= log::max_level() {
            super::log::log_counted(
                p.level,
                p.target,
                p.passed.suppressed,
                format_args!(
                    "{}: {} similar lines suppressed in the last {}s",
                    p.key,
                    p.passed.suppressed,
                    secs(p.passed.over)
                ),
            );
        }
    }
}

/// A log line limited per call-site key: `log_limited!(log::Level::Warn, "key", "fmt", args)`.
/// Lines below the configured level are neither written nor counted.
#[macro_export]
macro_rules! log_limited {
    ($lvl:expr, $key:expr, $($arg:tt)+) => {{
        let lvl: ::log::Level = $lvl;
        if lvl <= ::log::max_level() {
            if let Some(p) = $crate::daemon::ratelimit::global().admit(
                $key,
                lvl,
                ::std::module_path!(),
                ::std::time::Instant::now(),
            ) {
                $crate::daemon::log::log_counted(
                    lvl,
                    ::std::module_path!(),
                    p.suppressed,
                    ::std::format_args!("{}{}", ::std::format_args!($($arg)+), p.suffix()),
                );
            }
        }
    }};
}

/// `log::error!`, limited per key (see [`crate::daemon::ratelimit`]).
#[macro_export]
macro_rules! error_limited {
    ($key:expr, $($arg:tt)+) => { $crate::log_limited!(::log::Level::Error, $key, $($arg)+) };
}

/// `log::warn!`, limited per key (see [`crate::daemon::ratelimit`]).
#[macro_export]
macro_rules! warn_limited {
    ($key:expr, $($arg:tt)+) => { $crate::log_limited!(::log::Level::Warn, $key, $($arg)+) };
}

/// `log::info!`, limited per key (see [`crate::daemon::ratelimit`]).
#[macro_export]
macro_rules! info_limited {
    ($key:expr, $($arg:tt)+) => { $crate::log_limited!(::log::Level::Info, $key, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level::Warn;

    const S: Duration = Duration::from_secs(1);

    fn lim() -> (Limiter, Instant) {
        (Limiter::new(3, 10 * S), Instant::now())
    }

    #[test]
    fn a_burst_passes_then_the_rest_is_counted() {
        let (l, t0) = lim();
        for i in 0..3 {
            assert_eq!(
                l.admit("k", Warn, "t", t0 + i * S / 10),
                Some(Passed {
                    suppressed: 0,
                    over: Duration::ZERO
                }),
                "line {i} of the burst"
            );
        }
        for i in 3..50 {
            assert_eq!(l.admit("k", Warn, "t", t0 + i * S / 10), None, "line {i}");
        }
        // Other keys have their own bucket.
        assert!(l.admit("other", Warn, "t", t0 + S).is_some());
        assert!(
            l.admit(("k", 1), Warn, "t", t0 + S).is_some(),
            "an index: its own"
        );
        assert!(l.admit(("k", 0), Warn, "t", t0 + S).is_some());
        assert_eq!(Key::from(("k", 1)).to_string(), "k[1]");
    }

    #[test]
    fn the_next_line_after_a_period_reports_the_count() {
        let (l, t0) = lim();
        for _ in 0..3 {
            l.admit("k", Warn, "t", t0).unwrap();
        }
        // 7 lines held back between 1 s and 7 s.
        for i in 1..=7 {
            assert!(l.admit("k", Warn, "t", t0 + i * S).is_none());
        }
        // One token back at 10 s: the next line passes with the count, once.
        let p = l.admit("k", Warn, "t", t0 + 10 * S).unwrap();
        assert_eq!(
            p,
            Passed {
                suppressed: 7,
                over: 9 * S
            }
        );
        assert_eq!(p.suffix(), " (7 similar lines suppressed in the last 9s)");
        assert!(l.admit("k", Warn, "t", t0 + 11 * S).is_none());
        let p = l.admit("k", Warn, "t", t0 + 20 * S).unwrap();
        assert_eq!(p.suppressed, 1, "counted from the last line written");
        assert_eq!(p.suffix(), " (1 similar lines suppressed in the last 9s)");
    }

    #[test]
    fn a_quiet_key_refills_its_whole_burst() {
        let (l, t0) = lim();
        for _ in 0..3 {
            l.admit("k", Warn, "t", t0).unwrap();
        }
        assert!(l.admit("k", Warn, "t", t0 + S).is_none());
        // Three periods later: three tokens (not more), the first line says what was held.
        let t = t0 + 35 * S;
        assert_eq!(l.admit("k", Warn, "t", t).unwrap().suppressed, 1);
        assert_eq!(l.admit("k", Warn, "t", t).unwrap().suppressed, 0);
        assert_eq!(l.admit("k", Warn, "t", t).unwrap().suppressed, 0);
        assert!(l.admit("k", Warn, "t", t).is_none());
        // Much later: still only a burst.
        let t = t0 + 1000 * S;
        for _ in 0..3 {
            assert!(l.admit("k", Warn, "t", t).is_some());
        }
        assert!(l.admit("k", Warn, "t", t).is_none());
    }

    #[test]
    fn a_storm_that_ends_is_flushed_once_when_a_token_is_back() {
        let (l, t0) = lim();
        for _ in 0..3 {
            l.admit("k", Warn, "mod::x", t0).unwrap();
        }
        for _ in 0..5 {
            assert!(l.admit("k", Warn, "mod::x", t0 + S).is_none());
        }
        assert!(l.admit("quiet", Warn, "t", t0).is_some());
        // No token yet: nothing to flush (the next line, or a later flush, will say it).
        assert!(l.flush(t0 + 5 * S).is_empty());
        let out = l.flush(t0 + 10 * S);
        assert_eq!(
            out,
            vec![Pending {
                key: "k".into(),
                level: Warn,
                target: "mod::x",
                passed: Passed {
                    suppressed: 5,
                    over: 9 * S
                }
            }],
            "only the key holding a count"
        );
        assert!(l.flush(t0 + 11 * S).is_empty(), "reported once");
        // The flush took the token: a new storm right after is limited at once.
        assert!(l.admit("k", Warn, "mod::x", t0 + 12 * S).is_none());
    }
}
