//! Test lab: network namespaces joined by veth pairs, BIRD or FRR routers and our speaker
//! process inside them. Everything is named `np-bgp-<tag>-*` and removed by `Drop`, even on failure.
//! Also used by the control crate's tests (`#[path]`), which run `nodeplane run` in the node
//! namespace instead of `np-bgp-speaker`.
//!
//! ```text
//!   np-bgp-<tag>-r0 (BIRD, 10.0.0.1)  ──veth──  np-bgp-<tag>-n (np-bgp-speaker, 10.0.0.2)
//!   np-bgp-<tag>-r1 (BIRD, 10.0.1.1)  ──veth──┘                             (10.0.1.2)
//! ```
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Built for the bgp crate's tests only (the control crate's tests include this file too).
pub const SPEAKER: Option<&str> = option_env!("CARGO_BIN_EXE_np-bgp-speaker");

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e} (needs root and iproute2/bird2)"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if f() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub struct Lab {
    pub tag: String,
    pub dir: PathBuf,
    pub node_ns: String,
    pub router_ns: Vec<String>,
    children: Vec<Child>,
    /// Children that clean up after themselves on SIGTERM (FRR's bgpd removes its
    /// `/var/tmp/frr/bgpd.<pid>` directory); Drop terminates these before killing.
    term_first: Vec<usize>,
}

