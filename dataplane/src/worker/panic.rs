//! Panic containment on worker threads: the hook that leaves a worker's panics to the worker
//! (which catches, counts and logs them rate-limited; see the worker module).

use std::cell::{Cell, RefCell};
use std::panic;
use std::sync::Once;
use std::time::Duration;

/// A worker logs a caught panic at most this often (the count says how many were not logged).
pub const PANIC_LOG_EVERY: Duration = Duration::from_secs(10);

thread_local! {
    /// Set on a worker's own thread: the panic hook records the panic instead of printing it.
    pub(super) static WORKER_THREAD: Cell<bool> = const { Cell::new(false) };
    /// The last panic on this thread, `message at file:line`, for the worker's own log line.
    pub(super) static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that leaves panics on worker threads to the
/// worker, which catches, counts and logs them rate-limited; other threads' panics go to the
/// previous hook as before.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if WORKER_THREAD.with(Cell::get) {
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
            } else {
                prev(info);
            }
        }));
    });
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".into()
    }
}
