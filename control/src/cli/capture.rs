//! `nodeplane capture`: frames as the daemon's workers received them on one interface, written
//! to a pcap that `nodeplane replay` and `nodeplane whatif` take as input. See
//! [`nodeplane_control::capture`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use nodeplane_control::api::{Request, Response, DEFAULT_SOCKET};
use nodeplane_control::capture::{unhex, CaptureLine, CaptureStarted};
use nodeplane_dataplane::replay::PcapFile;

use super::CliResult;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("bound").required(true).multiple(true).args(["count", "duration"])))]
pub struct CaptureArgs {
    /// The ingress interface whose frames to record (as the state names it).
    #[arg(long)]
    iface: String,
    /// Stop after this many frames.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// The pcap to write (Ethernet, nanosecond timestamps).
    #[arg(long)]
    output: PathBuf,
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

pub fn run(a: CaptureArgs) -> CliResult {
    let duration_ms = match a.duration {
        Some(s) if !s.is_finite() || s <= 0.0 => {
            return Err(format!("--duration {s}: a number of seconds > 0").into())
        }
        Some(s) => Some((s * 1000.0).ceil() as u64),
        None => None,
    };
    let mut s = UnixStream::connect(&a.socket).map_err(|e| {
        format!(
            "cannot connect to the nodeplane control socket {}: {e} (is `nodeplane run` running, and are you root?)",
            a.socket.display()
        )
    })?;
    let req = Request::Capture {
        iface: a.iface.clone(),
        count: a.count,
        duration_ms,
    };
    s.write_all(serde_json::to_string(&req)?.as_bytes())?;
    s.write_all(b"\n")?;
    // The daemon writes at least every 100 ms while frames come, and ends the stream itself;
    // a silent daemon for this long is gone.
    let silence = Duration::from_millis(duration_ms.unwrap_or(0)) + Duration::from_secs(30);
    s.set_read_timeout(Some(silence))?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let resp: Response = serde_json::from_str(&line)
        .map_err(|e| format!("malformed response from the daemon: {e}: {line:?}"))?;
    if !resp.ok {
        return Err(resp.error.unwrap_or_default().into());
    }
    let started: CaptureStarted = serde_json::from_value(resp.result.unwrap_or_default())?;
    eprintln!(
        "capturing on {} ({} worker(s)) into {}",
        a.iface,
        started.workers,
        a.output.display()
    );
    let mut out = PcapFile::create(&a.output)?;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            out.finish()?;
            return Err("the daemon closed the capture stream before its end".into());
        }
        match serde_json::from_str::<CaptureLine>(&line)
            .map_err(|e| format!("malformed capture line: {e}"))?
        {
            CaptureLine::Frame(f) => {
                let data = unhex(&f.data).map_err(|e| format!("malformed frame: {e}"))?;
                out.write_cut(f.ts_unix_ns, f.orig_len, &data)?;
            }
            CaptureLine::End(end) => {
                let n = out.written();
                out.finish()?;
                eprintln!("{n} frames written");
                if end.lost > 0 {
                    eprintln!(
                        "warning: {} frames of {} were not captured (the stream fell behind)",
                        end.lost, a.iface
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}
