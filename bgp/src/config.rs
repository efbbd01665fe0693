//! Speaker configuration: the `bgp:` section of the node config. Unknown keys are errors;
//! validation errors name the offending field (`bgp.neighbors[1].hold_time_secs: ...`).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::packet::{Community, Family};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// Our AS number (2- or 4-octet).
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// TCP port we listen on for passive opens; 0 = never listen (active opens only).
    #[serde(default = "default_port")]
    pub listen_port: u16,
    pub neighbors: Vec<NeighborConfig>,
    #[serde(default)]
    pub announce: AnnounceConfig,
    #[serde(default)]
    pub graceful_restart: GracefulRestartConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighborConfig {
    pub address: IpAddr,
    pub remote_as: u32,
    /// Shown by `nodeplane bgp status`; defaults to the address.
    #[serde(default)]
    pub name: Option<String>,
    /// Source address of our connections (and the next hop we announce for its family).
    #[serde(default)]
    pub local_address: Option<IpAddr>,
    #[serde(default = "default_port")]
    pub port: u16,
    /// File holding the TCP-MD5 (RFC 2385) key; trailing newline ignored, 1-80 bytes.
    #[serde(default)]
    pub md5_password_file: Option<PathBuf>,
    /// GTSM (RFC 5082): send with TTL 255 and accept only TTL >= 254 (directly connected).
    #[serde(default)]
    pub ttl_security: bool,
    /// Hold time we offer: 0 (no keepalives) or at least 3 seconds.
    #[serde(default = "default_hold")]
    pub hold_time_secs: u16,
    /// Keepalive interval; default a third of the negotiated hold time.
    #[serde(default)]
    pub keepalive_secs: Option<u16>,
    #[serde(default = "default_connect_retry")]
    pub connect_retry_secs: u16,
    /// Never connect; wait for the router to connect to us.
    #[serde(default)]
    pub passive: bool,
    #[serde(default = "default_families")]
    pub families: Vec<FamilyConfig>,
    /// Next hop for IPv4 routes; default: our address on the session (needed when the
    /// session runs over IPv6 and IPv4 is announced).
    #[serde(default)]
    pub next_hop_ipv4: Option<Ipv4Addr>,
    /// Next hop for IPv6 routes; default: our address on the session (needed when the
    /// session runs over IPv4 and IPv6 is announced).
    #[serde(default)]
    pub next_hop_ipv6: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FamilyConfig {
    Ipv4,
    Ipv6,
}

impl From<FamilyConfig> for Family {
    fn from(f: FamilyConfig) -> Family {
        match f {
            FamilyConfig::Ipv4 => Family::Ipv4Unicast,
            FamilyConfig::Ipv6 => Family::Ipv6Unicast,
        }
    }
}

/// Which usable backends keep a service VIP announced (MetalLB's and Cilium's
/// `externalTrafficPolicy: Cluster` / `Local`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VipBackends {
    /// Any `active` backend, on any node.
    #[default]
    Any,
    /// An `active` backend on this node: its IP is inside one of the node's PodCIDRs (where
    /// every local endpoint's IP is) or is one of the node's own IPs.
    Local,
}

/// What to announce, taken from the node state by [`crate::routes_from_state`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    /// The node's PodCIDRs (`node.pod_cidrs`).
    #[serde(default = "yes")]
    pub pod_cidrs: bool,
    /// LoadBalancer and ExternalIP services' frontend IPs, as /32 or /128.
    #[serde(default)]
    pub announce_service_vips: bool,
    /// Which backends make a service VIP worth announcing: a VIP is announced only while its
    /// service has at least one usable (`active`) backend of this kind, and withdrawn with the
    /// state change that takes the last one away.
    #[serde(default)]
    pub vip_backends: VipBackends,
    /// Frontend IPs inside these prefixes are never announced (e.g. the ClusterIP range,
    /// whose addresses also appear among a LoadBalancer service's frontends).
    #[serde(default)]
    pub service_vip_exclude: Vec<IpNet>,
    /// Extra prefixes announced unconditionally.
    #[serde(default)]
    pub prefixes: Vec<IpNet>,
    /// Communities attached to every route (`"65000:100"`).
    #[serde(default)]
    pub communities: Vec<String>,
    #[serde(default)]
    pub med: Option<u32>,
    /// LOCAL_PREF sent on iBGP sessions.
    #[serde(default = "default_local_pref")]
    pub local_pref: u32,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            pod_cidrs: true,
            announce_service_vips: false,
            vip_backends: VipBackends::default(),
            service_vip_exclude: Vec::new(),
            prefixes: Vec::new(),
            communities: Vec::new(),
            med: None,
            local_pref: default_local_pref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GracefulRestartConfig {
    /// Advertise the graceful restart capability (RFC 4724) as a restarting speaker.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds the routers keep our routes while we restart (max 4095).
    #[serde(default = "default_restart_time")]
    pub restart_time_secs: u16,
}

