//! `nodeplane run` with `log_format: json` and an etcd source whose store is down (a closed
//! port, retried every 10-20 ms): the log stays a few lines long, every line one JSON object,
//! the reconnect attempts counted in `suppressed`; a reload switches the format live.

mod common;

use std::process::Command;

use common::{wait_for, Daemon};

fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

#[test]
fn an_etcd_outage_logs_a_few_counted_lines() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: every attempt is refused at once
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("np.sock");
    let cfg = |format: &str| {
        format!(
            "state:\n  etcd:\n    endpoints: [\"http://127.0.0.1:{port}\"]\n    node_name: node-1\n    backoff: {{ base_ms: 10, cap_ms: 20 }}\ncontrol_socket: {}\nlog_level: info\nlog_format: {format}\n",
            sock.display()
        )
    };
    std::fs::write(dir.path().join("config.yaml"), cfg("json")).unwrap();
    let d = Daemon::launch(dir);

    // The burst of 3 comes at once; the 4th line, 10 s later, carries the count.
    let log = wait_for("a line with a suppressed count", 30, || {
        let log = d.log();
        log.contains("\"suppressed\":").then_some(log)
    });
    let lines = json_lines(&log);
    for v in &lines {
        for k in ["ts", "level", "target", "msg"] {
            assert!(v[k].is_string(), "{k} missing: {v}");
        }
    }
    // The attempt lines: written by the etcd session, or the flush of their count
    // (`etcd-attempt: N similar lines suppressed ...`) when it comes before the next attempt.
    let attempts: Vec<_> = lines
        .iter()
        .filter(|v| {
            v["msg"].as_str().is_some_and(|m| {
                m.starts_with("etcd attempt failed") || m.starts_with("etcd-attempt: ")
            })
        })
        .collect();
    let suppressed: u64 = attempts
        .iter()
        .filter_map(|v| v["suppressed"].as_u64())
        .sum();
    assert!(
        (3..=5).contains(&attempts.len()),
        "{} attempt lines:\n{log}",
        attempts.len()
    );
    assert!(
        suppressed >= 50,
        "hundreds of attempts in 10 s, {suppressed} counted:\n{log}"
    );
    let counted = attempts.iter().find(|v| v["suppressed"].is_u64()).unwrap();
    assert_eq!(counted["level"], "warn");
    assert_eq!(
        counted["target"],
        "nodeplane_control::source::etcd::session"
    );
    let msg = counted["msg"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "{} similar lines suppressed in the last",
            counted["suppressed"]
        )),
        "{msg}"
    );
    // The transition itself is logged once, not per attempt.
    assert_eq!(log.matches("DISCONNECTED").count(), 1, "{log}");

    // A reload switches the format live.
    std::fs::write(d.path("config.yaml"), cfg("text")).unwrap();
    let pid = d.child.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_for("the reload logged as text", 10, || {
        d.log()
            .lines()
            .any(|l| l.starts_with("ts=") && l.contains("config reloaded"))
            .then_some(())
    });
}
