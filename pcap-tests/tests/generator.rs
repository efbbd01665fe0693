//! The checked-in cases are exactly what the generator writes, and the generated inputs are
//! what they claim to be (valid checksums outside the `malformed` case, one expectation per
//! packet, every pipeline behaviour of issue 2 item 3 covered, and the worker's own steps of
//! issue 9: resets, flow events, per-service counters).

use std::collections::BTreeSet;
use std::path::Path;

use nodeplane_pcap_tests::pcapio::read_capture;
use nodeplane_pcap_tests::spec::CaseSpec;
use nodeplane_pcap_tests::wire::{self, FragmentChecker};
use nodeplane_pcap_tests::TempDir;

fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}

#[test]
fn checked_in_cases_match_the_generator() {
    let tmp = TempDir::new("gen", "cases");
    let names = nodeplane_pcap_tests::gen::generate(&tmp.0).expect("generator runs");
    assert!(names.len() >= 30, "only {} cases", names.len());
    let root = nodeplane_pcap_tests::cases_dir();
    let checked_in: BTreeSet<String> = std::fs::read_dir(&root)
        .expect("cases dir")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    let generated: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(
        checked_in, generated,
        "case directories differ from the generator's; run `cargo run -p nodeplane-pcap-tests --bin gen-cases`"
    );
    let mut stale = Vec::new();
    for name in &names {
        let (g, c) = (tmp.0.join(name), root.join(name));
        let (gf, cf) = (files(&g), files(&c));
        if gf != cf {
            stale.push(format!("{name}: files {cf:?}, generator writes {gf:?}"));
        }
        for f in gf.intersection(&cf) {
            if std::fs::read(g.join(f)).ok() != std::fs::read(c.join(f)).ok() {
                stale.push(format!("{name}/{f} differs from the generator's output"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "checked-in cases are stale (run gen-cases, then NODEPLANE_UPDATE_GOLDEN=1 and review):\n{}",
        stale.join("\n")
    );
}

#[test]
fn inputs_are_well_formed_and_fully_expected() {
    let root = nodeplane_pcap_tests::cases_dir();
    let mut reasons = BTreeSet::new();
    let mut verdicts = BTreeSet::new();
    let mut problems = Vec::new();
    let mut ifaces = BTreeSet::new();
    // The worker's own steps: some case replays with each flag and expects a reset.
    let mut worker_steps = BTreeSet::new();
    for e in std::fs::read_dir(&root).expect("cases dir").flatten() {
        let dir = e.path();
        let Ok(text) = std::fs::read_to_string(dir.join("case.json")) else {
            continue;
        };
        let spec: CaseSpec = serde_json::from_str(&text).expect("case.json parses");
        let mut n = 0;
        let mut frags = FragmentChecker::default();
        for input in &spec.inputs {
            ifaces.insert(input.iface.clone());
            let (_, frames) = read_capture(&dir.join(&input.file)).expect("input readable");
            n += frames.len();
            if spec.name != "malformed" {
                for (k, (_, f)) in frames.iter().enumerate() {
                    let partial = spec.partial_checksums && wire::partial_checksum(f).is_some();
                    let checked = if partial {
                        // What a sender with checksum offload sends: the IPv4 header complete,
                        // the L4 checksum partial.
                        let ip = wire::decode(f).and_then(|i| i.ip).expect("an IP packet");
                        if !wire::is_partial(f) {
                            Err("L4 checksum not partial".to_string())
                        } else if ip.src.is_ipv4() && !wire::ipv4_header_ok(f, &ip) {
                            Err("bad IPv4 header checksum".to_string())
                        } else {
                            Ok(())
                        }
                    } else {
                        wire::verify_checksums(f)
                    };
                    if let Err(e) = checked {
                        problems.push(format!("{}/{} packet {k}: {e}", spec.name, input.file));
                    }
                    frags.add(f);
                }
            }
        }
        let (_, ferrs) = frags.finish();
        if !spec.name.contains("timeout") {
            problems.extend(ferrs.into_iter().map(|e| format!("{}: {e}", spec.name)));
        }
        let idx: Vec<usize> = spec.expect.iter().map(|e| e.index).collect();
        if idx != (0..n).collect::<Vec<_>>() {
            problems.push(format!(
                "{}: {n} packets but expectations for {idx:?}",
                spec.name
            ));
        }
        if spec.removed_flow_action.as_deref() == Some("rst") {
            worker_steps.insert("removed_flow_action rst");
        }
        if spec.events {
            worker_steps.insert("events");
        }
        if spec.services {
            worker_steps.insert("services");
        }
        for e in &spec.expect {
            if e.rst == Some(true) {
                worker_steps.insert("rst expected");
            }
            verdicts.extend(e.verdict.clone());
            reasons.extend(e.reason.clone());
            reasons.extend(e.reason_prefix.clone().map(|p| p + "*"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for v in ["forward", "pass", "drop"] {
        assert!(verdicts.contains(v), "no case expects {v}");
    }
    for r in [
        "policy-denied",
        "no-backend",
        "spoofed-source",
        "ct-full",
        "ttl-exceeded",
        "frag-timeout",
        "malformed*",
    ] {
        assert!(reasons.contains(r), "no case expects drop reason {r}");
    }
    for w in [
        "removed_flow_action rst",
        "events",
        "services",
        "rst expected",
    ] {
        assert!(worker_steps.contains(w), "no case covers {w}");
    }
    for i in ["eth0", "veth-a", "veth-b", "veth-c"] {
        assert!(ifaces.contains(i), "no case enters on {i}");
    }
}
