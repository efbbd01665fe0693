//! The desired state of one node: what the control plane publishes and the dataplane compiles
//! into its lookup tables.
//!
//! Invariants (enforced by [`validate`], never assumed by callers of the raw types):
//! - every name (interface, endpoint, service, policy endpoint) is unique in its list;
//! - every prefix is canonical (no host bits set) and IPv4/IPv6 are never mixed in one pair;
//! - a `State` that came out of [`load_file`], [`load_dir`] or [`State::from_yaml_str`] is valid
//!   as a whole: a bad file rejects the whole load, nothing half-applies.
//!
//! The schema, with every constraint and its runtime meaning, is `docs/state-schema.md`.

pub mod example;
mod load;
mod model;
mod validate;

pub use load::{
    load_dir, load_dir_limited, load_file, load_file_limited, load_path, load_path_limited,
    load_sources, Limits, LoadError,
};
pub use model::*;
pub use validate::{
    validate, Problem, ValidationError, LOCAL_IDENTITY_MASK, MAGLEV_SLOTS_PER_BACKEND,
    MAX_AFFINITY_TIMEOUT, MAX_CT_ENTRIES, MAX_MAGLEV_TABLE_SIZE, MIN_CT_ENTRIES,
    MIN_MAGLEV_TABLE_SIZE,
};
