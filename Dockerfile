# The metadataproxy runtime image: one statically linked binary and the CA certificates the
# real STS endpoint needs; nothing pulled from a registry (`scratch` is built into Docker).
#
# Build it with `bash scripts/build-image.sh [TAG]`, which first builds the static binary on
# the host (glibc, `-Ctarget-feature=+crt-static`, `--target x86_64-unknown-linux-gnu`) and
# stages it with the host's CA bundle under target/image/.
FROM scratch
COPY target/image/metadataproxy /usr/local/bin/metadataproxy
COPY target/image/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    LOG_FORMAT=json
# Ready: Docker reachable, the agent's AWS credentials available, interception in place.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/metadataproxy", "--healthcheck"]
ENTRYPOINT ["/usr/local/bin/metadataproxy"]
