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
