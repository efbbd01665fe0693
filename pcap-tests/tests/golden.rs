//! Golden replay tests: every case under `pcap-tests/cases/` is replayed with `nodeplane replay`
//! (the library call) and
//! 1. checked against its intent (`case.json`: per-packet verdicts, backends, rewritten
//!    addresses; plus invariants every case must hold: every packet accounted for once, MACs,
//!    TTL, checksums of every output packet, sticky backends), then
//! 2. compared byte for byte with `expected/` (`<iface>.pcap`, `verdicts.jsonl`,
//!    `summary.json`, and `events.jsonl` for cases that ask for flow events).
//!
//! `NODEPLANE_UPDATE_GOLDEN=1` rewrites `expected/` of every case whose intent checks pass (a
//! case that fails them keeps its old goldens and fails the test). `NODEPLANE_CASE=name` runs
//! one case.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodeplane_control::replay::{self, ReplayOptions, ReplaySummary};
use nodeplane_dataplane::worker::RemovedFlowAction;
use nodeplane_pcap_tests::pcapio::read_capture;
use nodeplane_pcap_tests::spec::{CaseSpec, Expect};
use nodeplane_pcap_tests::wire::{self, FragmentChecker};
use nodeplane_pcap_tests::TempDir;
use nodeplane_state as st;
use serde_json::Value;

/// One input packet in merged order.
struct InPkt {
    iface: String,
    ts: Duration,
    frame: Vec<u8>,
}

struct Run {
    summary: ReplaySummary,
    /// Verdict lines in file (processing) order.
    lines: Vec<Value>,
    /// Flow event records (`events.jsonl`; cases with `events` only).
    events: Vec<Value>,
    summary_text: String,
    /// iface → frames as transmitted.
    outputs: BTreeMap<String, Vec<(Duration, Vec<u8>)>>,
    /// Names of the files the replay wrote.
    files: BTreeSet<String>,
}

fn load_spec(dir: &Path) -> CaseSpec {
    let text = std::fs::read_to_string(dir.join("case.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join("case.json").display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}/case.json: {e}", dir.display()))
}

fn inputs(dir: &Path, spec: &CaseSpec) -> Vec<InPkt> {
    let mut all = Vec::new();
    for (k, i) in spec.inputs.iter().enumerate() {
        let (_, frames) = read_capture(&dir.join(&i.file)).expect("readable input");
        for (n, (ts, frame)) in frames.into_iter().enumerate() {
            all.push((
                (ts, k, n),
                InPkt {
                    iface: i.iface.clone(),
                    ts,
                    frame,
                },
            ));
        }
    }
    all.sort_by_key(|(k, _)| *k);
    all.into_iter().map(|(_, p)| p).collect()
}

/// `summary.json`: counts derived from the replay summary (no timings: they vary). Per-service
/// counters and resets sent only for cases that ask (`services`), so other goldens stay as
/// they were.
fn summary_json(s: &ReplaySummary, spec: &CaseSpec) -> String {
    let mut v = serde_json::json!({
        "packets": s.packets,
        "forward": s.forwarded,
        "pass": s.passed,
        "drop": s.dropped,
        "drops": s.drops,
        "transmitted": s.transmitted,
    });
    if s.rejects_sent + s.rejects_suppressed > 0 {
        v["rejects_sent"] = s.rejects_sent.into();
        v["rejects_suppressed"] = s.rejects_suppressed.into();
    }
    if s.mtu_icmp_sent + s.mtu_icmp_suppressed > 0 {
        v["mtu_icmp_sent"] = s.mtu_icmp_sent.into();
        v["mtu_icmp_suppressed"] = s.mtu_icmp_suppressed.into();
    }
    if spec.services {
        v["services"] = serde_json::to_value(&s.services).expect("json");
        if spec.removed_flow_action.is_some() {
            v["rst_sent"] = s.rst_sent.into();
        }
    }
    serde_json::to_string_pretty(&v).expect("json") + "\n"
}

/// Reads a JSON-lines file.
fn read_jsonl(path: &Path) -> Result<Vec<Value>, String> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    text.lines()
        .enumerate()
        .map(|(n, l)| {
            serde_json::from_str(l).map_err(|e| format!("{name} line {}: {e}: {l}", n + 1))
        })
        .collect()
}

fn run_replay(dir: &Path, spec: &CaseSpec, out: &Path) -> Result<Run, String> {
    let removed_flow_action = match spec.removed_flow_action.as_deref() {
        None => RemovedFlowAction::default(),
        Some(a) => serde_json::from_value(Value::String(a.into()))
            .map_err(|e| format!("removed_flow_action {a:?}: {e}"))?,
    };
    let opts = ReplayOptions {
        state: dir.join(&spec.state),
        inputs: spec
            .inputs
            .iter()
            .map(|i| (i.iface.clone(), dir.join(&i.file)))
            .collect(),
        output_dir: out.to_path_buf(),
        state_at: spec
            .state_at
            .iter()
            .map(|s| (s.seconds, dir.join(&s.state)))
            .collect(),
        events: spec.events.then(|| out.join("events.jsonl")),
        removed_flow_action,
    };
    let summary = replay::run(&opts).map_err(|e| format!("replay failed: {e}"))?;
    let lines = read_jsonl(&out.join("verdicts.jsonl"))?;
    let events = if spec.events {
        read_jsonl(&out.join("events.jsonl"))?
    } else {
        Vec::new()
    };
    let mut outputs = BTreeMap::new();
    let mut files = BTreeSet::new();
    for e in std::fs::read_dir(out).map_err(|e| e.to_string())? {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(iface) = name.strip_suffix(".pcap") {
            let (link, frames) = read_capture(&e.path())?;
            if link != pcap_file::DataLink::ETHERNET {
                return Err(format!("{name}: link type {link:?}, expected Ethernet"));
            }
            outputs.insert(iface.to_string(), frames);
        }
        files.insert(name);
    }
    let summary_text = summary_json(&summary, spec);
    Ok(Run {
        summary,
        lines,
        events,
        summary_text,
        outputs,
        files,
    })
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(|x| x.as_str()).map(str::to_string)
}

