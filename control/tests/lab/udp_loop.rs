//! A UDP request loop in the lab's client pod, read from the test thread: a request every 10 ms
//! to one address (the next one after the answer, or after 10 ms without one), counted by a
//! kernel socket in the pod. The crash and fault tests read how many were sent and answered
//! while they break and repair the node.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::Lab;

/// The loop, in Python (a kernel socket in the pod's namespace). Each line written to it is
/// answered with the number of answers received and of requests sent so far; a line `p` first
/// pauses the sending (no request leaves after the answer), `r` resumes it.
const UDP_LOOP: &str = r#"
import select, socket, sys, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect((sys.argv[1], int(sys.argv[2])))
n = [0]
sent = [0]
go = [True]
lock = threading.Lock()
def loop():
    while True:
        with lock:
            if go[0]:
                try:
                    u.send(b"q\n"); sent[0] += 1
                except OSError:
                    pass
        while True:
            r, _, _ = select.select([u], [], [], 0.01)
            if not r:
                break
            try:
                u.recv(2048); n[0] += 1
            except OSError:
                break
threading.Thread(target=loop, daemon=True).start()
for line in sys.stdin:
    with lock:
        if line.startswith("p"):
            go[0] = False
        elif line.startswith("r"):
            go[0] = True
        print(n[0], sent[0], flush=True)
"#;

/// The running loop; dropping it kills it.
pub struct UdpLoop {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl UdpLoop {
    /// Starts the loop in the `client` pod, sending to `addr:port`; it ends by itself after
    /// 300 s at the latest.
    pub fn start(lab: &Lab, addr: &str, port: u16) -> UdpLoop {
        let mut child = Command::new("timeout")
            .args([
                "300",
                "ip",
                "netns",
                "exec",
                &lab.ns("client"),
                "python3",
                "-c",
            ])
            .arg(UDP_LOOP)
            .args([addr, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        UdpLoop { child, stdin, out }
    }

    /// Answers received so far.
    pub fn answers(&mut self) -> u64 {
        self.counts().0
    }

    /// Waits until `n` more answers than at the call have arrived (at most `secs` seconds:
    /// the test fails then); returns how long that took. Waiting for answers rather than for
    /// a fixed time keeps a loaded machine (python starting slowly, the pods' servers forking
    /// slowly) from failing a check whose traffic simply came later.
    pub fn wait_answers(&mut self, n: u64, secs: u64) -> Duration {
        let t0 = Instant::now();
        let (a0, s0) = self.counts();
        loop {
            let (a, s) = self.counts();
            if a - a0 >= n {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "{} of {n} UDP answers within {secs} s ({} requests sent)",
                a - a0,
                s - s0
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// (answers received, requests sent) so far.
    pub fn counts(&mut self) -> (u64, u64) {
        self.command(b"?\n")
    }

    /// Pauses the sending and waits until every request sent so far has been answered (at
    /// most `secs` seconds), then resumes; returns (answers, requests sent) at that point:
    /// equal unless a request went unanswered. The loop sends every 10 ms whether or not the
    /// last request was answered, so on a loaded machine (the pods' servers fork per request)
    /// many can be in flight at any reading: only a paused loop's counts say whether each one
    /// was answered.
    pub fn settle(&mut self, secs: u64) -> (u64, u64) {
        let t0 = Instant::now();
        let mut c = self.command(b"p\n");
        let in_flight = c.1 - c.0;
        while c.0 < c.1 && t0.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(10));
            c = self.counts();
        }
        self.command(b"r\n");
        eprintln!(
            "UDP loop: {in_flight} request(s) in flight at the pause, {} unanswered after {:?}",
            c.1 - c.0,
            t0.elapsed()
        );
        c
    }

    fn command(&mut self, line: &[u8]) -> (u64, u64) {
        self.stdin.write_all(line).unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let mut f = line.split_whitespace().map(|x| x.parse().unwrap());
        (f.next().unwrap(), f.next().unwrap())
    }
}

impl Drop for UdpLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
