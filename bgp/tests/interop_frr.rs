//! Against FRR (Debian's `frr`, bgpd only: no zebra, no kernel routes, no system service) in a
//! router namespace, our speaker as a real process in the node namespace. BIRD is the primary
//! peer (`interop.rs`); FRR is the second implementation, with its own defaults: RFC 8212
//! (no eBGP routes without policy, switched off here), graceful restart helper mode, route
//! refresh, and a pile of capabilities we do not speak (extended message, hostname, LLGR,
//! add-path). Needs root, iproute2 and frr; fails loudly otherwise.
//!
//! ```text
//!   np-bgp-<tag>-r0 (bgpd, 10.0.0.1 / fd00:0::1)  ──veth──  np-bgp-<tag>-n (np-bgp-speaker)
//!   np-bgp-<tag>-r1 (bgpd, 10.0.1.1 / fd00:1::1)  ──veth──┘
//! ```

mod lab;

use std::time::Duration;

use lab::{wait_until, Frr, Lab};

const S: Duration = Duration::from_secs(1);

fn speaker_cfg(local_as: u32, neighbors: &str) -> String {
    format!("local_as: {local_as}\nrouter_id: 10.0.0.2\nneighbors:\n{neighbors}")
}

fn neighbor(i: usize, remote_as: u32, extra: &str) -> String {
    format!(
        "  - address: 10.0.{i}.1\n    remote_as: {remote_as}\n    next_hop_ipv6: \"fd00:{i}::2\"\n\
         \x20   hold_time_secs: 3\n    connect_retry_secs: 1\n{extra}"
    )
}

fn state(pod_cidrs: &[&str]) -> String {
    format!(
        "node:\n  name: n1\n  pod_cidrs: [{}]\n",
        pod_cidrs.join(", ")
    )
}

/// FRR's `router bgp` section for router `i` (10.0.i.1) with one neighbour, our node at
/// 10.0.i.2: short timers, IPv6 unicast activated on the IPv4 session (MP-BGP), and
/// `extra` neighbour options (`password ...`, `ttl-security hops 1`).
fn frr_router(i: usize, asn: u32, remote_as: u32, global: &str, extra: &[&str]) -> String {
    frr_router_to(i, &format!("10.0.{i}.2"), asn, remote_as, global, extra)
}

/// As [`frr_router`], the neighbour (our node) at `peer`; IPv4 unicast is active by default
/// whatever the session's address family.
fn frr_router_to(
    i: usize,
    peer: &str,
    asn: u32,
    remote_as: u32,
    global: &str,
    extra: &[&str],
) -> String {
    let mut s = format!(
        "router bgp {asn}\n bgp router-id 10.0.{i}.1\n no bgp ebgp-requires-policy\n bgp log-neighbor-changes\n{global}\
         \x20neighbor {peer} remote-as {remote_as}\n neighbor {peer} timers 1 3\n\
         \x20neighbor {peer} timers connect 1\n"
    );
    for e in extra {
        s += &format!(" neighbor {peer} {e}\n");
    }
    s += &format!(
        " address-family ipv6 unicast\n  neighbor {peer} activate\n exit-address-family\n"
    );
    s
}

/// The one path FRR has for `prefix`, waiting up to `timeout` for it.
fn wait_path(frr: &Frr, afi: &str, prefix: &str, timeout: Duration) -> serde_json::Value {
    wait_until(&format!("{prefix} at FRR"), timeout, || {
        frr.paths(afi, prefix).is_some()
    });
    let paths = frr.paths(afi, prefix).unwrap();
    assert_eq!(paths.len(), 1, "one path for {prefix}: {paths:?}");
    paths[0].clone()
}

fn next_hop(path: &serde_json::Value) -> &str {
    path["nexthops"][0]["ip"].as_str().unwrap_or("")
}

