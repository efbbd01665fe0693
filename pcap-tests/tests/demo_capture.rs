//! The bundled demo capture (`examples/capture/`) is what the generator writes, and the README's
//! demo replays it with the verdicts its description promises.

use std::collections::BTreeMap;

use nodeplane_control::replay::{run, ReplayOptions};
use nodeplane_pcap_tests::{demo, pcapio, repo_root};

#[test]
fn checked_in_demo_capture_is_current() {
    let state = nodeplane_state::example::state().expect("example state");
    let dir = repo_root().join("examples/capture");
    for (iface, frames) in demo::build(&state) {
        let path = dir.join(format!("{iface}.pcap"));
        let (_, got) = pcapio::read_capture(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run gen-demo)", path.display()));
        assert_eq!(
            got,
            frames,
            "{} is stale: run `cargo run -p nodeplane-pcap-tests --bin gen-demo`",
            path.display()
        );
    }
}

#[test]
fn demo_replay_verdicts() {
    let root = repo_root();
    let out = std::env::temp_dir().join(format!("np-demo-{}", std::process::id()));
    let inputs = ["pod-client", "pod-web1", "pod-web2", "uplink0"]
        .iter()
        .map(|i| {
            (
                i.to_string(),
                root.join(format!("examples/capture/{i}.pcap")),
            )
        })
        .collect();
    let s = run(&ReplayOptions {
        state: root.join("examples/state"),
        inputs,
        output_dir: out.clone(),
        state_at: vec![],
        ..ReplayOptions::default()
    })
    .expect("replay");
    let drops: BTreeMap<String, u64> = [
        ("policy-denied".to_string(), 3),
        ("spoofed-source".to_string(), 1),
    ]
    .into();
    assert_eq!((s.packets, s.forwarded, s.passed), (21, 15, 2));
    assert_eq!(s.drops, drops);
    let lines = std::fs::read_to_string(out.join("verdicts.jsonl")).expect("verdicts");
    let rows: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    // The HTTP flow: new, then replies (reverse NAT) and established packets, all to one backend.
    assert_eq!(rows[0]["service"], "web");
    assert_eq!(rows[0]["ct"], "new");
    assert_eq!(rows[1]["ct"], "reply");
    assert_eq!(rows[1]["egress"], "pod-client");
    assert_eq!(rows[0]["backend"], rows[7]["backend"]);
    std::fs::remove_dir_all(&out).ok();
}
