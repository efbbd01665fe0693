//! Config parsing/validation (errors name the field) and routes taken from the node state.

use std::path::Path;

use nodeplane_bgp::{routes_from_state, AnnounceConfig, BgpConfig};
use nodeplane_state::State;

fn parse(yaml: &str) -> Result<BgpConfig, String> {
    BgpConfig::from_yaml_str(yaml, Path::new("test.yaml")).map_err(|e| e.to_string())
}

const GOOD: &str = "local_as: 65001\nrouter_id: 10.0.0.2\nneighbors:\n  - address: 10.0.0.1\n    remote_as: 65000\n    next_hop_ipv6: fd00::2\n";

#[test]
fn good_config_with_or_without_bgp_key() {
    let a = parse(GOOD).unwrap();
    let b = parse(&format!(
        "bgp:\n{}",
        GOOD.lines().map(|l| format!("  {l}\n")).collect::<String>()
    ))
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.neighbors[0].hold_time_secs, 90);
    assert!(a.graceful_restart.enabled);
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (
            GOOD.replace("local_as: 65001", "local_as: 0"),
            "bgp.local_as",
        ),
        (
            GOOD.replace(
                "    remote_as: 65000\n",
                "    remote_as: 65000\n    hold_time_secs: 2\n",
            ),
            "bgp.neighbors[0].hold_time_secs",
        ),
        (
            GOOD.replace("    next_hop_ipv6: fd00::2\n", ""),
            "bgp.neighbors[0].next_hop_ipv6",
        ),
        (
            GOOD.replace("router_id: 10.0.0.2", "router_id: 0.0.0.0"),
            "bgp.router_id",
        ),
        (
            format!("{GOOD}announce:\n  communities: [\"70000:1\"]\n"),
            "bgp.announce.communities[0]",
        ),
        (
            format!("{GOOD}  - address: 10.0.0.1\n    remote_as: 1\n    next_hop_ipv6: fd00::2\n"),
            "bgp.neighbors[1].address",
        ),
    ];
    for (yaml, field) in cases {
        let e = parse(&yaml).unwrap_err();
        assert!(e.starts_with(field), "{field}: got {e}");
    }
    let e = parse(&format!("{GOOD}bogus: 1\n")).unwrap_err();
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn routes_are_podcidrs_plus_lb_and_external_vips() {
    let state = State::from_yaml_str(
        r#"
node:
  pod_cidrs: [10.244.1.0/24, "fd00:244:1::/64"]
services:
  - name: lb
    type: LoadBalancer
    frontends: [{ip: 10.96.0.10, port: 80}, {ip: 192.0.2.10, port: 80}]
    backends: [{ip: 10.244.1.5, port: 8080}]
  - name: ext
    type: ExternalIP
    frontends: [{ip: "2001:db8::10", port: 443}]
    backends: [{ip: "fd00:244:2::5", port: 8443}]
  - name: internal
    type: ClusterIP
    frontends: [{ip: 10.96.0.11, port: 80}]
    backends: [{ip: 10.244.1.5, port: 8080}]
"#,
    )
    .unwrap();
    let off = AnnounceConfig::default();
    let got: Vec<String> = routes_from_state(&state, &off)
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(got, ["10.244.1.0/24", "fd00:244:1::/64"]);
    let on = AnnounceConfig {
        announce_service_vips: true,
        service_vip_exclude: vec!["10.96.0.0/12".parse().unwrap()],
        ..Default::default()
    };
    let got: Vec<String> = routes_from_state(&state, &on)
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        got,
        [
            "10.244.1.0/24",
            "192.0.2.10/32",
            "2001:db8::10/128",
            "fd00:244:1::/64"
        ]
    );
}
