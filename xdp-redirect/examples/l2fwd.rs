//! Raw AF_XDP l2fwd over nodeplane's socket API, for the end-to-end benchmark: every IP frame
//! arriving on IFACE is steered to the worker (IFACE is treated as a pod interface), its MACs
//! are swapped and it is sent back out of the socket it came from. Prints packets per second
//! each second; stops on SIGTERM/SIGINT or after `--seconds`.
//!
//! ```text
//! ip netns exec NS cargo run --release -p nodeplane-xdp --example l2fwd -- IFACE \
//!     [--queues 2] [--seconds 10] [--generic] [--copy]
//! ```
//!
//! `--copy` emulates a UMEM per socket: each frame is copied into a fresh frame for TX and the
//! received one recycled, which is what forwarding between sockets with separate UMEMs costs.
//! The ratio against the default (descriptor hand-off in a shared UMEM) is the figure behind
//! the one-UMEM-per-worker choice in `src/xsk.rs`.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use nix::sys::{
    signal::{SigSet, Signal},
    signalfd::{SfdFlags, SignalFd},
};
use nodeplane_dataplane::afxdp::{Action, SocketId, XskBinding, XskConfig, XskWorker};
use nodeplane_xdp::{AttachMode, Loader, SteeringConfig};

struct Args {
    iface: String,
    queues: u32,
    seconds: Option<u64>,
    generic: bool,
    copy: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        iface: String::new(),
        queues: 1,
        seconds: None,
        generic: false,
        copy: false,
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--queues" => {
                a.queues = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&q| (1..=64).contains(&q))
                    .ok_or("--queues needs 1..=64")?
            }
            "--seconds" => {
                a.seconds = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--seconds needs a number")?,
                )
            }
            "--generic" => a.generic = true,
            "--copy" => a.copy = true,
            s if !s.starts_with('-') && a.iface.is_empty() => a.iface = s.to_owned(),
            s => return Err(format!("unknown argument {s}")),
        }
    }
    if a.iface.is_empty() {
        return Err("usage: l2fwd IFACE [--queues N] [--seconds S] [--generic] [--copy]".into());
    }
    Ok(a)
}

#[inline]
fn swap_macs(f: &mut [u8]) {
    if f.len() >= 12 {
        let (dst, rest) = f.split_at_mut(6);
        dst.swap_with_slice(&mut rest[..6]);
    }
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // Signals are read from a signalfd between bursts: no handler, no unsafe.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK)?;

    let mut loader = Loader::load()?;
    let mode = if a.generic {
        loader.attach_with_mode(&a.iface, a.queues, AttachMode::Skb)?;
        AttachMode::Skb
    } else {
        loader.attach(&a.iface, a.queues)?
    };
    let ifindex = loader.attached()[0].ifindex;
    loader.apply(&SteeringConfig {
        pod_ifindexes: vec![ifindex],
        ..SteeringConfig::default()
    })?;
    let bindings: Vec<XskBinding<'_>> = (0..a.queues)
        .map(|queue| XskBinding {
            iface: &a.iface,
            queue,
        })
        .collect();
    let mut w = XskWorker::new(&XskConfig::default(), &bindings)?;
    loader.register_sockets(w.registrations())?;
    println!(
        "l2fwd on {} ({mode} XDP, {} queues, {})",
        a.iface,
        a.queues,
        if a.copy {
            "copy into a new frame"
        } else {
            "descriptor hand-off"
        }
    );

    let ids: Vec<SocketId> = w.socket_ids().collect();
    let start = Instant::now();
    let mut tick = start;
    let (mut fwd, mut last_fwd, mut total) = (0u64, 0u64, 0u64);
    let mut samples = Vec::new();
    loop {
        let mut got = 0;
        for &id in &ids {
            let mut b = w.rx_burst(id, 64);
            got += b.len();
            if a.copy {
                // Copy each frame into a new one for TX; the received frame is recycled
                // (its action stays Drop).
                let mut buf = [0u8; 2048];
                for i in 0..b.len() {
                    let f = b.frame(i);
                    let len = f.len().min(buf.len());
                    buf[..len].copy_from_slice(&f[..len]);
                    swap_macs(&mut buf[..len]);
                    fwd += u64::from(b.tx_copy(id, &buf[..len]).is_ok());
                }
                b.finish();
            } else {
                for (frame, action) in b.frames_mut() {
                    swap_macs(frame);
                    *action = Action::Tx(id);
                }
                fwd += b.len() as u64;
                b.finish();
            }
        }
        if got == 0 {
            w.service();
            w.wait_rx(1)?;
        }
        let now = Instant::now();
        if now.duration_since(tick) >= Duration::from_secs(1) {
            let secs = now.duration_since(tick).as_secs_f64();
            let pps = (fwd - last_fwd) as f64 / secs;
            println!(
                "{:6.1}s  {:>10.0} pps forwarded",
                (now - start).as_secs_f64(),
                pps
            );
            samples.push(pps);
            total += fwd - last_fwd;
            last_fwd = fwd;
            tick = now;
            if signals.read_signal()?.is_some() {
                break;
            }
            if a.seconds
                .is_some_and(|s| now.duration_since(start).as_secs() >= s)
            {
                break;
            }
        }
    }
    let mean = if samples.is_empty() {
        0.0
    } else {
        samples.iter().sum::<f64>() / samples.len() as f64
    };
    println!("total {total} frames forwarded, mean {mean:.0} pps");
    for &id in &ids {
        println!("socket {:?}: {:?}", w.binding(id), w.stats(id));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("l2fwd: {e}");
            ExitCode::FAILURE
        }
    }
}