fn counter(frr: &Frr, peer: &str, name: &str) -> u64 {
    frr.neighbor(peer)["messageStats"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no messageStats.{name} for {peer}"))
}

#[test]
fn frr_learns_podcidrs_v4_v6_with_4_octet_as_withdraws_on_change_and_answers_route_refresh() {
    let mut lab = Lab::new("fbasic", 1);
    let frr = lab.frr(0, &frr_router(0, 65000, 4_200_000_001, "", &[]));
    lab.speaker(
        &speaker_cfg(4_200_000_001, &neighbor(0, 65000, "")),
        &state(&["10.244.1.0/24", "fd00:244:1::/64"]),
    );
    wait_until("session established at FRR", 10 * S, || {
        frr.established("10.0.0.2")
    });
    let n = frr.neighbor("10.0.0.2");
    assert_eq!(n["remoteAs"], 4_200_000_001u64, "{n}");
    let caps = &n["neighborCapabilities"];
    assert_eq!(caps["4byteAs"], "advertisedAndReceived", "{caps}");
    assert_eq!(
        caps["multiprotocolExtensions"]["ipv6Unicast"]["advertisedAndReceived"], true,
        "{caps}"
    );

    let p4 = wait_path(&frr, "ipv4", "10.244.1.0/24", 3 * S);
    assert_eq!(p4["path"], "4200000001", "{p4}");
    assert_eq!(p4["origin"], "IGP", "{p4}");
    assert_eq!(p4["pathFrom"], "external", "{p4}");
    assert_eq!(p4["valid"], true, "{p4}");
    assert_eq!(next_hop(&p4), "10.0.0.2", "{p4}");
    let p6 = wait_path(&frr, "ipv6", "fd00:244:1::/64", 3 * S);
    assert_eq!(p6["path"], "4200000001", "{p6}");
    assert_eq!(next_hop(&p6), "fd00::2", "{p6}");
    // FRR reflects our route back to us (no sender-side loop check); we must ignore it by
    // AS-path loop detection and stay up, which the rest of this test shows.

    // ROUTE-REFRESH (RFC 2918): `soft in` without soft-reconfiguration asks us for our routes
    // again; we answer with UPDATEs.
    let updates = counter(&frr, "10.0.0.2", "updatesRecv");
    frr.try_cmd("clear bgp ipv4 unicast 10.0.0.2 soft in")
        .expect("clear soft in");
    wait_until("route refresh answered", 3 * S, || {
        counter(&frr, "10.0.0.2", "routeRefreshSent") >= 1
            && counter(&frr, "10.0.0.2", "updatesRecv") > updates
    });
    assert!(frr.established("10.0.0.2"), "session survives the refresh");
    assert!(frr.paths("ipv4", "10.244.1.0/24").is_some());

    // The PodCIDR moves: old withdrawn, new announced.
    lab.write("state.yaml", &state(&["10.244.2.0/25", "fd00:244:1::/64"]));
    wait_path(&frr, "ipv4", "10.244.2.0/25", 2 * S);
    wait_until("old PodCIDR withdrawn at FRR", 2 * S, || {
        frr.paths("ipv4", "10.244.1.0/24").is_none()
    });
    // IPv6 removed entirely: withdrawn through MP_UNREACH_NLRI.
    lab.write("state.yaml", &state(&["10.244.2.0/25"]));
    wait_until("IPv6 PodCIDR withdrawn at FRR", 2 * S, || {
        frr.paths("ipv6", "fd00:244:1::/64").is_none()
    });
    assert_eq!(
        counter(&frr, "10.0.0.2", "notificationsRecv"),
        0,
        "no NOTIFICATION from us"
    );

    let st = lab.status();
    let n = &st.neighbors[0];
    assert_eq!(format!("{:?}", n.state), "Established");
    assert_eq!(n.announced, vec!["10.244.2.0/25".parse().unwrap()]);
    assert!(n.negotiated.as_ref().unwrap().four_octet_as);
    // FRR's UPDATEs (our routes reflected back, its End-of-RIBs, sent after its coalesce
    // delay) parse cleanly.
    wait_until("UPDATEs from FRR", 5 * S, || {
        lab.status().neighbors[0].counters.updates_in > 0
    });
    let n = &lab.status().neighbors[0];
    assert_eq!(n.counters.updates_malformed, 0, "{:?}", n.counters);
    assert_eq!(n.counters.established_transitions, 1, "{n:?}");
}

/// The router's operator takes the session down with an RFC 9003 shutdown communication, then
/// brings it back; later a hard `clear bgp`. We show the message, and reconnect each time.
#[test]
fn frr_admin_shutdown_message_shown_then_reconnect_and_hard_reset() {
    let mut lab = Lab::new("fadm", 1);
    let frr = lab.frr(0, &frr_router(0, 65000, 65001, "", &[]));
    lab.speaker(
        &speaker_cfg(65001, &neighbor(0, 65000, "")),
        &state(&["10.244.1.0/24"]),
    );
    wait_until("established", 10 * S, || frr.established("10.0.0.2"));
    wait_path(&frr, "ipv4", "10.244.1.0/24", 3 * S);

    frr.configure(
        65000,
        &["neighbor 10.0.0.2 shutdown message rack 7 maintenance"],
    );
    wait_until("our side sees the shutdown", 3 * S, || {
        let st = lab.status();
        let n = &st.neighbors[0];
        n.state != nodeplane_bgp::fsm::State::Established && n.counters.notifications_in == 1
    });
    let st = lab.status();
    let err = st.neighbors[0].last_error.clone().unwrap_or_default();
    assert!(
        err.contains("administrative shutdown") && err.contains("rack 7 maintenance"),
        "{err}"
    );
    wait_until("route gone with the session", 2 * S, || {
        frr.paths("ipv4", "10.244.1.0/24").is_none()
    });

    frr.configure(65000, &["no neighbor 10.0.0.2 shutdown"]);
    wait_until("back after no shutdown", 10 * S, || {
        frr.established("10.0.0.2")
    });
    wait_path(&frr, "ipv4", "10.244.1.0/24", 3 * S);

    let before = counter(&frr, "10.0.0.2", "notificationsSent");
    frr.try_cmd("clear bgp 10.0.0.2").expect("clear bgp");
    wait_until("hard reset sent", 3 * S, || {
        counter(&frr, "10.0.0.2", "notificationsSent") > before
    });
    wait_until("back after hard reset", 10 * S, || {
        frr.established("10.0.0.2")
    });
    wait_path(&frr, "ipv4", "10.244.1.0/24", 3 * S);
    let st = lab.status();
    assert_eq!(
        st.neighbors[0].counters.established_transitions, 3,
        "{:?}",
        st.neighbors[0]
    );
    assert_eq!(st.neighbors[0].counters.notifications_in, 2);
}

#[test]
fn frr_hold_timer_expires_when_the_speaker_is_frozen_then_recovers() {
    let mut lab = Lab::new("fhold", 1);
    let frr = lab.frr(0, &frr_router(0, 65000, 65001, "", &[]));
    let sp = lab.speaker(
        &speaker_cfg(65001, &neighbor(0, 65000, "")),
        &state(&["10.244.1.0/24"]),
    );
    wait_until("established", 10 * S, || frr.established("10.0.0.2"));
    wait_path(&frr, "ipv4", "10.244.1.0/24", 3 * S);
    lab.signal(sp, "STOP");
    wait_until("FRR's hold timer expiry", 6 * S, || {
        counter(&frr, "10.0.0.2", "notificationsSent") >= 1 && !frr.established("10.0.0.2")
    });
    let n = frr.neighbor("10.0.0.2");
    let reason = n["lastNotificationReason"].as_str().unwrap_or("");
    assert!(reason.contains("Hold Timer Expired"), "{n}");
    // A NOTIFICATION ends graceful restart (no RFC 8538 N-bit): the route goes with the session.
    wait_until("route dropped with the session", 2 * S, || {
        frr.paths("ipv4", "10.244.1.0/24").is_none()
    });
    lab.signal(sp, "CONT");
    wait_until("re-established", 15 * S, || frr.established("10.0.0.2"));
    wait_path(&frr, "ipv4", "10.244.1.0/24", 3 * S);
}

#[test]
fn frr_graceful_restart_keeps_stale_route_while_we_restart_and_end_of_rib_flushes() {
    let mut lab = Lab::new("fgr", 1);
    let frr = lab.frr(
        0,
        &frr_router(0, 65000, 65001, " bgp graceful-restart\n", &[]),
    );
    let cfg = speaker_cfg(65001, &neighbor(0, 65000, ""));
    let sp = lab.speaker(&cfg, &state(&["10.244.1.0/24", "10.244.9.0/24"]));
    wait_until("established", 10 * S, || frr.established("10.0.0.2"));
    wait_path(&frr, "ipv4", "10.244.9.0/24", 3 * S);
    wait_path(&frr, "ipv4", "10.244.1.0/24", 3 * S);
    let gr = frr.neighbor("10.0.0.2")["gracefulRestartInfo"].clone();
    assert_eq!(gr["remoteGrMode"], "Restart", "{gr}");
    assert_eq!(gr["timers"]["receivedRestartTimer"], 120, "{gr}");
    assert_eq!(gr["ipv4Unicast"]["fBit"], true, "{gr}");
    assert_eq!(
        gr["ipv4Unicast"]["endOfRibStatus"]["endOfRibRecv"], true,
        "{gr}"
    );

    // Crash: no NOTIFICATION, no withdraw.
    lab.kill(sp);
    wait_until("FRR notices", 5 * S, || !frr.established("10.0.0.2"));
    std::thread::sleep(Duration::from_millis(300));
    for prefix in ["10.244.1.0/24", "10.244.9.0/24"] {
        let p = frr
            .paths("ipv4", prefix)
            .unwrap_or_else(|| panic!("{prefix} kept during graceful restart"));
        assert_eq!(p[0]["stale"], true, "{prefix} marked stale: {p:?}");
    }

    // Come back without 10.244.9.0/24: the re-announced route loses its stale flag, our
    // End-of-RIB flushes the one we did not announce again, long before FRR's timers would.
    lab.speaker(&cfg, &state(&["10.244.1.0/24"]));
    wait_until("re-established", 10 * S, || frr.established("10.0.0.2"));
    wait_until("stale route flushed on End-of-RIB", 3 * S, || {
        frr.paths("ipv4", "10.244.9.0/24").is_none()
    });
    let p = wait_path(&frr, "ipv4", "10.244.1.0/24", S);
    assert!(p.get("stale").is_none(), "stale flag cleared: {p}");
    let gr = frr.neighbor("10.0.0.2")["gracefulRestartInfo"].clone();
    assert_eq!(
        gr["ipv4Unicast"]["endOfRibStatus"]["endOfRibRecv"], true,
        "{gr}"
    );
}

#[test]
fn frr_md5_right_key_establishes_wrong_key_never_does() {
    let mut lab = Lab::new("fmd5", 2);
    let key = lab.write("md5.key", "s3cret-key\n");
    let good = lab.frr(
        0,
        &frr_router(0, 65000, 65001, "", &["password s3cret-key"]),
    );
    let bad = lab.frr(1, &frr_router(1, 65000, 65001, "", &["password other-key"]));
    let md5 = format!("    md5_password_file: {}\n", key.display());
    let cfg = speaker_cfg(
        65001,
        &(neighbor(0, 65000, &md5) + &neighbor(1, 65000, &md5)),
    );
    lab.speaker(&cfg, &state(&["10.244.1.0/24"]));
    wait_until("right key established", 10 * S, || {
        good.established("10.0.0.2")
    });
    wait_path(&good, "ipv4", "10.244.1.0/24", 3 * S);
    // Several connect attempts each way (both sides retry every second).
    std::thread::sleep(3 * S);
    let n = bad.neighbor("10.0.1.2");
    assert_ne!(n["bgpState"], "Established", "{n}");
    assert_eq!(n["connectionsEstablished"], 0, "{n}");
    assert!(bad.paths("ipv4", "10.244.1.0/24").is_none());
    let st = lab.status();
    assert_eq!(format!("{:?}", st.neighbors[0].state), "Established");
    assert_ne!(format!("{:?}", st.neighbors[1].state), "Established");
    assert!(st.neighbors[1].md5);
}

#[test]
fn frr_two_neighbours_ebgp_leaf_with_gtsm_and_ibgp_core() {
    let mut lab = Lab::new("ftwo", 2);
    let leaf = lab.frr(
        0,
        &frr_router(0, 65000, 65001, "", &["ttl-security hops 1"]),
    );
    let core = lab.frr(1, &frr_router(1, 65001, 65001, "", &[]));
    // Not FRR's default LOCAL_PREF (100), so the value shown must be the one we sent.
    let cfg = speaker_cfg(
        65001,
        &(neighbor(0, 65000, "    ttl_security: true\n") + &neighbor(1, 65001, "")),
    ) + "announce:\n  local_pref: 150\n  med: 20\n";
    lab.speaker(&cfg, &state(&["10.244.1.0/24", "fd00:244:1::/64"]));
    wait_until("leaf established", 10 * S, || leaf.established("10.0.0.2"));
    wait_until("core established", 10 * S, || core.established("10.0.1.2"));
    let l = wait_path(&leaf, "ipv4", "10.244.1.0/24", 3 * S);
    assert_eq!(l["path"], "65001", "{l}");
    assert_eq!(l["pathFrom"], "external", "{l}");
    assert_eq!(next_hop(&l), "10.0.0.2", "{l}");
    assert_eq!(l["metric"], 20, "MED: {l}");
    assert!(l.get("locPrf").is_none(), "no LOCAL_PREF over eBGP: {l}");
    let c = wait_path(&core, "ipv4", "10.244.1.0/24", 3 * S);
    assert_eq!(c["pathFrom"], "internal", "{c}");
    assert_eq!(c["path"], "", "iBGP: empty AS path: {c}");
    assert_eq!(c["locPrf"], 150, "{c}");
    assert_eq!(next_hop(&c), "10.0.1.2", "{c}");
    let c6 = wait_path(&core, "ipv6", "fd00:244:1::/64", 3 * S);
    assert_eq!(next_hop(&c6), "fd00:1::2", "{c6}");
    assert_eq!(c6["locPrf"], 150, "{c6}");
    let n = core.neighbor("10.0.1.2");
    assert_eq!(n["nbrInternalLink"], true, "{n}");
}

/// An IPv6-only underlay: the session runs over IPv6 and still carries the IPv4 PodCIDR (its
/// next hop from `next_hop_ipv4`, since the session has no IPv4 address of ours).
#[test]
fn frr_session_over_ipv6_carries_both_families() {
    let mut lab = Lab::new("fv6", 1);
    let frr = lab.frr(0, &frr_router_to(0, "fd00::2", 65000, 65001, "", &[]));
    let cfg = speaker_cfg(
        65001,
        "  - address: \"fd00::1\"\n    remote_as: 65000\n    next_hop_ipv4: 10.0.0.2\n\
         \x20   hold_time_secs: 3\n    connect_retry_secs: 1\n",
    );
    lab.speaker(&cfg, &state(&["10.244.1.0/24", "fd00:244:1::/64"]));
    wait_until("established over IPv6", 10 * S, || {
        frr.established("fd00::2")
    });
    let p6 = wait_path(&frr, "ipv6", "fd00:244:1::/64", 3 * S);
    assert_eq!(p6["path"], "65001", "{p6}");
    assert_eq!(next_hop(&p6), "fd00::2", "{p6}");
    let p4 = wait_path(&frr, "ipv4", "10.244.1.0/24", 3 * S);
    assert_eq!(p4["path"], "65001", "{p4}");
    assert_eq!(next_hop(&p4), "10.0.0.2", "{p4}");
    assert_eq!(p4["valid"], true, "{p4}");
}

fn received(frr: &Frr, afi: &str, peer: &str) -> u64 {
    frr.json("show bgp summary json")[afi]["peers"][peer]["pfxRcd"]
        .as_u64()
        .unwrap_or(0)
}

/// Thousands of prefixes: split into UPDATEs under 4096 bytes, MP_REACH/MP_UNREACH over 255
/// bytes (extended length), then mass withdrawal, all parsed by FRR without a NOTIFICATION.
#[test]
fn frr_thousands_of_prefixes_packed_and_withdrawn() {
    let mut lab = Lab::new("fmany", 1);
    let frr = lab.frr(0, &frr_router(0, 65000, 65001, "", &[]));
    let mut cidrs: Vec<String> = (0..2000)
        .map(|k| format!("10.{}.{}.0/24", 100 + k / 256, k % 256))
        .collect();
    cidrs.extend((0..1000).map(|k| format!("\"fd00:245:{k:x}::/64\"")));
    let all: Vec<&str> = cidrs.iter().map(String::as_str).collect();
    lab.speaker(&speaker_cfg(65001, &neighbor(0, 65000, "")), &state(&all));
    wait_until("established", 10 * S, || frr.established("10.0.0.2"));
    wait_until("2000 IPv4 + 1000 IPv6 prefixes at FRR", 10 * S, || {
        received(&frr, "ipv4Unicast", "10.0.0.2") == 2000
            && received(&frr, "ipv6Unicast", "10.0.0.2") == 1000
    });
    let p = wait_path(&frr, "ipv6", "fd00:245:3e7::/64", S);
    assert_eq!(next_hop(&p), "fd00::2", "{p}");
    let updates = counter(&frr, "10.0.0.2", "updatesRecv");
    // 2000 x 4 bytes of IPv4 NLRI need two 4096-byte UPDATEs, 1000 x 9 bytes of IPv6 three;
    // plus one End-of-RIB each.
    assert_eq!(updates, 2 + 3 + 2, "UPDATEs packed full");

    lab.write(
        "state.yaml",
        &state(&["10.100.0.0/24", "\"fd00:245:0::/64\""]),
    );
    wait_until("mass withdrawal at FRR", 10 * S, || {
        received(&frr, "ipv4Unicast", "10.0.0.2") == 1
            && received(&frr, "ipv6Unicast", "10.0.0.2") == 1
    });
    assert!(frr.paths("ipv4", "10.100.0.0/24").is_some());
    assert!(frr.paths("ipv6", "fd00:245::/64").is_some());
    assert!(frr.paths("ipv4", "10.107.207.0/24").is_none());
    assert!(frr.established("10.0.0.2"));
    assert_eq!(counter(&frr, "10.0.0.2", "notificationsSent"), 0);
}

/// Hold time 0 offered by the router wins the negotiation (RFC 4271 §4.2: the smaller): no
/// KEEPALIVEs at all, and no hold timer, so the quiet session stays up.
#[test]
fn frr_hold_time_zero_means_no_keepalives_and_no_expiry() {
    let mut lab = Lab::new("fhz", 1);
    let frr = lab.frr(0, &frr_router(0, 65000, 65001, "", &[]));
    frr.configure(65000, &["neighbor 10.0.0.2 timers 0 0"]);
    lab.speaker(
        &speaker_cfg(65001, &neighbor(0, 65000, "")),
        &state(&["10.244.1.0/24"]),
    );
    wait_until("established", 10 * S, || frr.established("10.0.0.2"));
    wait_path(&frr, "ipv4", "10.244.1.0/24", 3 * S);
    let n = frr.neighbor("10.0.0.2");
    assert_eq!(n["bgpTimerHoldTimeMsecs"], 0, "{n}");
    let keepalives = counter(&frr, "10.0.0.2", "keepalivesRecv");
    let ups = lab.status().neighbors[0].counters.established_transitions;
    // Longer than the 3 s we offered: with a hold timer running, one side would drop.
    std::thread::sleep(Duration::from_millis(4500));
    assert!(frr.established("10.0.0.2"));
    assert_eq!(
        counter(&frr, "10.0.0.2", "keepalivesRecv"),
        keepalives,
        "no KEEPALIVE after hold time 0"
    );
    let st = lab.status();
    assert_eq!(
        st.neighbors[0].counters.established_transitions,
        ups,
        "the quiet session never dropped: {:?} / FRR: {}",
        st.neighbors[0],
        frr.neighbor("10.0.0.2")
    );
}

/// The router restarts (a clean stop: Cease NOTIFICATION) and comes back: we reconnect within
/// our backoff and announce again.
#[test]
fn frr_router_restart_we_reconnect_and_announce_again() {
    let mut lab = Lab::new("frst", 1);
    let conf = frr_router(0, 65000, 65001, "", &[]);
    let frr = lab.frr(0, &conf);
    lab.speaker(
        &speaker_cfg(65001, &neighbor(0, 65000, "")),
        &state(&["10.244.1.0/24"]),
    );
    wait_until("established", 10 * S, || frr.established("10.0.0.2"));
    wait_path(&frr, "ipv4", "10.244.1.0/24", 3 * S);
    lab.signal(frr.child, "TERM");
    assert!(
        lab.exited(frr.child, 5 * S).is_some(),
        "bgpd stops on SIGTERM"
    );
    wait_until("we see the router gone", 3 * S, || {
        lab.status().neighbors[0].state != nodeplane_bgp::fsm::State::Established
    });
    let frr = lab.frr(0, &conf);
    wait_until("re-established with the new bgpd", 10 * S, || {
        frr.established("10.0.0.2")
    });
    wait_path(&frr, "ipv4", "10.244.1.0/24", 3 * S);
    let st = lab.status();
    assert_eq!(
        st.neighbors[0].counters.established_transitions, 2,
        "{:?}",
        st.neighbors[0]
    );
}

/// Either side may be the only one that connects: FRR passive (we connect out) on one router,
/// our neighbour passive (FRR connects to our listener) on the other.
#[test]
fn frr_passive_either_side() {
    let mut lab = Lab::new("fpas", 2);
    let r0 = lab.frr(0, &frr_router(0, 65000, 65001, "", &["passive"]));
    let r1 = lab.frr(1, &frr_router(1, 65000, 65001, "", &[]));
    let cfg = speaker_cfg(
        65001,
        &(neighbor(0, 65000, "") + &neighbor(1, 65000, "    passive: true\n")),
    );
    lab.speaker(&cfg, &state(&["10.244.1.0/24"]));
    wait_until("we connected to passive FRR", 10 * S, || {
        r0.established("10.0.0.2")
    });
    wait_until("FRR connected to us", 10 * S, || r1.established("10.0.1.2"));
    // Who opened the TCP connection: the side on port 179 is the one that accepted.
    assert_eq!(r0.neighbor("10.0.0.2")["portLocal"], 179, "r0 accepted");
    assert_eq!(r1.neighbor("10.0.1.2")["portForeign"], 179, "r1 connected");
    wait_path(&r0, "ipv4", "10.244.1.0/24", 3 * S);
    wait_path(&r1, "ipv4", "10.244.1.0/24", 3 * S);
}
