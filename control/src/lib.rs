//! The nodeplane daemon and CLI library. `replay` runs the worker pipeline over captures.

pub mod identity;
pub mod replay;
pub mod source;
