//! The daemon on the lab node for the restart and crash tests: the web pods' echo servers,
//! the example state on the echo port, and `nodeplane run` with AF_XDP (2 workers) and its
//! XDP links pinned in the lab's bpffs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{root_dir, Lab};

/// In each web pod: a TCP echo server on 8081 that first says which pod it is, UDP
/// answers on 5353 (the `dns` ClusterIP's backend port), and on TCP 9050 (which the
/// policy denies to the client pod) a server that says `reached 9050`.
pub fn start_servers(lab: &mut Lab) {
    for w in ["web1", "web2"] {
        for (listen, action) in [
            (
                "TCP-LISTEN:8081,reuseaddr,fork".to_string(),
                format!("SYSTEM:echo {w} $$; cat"),
            ),
            (
                "UDP4-RECVFROM:5353,fork".to_string(),
                format!("SYSTEM:read -r q; echo answer from {w}"),
            ),
            (
                "TCP-LISTEN:9050,reuseaddr,fork".to_string(),
                "SYSTEM:echo reached 9050".to_string(),
            ),
        ] {
            let c = Command::new("ip")
                .args(["netns", "exec", &lab.ns(w), "socat", &listen, &action])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("socat server");
            lab.procs.push(c);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// The example state with `web` and `web-nodeport` on the echo port 8081 (which the
/// policies allow like 8080).
pub fn echo_state(lab: &Lab) -> PathBuf {
    example_state(lab, |name, text| match name {
        "services.yaml" => text.replace("port: 8080 }   # web-", "port: 8081 }   # web-"),
        _ => text,
    })
}

/// The example state copied to the lab's `state` directory: without its static gateway MAC
/// (the daemon resolves the router's), the policies allowing the web pods' echo port 8081
/// like 8080, and each file's text then passed through `edit(file name, text)`.
pub fn example_state(lab: &Lab, edit: impl Fn(&str, String) -> String) -> PathBuf {
    let dir = lab.tmp.join("state");
    fs::create_dir_all(&dir).unwrap();
    for e in fs::read_dir(root_dir().join("examples/state")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let mut text = fs::read_to_string(e.path()).unwrap();
        if name == "interfaces.yaml" {
            text = text
                .lines()
                .filter(|l| !l.contains("gateway_mac:"))
                .collect::<Vec<_>>()
                .join("\n");
        }
        if name == "policies.yaml" {
            text = text.replace("[{ port: 8080 }]", "[{ port: 8080 }, { port: 8081 }]");
        }
        let text = edit(&name, text);
        fs::write(dir.join(&name), text).unwrap();
    }
    dir
}

/// `nodeplane run` (AF_XDP, 2 workers) in the node namespace; SIGKILLed on drop if running.
pub struct Nodeplane {
    pub wrapper: Child,
    pub pid: i32,
    pub socket: PathBuf,
    pub log: PathBuf,
}

/// How [`Nodeplane::launch`] starts the daemon.
pub struct Launch<'a> {
    /// The config's `state:` section, and any other top-level sections (such as `bgp:`), whole.
    pub sections: String,
    /// `io.afxdp.workers`; the start waits until that many run.
    pub workers: usize,
    /// `io.afxdp.pin_dir`, when the XDP links are to be pinned there (`None`: `pin_dir: null`,
    /// never pinned, so that no test touches the default `/sys/fs/bpf/nodeplane`).
    pub pin_dir: Option<&'a Path>,
    /// More keys for `io.afxdp` (`, no_socket: pass`).
    pub afxdp_extra: &'a str,
    /// Names this run's config and log (`nodeplane-{run}.log`).
    pub run: usize,
}

impl<'a> Launch<'a> {
    /// The state directory `state`, 2 workers, no pins, run 1.
    pub fn dir(state: &Path) -> Launch<'a> {
        Launch {
            sections: format!("state: {{ dir: {} }}\n", state.display()),
            workers: 2,
            pin_dir: None,
            afxdp_extra: "",
            run: 1,
        }
    }
}

impl Nodeplane {
    /// `afxdp_extra`: more keys for `io.afxdp` (`, no_socket: pass`).
    pub fn start(
        lab: &Lab,
        state: &Path,
        pin_dir: &Path,
        afxdp_extra: &str,
        run: usize,
    ) -> Nodeplane {
        Nodeplane::launch(
            lab,
            &Launch {
                pin_dir: Some(pin_dir),
                afxdp_extra,
                run,
                ..Launch::dir(state)
            },
        )
    }

    /// [`Nodeplane::start`] with the config's `state:` section (and any other top-level
    /// sections, such as `bgp:`) given whole in `sections`.
    pub fn start_with(
        lab: &Lab,
        sections: &str,
        pin_dir: &Path,
        afxdp_extra: &str,
        run: usize,
    ) -> Nodeplane {
        Nodeplane::launch(
            lab,
            &Launch {
                sections: sections.to_string(),
                workers: 2,
                pin_dir: Some(pin_dir),
                afxdp_extra,
                run,
            },
        )
    }

    /// Writes the config, starts the daemon in the node namespace and waits (at most 10 s)
    /// until it runs its first generation with every worker.
    pub fn launch(lab: &Lab, l: &Launch<'_>) -> Nodeplane {
        let socket = lab.tmp.join("np.sock");
        let log = lab.tmp.join(format!("nodeplane-{}.log", l.run));
        let cfg = lab.tmp.join(format!("config-{}.yaml", l.run));
        let pidf = lab.tmp.join("pid");
        let _ = fs::remove_file(&pidf);
        let pins = match l.pin_dir {
            Some(d) => format!(", pin_dir: {}", d.display()),
            None => ", pin_dir: null".to_string(),
        };
        fs::write(
            &cfg,
            format!(
                "{}control_socket: {}\nlog_level: info\nconntrack_snapshot: {}\nio:\n  afxdp: {{ workers: {}, neigh_refresh: 0.5{pins}{} }}\n",
                l.sections,
                socket.display(),
                lab.tmp.join("conntrack.snap").display(),
                l.workers,
                l.afxdp_extra,
            ),
        )
        .unwrap();
        let wrapper = lab.spawn_nodeplane(&cfg, &pidf, &log);
        let mut np = Nodeplane {
            wrapper,
            pid: 0,
            socket,
            log,
        };
        let t0 = Instant::now();
        loop {
            let ready = np.status().is_some_and(|s| {
                s["generation"].as_u64().unwrap_or(0) >= 1
                    && s["workers"]
                        .as_array()
                        .is_some_and(|w| w.len() == l.workers)
            });
            if ready {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "nodeplane did not start: {}",
                np.log()
            );
            assert!(
                np.wrapper.try_wait().unwrap().is_none(),
                "nodeplane exited: {}",
                np.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        np.pid = fs::read_to_string(&pidf).unwrap().trim().parse().unwrap();
        np
    }

    /// One worker, no pins, the state directory `state`.
    pub fn start_one(lab: &Lab, state: &Path) -> Nodeplane {
        Nodeplane::launch(
            lab,
            &Launch {
                workers: 1,
                ..Launch::dir(state)
            },
        )
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn cli_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_nodeplane"))
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--json")
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        self.cli_json(&["status"])
    }

    /// `nodeplane status --json`; fails the test when the daemon does not answer.
    pub fn stats(&self) -> serde_json::Value {
        self.status()
            .unwrap_or_else(|| panic!("nodeplane status: no answer: {}", self.log()))
    }

    /// Worker 0's counter `field`.
    pub fn worker(&self, field: &str) -> u64 {
        self.stats()["workers"][0][field].as_u64().unwrap_or(0)
    }

    /// Frames dropped for `reason`, every worker's.
    pub fn drops(&self, reason: &str) -> u64 {
        drops_in(&self.stats(), reason)
    }

    /// The generation once the start has settled: the uplink gateway's MAC, when the kernel
    /// resolves it, is published as a generation of its own (not the state's), at a time that
    /// depends on the load; a test that asserts "no new generation" takes its reference here.
    pub fn settled_generation(&self) -> u64 {
        super::wait_until("the uplink gateway MAC to be published", 10, || {
            self.status()
                .is_some_and(|s| s["io"]["neighbour"]["source"] == "kernel")
        });
        self.status().expect("nodeplane status")["generation"]
            .as_u64()
            .expect("generation")
    }

    /// `(original destination port, source port, backend address, worker)` of every TCP
    /// flow, sorted.
    pub fn tcp_flows(&self) -> Vec<(u64, u64, String, u64)> {
        let l = self
            .cli_json(&["ct", "list", "--proto", "tcp"])
            .expect("ct list");
        let mut v: Vec<(u64, u64, String, u64)> = l["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["dport"].as_u64().unwrap(),
                    r["sport"].as_u64().unwrap(),
                    r["backend"].as_str().unwrap_or("-").to_string(),
                    r["worker"].as_u64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// SIGTERM; waits for the exit (at most 10 s). Returns whether it exited 0.
    pub fn stop(self) -> bool {
        self.stop_timed().0
    }

    /// SIGTERM; waits for the exit (at most 10 s). Returns (exited 0, time from the signal to
    /// the exit, the daemon's log). The signal is sent from this process (no `kill` command
    /// to fork in the measured time); the exit is polled every 2 ms.
    pub fn stop_timed(mut self) -> (bool, Duration, String) {
        let pid = nix::unistd::Pid::from_raw(self.pid);
        let t0 = Instant::now();
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let status = loop {
            if let Some(s) = self.wrapper.try_wait().unwrap() {
                break Some(s);
            }
            if t0.elapsed() > Duration::from_secs(10) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let took = t0.elapsed();
        let ok = status.is_some_and(|s| s.success());
        (ok, took, self.log())
    }
}

impl Nodeplane {
    /// SIGKILL (no snapshot, no cleanup: a crash); waits for the exit.
    pub fn kill(mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        let _ = self.wrapper.wait();
    }
}

impl Drop for Nodeplane {
    fn drop(&mut self) {
        if self.wrapper.try_wait().ok().flatten().is_none() {
            if self.pid > 0 {
                let _ = Command::new("kill")
                    .args(["-KILL", &self.pid.to_string()])
                    .status();
            }
            let _ = self.wrapper.kill();
            let _ = self.wrapper.wait();
        }
    }
}

/// Frames dropped for `reason` in a status document (`nodeplane status --json`), every
/// worker's.
pub fn drops_in(st: &serde_json::Value, reason: &str) -> u64 {
    st["workers"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|w| w["drops"][reason].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// Sum of an AF_XDP I/O counter (`io.afxdp.counters.<field>`) over every worker of a status
/// document.
pub fn io_sum(st: &serde_json::Value, field: &str) -> u64 {
    st["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["io"]["afxdp"]["counters"][field].as_u64().unwrap_or(0))
        .sum()
}

/// Frames transmitted on `iface` by every worker of a status document (`io.tx`).
pub fn tx_on(st: &serde_json::Value, iface: &str) -> u64 {
    st["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["io"]["tx"][iface]["packets"].as_u64().unwrap_or(0))
        .sum()
}
