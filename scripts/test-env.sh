# shellcheck shell=bash
#
# scripts/test-env.sh: test environment for metadataproxy (a library, not a program).
#
# Sourced by scripts/test.sh. Brings up, on a bare Debian 12 machine as root, the real
# components the tests use (see shared/design/test-environment.md):
#
#   mp_install_deps         apt packages (docker.io, busybox-static, iptables, ...), moto venv
#   mp_install_sdk_clients  the AWS SDKs that tests/tests/sdk_clients.rs runs as containers'
#                           programs: Go v1 and v2 and Ruby from Debian, JavaScript v3 from npm
#                           (botocore comes with the moto venv)
#   mp_install_guard        iptables guard: nothing may reach 169.254.0.0/16 (the real metadata
#                           service is off this machine); containers may not leave their bridge
#   mp_start_dockerd        reuse a daemon on /var/run/docker.sock, or start our own
#   mp_start_moto           reuse or start moto_server (STS/IAM emulator) on 127.0.0.1:$MP_MOTO_PORT
#   mp_build_test_image     metadataproxy-test/busybox:latest from the host's static busybox
#   mp_install_podman       podman and netavark (tests/tests/podman.rs)
#   mp_start_podman         `podman system service` on a socket of our own under $MP_RUN_DIR,
#                           the test image imported into it, a forwarding guard for its bridges
#   mp_export_test_env      MP_TEST_*, DOCKER_HOST and safe AWS_* variables for the tests
#   mp_remove_test_objects  remove containers/networks/volumes named mp-test-*
#   mp_remove_guard         remove exactly the guard rules that we added
#   mp_cleanup              undo everything we started or added; safe in an EXIT trap, repeatable
#
# Typical use:
#   source scripts/test-env.sh
#   trap mp_cleanup EXIT
#   mp_install_deps && mp_install_guard && mp_start_dockerd && mp_start_moto \
#     && mp_build_test_image && mp_export_test_env || exit 1
#
# Order matters for safety: mp_install_guard comes before mp_start_dockerd and mp_start_moto,
# so that the guard is in place before any test traffic (mp_start_dockerd completes it with the
# DOCKER-USER rules once the daemon has made that chain).
#
# Errors: every function returns non-zero with an "[test-env] ERROR:" line on failure and
# never exits the caller's shell. Each public function turns errexit off for its own body
# (`local -; set +e`) and checks its commands itself, so it behaves the same whether or not
# the caller runs under `set -euo pipefail`. Long output goes to log files in $MP_RUN_DIR;
# the terminal (stderr) gets one line per step, with its duration.
#
# Ownership is recorded in files under $MP_RUN_DIR/state (not only in shell variables), so
# mp_cleanup works from any shell, and a run that was killed before its cleanup leaves
# behind a record that the next run adopts and cleans up: what we started, we stop; what was
# there before us (a docker daemon, a moto, an identical iptables rule), we leave alone.

# ---------------------------------------------------------------------------------------------
# Settings (may be set by the caller before sourcing)

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" # MP_REPO, MP_RUN_DIR and the shared helpers
MP_VENV="${MP_VENV:-$MP_REPO/.venv-moto}"
MP_MOTO_PORT="${MP_MOTO_PORT:-5000}"
MP_TEST_IMAGE="${MP_TEST_IMAGE:-metadataproxy-test/busybox:latest}"
MP_DOCKER_SOCK="${MP_DOCKER_SOCK:-/var/run/docker.sock}"
# Empty: overlay2, falling back to vfs if overlay2 does not work on this filesystem.
MP_DOCKER_STORAGE_DRIVER="${MP_DOCKER_STORAGE_DRIVER:-}"
# Pinned so that every machine tests against the same emulator; change here to upgrade.
# botocore (with its boto3) is pinned too: it is also one of the SDK clients that
# tests/tests/sdk_clients.rs runs, from this venv.
_MP_MOTO_PIP_DEFAULT="moto==5.2.5 flask==3.1.3 flask-cors==6.0.5 boto3==1.44.8 botocore==1.44.8"
MP_MOTO_PIP_SPEC="${MP_MOTO_PIP_SPEC:-$_MP_MOTO_PIP_DEFAULT}"
# 1: the OUTPUT guard spares traffic to the loopback interface (`! -o lo`), for tests that put
# a catcher on 169.254.169.254/32 on lo and need a host process to reach it. Traffic that
# would leave through any other interface is still rejected.
MP_GUARD_ALLOW_LOOPBACK="${MP_GUARD_ALLOW_LOOPBACK:-0}"
# Prefix of every docker object the tests create.
MP_TEST_PREFIX="${MP_TEST_PREFIX:-mp-test-}"
# Where the JavaScript SDK is installed (npm ci of tests/sdk-clients/js), reused while the
# lock file is the same.
MP_SDK_JS_DIR="${MP_SDK_JS_DIR:-$MP_RUN_DIR/sdk-js}"
# Debian's GOPATH: the Go SDKs' -dev packages put their sources there, and the tests build
# their Go clients against it with GO111MODULE=off (no module proxy is reachable).
MP_SDK_GOPATH="${MP_SDK_GOPATH:-/usr/share/gocode}"

_MP_APT_PACKAGES=(docker.io busybox-static iptables nftables iproute2 ca-certificates curl prometheus)
_MP_SDK_APT_PACKAGES=(golang-go golang-github-aws-aws-sdk-go-dev golang-github-aws-aws-sdk-go-v2-dev
  ruby-aws-sdk-core)
# The JavaScript SDK v3 supports these Node.js versions and later (its packages' "engines").
_MP_SDK_NODE_MAJOR=20
# Applets the tests rely on; the image gets every applet busybox has, these must be among them.
_MP_REQUIRED_APPLETS=(sh wget nc sleep cat timeout ip arping ifconfig grep sed env)
# Bump when the image recipe changes, so that existing images are rebuilt.
_MP_IMAGE_RECIPE=1
_MP_IMAGE_LABEL=org.metadataproxy.test.busybox

# ---------------------------------------------------------------------------------------------
# Helpers (and those of scripts/lib.sh)

_mp_state() { printf '%s/state/%s' "$MP_RUN_DIR" "$1"; }

_mp_require_root() { _mp_must_be_root "docker daemon, iptables, apt-get"; }

_mp_prepare_dirs() {
  mkdir -p "$MP_RUN_DIR/state" || {
    _mp_err "cannot create run directory $MP_RUN_DIR"
    return 1
  }
}

