//! `cd control && cargo +nightly fuzz run request fuzz/corpus/request fuzz/seeds/request`:
//! control-socket request lines into the daemon's own handler (`Control::serve_line`, what the
//! socket server calls for every line), on a control thread running the example node with one
//! worker (no packet I/O), as the daemon would with `io: none`.
//!
//! Checked: nothing panics; what decodes as a `Request` encodes and decodes back equal; every
//! answer is one JSON line that reads back as a `Response`, `ok` exactly when it carries a
//! result and no error; a line that is not a request is answered `malformed request: ...`.
//! Between inputs the policy-mode override is reset, so an input's answers depend on it alone
//! (and on the worker's empty conntrack).
#![no_main]

use std::cell::RefCell;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nodeplane_control::api::server::Reply;
use nodeplane_control::api::{Request, Response};
use nodeplane_control::daemon::control::Control;
use nodeplane_control::runtime::backend::IoBackend;
use nodeplane_dataplane::worker::{IoStats, PacketIo, RemovedFlowAction};
use nodeplane_dataplane::{Outcome, Packet, Tables};

/// A worker I/O without packets whose idle wait is short, so that requests the handler
/// sends to the worker (status, ct list, explain) are answered in microseconds.
struct QuietIo;

impl PacketIo for QuietIo {
    fn bind(&mut self, _: &Arc<Tables>) {}
    fn burst(&mut self, _: u64, _: &mut dyn FnMut(&mut [Packet<'_>], &mut [Outcome])) -> usize {
        0
    }
    fn send(&mut self, _: u16, _: &[u8]) {}
    fn idle(&mut self, _: Duration) {
        std::thread::sleep(Duration::from_micros(50));
    }
    fn stats(&self) -> IoStats {
        IoStats::default()
    }
}

struct QuietBackend;

impl IoBackend for QuietBackend {
    fn kind(&self) -> &'static str {
        "fuzz"
    }
    fn start(&mut self, _: &Arc<Tables>, n: usize) -> Result<Vec<Box<dyn PacketIo>>, String> {
        Ok((0..n)
            .map(|_| Box::new(QuietIo) as Box<dyn PacketIo>)
            .collect())
    }
}

thread_local! {
    static CONTROL: RefCell<Control> = RefCell::new({
        let mut c = Control::new(
            "fuzz".into(),
            1,
            Box::new(QuietBackend),
            RemovedFlowAction::Drop,
            Arc::new(AtomicBool::new(false)),
        );
        c.apply(
            nodeplane_state::example::state().expect("the example state"),
            "examples/state".into(),
        );
        assert_eq!(c.generation(), 1, "the example state is running");
        c
    });
}

fn check_response(line: &str, r: &Response) {
    let text = r.to_line();
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "{text:?}"
    );
    let back: Response = serde_json::from_str(&text).expect("a response line reads back");
    assert_eq!(&back, r);
    assert_eq!(r.ok, r.result.is_some(), "{text}");
    assert_eq!(r.ok, r.error.is_none(), "{text}");
    if serde_json::from_str::<Request>(line).is_err() {
        let e = r.error.as_deref().unwrap_or_default();
        assert!(
            e.starts_with("malformed request: "),
            "{line:?} answered {text}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    CONTROL.with(|c| {
        let mut c = c.borrow_mut();
        // As the server frames them: lines, UTF-8, blank ones skipped, a trailing CR dropped.
        for raw in data.split(|b| *b == b'\n') {
            let Ok(text) = std::str::from_utf8(raw) else {
                continue;
            };
            if text.trim().is_empty() {
                continue;
            }
            let line = text.trim_end_matches('\r');
            if let Ok(req) = serde_json::from_str::<Request>(line) {
                let json = serde_json::to_string(&req).expect("a request encodes");
                let again: Request = serde_json::from_str(&json)
                    .unwrap_or_else(|e| panic!("{json} (from {line:?}) does not decode: {e}"));
                assert_eq!(again, req, "request round trip via {json}");
            }
            match c.serve_line(line) {
                Reply::Line(r) => check_response(line, &r),
                Reply::HandOff(r, ticket) => {
                    check_response(line, &r);
                    // No connection to hand over: release the reservation.
                    c.attach_observer(ticket, None);
                }
            }
        }
        let reset = c.handle_line(r#"{"cmd":"policy-mode","mode":"state"}"#);
        assert!(reset.ok, "{reset:?}");
    });
});
