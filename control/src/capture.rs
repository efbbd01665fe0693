//! `nodeplane capture`: frames as the workers received them, streamed to the CLI, which
//! writes a pcap. Bounded (a frame count and a duration, both capped) and off by default; off,
//! it costs each worker one atomic load per burst (`nodeplane_dataplane::worker::capture`).
//!
//! ```text
//!  control thread                 np-capture thread (one capture at a time)       workers
//!  `capture` request: check,  ──> arm every worker: RING buffers, iface, session ──> copy
//!  hand the connection over       loop: pop each worker's full ring, {"frame":..}    frames
//!                                 lines; buffers back to the free ring               of iface
//!                                 until count / duration / client gone / stop
//!                                 disarm, {"end":{frames, lost}}, buffers freed
//! ```
//!
//! Protocol: request `{"cmd":"capture","iface":..,"count":N,"duration_ms":D}` (at least one
//! bound); response `{"ok":true,"result":{"session":S,"workers":W}}`, then
//! `{"frame":{"ts_unix_ns":..,"worker":..,"orig_len":..,"data":"<hex>"}}` lines and a last
//! `{"end":{"frames":N,"lost":L}}` line.

use std::io::{BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nodeplane_dataplane::worker::{CaptureShared, CaptureTap, CapturedFrame, Clock};
use serde::{Deserialize, Serialize};

/// Frames one capture takes at most.
pub const MAX_FRAMES: u64 = 1_000_000;
/// The longest capture.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// The answer to a `capture` request (the stream's first line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaptureStarted {
    pub session: u64,
    pub workers: usize,
}

/// One line of the stream after the response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaptureLine {
    Frame(FrameLine),
    End(CaptureEnd),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrameLine {
    pub ts_unix_ns: u64,
    pub worker: usize,
    pub orig_len: u32,
    /// The frame's first bytes (at most `SNAP`), hex.
    pub data: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CaptureEnd {
    pub frames: u64,
    /// Frames of the interface the workers could not copy (the stream fell behind).
    pub lost: u64,
}

/// What a `capture` request asks for, checked.
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    pub iface: String,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
}

impl CaptureSpec {
    pub fn new(
        iface: String,
        count: Option<u64>,
        duration_ms: Option<u64>,
    ) -> Result<Self, String> {
        if count.is_none() && duration_ms.is_none() {
            return Err("a capture needs a bound: count or duration_ms".into());
        }
        if count == Some(0) || duration_ms == Some(0) {
            return Err("count and duration_ms must be > 0".into());
        }
        if count.is_some_and(|c| c > MAX_FRAMES) {
            return Err(format!("count: at most {MAX_FRAMES} frames"));
        }
        let duration = duration_ms.map(Duration::from_millis);
        if duration.is_some_and(|d| d > MAX_DURATION) {
            return Err(format!("duration: at most {} s", MAX_DURATION.as_secs()));
        }
        Ok(CaptureSpec {
            iface,
            count,
            duration,
        })
    }
}

/// The daemon's capture hub: every worker's shared ring, one capture at a time.
#[derive(Debug)]
pub struct CaptureHub {
    workers: Mutex<Vec<Arc<CaptureShared>>>,
    busy: AtomicBool,
    next: AtomicU64,
    /// Clock nanoseconds + this = Unix nanoseconds.
    wall_offset: u64,
}

pub fn hex(data: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push(char::from(D[usize::from(b >> 4)]));
        s.push(char::from(D[usize::from(b & 15)]));
    }
    s
}

pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

impl CaptureHub {
    pub fn new(clock: Clock) -> Arc<CaptureHub> {
        let mono = clock.now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Arc::new(CaptureHub {
            workers: Mutex::new(Vec::new()),
            busy: AtomicBool::new(false),
            // Tickets apart from the observers' (the control socket hands both over).
            next: AtomicU64::new(1 << 62),
            wall_offset: wall.wrapping_sub(mono),
        })
    }

