# txpipe container image: ONE image holding every binary (txpipe-broker, txpipe-worker,
# txpipe-producer, txpipe-operator, txpipe). Why one image and not five: one version tag covers
# the whole release (broker, workers and clients always speak the same wire version), one
# vulnerability scan and one SBOM, one pull per node (the layers are shared by every pod on
# it), and the operator needs a single `image:` field. The process is chosen by the command
# (`docker run IMAGE txpipe-broker ...`, Kubernetes `command: [txpipe-worker]`); the default
# command prints `txpipe --help`.
#
# Runtime: a minimal base with only glibc (no shell, no package manager), non-root uid/gid
# 65532, /var/lib/txpipe (the broker's data volume) owned by 65532 so a fresh named volume is
# writable.
#
# Two ways to build:
#
# 1. Default (real users, needs a registry and BuildKit, the default builder since Docker 23):
#      docker build -t txpipe:local .
#    Compiles in ${RUST_IMAGE}, copies the binaries onto ${BASE_IMAGE} (distroless cc, nonroot).
#    Context = the repository root; .dockerignore keeps target/, .git etc. out of it.
#
# 2. `prebuilt` (no registry, binaries already built with `cargo build --release --workspace`):
#      scripts/docker-base.sh        # builds txpipe-base:local by `docker import`, stages target/docker/context
#      docker build -f Dockerfile --target prebuilt --build-arg BASE_IMAGE=txpipe-base:local \
#        -t txpipe:local target/docker/context
#    (`make image` does both.) Its context is a separate staged directory holding only bin/<5
#    binaries> (debug info stripped) and an empty data/: a single .dockerignore cannot both
#    send the sources (path 1) and send target/release but not the sources (path 2), and
#    sending the many-GB target/ directory to the daemon is what a small context avoids.
#    The stage comes FIRST in this file because the legacy (non-BuildKit) builder builds every
#    stage up to --target: placed first it needs neither the Rust image nor the sources.
#    The binaries must be built against a glibc no newer than the base's (on the same host
#    as docker-base.sh they are, by construction).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---- prebuilt: binaries from the (staged) build context -------------------------------------
FROM ${BASE_IMAGE} AS prebuilt
COPY --chown=0:0 bin/ /usr/local/bin/
COPY --chown=65532:65532 data/ /var/lib/txpipe/
USER 65532:65532
ENV PATH=/usr/local/bin:/usr/bin:/bin
EXPOSE 9100 9180 9181 9200
CMD ["txpipe", "--help"]

# ---- builder: compile the workspace ---------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --locked \
 && mkdir -p /out/bin /out/data \
 && for b in txpipe-broker txpipe-worker txpipe-producer txpipe-operator txpipe; do \
      cp "target/release/$b" /out/bin/ && strip --strip-debug "/out/bin/$b"; \
    done

# ---- runtime (default target) ---------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
COPY --from=builder --chown=0:0 /out/bin/ /usr/local/bin/
COPY --from=builder --chown=65532:65532 /out/data/ /var/lib/txpipe/
USER 65532:65532
ENV PATH=/usr/local/bin:/usr/bin:/bin
EXPOSE 9100 9180 9181 9200
CMD ["txpipe", "--help"]
