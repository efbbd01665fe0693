//! The daemon's configuration file (`nodeplane run --config FILE`); schema in `docs/config.md`.

use std::path::{Path, PathBuf};

use nodeplane_bgp::BgpConfig;
use serde::Deserialize;

use super::log::LogFormat;
use crate::api::DEFAULT_SOCKET;
use crate::runtime::AfXdpConfig;
use nodeplane_dataplane::replay::ReplayIoConfig;
use nodeplane_dataplane::worker::RemovedFlowAction;

pub const DEFAULT_STATE_DIR: &str = "/etc/nodeplane/state";
/// Workers at most (one per core is the intended use).
pub const MAX_WORKERS: usize = 256;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default = "default_socket")]
    pub control_socket: PathBuf,
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default)]
    pub io: IoConfig,
    #[serde(default)]
    pub removed_flow_action: RemovedFlowAction,
    /// `error`, `warn`, `info` (default), `debug`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// `text` (default) or `json` (one object per line).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Address of the Prometheus endpoint (`GET /metrics`), e.g. `127.0.0.1:9464`. Unset: none.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The BGP speaker, run in the daemon (`nodeplane_bgp`'s schema, validated by it; its MD5
    /// password files are read at load). None: no BGP.
    #[serde(default)]
    pub bgp: Option<BgpConfig>,
    /// Where every worker's conntrack and the affinity table are saved when the daemon stops
    /// (and on `nodeplane ct save`) and restored from when it starts. `null`: not kept.
    #[serde(default = "default_snapshot")]
    pub conntrack_snapshot: Option<PathBuf>,
}

/// Where desired state comes from: exactly one of `dir` and `etcd`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The etcd source's own settings (defined by `source::etcd`), passed through as is.
    #[serde(default)]
    pub etcd: Option<yaml_serde::Value>,
    /// Bounds on what a state load reads (files and etcd values), checked before parsing.
    #[serde(default)]
    pub limits: nodeplane_state::Limits,
}

/// Packet I/O. Nothing set: no packet I/O (control plane only: state, CLI).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoConfig {
    /// Frames from pcap captures (tests, benchmarks, reproducing a problem).
    #[serde(default)]
    pub replay: Option<ReplayIoConfig>,
    /// AF_XDP sockets on the state's interfaces (the product's dataplane).
    #[serde(default)]
    pub afxdp: Option<AfXdpConfig>,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
pub const DEFAULT_SNAPSHOT: &str = "/var/lib/nodeplane/conntrack.snap";

fn default_snapshot() -> Option<PathBuf> {
    Some(PathBuf::from(DEFAULT_SNAPSHOT))
}
fn default_workers() -> usize {
    1
}
fn default_log_level() -> String {
    "info".into()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state: StateConfig::default(),
            control_socket: default_socket(),
            workers: 1,
            io: IoConfig::default(),
            removed_flow_action: RemovedFlowAction::Drop,
            log_level: default_log_level(),
            log_format: LogFormat::Text,
            metrics_listen: None,
            bgp: None,
            conntrack_snapshot: default_snapshot(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: yaml_serde::Error,
    },
    #[error("config {path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
    /// The `bgp:` section (the error names the field: `bgp.neighbors[0].remote_as: ...`).
    #[error("config {path}: {source}")]
    Bgp {
        path: PathBuf,
        #[source]
        source: nodeplane_bgp::ConfigError,
    },
}

