//! The packet pipeline.
