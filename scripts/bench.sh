#!/usr/bin/env bash
# The benchmark command (`cargo xtask bench [--profile] [--seconds N]`), as root on Debian 12:
# installs and starts what it needs exactly as the test command does (Docker engine, moto, the
# iptables guard so that nothing can leave the machine, the busybox image), plus `wrk` (and
# `perf` for --profile), builds the release agent and the benchmark, runs it, and stops and
# removes only what it started. Results: a table on stdout, docs/bench/results.md and
# docs/bench/results.svg (and docs/bench/profile.txt with --profile).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh
cleanup() {
  rm -rf /sys/fs/bpf/mp-bench /sys/fs/bpf/mp-bench-lookup-* 2>/dev/null || true
  # The eBPF lookup scenario's synthetic container cgroups (empty: rmdir removes them).
  for d in /sys/fs/cgroup/mp-bench-*.slice /sys/fs/cgroup/unified/mp-bench-*.slice; do
    [[ -d "$d" ]] || continue
    find "$d" -mindepth 1 -maxdepth 1 -type d -exec rmdir {} + 2>/dev/null || true
    rmdir "$d" 2>/dev/null || true
  done
  nft delete table ip metadataproxy 2>/dev/null || true
  nft delete table ip6 metadataproxy 2>/dev/null || true
  mp_cleanup
}

packages=(wrk)
if [[ " $* " == *" --profile "* ]]; then
  packages+=(linux-perf)
fi

mp_install_deps
_mp_apt_install "${packages[@]}"
if nft list table ip metadataproxy >/dev/null 2>&1; then
  echo "bench: a table ip metadataproxy is installed (a running agent in iptables mode?);" \
    "stop it first: the benchmark starts agents in every mode" >&2
  exit 1
fi
trap cleanup EXIT
mp_install_guard
mp_start_dockerd
mp_start_moto
mp_build_test_image
mp_export_test_env

echo "[bench] building the release agent and the benchmark" >&2
cargo build --release -p metadataproxy --bin metadataproxy
cargo build --release -p metadataproxy-tests --bin bench
target/release/bench "$@"
