//! The reconnect schedule: exponential windows with full jitter, the window cap scaled by the
//! cluster size, so that a restarted fleet does not stampede the store (DESIGN.md §3.2).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Reconnect schedule. Attempt k (k = 0 right after the loss) falls at a uniformly random point
/// of its own window `w_k = min(W, base_ms * 2^k)`; the windows follow each other, so attempt k
/// happens at `sum(w_0..w_{k-1}) + U(0, w_k)` after the loss (full jitter inside each window).
/// The cap `W = clamp(per_node_ms * nodes, cap_ms, max_window_ms)` grows with the cluster
/// (`nodes` = keys under `nodes/` at the last successful list). Without jitter (`jitter: false`,
/// for comparison only) every attempt falls at the end of its window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    pub base_ms: u64,
    pub cap_ms: u64,
    pub per_node_ms: u64,
    pub max_window_ms: u64,
    pub jitter: bool,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base_ms: 500,
            cap_ms: 5_000,
            per_node_ms: 10,
            max_window_ms: 300_000,
            jitter: true,
        }
    }
}

impl BackoffConfig {
    /// The window cap W for a cluster of `nodes` nodes.
    pub fn window(&self, nodes: usize) -> Duration {
        let scaled = self.per_node_ms.saturating_mul(nodes as u64);
        let w = scaled
            .max(self.cap_ms)
            .min(self.max_window_ms.max(self.cap_ms));
        Duration::from_millis(w)
    }

    /// Window k: `min(W, base * 2^k)`.
    pub fn window_k(&self, k: u32, nodes: usize) -> Duration {
        let exp = self.base_ms.saturating_mul(1u64 << k.min(40));
        Duration::from_millis(exp).min(self.window(nodes))
    }
}

/// The reconnect schedule of one client (see [`BackoffConfig`]).
#[derive(Debug)]
pub struct Reconnect {
    cfg: BackoffConfig,
    rng: fastrand::Rng,
    /// Start of the current window; `None` while connected.
    window_start: Option<Instant>,
    k: u32,
}

impl Reconnect {
    pub fn new(cfg: BackoffConfig, seed: u64) -> Self {
        Reconnect {
            cfg,
            rng: fastrand::Rng::with_seed(seed),
            window_start: None,
            k: 0,
        }
    }

    /// A session is fully up (listed, published, watch created): the next loss starts again at
    /// window 0.
    pub fn reset(&mut self) {
        self.window_start = None;
        self.k = 0;
    }

    /// An attempt failed (or the connection was lost) at `now`: when to try next.
    pub fn next_attempt(&mut self, now: Instant, nodes: usize) -> Instant {
        let start = match self.window_start {
            // First failure: window 0 starts now.
            None => now,
            // Otherwise the next window starts where the current one ends.
            Some(s) => {
                let end = s + self.cfg.window_k(self.k, nodes);
                self.k = self.k.saturating_add(1);
                end
            }
        };
        let mut start = start;
        // Windows that passed while the attempt itself ran (slow timeouts) are skipped.
        loop {
            let w = self.cfg.window_k(self.k, nodes);
            if start + w > now || w.is_zero() {
                break;
            }
            start += w;
            self.k = self.k.saturating_add(1);
        }
        self.window_start = Some(start);
        let w = self.cfg.window_k(self.k, nodes);
        let offset = if self.cfg.jitter {
            Duration::from_nanos(self.rng.u64(0..=w.as_nanos() as u64))
        } else {
            w
        };
        (start + offset).max(now)
    }

    pub fn attempt(&self) -> u32 {
        self.k
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(jitter: bool) -> BackoffConfig {
        BackoffConfig {
            base_ms: 100,
            cap_ms: 400,
            per_node_ms: 10,
            max_window_ms: 2_000,
            jitter,
        }
    }

    #[test]
    fn window_scales_with_nodes_within_bounds() {
        let c = cfg(true);
        assert_eq!(c.window(0), Duration::from_millis(400));
        assert_eq!(c.window(100), Duration::from_millis(1_000));
        assert_eq!(c.window(1_000_000), Duration::from_millis(2_000));
        assert_eq!(c.window_k(0, 100), Duration::from_millis(100));
        assert_eq!(c.window_k(3, 100), Duration::from_millis(800));
        assert_eq!(c.window_k(60, 100), Duration::from_millis(1_000));
    }

    /// docs/etcd.md: with the defaults, agents are in windows of the full width W from 7.5 s
    /// after the loss when W = 5 s (up to 500 nodes) and from 15.5 s when W = 10 s (1000 nodes).
    #[test]
    fn defaults_reach_the_window_cap_when_the_docs_say() {
        let c = BackoffConfig {
            jitter: false,
            ..BackoffConfig::default()
        };
        for (nodes, w, ramp) in [(500, 5_000, 7_500), (1_000, 10_000, 15_500)] {
            assert_eq!(c.window(nodes), Duration::from_millis(w));
            // Without jitter attempt k falls at the end of window k: the first full-width
            // window is the first gap of W between attempts, and it starts at the ramp.
            let t0 = Instant::now();
            let mut r = Reconnect::new(c.clone(), 1);
            let (mut prev, mut now) = (Duration::ZERO, t0);
            let start = loop {
                now = r.next_attempt(now, nodes);
                let at = now - t0;
                if at - prev == c.window(nodes) {
                    break prev;
                }
                prev = at;
            };
            assert_eq!(start, Duration::from_millis(ramp), "{nodes} nodes");
        }
    }

    #[test]
    fn attempts_fall_in_back_to_back_windows() {
        let t0 = Instant::now();
        // Without jitter: at the end of each window 100, 200, 400, 800, 1000, 1000 ms.
        let mut r = Reconnect::new(cfg(false), 1);
        let mut now = t0;
        let mut ends = Vec::new();
        for _ in 0..6 {
            now = r.next_attempt(now, 100);
            ends.push((now - t0).as_millis());
        }
        assert_eq!(ends, [100, 300, 700, 1500, 2500, 3500]);
        // With jitter: attempt k lies inside window k, whatever the draw.
        for seed in 0..200 {
            let mut r = Reconnect::new(cfg(true), seed);
            let (mut now, mut start) = (t0, Duration::ZERO);
            for k in 0..6u32 {
                now = r.next_attempt(now, 100);
                let w = cfg(true).window_k(k, 100);
                let at = now - t0;
                assert!(at >= start && at <= start + w, "seed {seed} k {k}: {at:?}");
                start += w;
            }
            r.reset();
            assert!(r.next_attempt(now, 100) - now <= Duration::from_millis(100));
        }
    }
}
