//! What `nodeplane bgp status` shows, and the small unix-socket endpoint that serves it: a
//! client connects, the speaker writes one JSON document and closes.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::BgpConfig;
use crate::fsm::{Counters, Negotiated, Neighbor, State};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeakerStatus {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// What the control state asks us to announce.
    pub routes: Vec<IpNet>,
    pub neighbors: Vec<NeighborStatus>,
}

impl Default for SpeakerStatus {
    fn default() -> Self {
        SpeakerStatus {
            local_as: 0,
            router_id: Ipv4Addr::UNSPECIFIED,
            routes: Vec::new(),
            neighbors: Vec::new(),
        }
    }
}

impl SpeakerStatus {
    /// The status of a speaker that is not running (not started yet, or failed to start):
    /// every configured neighbour Idle, with `error` as its last error.
    pub fn not_running(cfg: &BgpConfig, routes: &BTreeSet<IpNet>, error: Option<&str>) -> Self {
        SpeakerStatus {
            local_as: cfg.local_as,
            router_id: cfg.router_id,
            routes: routes.iter().copied().collect(),
            neighbors: cfg
                .neighbors
                .iter()
                .map(|n| NeighborStatus {
                    name: n.display_name(),
                    address: n.address,
                    remote_as: n.remote_as,
                    last_error: error.map(str::to_string),
                    md5: n.md5_password_file.is_some(),
                    ttl_security: n.ttl_security,
                    ..NeighborStatus::default()
                })
                .collect(),
        }
    }
}