impl Default for GracefulRestartConfig {
    fn default() -> Self {
        GracefulRestartConfig {
            enabled: true,
            restart_time_secs: default_restart_time(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_port() -> u16 {
    179
}
fn default_hold() -> u16 {
    90
}
fn default_connect_retry() -> u16 {
    5
}
fn default_families() -> Vec<FamilyConfig> {
    vec![FamilyConfig::Ipv4, FamilyConfig::Ipv6]
}
fn default_local_pref() -> u32 {
    100
}
fn default_restart_time() -> u16 {
    120
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read BGP config {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("BGP config {path}: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: yaml_serde::Error,
    },
    #[error("bgp.{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("bgp.{field}: cannot read MD5 password file {path}: {source}")]
    PasswordFile {
        field: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl BgpConfig {
    /// Parses YAML that is either the BGP section itself or a node config holding it under
    /// `bgp:` (other top-level keys are then left to their owners), and validates it.
    pub fn from_yaml_str(yaml: &str, origin: &Path) -> Result<BgpConfig, ConfigError> {
        let yaml_err = |source| ConfigError::Yaml {
            path: origin.to_path_buf(),
            source,
        };
        let value: yaml_serde::Value = yaml_serde::from_str(yaml).map_err(yaml_err)?;
        let section = match value.get("bgp") {
            Some(inner) => inner.clone(),
            None => value,
        };
        let cfg: BgpConfig = yaml_serde::from_value(section).map_err(yaml_err)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<BgpConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        BgpConfig::from_yaml_str(&text, path)
    }

    /// Checks everything that can be checked without touching the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.local_as == 0 || self.local_as == crate::packet::AS_TRANS as u32 {
            return Err(invalid(
                "local_as",
                "0 and 23456 (AS_TRANS) are not valid ASNs",
            ));
        }
        if self.router_id.is_unspecified() {
            return Err(invalid("router_id", "must not be 0.0.0.0"));
        }
        if self.neighbors.is_empty() {
            return Err(invalid("neighbors", "at least one neighbour is needed"));
        }
        let mut seen = BTreeSet::new();
        for (i, n) in self.neighbors.iter().enumerate() {
            let f = |name: &str| format!("neighbors[{i}].{name}");
            if !seen.insert(n.address) {
                return Err(invalid(
                    f("address"),
                    format!("{} is listed twice", n.address),
                ));
            }
            if n.address.is_unspecified() || n.address.is_multicast() {
                return Err(invalid(f("address"), "must be a unicast address"));
            }
            if n.remote_as == 0 || n.remote_as == crate::packet::AS_TRANS as u32 {
                return Err(invalid(
                    f("remote_as"),
                    "0 and 23456 (AS_TRANS) are not valid ASNs",
                ));
            }
            if n.hold_time_secs != 0 && n.hold_time_secs < 3 {
                return Err(invalid(f("hold_time_secs"), "must be 0 or at least 3"));
            }
            if let Some(k) = n.keepalive_secs {
                if k == 0 || (n.hold_time_secs != 0 && k >= n.hold_time_secs) {
                    return Err(invalid(
                        f("keepalive_secs"),
                        "must be at least 1 and less than hold_time_secs",
                    ));
                }
            }
            if n.connect_retry_secs == 0 {
                return Err(invalid(f("connect_retry_secs"), "must be at least 1"));
            }
            if n.port == 0 {
                return Err(invalid(f("port"), "must not be 0"));
            }
            if n.families.is_empty() {
                return Err(invalid(f("families"), "at least one of ipv4, ipv6"));
            }
            if let Some(local) = n.local_address {
                if local.is_ipv4() != n.address.is_ipv4() {
                    return Err(invalid(
                        f("local_address"),
                        "must be of the same family as address",
                    ));
                }
            }
            if n.families.contains(&FamilyConfig::Ipv6)
                && n.address.is_ipv4()
                && n.next_hop_ipv6.is_none()
            {
                return Err(invalid(
                    f("next_hop_ipv6"),
                    "needed to announce IPv6 over an IPv4 session",
                ));
            }
            if n.families.contains(&FamilyConfig::Ipv4)
                && n.address.is_ipv6()
                && n.next_hop_ipv4.is_none()
            {
                return Err(invalid(
                    f("next_hop_ipv4"),
                    "needed to announce IPv4 over an IPv6 session",
                ));
            }
        }
        for (i, c) in self.announce.communities.iter().enumerate() {
            c.parse::<Community>()
                .map_err(|e| invalid(format!("announce.communities[{i}]"), e))?;
        }
        for (i, p) in self.announce.prefixes.iter().enumerate() {
            if p.trunc() != *p {
                return Err(invalid(
                    format!("announce.prefixes[{i}]"),
                    format!("{p} has host bits set"),
                ));
            }
        }
        if self.graceful_restart.restart_time_secs > 4095 {
            return Err(invalid(
                "graceful_restart.restart_time_secs",
                "at most 4095 (12 bits)",
            ));
        }
        Ok(())
    }

    pub fn communities(&self) -> Vec<Community> {
        // Validated: every entry parses.
        self.announce
            .communities
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }
}

impl NeighborConfig {
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.address.to_string())
    }

    /// Reads the MD5 key file (trailing newline stripped). `index` names the field in errors.
    pub fn md5_key(&self, index: usize) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.md5_password_file else {
            return Ok(None);
        };
        let field = format!("neighbors[{index}].md5_password_file");
        let mut key = std::fs::read(path).map_err(|source| ConfigError::PasswordFile {
            field: field.clone(),
            path: path.clone(),
            source,
        })?;
        while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            key.pop();
        }
        if key.is_empty() || key.len() > crate::sys::TCP_MD5SIG_MAXKEYLEN {
            return Err(invalid(field, "the key must be 1 to 80 bytes"));
        }
        Ok(Some(key))
    }
}
