#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test of the workspace, then the
# Debian package built from the test build and checked (scripts/ci-package.sh), then the packet
# path's load-independent figures against bench/baseline.json (scripts/bench.sh --quick: fails
# when one is more than 3% worse).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --profile ci
bash scripts/ci-package.sh
bash scripts/bench.sh --quick