/// The intent checks. Returns every violation found.
fn check_intent(dir: &Path, spec: &CaseSpec, ins: &[InPkt], run: &Run) -> Vec<String> {
    let mut errs = Vec::new();
    let state = st::load_path(&dir.join(&spec.state)).expect("case state loads");
    let n = ins.len();

    // Every packet exactly once, named with its input interface.
    let mut by_index: BTreeMap<usize, &Value> = BTreeMap::new();
    for (pos, l) in run.lines.iter().enumerate() {
        let Some(i) = l.get("index").and_then(Value::as_u64).map(|i| i as usize) else {
            errs.push(format!("verdict line {pos}: no index: {l}"));
            continue;
        };
        if i >= n {
            errs.push(format!(
                "verdict line {pos}: index {i} but only {n} input packets"
            ));
        } else if by_index.insert(i, l).is_some() {
            errs.push(format!("packet {i}: more than one verdict line"));
        } else if s(l, "input").as_deref() != Some(ins[i].iface.as_str()) {
            errs.push(format!(
                "packet {i}: input {:?}, it entered on {}",
                l.get("input"),
                ins[i].iface
            ));
        }
    }
    if by_index.len() != n {
        let missing: Vec<usize> = (0..n).filter(|i| !by_index.contains_key(i)).collect();
        errs.push(format!(
            "{} input packets, {} with a verdict; missing: {missing:?}",
            n,
            by_index.len()
        ));
    }

    // Verdict shape and summary consistency.
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_egress: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for l in &run.lines {
        let i = l["index"].as_u64().unwrap_or(u64::MAX);
        let verdict = s(l, "verdict").unwrap_or_default();
        let reason = s(l, "reason");
        let egress = s(l, "egress");
        *counts.entry(verdict.clone()).or_default() += 1;
        match verdict.as_str() {
            "drop" => match &reason {
                Some(r) => *reasons.entry(r.clone()).or_default() += 1,
                None => errs.push(format!("packet {i}: dropped without a reason")),
            },
            "forward" | "pass" => {
                if reason.is_some() {
                    errs.push(format!(
                        "packet {i}: {verdict} with a drop reason {reason:?}"
                    ));
                }
            }
            other => errs.push(format!("packet {i}: unknown verdict {other:?}")),
        }
        match (verdict.as_str(), egress) {
            ("forward", Some(e)) => per_egress.entry(e).or_default().push(i as usize),
            ("forward", None) => errs.push(format!("packet {i}: forwarded without an egress")),
            (_, Some(e)) => errs.push(format!("packet {i}: {verdict} names an egress {e}")),
            _ => {}
        }
    }
    let sm = &run.summary;
    let c = |k: &str| counts.get(k).copied().unwrap_or(0);
    if (sm.packets, sm.forwarded, sm.passed, sm.dropped)
        != (n as u64, c("forward"), c("pass"), c("drop"))
    {
        errs.push(format!(
            "summary packets/forward/pass/drop {}/{}/{}/{} but inputs/lines say {n}/{}/{}/{}",
            sm.packets,
            sm.forwarded,
            sm.passed,
            sm.dropped,
            c("forward"),
            c("pass"),
            c("drop")
        ));
    }
    if sm.drops != reasons {
        errs.push(format!(
            "summary drops {:?} but verdict lines say {reasons:?}",
            sm.drops
        ));
    }
    if let Some(t) = &spec.totals {
        if (t.packets, t.forward, t.pass, t.drop) != (n as u64, c("forward"), c("pass"), c("drop"))
        {
            errs.push(format!(
                "expected totals packets/forward/pass/drop {}/{}/{}/{}, got {n}/{}/{}/{}",
                t.packets,
                t.forward,
                t.pass,
                t.drop,
                c("forward"),
                c("pass"),
                c("drop")
            ));
        }
        if let Some(d) = &t.drops {
            if d != &reasons {
                errs.push(format!("expected drops {d:?}, got {reasons:?}"));
            }
        }
    }

    // Packets rejected (no-backend): answered with a reset or a port unreachable, sent back out
    // of their input interface with their timestamp.
    let reject_of: BTreeSet<usize> = spec
        .expect
        .iter()
        .filter(|e| e.rejected == Some(true))
        .map(|e| e.index)
        .collect();
    let mut rejects_on: BTreeMap<String, usize> = BTreeMap::new();
    for &i in &reject_of {
        if let Some(p) = ins.get(i) {
            *rejects_on.entry(p.iface.clone()).or_default() += 1;
        }
    }
    // Packets over their egress MTU: answered with ICMP frag-needed / packet-too-big, sent back
    // out of their input interface with their timestamp.
    let frag_of: BTreeMap<usize, (u16, String)> = spec
        .expect
        .iter()
        .filter_map(|e| Some((e.index, (e.frag_needed?, e.frag_needed_from.clone()?))))
        .collect();
    for &i in frag_of.keys() {
        if let Some(p) = ins.get(i) {
            *rejects_on.entry(p.iface.clone()).or_default() += 1;
        }
    }
    if sm.mtu_icmp_sent != frag_of.len() as u64 {
        errs.push(format!(
            "summary: {} ICMP frag-needed sent, the case expects {}",
            sm.mtu_icmp_sent,
            frag_of.len()
        ));
    }
    if sm.rejects_sent != reject_of.len() as u64 {
        errs.push(format!(
            "summary: {} rejects sent, the case expects {}",
            sm.rejects_sent,
            reject_of.len()
        ));
    }

    // Output files: one per interface that transmitted, as many packets as forward verdicts
    // (and rejects) name it.
    for (iface, frames) in &run.outputs {
        let want =
            per_egress.get(iface).map_or(0, Vec::len) + rejects_on.get(iface).copied().unwrap_or(0);
        if frames.len() != want {
            errs.push(format!(
                "{iface}.pcap has {} packets, {want} forward verdicts and rejects name {iface}",
                frames.len()
            ));
        }
    }
    for (iface, idx) in &per_egress {
        if !run.outputs.contains_key(iface) {
            errs.push(format!(
                "{} packets forwarded to {iface} but no {iface}.pcap",
                idx.len()
            ));
        }
    }

    // Per output packet: MACs, checksums, and the input it came from (by timestamp: inputs
    // have unique timestamps and outputs keep them).
    let ts_to_index: BTreeMap<Duration, usize> =
        ins.iter().enumerate().map(|(i, p)| (p.ts, i)).collect();
    let mut out_of: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    let mut rejected_seen: BTreeSet<usize> = BTreeSet::new();
    for (iface, frames) in &run.outputs {
        let Some(itf) = state.interfaces.iter().find(|i| &i.name == iface) else {
            errs.push(format!("{iface}.pcap: no such interface in the state"));
            continue;
        };
        let want_dst: Vec<[u8; 6]> = match itf.role {
            // The uplink's next hop; the host interface's peer in the node's stack.
            st::InterfaceRole::Uplink | st::InterfaceRole::Host => {
                itf.gateway_mac.iter().map(|m| m.0).collect()
            }
            st::InterfaceRole::Pod => state
                .endpoints
                .iter()
                .filter(|e| &e.interface == iface)
                .map(|e| e.mac.0)
                .collect(),
        };
        let mut frags = FragmentChecker::default();
        let mut order = Vec::new();
        for (k, (ts, f)) in frames.iter().enumerate() {
            let what = format!("{iface}.pcap packet {k}");
            let Some(info) = wire::decode(f) else {
                errs.push(format!("{what}: not an Ethernet frame"));
                continue;
            };
            if info.src_mac != itf.mac.0 {
                errs.push(format!(
                    "{what}: src MAC {:02x?}, want {} ({iface}'s MAC)",
                    info.src_mac, itf.mac
                ));
            }
            if !want_dst.contains(&info.dst_mac) {
                errs.push(format!(
                    "{what}: dst MAC {:02x?}, want one of {want_dst:02x?}",
                    info.dst_mac
                ));
            }
            if spec.checksums_valid {
                if let Err(e) = wire::verify_checksums(f) {
                    errs.push(format!("{what}: {e}: {}", wire::describe(f)));
                }
                frags.add(f);
            }
            match ts_to_index.get(ts) {
                None => errs.push(format!("{what}: timestamp {ts:?} is no input packet's")),
                Some(&i) if reject_of.contains(&i) && !rejected_seen.contains(&i) => {
                    rejected_seen.insert(i);
                    if &ins[i].iface != iface {
                        errs.push(format!(
                            "{what}: the reject of packet {i} left on {iface}, it entered on {}",
                            ins[i].iface
                        ));
                    }
                    check_reject(i, &ins[i].frame, f, &mut errs);
                }
                Some(&i) if frag_of.contains_key(&i) && !rejected_seen.contains(&i) => {
                    rejected_seen.insert(i);
                    if &ins[i].iface != iface {
                        errs.push(format!(
                            "{what}: the ICMP error about packet {i} left on {iface}, it entered on {}",
                            ins[i].iface
                        ));
                    }
                    let (mtu, from) = &frag_of[&i];
                    check_frag_needed(i, &ins[i].frame, f, *mtu, from, &mut errs);
                }
                Some(&i) => {
                    order.push(i);
                    if out_of.insert(i, f.clone()).is_some() {
                        errs.push(format!("{what}: input packet {i} transmitted twice"));
                    }
                    match by_index.get(&i) {
                        Some(l) if s(l, "egress").as_deref() == Some(iface.as_str()) => {}
                        _ => errs.push(format!(
                            "{what}: input packet {i} was not forwarded to {iface}"
                        )),
                    }
                }
            }
        }
        let (_, ferrs) = frags.finish();
        errs.extend(ferrs.into_iter().map(|e| format!("{iface}.pcap: {e}")));
        if spec.ordered_output {
            let want = per_egress.get(iface).cloned().unwrap_or_default();
            if order != want {
                errs.push(format!(
                    "{iface}.pcap: packets in input order {order:?}, verdict lines say {want:?}"
                ));
            }
        }
    }

    for &i in &reject_of {
        if !rejected_seen.contains(&i) {
            errs.push(format!("packet {i}: rejected, but no reject was sent"));
        }
    }
    for &i in frag_of.keys() {
        if !rejected_seen.contains(&i) {
            errs.push(format!(
                "packet {i}: over the MTU, but no ICMP error was sent"
            ));
        }
    }

    // Packets answered by a TCP reset (removed_flow_action: rst): their output is the reset.
    let rst_of: BTreeSet<usize> = spec
        .expect
        .iter()
        .filter(|e| e.rst == Some(true))
        .map(|e| e.index)
        .collect();
    for &i in &rst_of {
        match (out_of.get(&i), ins.get(i)) {
            (Some(out), Some(input)) => check_rst(i, &input.frame, out, &mut errs),
            _ => errs.push(format!(
                "packet {i}: answered by a reset, but none was sent"
            )),
        }
    }
    let want_rst = if spec.removed_flow_action.is_some() {
        rst_of.len() as u64
    } else {
        0
    };
    if sm.rst_sent != want_rst {
        errs.push(format!(
            "summary: {} resets sent, the case expects {want_rst}",
            sm.rst_sent
        ));
    }

    // Per forwarded packet: TTL decremented, DNAT towards the backend.
    for (&i, out) in &out_of {
        if rst_of.contains(&i) {
            continue;
        }
        let (Some(a), Some(b)) = (wire::decode(&ins[i].frame), wire::decode(out)) else {
            continue;
        };
        let (Some(ia), Some(ib)) = (a.ip, b.ip) else {
            continue;
        };
        if ib.ttl + 1 != ia.ttl {
            errs.push(format!(
                "packet {i}: TTL/hop limit {} in, {} out (want one less)",
                ia.ttl, ib.ttl
            ));
        }
        let l = by_index[&i];
        let ct = s(l, "ct");
        if let Some(be) = s(l, "backend") {
            // Later fragments carry no ports: their address alone must be the backend's.
            let port = if ib.is_first_or_whole() {
                ib.dport
            } else {
                wire::split_endpoint(&be).and_then(|x| x.1)
            };
            if matches!(ct.as_deref(), Some("new" | "established"))
                && !wire::endpoint_matches(&be, ib.dst, port)
            {
                errs.push(format!(
                    "packet {i}: backend {be} but sent to {}",
                    wire::endpoint(ib.dst, ib.dport)
                ));
            }
        }
    }

    // Backends: sticky per flow, per client with affinity, shares.
    let mut flow_backend: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut client_backend: BTreeMap<IpAddr, (usize, String)> = BTreeMap::new();
    let mut new_flows: BTreeMap<String, u64> = BTreeMap::new();
    for (&i, l) in &by_index {
        let Some(be) = s(l, "backend") else { continue };
        let Some(ip) = wire::decode(&ins[i].frame).and_then(|f| f.ip) else {
            continue;
        };
        if s(l, "ct").as_deref() == Some("reply") || s(l, "ct").as_deref() == Some("related") {
            continue;
        }
        let key = format!(
            "{} {} > {} {}",
            ip.proto,
            wire::endpoint(ip.src, ip.sport),
            wire::endpoint(ip.dst, ip.dport),
            ""
        );
        if spec.sticky_flows {
            if let Some((j, b)) = flow_backend.get(&key) {
                if b != &be {
                    errs.push(format!("packet {i}: flow {key} got backend {be}, packet {j} of the same flow got {b}"));
                }
            } else {
                flow_backend.insert(key, (i, be.clone()));
            }
        }
        if spec.affinity_by_client {
            if let Some((j, b)) = client_backend.get(&ip.src) {
                if b != &be {
                    errs.push(format!(
                        "packet {i}: client {} got backend {be}, packet {j} got {b} (affinity)",
                        ip.src
                    ));
                }
            } else {
                client_backend.insert(ip.src, (i, be.clone()));
            }
        }
        if s(l, "ct").as_deref() == Some("new") {
            *new_flows.entry(be).or_default() += 1;
        }
    }
    if let Some(share) = &spec.backend_share {
        let total: u64 = new_flows.values().sum();
        for b in new_flows.keys() {
            if !share.shares.contains_key(b) {
                errs.push(format!(
                    "new flows went to {b}, not a backend of the share table"
                ));
            }
        }
        for (b, want) in &share.shares {
            let got = new_flows.get(b).copied().unwrap_or(0) as f64 / total.max(1) as f64;
            if (got - want).abs() > share.tolerance {
                errs.push(format!(
                    "backend {b}: {:.3} of {total} new flows, want {want:.3} ± {}",
                    got, share.tolerance
                ));
            }
        }
    }

    if spec.services {
        check_services(ins, run, &rst_of, &mut errs);
    }
    if spec.events {
        check_events(ins, run, &rst_of, &mut errs);
    }

    // Per-packet expectations.
    for e in &spec.expect {
        let Some(l) = by_index.get(&e.index) else {
            continue;
        };
        check_expect(e, l, out_of.get(&e.index), &by_index, &mut errs);
    }
    errs
}