# _mp_alive PID: the process exists and is not a zombie.
_mp_alive() {
  local pid=$1 stat
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) } # the field after "(comm) " is the state
  [[ ${stat:0:1} != Z ]]
}

# _mp_pids_by_comm NAME: pids of live processes whose comm is NAME (procps may be absent).
_mp_pids_by_comm() {
  local f pid
  for f in /proc/[0-9]*/comm; do
    [[ $(cat "$f" 2>/dev/null) == "$1" ]] || continue
    pid=${f#/proc/}
    pid=${pid%/comm}
    _mp_alive "$pid" && printf '%s\n' "$pid"
  done
  return 0
}

# _mp_cmdline_has PID WORD: the process's command line contains WORD.
_mp_cmdline_has() {
  local args
  args=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ $args == *"$2"* ]]
}

# _mp_stop_pid PID NAME SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL.
_mp_stop_pid() {
  local pid=$1 name=$2 secs=$3 t0 i
  _mp_alive "$pid" || return 0
  t0=$(_mp_now)
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    _mp_alive "$pid" || {
      _mp_log "stopped $name (pid $pid) ($(_mp_since "$t0"))"
      return 0
    }
    sleep 0.1
  done
  _mp_log "WARNING: $name (pid $pid) did not stop within ${secs}s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    _mp_alive "$pid" || return 0
    sleep 0.1
  done
  _mp_err "$name (pid $pid) survived SIGKILL"
  return 1
}

# _mp_spawn LOG CMD...: start CMD in its own session (so that a Ctrl-C aimed at the test run
# does not kill it before mp_cleanup has tidied up), detached from our stdin/stdout (so that
# a pipe such as `scripts/test.sh | tee` does not wait for it). Prints the pid of $!; callers
# confirm the real pid (with job control on, setsid forks and $! is not the daemon).
_mp_spawn() {
  local log=$1
  shift
  setsid "$@" </dev/null >"$log" 2>&1 &
  printf '%s' "$!"
}

_mp_docker() { docker -H "unix://$MP_DOCKER_SOCK" "$@"; }

_mp_docker_ping() {
  [[ -S $MP_DOCKER_SOCK ]] &&
    curl -fsS --max-time 3 --unix-socket "$MP_DOCKER_SOCK" http://docker/_ping >/dev/null 2>&1
}

_mp_moto_url() { printf 'http://127.0.0.1:%s' "$MP_MOTO_PORT"; }

# moto answers GET /moto-api/data.json with a JSON object; other servers do not.
_mp_moto_ping() {
  local body
  body=$(curl -fsS --max-time 3 "$(_mp_moto_url)/moto-api/data.json" 2>/dev/null) || return 1
  [[ $body == '{'* ]]
}

# pid of the process listening on 127.0.0.1:PORT (or any address), empty if none.
_mp_listener_pid() {
  ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1
}

# ---------------------------------------------------------------------------------------------
# 1. Dependencies

# The venv is reusable when it imports moto's server and was made for the same pip spec.
_mp_venv_ok() {
  [[ -x $MP_VENV/bin/moto_server && -x $MP_VENV/bin/python ]] &&
    [[ $(cat "$MP_VENV/.mp-pip-spec" 2>/dev/null) == "$MP_MOTO_PIP_SPEC" ]] &&
    "$MP_VENV/bin/python" -c 'import moto, moto.server, flask, flask_cors' >/dev/null 2>&1
}

_mp_make_venv() {
  local log="$MP_RUN_DIR/venv.log" py
  # Prefer the python3 on PATH (pyenv's here, which has ensurepip). Debian's own python3
  # needs python3-venv for ensurepip; install it only when venv creation fails for lack of it.
  py=$(command -v python3 || true)
  if [[ -n $py ]] && "$py" -m venv --clear "$MP_VENV" >>"$log" 2>&1; then
    return 0
  fi
  _mp_log "venv: '${py:-python3} -m venv' failed; installing Debian's python3-venv"
  _mp_apt_install python3 python3-venv || return 1
  if /usr/bin/python3 -m venv --clear "$MP_VENV" >>"$log" 2>&1; then
    return 0
  fi
  _mp_err "cannot create a python venv at $MP_VENV"
  _mp_tail "$log"
  return 1
}

_mp_install_moto_venv() {
  local log="$MP_RUN_DIR/venv.log" t0 spec
  t0=$(_mp_now)
  if _mp_venv_ok; then
    _mp_log "venv: reusing $MP_VENV ($MP_MOTO_PIP_SPEC) ($(_mp_since "$t0"))"
    return 0
  fi
  _mp_log "venv: creating $MP_VENV with $MP_MOTO_PIP_SPEC (log: $log)"
  : >"$log"
  _mp_make_venv || return 1
  read -ra spec <<<"$MP_MOTO_PIP_SPEC"
  if ! "$MP_VENV/bin/python" -m pip install --disable-pip-version-check "${spec[@]}" \
    >>"$log" 2>&1; then
    _mp_err "pip install $MP_MOTO_PIP_SPEC failed"
    _mp_tail "$log"
    return 1
  fi
  printf '%s\n' "$MP_MOTO_PIP_SPEC" >"$MP_VENV/.mp-pip-spec"
  if ! _mp_venv_ok; then
    _mp_err "the venv at $MP_VENV still cannot import moto.server after pip install"
    _mp_tail "$log"
    return 1
  fi
  _mp_log "venv: ready ($(_mp_since "$t0"))"
}

mp_install_deps() {
  local -
  set +e # see "Errors" above
  local t0
  t0=$(_mp_now)
  _mp_require_root && _mp_prepare_dirs || return 1
  _mp_apt_install "${_MP_APT_PACKAGES[@]}" || return 1
  _mp_install_moto_venv || return 1
  _mp_log "install-deps: done ($(_mp_since "$t0"))"
}

# Node.js for the JavaScript SDK: the machine's own if it is recent enough, else Debian's.
_mp_install_node() {
  local major
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    _mp_apt_install nodejs npm || return 1
  fi
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null)
  if [[ ! $major =~ ^[0-9]+$ ]] || ((major < _MP_SDK_NODE_MAJOR)); then
    _mp_err "node $(node --version 2>/dev/null) is too old for the JavaScript SDK v3" \
      "(it needs Node.js >= $_MP_SDK_NODE_MAJOR); install a newer nodejs package"
    return 1
  fi
}

