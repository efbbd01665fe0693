//! `nodeplane observe`: flow events as they happen (like `hubble observe`), one line each, or
//! JSON lines with `--json`. Filters are applied by the daemon.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nodeplane_control::api::{Request, Response};
use nodeplane_control::events::{EventFilter, ObserveStarted, StreamLine, StreamStats};

use super::client::Common;
use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct ObserveArgs {
    /// Only events with this verdict.
    #[arg(long, value_parser = ["forwarded", "dropped", "passed"])]
    verdict: Option<String>,
    /// Only this protocol (icmp includes ICMPv6).
    #[arg(long, value_parser = ["tcp", "udp", "icmp"])]
    proto: Option<String>,
    /// Only flows from or to this address (original source or destination, or the backend).
    #[arg(long)]
    ip: Option<IpAddr>,
    /// Only flows of this service.
    #[arg(long)]
    service: Option<String>,
    /// Only drops with this reason (`policy-denied`, `no-endpoint`, ...).
    #[arg(long)]
    reason: Option<String>,
    /// Stop after this many events.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<u64>,
    #[command(flatten)]
    common: Common,
}

pub fn run(a: ObserveArgs) -> CliResult {
    let filter = EventFilter {
        verdict: a.verdict,
        proto: a.proto,
        ip: a.ip,
        service: a.service,
        reason: a.reason,
    };
    let socket = &a.common.socket;
    let mut s = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to the nodeplane control socket {}: {e} (is `nodeplane run` running, and are you root?)",
            socket.display()
        )
    })?;
    let line = serde_json::to_string(&Request::Observe { filter })?;
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    let deadline = a.duration.map(|d| Instant::now() + Duration::from_secs(d));
    // Wake at least once a second (the daemon sends a stats line when idle) to honour
    // `--duration`.
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut r = BufReader::new(s);
    let mut text = String::new();
    r.read_line(&mut text)?;
    let resp: Response = serde_json::from_str(&text)
        .map_err(|e| format!("malformed response from the daemon: {e}: {text:?}"))?;
    if !resp.ok {
        return Err(resp.error.unwrap_or_default().into());
    }
    let started: ObserveStarted = serde_json::from_value(resp.result.unwrap_or_default())?;
    eprintln!(
        "observing flow events on {} worker(s) (Ctrl-C to stop)",
        started.workers
    );
    let mut out = std::io::stdout().lock();
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = 0u64;
    let mut stats = StreamStats::default();
    let mut reported = StreamStats::default();
    let end = loop {
        if deadline.is_some_and(|d| Instant::now() >= d) || a.count.is_some_and(|n| seen >= n) {
            break None;
        }
        match r.read_until(b'\n', &mut buf) {
            Ok(0) => break Some("the daemon closed the stream"),
            Ok(_) if buf.last() != Some(&b'\n') => break Some("the daemon closed the stream"),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // `read_until` keeps what it read of a partial line in `buf`: go on.
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let parsed = serde_json::from_slice::<StreamLine>(&buf);
        let l = match parsed {
            Ok(l) => l,
            Err(e) => {
                let text = String::from_utf8_lossy(&buf);
                return Err(format!("malformed event line: {e}: {text:?}").into());
            }
        };
        buf.clear();
        let w = match l {
            StreamLine::Event(ev) => {
                seen += 1;
                if a.common.json {
                    serde_json::to_string(&ev)
                        .map_err(std::io::Error::other)
                        .and_then(|j| writeln!(out, "{j}"))
                } else {
                    writeln!(out, "{}", ev.human())
                }
            }
            StreamLine::Stats(s) => {
                stats = s;
                if s != reported {
                    eprintln!(
                        "({} events dropped for this observer: it reads too slowly; {} lost on the workers)",
                        s.dropped, s.lost
                    );
                    reported = s;
                }
                Ok(())
            }
        };
        // A closed pipe (`| head`) ends the session quietly.
        if w.is_err() {
            break None;
        }
    };
    let _ = out.flush();
    if stats.dropped > 0 || stats.lost > 0 {
        eprintln!(
            "{seen} events shown; {} dropped for this observer, {} lost on the workers",
            stats.dropped, stats.lost
        );
    }
    if let Some(why) = end {
        return Err(why.into());
    }
    Ok(ExitCode::SUCCESS)
}
