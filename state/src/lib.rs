//! The desired state of one node: what the control plane publishes and the dataplane compiles
//! into its lookup tables.
//!
//! Invariants (enforced by [`validate`], never assumed by callers of the raw types):
//! - every name (interface, endpoint, service, policy endpoint) is unique in its list;
//! - every prefix is canonical (no host bits set) and IPv4/IPv6 are never mixed in one pair;
//! - a `State` that came out of [`load_file`], [`load_dir`] or [`State::from_yaml_str`] is valid
//!   as a whole: a bad file rejects the whole load, nothing half-applies.

mod model;
mod load;
mod validate;

pub use load::{load_dir, load_file, load_path, LoadError};
pub use model::*;
pub use validate::{validate, ValidationError};
