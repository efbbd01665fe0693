//! The daemon's configuration file (`nodeplane run --config FILE`); schema in `docs/config.md`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::api::DEFAULT_SOCKET;
use crate::runtime::AfXdpConfig;
use crate::worker::{RemovedFlowAction, ReplayIoConfig};

pub const DEFAULT_STATE_DIR: &str = "/etc/nodeplane/state";
/// Workers at most (one per core is the intended use).
pub const MAX_WORKERS: usize = 256;

#[derive(Debug, Clone, Deserialize)]
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
}

/// Where desired state comes from: exactly one of `dir` and `etcd`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The etcd source's own settings (defined by `source::etcd`), passed through as is.
    #[serde(default)]
    pub etcd: Option<serde_yaml::Value>,
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
        source: serde_yaml::Error,
    },
    #[error("config {path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

/// The state source chosen by a config.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceChoice {
    Dir(PathBuf),
    Etcd(serde_yaml::Value),
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
        let (mut cfg, workers_given): (Config, bool) = if text.trim().is_empty() {
            (Config::default(), false)
        } else {
            // Parsed straight into `Config` so errors name the field; then once more as a plain
            // value to know whether `workers` was given.
            let cfg: Config = serde_yaml::from_str(text).map_err(parse_err)?;
            let v: serde_yaml::Value = serde_yaml::from_str(text).map_err(parse_err)?;
            (cfg, v.get("workers").is_some())
        };
        let invalid = |field, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            reason,
        };
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
        }
        Ok(cfg)
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
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.source(), SourceChoice::Dir(DEFAULT_STATE_DIR.into()));
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.workers, 1);
        assert_eq!(c.io, IoConfig::default());
        assert_eq!(c.removed_flow_action, RemovedFlowAction::Drop);
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
        assert_eq!(a.ring_size, 1024);
        assert_eq!(a.neigh_refresh, 0.5);
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
            (
                "io: { afxdp: { ring_size: 4096 } }",
                "io.afxdp.frames_per_socket",
            ),
            (
                "io: { afxdp: { neigh_refresh: 0 } }",
                "io.afxdp.neigh_refresh",
            ),
            ("io: { afxdp: { wrokers: 2 } }", "wrokers"),
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
        let e = parse("removed_flow_action: reset").unwrap_err().to_string();
        assert!(e.contains("removed_flow_action"), "{e}");
        let e = parse("io: { replay: { inputs: [] } }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("io.replay.inputs"), "{e}");
    }
}
