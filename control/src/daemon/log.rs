//! A tiny structured logger: one line per record on stderr, in one of two formats
//! (`log_format`, docs/config.md):
//!
//! ```text
//! text: ts=2024-05-01T12:00:00.123Z level=info target=nodeplane_control::daemon msg="..."
//! json: {"ts":"2024-05-01T12:00:00.123Z","level":"info","target":"nodeplane_control::daemon","msg":"..."}
//! ```
//!
//! Under systemd (stderr is the journal: `JOURNAL_STREAM` names this very stream), text lines
//! carry no `ts=` of their own: journald stamps every line. JSON lines always carry `ts`.
//!
//! A line let through by the rate limiter ([`super::ratelimit`]) after others were held back
//! also carries their count: `suppressed=N` (text), `"suppressed":N` (json). Never used per
//! packet.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// The shape of a log line (`log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` pairs, the message quoted (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The format in force; a reload (SIGHUP) may change it, like the level.
static FORMAT: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// The suppressed count of the line being logged on this thread (set around the `log`
    /// call by [`super::ratelimit`], read by [`Logger::log`] on the same thread).
    static SUPPRESSED: Cell<u64> = const { Cell::new(0) };
}

#[derive(Debug)]
struct Logger;

impl log::Log for Logger {
    // The level is the `log` crate's global one, so a reload (SIGHUP) can change it.
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let fmt = format();
        let ts = SystemTime::now();
        let line = format_line(
            fmt,
            (fmt == LogFormat::Json || !to_journal()).then_some(ts),
            r.level(),
            r.target(),
            &r.args().to_string(),
            SUPPRESSED.with(Cell::get),
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
    fn flush(&self) {}
}

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` (`DEVICE:INODE`, set by
/// systemd) names the stream stderr is (a child with stderr redirected elsewhere does not match).
fn to_journal() -> bool {
    static JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *JOURNAL.get_or_init(|| {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let Some(want) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
            return false;
        };
        let Ok(m) = std::fs::File::from(fd).metadata() else {
            return false;
        };
        want.to_string_lossy() == format!("{}:{}", m.dev(), m.ino())
    })
}

/// One line, newline included. `ts: None`: a text line without its own time (journald adds
/// one); a JSON line always has one (the epoch if none is given).
pub fn format_line(
    fmt: LogFormat,
    ts: Option<SystemTime>,
    level: log::Level,
    target: &str,
    msg: &str,
    suppressed: u64,
) -> String {
    let stamp = rfc3339(ts.unwrap_or(UNIX_EPOCH));
    let level = level.as_str().to_ascii_lowercase();
    let mut line = match (fmt, ts) {
        (LogFormat::Text, Some(_)) => {
            format!("ts={stamp} level={level} target={target} msg={msg:?}")
        }
        (LogFormat::Text, None) => format!("level={level} target={target} msg={msg:?}"),
        (LogFormat::Json, _) => {
            let ts = stamp;
            // serde_json escapes quotes, backslashes and control characters (a newline in a
            // message stays inside its line).
            let s = |v: &str| serde_json::Value::from(v).to_string();
            format!(
                "{{\"ts\":\"{ts}\",\"level\":\"{level}\",\"target\":{},\"msg\":{}",
                s(target),
                s(msg)
            )
        }
    };
    match (fmt, suppressed) {
        (_, 0) => {}
        (LogFormat::Text, n) => {
            let _ = write!(line, " suppressed={n}");
        }
        (LogFormat::Json, n) => {
            let _ = write!(line, ",\"suppressed\":{n}");
        }
    }
    if fmt == LogFormat::Json {
        line.push('}');
    }
    line.push('\n');
    line
}

/// Logs one line carrying a suppressed count (the rate limiter's lines).
pub fn log_counted(
    level: log::Level,
    target: &'static str,
    suppressed: u64,
    args: std::fmt::Arguments<'_>,
) {
    SUPPRESSED.with(|c| c.set(suppressed));
    log::log!(target: target, level, "{args}");
    SUPPRESSED.with(|c| c.set(0));
}

/// Installs the logger (once per process; later calls only change the level and format).
pub fn init(level: &str, format: LogFormat) {
    let _ = log::set_boxed_logger(Box::new(Logger));
    set_level(level);
    set_format(format);
}

/// Changes the level of the installed logger (a reload).
pub fn set_level(level: &str) {
    log::set_max_level(match level {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => log::LevelFilter::Info,
    });
}

/// Changes the line format of the installed logger (a reload).
pub fn set_format(f: LogFormat) {
    FORMAT.store(f as u8, Ordering::Relaxed);
}

fn format() -> LogFormat {
    match FORMAT.load(Ordering::Relaxed) {
        1 => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ` (civil-from-days, H. Hinnant's algorithm).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn json_lines_are_one_valid_object_each() {
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        let msg = "say \"hi\"\nback\\slash\ttab \u{1}";
        let line = format_line(
            LogFormat::Json,
            Some(t),
            log::Level::Warn,
            "nodeplane_control::x",
            msg,
            0,
        );
        assert!(line.ends_with("}\n"), "{line}");
        assert_eq!(line.matches('\n').count(), 1, "one line: {line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "2024-02-29T12:34:56.789Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["target"], "nodeplane_control::x");
        assert_eq!(v["msg"], msg, "escaped and read back whole");
        assert!(v.get("suppressed").is_none(), "absent when zero: {line}");
        let v: serde_json::Value = serde_json::from_str(&format_line(
            LogFormat::Json,
            Some(t),
            log::Level::Error,
            "t",
            "m",
            42,
        ))
        .unwrap();
        assert_eq!(v["suppressed"], 42);
        assert_eq!(v["level"], "error");
    }

    #[test]
    fn text_lines() {
        let line = format_line(
            LogFormat::Text,
            Some(UNIX_EPOCH),
            log::Level::Info,
            "t",
            "a \"b\"\nc",
            0,
        );
        assert_eq!(
            line,
            "ts=1970-01-01T00:00:00.000Z level=info target=t msg=\"a \\\"b\\\"\\nc\"\n"
        );
        let line = format_line(
            LogFormat::Text,
            Some(UNIX_EPOCH),
            log::Level::Warn,
            "t",
            "m",
            7,
        );
        assert!(line.ends_with("msg=\"m\" suppressed=7\n"), "{line}");
        // Under journald: no time of its own.
        let line = format_line(LogFormat::Text, None, log::Level::Info, "t", "m", 0);
        assert_eq!(line, "level=info target=t msg=\"m\"\n");
    }
}
