//! Issue 13 items 6 and 9: a state directory that cannot be read whole, or that is over the
//! configured limits, is a rejected change: the daemon keeps its last good state (same
//! generation, the example's 5 services), counts the rejection and names the file and the
//! reason in `nodeplane status` and in its log.
//!
//! ```text
//!  temp dir/state/*.yaml ──inotify──> nodeplane run (no packet I/O) ──socket──> status
//!            services.yaml replaced by: a dangling symlink, a symlink loop, a directory,
//!            a symlink to a directory, a FIFO; then a file over state.limits.max_file_bytes
//! ```
//!
//! Root reads any file whatever its mode, so `chmod 000` would not make a file unreadable
//! here (the tests run as root): every case below fails for root too (open fails: ENOENT,
//! ELOOP; or the opened name is not a regular file: a directory, a FIFO).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use nodeplane_control::api::Request;

fn service_names(d: &Daemon) -> Vec<String> {
    d.call(&Request::ServiceList {})
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// Waits for a rejection after `before` ones; asserts the running state did not move and the
/// rejection names `file` and `reason` in status and in the log.
fn assert_rejected(d: &Daemon, before: u64, generation: u64, file: &Path, reason: &str) {
    let s = wait_for(&format!("the rejection of {reason}"), 10, || {
        let s = d.status();
        (s["rejections"].as_u64()? > before).then_some(s)
    });
    assert_eq!(s["state"], "stale", "{s}");
    assert_eq!(
        s["generation"], generation,
        "{reason}: running state untouched"
    );
    let err = s["last_rejection"]["error"].as_str().unwrap();
    let file = file.display().to_string();
    assert!(err.contains(&file), "{reason}: {err}");
    assert!(err.contains(reason), "{reason}: {err}");
    assert_eq!(
        service_names(d).len(),
        5,
        "{reason}: the example's services"
    );
    let (ok, out) = d.cli(&["status"]);
    assert!(!ok, "status exits non-zero when stale");
    assert!(out.contains(&file) && out.contains(reason), "{out}");
    // The rejection line is rate limited (3 at once, then one per 10 s: daemon/ratelimit.rs);
    // status has every one.
    if before < 3 {
        let log = d.log();
        assert!(
            log.lines()
                .any(|l| l.contains("REJECTED") && l.contains(&file) && l.contains(reason)),
            "{reason}: not in the log:\n{log}"
        );
    }
}

#[test]
fn unreadable_state_file_rejects_the_change_and_keeps_the_last_good_state() {
    let d = Daemon::start("");
    let services = d.state.join("services.yaml");
    let good = std::fs::read_to_string(&services).unwrap();
    assert_eq!(service_names(&d).len(), 5);
    // Each replacement is put in place by one rename where the kind allows it (a hidden name
    // first: not read), so no load sees the file missing.
    let tmp = d.state.join(".replacement");
    let kinds: [(&str, &dyn Fn()); 5] = [
        ("a dangling symlink (to ", &|| {
            std::os::unix::fs::symlink("gone.yaml", &tmp).unwrap();
            std::fs::rename(&tmp, &services).unwrap();
        }),
        ("a symlink loop", &|| {
            let other = d.state.join("loop.other");
            std::os::unix::fs::symlink(&services, &other).unwrap();
            std::os::unix::fs::symlink(&other, &tmp).unwrap();
            std::fs::rename(&tmp, &services).unwrap();
        }),
        ("a directory", &|| {
            // A directory cannot be renamed over a file: removed, then created.
            std::fs::remove_file(&services).unwrap();
            std::fs::create_dir(&services).unwrap();
        }),
        ("a directory", &|| {
            let elsewhere = d.dir.path().join("elsewhere");
            std::fs::create_dir_all(&elsewhere).unwrap();
            std::os::unix::fs::symlink(&elsewhere, &tmp).unwrap();
            std::fs::rename(&tmp, &services).unwrap();
        }),
        ("a FIFO", &|| {
            let ok = Command::new("mkfifo").arg(&tmp).status().unwrap().success();
            assert!(ok, "mkfifo");
            std::fs::rename(&tmp, &services).unwrap();
        }),
    ];
    for (reason, replace) in kinds {
        let s = d.status();
        let (generation, before) = (
            s["generation"].as_u64().unwrap(),
            s["rejections"].as_u64().unwrap(),
        );
        replace();
        assert_rejected(&d, before, generation, &services, reason);
        // The real file back: state ok again, the services unchanged.
        if services.is_dir() && !services.is_symlink() {
            std::fs::remove_dir(&services).unwrap();
        }
        std::fs::write(&tmp, &good).unwrap();
        std::fs::rename(&tmp, &services).unwrap();
        let _ = std::fs::remove_file(d.state.join("loop.other"));
        wait_for("state ok again", 10, || {
            (d.status()["state"] == "ok").then_some(())
        });
        assert_eq!(service_names(&d).len(), 5);
    }
}

#[test]
fn state_file_over_the_configured_limit_is_rejected_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    write_example_state(&state);
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "state: {{ dir: {}, limits: {{ max_file_bytes: 65536, max_files: 8 }} }}\n\
             control_socket: {}\nconntrack_snapshot: null\n",
            state.display(),
            dir.path().join("np.sock").display()
        ),
    )
    .unwrap();
    let d = Daemon::launch(dir);
    let s = wait_for("the first publication", 20, || {
        let s = d.try_call(&Request::Status {})?;
        (s["generation"].as_u64()? >= 1).then_some(s)
    });
    let generation = s["generation"].as_u64().unwrap();

    // 70,000 bytes of valid YAML (comments): refused from its size, not parsed.
    let big = state.join("zz-big.yaml");
    std::fs::write(&big, "# padding\n".repeat(7000)).unwrap();
    assert_rejected(
        &d,
        0,
        generation,
        &big,
        "70000 bytes is over the limit of 65536 bytes per state file (state.limits.max_file_bytes)",
    );
    std::fs::remove_file(&big).unwrap();
    wait_for("state ok again", 10, || {
        (d.status()["state"] == "ok").then_some(())
    });

    // One file more than max_files (the example has 6): the extra files are written under
    // hidden names and renamed in together, so no load sees 7 or 8 of them.
    let generation = d.status()["generation"].as_u64().unwrap();
    let n = std::fs::read_dir(&state).unwrap().count();
    for i in n..=8 {
        std::fs::write(state.join(format!(".zz-{i}.yaml")), "# empty\n").unwrap();
    }
    for i in n..=8 {
        std::fs::rename(
            state.join(format!(".zz-{i}.yaml")),
            state.join(format!("zz-{i}.yaml")),
        )
        .unwrap();
    }
    assert_rejected(
        &d,
        1,
        generation,
        &state,
        "more than 8 state files (state.limits.max_files)",
    );
}
