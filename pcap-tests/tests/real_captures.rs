//! Real captures (issue 2 item 6): every capture under `<repo>/../shared/pcaps/` (override with
//! `NODEPLANE_PCAPS=dir`) replays through the example node (`examples/state/`) without a panic
//! or an error, entering once on the uplink and once on a pod interface, and every packet is
//! accounted for: verdict lines == packets read == forward + pass + drop, each packet once,
//! every drop with a known reason. A missing capture folder fails the test.
//!
//! pcapng: the real pcapng files in the folder are replayed like the rest; in addition one pcap
//! is converted to pcapng here and must replay to exactly the same verdicts and output packets.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use nodeplane_control::replay::{self, ReplayOptions};
use nodeplane_dataplane::DropReason;
use nodeplane_pcap_tests::pcapio::{pcap_to_pcapng, read_capture};
use nodeplane_pcap_tests::TempDir;
use nodeplane_state as st;
use serde_json::Value;

fn pcaps_dir() -> PathBuf {
    match std::env::var_os("NODEPLANE_PCAPS") {
        Some(d) => PathBuf::from(d),
        None => nodeplane_pcap_tests::repo_root().join("../shared/pcaps"),
    }
}

fn captures(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .flatten()
        {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("pcap" | "cap" | "pcapng")
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn example_state() -> (PathBuf, String, String) {
    let dir = nodeplane_pcap_tests::repo_root().join("examples/state");
    let state = st::load_path(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let uplink = state
        .interfaces
        .iter()
        .find(|i| i.role == st::InterfaceRole::Uplink)
        .expect("an uplink")
        .name
        .clone();
    let pod = state
        .interfaces
        .iter()
        .find(|i| i.role == st::InterfaceRole::Pod)
        .expect("a pod interface")
        .name
        .clone();
    (dir, uplink, pod)
}

/// Replays `file` entering on `iface`; returns the verdict lines, or every problem found.
fn replay_one(
    state: &Path,
    file: &Path,
    iface: &str,
    out: &Path,
) -> Result<Vec<Value>, Vec<String>> {
    let opts = ReplayOptions {
        state: state.to_path_buf(),
        inputs: vec![(iface.to_string(), file.to_path_buf())],
        output_dir: out.to_path_buf(),
        state_at: vec![],
        ..ReplayOptions::default()
    };
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| replay::run(&opts)));
    let summary = match result {
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            return Err(vec![format!("PANIC: {}", msg.unwrap_or_default())]);
        }
        Ok(Err(e)) => return Err(vec![format!("replay error: {e}")]),
        Ok(Ok(s)) => s,
    };
    let mut errs = Vec::new();
    let (_, frames) = read_capture(file).map_err(|e| vec![e])?;
    let read = frames.len() as u64;
    let text =
        std::fs::read_to_string(out.join("verdicts.jsonl")).map_err(|e| vec![e.to_string()])?;
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if lines.len() != text.lines().count() {
        errs.push("unparsable verdict lines".into());
    }
    let count = |v: &str| lines.iter().filter(|l| l["verdict"] == v).count() as u64;
    let (f, p, d) = (count("forward"), count("pass"), count("drop"));
    if lines.len() as u64 != read || f + p + d != read {
        errs.push(format!(
            "{read} packets read, {} verdict lines, forward+pass+drop = {}",
            lines.len(),
            f + p + d
        ));
    }
    if (
        summary.packets,
        summary.forwarded,
        summary.passed,
        summary.dropped,
    ) != (read, f, p, d)
    {
        errs.push(format!(
            "summary {}/{}/{}/{} (packets/forward/pass/drop) disagrees with {read}/{f}/{p}/{d}",
            summary.packets, summary.forwarded, summary.passed, summary.dropped
        ));
    }
    let indices: BTreeSet<u64> = lines.iter().filter_map(|l| l["index"].as_u64()).collect();
    if indices.len() as u64 != read || indices.iter().next_back().is_some_and(|&m| m + 1 != read) {
        errs.push(format!("verdict indices are not 0..{read}, each once"));
    }
    for l in &lines {
        if l["verdict"] == "drop" {
            match l["reason"].as_str() {
                Some(r) if DropReason::from_name(r).is_some() => {}
                other => errs.push(format!("packet {}: drop with reason {other:?}", l["index"])),
            }
        }
    }
    let transmitted: u64 = summary.transmitted.values().sum();
    if transmitted != f {
        errs.push(format!(
            "{transmitted} packets written to output captures, {f} forwarded"
        ));
    }
    if errs.is_empty() {
        Ok(lines)
    } else {
        Err(errs)
    }
}

#[test]
fn every_real_capture_is_accounted_for() {
    let dir = pcaps_dir();
    assert!(
        dir.is_dir(),
        "capture folder {} is missing: it must sit beside the clone (or set NODEPLANE_PCAPS)",
        dir.display()
    );
    let files = captures(&dir);
    assert!(!files.is_empty(), "no captures under {}", dir.display());
    let (state, uplink, pod) = example_state();
    let mut problems = Vec::new();
    let mut packets = 0usize;
    let mut pcapng = 0;
    for (n, file) in files.iter().enumerate() {
        if std::fs::read(file)
            .map(|b| b.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]))
            .unwrap_or(false)
        {
            pcapng += 1;
        }
        for iface in [&uplink, &pod] {
            let out = TempDir::new("real", &format!("{n}-{iface}"));
            match replay_one(&state, file, iface, &out.0) {
                Ok(lines) => packets += lines.len(),
                Err(errs) => {
                    for e in errs {
                        problems.push(format!("{} (in on {iface}): {e}", file.display()));
                    }
                }
            }
        }
    }
    println!(
        "{} captures ({pcapng} pcapng), {packets} packet verdicts over two runs each",
        files.len()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn pcapng_replays_like_the_pcap_it_came_from() {
    let dir = pcaps_dir();
    assert!(dir.is_dir(), "capture folder {} is missing", dir.display());
    let src = captures(&dir)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "one_tcp_stream.pcap"))
        .or_else(|| {
            captures(&dir)
                .into_iter()
                .find(|p| std::fs::read(p).is_ok_and(|b| b.starts_with(&[0xd4, 0xc3, 0xb2, 0xa1])))
        })
        .expect("a little-endian pcap to convert");
    let (state, uplink, _) = example_state();
    let tmp = TempDir::new("real", "pcapng");
    let ng = tmp.0.join("converted.pcapng");
    let n = pcap_to_pcapng(&src, &ng).expect("convert to pcapng");
    assert!(n > 0);
    let (a, b) = (tmp.0.join("from-pcap"), tmp.0.join("from-pcapng"));
    let la = replay_one(&state, &src, &uplink, &a)
        .unwrap_or_else(|e| panic!("{}: {e:?}", src.display()));
    let lb = replay_one(&state, &ng, &uplink, &b).unwrap_or_else(|e| panic!("pcapng: {e:?}"));
    assert_eq!(la.len(), n);
    assert_eq!(
        la,
        lb,
        "verdicts differ between {} and its pcapng copy",
        src.display()
    );
    // Output packets and their timestamps are identical too.
    for e in std::fs::read_dir(&a).expect("out dir").flatten() {
        let name = e.file_name();
        if name.to_string_lossy().ends_with(".pcap") {
            let x = read_capture(&e.path()).expect("output");
            let y = read_capture(&b.join(&name)).expect("output of the pcapng run");
            assert_eq!(
                x,
                y,
                "{} differs between the pcap and pcapng runs",
                name.to_string_lossy()
            );
        }
    }
}