_mp_sdk_js_ok() {
  local lock=$MP_REPO/tests/sdk-clients/js/package-lock.json
  [[ -d $MP_SDK_JS_DIR/node_modules ]] &&
    cmp -s "$lock" "$MP_SDK_JS_DIR/package-lock.json" &&
    NODE_PATH="$MP_SDK_JS_DIR/node_modules" node -e \
      'require("@aws-sdk/credential-providers"); require("@aws-sdk/client-sts")' >/dev/null 2>&1
}

# npm ci of tests/sdk-clients/js (its lock file pins every package) into $MP_SDK_JS_DIR.
_mp_install_sdk_js() {
  local log="$MP_RUN_DIR/sdk-js.log" src="$MP_REPO/tests/sdk-clients/js" t0
  t0=$(_mp_now)
  if _mp_sdk_js_ok; then
    _mp_log "sdk-js: reusing $MP_SDK_JS_DIR ($(_mp_since "$t0"))"
    return 0
  fi
  _mp_log "sdk-js: npm ci into $MP_SDK_JS_DIR (log: $log)"
  rm -rf "$MP_SDK_JS_DIR"
  if ! mkdir -p "$MP_SDK_JS_DIR" ||
    ! cp "$src/package.json" "$src/package-lock.json" "$MP_SDK_JS_DIR/"; then
    _mp_err "cannot prepare $MP_SDK_JS_DIR"
    return 1
  fi
  if ! (cd "$MP_SDK_JS_DIR" && npm ci --no-audit --no-fund) >"$log" 2>&1; then
    _mp_err "npm ci of tests/sdk-clients/js failed"
    _mp_tail "$log"
    return 1
  fi
  if ! _mp_sdk_js_ok; then
    _mp_err "the JavaScript SDK in $MP_SDK_JS_DIR cannot be loaded after npm ci"
    _mp_tail "$log"
    return 1
  fi
  _mp_log "sdk-js: ready ($(_mp_since "$t0"))"
}

# _mp_sdk_version NAME CMD...: "NAME VERSION" from CMD's output; an error naming NAME if CMD
# fails (the SDK is installed but does not load).
_mp_sdk_version() {
  local name=$1 v
  shift
  if ! v=$("$@" 2>>"$MP_RUN_DIR/sdk-versions.log") || [[ -z $v ]]; then
    _mp_err "$name is installed but does not load (log: $MP_RUN_DIR/sdk-versions.log)"
    _mp_tail "$MP_RUN_DIR/sdk-versions.log"
    return 1
  fi
  printf '%s %s' "$name" "$v"
}

# The SDKs that tests/tests/sdk_clients.rs runs (after mp_install_deps, whose venv has
# botocore); logs each one's version.
mp_install_sdk_clients() {
  local -
  set +e # see "Errors" above
  local t0 v versions=()
  t0=$(_mp_now)
  _mp_require_root && _mp_prepare_dirs || return 1
  _mp_apt_install "${_MP_SDK_APT_PACKAGES[@]}" || return 1
  _mp_install_node || return 1
  _mp_install_sdk_js || return 1
  : >"$MP_RUN_DIR/sdk-versions.log"
  v=$(_mp_sdk_version botocore "$MP_VENV/bin/python" -c \
    'import botocore; print(botocore.__version__)') || return 1
  versions+=("$v")
  v=$(_mp_sdk_version "JavaScript v3" env NODE_PATH="$MP_SDK_JS_DIR/node_modules" node -p \
    'require("@aws-sdk/credential-providers/package.json").version') || return 1
  versions+=("$v")
  v=$(_mp_sdk_version "Go v1" sed -n 's/^const SDKVersion = "\(.*\)"$/\1/p' \
    "$MP_SDK_GOPATH/src/github.com/aws/aws-sdk-go/aws/version.go") || return 1
  versions+=("$v")
  v=$(_mp_sdk_version "Go v2" sed -n 's/^const goModuleVersion = "\(.*\)"$/\1/p' \
    "$MP_SDK_GOPATH/src/github.com/aws/aws-sdk-go-v2/aws/go_module_metadata.go") || return 1
  versions+=("$v")
  v=$(_mp_sdk_version "Ruby aws-sdk-core" ruby -e \
    'require "aws-sdk-core"; print Aws::CORE_GEM_VERSION') || return 1
  versions+=("$v")
  v=$(_mp_sdk_version toolchain go env GOVERSION) || return 1
  versions+=("$v")
  _mp_log "sdk-clients: ${versions[0]}, ${versions[1]}, ${versions[2]}, ${versions[3]}," \
    "${versions[4]}, built with ${versions[5]} ($(_mp_since "$t0"))"
}

# ---------------------------------------------------------------------------------------------
# 4. Safety guard (before 2. and 3.: it must be in place before any test traffic)
#
# Rules are kept in $MP_RUN_DIR/state/guard.rules, one a line: "BINARY TABLE CHAIN SPEC...".
# A rule is added only when `-C` says it is absent, and only rules we added are removed.

_mp_guard_output_rule() {
  if [[ $MP_GUARD_ALLOW_LOOPBACK == 1 ]]; then
    printf 'iptables filter OUTPUT -d 169.254.0.0/16 ! -o lo -j REJECT'
  else
    printf 'iptables filter OUTPUT -d 169.254.0.0/16 -j REJECT'
  fi
}

# The IPv6 address of the metadata service; the default IPv6 route here leads off the machine.
_MP_GUARD_RULE_V6='ip6tables filter OUTPUT -d fd00:ec2::254/128 -j REJECT'
_MP_GUARD_DOCKER_RULES=(
  'iptables filter DOCKER-USER -i docker0 ! -o docker0 -j DROP'
  'iptables filter DOCKER-USER -i br-+ ! -o br-+ -j DROP'
)

# Docker (20.10) runs whatever `iptables` is on PATH, and so do we: the same backend. Make sure
# that backend works on this kernel; if iptables-nft cannot talk to the kernel but the legacy
# one can, switch the Debian alternative (dockerd must then be started after this).
_mp_check_iptables() {
  local backend
  if ! command -v iptables >/dev/null; then
    _mp_err "iptables is not installed (run mp_install_deps first)"
    return 1
  fi
  backend=$(iptables -V 2>/dev/null)
  if ! iptables -w -t filter -n -L OUTPUT >/dev/null 2>&1; then
    if [[ $backend == *nf_tables* ]] && command -v iptables-legacy >/dev/null &&
      iptables-legacy -w -n -L OUTPUT >/dev/null 2>&1; then
      _mp_log "iptables: nf_tables backend unusable on this kernel; switching to iptables-legacy"
      update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null &&
        update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null || return 1
      backend=$(iptables -V 2>/dev/null)
    else
      _mp_err "iptables ($backend) cannot list the filter table; is this kernel missing netfilter?"
      return 1
    fi
  fi
  if [[ -z ${_MP_IPTABLES_REPORTED:-} ]]; then
    _mp_log "iptables: using $backend ($(readlink -f "$(command -v iptables)"))"
    _MP_IPTABLES_REPORTED=1
  fi
}

