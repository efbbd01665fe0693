//! The workers' and the control thread's shared monotonic clock.

use std::time::Instant;

/// Monotonic nanoseconds since a shared epoch (every worker and the control thread agree).
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Clock {
        Clock(Instant::now())
    }
    /// Starts at 1 s so no timestamp is 0.
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64 + 1_000_000_000
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