impl Default for NeighborStatus {
    fn default() -> Self {
        NeighborStatus {
            name: String::new(),
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            remote_as: 0,
            state: State::Idle,
            established_since_unix_ms: None,
            last_error: None,
            negotiated: None,
            announced: Vec::new(),
            counters: Counters::default(),
            reconnect_in_ms: None,
            md5: false,
            ttl_security: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighborStatus {
    pub name: String,
    pub address: IpAddr,
    pub remote_as: u32,
    pub state: State,
    pub established_since_unix_ms: Option<u64>,
    pub last_error: Option<String>,
    pub negotiated: Option<Negotiated>,
    /// Our Adj-RIB-Out towards this neighbour.
    pub announced: Vec<IpNet>,
    pub counters: Counters,
    /// Idle with backoff: when the next automatic start is due.
    pub reconnect_in_ms: Option<u64>,
    pub md5: bool,
    pub ttl_security: bool,
}

impl NeighborStatus {
    pub(crate) fn of(n: &Neighbor, md5: bool, ttl_security: bool, now: Instant) -> Self {
        NeighborStatus {
            name: n.params.name.clone(),
            address: n.params.peer,
            remote_as: n.params.remote_as,
            state: n.state(),
            established_since_unix_ms: n.established_since().map(unix_ms),
            last_error: n.last_error.clone().map(|e| {
                if md5 && e.starts_with(crate::fsm::CONNECT_NO_ANSWER) {
                    format!(
                        "{e} (TCP-MD5 is on: a key mismatch looks like this, the kernel drops \
                         the segments; see TcpExt TCPMD5Failure in /proc/net/netstat)"
                    )
                } else {
                    e
                }
            }),
            negotiated: n.negotiated().cloned(),
            announced: n.advertised().iter().copied().collect(),
            counters: n.counters.clone(),
            reconnect_in_ms: n.idle_hold_remaining(now).map(|d| d.as_millis() as u64),
            md5,
            ttl_security,
        }
    }

    pub fn uptime(&self) -> Option<Duration> {
        let since = self.established_since_unix_ms?;
        Some(Duration::from_millis(
            unix_ms(SystemTime::now()).saturating_sub(since),
        ))
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Human form, modelled on `birdc show protocols all`.
pub fn format_status(s: &SpeakerStatus) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "BGP speaker: AS {}, router id {}",
        s.local_as, s.router_id
    );
    let _ = writeln!(o, "Routes to announce: {}", s.routes.len());
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<20} {:<12} {:<12} {:<10} Info",
        "Name", "Remote AS", "State", "Since"
    );
    for n in &s.neighbors {
        let since = n.uptime().map(fmt_duration).unwrap_or_else(|| "-".into());
        let info = match (&n.state, &n.last_error) {
            (State::Established, _) => format!("{} prefixes announced", n.announced.len()),
            (_, Some(e)) => e.clone(),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "{:<20} {:<12} {:<12} {:<10} {}",
            n.name,
            n.remote_as,
            format!("{:?}", n.state),
            since,
            info
        );
    }
    for n in &s.neighbors {
        let _ = writeln!(o);
        let _ = writeln!(o, "{}:", n.name);
        let _ = writeln!(o, "  Neighbor address: {}", n.address);
        let _ = writeln!(o, "  Neighbor AS:      {}", n.remote_as);
        let _ = writeln!(o, "  BGP state:        {:?}", n.state);
        if let Some(u) = n.uptime() {
            let _ = writeln!(o, "  Uptime:           {}", fmt_duration(u));
        }
        if let Some(ms) = n.reconnect_in_ms {
            let _ = writeln!(o, "  Reconnect in:     {:.1} s", ms as f64 / 1000.0);
        }
        let _ = writeln!(
            o,
            "  Security:         md5 {}, ttl-security {}",
            on_off(n.md5),
            on_off(n.ttl_security)
        );
        if let Some(g) = &n.negotiated {
            let _ = writeln!(o, "  Neighbor ID:      {}", g.peer_router_id);
            let _ = writeln!(
                o,
                "  Hold timer:       {} s (keepalive {} s)",
                g.hold_time, g.keepalive
            );
            let _ = writeln!(o, "  Families:         {}", g.families.join(" "));
            let _ = writeln!(
                o,
                "  Capabilities:     4-octet AS {}, peer graceful restart {}",
                on_off(g.four_octet_as),
                on_off(g.peer_graceful_restart)
            );
        }
        if let Some(e) = &n.last_error {
            let _ = writeln!(o, "  Last error:       {e}");
        }
        let c = &n.counters;
        let _ = writeln!(
            o,
            "  Messages:         {} in, {} out; updates {} in ({} malformed), {} out",
            c.messages_in, c.messages_out, c.updates_in, c.updates_malformed, c.updates_out
        );
        let _ = writeln!(
            o,
            "  Sessions:         {} established; NOTIFICATIONs {} in, {} out; connects {} ({} unanswered)",
            c.established_transitions,
            c.notifications_in,
            c.notifications_out,
            c.connect_attempts,
            c.connect_timeouts
        );
        let _ = writeln!(o, "  Announced ({}):", n.announced.len());
        for p in &n.announced {
            let _ = writeln!(o, "    {p}");
        }
    }
    o
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot serve BGP status on {path}: {source}")]
    Serve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the BGP speaker's status socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad status from {path}: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Serves `status` on a unix socket at `path` (mode 0600) from a background thread.
pub fn serve_status(path: &Path, status: Arc<Mutex<SpeakerStatus>>) -> Result<(), StatusError> {
    let err = |source| StatusError::Serve {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    std::thread::Builder::new()
        .name("bgp-status".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let snapshot = status.lock().map(|s| s.clone()).unwrap_or_default();
                if let Ok(json) = serde_json::to_vec(&snapshot) {
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                    let _ = stream.write_all(&json);
                }
            }
        })
        .map_err(err)?;
    Ok(())
}

/// Reads the status from a speaker's socket.
pub fn query_status(path: &Path) -> Result<SpeakerStatus, StatusError> {
    let cerr = |source| StatusError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(cerr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(cerr)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(cerr)?;
    serde_json::from_slice(&buf).map_err(|source| StatusError::Decode {
        path: path.to_path_buf(),
        source,
    })
}
