//! The nodeplane daemon and CLI library. `replay` runs the worker pipeline over captures.

pub mod api;
pub mod daemon;
pub mod events;
pub mod explain;
pub mod identity;
pub mod publish;
pub mod replay;
pub mod runtime;
pub mod source;
pub mod worker;