/// What is wrong with `out`, the `kind` (reset, reject, frag-needed) answering input packet `i`.
fn wrong(kind: &str, i: usize, input: &[u8], out: &[u8], what: &str) -> String {
    format!(
        "packet {i}: {kind} {what}: {} answering {}",
        wire::describe(out),
        wire::describe(input)
    )
}

/// `out`, the `kind` answering input packet `i`, and the input, decoded: `(input, its IP,
/// answer, its IP)`. What is wrong goes to `errs`: MACs not swapped (the checks go on), not
/// Ethernet or not IP (None: nothing more to check).
fn decode_answer(
    kind: &str,
    i: usize,
    input: &[u8],
    out: &[u8],
    errs: &mut Vec<String>,
) -> Option<(wire::FrameInfo, wire::IpInfo, wire::FrameInfo, wire::IpInfo)> {
    let (Some(a), Some(b)) = (wire::decode(input), wire::decode(out)) else {
        errs.push(wrong(kind, i, input, out, "not Ethernet"));
        return None;
    };
    if (b.src_mac, b.dst_mac) != (a.dst_mac, a.src_mac) {
        errs.push(wrong(kind, i, input, out, "MACs not swapped"));
    }
    let (Some(ia), Some(ib)) = (a.ip.clone(), b.ip.clone()) else {
        errs.push(wrong(kind, i, input, out, "not IP"));
        return None;
    };
    Some((a, ia, b, ib))
}

