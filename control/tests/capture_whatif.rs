//! `nodeplane capture` and `nodeplane whatif` against a running daemon (replay I/O over a
//! generated capture, the example node's state): frames recorded as the workers received
//! them and replayed to the verdicts the daemon counted; whatif with the daemon's own state and
//! its live flow events.
//!
//! ```text
//!  in.pcap ──> pod-client ─┐ nodeplane run (replay io, looped) ┌─ pod-web1 / pod-web2
//!  SYN to web 10.96.0.10:80, SYN to web-1:9050 (denied),      └─ uplink0
//!  UDP to 10.244.1.99:53 (no endpoint)
//!        nodeplane capture --iface pod-client --count N ──> cap.pcap ──> nodeplane replay
//! ```

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use nodeplane_control::replay::{self, ReplayOptions};
use nodeplane_dataplane::replay::read_ethernet;

fn replay_io(d: &tempfile::TempDir, frames: &[Vec<u8>], opts: &str) -> String {
    let pcap = d.path().join("in.pcap");
    write_pcap(&pcap, frames);
    format!(
        "io:\n  replay:\n    inputs: [{{ iface: pod-client, file: {} }}]\n{opts}",
        pcap.display()
    )
}

fn mix() -> Vec<Vec<u8>> {
    vec![
        tcp4(CLIENT, [10, 96, 0, 10], 41000, 80, true),
        tcp4(CLIENT, [10, 244, 1, 21], 42000, 9050, true),
        udp4(CLIENT, [10, 244, 1, 99], 43000, 53),
    ]
}

#[test]
fn capture_records_frames_as_received_and_replays_to_the_daemons_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let frames = mix();
    let io = replay_io(&dir, &frames, "    rate_pps: 600\n");
    let d = Daemon::start_in(dir, &io);
    wait_for("forwarding and both drops", 10, || {
        (d.drops("policy-denied") > 0
            && d.drops("no-endpoint") > 0
            && d.tx("pod-web1") + d.tx("pod-web2") > 0)
            .then_some(())
    });

    // Requests that cannot start a capture are refused, clearly.
    let cap = d.path("cap.pcap");
    let (ok, out) = d.cli(&[
        "capture",
        "--iface",
        "nope0",
        "--count",
        "3",
        "--output",
        cap.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("not in the running state"), "{out}");
    let (ok, out) = d.cli(&[
        "capture",
        "--iface",
        "pod-client",
        "--output",
        cap.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("--count"), "a bound is required: {out}");

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let (ok, out) = d.cli(&[
        "capture",
        "--iface",
        "pod-client",
        "--count",
        "30",
        "--output",
        cap.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{}", d.log());
    assert!(out.contains("30 frames written"), "{out}");
    let got = read_ethernet(&cap).unwrap();
    assert_eq!(got.len(), 30);
    for f in &got {
        // As received: byte for byte an input frame, before the pipeline rewrote it (the
        // forwarded SYN leaves with other MACs and a translated destination).
        assert!(
            frames.contains(&f.data),
            "not an input frame: {:02x?}",
            f.data
        );
        assert!(
            f.ts >= before - 1_000_000_000 && f.ts < before + 120_000_000_000,
            "unix time: {}",
            f.ts
        );
    }
    assert!(got.windows(2).all(|w| w[0].ts <= w[1].ts), "in time order");

    // Replayed, the capture gets the verdicts the daemon gave those frames.
    let out_dir = d.path("replayed");
    let s = replay::run(&ReplayOptions {
        state: d.state.clone(),
        inputs: vec![("pod-client".into(), cap.clone())],
        output_dir: out_dir.clone(),
        ..ReplayOptions::default()
    })
    .unwrap();
    assert_eq!(s.packets, 30);
    let count = |f: &Vec<u8>| got.iter().filter(|g| &g.data == f).count() as u64;
    let want: BTreeMap<String, u64> = [
        ("policy-denied".to_string(), count(&frames[1])),
        ("no-endpoint".to_string(), count(&frames[2])),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect();
    assert_eq!(s.drops, want, "{s:?}");
    assert_eq!(s.forwarded, count(&frames[0]));
    // The daemon counted the same kinds of verdicts for the same frames.
    assert!(d.drops("policy-denied") >= count(&frames[1]));
    assert!(d.drops("no-endpoint") >= count(&frames[2]));
    let web = s.transmitted.get("pod-web1").copied().unwrap_or(0)
        + s.transmitted.get("pod-web2").copied().unwrap_or(0);
    assert_eq!(web, count(&frames[0]), "{s:?}");

    // A duration bound ends the capture too; the capture is off again afterwards.
    let cap2 = d.path("cap2.pcap");
    let (ok, out) = d.cli(&[
        "capture",
        "--iface",
        "pod-client",
        "--duration",
        "0.5",
        "--output",
        cap2.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let n = read_ethernet(&cap2).unwrap().len();
    assert!(n > 50, "~300 frames in 0.5 s at 600 pps, got {n}");
    assert!(
        d.log().contains("capture") && d.log().contains("ended"),
        "{}",
        d.log()
    );
}

#[test]
fn whatif_judges_the_daemons_live_events_against_its_own_state() {
    let dir = tempfile::tempdir().unwrap();
    let io = replay_io(&dir, &mix(), "    rate_pps: 300\n    vary_ports: true\n");
    let d = Daemon::start_in(dir, &io);
    wait_for("policy drops", 10, || {
        (d.drops("policy-denied") > 0).then_some(())
    });
    // The proposal: the node in allow-all mode.
    let proposed = d.path("proposed");
    write_example_state(&proposed);
    let node = proposed.join("node.yaml");
    let text = std::fs::read_to_string(&node).unwrap();
    assert!(text.contains("policy_mode: enforce"));
    std::fs::write(
        &node,
        text.replace("policy_mode: enforce", "policy_mode: allow-all"),
    )
    .unwrap();

    // No --current: the daemon's state.
    let out = Command::new(env!("CARGO_BIN_EXE_nodeplane"))
        .args(["whatif", "--state"])
        .arg(&proposed)
        .args(["--live", "1.5", "--json", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", d.log());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_change = r["by_change"].as_object().unwrap();
    // Denied flows would be forwarded; nothing else changes (no-endpoint stays a drop).
    assert_eq!(
        by_change.keys().collect::<Vec<_>>(),
        ["drop (policy-denied) -> forward"],
        "{r:#}"
    );
    let n = by_change["drop (policy-denied) -> forward"]
        .as_u64()
        .unwrap();
    assert!(n >= 100, "~1.5 s of denied flows at 100/s: {n}");
    for c in r["changes"].as_array().unwrap() {
        assert_eq!(c["dport"], 9050, "{c}");
        assert_eq!(
            c["current"]["rules"][1], "web-1 ingress rule 4 (deny)",
            "{c}"
        );
        assert_eq!(c["proposed"]["policy"], "none", "{c}");
    }
    // --fail-on-change makes it a gate.
    let gate = Command::new(env!("CARGO_BIN_EXE_nodeplane"))
        .args(["whatif", "--state"])
        .arg(&proposed)
        .args(["--live", "0.5", "--fail-on-change", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    assert_eq!(
        gate.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&gate.stderr)
    );
    let human = String::from_utf8_lossy(&gate.stdout);
    assert!(
        human.contains("by rule (current => proposed):")
            && human.contains("web-1 ingress rule 4 (deny)"),
        "{human}"
    );
}
