#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test of the workspace, then the
# Debian package built from the test build and checked (scripts/ci-package.sh), the packet
# path's load-independent figures against bench/baseline.json (scripts/bench.sh --quick: fails
# when one is more than 3% worse), and every fuzz crate built with its corpus replayed
# (scripts/fuzz.sh replay).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --profile ci
bash scripts/ci-package.sh
bash scripts/bench.sh --quick
# Every fuzz crate builds, and every target replays its committed corpus and seeds without a
# crash (the long campaigns are not CI's: their figures are in bench/RESULTS.md).
bash scripts/fuzz.sh replay