/// The ICMP error part of an answer (`ib`: its IP header; ICMPv6 when `v6`): ICMP type `ty`
/// (`name` in the complaint) and code `code`. Returns the offset of the ICMP header.
fn check_icmp_error(
    b: &wire::FrameInfo,
    ib: &wire::IpInfo,
    out: &[u8],
    v6: bool,
    (ty, code): (u8, u8),
    name: &str,
    bad: &mut impl FnMut(String),
) -> usize {
    let proto = if v6 { 58 } else { 1 };
    if ib.proto != proto || b.icmp_type != Some(ty) {
        bad(format!("not an ICMP{} {name}", if v6 { "v6" } else { "" }));
    }
    let icmp_off = ib.ip_off + if v6 { 40 } else { 20 };
    if out.get(icmp_off + 1) != Some(&code) {
        bad(format!("code {:?}, want {code}", out.get(icmp_off + 1)));
    }
    icmp_off
}

/// The reset answering input packet `i` (RFC 9293 §3.10.7.1): back to its sender (MACs,
/// addresses and ports swapped), RST set, no payload; with the segment's ACK the reset takes
/// its sequence number from it, else it acknowledges everything the segment occupied.
fn check_rst(i: usize, input: &[u8], out: &[u8], errs: &mut Vec<String>) {
    let Some((_, ia, _, ib)) = decode_answer("reset", i, input, out, errs) else {
        return;
    };
    let mut bad = |what: String| errs.push(wrong("reset", i, input, out, &what));
    if (ib.src, ib.sport, ib.dst, ib.dport) != (ia.dst, ia.dport, ia.src, ia.sport) {
        bad("addresses/ports not swapped".into());
    }
    let (Some(ta), Some(tb)) = (wire::tcp(input, &ia), wire::tcp(out, &ib)) else {
        return bad("not TCP".into());
    };
    if tb.payload_len != 0 {
        bad(format!("carries {} payload bytes", tb.payload_len));
    }
    use wire::TcpInfo as T;
    let want = if ta.flags & T::ACK != 0 {
        (ta.ack, 0, T::RST)
    } else {
        let len = ta.payload_len as u32
            + u32::from(ta.flags & T::SYN != 0)
            + u32::from(ta.flags & T::FIN != 0);
        (0, ta.seq.wrapping_add(len), T::RST | T::ACK)
    };
    if (tb.seq, tb.ack, tb.flags) != want {
        bad(format!(
            "seq/ack/flags {}/{}/{:#04x}, want {}/{}/{:#04x}",
            tb.seq, tb.ack, tb.flags, want.0, want.1, want.2
        ));
    }
}

