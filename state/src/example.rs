//! The example node of `examples/state/`, embedded: the default state of the README demo and
//! the AF_XDP lab, and a fixture other crates' tests rely on. Its topology is documented in
//! `docs/state-schema.md` and in the comments of the files themselves.

use crate::load::{load_sources, LoadError};
use crate::model::State;

/// The example's files, as (file name, YAML text), in the order a directory load merges them.
pub const FILES: [(&str, &str); 6] = [
    (
        "endpoints.yaml",
        include_str!("../../examples/state/endpoints.yaml"),
    ),
    (
        "interfaces.yaml",
        include_str!("../../examples/state/interfaces.yaml"),
    ),
    (
        "ipcache.yaml",
        include_str!("../../examples/state/ipcache.yaml"),
    ),
    ("node.yaml", include_str!("../../examples/state/node.yaml")),
    (
        "policies.yaml",
        include_str!("../../examples/state/policies.yaml"),
    ),
    (
        "services.yaml",
        include_str!("../../examples/state/services.yaml"),
    ),
];

/// The example node, loaded and validated exactly as `load_dir("examples/state")` would.
pub fn state() -> Result<State, LoadError> {
    load_sources(
        FILES
            .iter()
            .map(|(name, text)| (format!("examples/state/{name}"), *text)),
    )
}
