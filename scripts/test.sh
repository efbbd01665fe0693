#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --profile ci
# Every fuzz crate builds, and every target replays its committed corpus and seeds without a
# crash (the long campaigns are not CI's: their figures are in bench/RESULTS.md).
bash scripts/fuzz.sh replay
