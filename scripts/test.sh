#!/usr/bin/env bash
# The whole test suite, on a bare Debian 12 machine as root: installs and starts what the tests
# need (Docker engine, Podman, moto, iptables guard, eBPF toolchain; see scripts/test-env.sh and
# scripts/ebpf-toolchain.sh), runs every check and test, and stops and removes only what it
# started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The eBPF tests put 169.254.169.254 (and the container credentials endpoint's 169.254.170.2)
# on loopback with a recording catcher behind it, so that a container request escaping
# interception lands in the catcher instead of timing out. Host
# processes may then reach that loopback address only: the guard rejects 169.254.0.0/16 on
# every other interface. (Read when test-env.sh is sourced.)
export MP_GUARD_ALLOW_LOOPBACK=1

# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh
# shellcheck source=scripts/ebpf-toolchain.sh
source scripts/ebpf-toolchain.sh
CATCHER_ADDED=0
# iptables-mode tests make and remove the agent's own netfilter tables (ip and ip6); if one is
# left (a test killed half-way) and none was there before, remove them too.
AGENT_TABLE_BEFORE=0
if command -v nft >/dev/null && { nft list table ip metadataproxy >/dev/null 2>&1 ||
  nft list table ip6 metadataproxy >/dev/null 2>&1; }; then
  AGENT_TABLE_BEFORE=1
fi
CONTAINER_CATCHER_ADDED=0
add_catcher_address() {
  if ! ip -4 addr show dev lo | grep -q ' 169\.254\.169\.254/32'; then
    ip addr add 169.254.169.254/32 dev lo
    CATCHER_ADDED=1
  fi
  # The same for the container credentials endpoint's address.
  if ! ip -4 addr show dev lo | grep -q ' 169\.254\.170\.2/32'; then
    ip addr add 169.254.170.2/32 dev lo
    CONTAINER_CATCHER_ADDED=1
  fi
}
cleanup() {
  # Whatever a failed eBPF test left attached: removing the pins detaches the programs.
  rm -rf /sys/fs/bpf/mp-test-* 2>/dev/null || true
  # And the test cgroups it made (empty once its processes are gone).
  local cg
  cg=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
  if [[ -n $cg ]]; then
    find "$cg" -depth -type d -path '*/mp-test-*' -exec rmdir {} + 2>/dev/null || true
  fi
  if [[ $AGENT_TABLE_BEFORE == 0 ]] && command -v nft >/dev/null; then
    nft delete table ip metadataproxy 2>/dev/null || true
    nft delete table ip6 metadataproxy 2>/dev/null || true
  fi
  if [[ $CATCHER_ADDED == 1 ]]; then
    ip addr del 169.254.169.254/32 dev lo 2>/dev/null || true
  fi
  if [[ $CONTAINER_CATCHER_ADDED == 1 ]]; then
    ip addr del 169.254.170.2/32 dev lo 2>/dev/null || true
  fi
  mp_cleanup
}
trap cleanup EXIT

mp_install_deps
mp_install_sdk_clients
mp_install_guard
mp_start_dockerd
mp_start_moto
mp_build_test_image
# Podman's API service for tests/tests/podman.rs (after the Docker image: it imports its root
# filesystem).
mp_install_podman
mp_start_podman
mp_export_test_env
mp_ebpf_toolchain
add_catcher_address

cargo fmt --all -- --check
# The whole workspace but the kernel program (built by xtask): the default members leave out
# the end-to-end crate, so that a plain `cargo test` passes anywhere.
WORKSPACE=(--workspace --exclude metadataproxy-ebpf)
cargo clippy "${WORKSPACE[@]}" --all-targets -- -D warnings
# The shipped kernel object must be what the current source builds.
cargo xtask build-ebpf --check
# The end-to-end tests run the agent binary; build it before they start.
cargo build -p metadataproxy
# And the agent image (static binary, FROM scratch), for tests/tests/image.rs.
bash scripts/build-image.sh metadataproxy:test
export MP_TEST_AGENT_IMAGE=metadataproxy:test
cargo test "${WORKSPACE[@]}"
# Stops and restarts dockerd: on its own, after everything else.
cargo test -p metadataproxy-tests --test dockerd_restart
# A short run of each fuzz target from its committed corpus (fuzz/README.md).
bash scripts/fuzz-smoke.sh
