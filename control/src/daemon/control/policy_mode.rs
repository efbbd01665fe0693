//! The operator's policy-mode override (`nodeplane policy mode`): emergency allow-all or audit
//! on top of the state's mode, set at runtime with one command even when the state store is
//! down, published to the workers at once and kept across daemon restarts in a file.

use nodeplane_state::PolicyMode;

use super::Control;
use crate::api::{PolicyModeSet, PolicyModeStatus, Response};

/// A mode name as `nodeplane policy mode` takes it: `Ok(None)` for `state` (no override).
fn parse_mode(mode: &str) -> Result<Option<PolicyMode>, &str> {
    match mode {
        "enforce" => Ok(Some(PolicyMode::Enforce)),
        "audit" => Ok(Some(PolicyMode::Audit)),
        "allow-all" => Ok(Some(PolicyMode::AllowAll)),
        "state" => Ok(None),
        other => Err(other),
    }
}

fn mode_name(m: PolicyMode) -> &'static str {
    match m {
        PolicyMode::Enforce => "enforce",
        PolicyMode::Audit => "audit",
        PolicyMode::AllowAll => "allow-all",
    }
}

impl Control {
    pub(super) fn mode_status(&self) -> PolicyModeStatus {
        let state_mode = self
            .state
            .as_ref()
            .map(|s| s.node.policy_mode)
            .unwrap_or_default();
        PolicyModeStatus {
            state: mode_name(state_mode).into(),
            r#override: self.mode_override.map(|m| mode_name(m).to_string()),
            effective: mode_name(self.mode_override.unwrap_or(state_mode)).into(),
        }
    }

    /// Keeps the operator's policy-mode override in `path` from now on, and restores one kept
    /// there by a previous run: an emergency `allow-all` must survive a daemon restart or
    /// upgrade (the daemon keeps it beside its control socket, on /run by default, so a reboot
    /// clears it). A file that does not hold a mode is reported and ignored.
    pub fn keep_mode_at(&mut self, path: std::path::PathBuf) {
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse_mode(text.trim()) {
                Ok(Some(m)) => {
                    log::warn!(
                        "policy mode override {} restored from {} (set by the operator before a restart; `nodeplane policy mode state` clears it)",
                        mode_name(m),
                        path.display()
                    );
                    self.mode_override = Some(m);
                }
                _ => log::error!(
                    "{}: not a policy mode override ({:?}); ignored",
                    path.display(),
                    text.trim()
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::error!("cannot read {}: {e}; no override restored", path.display()),
        }
        self.mode_file = Some(path);
    }

    fn save_mode(&self) {
        let Some(path) = &self.mode_file else { return };
        let r = match self.mode_override {
            Some(m) => {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, format!("{}\n", mode_name(m)))
                    .and_then(|()| std::fs::rename(&tmp, path))
            }
            None => match std::fs::remove_file(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
        };
        if let Err(e) = r {
            log::error!(
                "cannot keep the policy mode override in {}: {e} (it holds until this daemon stops)",
                path.display()
            );
        }
    }

    pub(super) fn set_mode(&mut self, mode: &str) -> Response {
        let m = match parse_mode(mode) {
            Ok(m) => m,
            Err(other) => {
                return Response::err(format!(
                    "unknown policy mode {other:?} (enforce, audit, allow-all, or state to drop the override)"
                ))
            }
        };
        self.mode_override = m;
        self.save_mode();
        if let Some(p) = &self.publisher {
            p.set_policy_mode(m);
        }
        match m {
            Some(m) => log::warn!(
                "policy mode override set to {} by the operator",
                mode_name(m)
            ),
            None => log::warn!("policy mode override cleared by the operator"),
        }
        Response::ok(PolicyModeSet {
            mode: self.mode_status(),
        })
    }
}
