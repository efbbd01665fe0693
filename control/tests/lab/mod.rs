//! The namespace lab of `scripts/lab.sh` (the example node: router, node, pods) under a private
//! prefix, for the daemon's root tests. `Lab::up` builds it; dropping the `Lab` kills the
//! processes the test started in it and deletes it, also when the test fails. Each test adds
//! its own methods (`impl Lab` in the test file: servers, clients, the daemon's config).

#![allow(dead_code)]

pub mod blob;
pub mod daemon;
pub mod traffic;
pub mod udp_loop;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The repository's root.
pub fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Fails (never skips) when not run as root.
pub fn require_root(what: &str) {
    let out = Command::new("id").arg("-u").output().expect("run id");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "{what} need root (namespaces, XDP, AF_XDP); run them as root"
    );
}

/// Polls `f` every 50 ms until it holds; fails the test after `secs` seconds.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Writes `bytes` random bytes to `path` and returns their sha256 (hex), for transfers that
/// must arrive intact.
pub fn random_blob(path: &Path, bytes: usize) -> String {
    let st = Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/urandom"])
        .stdout(fs::File::create(path).unwrap())
        .status()
        .unwrap();
    assert!(st.success(), "head -c {bytes} /dev/urandom");
    let sum = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&sum.stdout)[..64].to_owned()
}

/// Runs `f` on a new thread that has joined network namespace `ns` (`ip netns` name): sockets it
/// opens and processes it spawns live there. Panics (the test fails) when it cannot join.
pub fn in_netns_thread<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

/// [`in_netns_thread`], waiting for the result.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    in_netns_thread(ns, f)
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

pub struct Lab {
    pub prefix: String,
    pub tmp: PathBuf,
    /// Processes started in the lab (servers, clients): killed on drop.
    pub procs: Vec<Child>,
}

impl Lab {
    /// Connects from namespace `ns` to `addr:port` (socat, `connect_timeout` seconds), sends a
    /// line and returns the first line the server sent (None: no connection, or no answer
    /// within 3 s after connecting). An answering server closes when it has answered, which
    /// ends the client at once; the 3 s are for a server that forks slowly on a loaded machine.
    /// (socat's own default waits 0.5 s after its input's end, which comes at once: under load
    /// the server's first line came later than that now and then.)
    pub fn tcp_line(
        &self,
        ns: &str,
        addr: &str,
        port: u16,
        connect_timeout: u32,
    ) -> Option<String> {
        let mut c = Command::new("timeout")
            .arg((connect_timeout + 4).to_string())
            .args([
                "ip",
                "netns",
                "exec",
                &self.ns(ns),
                "socat",
                "-T3",
                "-t3",
                "STDIO",
            ])
            .arg(format!(
                "TCP:{addr}:{port},connect-timeout={connect_timeout}"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat client");
        if let Some(mut stdin) = c.stdin.take() {
            let _ = stdin.write_all(b"hello\n");
        }
        let out = c.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .next()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
    }

    /// The start of every lab's namespace names in this run: `np-<NP_LAB_TAG>`.
    pub fn names_start() -> String {
        format!("np-{}", std::env::var("NP_LAB_TAG").unwrap_or_default())
    }

    /// A fresh lab named `np-<NP_LAB_TAG><tag><pid><seq>-*` (a leftover of the same name is
    /// deleted first). `NP_LAB_TAG` (environment, default empty) keeps the namespaces of
    /// several runs on one machine apart (`NP_LAB_TAG=ha-`: every lab is `np-ha-*`).
    pub fn up(tag: &str) -> Lab {
        require_root("the lab tests");
        let prefix = format!(
            "{}{tag}{}{}-",
            Lab::names_start(),
            std::process::id() % 10_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let tmp = std::env::temp_dir().join(format!("{prefix}tmp"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).unwrap();
        let lab = Lab {
            prefix,
            tmp,
            procs: Vec::new(),
        };
        lab.script("down");
        lab.script("up");
        lab
    }

    pub fn script(&self, cmd: &str) {
        let out = Command::new("bash")
            .arg(root_dir().join("scripts/lab.sh"))
            .arg(cmd)
            .env("NP_LAB_PREFIX", &self.prefix)
            .output()
            .expect("run lab.sh");
        assert!(
            out.status.success(),
            "lab.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `nodeplane run --config cfg` (the test's build) in the node namespace, stderr to
    /// `log`. `ip netns exec` may fork: the shell writes its own pid to `pidf` and execs
    /// nodeplane, so the pid file names the nodeplane process itself.
    pub fn spawn_nodeplane(&self, cfg: &Path, pidf: &Path, log: &Path) -> Child {
        let script = format!(
            "echo $$ > {}; exec {} run --config {} 2> {}",
            pidf.display(),
            env!("CARGO_BIN_EXE_nodeplane"),
            cfg.display(),
            log.display()
        );
        Command::new("ip")
            .args(["netns", "exec", &self.ns("node"), "bash", "-c", &script])
            .spawn()
            .expect("start nodeplane")
    }

    /// A private bpffs mounted at `<tmp>/bpffs` (in the initial mount namespace, so that
    /// `ip netns exec` sees it and it outlives the daemon), for `io.afxdp.pin_dir`: returns
    /// `<tmp>/bpffs/nodeplane`. Unmounted on drop, which removes every pin in it (the XDP
    /// links detach once no daemon holds them).
    pub fn bpffs(&self) -> PathBuf {
        let dir = self.tmp.join("bpffs");
        fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t bpf at {}", dir.display());
        dir.join("nodeplane")
    }

    /// Runs `args` in the lab's namespace `ns` (`ip netns exec`); fails the test, with its
    /// stderr, unless it succeeds.
    pub fn must(&self, ns: &str, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns)])
            .args(args)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{ns}: {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The full name of the lab's namespace `n` (`node`, `router`, `pod-client`, ...).
    pub fn ns(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }

    /// A counter of `/proc/net/snmp` in the lab's namespace `ns`: `section` is the line's
    /// prefix (`Ip`, `Icmp`, `Udp` ...), `name` the column (`ForwDatagrams`, `InEchos` ...).
    pub fn snmp(&self, ns: &str, section: &str, name: &str) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns), "cat", "/proc/net/snmp"])
            .output()
            .expect("read /proc/net/snmp");
        let text = String::from_utf8_lossy(&out.stdout);
        let head = format!("{section}:");
        let mut lines = text.lines().filter(|l| l.starts_with(&head));
        let (names, values) = (lines.next(), lines.next());
        let (Some(names), Some(values)) = (names, values) else {
            panic!("no {section} lines in {ns}'s /proc/net/snmp: {text}")
        };
        let i = names
            .split_whitespace()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no {section}: {name} in /proc/net/snmp"));
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.script("down");
        let bpffs = self.tmp.join("bpffs");
        if bpffs.exists() {
            let _ = Command::new("umount").arg("-l").arg(&bpffs).status();
        }
        let _ = fs::remove_dir_all(&self.tmp);
    }
}