_mp_rule_present() {
  local bin=$1 table=$2 chain=$3
  shift 3
  "$bin" -w -t "$table" -C "$chain" "$@" >/dev/null 2>&1
}

# _mp_rule_add "BINARY TABLE CHAIN SPEC...": insert the rule unless it is there already.
_mp_rule_add() {
  local line=$1 state words
  state=$(_mp_state guard.rules)
  read -ra words <<<"$line"
  if _mp_rule_present "${words[@]}"; then
    if ! grep -qxF -- "$line" "$state" 2>/dev/null && [[ ${_MP_NOTED_RULES:-} != *"|$line|"* ]]; then
      _mp_log "guard: rule already present, not ours, leaving it: $line"
      _MP_NOTED_RULES="${_MP_NOTED_RULES:-}|$line|"
    fi
    return 0
  fi
  local bin=${words[0]} table=${words[1]} chain=${words[2]}
  if ! "$bin" -w -t "$table" -I "$chain" "${words[@]:3}"; then
    _mp_err "cannot add guard rule: $line"
    return 1
  fi
  grep -qxF -- "$line" "$state" 2>/dev/null || printf '%s\n' "$line" >>"$state"
  _mp_log "guard: added: $line"
}

_mp_docker_user_chain_exists() {
  iptables -w -t filter -n -L DOCKER-USER >/dev/null 2>&1
}

# Installs the OUTPUT guard at once, and the DOCKER-USER rules when that chain exists. Call it
# before mp_start_dockerd: mp_start_dockerd completes the guard once the daemon has made the
# chain. Calling it again after mp_start_dockerd is harmless.
mp_install_guard() {
  local -
  set +e # see "Errors" above
  local t0 r
  t0=$(_mp_now)
  _mp_require_root && _mp_prepare_dirs && _mp_check_iptables || return 1
  : >"$(_mp_state guard.wanted)"
  _mp_rule_add "$(_mp_guard_output_rule)" || return 1
  if command -v ip6tables >/dev/null && ip6tables -w -n -L OUTPUT >/dev/null 2>&1; then
    _mp_rule_add "$_MP_GUARD_RULE_V6" || return 1
  else
    _mp_log "guard: WARNING: ip6tables unusable, no IPv6 guard for fd00:ec2::254"
  fi
  if _mp_docker_user_chain_exists; then
    for r in "${_MP_GUARD_DOCKER_RULES[@]}"; do
      _mp_rule_add "$r" || return 1
    done
  elif _mp_docker_ping; then
    _mp_err "a docker daemon answers, but the DOCKER-USER chain is not visible to" \
      "$(iptables -V): does dockerd use the other iptables backend, or --iptables=false?"
    return 1
  else
    _mp_log "guard: DOCKER-USER rules will be added once dockerd is up"
  fi
  _mp_log "guard: in place ($(_mp_since "$t0"))"
}

# Deletes, in reverse order, exactly the rules that we added.
mp_remove_guard() {
  local -
  set +e # see "Errors" above
  local state line words lines=() i
  state=$(_mp_state guard.rules)
  rm -f "$(_mp_state guard.wanted)"
  [[ -s $state ]] || {
    rm -f "$state"
    return 0
  }
  mapfile -t lines <"$state"
  for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
    line=${lines[i]}
    [[ -n $line ]] || continue
    read -ra words <<<"$line"
    if _mp_rule_present "${words[@]}"; then
      if "${words[0]}" -w -t "${words[1]}" -D "${words[2]}" "${words[@]:3}"; then
        _mp_log "guard: removed: $line"
      else
        _mp_err "cannot remove guard rule: $line"
        continue # keep it in the state file
      fi
    fi
    # Drop the line from the state file as soon as it is handled, so that an interrupted
    # removal can be resumed.
    grep -vxF -- "$line" "$state" >"$state.tmp" || true # exit 1 when no line is left
    mv -f "$state.tmp" "$state"
  done
  [[ -s $state ]] || rm -f "$state"
}

# ---------------------------------------------------------------------------------------------
# 2. Docker daemon

# pid of the dockerd that we started (in this run or in a killed earlier one), if it still runs.
_mp_owned_dockerd_pid() {
  local pid
  pid=$(cat "$(_mp_state dockerd.pid)" 2>/dev/null) || return 1
  if _mp_alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]]; then
    printf '%s' "$pid"
    return 0
  fi
  rm -f "$(_mp_state dockerd.pid)"
  return 1
}

# _mp_launch_dockerd DRIVER: start dockerd, wait until /_ping answers. Returns 2 if the daemon
# died with a storage-driver error (the caller falls back to vfs), 1 on other failures.
_mp_launch_dockerd() {
  local driver=$1 log="$MP_RUN_DIR/dockerd.log" pid i
  # --ip-forward=false / --ip-masq=false: containers reach the host and each other, nothing
  # beyond. --live-restore: containers survive a daemon restart (restart tests need it).
  _mp_spawn "$log" dockerd --ip-forward=false --ip-masq=false --storage-driver="$driver" \
    --live-restore -H "unix://$MP_DOCKER_SOCK" >/dev/null
  for ((i = 0; i < 300; i++)); do
    if _mp_docker_ping; then
      # dockerd writes its own pid file; trust it over $! (see _mp_spawn).
      pid=$(cat /var/run/docker.pid 2>/dev/null || true)
      if ! _mp_alive "$pid"; then
        _mp_err "dockerd answers but /var/run/docker.pid names no live process"
        return 1
      fi
      printf '%s\n' "$pid" >"$(_mp_state dockerd.pid)"
      return 0
    fi
    # Died early? (no dockerd left, and its socket does not answer)
    if ((i % 5 == 4)) && [[ -z $(_mp_pids_by_comm dockerd) ]]; then
      if grep -qiE 'graphdriver|storage.driver|overlay' "$log"; then
        return 2
      fi
      _mp_err "dockerd exited during startup"
      _mp_tail "$log"
      return 1
    fi
    sleep 0.1
  done
  _mp_err "dockerd did not answer on $MP_DOCKER_SOCK within 30 s"
  _mp_tail "$log"
  # It is ours: do not leave a half-started daemon behind.
  pid=$(_mp_pids_by_comm dockerd | head -n 1)
  [[ -z $pid ]] || _mp_stop_pid "$pid" dockerd 15
  return 1
}

