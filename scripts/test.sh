#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --profile ci
# The packet path's load-independent figures against bench/baseline.json (fails when one is
# more than 3% worse; see scripts/bench.sh).
bash scripts/bench.sh --quick