impl Lab {
    /// A node namespace with `routers` router namespaces, router i at 10.0.i.1 / fd00:i::1,
    /// the node at 10.0.i.2 / fd00:i::2.
    pub fn new(tag: &str, routers: usize) -> Lab {
        assert!(tag.len() <= 8, "tag too long for interface names");
        let dir = std::env::temp_dir().join(format!("np-bgp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let node_ns = format!("np-bgp-{tag}-n");
        let router_ns: Vec<String> = (0..routers).map(|i| format!("np-bgp-{tag}-r{i}")).collect();
        let lab = Lab {
            tag: tag.into(),
            dir,
            node_ns: node_ns.clone(),
            router_ns: router_ns.clone(),
            children: Vec::new(),
            term_first: Vec::new(),
        };
        for ns in std::iter::once(&node_ns).chain(&router_ns) {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        for (i, r) in router_ns.iter().enumerate() {
            let (a, b) = (format!("npb{tag}{i}a"), format!("npb{tag}{i}b"));
            sh(&[
                "ip", "link", "add", &a, "netns", r, "type", "veth", "peer", "name", &b, "netns",
                &node_ns,
            ]);
            for (ns, dev, host) in [(r, &a, 1), (&node_ns, &b, 2)] {
                sh(&[
                    "ip",
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("10.0.{i}.{host}/24"),
                    "dev",
                    dev,
                ]);
                sh(&[
                    "ip",
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("fd00:{i}::{host}/64"),
                    "dev",
                    dev,
                    "nodad",
                ]);
                sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            }
        }
        lab
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        // Write-then-rename so the speaker never reads half a file.
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }

    /// Starts BIRD in router namespace `i` with the given `protocol bgp` bodies.
    pub fn bird(&mut self, i: usize, protocols: &str) -> Bird {
        let conf = self.write(
            &format!("bird{i}.conf"),
            &bird_conf(&format!("10.0.{i}.1"), protocols),
        );
        let (child, bird) = start_bird(&self.router_ns[i], &conf, &self.dir, &format!("bird{i}"));
        self.children.push(child);
        bird
    }

    /// Starts FRR's `bgpd` in router namespace `i` with the given `router bgp` section: no
    /// zebra, no kernel routes, no system service, its vty socket in the lab directory.
    /// `-S` skips the privilege drop (root is not in the `frrvty` group on a test machine).
    pub fn frr(&mut self, i: usize, router_bgp: &str) -> Frr {
        assert!(
            Path::new(FRR_BGPD).exists(),
            "{FRR_BGPD} missing (apt-get install frr)"
        );
        assert!(
            Command::new("vtysh")
                .arg("--help")
                .stdout(Stdio::null())
                .status()
                .is_ok(),
            "vtysh missing (apt-get install frr)"
        );
        let conf = self.write(
            &format!("frr{i}.conf"),
            &format!("frr defaults traditional\nhostname r{i}\n!\n{router_bgp}\n!\n"),
        );
        let vty = self.path(&format!("frr{i}"));
        std::fs::create_dir_all(&vty).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.router_ns[i], FRR_BGPD, "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(vty.join("bgpd.pid"))
            .arg("-z")
            .arg(vty.join("zserv.api"))
            .args([
                "--no_zebra",
                "--no_kernel",
                "--vty_port",
                "0",
                "--skip_runas",
            ])
            .arg("--vty_socket")
            .arg(&vty)
            .args(["--log", "stdout", "--log-level", "info"])
            .stdout(
                // Appended: a test that restarts the router keeps both runs' logs.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.path(&format!("frr{i}.log")))
                    .unwrap(),
            )
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {FRR_BGPD}: {e} (apt-get install frr)"));
        self.children.push(child);
        let idx = self.children.len() - 1;
        self.term_first.push(idx);
        let frr = Frr { vty, child: idx };
        wait_until("FRR bgpd vty socket", Duration::from_secs(5), || {
            frr.try_json("show bgp summary json").is_some()
        });
        frr
    }

    /// Starts our speaker in the node namespace; returns its index for `signal`/`kill`.
    pub fn speaker(&mut self, config: &str, state: &str) -> usize {
        let cfg = self.write("bgp.yaml", config);
        let st = self.write("state.yaml", state);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("speaker.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node_ns])
            .arg(SPEAKER.expect("np-bgp-speaker is built for the bgp crate's tests"))
            .arg("--config")
            .arg(cfg)
            .arg("--state")
            .arg(st)
            .arg("--status-socket")
            .arg(self.path("status.sock"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start the speaker");
        self.children.push(child);
        self.children.len() - 1
    }

    /// Spawns any command in router namespace `i` (kept and killed with the lab).
    pub fn spawn_in_router(&mut self, i: usize, args: &[&str]) -> usize {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.router_ns[i]])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path(&format!("cmd{i}.log"))).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    pub fn spawn_in_node(&mut self, args: &[&str]) -> usize {
        std::fs::write(self.path("node-cmd.log"), "").unwrap();
        self.spawn_in_node_log(args, "node-cmd.log")
    }

    /// Spawns a command in the node namespace with its stderr appended to `log` (kept across
    /// restarts; shown when a test fails).
    pub fn spawn_in_node_log(&mut self, args: &[&str], log: &str) -> usize {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(log))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node_ns])
            .args(args)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    pub fn signal(&self, child: usize, sig: &str) {
        sh(&[
            "kill",
            &format!("-{sig}"),
            &self.children[child].id().to_string(),
        ]);
    }

    pub fn kill(&mut self, child: usize) {
        let c = &mut self.children[child];
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Waits for a child to exit by itself; true if it did within `timeout`.
    pub fn exited(&mut self, child: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(st)) = self.children[child].try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn status(&self) -> nodeplane_bgp::SpeakerStatus {
        nodeplane_bgp::query_status(&self.path("status.sock")).expect("status socket")
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for &i in &self.term_first {
            let _ = Command::new("kill")
                .args(["-TERM", &self.children[i].id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        for &i in &self.term_first {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(2)
                && matches!(self.children[i].try_wait(), Ok(None))
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            for f in [
                "speaker.log",
                "bird0.log",
                "bird1.log",
                "frr0.log",
                "frr1.log",
                "cmd0.log",
                "node-cmd.log",
                "daemon.log",
            ] {
                let s = self.log(f);
                if !s.is_empty() {
                    eprintln!("---- {f} ----\n{}", &s[s.len().saturating_sub(3000)..]);
                }
            }
        }
        for ns in std::iter::once(&self.node_ns).chain(&self.router_ns) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Bird {
    pub sock: PathBuf,
}

impl Bird {
    pub fn try_cmd(&self, cmd: &str) -> Option<String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.sock)
            .args(cmd.split_whitespace())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn cmd(&self, cmd: &str) -> String {
        self.try_cmd(cmd)
            .unwrap_or_else(|| panic!("birdc {cmd} failed"))
    }

    pub fn established(&self, proto: &str) -> bool {
        self.try_cmd(&format!("show protocols {proto}"))
            .is_some_and(|s| s.contains("Established"))
    }

    /// The `show route all` block of one prefix, if BIRD has it.
    pub fn route(&self, prefix: &str) -> Option<String> {
        let out = self.try_cmd(&format!("show route {prefix} all"))?;
        out.contains(prefix).then_some(out)
    }

    /// Waits until BIRD has `prefix` (at most `timeout`) and returns `show route ... all`.
    pub fn wait_route(&self, prefix: &str, timeout: Duration) -> String {
        wait_until(&format!("{prefix} at BIRD"), timeout, || {
            self.route(prefix).is_some()
        });
        self.route(prefix).unwrap()
    }
}

/// A whole BIRD config: router id, device and direct protocols, then `protocols`.
pub fn bird_conf(router_id: &str, protocols: &str) -> String {
    format!(
        "router id {router_id};\nlog stderr all;\nprotocol device {{ }}\n\
         protocol direct {{ ipv4; ipv6; }}\n{protocols}\n"
    )
}

/// Starts BIRD with config `conf` in namespace `ns`; its control socket, pid file and log
/// (stderr, appended: a restarted BIRD keeps the first run's lines) are `<dir>/<name>.sock`,
/// `.pid`, `.log`. Waits until it answers (at most 5 s). The caller owns the process.
pub fn start_bird(ns: &str, conf: &Path, dir: &Path, name: &str) -> (Child, Bird) {
    let sock = dir.join(format!("{name}.sock"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "bird", "-f", "-c"])
        .arg(conf)
        .arg("-s")
        .arg(&sock)
        .arg("-P")
        .arg(dir.join(format!("{name}.pid")))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("cannot start bird (apt-get install bird2)");
    let bird = Bird { sock };
    wait_until("bird control socket", Duration::from_secs(5), || {
        bird.try_cmd("show status")
            .is_some_and(|s| s.contains("Daemon is up"))
    });
    (child, bird)
}

/// A BIRD `protocol bgp` block.
pub fn bird_bgp(
    name: &str,
    local: &str,
    local_as: u32,
    neighbor: &str,
    neighbor_as: u32,
    extra: &str,
) -> String {
    format!(
        "protocol bgp {name} {{\n  local {local} as {local_as};\n  neighbor {neighbor} as {neighbor_as};\n\
         \x20 connect retry time 1;\n  error wait time 1, 2;\n  {extra}\n\
         \x20 ipv4 {{ import all; export none; }};\n  ipv6 {{ import all; export none; }};\n}}\n"
    )
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

pub const FRR_BGPD: &str = "/usr/lib/frr/bgpd";

/// FRR's bgpd in a router namespace, queried through `vtysh` on its own vty socket.
pub struct Frr {
    pub vty: PathBuf,
    /// Index among the lab's children, for `Lab::signal`/`Lab::kill`.
    pub child: usize,
}

impl Frr {
    /// Runs one `vtysh -c` command against this bgpd; None if vtysh fails.
    pub fn try_cmd(&self, cmd: &str) -> Option<String> {
        let out = Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&self.vty)
            .args(["-d", "bgpd", "-c", cmd])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies configuration lines under `router bgp ASN` (`configure terminal` first).
    pub fn configure(&self, asn: u32, lines: &[&str]) {
        let mut cmd = Command::new("vtysh");
        cmd.arg("--vty_socket")
            .arg(&self.vty)
            .args(["-d", "bgpd", "-c", "configure terminal", "-c"])
            .arg(format!("router bgp {asn}"));
        for l in lines {
            cmd.args(["-c", l]);
        }
        let out = cmd
            .output()
            .expect("cannot run vtysh (apt-get install frr)");
        // vtysh exits 0 even for a rejected line; it says so on stdout.
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !text.contains('%'),
            "vtysh config {lines:?} failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn try_json(&self, cmd: &str) -> Option<serde_json::Value> {
        serde_json::from_str(&self.try_cmd(cmd)?).ok()
    }

    pub fn json(&self, cmd: &str) -> serde_json::Value {
        self.try_json(cmd)
            .unwrap_or_else(|| panic!("vtysh -c '{cmd}' failed or gave no JSON"))
    }

    /// `show bgp neighbors PEER json` for one peer (Null if FRR does not know it).
    pub fn neighbor(&self, peer: &str) -> serde_json::Value {
        self.json(&format!("show bgp neighbors {peer} json"))[peer].clone()
    }

    pub fn state(&self, peer: &str) -> String {
        self.neighbor(peer)["bgpState"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn established(&self, peer: &str) -> bool {
        self.state(peer) == "Established"
    }

    /// The paths FRR holds for one prefix (`ipv4` or `ipv6` unicast table), if any.
    pub fn paths(&self, afi: &str, prefix: &str) -> Option<Vec<serde_json::Value>> {
        let t = self.try_json(&format!("show bgp {afi} unicast json"))?;
        t["routes"][prefix].as_array().cloned()
    }
}
