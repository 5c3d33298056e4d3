#!/usr/bin/env bash
# shellcheck shell=bash
#
# scripts/ebpf-toolchain.sh: the toolchain that builds the aya kernel program on Debian 12
# (see shared/design/ebpf-toolchain.md). A library with one function, also runnable directly:
#
#   source scripts/ebpf-toolchain.sh && mp_ebpf_toolchain     # or: bash scripts/ebpf-toolchain.sh
#
# mp_ebpf_toolchain installs, as root and only what is missing:
#   - apt: rustc-web cargo-web rust-web-src (a rustc with the `core` source it was built from,
#     for `-Z build-std=core`), llvm-<MAJOR>-dev (MAJOR: the LLVM of /usr/bin/rustc), and
#     bpftool when Debian has a package for it (the tests read `bpftool cgroup tree`);
#   - bpf-linker $MP_BPF_LINKER_VERSION, built against that same LLVM (cargo install);
#   - the rustup toolchain `debian-web` linked to /usr, so that `cargo +debian-web` and
#     aya-build run Debian's cargo and rustc.
#
# Afterwards, for the caller: MP_EBPF_TOOLCHAIN=debian-web, MP_EBPF_LLVM_MAJOR, and cargo's bin
# directory (where bpf-linker is) on PATH. The kernel crate then builds with
#   RUSTC_BOOTSTRAP=1 cargo +debian-web build --release --target bpfel-unknown-none -Z build-std=core
#
# Errors: returns non-zero with an "[ebpf-toolchain] ERROR:" line, never exits the caller's
# shell, and behaves the same with or without `set -euo pipefail` in the caller. Long output
# goes to log files in $MP_RUN_DIR; stderr gets one line per step, with its duration.

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" # MP_REPO, MP_RUN_DIR and the shared helpers
MP_BPF_LINKER_VERSION="${MP_BPF_LINKER_VERSION:-0.13.0}"
MP_EBPF_TOOLCHAIN="${MP_EBPF_TOOLCHAIN:-debian-web}"

# bpftool is optional: Debian 12 has it, other releases may not.
_mp_tc_bpftool() {
  local t0 candidate
  t0=$(_mp_now)
  if _mp_pkg_installed bpftool; then
    _mp_log "apt: bpftool already installed ($(_mp_since "$t0"))"
    return 0
  fi
  _mp_apt_update || return 1
  candidate=$(apt-cache policy bpftool 2>/dev/null | sed -n 's/^ *Candidate: *//p')
  if [[ -z $candidate || $candidate == '(none)' ]]; then
    _mp_log "apt: no bpftool package in this distribution; skipped ($(_mp_since "$t0"))"
    return 0
  fi
  _mp_apt_install bpftool
}

# The LLVM major version that /usr/bin/rustc was built with ("LLVM version: 22.1.2" -> 22).
_mp_tc_llvm_major() {
  /usr/bin/rustc -vV 2>/dev/null | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p'
}

_mp_tc_bpf_linker() {
  local log="$MP_RUN_DIR/ebpf-bpf-linker.log" major=$1 t0 bin have
  t0=$(_mp_now)
  bin="${CARGO_HOME:-$HOME/.cargo}/bin"
  have=$("$bin/bpf-linker" --version 2>/dev/null || bpf-linker --version 2>/dev/null)
  if [[ $have == *" $MP_BPF_LINKER_VERSION"* ]]; then
    _mp_log "bpf-linker: $have already installed ($(_mp_since "$t0"))"
    return 0
  fi
  if ! command -v cargo >/dev/null; then
    _mp_err "cargo is not on PATH (rustup's cargo builds bpf-linker)"
    return 1
  fi
  _mp_log "bpf-linker: building $MP_BPF_LINKER_VERSION against LLVM $major (log: $log)"
  # --force: replace another version of bpf-linker if one is installed.
  if ! LLVM_PREFIX="/usr/lib/llvm-$major" CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo install bpf-linker --version "$MP_BPF_LINKER_VERSION" --locked --force \
    --no-default-features --features "llvm-$major" >"$log" 2>&1; then
    _mp_err "cargo install bpf-linker $MP_BPF_LINKER_VERSION (llvm-$major) failed"
    _mp_tail "$log"
    return 1
  fi
  have=$("$bin/bpf-linker" --version 2>/dev/null)
  if [[ $have != *" $MP_BPF_LINKER_VERSION"* ]]; then
    _mp_err "bpf-linker installed, but '$bin/bpf-linker --version' says '$have'"
    return 1
  fi
  _mp_log "bpf-linker: installed $have ($(_mp_since "$t0"))"
}