/// The reject answering input packet `i`: for TCP the reset (as [`check_rst`]); otherwise an
/// ICMP destination unreachable, code port unreachable (ICMPv6: type 1 code 4), from the packet's
/// destination to its source, quoting the packet's IP header and at least 8 bytes after it.
fn check_reject(i: usize, input: &[u8], out: &[u8], errs: &mut Vec<String>) {
    if wire::decode(input)
        .and_then(|a| a.ip)
        .is_some_and(|ia| ia.proto == 6)
    {
        return check_rst(i, input, out, errs);
    }
    let Some((_, ia, b, ib)) = decode_answer("reject", i, input, out, errs) else {
        return;
    };
    let mut bad = |what: String| errs.push(wrong("reject", i, input, out, &what));
    if (ib.src, ib.dst) != (ia.dst, ia.src) {
        bad("not from the packet's destination to its source".into());
    }
    let v6 = ia.src.is_ipv6();
    let ty_code = if v6 { (1, 4) } else { (3, 3) };
    let icmp_off = check_icmp_error(
        &b,
        &ib,
        out,
        v6,
        ty_code,
        "destination unreachable (port unreachable)",
        &mut bad,
    );
    let quoted = &out[(icmp_off + 8).min(out.len())..];
    let min = if v6 { 48 } else { 28 };
    let orig = &input[ia.ip_off..ia.end];
    if quoted.len() < min || !orig.starts_with(quoted) {
        bad(format!(
            "quotes {} bytes that are not the packet's first bytes (at least {min})",
            quoted.len()
        ));
    }
    match b.inner {
        Some(q) if (q.src, q.dst, q.sport, q.dport) == (ia.src, ia.dst, ia.sport, ia.dport) => {}
        _ => bad("does not quote the packet's addresses and ports".into()),
    }
}

