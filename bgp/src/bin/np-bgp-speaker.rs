//! The speaker as its own process: `np-bgp-speaker --config BGP.yaml --state STATE
//! [--status-socket PATH]`. The same as `nodeplane bgp run`, without the rest of the daemon;
//! the interop tests run it inside a network namespace and freeze, kill and restart it.

use std::path::PathBuf;
use std::process::ExitCode;

use nodeplane_bgp::daemon::{run, RunOptions};

/// The speaker thread's fault lines (`log`), as plain lines on stderr like the rest.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("{}", r.args());
        }
    }
    fn flush(&self) {}
}

fn main() -> ExitCode {
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let mut config = None;
    let mut state = None;
    let mut status_socket = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let slot = match a.as_str() {
            "--config" => &mut config,
            "--state" => &mut state,
            "--status-socket" => &mut status_socket,
            _ => {
                eprintln!("np-bgp-speaker: unknown argument {a:?}");
                return ExitCode::from(2);
            }
        };
        *slot = args.next().map(PathBuf::from);
    }
    let (Some(config), Some(state)) = (config, state) else {
        eprintln!("usage: np-bgp-speaker --config BGP.yaml --state STATE [--status-socket PATH]");
        return ExitCode::from(2);
    };
    match run(&RunOptions {
        config,
        state,
        status_socket,
    }) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("np-bgp-speaker: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
