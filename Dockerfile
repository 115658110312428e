# syntax=docker/dockerfile:1
#
# Floodgate's container image: `docker build -t floodgate .`
#
# The binary is at /usr/local/bin/floodgate and, for deployments written for envoyproxy/ratelimit
# (Istio's sample, Envoy Gateway), also at /bin/ratelimit (a symlink: Floodgate tells by its
# argv[0] which name it was started under). It runs as uid/gid 65534 and writes nothing, so a
# read-only root filesystem works. Mount the domain configs at /etc/floodgate, or pass other
# arguments (`serve --help` lists them).
#
# Build arguments:
#   BUILDER       the Rust toolchain image the binary is compiled in
#   RUNTIME_BASE  the image it runs on: glibc, libgcc_s and CA certificates, nothing more
#   BINARY        `build` (the default) compiles the binary here; `prebuilt` packages one that
#                 was built elsewhere, taken from the build context named floodgate-prebuilt,
#                 which holds what the build stage leaves in /out (tests/image/build_and_run.sh):
#                   floodgate        the binary, stripped
#                   bin/ratelimit    a symlink to /usr/local/bin/floodgate
#                 docker buildx build --build-arg BINARY=prebuilt \
#                   --build-context floodgate-prebuilt=DIR .
#   VERSION, REVISION, SOURCE   the OCI labels' values (the release workflow sets them, and
#                 adds org.opencontainers.image.created)
#
# Multi-arch: `docker buildx build --platform linux/amd64,linux/arm64 .` compiles on the build
# machine's own architecture and cross-links for the other (no emulation).

ARG BUILDER=docker.io/library/rust:1-bookworm
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY=build

# --- build: compile the binary --------------------------------------------------------------
FROM --platform=$BUILDPLATFORM ${BUILDER} AS build
ARG TARGETARCH
# Both linkers are named: on its own architecture Debian's gcc answers to the prefixed name too.
# No debug info and no symbol table: 11 MB instead of 90 (panic messages keep their file:line).
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN set -eu; \
    arch="${TARGETARCH:-$(dpkg --print-architecture)}"; \
    case "$arch" in \
      amd64) triple=x86_64-unknown-linux-gnu; cross="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
      arm64) triple=aarch64-unknown-linux-gnu; cross="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
      *) echo "no Rust target for TARGETARCH=$arch" >&2; exit 1 ;; \
    esac; \
    if [ "$arch" != "$(dpkg --print-architecture)" ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends $cross; \
      rm -rf /var/lib/apt/lists/*; \
      rustup target add "$triple"; \
    fi; \
    echo "$triple" >/target-triple
WORKDIR /src
# Only what the build reads (build.rs compiles proto/ with protox: no protoc needed). The load
# generator is not built, but Cargo loads every workspace member's manifest and targets.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto/ proto/
COPY src/ src/
COPY bench/floodgate-bench/ bench/floodgate-bench/
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eu; \
    triple="$(cat /target-triple)"; \
    cargo build --release --locked --bin floodgate --target "$triple"; \
    mkdir -p /out/bin; \
    cp "target/$triple/release/floodgate" /out/floodgate; \
    ln -s /usr/local/bin/floodgate /out/bin/ratelimit

# --- prebuilt: a binary built elsewhere (see BINARY above) ----------------------------------
FROM scratch AS prebuilt
COPY --from=floodgate-prebuilt / /out/

# --- binary: whichever of the two BINARY names ----------------------------------------------
FROM ${BINARY} AS binary

# --- runtime ----------------------------------------------------------------------------------
FROM ${RUNTIME_BASE} AS runtime
ARG RUNTIME_BASE
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/floodgate/floodgate
LABEL org.opencontainers.image.title="floodgate" \
      org.opencontainers.image.description="A rate limit service for Envoy and Istio (Envoy RLS v3), a drop-in replacement for envoyproxy/ratelimit" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.url="${SOURCE}" \
      org.opencontainers.image.documentation="${SOURCE}#readme" \
      org.opencontainers.image.base.name="${RUNTIME_BASE}"
COPY --from=binary /out/floodgate /usr/local/bin/floodgate
# A directory copy keeps bin/ratelimit a symlink (copying the file itself would follow it).
COPY --from=binary /out/bin/ /bin/
USER 65534:65534
WORKDIR /
# HTTP (/healthcheck, /json) and gRPC (ShouldRateLimit), the reference's ports.
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/floodgate"]
CMD ["serve", "--config", "/etc/floodgate"]
