#!/usr/bin/env bash
# Builds the metadataproxy image with the local Docker engine, without any registry:
#   1. a statically linked release binary on the host (glibc with crt-static: no musl target
#      is needed), under target/x86_64-unknown-linux-gnu/release/;
#   2. staged with the host's CA bundle under target/image/;
#   3. `docker build` of the Dockerfile (FROM scratch).
# Usage: bash scripts/build-image.sh [TAG]   (default metadataproxy:latest)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-metadataproxy:latest}
target=x86_64-unknown-linux-gnu
ca=${MP_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

if [[ ! -s $ca ]]; then
  echo "build-image: no CA bundle at $ca (install Debian's ca-certificates, or set MP_CA_BUNDLE)" >&2
  exit 1
fi
RUSTFLAGS="${RUSTFLAGS:-} -Ctarget-feature=+crt-static" \
  cargo build --release --locked --target "$target" -p metadataproxy
bin=target/$target/release/metadataproxy
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "build-image: $bin is dynamically linked; the image has no libc" >&2
  exit 1
fi
mkdir -p target/image
# Symbols are not needed at run time: a third of the size.
if command -v strip >/dev/null; then
  strip -o target/image/metadataproxy "$bin"
else
  cp "$bin" target/image/metadataproxy
fi
cp "$ca" target/image/ca-certificates.crt
# The state directory (TOKEN_KEY_FILE's default, /var/lib/metadataproxy): empty, private, and
# owned by the classic line's user (65534) in the image, so that a named volume mounted there
# starts out with the same owner and mode.
rm -rf target/image/state target/image/empty
mkdir -p target/image/state target/image/empty
mkdir -m 0700 target/image/state/metadataproxy
DOCKER_BUILDKIT=0 docker build --pull=false -t "$tag" -f Dockerfile .
size=$(docker image inspect --format '{{.Size}}' "$tag")
echo "build-image: $tag built, $((size / 1024 / 1024)) MiB"