/// The state source chosen by a config.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceChoice {
    Dir(PathBuf),
    Etcd(yaml_serde::Value),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let parse_err = |source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        };
        let (mut cfg, workers_given, empty_bgp): (Config, bool, bool) = if text.trim().is_empty() {
            (Config::default(), false, false)
        } else {
            // Parsed straight into `Config` so errors name the field; then once more as a plain
            // value to know whether `workers` was given and whether `bgp:` is there but empty.
            let cfg: Config = yaml_serde::from_str(text).map_err(parse_err)?;
            let v: yaml_serde::Value = yaml_serde::from_str(text).map_err(parse_err)?;
            (
                cfg,
                v.get("workers").is_some(),
                v.get("bgp").is_some_and(|b| b.is_null()),
            )
        };
        let invalid = |field, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            reason,
        };
        if empty_bgp {
            // Most likely a section commented out but for its key: say so rather than run
            // without BGP.
            return Err(invalid(
                "bgp",
                "the section is empty (remove the key to run without BGP)".into(),
            ));
        }
        if cfg.workers == 0 || cfg.workers > MAX_WORKERS {
            return Err(invalid(
                "workers",
                format!("{} is not in 1..={MAX_WORKERS}", cfg.workers),
            ));
        }
        if cfg.state.dir.is_some() && cfg.state.etcd.is_some() {
            return Err(invalid(
                "state",
                "set either `dir` or `etcd`, not both".into(),
            ));
        }
        let l = &cfg.state.limits;
        if l.max_file_bytes == 0 || l.max_total_bytes == 0 || l.max_files == 0 {
            return Err(invalid(
                "state.limits",
                "max_file_bytes, max_total_bytes and max_files must be at least 1".into(),
            ));
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&cfg.log_level.as_str()) {
            return Err(invalid(
                "log_level",
                format!("{:?} is not one of error, warn, info, debug", cfg.log_level),
            ));
        }
        if let Some(r) = &cfg.io.replay {
            if r.inputs.is_empty() {
                return Err(invalid("io.replay.inputs", "at least one input".into()));
            }
        }
        if let Some(a) = &cfg.io.afxdp {
            if cfg.io.replay.is_some() {
                return Err(invalid(
                    "io",
                    "set either `replay` or `afxdp`, not both".into(),
                ));
            }
            a.check()
                .map_err(|(field, reason)| invalid(field, reason))?;
            if let Some(n) = a.workers {
                if workers_given && n != cfg.workers {
                    return Err(invalid(
                        "io.afxdp.workers",
                        format!("{n} disagrees with workers: {}", cfg.workers),
                    ));
                }
                cfg.workers = n;
            }
            if cfg.workers == 0 || cfg.workers > 64 {
                return Err(invalid(
                    "workers",
                    format!("{} is not in 1..=64 (AF_XDP workers)", cfg.workers),
                ));
            }
            // `multi_buffer` with several workers: a chain whose flow another worker owns is
            // handed over whole (`handoff`: its linear copy in a batch's arena) and sent by its
            // owner as a chain of its own UMEM frames (docs/runtime.md "Jumbo pod MTUs").
        }
        if let Some(b) = &cfg.bgp {
            let bgp_err = |source| ConfigError::Bgp {
                path: path.to_path_buf(),
                source,
            };
            b.validate().map_err(bgp_err)?;
            // A missing or bad key file fails the start, not a session later.
            for (i, n) in b.neighbors.iter().enumerate() {
                n.md5_key(i).map_err(bgp_err)?;
            }
        }
        Ok(cfg)
    }

    /// The keys a reload (SIGHUP) cannot apply to a running daemon that differ in `new`: a
    /// reload with any of them is rejected whole (the daemon keeps running on this config).
    /// Only the log settings are applied live.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let Config {
            state,
            control_socket,
            workers,
            io,
            removed_flow_action,
            log_level: _,
            log_format: _,
            metrics_listen,
            bgp,
            conntrack_snapshot,
        } = new;
        let mut keys = Vec::new();
        let mut differs = |changed: bool, key| {
            if changed {
                keys.push(key);
            }
        };
        differs(*state != self.state, "state");
        differs(*control_socket != self.control_socket, "control_socket");
        differs(*workers != self.workers, "workers");
        differs(*io != self.io, "io");
        differs(
            *removed_flow_action != self.removed_flow_action,
            "removed_flow_action",
        );
        differs(*metrics_listen != self.metrics_listen, "metrics_listen");
        differs(*bgp != self.bgp, "bgp");
        differs(
            *conntrack_snapshot != self.conntrack_snapshot,
            "conntrack_snapshot",
        );
        keys
    }

    pub fn source(&self) -> SourceChoice {
        match (&self.state.dir, &self.state.etcd) {
            (_, Some(e)) => SourceChoice::Etcd(e.clone()),
            (Some(d), None) => SourceChoice::Dir(d.clone()),
            (None, None) => SourceChoice::Dir(PathBuf::from(DEFAULT_STATE_DIR)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.yaml"), s)
    }

    #[test]
    fn conntrack_snapshot_default_path_and_off() {
        assert_eq!(
            parse("").unwrap().conntrack_snapshot,
            Some(PathBuf::from(DEFAULT_SNAPSHOT))
        );
        assert_eq!(
            Config::default().conntrack_snapshot,
            parse("").unwrap().conntrack_snapshot
        );
        let off = parse("conntrack_snapshot: null\n").unwrap();
        assert_eq!(off.conntrack_snapshot, None);
        let at = parse("conntrack_snapshot: /tmp/ct.snap\n").unwrap();
        assert_eq!(at.conntrack_snapshot, Some(PathBuf::from("/tmp/ct.snap")));
        assert_eq!(off.restart_needed(&at), ["conntrack_snapshot"]);
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.source(), SourceChoice::Dir(DEFAULT_STATE_DIR.into()));
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.workers, 1);
        assert_eq!(c.io, IoConfig::default());
        assert_eq!(c.removed_flow_action, RemovedFlowAction::Drop);
    }

    #[test]
    fn reload_applies_only_the_log_settings() {
        let old = parse("state: { dir: /s }\nlog_level: info\n").unwrap();
        let new = parse("state: { dir: /s }\nlog_level: debug\nlog_format: json\n").unwrap();
        assert!(old.restart_needed(&new).is_empty());
        assert_eq!(
            (old.log_format, new.log_format),
            (LogFormat::Text, LogFormat::Json)
        );
        let new = parse("state: { dir: /t }\nworkers: 2\nlog_level: debug\n").unwrap();
        assert_eq!(old.restart_needed(&new), vec!["state", "workers"]);
        let new = parse(&format!("state: {{ dir: /s }}\n{BGP}")).unwrap();
        assert_eq!(old.restart_needed(&new), vec!["bgp"]);
    }

    /// The config the Debian package installs (packaging/config.yaml) loads, and runs the
    /// packaged default state (packaging/state/), which validates.
    #[test]
    fn packaged_config_and_state_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
        let c = Config::load(&root.join("config.yaml")).unwrap();
        assert_eq!(c.source(), SourceChoice::Dir(DEFAULT_STATE_DIR.into()));
        assert!(c.io.afxdp.is_none() && c.bgp.is_none(), "{c:?}");
        let s = nodeplane_state::load_path(&root.join("state")).unwrap();
        assert!(s.interfaces.is_empty() && s.services.is_empty());
    }

    #[test]
    fn full_config() {
        let c = parse(
            "state: { dir: /tmp/s }\ncontrol_socket: /tmp/x.sock\nworkers: 2\nremoved_flow_action: rst\nio:\n  replay:\n    inputs: [{ iface: pod-client, file: a.pcap }]\n    rate_pps: 100\n    loops: 3\n",
        )
        .unwrap();
        assert_eq!(c.source(), SourceChoice::Dir("/tmp/s".into()));
        assert_eq!(c.removed_flow_action, RemovedFlowAction::Rst);
        let r = c.io.replay.unwrap();
        assert_eq!(r.rate_pps, Some(100));
        assert_eq!(r.loops, Some(3));
        assert_eq!(r.inputs[0].iface, "pod-client");
    }

    #[test]
    fn afxdp_config() {
        let c = parse(
            "state: { dir: /s }\nio: { afxdp: { workers: 2, pin: false, neigh_refresh: 0.5 } }\n",
        )
        .unwrap();
        assert_eq!(c.workers, 2);
        let a = c.io.afxdp.unwrap();
        assert!(!a.pin);
        assert_eq!(a.ring_size, 2048);
        assert_eq!(a.frames_per_socket, 4096);
        assert_eq!(a.frame_size, 2048);
        assert_eq!(a.busy_poll_us, 50);
        assert_eq!(a.neigh_refresh, 0.5);
        assert_eq!(
            a.no_socket,
            crate::runtime::NoSocketAction::Drop,
            "fail closed by default"
        );
        assert_eq!(
            a.pin_dir.as_deref(),
            Some(std::path::Path::new("/sys/fs/bpf/nodeplane")),
            "pinned by default"
        );
        let c = parse("io: { afxdp: { busy_poll_us: 50 } }").unwrap();
        assert_eq!(c.io.afxdp.unwrap().busy_poll_us, 50);
        assert!(!a.multi_buffer, "multi-buffer off by default");
        let c = parse("io: { afxdp: { frame_size: 4096, multi_buffer: true } }").unwrap();
        assert!(c.io.afxdp.unwrap().multi_buffer);
        // With several workers too: chains are handed over whole (`handoff`).
        let c = parse("workers: 2\nio: { afxdp: { frame_size: 4096, multi_buffer: true } }")
            .expect("multi_buffer with two workers");
        let mb = c.io.afxdp.unwrap();
        assert!(mb.multi_buffer && c.workers == 2);
        // The hand-off depth: 1024 frames, 4096 where jumbo chains are handed over (a batch
        // holds 29 of them), unless the config says.
        assert_eq!(a.handoff_depth, None, "hand-off depth chosen by default");
        assert_eq!(a.handoff_depth_for(2), 1024);
        assert_eq!(
            mb.handoff_depth_for(1),
            1024,
            "one worker hands nothing over"
        );
        assert_eq!(mb.handoff_depth_for(2), 4096);
        let c = parse("workers: 2\nio: { afxdp: { frame_size: 4096, multi_buffer: true, handoff_depth: 512 } }")
            .unwrap();
        assert_eq!(
            c.io.afxdp.unwrap().handoff_depth_for(2),
            512,
            "the config's wins"
        );
        assert_eq!(
            a.tx_checksum_offload,
            crate::runtime::ChecksumOffload::Auto,
            "checksum offload on by default"
        );
        let c = parse("io: { afxdp: { tx_checksum_offload: off } }").unwrap();
        assert_eq!(
            c.io.afxdp.unwrap().tx_checksum_offload,
            crate::runtime::ChecksumOffload::Off
        );
        assert!(parse("io: { afxdp: { tx_checksum_offload: maybe } }").is_err());
        assert_eq!(
            (a.fast_path, a.fast_path_flows),
            (crate::runtime::FastPathMode::Off, 262_144),
            "no fast path by default"
        );
        let c = parse("io: { afxdp: { fast_path: tc, fast_path_flows: 4096 } }").unwrap();
        let f = c.io.afxdp.unwrap();
        assert_eq!(
            (f.fast_path, f.fast_path_flows),
            (crate::runtime::FastPathMode::Tc, 4096)
        );
        assert!(parse("io: { afxdp: { fast_path: xdp } }").is_err());
        let e = parse("io: { afxdp: { fast_path: tc, fast_path_flows: 10 } }").unwrap_err();
        assert!(
            e.to_string().contains("io.afxdp.fast_path_flows"),
            "the field is named: {e}"
        );
        for key in ["no_socket", "dead_worker"] {
            let c = parse(&format!("io: {{ afxdp: {{ {key}: pass }} }}")).unwrap();
            assert_eq!(
                c.io.afxdp.unwrap().no_socket,
                crate::runtime::NoSocketAction::Pass,
                "{key} (dead_worker: the former name)"
            );
        }
        let c = parse("io: { afxdp: { pin_dir: null } }").unwrap();
        assert_eq!(c.io.afxdp.unwrap().pin_dir, None, "null: not pinned");
        let c = parse("io: { afxdp: { pin_dir: /run/bpf/np } }").unwrap();
        assert_eq!(
            c.io.afxdp.unwrap().pin_dir.as_deref(),
            Some(std::path::Path::new("/run/bpf/np"))
        );
        // The top-level key sets it as well; both agreeing is fine.
        let c = parse("workers: 2\nio: { afxdp: {} }").unwrap();
        assert_eq!(c.workers, 2);
        assert!(parse("workers: 2\nio: { afxdp: { workers: 2 } }").is_ok());
        for (text, field) in [
            (
                "workers: 1\nio: { afxdp: { workers: 2 } }",
                "io.afxdp.workers",
            ),
            ("io: { afxdp: { ring_size: 1000 } }", "io.afxdp.ring_size"),
            ("io: { afxdp: { frame_size: 3000 } }", "io.afxdp.frame_size"),
            (
                "io: { afxdp: { multi_buffer: true } }",
                "io.afxdp.multi_buffer",
            ),
            (
                "io: { afxdp: { ring_size: 8192 } }",
                "io.afxdp.frames_per_socket",
            ),
            (
                "io: { afxdp: { neigh_refresh: 0 } }",
                "io.afxdp.neigh_refresh",
            ),
            (
                "io: { afxdp: { busy_poll_us: 100001 } }",
                "io.afxdp.busy_poll_us",
            ),
            (
                "io: { afxdp: { handoff_depth: 0 } }",
                "io.afxdp.handoff_depth",
            ),
            ("io: { afxdp: { wrokers: 2 } }", "wrokers"),
            ("io: { afxdp: { dead_worker: ignore } }", "dead_worker"),
            ("io: { afxdp: { no_socket: ignore } }", "no_socket"),
            ("io: { afxdp: { workers: 65 } }", "workers"),
            (
                "io: { afxdp: {}, replay: { inputs: [{ iface: a, file: b }] } }",
                "io",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("workers: 0").unwrap_err().to_string();
        assert!(e.contains("workers"), "{e}");
        let e = parse("state: { dir: /a, etcd: { endpoints: [x] } }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("state"), "{e}");
        let e = parse("wrokers: 2").unwrap_err().to_string();
        assert!(e.contains("wrokers"), "{e}");
        let e = parse("log_format: yaml").unwrap_err().to_string();
        assert!(e.contains("log_format"), "{e}");
        let e = parse("removed_flow_action: reset").unwrap_err().to_string();
        assert!(e.contains("removed_flow_action"), "{e}");
        let e = parse("io: { replay: { inputs: [] } }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("io.replay.inputs"), "{e}");
    }

    const BGP: &str = "bgp:\n  local_as: 65001\n  router_id: 10.0.0.2\n  neighbors:\n    - { address: 10.0.0.1, remote_as: 65000, next_hop_ipv6: \"fd00::2\" }\n";

    #[test]
    fn bgp_section() {
        assert!(parse("").unwrap().bgp.is_none(), "no section: no BGP");
        let c = parse(&format!("state: {{ dir: /s }}\n{BGP}")).unwrap();
        let b = c.bgp.unwrap();
        assert_eq!(
            (b.local_as, b.router_id.to_string()),
            (65001, "10.0.0.2".into())
        );
        assert_eq!(b.listen_port, 179);
        let n = &b.neighbors[0];
        assert_eq!((n.remote_as, n.hold_time_secs, n.port), (65000, 90, 179));
        assert!(b.announce.pod_cidrs && b.graceful_restart.enabled);
        // The same schema as the standalone speaker's file.
        let alone = BgpConfig::from_yaml_str(BGP, Path::new("bgp.yaml")).unwrap();
        assert_eq!(b, alone);

        let full = parse(
            "bgp:\n  local_as: 4200000001\n  router_id: 10.0.0.2\n  listen_port: 0\n  neighbors:\n    - address: fd00::1\n      remote_as: 65000\n      name: leaf\n      local_address: fd00::2\n      port: 1179\n      ttl_security: true\n      hold_time_secs: 9\n      keepalive_secs: 3\n      connect_retry_secs: 2\n      passive: true\n      families: [ipv6, ipv4]\n      next_hop_ipv4: 10.0.0.2\n  announce:\n    pod_cidrs: false\n    announce_service_vips: true\n    service_vip_exclude: [10.96.0.0/12]\n    prefixes: [192.0.2.0/24]\n    communities: [\"65000:100\"]\n    med: 10\n    local_pref: 200\n  graceful_restart: { enabled: false, restart_time_secs: 30 }\n",
        )
        .unwrap()
        .bgp
        .unwrap();
        assert_eq!(full.neighbors[0].display_name(), "leaf");
        assert_eq!(full.announce.local_pref, 200);
        assert!(!full.graceful_restart.enabled);
    }

    #[test]
    fn bad_bgp_sections_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.key");
        let empty = dir.path().join("empty.key");
        std::fs::write(&empty, "\n").unwrap();
        let md5 = |p: &Path| {
            BGP.replace(
                "remote_as: 65000,",
                &format!("remote_as: 65000, md5_password_file: {},", p.display()),
            )
        };
        let cases = [
            (BGP.replace("65001", "0"), "bgp.local_as: 0 and 23456"),
            (
                BGP.replace("router_id: 10.0.0.2", "router_id: 0.0.0.0"),
                "bgp.router_id",
            ),
            (
                BGP.replace("remote_as: 65000,", "remote_as: 65000, hold_time_secs: 2,"),
                "bgp.neighbors[0].hold_time_secs: must be 0 or at least 3",
            ),
            (
                BGP.replace(", next_hop_ipv6: \"fd00::2\"", ""),
                "bgp.neighbors[0].next_hop_ipv6: needed to announce IPv6",
            ),
            (
                BGP.replace("remote_as: 65000,", "remote_as: 65000, adress: 10.0.0.9,"),
                "unknown field `adress`",
            ),
            (
                BGP.replace("local_as", "local_asn"),
                "unknown field `local_asn`",
            ),
            (
                "bgp:\n  local_as: 65001\n  router_id: 10.0.0.2\n".into(),
                "missing field `neighbors`",
            ),
            (
                "bgp:\n  local_as: 65001\n  router_id: 10.0.0.2\n  neighbors: []\n".into(),
                "bgp.neighbors: at least one neighbour",
            ),
            (
                BGP.replace("router_id: 10.0.0.2", "router_id: 10.0.0.256"),
                "bgp.router_id",
            ),
            (
                format!("{BGP}  announce: {{ communities: [\"65000\"] }}\n"),
                "bgp.announce.communities[0]",
            ),
            (
                format!("{BGP}  graceful_restart: {{ restart_time_secs: 5000 }}\n"),
                "bgp.graceful_restart.restart_time_secs: at most 4095",
            ),
            (
                md5(&missing),
                "bgp.neighbors[0].md5_password_file: cannot read MD5 password file",
            ),
            (
                md5(&empty),
                "bgp.neighbors[0].md5_password_file: the key must be 1 to 80 bytes",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err();
            assert!(
                matches!(e, ConfigError::Parse { .. } | ConfigError::Bgp { .. }),
                "{e:?}"
            );
            let e = e.to_string();
            assert!(e.contains(want), "{text}\n=> {e}\nwanted {want:?}");
            assert!(e.starts_with("config test.yaml: "), "{e}");
        }
        let e = parse("bgp:\n#  local_as: 65001\n").unwrap_err().to_string();
        assert!(e.contains("bgp: the section is empty"), "{e}");
        // Unknown fields and bad values are located under `bgp`.
        let e = parse(&BGP.replace("local_as", "local_asn"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bgp"), "{e}");
        // A readable key passes.
        let key = dir.path().join("good.key");
        std::fs::write(&key, "s3cret\n").unwrap();
        assert!(parse(&md5(&key)).is_ok());
    }
}
