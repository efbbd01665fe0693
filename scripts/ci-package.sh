#!/usr/bin/env bash
# CI's package step (scripts/test.sh runs it after the tests): builds the Debian package from
# the test profile, which reuses the test build (seconds when `cargo test --workspace --profile
# ci` ran first, instead of a ~15 min release build), and checks what it holds. Operators build
# the release package with scripts/package.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
cargo deb -p nodeplane-control --profile ci
deb=$(ls -t target/debian/nodeplane_*_amd64.deb | head -1)
info=$(dpkg-deb --info "$deb")
contents=$(dpkg-deb --contents "$deb")
fail() { echo "ci-package: $deb: $*" >&2; exit 1; }
unit=./usr/lib/systemd/system/nodeplane.service
for f in ./usr/bin/nodeplane $unit ./etc/nodeplane/config.yaml \
    ./etc/nodeplane/state/node.yaml ./usr/share/doc/nodeplane/service.md \
    ./usr/lib/systemd/system/nodeplane-mesh.service ./usr/share/doc/nodeplane/examples/mesh.yaml; do
  grep -q " $f\$" <<<"$contents" || fail "missing $f"
done
grep -qE -- "^-rwxr-xr-x (0/0|root/root) .* ./usr/bin/nodeplane\$" <<<"$contents" || fail "usr/bin/nodeplane not 0755 root"
grep -q "Package: nodeplane" <<<"$info" || fail "no Package: nodeplane"
grep -q "Depends:.*systemd" <<<"$info" || fail "does not depend on systemd"
grep -qE "Depends:.*iproute2 \(>= 4.17\)" <<<"$info" || fail "does not depend on iproute2 (>= 4.17): the host interface runs ip"
grep -qE "Depends:.*nftables" <<<"$info" || fail "does not depend on nftables: the host interface runs nft"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb --control "$deb" "$work/control"
for c in /etc/nodeplane/config.yaml /etc/nodeplane/state/node.yaml; do
  grep -qx "$c" "$work/control/conffiles" || fail "$c is not a conffile"
done
grep -q "deb-systemd-helper" "$work/control/postinst" || fail "postinst does not enable the unit"
grep -q "nodeplane detach" "$work/control/prerm" || fail "prerm does not detach the pinned XDP program"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" ./usr/bin/nodeplane $unit
"$work/usr/bin/nodeplane" --version
grep -q "^ExecStart=/usr/bin/nodeplane run --config /etc/nodeplane/config.yaml" \
  "$work/$unit" || fail "unit's ExecStart"
! grep -q "^ExecStopPost=" "$work/$unit" || fail "the unit must not detach XDP at stop"
echo "ci-package: $deb built and checked in $(( $(date +%s) - t0 )) s"
