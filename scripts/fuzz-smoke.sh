#!/usr/bin/env bash
# A short run of every fuzz target (fuzz/README.md), as the test command's last step: each
# target starts from its committed corpus and runs for FUZZ_SECONDS (default 20). New inputs
# go to a scratch directory, not into the repository; a crash fails the run and leaves its
# input under fuzz/artifacts/<target>/.
#
# Built without a sanitizer and without optimisation (`--dev -s none`): a cold build of the
# instrumented targets then takes about 5 minutes on 2 cores instead of about 30 with the
# address sanitizer in release mode. Coverage guidance and the targets' own property
# assertions (the point of these targets) are the same; the long local runs use ASan.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds=${FUZZ_SECONDS:-20}
export RUSTC_BOOTSTRAP=1 # cargo-fuzz needs nightly flags; the stable toolchain allows them so

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

cargo fuzz build --dev -s none
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  mkdir -p "$scratch/$target"
  echo "[fuzz] $target: ${seconds}s from corpus/$target" >&2
  # -max_total_time bounds the run; the first directory receives what the run adds.
  log="$scratch/$target.log"
  if ! cargo fuzz run --dev -s none "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "[fuzz] $target failed: the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$log" | tr '\n' ' ' >&2 || true
  echo >&2
done
