#!/usr/bin/env bash
# The whole test suite, on a bare Debian 12 machine as root: installs and starts what the tests
# need (Docker engine, moto, iptables guard; see scripts/test-env.sh), runs every check and
# test, and stops and removes only what it started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh
trap mp_cleanup EXIT

mp_install_deps
mp_install_guard
mp_start_dockerd
mp_start_moto
mp_build_test_image
mp_export_test_env

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests run the agent binary; build it before they start.
cargo build -p metadataproxy
cargo test --workspace
