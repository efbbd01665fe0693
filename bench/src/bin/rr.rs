//! TCP request/response client and server of the pod-traffic benchmark
//! (`bench/e2e/throughput.sh`): netperf's TCP_RR and TCP_CRR, which Debian does not ship, on
//! `std::net` only.
//!
//! ```text
//! rr server --listen ADDR [--threads 8]
//! rr rr  --connect ADDR [--seconds 10]                 # one connection, 1-byte ping-pong
//! rr crr --connect ADDR [--seconds 10] [--threads 4]   # a new connection per transaction
//! ```
//!
//! The protocol is one byte each way. The server answers every byte it reads with one byte;
//! after answering `C` it closes the connection first. So in `crr` the server takes the
//! TIME_WAIT and the client's ephemeral port is free again at once (a client closing first
//! would run out of its ~28k ports within seconds at several thousand connections per
//! second, as netperf does without its own port cycling).
//!
//! Both clients print one JSON line on stdout and exit 1 if no transaction completed: `rr`
//! with transactions/s and latency percentiles (µs, wall clock of write + read on the client),
//! `crr` with connections/s and the percentiles of a whole connection (connect to the server's
//! close). A transaction that does not complete within `--timeout` (default 2 s) counts as an
//! error (a dataplane that drops the traffic is reported, not waited for).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const REQ_KEEP: u8 = b'R';
const REQ_CLOSE: u8 = b'C';

#[derive(Debug)]
struct Args {
    mode: String,
    addr: SocketAddr,
    seconds: f64,
    threads: usize,
    timeout: Duration,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: rr server --listen ADDR [--threads N]\n       \
         rr rr --connect ADDR [--seconds S] [--timeout S]\n       \
         rr crr --connect ADDR [--seconds S] [--threads N] [--timeout S]"
    );
    ExitCode::from(2)
}

fn parse_args() -> Option<Args> {
    let mut it = std::env::args().skip(1);
    let mode = it.next()?;
    let mut addr = None;
    let mut seconds = 10.0;
    let mut threads = if mode == "server" { 8 } else { 4 };
    let mut timeout = Duration::from_secs(2);
    while let Some(flag) = it.next() {
        let value = it.next()?;
        match flag.as_str() {
            "--listen" | "--connect" => addr = Some(value.parse().ok()?),
            "--seconds" => seconds = value.parse().ok()?,
            "--threads" => threads = value.parse().ok().filter(|&n| n > 0)?,
            "--timeout" => timeout = Duration::from_secs_f64(value.parse().ok()?),
            _ => return None,
        }
    }
    matches!(mode.as_str(), "server" | "rr" | "crr").then_some(Args {
        mode,
        addr: addr?,
        seconds,
        threads,
        timeout,
    })
}

fn main() -> ExitCode {
    let Some(args) = parse_args() else {
        return usage();
    };
    match args.mode.as_str() {
        "server" => server(&args),
        "rr" => rr(&args),
        _ => crr(&args),
    }
}

/// A fixed set of threads each accepting on the one listener and serving the connection it
/// got until it ends: no thread is spawned per connection (that would be in `crr`'s figure).
fn server(args: &Args) -> ExitCode {
    let listener = match TcpListener::bind(args.addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rr: failed to listen on {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    let threads: Vec<_> = (0..args.threads)
        .filter_map(|_| listener.try_clone().ok())
        .map(|l| {
            std::thread::spawn(move || loop {
                if let Ok((s, _)) = l.accept() {
                    serve(s);
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}

fn serve(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) => {}
            _ => return,
        }
        if s.write_all(&b).is_err() {
            return;
        }
        if b[0] == REQ_CLOSE {
            return; // dropped: the server closes first (see the module doc)
        }
    }
}

/// Latency percentiles in µs over samples in ns (sorted in place).
fn percentiles(samples: &mut [u32]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q) as usize).min(samples.len() - 1);
        f64::from(samples[i]) / 1000.0
    };
    (at(0.5), at(0.9), at(0.99))
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "null".into()
    }
}

fn connect(args: &Args) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&args.addr, args.timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(args.timeout))?;
    s.set_write_timeout(Some(args.timeout))?;
    Ok(s)
}

