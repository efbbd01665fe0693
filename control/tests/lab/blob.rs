//! Blobs through the lab with kernel sockets in the namespaces: a UDP echo server and a
//! stop-and-wait UDP blob client (python3), and shell commands in a namespace, for the MTU and
//! jumbo tests (`e2e_mtu.rs`, `e2e_jumbo.rs`).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use super::Lab;

/// A UDP echo server on both families, port `argv[1]`; a 4 MiB receive buffer, so a burst of
/// large datagrams waits rather than being dropped while the server is not scheduled.
const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("::", int(sys.argv[1])))
while True:
    d, a = s.recvfrom(65535)
    s.sendto(d, a)
"#;

/// The client (`ADDR BLOB PORT CHUNK`): the blob in CHUNK-byte datagrams (a 4-byte sequence
/// number in front), each sent until its echo comes back; prints the sha256 of what came back.
const UDP_CLIENT: &str = r#"
import hashlib, socket, sys
addr, blob, port, chunk = sys.argv[1], open(sys.argv[2], "rb").read(), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.3)
back = []
for k in range(0, len(blob), chunk):
    d = (k // chunk).to_bytes(4, "big") + blob[k:k + chunk]
    for attempt in range(30):
        s.sendto(d, (addr, port))
        try:
            while True:
                r = s.recv(65535)
                if r[:4] == d[:4]:
                    break
            back.append(r[4:])
            break
        except socket.timeout:
            continue
    else:
        sys.exit("datagram %d never came back" % (k // chunk))
print(hashlib.sha256(b"".join(back)).hexdigest())
"#;

/// Runs `bash -c cmd` in the lab's namespace `ns` (at most 120 s): (success, stdout trimmed,
/// followed by stderr when it failed).
pub fn sh_in(lab: &Lab, ns: &str, cmd: &str) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["120", "ip", "netns", "exec", &lab.ns(ns), "bash", "-c", cmd])
        .output()
        .expect("run in namespace");
    let mut text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        text.push_str(String::from_utf8_lossy(&out.stderr).trim());
    }
    (out.status.success(), text)
}

/// Starts the UDP echo server in namespace `ns` on `port` (killed with the lab).
pub fn start_udp_echo(lab: &mut Lab, ns: &str, port: u16) {
    let script = lab.tmp.join("udp_echo.py");
    fs::write(&script, UDP_ECHO).unwrap();
    let c = Command::new("ip")
        .args(["netns", "exec", &lab.ns(ns), "python3"])
        .arg(&script)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 UDP echo server");
    lab.procs.push(c);
}

/// Sends `blob` from namespace `ns` to `addr:port` in `chunk`-byte datagrams through the echo
/// server: (success, the sha256 of what came back, or the error).
pub fn udp_blob(
    lab: &Lab,
    ns: &str,
    addr: &str,
    port: u16,
    blob: &Path,
    chunk: usize,
) -> (bool, String) {
    let script = lab.tmp.join("udp_client.py");
    fs::write(&script, UDP_CLIENT).unwrap();
    sh_in(
        lab,
        ns,
        &format!(
            "python3 {} {addr} {} {port} {chunk}",
            script.display(),
            blob.display()
        ),
    )
}
