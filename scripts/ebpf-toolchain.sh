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

MP_REPO="${MP_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
MP_RUN_DIR="${MP_RUN_DIR:-$MP_REPO/.test-run}"
MP_BPF_LINKER_VERSION="${MP_BPF_LINKER_VERSION:-0.13.0}"
MP_EBPF_TOOLCHAIN="${MP_EBPF_TOOLCHAIN:-debian-web}"

_mp_tc_log() { printf '[ebpf-toolchain] %s\n' "$*" >&2; }
_mp_tc_err() { printf '[ebpf-toolchain] ERROR: %s\n' "$*" >&2; }
_mp_tc_now() { printf '%s' "${EPOCHREALTIME//[!0-9]/}"; }
_mp_tc_since() {
  local us=$(($(_mp_tc_now) - $1))
  printf '%d.%02ds' $((us / 1000000)) $((us % 1000000 / 10000))
}
_mp_tc_tail() {
  [[ -s $1 ]] || return 0
  printf '[ebpf-toolchain] ---- last lines of %s ----\n' "$1" >&2
  tail -n 25 "$1" >&2
  printf '[ebpf-toolchain] ----\n' >&2
}
_mp_tc_installed() {
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

_mp_tc_apt_update() {
  local log=$1
  [[ -n ${_MP_TC_APT_UPDATED:-} ]] && return 0
  if ! apt-get -o DPkg::Lock::Timeout=300 update >>"$log" 2>&1; then
    _mp_tc_err "apt-get update failed"
    _mp_tc_tail "$log"
    return 1
  fi
  _MP_TC_APT_UPDATED=1
}

# _mp_tc_apt PKG...: install the packages that are not installed yet.
_mp_tc_apt() {
  local log="$MP_RUN_DIR/ebpf-apt.log" missing=() p t0
  t0=$(_mp_tc_now)
  for p in "$@"; do
    _mp_tc_installed "$p" || missing+=("$p")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    _mp_tc_log "apt: $* already installed ($(_mp_tc_since "$t0"))"
    return 0
  fi
  _mp_tc_apt_update "$log" || return 1
  if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
    --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
    _mp_tc_err "apt-get install ${missing[*]} failed"
    _mp_tc_tail "$log"
    return 1
  fi
  _mp_tc_log "apt: installed ${missing[*]} (log: $log) ($(_mp_tc_since "$t0"))"
}

# bpftool is optional: Debian 12 has it, other releases may not.
_mp_tc_bpftool() {
  local t0 candidate
  t0=$(_mp_tc_now)
  if _mp_tc_installed bpftool; then
    _mp_tc_log "apt: bpftool already installed ($(_mp_tc_since "$t0"))"
    return 0
  fi
  _mp_tc_apt_update "$MP_RUN_DIR/ebpf-apt.log" || return 1
  candidate=$(apt-cache policy bpftool 2>/dev/null | sed -n 's/^ *Candidate: *//p')
  if [[ -z $candidate || $candidate == '(none)' ]]; then
    _mp_tc_log "apt: no bpftool package in this distribution; skipped ($(_mp_tc_since "$t0"))"
    return 0
  fi
  _mp_tc_apt bpftool
}

# The LLVM major version that /usr/bin/rustc was built with ("LLVM version: 22.1.2" -> 22).
_mp_tc_llvm_major() {
  /usr/bin/rustc -vV 2>/dev/null | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p'
}

_mp_tc_bpf_linker() {
  local log="$MP_RUN_DIR/ebpf-bpf-linker.log" major=$1 t0 bin have
  t0=$(_mp_tc_now)
  bin="${CARGO_HOME:-$HOME/.cargo}/bin"
  have=$("$bin/bpf-linker" --version 2>/dev/null || bpf-linker --version 2>/dev/null)
  if [[ $have == *" $MP_BPF_LINKER_VERSION"* ]]; then
    _mp_tc_log "bpf-linker: $have already installed ($(_mp_tc_since "$t0"))"
    return 0
  fi
  if ! command -v cargo >/dev/null; then
    _mp_tc_err "cargo is not on PATH (rustup's cargo builds bpf-linker)"
    return 1
  fi
  _mp_tc_log "bpf-linker: building $MP_BPF_LINKER_VERSION against LLVM $major (log: $log)"
  # --force: replace another version of bpf-linker if one is installed.
  if ! LLVM_PREFIX="/usr/lib/llvm-$major" CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo install bpf-linker --version "$MP_BPF_LINKER_VERSION" --locked --force \
    --no-default-features --features "llvm-$major" >"$log" 2>&1; then
    _mp_tc_err "cargo install bpf-linker $MP_BPF_LINKER_VERSION (llvm-$major) failed"
    _mp_tc_tail "$log"
    return 1
  fi
  have=$("$bin/bpf-linker" --version 2>/dev/null)
  if [[ $have != *" $MP_BPF_LINKER_VERSION"* ]]; then
    _mp_tc_err "bpf-linker installed, but '$bin/bpf-linker --version' says '$have'"
    return 1
  fi
  _mp_tc_log "bpf-linker: installed $have ($(_mp_tc_since "$t0"))"
}

# `rustup toolchain link` refuses an existing name, so a stale link is removed first.
_mp_tc_link() {
  local log="$MP_RUN_DIR/ebpf-rustup.log" t0 want got
  t0=$(_mp_tc_now)
  if ! command -v rustup >/dev/null; then
    _mp_tc_err "rustup is not on PATH (needed for 'cargo +$MP_EBPF_TOOLCHAIN')"
    return 1
  fi
  want=$(/usr/bin/rustc -V 2>/dev/null)
  got=$(rustup run "$MP_EBPF_TOOLCHAIN" rustc -V 2>/dev/null)
  if [[ -n $want && $got == "$want" ]]; then
    _mp_tc_log "rustup: toolchain $MP_EBPF_TOOLCHAIN already linked ($got) ($(_mp_tc_since "$t0"))"
    return 0
  fi
  if rustup toolchain list 2>/dev/null | grep -q "^$MP_EBPF_TOOLCHAIN\b"; then
    rustup toolchain uninstall "$MP_EBPF_TOOLCHAIN" >>"$log" 2>&1
  fi
  if ! rustup toolchain link "$MP_EBPF_TOOLCHAIN" /usr >>"$log" 2>&1; then
    _mp_tc_err "rustup toolchain link $MP_EBPF_TOOLCHAIN /usr failed"
    _mp_tc_tail "$log"
    return 1
  fi
  got=$(rustup run "$MP_EBPF_TOOLCHAIN" rustc -V 2>/dev/null)
  if [[ $got != "$want" ]]; then
    _mp_tc_err "toolchain $MP_EBPF_TOOLCHAIN runs '$got', expected '$want'"
    return 1
  fi
  _mp_tc_log "rustup: linked toolchain $MP_EBPF_TOOLCHAIN -> /usr ($got) ($(_mp_tc_since "$t0"))"
}

mp_ebpf_toolchain() {
  local -
  set +e
  local t0 major
  t0=$(_mp_tc_now)
  if [[ $EUID -ne 0 ]]; then
    _mp_tc_err "must run as root (apt-get)"
    return 1
  fi
  mkdir -p "$MP_RUN_DIR" || {
    _mp_tc_err "cannot create $MP_RUN_DIR"
    return 1
  }
  _mp_tc_apt rustc-web cargo-web rust-web-src || return 1
  major=$(_mp_tc_llvm_major)
  if [[ -z $major ]]; then
    _mp_tc_err "cannot read the LLVM version from '/usr/bin/rustc -vV'"
    return 1
  fi
  if [[ ! -d /usr/lib/rustlib/src/rust/library/core ]]; then
    _mp_tc_err "rust-web-src is installed but /usr/lib/rustlib/src/rust/library/core is missing"
    return 1
  fi
  _mp_tc_apt "llvm-$major-dev" || return 1
  _mp_tc_bpftool || return 1
  _mp_tc_bpf_linker "$major" || return 1
  _mp_tc_link || return 1
  case ":$PATH:" in
  *":${CARGO_HOME:-$HOME/.cargo}/bin:"*) ;;
  *) export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH" ;;
  esac
  export MP_EBPF_TOOLCHAIN MP_EBPF_LLVM_MAJOR="$major"
  _mp_tc_log "ready: $MP_EBPF_TOOLCHAIN ($(/usr/bin/rustc -V), LLVM $major) ($(_mp_tc_since "$t0"))"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  mp_ebpf_toolchain
  exit
fi
