//! Issue 13 item 9: the control socket is bounded in clients. 64 connections held open
//! (`MAX_CLIENTS`): the next one is answered `too many control clients` and closed, while the
//! held ones are still served; once they go, new clients are served again. (Mode 0600 and the
//! request-size bound are asserted in `daemon.rs`,
//! `malformed_requests_get_errors_and_do_not_block_others`.)

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use common::*;
use nodeplane_control::api::server::MAX_CLIENTS;

fn request(s: &UnixStream, line: &str) -> String {
    let mut w = s.try_clone().unwrap();
    w.write_all(line.as_bytes()).unwrap();
    w.write_all(b"\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l
}

#[test]
fn control_socket_is_root_only_and_bounded_in_clients() {
    let d = Daemon::start("");
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "root only");
    let held: Vec<UnixStream> = (0..MAX_CLIENTS)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    // Every held connection is accepted and served (so all 64 are registered).
    for s in &held {
        assert!(request(s, r#"{"cmd":"status"}"#).contains(r#""ok":true"#));
    }
    let extra = UnixStream::connect(&d.socket).unwrap();
    let mut r = BufReader::new(extra);
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    assert!(l.contains("too many control clients"), "{l}");
    let mut rest = String::new();
    assert_eq!(r.read_line(&mut rest).unwrap_or(0), 0, "closed");
    // The held ones still work; after they close, a new client is served.
    assert!(request(&held[0], r#"{"cmd":"status"}"#).contains(r#""ok":true"#));
    drop(held);
    wait_for("a new client served", 10, || {
        let s = UnixStream::connect(&d.socket).ok()?;
        request(&s, r#"{"cmd":"status"}"#)
            .contains(r#""ok":true"#)
            .then_some(())
    });
    // No temporary socket name is left next to the socket.
    let dir = d.socket.parent().unwrap();
    let stray: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}
