//! Shared fixtures for the benchmarks: synthetic states and packets.