/// An ICMP fragmentation-needed (type 3 code 4) / ICMPv6 packet-too-big (type 2) answering
/// `input`: MACs swapped, from `from` to the packet's source, announcing `mtu`, quoting the
/// packet's first bytes as it arrived (at most 576 / 1280 bytes of error datagram).
fn check_frag_needed(
    i: usize,
    input: &[u8],
    out: &[u8],
    mtu: u16,
    from: &str,
    errs: &mut Vec<String>,
) {
    let Some((_, ia, b, ib)) = decode_answer("frag-needed", i, input, out, errs) else {
        return;
    };
    let mut bad = |what: String| errs.push(wrong("frag-needed", i, input, out, &what));
    if (ib.src.to_string().as_str(), ib.dst) != (from, ia.src) {
        bad(format!("not from {from} to the packet's source"));
    }
    let v6 = ia.src.is_ipv6();
    let (ty_code, max) = if v6 { ((2, 0), 1280) } else { ((3, 4), 576) };
    let icmp_off = check_icmp_error(
        &b,
        &ib,
        out,
        v6,
        ty_code,
        &format!("type {}", ty_code.0),
        &mut bad,
    );
    let announced = out
        .get(icmp_off + 4..icmp_off + 8)
        .map(|m| u32::from_be_bytes([m[0], m[1], m[2], m[3]]));
    if announced != Some(u32::from(mtu)) {
        bad(format!("announces {announced:?}, want MTU {mtu}"));
    }
    let quoted = &out[(icmp_off + 8).min(out.len())..];
    let orig = &input[ia.ip_off..ia.end];
    let want = orig.len().min(max - (icmp_off + 8 - ib.ip_off));
    if quoted.len() != want || !orig.starts_with(quoted) {
        bad(format!(
            "quotes {} bytes, want the packet's first {want} as it arrived",
            quoted.len()
        ));
    }
}

/// Per-service counters against the verdict lines: a forwarded frame of a service counts a
/// packet and its bytes (as received), a forwarded `ct: new` one a flow; a dropped frame (also
/// one answered by a reset) counts as dropped.
fn check_services(ins: &[InPkt], run: &Run, rst_of: &BTreeSet<usize>, errs: &mut Vec<String>) {
    let mut want: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for l in &run.lines {
        let Some(svc) = s(l, "service") else { continue };
        let i = l["index"].as_u64().unwrap_or(u64::MAX) as usize;
        let c = want.entry(svc).or_default();
        match s(l, "verdict").as_deref() {
            _ if rst_of.contains(&i) => c[3] += 1,
            Some("forward") => {
                c[0] += 1;
                c[1] += ins.get(i).map_or(0, |p| p.frame.len() as u64);
                c[2] += u64::from(s(l, "ct").as_deref() == Some("new"));
            }
            Some("drop") => c[3] += 1,
            _ => {}
        }
    }
    want.retain(|_, c| c.iter().any(|&n| n != 0));
    let got: BTreeMap<String, [u64; 4]> = run
        .summary
        .services
        .iter()
        .map(|(k, t)| (k.clone(), [t.packets, t.bytes, t.flows, t.dropped]))
        .collect();
    if got != want {
        errs.push(format!(
            "per-service [packets, bytes, flows, dropped] {got:?}, verdict lines say {want:?}"
        ));
    }
}

/// Flow events against the verdict lines: one event per new flow (`ct: new`) and per drop, in
/// verdict order, naming the same interface, verdict, reason, service, backend, identities and
/// policy, with the packet's original tuple and a time no later than the packet's capture
/// time. A packet answered by a reset shows as the drop it was (`backend-gone`).
fn check_events(ins: &[InPkt], run: &Run, rst_of: &BTreeSet<usize>, errs: &mut Vec<String>) {
    let wanted: Vec<&Value> = run
        .lines
        .iter()
        .filter(|l| {
            let i = l["index"].as_u64().unwrap_or(u64::MAX) as usize;
            s(l, "ct").as_deref() == Some("new")
                || s(l, "verdict").as_deref() == Some("drop")
                || rst_of.contains(&i)
        })
        .collect();
    if run.events.len() != wanted.len() || run.summary.events != wanted.len() as u64 {
        errs.push(format!(
            "{} flow events ({} in the summary), {} verdict lines with ct new or drop",
            run.events.len(),
            run.summary.events,
            wanted.len()
        ));
    }
    let first = ins.first().map_or(0, |p| p.ts.as_nanos());
    let mut last_time = 0;
    for (k, (ev, l)) in run.events.iter().zip(&wanted).enumerate() {
        let i = l["index"].as_u64().unwrap_or(u64::MAX) as usize;
        let mut bad =
            |what: &str| errs.push(format!("event {k} (packet {i}): {what}: {ev} vs {l}"));
        let (verdict, reason, egress) = if rst_of.contains(&i) {
            ("dropped", Some("backend-gone".to_string()), None)
        } else {
            match s(l, "verdict").as_deref() {
                Some("forward") => ("forwarded", None, s(l, "egress")),
                Some("drop") => ("dropped", s(l, "reason"), None),
                _ => ("passed", None, None),
            }
        };
        if s(ev, "verdict").as_deref() != Some(verdict)
            || s(ev, "drop_reason") != reason
            || s(ev, "egress") != egress
        {
            bad("verdict/reason/egress");
        }
        if s(ev, "iface") != s(l, "input") {
            bad("interface");
        }
        for k in [
            "ct",
            "service",
            "backend",
            "policy",
            "src_identity",
            "dst_identity",
        ] {
            if ev.get(k) != l.get(k) {
                bad(k);
            }
        }
        let Some(p) = ins.get(i) else { continue };
        if let Some(ip) = wire::decode(&p.frame).and_then(|f| f.ip) {
            let tuple = (
                ev.get("src").and_then(Value::as_str),
                ev.get("sport").and_then(Value::as_u64),
                ev.get("dst").and_then(Value::as_str),
                ev.get("dport").and_then(Value::as_u64),
            );
            let src = ip.src.to_string();
            let dst = ip.dst.to_string();
            let want = (
                Some(src.as_str()),
                Some(u64::from(ip.sport.unwrap_or(0))),
                Some(dst.as_str()),
                Some(u64::from(ip.dport.unwrap_or(0))),
            );
            if tuple != want {
                bad("tuple is not the packet's as it arrived");
            }
        }
        // The event's time is its burst's: the capture clock, at most the packet's own time.
        let t = ev.get("time_unix_ns").and_then(Value::as_u64).unwrap_or(0);
        if u128::from(t) > p.ts.as_nanos() || u128::from(t) < first || t < last_time {
            bad("time not on the capture clock, after the packet's or before the previous event's");
        }
        last_time = t;
    }
}

