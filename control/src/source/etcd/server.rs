//! A real single-member etcd on loopback, for the etcd tests and the fleet benchmark: random free
//! ports, a private data directory, killed (SIGKILL) and its directory removed on drop. It can be
//! killed and restarted on the same ports and data, which is how the outage tests and the fleet
//! simulation take the store away.
//!
//! [`LocalEtcd::start`] serves plain http; [`LocalEtcd::builder`] adds TLS on the client port
//! (optionally with client certificates required) and a short auth-token TTL. Readiness is
//! probed with `GET /health` on a separate plain-http metrics listener
//! (`--listen-metrics-urls`), so the probe works whatever the client port speaks.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The etcd binary (Debian's `etcd-server` package installs it here).
pub const ETCD_BIN: &str = "/usr/bin/etcd";

#[derive(Debug, thiserror::Error)]
pub enum LocalEtcdError {
    #[error("etcd binary {0} is missing (install Debian's etcd-server package)")]
    Missing(String),
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd on {endpoint} not healthy after {secs} s (log: {log})")]
    NotReady {
        endpoint: String,
        secs: u64,
        log: String,
    },
}

/// One etcd process on `127.0.0.1:<client_port>`.
#[derive(Debug)]
pub struct LocalEtcd {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// Plain-http `/health` and `/metrics` (the readiness probe).
    metrics_port: u16,
    opts: LocalEtcdBuilder,
}

/// TLS on the client URLs (the peer URL of the single member stays plain: it has no peers).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// PEM server certificate (`--cert-file`); must name 127.0.0.1 (and/or localhost).
    pub cert_file: PathBuf,
    /// PEM key of `cert_file` (`--key-file`).
    pub key_file: PathBuf,
    /// `Some(ca)`: clients must present a certificate signed by `ca`
    /// (`--client-cert-auth --trusted-ca-file ca`); `None`: any client may connect.
    pub client_ca_file: Option<PathBuf>,
}

/// How to start a [`LocalEtcd`]; `LocalEtcd::builder().start()` is [`LocalEtcd::start`].
#[derive(Debug, Clone, Default)]
pub struct LocalEtcdBuilder {
    tls: Option<ServerTls>,
    auth_token_ttl_s: Option<u32>,
}

impl LocalEtcdBuilder {
    /// Serve the client URL over https (the endpoint becomes `https://127.0.0.1:<port>`).
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// `--auth-token-ttl`: how long an idle simple auth token lives (etcd's default: 300 s).
    pub fn auth_token_ttl(mut self, secs: u32) -> Self {
        self.auth_token_ttl_s = Some(secs);
        self
    }

    /// Starts etcd and waits until `/health` answers (at most 20 s).
    pub fn start(self) -> Result<LocalEtcd, LocalEtcdError> {
        if !Path::new(ETCD_BIN).exists() {
            return Err(LocalEtcdError::Missing(ETCD_BIN.into()));
        }
        // etcd would exit with the reason in its log; say it here instead.
        if let Some(t) = &self.tls {
            let files = [
                Some(&t.cert_file),
                Some(&t.key_file),
                t.client_ca_file.as_ref(),
            ];
            for f in files.into_iter().flatten() {
                std::fs::metadata(f).map_err(|source| LocalEtcdError::Io {
                    what: format!("read TLS file {}", f.display()),
                    source,
                })?;
            }
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "np-etcd-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|source| LocalEtcdError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
        let mut me = LocalEtcd {
            child: None,
            dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            metrics_port: free_port()?,
            opts: self,
        };
        me.spawn()?;
        Ok(me)
    }
}

fn free_port() -> Result<u16, LocalEtcdError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| LocalEtcdError::Io {
        what: "bind a loopback port".into(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| LocalEtcdError::Io {
            what: "read a bound port".into(),
            source,
        })
}

impl LocalEtcd {
    /// A plain-http etcd with default settings; waits until `/health` answers (at most 20 s).
    pub fn start() -> Result<Self, LocalEtcdError> {
        Self::builder().start()
    }

    pub fn builder() -> LocalEtcdBuilder {
        LocalEtcdBuilder::default()
    }

    /// `http://127.0.0.1:<port>`, or `https://` when started with TLS.
    pub fn endpoint(&self) -> String {
        let scheme = if self.opts.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The plain-http port of `/health` and `/metrics` (etcd's Prometheus counters, e.g.
    /// `grpc_server_started_total` by method: how many requests clients made).
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// Kills the process (SIGKILL: no graceful shutdown, like a crashed or unreachable store).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data directory.
    pub fn restart(&mut self) -> Result<(), LocalEtcdError> {
        self.kill();
        self.spawn()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) -> Result<(), LocalEtcdError> {
        let log_path = self.log_path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| LocalEtcdError::Io {
                what: format!("open {}", log_path.display()),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| LocalEtcdError::Io {
            what: "clone log handle".into(),
            source,
        })?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(ETCD_BIN);
        cmd.arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", self.metrics_port));
        if let Some(t) = &self.opts.tls {
            cmd.arg("--cert-file")
                .arg(&t.cert_file)
                .arg("--key-file")
                .arg(&t.key_file);
            if let Some(ca) = &t.client_ca_file {
                cmd.arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(ca);
            }
        }
        if let Some(ttl) = self.opts.auth_token_ttl_s {
            cmd.arg("--auth-token-ttl").arg(ttl.to_string());
        }
        let child = cmd
            .arg("--name")
            .arg("np")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("np={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|source| LocalEtcdError::Io {
                what: format!("spawn {ETCD_BIN}"),
                source,
            })?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(20))
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), LocalEtcdError> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    break; // exited: report below
                }
            }
            if self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(LocalEtcdError::NotReady {
            endpoint: self.endpoint(),
            secs: limit.as_secs(),
            log: self.log_path().display().to_string(),
        })
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.metrics_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
