//! What the node announces, computed from the control state.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use nodeplane_state::{Backend, BackendState, ServiceType, State};

use crate::config::{AnnounceConfig, VipBackends};

/// The prefixes to announce for `state` under `cfg`: the PodCIDRs, the LoadBalancer/External
/// VIPs as host routes (outside `service_vip_exclude`, and only for a service with a usable
/// backend, see [`VipBackends`]) and the static extra prefixes.
pub fn routes_from_state(state: &State, cfg: &AnnounceConfig) -> BTreeSet<IpNet> {
    let mut out = BTreeSet::new();
    if cfg.pod_cidrs {
        out.extend(state.node.pod_cidrs.iter().map(|p| p.trunc()));
    }
    if cfg.announce_service_vips {
        for svc in &state.services {
            if !matches!(
                svc.kind,
                ServiceType::LoadBalancer | ServiceType::ExternalIP
            ) {
                continue;
            }
            let usable =
                svc.backends
                    .iter()
                    .filter(|b| usable(b))
                    .any(|b| match cfg.vip_backends {
                        VipBackends::Any => true,
                        VipBackends::Local => is_local(state, b.ip),
                    });
            if !usable {
                continue;
            }
            for fe in &svc.frontends {
                if cfg.service_vip_exclude.iter().any(|x| x.contains(&fe.ip)) {
                    continue;
                }
                out.insert(host_route(fe.ip));
            }
        }
    }
    out.extend(cfg.prefixes.iter().copied());
    out
}

/// A backend that receives new flows: `active` (terminating and quarantined ones do not) with
/// a weight (validation already refuses 0; checked again so a VIP never points at nothing).
fn usable(b: &Backend) -> bool {
    b.state == BackendState::Active && b.weight > 0
}

/// Whether `ip` is on this node: inside a PodCIDR (validation keeps every local endpoint's IP
/// inside one) or one of the node's IPs (a host-network backend).
fn is_local(state: &State, ip: IpAddr) -> bool {
    state.node.pod_cidrs.iter().any(|p| p.contains(&ip)) || state.node.node_ips.contains(&ip)
}

fn host_route(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// Routes shown in a log line before "and N more": a node announcing thousands of VIPs must
/// not write a 60 KB line on every state change (the full set is in `nodeplane bgp status`).
const LOG_ROUTES: usize = 8;

/// The routes for a log line: the first few, then how many more.
pub fn log_list(routes: &BTreeSet<IpNet>) -> String {
    if routes.is_empty() {
        return "nothing".into();
    }
    let shown: Vec<String> = routes
        .iter()
        .take(LOG_ROUTES)
        .map(|r| r.to_string())
        .collect();
    let mut s = shown.join(", ");
    if routes.len() > LOG_ROUTES {
        s += &format!(
            " and {} more ({} routes)",
            routes.len() - LOG_ROUTES,
            routes.len()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> BTreeSet<IpNet> {
        (0..n)
            .map(|k| format!("10.{}.{}.0/24", k / 256, k % 256).parse().unwrap())
            .collect()
    }

    const STATE: &str = r#"
node:
  pod_cidrs: [10.244.1.0/24]
  node_ips: [10.0.0.2]
services:
  - name: lb
    type: LoadBalancer
    frontends: [{ip: 192.0.2.10, port: 80}]
    backends: BACKENDS
"#;

    fn vips(backends: &str, vip_backends: VipBackends) -> Vec<String> {
        let state = State::from_yaml_str(&STATE.replace("BACKENDS", backends)).unwrap();
        let cfg = AnnounceConfig {
            pod_cidrs: false,
            announce_service_vips: true,
            vip_backends,
            ..Default::default()
        };
        routes_from_state(&state, &cfg)
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    const VIP: [&str; 1] = ["192.0.2.10/32"];
    const NONE: [&str; 0] = [];

    #[test]
    fn vip_is_announced_only_with_an_active_backend() {
        use VipBackends::Any;
        assert_eq!(vips("[{ip: 10.1.0.5, port: 8080}]", Any), VIP);
        assert_eq!(
            vips(
                "[{ip: 10.1.0.5, port: 8080, state: quarantined}, {ip: 10.1.0.6, port: 8080}]",
                Any
            ),
            VIP
        );
        assert_eq!(vips("[]", Any), NONE);
        assert_eq!(
            vips(
                "[{ip: 10.1.0.5, port: 8080, state: quarantined}, \
                  {ip: 10.1.0.6, port: 8080, state: terminating}]",
                Any
            ),
            NONE
        );
    }

    #[test]
    fn vip_backends_local_needs_an_active_backend_on_this_node() {
        use VipBackends::{Any, Local};
        let remote = "[{ip: 10.1.0.5, port: 8080}]";
        assert_eq!(vips(remote, Any), VIP);
        assert_eq!(vips(remote, Local), NONE);
        // Local by PodCIDR (every local endpoint's IP is inside one), by node IP (host network).
        for ip in ["10.244.1.9", "10.0.0.2"] {
            let b = format!("[{{ip: 10.1.0.5, port: 8080}}, {{ip: {ip}, port: 8080}}]");
            assert_eq!(vips(&b, Local), VIP, "{ip}");
        }
        // A local backend that is not active does not count.
        assert_eq!(
            vips(
                "[{ip: 10.1.0.5, port: 8080}, {ip: 10.244.1.9, port: 8080, state: terminating}]",
                Local
            ),
            NONE
        );
    }

    #[test]
    fn vip_backends_parses_and_defaults_to_any() {
        let c: AnnounceConfig = yaml_serde::from_str("vip_backends: local").unwrap();
        assert_eq!(c.vip_backends, VipBackends::Local);
        let c: AnnounceConfig = yaml_serde::from_str("pod_cidrs: true").unwrap();
        assert_eq!(c.vip_backends, VipBackends::Any);
        assert!(yaml_serde::from_str::<AnnounceConfig>("vip_backends: nearby").is_err());
    }

    #[test]
    fn route_list_in_log_lines_is_bounded() {
        assert_eq!(log_list(&set(0)), "nothing");
        assert_eq!(log_list(&set(2)), "10.0.0.0/24, 10.0.1.0/24");
        assert_eq!(
            log_list(&set(LOG_ROUTES)).matches(", ").count(),
            LOG_ROUTES - 1
        );
        let big = log_list(&set(3000));
        assert!(big.len() < 200, "{big}");
        assert!(big.starts_with("10.0.0.0/24, 10.0.1.0/24,"), "{big}");
        assert!(big.ends_with(" and 2992 more (3000 routes)"), "{big}");
    }
}