fn check_expect(
    e: &Expect,
    l: &Value,
    out: Option<&Vec<u8>>,
    by_index: &BTreeMap<usize, &Value>,
    errs: &mut Vec<String>,
) {
    let i = e.index;
    let mut bad = |field: &str, want: String| {
        errs.push(format!(
            "packet {i} ({}): {field}: want {want}, got {l}",
            e.what
        ));
    };
    let eq = |k: &str, want: &Option<String>| {
        want.as_ref()
            .is_none_or(|w| s(l, k).as_deref() == Some(w.as_str()))
    };
    if !eq("verdict", &e.verdict) {
        bad("verdict", format!("{:?}", e.verdict));
    }
    if let Some(v) = &e.verdict_not {
        if s(l, "verdict").as_deref() == Some(v.as_str()) {
            bad("verdict", format!("anything but {v}"));
        }
    }
    if !eq("reason", &e.reason) {
        bad("reason", format!("{:?}", e.reason));
    }
    if let Some(p) = &e.reason_prefix {
        if !s(l, "reason").is_some_and(|r| r.starts_with(p.as_str())) {
            bad("reason", format!("{p}*"));
        }
    }
    if !eq("egress", &e.egress) {
        bad("egress", format!("{:?}", e.egress));
    }
    if !eq("ct", &e.ct) {
        bad("ct", format!("{:?}", e.ct));
    }
    if let Some(v) = &e.ct_not {
        if s(l, "ct").as_deref() == Some(v.as_str()) {
            bad("ct", format!("anything but {v}"));
        }
    }
    if let Some(h) = e.has_service {
        if s(l, "service").is_some() != h {
            bad(
                "service",
                if h { "a service".into() } else { "none".into() },
            );
        }
    }
    let backend = s(l, "backend");
    if !eq("backend", &e.backend) {
        bad("backend", format!("{:?}", e.backend));
    }
    if let Some(set) = &e.backend_in {
        if !backend.as_ref().is_some_and(|b| set.contains(b)) {
            bad("backend", format!("one of {set:?}"));
        }
    }
    if let Some(not) = &e.backend_not {
        if backend.as_deref() == Some(not.as_str()) {
            bad("backend", format!("anything but {not}"));
        }
    }
    if let Some(j) = e.backend_same_as {
        let other = by_index.get(&j).and_then(|o| s(o, "backend"));
        if backend.is_none() || backend != other {
            bad("backend", format!("same as packet {j} ({other:?})"));
        }
    }
    if e.backend_none == Some(true) && backend.is_some() {
        bad("backend", "none".into());
    }
    let id = |k: &str| l.get(k).and_then(Value::as_u64).map(|v| v as u32);
    if e.src_identity.is_some() && id("src_identity") != e.src_identity {
        bad("src_identity", format!("{:?}", e.src_identity));
    }
    if e.dst_identity.is_some() && id("dst_identity") != e.dst_identity {
        bad("dst_identity", format!("{:?}", e.dst_identity));
    }
    if !eq("policy", &e.policy) {
        bad("policy", format!("{:?}", e.policy));
    }
    let wants_out = e.out_src.is_some()
        || e.out_dst.is_some()
        || e.out_inner_src.is_some()
        || e.out_inner_dst.is_some();
    if !wants_out || s(l, "verdict").as_deref() != Some("forward") {
        return;
    }
    let Some(info) = out.and_then(|f| wire::decode(f)) else {
        errs.push(format!(
            "packet {i} ({}): forwarded but its output packet was not found",
            e.what
        ));
        return;
    };
    let Some(ip) = info.ip else {
        errs.push(format!("packet {i} ({}): output is not IP", e.what));
        return;
    };
    let desc = out.map(|f| wire::describe(f)).unwrap_or_default();
    let mut cmp = |field: &str, want: &Option<String>, ipa: Option<(IpAddr, Option<u16>)>| {
        let Some(w) = want else { return };
        let w = if w == "backend" {
            backend.clone().unwrap_or_else(|| "<no backend>".into())
        } else {
            w.clone()
        };
        match ipa {
            Some((a, p)) if wire::endpoint_matches(&w, a, p) => {}
            _ => errs.push(format!(
                "packet {i} ({}): output {field}: want {w}, got {desc}",
                e.what
            )),
        }
    };
    cmp("source", &e.out_src, Some((ip.src, ip.sport)));
    cmp("destination", &e.out_dst, Some((ip.dst, ip.dport)));
    let inner = info.inner.as_ref();
    cmp(
        "quoted source",
        &e.out_inner_src,
        inner.map(|q| (q.src, q.sport)),
    );
    cmp(
        "quoted destination",
        &e.out_inner_dst,
        inner.map(|q| (q.dst, q.dport)),
    );
}