mp_start_dockerd() {
  local -
  set +e # see "Errors" above
  local t0 pid rc driver
  t0=$(_mp_now)
  _mp_require_root && _mp_prepare_dirs || return 1
  if pid=$(_mp_owned_dockerd_pid) && _mp_docker_ping; then
    _mp_log "dockerd: already running, started by us (pid $pid)"
  elif _mp_docker_ping; then
    rm -f "$(_mp_state dockerd.pid)"
    _mp_log "dockerd: reusing the daemon on $MP_DOCKER_SOCK (not ours: it will not be stopped)"
  else
    pid=$(_mp_pids_by_comm dockerd | head -n 1)
    if [[ -n $pid ]]; then
      _mp_err "a dockerd (pid $pid) runs but does not answer on $MP_DOCKER_SOCK;" \
        "stop it or point MP_DOCKER_SOCK at its socket"
      return 1
    fi
    if ! command -v dockerd >/dev/null; then
      _mp_err "dockerd is not installed (run mp_install_deps first)"
      return 1
    fi
    # Docker creates its chains in whatever backend `iptables` is; check it works first.
    _mp_check_iptables || return 1
    driver=${MP_DOCKER_STORAGE_DRIVER:-overlay2}
    _mp_launch_dockerd "$driver"
    rc=$?
    if [[ $rc -eq 2 && -z $MP_DOCKER_STORAGE_DRIVER ]]; then
      _mp_log "dockerd: storage driver overlay2 does not work here; falling back to vfs (slow)"
      cp -f "$MP_RUN_DIR/dockerd.log" "$MP_RUN_DIR/dockerd-overlay2-failure.log"
      driver=vfs
      _mp_launch_dockerd vfs
      rc=$?
    fi
    if [[ $rc -eq 2 ]]; then
      _mp_err "dockerd failed to start with storage driver $driver"
      _mp_tail "$MP_RUN_DIR/dockerd.log"
      return 1
    fi
    [[ $rc -eq 0 ]] || return 1
    _mp_log "dockerd: started (pid $(cat "$(_mp_state dockerd.pid)"), storage $driver," \
      "log: $MP_RUN_DIR/dockerd.log) ($(_mp_since "$t0"))"
  fi
  # Docker made its chains with the `iptables` on its PATH; they must be visible to ours.
  if ! _mp_docker_user_chain_exists; then
    _mp_err "dockerd answers but the DOCKER-USER chain is not visible to $(iptables -V 2>&1):" \
      "dockerd uses the other iptables backend (or runs with --iptables=false)"
    return 1
  fi
  if [[ -e $(_mp_state guard.wanted) ]]; then
    mp_install_guard || return 1
  fi
}