    /// A new worker's tap.
    pub fn tap(&self) -> CaptureTap {
        let shared = Arc::new(CaptureShared::default());
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&shared));
        CaptureTap::new(shared)
    }

    /// Forgets the workers (before they are started again).
    pub fn clear(&self) {
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn workers(&self) -> usize {
        self.workers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether a ticket is a capture's.
    pub fn owns(ticket: u64) -> bool {
        ticket >= 1 << 62
    }

    /// Reserves the one capture slot.
    pub fn reserve(&self) -> Result<u64, String> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err("a capture is already running; try again when it ends".into());
        }
        Ok(self.next.fetch_add(1, Ordering::Relaxed))
    }

    pub fn release(&self) {
        self.busy.store(false, Ordering::Release);
    }

    /// Runs the capture on its own thread: the connection gets `pending` (ending with the
    /// response line), then frames until a bound is reached, the client goes away or `stop`.
    pub fn attach(
        self: &Arc<CaptureHub>,
        session: u64,
        spec: CaptureSpec,
        stream: UnixStream,
        pending: Vec<u8>,
        stop: Arc<AtomicBool>,
    ) {
        let hub = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("np-capture".into())
            .spawn(move || {
                let workers = hub
                    .workers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let mut finished = false;
                let r = hub.serve(
                    session,
                    &spec,
                    &workers,
                    stream,
                    &pending,
                    &stop,
                    &mut finished,
                );
                if !finished {
                    hub.finish(&workers);
                }
                // A session that ran to its end logged that before the client read it.
                if let Err(e) = r {
                    log::info!("capture {session} on {} ended: {e}", spec.iface);
                }
            });
        match spawned {
            Ok(_) => log::info!("capture {session} started"),
            Err(e) => {
                log::error!("capture {session}: cannot start its thread: {e}");
                self.release();
            }
        }
    }

    /// Ends a session: disarms the workers, frees every buffer, and frees the capture slot.
    /// Called once per session, before the client reads the session's end (so that a capture
    /// asked for right after it is accepted), or when the session failed earlier.
    fn finish(&self, workers: &[Arc<CaptureShared>]) {
        for w in workers {
            w.disarm();
        }
        // Give a burst in flight time to finish, then free every buffer.
        std::thread::sleep(Duration::from_millis(20));
        for w in workers {
            while w.full.pop().is_some() {}
            while w.free.pop().is_some() {}
        }
        self.release();
    }

    /// Streams the session's frames; `finished` is set once [`Self::finish`] ran.
    #[allow(clippy::too_many_arguments)]
    fn serve(
        &self,
        session: u64,
        spec: &CaptureSpec,
        workers: &[Arc<CaptureShared>],
        stream: UnixStream,
        pending: &[u8],
        stop: &AtomicBool,
        finished: &mut bool,
    ) -> std::io::Result<CaptureEnd> {
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        (&stream).write_all(pending)?;
        let lost0: Vec<u64> = workers
            .iter()
            .map(|w| w.lost.load(Ordering::Relaxed))
            .collect();
        for w in workers {
            // Stale buffers of an earlier session go first.
            while w.full.pop().is_some() {}
            while w.free.pop().is_some() {}
            for _ in 0..nodeplane_dataplane::worker::capture::RING {
                let _ = w.free.push(CapturedFrame::buffer());
            }
            w.arm(session, &spec.iface);
        }
        let started = Instant::now();
        let deadline = spec.duration.map(|d| started + d);
        let limit = spec.count.unwrap_or(MAX_FRAMES);
        let mut w = BufWriter::with_capacity(64 * 1024, &stream);
        let mut frames = 0u64;
        let mut last_flush = Instant::now();
        'outer: while !stop.load(Ordering::Relaxed) {
            if deadline.is_some_and(|d| Instant::now() >= d) || frames >= limit {
                break;
            }
            let mut got = false;
            for (i, shared) in workers.iter().enumerate() {
                while let Some(b) = shared.full.pop() {
                    got = true;
                    if b.session == session && frames < limit {
                        let line = CaptureLine::Frame(FrameLine {
                            ts_unix_ns: b.ts.wrapping_add(self.wall_offset),
                            worker: i,
                            orig_len: b.orig_len,
                            data: hex(&b.data),
                        });
                        serde_json::to_writer(&mut w, &line)?;
                        w.write_all(b"\n")?;
                        frames += 1;
                    }
                    let _ = shared.free.push(b);
                    if frames >= limit {
                        break 'outer;
                    }
                }
            }
            if !got {
                w.flush()?;
                last_flush = Instant::now();
                std::thread::sleep(Duration::from_millis(2));
            } else if last_flush.elapsed() > Duration::from_millis(100) {
                w.flush()?;
                last_flush = Instant::now();
            }
        }
        let lost = workers
            .iter()
            .zip(&lost0)
            .map(|(w, l0)| w.lost.load(Ordering::Relaxed).saturating_sub(*l0))
            .sum();
        let end = CaptureEnd { frames, lost };
        w.flush()?;
        self.finish(workers);
        *finished = true;
        log::info!(
            "capture {session} on {} ended: {} frames, {} lost",
            spec.iface,
            end.frames,
            end.lost
        );
        serde_json::to_writer(&mut w, &CaptureLine::End(end))?;
        w.write_all(b"\n")?;
        w.flush()?;
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_specs_are_bounded() {
        let d: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&d)).unwrap(), d);
        assert!(unhex("abc").is_err());
        assert!(unhex("zz").is_err());
        assert!(CaptureSpec::new("eth0".into(), None, None).is_err());
        assert!(CaptureSpec::new("eth0".into(), Some(0), None).is_err());
        assert!(CaptureSpec::new("eth0".into(), Some(MAX_FRAMES + 1), None).is_err());
        assert!(CaptureSpec::new("eth0".into(), None, Some(3_600_001)).is_err());
        assert!(CaptureSpec::new("eth0".into(), Some(10), None).is_ok());
        assert!(CaptureSpec::new("eth0".into(), None, Some(500)).is_ok());
    }
}
