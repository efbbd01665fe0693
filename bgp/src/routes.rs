//! What the node announces, computed from the control state.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use nodeplane_state::{ServiceType, State};

use crate::config::AnnounceConfig;

/// The prefixes to announce for `state` under `cfg`: the PodCIDRs, the LoadBalancer/External
/// VIPs as host routes (outside `service_vip_exclude`) and the static extra prefixes.
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