# Removes containers, networks and volumes whose name starts with $MP_TEST_PREFIX.
mp_remove_test_objects() {
  local -
  set +e # see "Errors" above
  local ids name id
  _mp_docker_ping || return 0
  ids=()
  while read -r id name; do
    [[ $name == "$MP_TEST_PREFIX"* ]] && ids+=("$id")
  done < <(_mp_docker ps -a --format '{{.ID}} {{.Names}}' 2>/dev/null)
  if [[ ${#ids[@]} -gt 0 ]]; then
    _mp_docker rm -f -v "${ids[@]}" >/dev/null &&
      _mp_log "docker: removed ${#ids[@]} ${MP_TEST_PREFIX}* container(s)"
  fi
  ids=()
  while read -r id name; do
    [[ $name == "$MP_TEST_PREFIX"* ]] && ids+=("$id")
  done < <(_mp_docker network ls --format '{{.ID}} {{.Name}}' 2>/dev/null)
  if [[ ${#ids[@]} -gt 0 ]]; then
    _mp_docker network rm "${ids[@]}" >/dev/null &&
      _mp_log "docker: removed ${#ids[@]} ${MP_TEST_PREFIX}* network(s)"
  fi
  ids=()
  while read -r name; do
    [[ $name == "$MP_TEST_PREFIX"* ]] && ids+=("$name")
  done < <(_mp_docker volume ls --format '{{.Name}}' 2>/dev/null)
  if [[ ${#ids[@]} -gt 0 ]]; then
    _mp_docker volume rm "${ids[@]}" >/dev/null &&
      _mp_log "docker: removed ${#ids[@]} ${MP_TEST_PREFIX}* volume(s)"
  fi
  return 0
}

_mp_stop_dockerd() {
  local pid running containerd_pid left
  if ! pid=$(_mp_owned_dockerd_pid); then
    # Not our daemon: leave everything on it, but say what the tests left behind.
    if _mp_docker_ping; then
      left=$({
        _mp_docker ps -a --format '{{.Names}}'
        _mp_docker network ls --format '{{.Name}}'
        _mp_docker volume ls --format '{{.Name}}'
      } 2>/dev/null | grep -c "^$MP_TEST_PREFIX")
      if [[ $left -gt 0 ]]; then
        _mp_log "docker: WARNING: $left ${MP_TEST_PREFIX}* object(s) left on the daemon we did" \
          "not start (mp_remove_test_objects removes them)"
      fi
    fi
    return 0
  fi
  mp_remove_test_objects
  # With --live-restore, containers outlive the daemon. Any still running on the daemon we
  # started were started during our run: stop them, or their processes would stay behind.
  running=$(_mp_docker ps -q 2>/dev/null || true)
  if [[ -n $running ]]; then
    # shellcheck disable=SC2086 # one id per word
    _mp_docker stop -t 2 $running >/dev/null 2>&1 &&
      _mp_log "docker: stopped $(wc -w <<<"$running") other running container(s)"
  fi
  # dockerd's own containerd (started by it, since no system containerd runs here).
  containerd_pid=$(cat /var/run/docker/containerd/containerd.pid 2>/dev/null || true)
  _mp_stop_pid "$pid" dockerd 15
  if _mp_alive "$containerd_pid" && _mp_cmdline_has "$containerd_pid" /var/run/docker/containerd; then
    _mp_stop_pid "$containerd_pid" "dockerd's containerd" 10
  fi
  rm -f "$(_mp_state dockerd.pid)"
}

# ---------------------------------------------------------------------------------------------
# 3. moto (STS and IAM emulator)

_mp_owned_moto_pid() {
  local pid
  pid=$(cat "$(_mp_state moto.pid)" 2>/dev/null) || return 1
  if _mp_alive "$pid" && _mp_cmdline_has "$pid" moto_server; then
    printf '%s' "$pid"
    return 0
  fi
  rm -f "$(_mp_state moto.pid)"
  return 1
}

mp_start_moto() {
  local -
  set +e # see "Errors" above
  local t0 pid spawned log="$MP_RUN_DIR/moto.log" i
  t0=$(_mp_now)
  _mp_prepare_dirs || return 1
  if pid=$(_mp_owned_moto_pid) && _mp_moto_ping; then
    _mp_log "moto: already running, started by us (pid $pid, $(_mp_moto_url))"
    return 0
  fi
  if _mp_moto_ping; then
    rm -f "$(_mp_state moto.pid)"
    _mp_log "moto: reusing the moto on $(_mp_moto_url) (not ours: it will not be stopped)"
    return 0
  fi
  pid=$(_mp_listener_pid "$MP_MOTO_PORT")
  if [[ -n $pid ]]; then
    _mp_err "port $MP_MOTO_PORT is taken by pid $pid" \
      "($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null))," \
      "which is not moto; set MP_MOTO_PORT to a free port"
    return 1
  fi
  if [[ ! -x $MP_VENV/bin/moto_server ]]; then
    _mp_err "$MP_VENV/bin/moto_server is missing (run mp_install_deps first)"
    return 1
  fi
  spawned=$(_mp_spawn "$log" "$MP_VENV/bin/moto_server" -H 127.0.0.1 -p "$MP_MOTO_PORT")
  for ((i = 0; i < 300; i++)); do
    if _mp_moto_ping; then
      # The listener is the real process, whatever setsid did.
      pid=$(_mp_listener_pid "$MP_MOTO_PORT")
      printf '%s\n' "${pid:-$spawned}" >"$(_mp_state moto.pid)"
      _mp_log "moto: started (pid ${pid:-$spawned}, $(_mp_moto_url), log: $log) ($(_mp_since "$t0"))"
      return 0
    fi
    if ((i % 5 == 4)) && ! _mp_alive "$spawned" && [[ -z $(_mp_listener_pid "$MP_MOTO_PORT") ]]; then
      _mp_err "moto_server exited during startup"
      _mp_tail "$log"
      return 1
    fi
    sleep 0.1
  done
  _mp_err "moto_server did not answer on $(_mp_moto_url) within 30 s"
  _mp_tail "$log"
  pid=$(_mp_listener_pid "$MP_MOTO_PORT")
  _mp_stop_pid "${pid:-$spawned}" moto_server 5
  return 1
}

_mp_stop_moto() {
  local pid
  pid=$(_mp_owned_moto_pid) || return 0
  _mp_stop_pid "$pid" moto_server 5
  rm -f "$(_mp_state moto.pid)"
}

# ---------------------------------------------------------------------------------------------
# 5. Test image, without a registry

mp_build_test_image() {
  local -
  set +e # see "Errors" above
  local t0 bb=/bin/busybox sum want have tmp applets a log="$MP_RUN_DIR/image.log"
  t0=$(_mp_now)
  _mp_prepare_dirs || return 1
  if ! _mp_docker_ping; then
    _mp_err "no docker daemon answers on $MP_DOCKER_SOCK (run mp_start_dockerd first)"
    return 1
  fi
  # busybox-static's binary; a dynamically linked one would not run in an empty image.
  if [[ ! -x $bb ]] || ! _mp_pkg_installed busybox-static; then
    _mp_err "$bb from busybox-static is missing (run mp_install_deps first)"
    return 1
  fi
  sum=$(sha256sum "$bb" | cut -d ' ' -f 1) || return 1
  want="$sum-r$_MP_IMAGE_RECIPE"
  have=$(_mp_docker image inspect -f "{{ index .Config.Labels \"$_MP_IMAGE_LABEL\" }}" \
    "$MP_TEST_IMAGE" 2>/dev/null || true)
  if [[ $have == "$want" ]]; then
    _mp_log "image: $MP_TEST_IMAGE is up to date ($(_mp_since "$t0"))"
    return 0
  fi
  applets=$("$bb" --list) || return 1
  for a in "${_MP_REQUIRED_APPLETS[@]}"; do
    if ! grep -qxF "$a" <<<"$applets"; then
      _mp_err "$bb has no '$a' applet, which the tests need"
      return 1
    fi
  done
  tmp=$(mktemp -d "$MP_RUN_DIR/image.XXXXXX") || return 1
  (
    set -e
    cd "$tmp/"
    mkdir -p rootfs/bin rootfs/etc rootfs/root rootfs/tmp rootfs/var rootfs/usr \
      rootfs/proc rootfs/sys rootfs/dev
    chmod 1777 rootfs/tmp
    cp "$bb" rootfs/bin/busybox
    while read -r a; do
      [[ -n $a && $a != busybox ]] && ln -s busybox "rootfs/bin/$a"
    done <<<"$applets"
    # Programs that call /usr/bin/env, /sbin/ip, ... find them too.
    ln -s bin rootfs/sbin
    ln -s ../bin rootfs/usr/bin
    ln -s ../bin rootfs/usr/sbin
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
      >rootfs/etc/passwd
    printf 'root:x:0:\nnogroup:x:65534:\n' >rootfs/etc/group
    tar --numeric-owner --owner=0 --group=0 -C rootfs -cf rootfs.tar .
  ) >"$log" 2>&1 || {
    _mp_err "cannot assemble the image's root filesystem"
    _mp_tail "$log"
    rm -rf "$tmp"
    return 1
  }
  if ! _mp_docker import --change 'ENV PATH=/bin' --change 'CMD ["sh"]' \
    --change "LABEL $_MP_IMAGE_LABEL=$want" "$tmp/rootfs.tar" "$MP_TEST_IMAGE" >>"$log" 2>&1; then
    _mp_err "docker import failed"
    _mp_tail "$log"
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "$tmp"
  _mp_log "image: built $MP_TEST_IMAGE from $bb ($(_mp_since "$t0"))"
}

# ---------------------------------------------------------------------------------------------
# 8. Podman (tests/tests/podman.rs): a rootful API service of the tests' own

# Everything of this service lives here: storage, run state, network configs, socket, log.
MP_PODMAN_DIR="${MP_PODMAN_DIR:-$MP_RUN_DIR/podman}"
MP_PODMAN_SOCK="${MP_PODMAN_SOCK:-$MP_PODMAN_DIR/podman.sock}"
MP_PODMAN_IMAGE="${MP_PODMAN_IMAGE:-localhost/metadataproxy-test/busybox:latest}"
# runc, not crun: crun 1.8 refuses hybrid cgroup hosts ("cgroups in hybrid mode not supported"),
# and this machine is one (see shared/design/test-environment.md).
_MP_PODMAN_PACKAGES=(podman netavark aardvark-dns conmon runc catatonit uidmap
  golang-github-containers-common)
# nf_tables table of the guard: netavark turns ip_forward on and accepts forwarding from its
# bridges (podman0, podman1, ...); a drop in a base chain of our own wins over its accepts.
_MP_PODMAN_GUARD_TABLE=mp_test_podman_guard

mp_install_podman() {
  local -
  set +e # see "Errors" above
  local t0
  t0=$(_mp_now)
  _mp_require_root && _mp_prepare_dirs || return 1
  _mp_apt_install "${_MP_PODMAN_PACKAGES[@]}" || return 1
  _mp_log "install-podman: $(podman --version 2>/dev/null) ($(_mp_since "$t0"))"
}

# Global flags of every podman command on our service's storage: no systemd here (cgroupfs,
# events to a file, which the API's /events follows), runc, and paths of our own.
_mp_podman_flags() {
  printf '%s\n' --root "$MP_PODMAN_DIR/root" --runroot "$MP_PODMAN_DIR/runroot" \
    --tmpdir "$MP_PODMAN_DIR/tmp" --network-config-dir "$MP_PODMAN_DIR/networks" \
    --cgroup-manager cgroupfs --events-backend file --runtime runc
}

# The podman CLI as a client of our service.
_mp_podman() { podman --remote --url "unix://$MP_PODMAN_SOCK" "$@"; }

_mp_podman_ping() {
  [[ -S $MP_PODMAN_SOCK ]] &&
    curl -fsS --max-time 3 --unix-socket "$MP_PODMAN_SOCK" http://podman/_ping >/dev/null 2>&1
}

# The pid of `podman system service` on our socket, if we started it and it runs.
_mp_owned_podman_pid() {
  local pid
  pid=$(cat "$(_mp_state podman.pid)" 2>/dev/null) || return 1
  if _mp_alive "$pid" && _mp_cmdline_has "$pid" "$MP_PODMAN_SOCK"; then
    printf '%s' "$pid"
    return 0
  fi
  rm -f "$(_mp_state podman.pid)"
  return 1
}

_mp_podman_guard_add() {
  nft list table inet "$_MP_PODMAN_GUARD_TABLE" >/dev/null 2>&1 && return 0
  if ! nft -f - <<NFT; then
table inet $_MP_PODMAN_GUARD_TABLE {
  chain forward {
    type filter hook forward priority -200; policy accept;
    iifname "podman*" oifname != "podman*" drop
  }
}
NFT
    _mp_err "cannot install the Podman forwarding guard (nft table inet $_MP_PODMAN_GUARD_TABLE)"
    return 1
  fi
  : >"$(_mp_state podman-guard)"
  _mp_log "guard: Podman bridges may not forward off their bridges (nft table inet $_MP_PODMAN_GUARD_TABLE)"
}

# The test image in Podman's storage: the Docker test image's root filesystem, imported (no
# registry). Rebuilt when the Docker image changes.
_mp_podman_image() {
  local want have cid log="$MP_RUN_DIR/podman-image.log" tar
  want=$(_mp_docker image inspect -f '{{.Id}}' "$MP_TEST_IMAGE" 2>/dev/null) || {
    _mp_err "$MP_TEST_IMAGE is missing (run mp_build_test_image first)"
    return 1
  }
  have=$(_mp_podman image inspect -f '{{ index .Labels "org.metadataproxy.test.from" }}' \
    "$MP_PODMAN_IMAGE" 2>/dev/null || true)
  [[ $have == "$want" ]] && return 0
  tar="$MP_PODMAN_DIR/rootfs.tar"
  cid=$(_mp_docker create "$MP_TEST_IMAGE" sh 2>>"$log") &&
    _mp_docker export -o "$tar" "$cid" >>"$log" 2>&1
  local rc=$?
  [[ -n $cid ]] && _mp_docker rm "$cid" >/dev/null 2>&1
  if [[ $rc -ne 0 ]] || ! _mp_podman import --change 'ENV PATH=/bin' --change 'CMD ["sh"]' \
    --change "LABEL org.metadataproxy.test.from=$want" "$tar" "$MP_PODMAN_IMAGE" >>"$log" 2>&1; then
    _mp_err "cannot import $MP_TEST_IMAGE's root filesystem into Podman"
    _mp_tail "$log"
    rm -f "$tar"
    return 1
  fi
  rm -f "$tar"
  _mp_log "podman: imported $MP_PODMAN_IMAGE from $MP_TEST_IMAGE"
}

mp_start_podman() {
  local -
  set +e # see "Errors" above
  local t0 pid spawned log="$MP_RUN_DIR/podman.log" i flags p
  t0=$(_mp_now)
  _mp_require_root && _mp_prepare_dirs || return 1
  if ! command -v podman >/dev/null; then
    _mp_err "podman is not installed (run mp_install_podman first)"
    return 1
  fi
  _mp_podman_guard_add || return 1
  if pid=$(_mp_owned_podman_pid) && _mp_podman_ping; then
    _mp_log "podman: already running, started by us (pid $pid)"
  else
    if [[ -n $pid ]]; then
      _mp_stop_pid "$pid" "podman system service" 10
      rm -f "$(_mp_state podman.pid)"
    fi
    mkdir -p "$MP_PODMAN_DIR/networks" "$MP_PODMAN_DIR/tmp" || return 1
    rm -f "$MP_PODMAN_SOCK"
    # What netavark will change, as it was: restored when we stop the service.
    if [[ ! -e $(_mp_state podman-ip-forward) ]]; then
      cat /proc/sys/net/ipv4/ip_forward >"$(_mp_state podman-ip-forward)"
      iptables-save 2>/dev/null | grep -q NETAVARK || : >"$(_mp_state podman-no-netavark)"
    fi
    mapfile -t flags < <(_mp_podman_flags)
    # From `/`: conmon inherits the service's working directory and fails every container
    # ("Failed to get working directory") once that directory is gone.
    spawned=$(cd / && _mp_spawn "$log" podman "${flags[@]}" system service --time=0 "unix://$MP_PODMAN_SOCK")
    for ((i = 0; i < 300; i++)); do
      if _mp_podman_ping; then
        # The service itself, whatever setsid did: the process on our socket.
        pid=$spawned
        for p in $(_mp_pids_by_comm podman); do
          _mp_cmdline_has "$p" "system service" && _mp_cmdline_has "$p" "$MP_PODMAN_SOCK" && pid=$p
        done
        printf '%s\n' "$pid" >"$(_mp_state podman.pid)"
        break
      fi
      if ! _mp_alive "$spawned" && [[ -z $(_mp_pids_by_comm podman) ]]; then
        _mp_err "podman system service exited during startup"
        _mp_tail "$log"
        return 1
      fi
      sleep 0.1
    done
    if ! _mp_podman_ping; then
      _mp_err "podman system service did not answer on $MP_PODMAN_SOCK within 30 s"
      _mp_tail "$log"
      _mp_stop_pid "$spawned" "podman system service" 5
      return 1
    fi
    _mp_log "podman: started $(podman --version 2>/dev/null) (pid $pid, unix://$MP_PODMAN_SOCK," \
      "log: $log) ($(_mp_since "$t0"))"
  fi
  _mp_podman_image || return 1
}

# netavark's leftovers once its containers are gone: ip_forward as it was before our service
# started, and its chains (with the jumps to them) if there were none then.
_mp_restore_netavark() {
  local forward table rule chain chains
  forward=$(cat "$(_mp_state podman-ip-forward)" 2>/dev/null) || return 0
  if [[ -e $(_mp_state podman-no-netavark) ]]; then
    for table in filter nat; do
      chains=()
      while read -r rule; do
        chain=${rule%% *}
        if [[ $rule == "-A "* && $rule == *NETAVARK* && $rule != "-A NETAVARK"* ]]; then
          # The line as iptables-save quotes it (comments): let the shell split it again.
          eval "iptables -w -t $table -D ${rule#-A }" 2>/dev/null
        elif [[ $chain == -N && $rule == "-N NETAVARK"* ]]; then
          chains+=("${rule#-N }")
        fi
      done < <(iptables -w -t "$table" -S 2>/dev/null)
      for chain in "${chains[@]}"; do iptables -w -t "$table" -F "$chain" 2>/dev/null; done
      for chain in "${chains[@]}"; do iptables -w -t "$table" -X "$chain" 2>/dev/null; done
    done
    rm -f "$(_mp_state podman-no-netavark)"
  fi
  printf '%s\n' "$forward" >/proc/sys/net/ipv4/ip_forward
  rm -f "$(_mp_state podman-ip-forward)"
  _mp_log "podman: restored ip_forward ($forward) and netavark's leftovers"
}

# Stops our service and removes what ran on it (every container in our storage is a test's),
# netavark's leftovers and the forwarding guard. (The Podman test restores ip_forward and the
# chains after each test itself, too.)
_mp_stop_podman() {
  local pid ids
  if pid=$(_mp_owned_podman_pid); then
    if _mp_podman_ping; then
      ids=$(_mp_podman ps -a -q 2>/dev/null)
      if [[ -n $ids ]]; then
        # shellcheck disable=SC2086 # one id per word
        _mp_podman rm -f -t 0 $ids >/dev/null 2>&1 &&
          _mp_log "podman: removed $(wc -w <<<"$ids") container(s)"
      fi
    fi
    _mp_stop_pid "$pid" "podman system service" 10
    rm -f "$(_mp_state podman.pid)" "$MP_PODMAN_SOCK"
  fi
  _mp_restore_netavark
  if [[ -e $(_mp_state podman-guard) ]]; then
    nft delete table inet "$_MP_PODMAN_GUARD_TABLE" 2>/dev/null &&
      _mp_log "guard: removed nft table inet $_MP_PODMAN_GUARD_TABLE"
    rm -f "$(_mp_state podman-guard)"
  fi
}

# ---------------------------------------------------------------------------------------------
# 7. Environment for the tests

mp_export_test_env() {
  export MP_RUN_DIR
  export MP_TEST_MOTO_URL
  MP_TEST_MOTO_URL=$(_mp_moto_url)
  export MP_TEST_IMAGE
  export DOCKER_HOST="unix://$MP_DOCKER_SOCK"
  # The SDK clients (mp_install_sdk_clients): botocore's Python, the JavaScript SDK's
  # node_modules, the GOPATH the Go clients are built against.
  export MP_TEST_SDK_PYTHON="$MP_VENV/bin/python"
  export MP_TEST_SDK_NODE_PATH="$MP_SDK_JS_DIR/node_modules"
  export MP_TEST_SDK_GOPATH="$MP_SDK_GOPATH"
  # Podman's API service (mp_start_podman) and its test image.
  export MP_TEST_PODMAN_SOCK="$MP_PODMAN_SOCK"
  export MP_TEST_PODMAN_IMAGE="$MP_PODMAN_IMAGE"
  # Static test credentials and the emulator: no AWS SDK may look for credentials or a region
  # anywhere else, least of all in the real metadata service.
  export AWS_ACCESS_KEY_ID=testing
  export AWS_SECRET_ACCESS_KEY=testing
  export AWS_REGION=us-east-1
  export AWS_EC2_METADATA_DISABLED=true
  export AWS_ENDPOINT_URL="$MP_TEST_MOTO_URL"
  # A developer's ~/.aws must not leak into the tests either.
  export AWS_CONFIG_FILE=/dev/null
  export AWS_SHARED_CREDENTIALS_FILE=/dev/null
  unset AWS_PROFILE AWS_SESSION_TOKEN AWS_DEFAULT_PROFILE
}

# ---------------------------------------------------------------------------------------------
# 6. Cleanup

# Stops what we started and removes what we added, in the reverse order of setup; the guard
# goes last, so that it protects until the end. Never fails, never exits: for EXIT traps.
mp_cleanup() {
  local - t0
  set +e # see "Errors" above
  [[ -z ${_MP_CLEANING:-} ]] || return 0 # a signal arrived during cleanup
  # Nothing recorded: nothing of ours to undo.
  [[ -n $(ls -A "$MP_RUN_DIR/state" 2>/dev/null) ]] || return 0
  _MP_CLEANING=1
  t0=$(_mp_now)
  _mp_stop_podman
  _mp_stop_dockerd
  _mp_stop_moto
  mp_remove_guard
  _mp_log "cleanup: done ($(_mp_since "$t0"))"
  _MP_CLEANING=
  return 0
}
