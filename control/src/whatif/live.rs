//! `nodeplane whatif --live DURATION`: the flow events the running daemon records for a while
//! (an `observe` subscription, unfiltered), then judged as `--from-events` judges a file.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::api::{Request, Response};
use crate::events::{EventFilter, FlowRecord, StreamLine, StreamStats};

/// Subscribes to the daemon's flow events for `duration`. Returns the records and what the
/// stream reported as dropped or lost (those flows are missing from the what-if).
pub fn collect(
    socket: &Path,
    duration: Duration,
) -> Result<(Vec<FlowRecord>, StreamStats), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to the nodeplane control socket {}: {e} (is `nodeplane run` running?)",
            socket.display()
        )
    })?;
    let req = serde_json::to_string(&Request::Observe {
        filter: EventFilter::default(),
    })
    .map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| format!("control socket {}: {e}", socket.display());
    s.write_all(req.as_bytes()).map_err(io)?;
    s.write_all(b"\n").map_err(io)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(io)?;
    let deadline = Instant::now() + duration;
    let mut r = BufReader::new(s);
    let mut buf = Vec::new();
    let mut first = true;
    let mut out = Vec::new();
    let mut stats = StreamStats::default();
    while Instant::now() < deadline || first {
        match r.read_until(b'\n', &mut buf) {
            Ok(0) => return Err("the daemon closed the event stream".into()),
            Ok(_) if buf.last() != Some(&b'\n') => {
                return Err("the daemon closed the event stream".into())
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if first && Instant::now() > deadline + Duration::from_secs(10) {
                    return Err("the daemon did not answer the observe request".into());
                }
                continue;
            }
            Err(e) => return Err(io(e)),
        }
        if first {
            let resp: Response = serde_json::from_slice(&buf)
                .map_err(|e| format!("malformed response from the daemon: {e}"))?;
            if !resp.ok {
                return Err(resp.error.unwrap_or_default());
            }
            first = false;
        } else {
            match serde_json::from_slice::<StreamLine>(&buf) {
                Ok(StreamLine::Event(ev)) => out.push(*ev),
                Ok(StreamLine::Stats(st)) => stats = st,
                Err(e) => return Err(format!("malformed event line: {e}")),
            }
        }
        buf.clear();
    }
    Ok((out, stats))
}
