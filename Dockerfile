# The metadataproxy runtime image: one statically linked binary and the CA certificates the
# real STS endpoint needs; nothing pulled from a registry (`scratch` is built into Docker).
#
# Build it with `bash scripts/build-image.sh [TAG]`, which first builds the static binary on
# the host (glibc, `-Ctarget-feature=+crt-static`, `--target x86_64-unknown-linux-gnu`) and
# stages it with the host's CA bundle and an empty state directory under target/image/.
FROM scratch
COPY target/image/metadataproxy /usr/local/bin/metadataproxy
COPY target/image/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# TOKEN_KEY_FILE's directory: mount a volume here to keep IMDSv2 tokens valid when the agent's
# container is re-created (docs/deployment.md, "The container image").
# (/var/lib itself root's: copied first without --chown; the copy keeps the mode 0700.)
COPY target/image/empty /var/lib
COPY --chown=65534:65534 target/image/state /var/lib/
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    LOG_FORMAT=json \
    TOKEN_KEY_FILE=/var/lib/metadataproxy/token.key
# Ready: Docker reachable, the agent's AWS credentials available, interception in place.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/metadataproxy", "--healthcheck"]
ENTRYPOINT ["/usr/local/bin/metadataproxy"]