# `rustup toolchain link` refuses an existing name, so a stale link is removed first.
_mp_tc_link() {
  local log="$MP_RUN_DIR/ebpf-rustup.log" t0 want got
  t0=$(_mp_now)
  if ! command -v rustup >/dev/null; then
    _mp_err "rustup is not on PATH (needed for 'cargo +$MP_EBPF_TOOLCHAIN')"
    return 1
  fi
  want=$(/usr/bin/rustc -V 2>/dev/null)
  got=$(rustup run "$MP_EBPF_TOOLCHAIN" rustc -V 2>/dev/null)
  if [[ -n $want && $got == "$want" ]]; then
    _mp_log "rustup: toolchain $MP_EBPF_TOOLCHAIN already linked ($got) ($(_mp_since "$t0"))"
    return 0
  fi
  if rustup toolchain list 2>/dev/null | grep -q "^$MP_EBPF_TOOLCHAIN\b"; then
    rustup toolchain uninstall "$MP_EBPF_TOOLCHAIN" >>"$log" 2>&1
  fi
  if ! rustup toolchain link "$MP_EBPF_TOOLCHAIN" /usr >>"$log" 2>&1; then
    _mp_err "rustup toolchain link $MP_EBPF_TOOLCHAIN /usr failed"
    _mp_tail "$log"
    return 1
  fi
  got=$(rustup run "$MP_EBPF_TOOLCHAIN" rustc -V 2>/dev/null)
  if [[ $got != "$want" ]]; then
    _mp_err "toolchain $MP_EBPF_TOOLCHAIN runs '$got', expected '$want'"
    return 1
  fi
  _mp_log "rustup: linked toolchain $MP_EBPF_TOOLCHAIN -> /usr ($got) ($(_mp_since "$t0"))"
}

mp_ebpf_toolchain() {
  local -
  set +e
  # Messages and apt's log: this library's (see scripts/lib.sh).
  local _MP_TAG=ebpf-toolchain _MP_APT_LOG="$MP_RUN_DIR/ebpf-apt.log"
  local t0 major
  t0=$(_mp_now)
  _mp_must_be_root apt-get || return 1
  mkdir -p "$MP_RUN_DIR" || {
    _mp_err "cannot create $MP_RUN_DIR"
    return 1
  }
  _mp_apt_install rustc-web cargo-web rust-web-src || return 1
  major=$(_mp_tc_llvm_major)
  if [[ -z $major ]]; then
    _mp_err "cannot read the LLVM version from '/usr/bin/rustc -vV'"
    return 1
  fi
  if [[ ! -d /usr/lib/rustlib/src/rust/library/core ]]; then
    _mp_err "rust-web-src is installed but /usr/lib/rustlib/src/rust/library/core is missing"
    return 1
  fi
  _mp_apt_install "llvm-$major-dev" || return 1
  _mp_tc_bpftool || return 1
  _mp_tc_bpf_linker "$major" || return 1
  _mp_tc_link || return 1
  case ":$PATH:" in
  *":${CARGO_HOME:-$HOME/.cargo}/bin:"*) ;;
  *) export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH" ;;
  esac
  export MP_EBPF_TOOLCHAIN MP_EBPF_LLVM_MAJOR="$major"
  _mp_log "ready: $MP_EBPF_TOOLCHAIN ($(/usr/bin/rustc -V), LLVM $major) ($(_mp_since "$t0"))"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  mp_ebpf_toolchain
  exit
fi
