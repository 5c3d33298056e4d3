# shellcheck shell=bash
#
# scripts/lib.sh: helpers that scripts/test-env.sh and scripts/ebpf-toolchain.sh share (a
# library that both source; not a program): logging with durations, log tails, and installing
# Debian packages.
#
# Messages go to stderr as "[TAG] ...", where TAG is $_MP_TAG: a library's public function
# that is not test-env's sets it for its own steps (`local _MP_TAG=ebpf-toolchain`; bash's
# locals reach the functions it calls), and "test-env" is the default. apt's output goes to
# $_MP_APT_LOG (default $MP_RUN_DIR/apt.log), set the same way.
#
# Nothing here exits the caller's shell or depends on its `set -euo pipefail`: the functions
# return non-zero and say why.

MP_REPO="${MP_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
MP_RUN_DIR="${MP_RUN_DIR:-$MP_REPO/.test-run}"

_mp_log() { printf '[%s] %s\n' "${_MP_TAG:-test-env}" "$*" >&2; }
_mp_err() { printf '[%s] ERROR: %s\n' "${_MP_TAG:-test-env}" "$*" >&2; }

# Microseconds since the epoch (EPOCHREALTIME's separator depends on the locale).
_mp_now() { printf '%s' "${EPOCHREALTIME//[!0-9]/}"; }

# _mp_since START: seconds elapsed since START, e.g. "1.42s".
_mp_since() {
  local us=$(($(_mp_now) - $1))
  printf '%d.%02ds' $((us / 1000000)) $((us % 1000000 / 10000))
}

# _mp_tail FILE [LINES]: show the end of a log after a failure.
_mp_tail() {
  [[ -s $1 ]] || return 0
  printf '[%s] ---- last lines of %s ----\n' "${_MP_TAG:-test-env}" "$1" >&2
  tail -n "${2:-25}" "$1" >&2
  printf '[%s] ----\n' "${_MP_TAG:-test-env}" >&2
}

# _mp_must_be_root WHAT: root is needed for WHAT.
_mp_must_be_root() {
  if [[ $EUID -ne 0 ]]; then
    _mp_err "must run as root ($1)"
    return 1
  fi
}

_mp_pkg_installed() {
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# apt-get update, once per shell.
_mp_apt_update() {
  local log=${_MP_APT_LOG:-$MP_RUN_DIR/apt.log}
  [[ -z ${_MP_APT_UPDATED:-} ]] || return 0
  if ! apt-get -o DPkg::Lock::Timeout=300 update >>"$log" 2>&1; then
    _mp_err "apt-get update failed"
    _mp_tail "$log"
    return 1
  fi
  _MP_APT_UPDATED=1
}

# _mp_apt_install PKG...: install the packages that are not installed yet.
_mp_apt_install() {
  local log=${_MP_APT_LOG:-$MP_RUN_DIR/apt.log} missing=() p t0 rc created_policy=0
  t0=$(_mp_now)
  for p in "$@"; do
    _mp_pkg_installed "$p" || missing+=("$p")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    _mp_log "apt: $* already installed ($(_mp_since "$t0"))"
    return 0
  fi
  _mp_log "apt: installing ${missing[*]} (log: $log)"
  _mp_apt_update || return 1
  # Without systemd, docker.io's postinst would start dockerd through its init script, with
  # the default flags (ip_forward=1, masquerading: containers could reach off this machine).
  # A policy-rc.d that answers 101 forbids starting services during the install. Debian's
  # container images already ship one; create it only if it is missing, and remove it after.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# temporary, from metadataproxy scripts/lib.sh\nexit 101\n' \
      >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && created_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
    --no-install-recommends "${missing[@]}" >>"$log" 2>&1
  rc=$?
  if [[ $created_policy -eq 1 ]]; then
    rm -f /usr/sbin/policy-rc.d
  fi
  if [[ $rc -ne 0 ]]; then
    _mp_err "apt-get install ${missing[*]} failed"
    _mp_tail "$log"
    return 1
  fi
  _mp_log "apt: installed ${missing[*]} ($(_mp_since "$t0"))"
}