/// Byte comparison with `expected/`; a readable first difference per file.
fn compare_golden(dir: &Path, run: &Run, out: &Path) -> Vec<String> {
    let exp = dir.join("expected");
    let mut errs = Vec::new();
    let mut want: BTreeSet<String> = BTreeSet::new();
    match std::fs::read_dir(&exp) {
        Err(_) => {
            errs.push(format!(
                "{}: missing (run with NODEPLANE_UPDATE_GOLDEN=1 and review)",
                exp.display()
            ));
            return errs;
        }
        Ok(rd) => {
            for e in rd.flatten() {
                want.insert(e.file_name().to_string_lossy().to_string());
            }
        }
    }
    let mut got = run.files.clone();
    got.insert("summary.json".into());
    if want != got {
        errs.push(format!("expected files {want:?}, replay wrote {got:?}"));
    }
    for name in want.intersection(&got) {
        let w = std::fs::read(exp.join(name)).unwrap_or_default();
        let g = if name == "summary.json" {
            run.summary_text.clone().into_bytes()
        } else {
            std::fs::read(out.join(name)).unwrap_or_default()
        };
        if w == g {
            continue;
        }
        if name.ends_with(".jsonl") || name.ends_with(".json") {
            let (wt, gt) = (String::from_utf8_lossy(&w), String::from_utf8_lossy(&g));
            let (wl, gl): (Vec<&str>, Vec<&str>) = (wt.lines().collect(), gt.lines().collect());
            let k = (0..wl.len().max(gl.len()))
                .find(|&k| wl.get(k) != gl.get(k))
                .unwrap_or(0);
            errs.push(format!(
                "{name}: first difference at line {}:\n    expected: {}\n    got:      {}",
                k + 1,
                wl.get(k).unwrap_or(&"<end of file>"),
                gl.get(k).unwrap_or(&"<end of file>")
            ));
        } else {
            let wf = read_capture(&exp.join(name))
                .map(|x| x.1)
                .unwrap_or_default();
            let gf = run
                .outputs
                .get(name.trim_end_matches(".pcap"))
                .cloned()
                .unwrap_or_default();
            match (0..wf.len().max(gf.len())).find(|&k| wf.get(k) != gf.get(k)) {
                Some(k) => errs.push(format!(
                    "{name}: first difference at packet {k} ({} expected, {} got):\n    expected: {}\n    got:      {}",
                    wf.len(),
                    gf.len(),
                    wf.get(k).map(|f| format!("{:?} {}", f.0, wire::describe(&f.1))).unwrap_or("<none>".into()),
                    gf.get(k).map(|f| format!("{:?} {}", f.0, wire::describe(&f.1))).unwrap_or("<none>".into()),
                )),
                None => errs.push(format!("{name}: same packets, different file bytes (header?)")),
            }
        }
    }
    errs
}

fn update_golden(dir: &Path, run: &Run, out: &Path) {
    let exp = dir.join("expected");
    let _ = std::fs::remove_dir_all(&exp);
    std::fs::create_dir_all(&exp).expect("create expected/");
    for name in &run.files {
        std::fs::copy(out.join(name), exp.join(name)).expect("copy golden");
    }
    std::fs::write(exp.join("summary.json"), &run.summary_text).expect("write summary.json");
}

fn case_dirs() -> Vec<PathBuf> {
    let root = nodeplane_pcap_tests::cases_dir();
    let only = std::env::var("NODEPLANE_CASE").ok();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("case.json").is_file())
        .filter(|p| {
            only.as_deref()
                .is_none_or(|o| p.file_name().is_some_and(|n| n == o))
        })
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn golden_cases() {
    let update = std::env::var("NODEPLANE_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let dirs = case_dirs();
    assert!(!dirs.is_empty(), "no cases found (NODEPLANE_CASE filter?)");
    if std::env::var("NODEPLANE_CASE").is_err() {
        assert!(dirs.len() >= 30, "only {} cases", dirs.len());
    }
    let mut report = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let spec = load_spec(dir);
        assert_eq!(
            spec.name,
            name,
            "{}: case.json names another case",
            dir.display()
        );
        let tmp = TempDir::new("golden", &name);
        let ins = inputs(dir, &spec);
        let run = match run_replay(dir, &spec, &tmp.0) {
            Ok(r) => r,
            Err(e) => {
                report.push(format!("[{name}] {e}"));
                continue;
            }
        };
        let mut intent = check_intent(dir, &spec, &ins, &run);
        if spec.events {
            // Flow events carry the capture's clock: a second run writes the same bytes.
            let tmp2 = TempDir::new("golden", &format!("{name}-again"));
            match run_replay(dir, &spec, &tmp2.0) {
                Err(e) => intent.push(format!("second run: {e}")),
                Ok(_) => {
                    for f in ["events.jsonl", "verdicts.jsonl"] {
                        if std::fs::read(tmp.0.join(f)).ok() != std::fs::read(tmp2.0.join(f)).ok() {
                            intent.push(format!("{f} differs between two runs"));
                        }
                    }
                }
            }
        }
        let intent_ok = intent.is_empty();
        report.extend(intent.into_iter().map(|e| format!("[{name}] intent: {e}")));
        if update {
            if intent_ok {
                update_golden(dir, &run, &tmp.0);
            } else {
                report.push(format!("[{name}] goldens NOT updated: intent checks fail"));
            }
        } else {
            report.extend(
                compare_golden(dir, &run, &tmp.0)
                    .into_iter()
                    .map(|e| format!("[{name}] golden: {e}")),
            );
        }
    }
    assert!(
        report.is_empty(),
        "{} problem(s):\n{}",
        report.len(),
        report.join("\n")
    );
}
