//! Continuous real traffic from a lab pod for the fault tests, with kernel sockets opened inside
//! the pod's namespace (threads that joined it with `setns`), counted request by request:
//!
//! - `udp`: every 100 ms a new socket (so a new flow, which the service table must place) sends
//!   one query to a UDP ClusterIP and waits for the answer;
//! - `echo`: one long-lived TCP connection through a TCP ClusterIP: a line every 100 ms, each
//!   echoed back (the conntrack entry must keep its backend);
//! - `connect`: every 250 ms a new TCP connection to the same ClusterIP, which must be answered
//!   with the backend's greeting.
//!
//! Every request has 3 s to be answered; one that is not is a failure, recorded with its time
//! and reason. Nothing is retried: a loss is a failure.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{in_netns_thread, Lab};

const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// The loops' paces: a UDP query, an echoed line, a new connection.
const UDP_EVERY: Duration = Duration::from_millis(100);
const ECHO_EVERY: Duration = Duration::from_millis(100);
const CONNECT_EVERY: Duration = Duration::from_millis(250);

/// What one loop saw.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub sent: u64,
    pub answered: u64,
    /// (seconds since the traffic started, what failed).
    pub failures: Vec<(f64, String)>,
}

/// All three loops.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub udp: Counts,
    pub echo: Counts,
    pub connect: Counts,
}

impl Report {
    pub fn answered(&self) -> u64 {
        self.udp.answered + self.echo.answered + self.connect.answered
    }

    pub fn failures(&self) -> usize {
        self.udp.failures.len() + self.echo.failures.len() + self.connect.failures.len()
    }

    /// Asserts that each loop answered, since `earlier` (a report taken `ran` before this one),
    /// at least as many requests as it must have if it ran the whole time: a loop waits at
    /// most [`ANSWER_WITHIN`] per request plus its pace, so one that ran answers at least one
    /// request per such period, on any machine however loaded (a faster machine answers
    /// more; a count of requests per second would measure the pods' forking servers).
    pub fn assert_ran_since(&self, earlier: &Report, ran: Duration) {
        for (what, now, then, every) in [
            ("udp", &self.udp, &earlier.udp, UDP_EVERY),
            ("echo", &self.echo, &earlier.echo, ECHO_EVERY),
            ("connect", &self.connect, &earlier.connect, CONNECT_EVERY),
        ] {
            let fewest = (ran.as_secs_f64() / (ANSWER_WITHIN + every).as_secs_f64()) as u64;
            assert!(
                now.answered - then.answered >= fewest,
                "the {what} loop ran the whole {ran:?}: {} answered, at least {fewest} expected: \
                 {self:?}",
                now.answered - then.answered
            );
        }
    }
}

pub struct Traffic {
    stop: Arc<AtomicBool>,
    counts: [Arc<Mutex<Counts>>; 3],
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// Starts the three loops in pod namespace `pod` (`client`) against `udp_vip` (answered
    /// with a line) and `tcp_vip` (a server that greets with a line, then echoes lines).
    pub fn start(lab: &Lab, pod: &str, udp_vip: SocketAddr, tcp_vip: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: [Arc<Mutex<Counts>>; 3] = Default::default();
        let t0 = Instant::now();
        let ns = lab.ns(pod);
        let mut threads = Vec::new();
        for (i, c) in counts.iter().enumerate() {
            let (stop, c) = (stop.clone(), c.clone());
            threads.push(in_netns_thread(&ns, move || match i {
                0 => udp_loop(udp_vip, &stop, &c, t0),
                1 => echo_loop(tcp_vip, &stop, &c, t0),
                _ => connect_loop(tcp_vip, &stop, &c, t0),
            }));
        }
        Traffic {
            stop,
            counts,
            threads,
        }
    }

