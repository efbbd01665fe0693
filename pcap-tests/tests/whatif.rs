//! Golden `nodeplane whatif` cases: every case under `pcap-tests/whatif/` (a current and a
//! proposed state, traffic as captures or flow events, `case.json`) is judged with the library
//! call (`nodeplane_control::whatif::run`, what the CLI runs) and
//! 1. checked against its intent (`case.json` `expect`: the services and kinds of change that
//!    must appear, and nothing else; plus invariants: the groups add up to the changed flows,
//!    every change names what differs and actually differs, packets add up), then
//! 2. compared with `expected.json` (the report as `--json` prints it).
//!
//! `NODEPLANE_UPDATE_GOLDEN=1` rewrites `expected.json` of cases whose intent checks pass.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nodeplane_control::whatif::{self, traffic, Traffic, WhatifOptions, WhatifReport};
use nodeplane_dataplane::worker::RemovedFlowAction;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    current: String,
    proposed: String,
    #[serde(default)]
    inputs: Vec<(String, String)>,
    #[serde(default)]
    events: Option<String>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    changed_services: Vec<String>,
    changes: Vec<String>,
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("whatif");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").exists())
        .collect();
    v.sort();
    assert!(
        v.len() >= 2,
        "whatif cases missing under {}",
        root.display()
    );
    v
}

fn judge(dir: &Path) -> (Case, WhatifReport) {
    let case: Case =
        serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
    assert!(!case.description.is_empty());
    let load = |p: &str| nodeplane_state::load_path(&dir.join(p)).unwrap();
    let traffic = match &case.events {
        Some(e) => Traffic::Events(traffic::read_events(&dir.join(e)).unwrap()),
        None => Traffic::Captures(
            case.inputs
                .iter()
                .map(|(i, f)| (i.clone(), dir.join(f)))
                .collect(),
        ),
    };
    let opts = WhatifOptions {
        current: load(&case.current),
        proposed: load(&case.proposed),
        traffic,
        removed_flow_action: RemovedFlowAction::Drop,
        work_dir: None,
    };
    let report = whatif::run(&opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    (case, report)
}

fn intent(name: &str, case: &Case, r: &WhatifReport) {
    assert_eq!(r.changed_flows as usize, r.changes.len(), "{name}");
    for (what, group) in [
        ("by_change", &r.by_change),
        ("by_service", &r.by_service),
        ("by_identity", &r.by_identity),
        ("by_rule", &r.by_rule),
    ] {
        assert_eq!(
            group.values().sum::<u64>(),
            r.changed_flows,
            "{name}: {what} must add up to the changed flows"
        );
    }
    let mut pkts = 0;
    for c in &r.changes {
        assert!(!c.changed.is_empty(), "{name}: {c:?}");
        let (a, b) = (&c.current, &c.proposed);
        for what in &c.changed {
            assert!(
                ["verdict", "drop_reason", "backend"].contains(&what.as_str()),
                "{name}: unknown change kind {what}"
            );
        }
        assert!(
            a.verdict != b.verdict || a.drop_reason != b.drop_reason || a.backend != b.backend,
            "{name}: the first changed packet must differ: {c:?}"
        );
        assert!(
            a.forwarded + a.dropped <= c.packets && b.forwarded + b.dropped <= c.packets,
            "{name}: {c:?}"
        );
        pkts += c.packets;
    }
    assert!(r.changed_packets <= pkts && pkts <= r.packets, "{name}");
    let services: BTreeSet<&str> = r.by_service.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = case
        .expect
        .changed_services
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(services, want, "{name}: services with changed flows");
    let changes: BTreeSet<&str> = r.by_change.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = case.expect.changes.iter().map(String::as_str).collect();
    assert_eq!(changes, want, "{name}: kinds of change");
}

#[test]
fn whatif_cases_match_their_intent_and_goldens() {
    let update = std::env::var("NODEPLANE_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut failed = Vec::new();
    for dir in cases() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (case, report) = judge(&dir);
        intent(&name, &case, &report);
        // A second run is identical (both replays are deterministic).
        assert_eq!(judge(&dir).1, report, "{name}: not deterministic");
        let got = serde_json::to_string_pretty(&report).unwrap() + "\n";
        let path = dir.join("expected.json");
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(want) if want == got => {}
            Ok(want) => {
                let first = want
                    .lines()
                    .zip(got.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                failed.push(format!(
                    "{name}: expected.json differs from line {}: want {:?}, got {:?}",
                    first + 1,
                    want.lines().nth(first),
                    got.lines().nth(first)
                ));
            }
            Err(e) => failed.push(format!(
                "{name}: {e} (run with NODEPLANE_UPDATE_GOLDEN=1 and review)"
            )),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Events that are not first packets, not IP, or on an unknown interface are skipped and
/// counted, never replayed.
#[test]
fn events_that_cannot_start_a_flow_are_counted_not_replayed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("whatif/from-events");
    let mut records = traffic::read_events(&dir.join("events.jsonl")).unwrap();
    let mut later = records[0].clone();
    later.ct = Some("established".into());
    let mut elsewhere = records[0].clone();
    elsewhere.iface = "nope0".into();
    elsewhere.sport = 1;
    records.push(later);
    records.push(elsewhere);
    records.push(records[0].clone());
    let load = |p: &str| nodeplane_state::load_path(&dir.join(p)).unwrap();
    let r = whatif::run(&WhatifOptions {
        current: load("current"),
        proposed: load("proposed"),
        traffic: Traffic::Events(records),
        removed_flow_action: RemovedFlowAction::Drop,
        work_dir: None,
    })
    .unwrap();
    assert_eq!(
        r.skipped_events.get("not a first packet"),
        Some(&1),
        "{:?}",
        r.skipped_events
    );
    assert_eq!(
        r.skipped_events.get("interface not in the current state"),
        Some(&1)
    );
    assert_eq!(r.skipped_events.get("flow already rebuilt"), Some(&1));
    assert_eq!(r.changed_flows, 2, "the same two flows change");
}
