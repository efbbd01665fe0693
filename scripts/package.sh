#!/usr/bin/env bash
# Builds the Debian package: target/debian/nodeplane_<version>_amd64.deb (docs/service.md).
# The binary, the systemd unit, /etc/nodeplane/config.yaml and the default state (conffiles),
# /var/lib/nodeplane, the docs. Installs cargo-deb if missing.
#
#   scripts/package.sh            release build (as shipped; ~10 min on 2 cores)
#   NP_PROFILE=ci scripts/package.sh   the test suite's profile (faster; for trying the package)
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${NP_PROFILE:-release}"
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo deb -p nodeplane-control --profile "$profile" "$@"
ls -1 target/debian/nodeplane_*_amd64.deb