    /// Waits until every loop has `n` answers (at most `secs` seconds: the test fails then);
    /// returns the report then.
    pub fn wait_answered(&self, n: u64, secs: u64) -> Report {
        let t0 = Instant::now();
        loop {
            let r = self.report();
            if r.udp.answered >= n && r.echo.answered >= n && r.connect.answered >= n {
                return r;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "not {n} answers in every loop within {secs} s: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The counts so far.
    pub fn report(&self) -> Report {
        let get = |i: usize| self.counts[i].lock().unwrap().clone();
        Report {
            udp: get(0),
            echo: get(1),
            connect: get(2),
        }
    }

    /// Stops the loops (each finishes its request in flight) and returns the counts.
    pub fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("a traffic loop panicked");
        }
        self.report()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn record(c: &Mutex<Counts>, t0: Instant, r: Result<(), String>) {
    let mut c = c.lock().unwrap();
    c.sent += 1;
    match r {
        Ok(()) => c.answered += 1,
        Err(e) => c.failures.push((t0.elapsed().as_secs_f64(), e)),
    }
}

/// Sleeps until `next` (then moves it on by `every`), or returns false once stopped.
fn pace(next: &mut Instant, every: Duration, stop: &AtomicBool) -> bool {
    if let Some(d) = next.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
    *next = (*next + every).max(Instant::now());
    !stop.load(Ordering::Relaxed)
}

fn udp_loop(vip: SocketAddr, stop: &AtomicBool, c: &Mutex<Counts>, t0: Instant) {
    let mut next = Instant::now();
    let mut seq = 0u64;
    while pace(&mut next, UDP_EVERY, stop) {
        seq += 1;
        let r = (|| {
            let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
            s.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
            s.send_to(format!("query {seq}\n").as_bytes(), vip)
                .map_err(|e| format!("udp send {seq}: {e}"))?;
            let mut buf = [0u8; 512];
            let (n, _) = s
                .recv_from(&mut buf)
                .map_err(|e| format!("udp query {seq}: no answer: {e}"))?;
            let a = String::from_utf8_lossy(&buf[..n]);
            if a.starts_with("answer from web") {
                Ok(())
            } else {
                Err(format!("udp query {seq}: answer {a:?}"))
            }
        })();
        record(c, t0, r);
    }
}

/// Connects and reads the backend's greeting (`webN <pid>`).
fn greet(vip: SocketAddr) -> Result<(TcpStream, BufReader<TcpStream>, String), String> {
    let s = TcpStream::connect_timeout(&vip, ANSWER_WITHIN).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("greeting: {e}"))?;
    if !line.starts_with("web") {
        return Err(format!("greeting {line:?}"));
    }
    Ok((s, r, line.trim().to_string()))
}

fn echo_loop(vip: SocketAddr, stop: &AtomicBool, c: &Mutex<Counts>, t0: Instant) {
    let mut next = Instant::now();
    let mut conn = None;
    let mut seq = 0u64;
    while pace(&mut next, ECHO_EVERY, stop) {
        seq += 1;
        let r = (|| {
            if conn.is_none() {
                let (s, r, _) = greet(vip)?;
                conn = Some((s, r));
            }
            let (s, r) = conn.as_mut().unwrap();
            let msg = format!("ping {seq}\n");
            s.write_all(msg.as_bytes())
                .map_err(|e| format!("echo {seq}: write: {e}"))?;
            let mut line = String::new();
            r.read_line(&mut line)
                .map_err(|e| format!("echo {seq}: {e}"))?;
            if line == msg {
                Ok(())
            } else {
                Err(format!("echo {seq}: got {line:?}"))
            }
        })();
        if r.is_err() {
            conn = None; // a new connection for the next line
        }
        record(c, t0, r);
    }
}

fn connect_loop(vip: SocketAddr, stop: &AtomicBool, c: &Mutex<Counts>, t0: Instant) {
    let mut next = Instant::now();
    while pace(&mut next, CONNECT_EVERY, stop) {
        record(c, t0, greet(vip).map(|_| ()));
    }
}
