//! `nodeplane replay` as a user runs it: bad inputs give a clear error and a non-zero exit, never
//! a panic or a partial run; good inputs give outputs and a summary.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn replay(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nodeplane"))
        .arg("replay")
        .args(args)
        .current_dir(root())
        .output()
        .expect("run nodeplane");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("np-replay-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

#[test]
fn good_replay_writes_outputs_and_summary() {
    let out = tmp("good");
    let (code, stdout, stderr) = replay(&[
        "--state",
        "examples/state",
        "--input",
        "pod-client=examples/capture/pod-client.pcap",
        "--output-dir",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("replayed 12 packets"), "{stderr}");
    assert!(stderr.contains("pkts/s"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json summary");
    assert_eq!(summary["packets"], 12);
    let lines = std::fs::read_to_string(out.join("verdicts.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 12);
    assert!(out.join("pod-web2.pcap").exists());
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn bad_inputs_are_clear_errors() {
    let out = tmp("bad");
    let o = out.to_str().unwrap();
    let garbage = out.join("garbage.pcap");
    std::fs::write(&garbage, b"this is not a capture file at all").unwrap();
    let truncated = out.join("truncated.pcap");
    let good = std::fs::read(root().join("examples/capture/pod-client.pcap")).unwrap();
    std::fs::write(&truncated, &good[..good.len() - 7]).unwrap();
    let bad_state = out.join("bad-state.yaml");
    std::fs::write(&bad_state, "node:\n  name: x\n  policy_mode: sometimes\n").unwrap();
    let g = format!("pod-client={}", garbage.display());
    let t = format!("pod-client={}", truncated.display());
    let bs = bad_state.to_str().unwrap();
    let cap = "pod-client=examples/capture/pod-client.pcap";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--input", "pod-client=/nonexistent.pcap"],
            "/nonexistent.pcap",
        ),
        (vec!["--input", &g], "not a readable pcap/pcapng capture"),
        (vec!["--input", &t], "truncated.pcap"),
        (
            vec!["--input", "eth9=examples/capture/pod-client.pcap"],
            "input interface \"eth9\" is not an interface of the state",
        ),
        (vec!["--input", "nonsense"], "expected IFACE=FILE"),
        (
            vec!["--input", cap, "--state-at=-3=examples/state"],
            "seconds >= 0",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["--state", "examples/state", "--output-dir", o];
        args.extend(extra);
        let (code, _, stderr) = replay(&args);
        assert_ne!(code, 0, "{args:?} should fail");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: want {needle:?} in {stderr}"
        );
    }
    let (code, _, stderr) = replay(&["--state", bs, "--input", cap, "--output-dir", o]);
    assert_ne!(code, 0);
    assert!(stderr.contains("policy_mode"), "{stderr}");
    std::fs::remove_dir_all(out).ok();
}
