//! Shared by the daemon tests: frames, captures, a daemon under test.

#![allow(dead_code)]

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use nodeplane_control::api::client::{call, call_raw};
use nodeplane_control::api::Request;
use pcap_file::pcap::{PcapPacket, PcapWriter};

pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 2, 0x0a];
pub const NODE_CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const CLIENT: [u8; 4] = [10, 244, 1, 10];

pub fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut f, b"hello")
        .unwrap();
    f
}

/// A TCP segment: SYN, or ACK (mid-stream) when `syn` is false.
pub fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 100, 65000);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut f = Vec::new();
    b.write(&mut f, b"GET / HTTP/1.1\r\n").unwrap();
    f
}

pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut w = PcapWriter::new(BufWriter::new(File::create(path).unwrap())).unwrap();
    for (i, f) in frames.iter().enumerate() {
        w.write_packet(&PcapPacket::new(
            Duration::from_micros(i as u64),
            f.len() as u32,
            f,
        ))
        .unwrap();
    }
}

pub fn write_example_state(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in nodeplane_state::example::FILES {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// Waits until `f` returns `Some`, polling every 50 ms, at most `secs`.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A daemon under test: its own temp dir, state dir, socket and log. Killed on drop.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub state: PathBuf,
}

impl Daemon {
    /// Starts `nodeplane run` with the example state and `extra` appended to the config
    /// (e.g. the `io:` section). Waits until generation 1 is published.
    pub fn start(extra: &str) -> Daemon {
        Self::start_in(tempfile::tempdir().unwrap(), extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Daemon {
        let state = dir.path().join("state");
        write_example_state(&state);
        let socket = dir.path().join("np.sock");
        let cfg = dir.path().join("config.yaml");
        // The conntrack snapshot in the test's directory, never the host's /var/lib/nodeplane.
        let snapshot = if extra.contains("conntrack_snapshot:") {
            String::new()
        } else {
            format!(
                "conntrack_snapshot: {}\n",
                dir.path().join("conntrack.snap").display()
            )
        };
        std::fs::write(
            &cfg,
            format!(
                "state: {{ dir: {} }}\ncontrol_socket: {}\nlog_level: debug\n{snapshot}{extra}",
                state.display(),
                socket.display()
            ),
        )
        .unwrap();
        let mut d = Daemon {
            dir,
            child: None,
            socket,
            state,
        };
        d.spawn();
        d
    }

    /// Runs `nodeplane run` on `dir/config.yaml` (already written; its state is the caller's
    /// business, e.g. etcd) with control socket `dir/np.sock`, without waiting for anything.
    pub fn launch(dir: tempfile::TempDir) -> Daemon {
        let mut d = Daemon {
            state: dir.path().join("unused"),
            socket: dir.path().join("np.sock"),
            dir,
            child: None,
        };
        d.run_child();
        d
    }

    /// Runs `nodeplane run` on this daemon's config (its log appended to `daemon.log`) and waits
    /// until generation 1 is published.
    fn spawn(&mut self) {
        self.run_child();
        wait_for("the first publication", 20, || {
            let s = self.try_call(&Request::Status {})?;
            (s["generation"].as_u64()? >= 1 && !s["workers"].as_array()?.is_empty()).then_some(())
        });
    }

    fn run_child(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_nodeplane"))
            .args(["run", "--config"])
            .arg(self.dir.path().join("config.yaml"))
            .stderr(Stdio::from(log))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Stops the daemon with SIGTERM (as systemd does), waits for it, and starts it again on
    /// the same config, state and socket.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            let ok = Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -TERM {pid}");
            let _ = c.wait();
        }
        self.spawn();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn try_call(&self, req: &Request) -> Option<serde_json::Value> {
        call(&self.socket, req).ok()
    }

    pub fn call(&self, req: &Request) -> serde_json::Value {
        call(&self.socket, req).unwrap_or_else(|e| panic!("{req:?}: {e}\nlog:\n{}", self.log()))
    }

    pub fn call_err(&self, line: &str) -> String {
        let r = call_raw(&self.socket, line).unwrap();
        assert!(!r.ok, "{line:?} should fail: {r:?}");
        r.error.unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        self.call(&Request::Status {})
    }

    /// Packets transmitted on `iface` by worker 0.
    pub fn tx(&self, iface: &str) -> u64 {
        self.status()["workers"][0]["io"]["tx"][iface]["packets"]
            .as_u64()
            .unwrap_or(0)
    }

    pub fn drops(&self, reason: &str) -> u64 {
        self.status()["workers"][0]["drops"][reason]
            .as_u64()
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs the CLI against this daemon; returns (success, stdout).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_nodeplane"))
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
