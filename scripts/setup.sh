#!/usr/bin/env bash
# Installs what building and testing nodeplane needs on a fresh Debian 12 machine (as root).
# Idempotent: packages already present are skipped quickly.
set -euo pipefail

APT_PACKAGES=(
  # build: the C XDP program (clang -target bpf, kernel uapi headers)
  clang llvm libpcap-dev linux-libc-dev protobuf-compiler libprotobuf-dev
  # real peers and tools used by tests and the lab
  iproute2 ethtool iputils-ping netcat-openbsd socat curl tcpdump netsniff-ng
  nftables conntrack bird2 frr etcd-server etcd-client python3-scapy gobgpd
  # bench/e2e/throughput.sh: TCP_STREAM, and the kernel baseline with kube-proxy's iptables rules
  iperf3 iptables
  # bench/e2e/throughput.sh's experiment dataplanes tc-ceiling*: loads and pins their BPF maps
  bpftool
  # scripts/bench.sh: callgrind instruction counts (the regression gate)
  valgrind
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian starts these daemons on install; tests run their own instances on loopback.
for svc in bird frr etcd gobgpd; do
  systemctl disable --now "$svc" >/dev/null 2>&1 || true
done

command -v cargo >/dev/null || { echo "setup: cargo (rustup) is required" >&2; exit 1; }
rustup component add clippy rustfmt >/dev/null 2>&1 || true
# The Debian package (scripts/package.sh, and CI's scripts/ci-package.sh).
command -v cargo-deb >/dev/null || cargo install cargo-deb --version 3.8.0 --locked

# Fuzzing (scripts/fuzz.sh: CI builds every fuzz crate and replays its corpus). cargo-fuzz
# drives libFuzzer; the builds run on nightly where installed (CI machines have it), else on
# stable (`-s none` needs no nightly flag).
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz --version 0.13.2