fn transact(s: &mut TcpStream, req: u8) -> std::io::Result<()> {
    s.write_all(&[req])?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)
}

/// TCP_RR: one connection, one byte each way, as fast as the round trip allows.
fn rr(args: &Args) -> ExitCode {
    let mut s = match connect(args) {
        Ok(s) => s,
        Err(e) => return report_failure("rr", &format!("connect {}: {e}", args.addr)),
    };
    // 0.5 s of warm-up (caches, conntrack entry, the scheduler's placement), not recorded.
    let warm = Instant::now() + Duration::from_millis(500);
    while Instant::now() < warm {
        if let Err(e) = transact(&mut s, REQ_KEEP) {
            return report_failure("rr", &format!("warm-up transaction: {e}"));
        }
    }
    let mut samples: Vec<u32> = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let mut error = None;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        if let Err(e) = transact(&mut s, REQ_KEEP) {
            error = Some(e.to_string());
            break;
        }
        samples.push(u32::try_from(t0.elapsed().as_nanos()).unwrap_or(u32::MAX));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = s.shutdown(Shutdown::Both);
    let n = samples.len();
    let (p50, p90, p99) = percentiles(&mut samples);
    println!(
        "{{\"mode\":\"rr\",\"ok\":{},\"transactions\":{n},\"seconds\":{elapsed:.3},\"tps\":{:.1},\
         \"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"error\":{}}}",
        n > 0 && error.is_none(),
        n as f64 / elapsed,
        num(p50),
        num(p90),
        num(p99),
        json_str(error.as_deref()),
    );
    if n > 0 && error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// TCP_CRR: `--threads` clients, each opening a connection per transaction.
fn crr(args: &Args) -> ExitCode {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let results: Vec<(Vec<u32>, u64, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.threads)
            .map(|_| {
                scope.spawn(move || {
                    let mut samples: Vec<u32> = Vec::with_capacity(1 << 18);
                    let mut errors = 0u64;
                    let mut last_error = None;
                    while Instant::now() < end {
                        let t0 = Instant::now();
                        match one_connection(args) {
                            Ok(()) => samples
                                .push(u32::try_from(t0.elapsed().as_nanos()).unwrap_or(u32::MAX)),
                            Err(e) => {
                                errors += 1;
                                last_error = Some(e.to_string());
                            }
                        }
                    }
                    (samples, errors, last_error)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut samples: Vec<u32> = Vec::new();
    let mut errors = 0;
    let mut last_error = None;
    for (s, e, le) in results {
        samples.extend(s);
        errors += e;
        last_error = le.or(last_error);
    }
    let n = samples.len();
    let (p50, p90, p99) = percentiles(&mut samples);
    println!(
        "{{\"mode\":\"crr\",\"ok\":{},\"connections\":{n},\"errors\":{errors},\"threads\":{},\
         \"seconds\":{elapsed:.3},\"cps\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\
         \"error\":{}}}",
        n > 0,
        args.threads,
        n as f64 / elapsed,
        num(p50),
        num(p90),
        num(p99),
        json_str(last_error.as_deref()),
    );
    if n > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Connect, one byte each way, then wait for the server's close (it closes first).
fn one_connection(args: &Args) -> std::io::Result<()> {
    let mut s = connect(args)?;
    transact(&mut s, REQ_CLOSE)?;
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => Ok(()),
        Ok(_) => Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "data after the answer",
        )),
        Err(e) => Err(e),
    }
}

fn report_failure(mode: &str, error: &str) -> ExitCode {
    println!(
        "{{\"mode\":\"{mode}\",\"ok\":false,\"error\":{}}}",
        json_str(Some(error))
    );
    ExitCode::FAILURE
}

fn json_str(s: Option<&str>) -> String {
    match s {
        None => "null".into(),
        Some(s) => {
            let escaped: String = s
                .chars()
                .flat_map(|c| match c {
                    '"' => vec!['\\', '"'],
                    '\\' => vec!['\\', '\\'],
                    c if c.is_control() => vec![' '],
                    c => vec![c],
                })
                .collect();
            format!("\"{escaped}\"")
        }
    }
}
