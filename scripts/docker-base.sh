#!/usr/bin/env bash
# Builds the runtime base image `txpipe-base:local` WITHOUT any registry, and stages the
# small build context of the Dockerfile's `prebuilt` target.
#
# Why: where no registry is reachable (air-gapped CI, this machine) neither
# gcr.io/distroless/cc-debian12 nor rust:* can be pulled. The binaries are dynamically linked
# against glibc only (libc, libm, libgcc_s, the loader), so a distroless-like rootfs is just
# those shared libraries taken from this host + /etc/passwd,group (uid/gid 65532 "nonroot",
# like distroless :nonroot) + /tmp + CA certificates. It is imported with `docker import`.
# Every library `ldd` reports for every binary is copied and then CHECKED to be in the rootfs;
# a library ldd cannot resolve, or one missing from the rootfs, fails the script.
#
# Outputs:
#   image  ${TXPIPE_BASE_IMAGE:-txpipe-base:local}
#   dir    ${TXPIPE_DOCKER_DIR:-target/docker}/context/  (bin/<5 binaries>, data/): the
#          build context of `docker build --target prebuilt` (see Dockerfile)
# Env: TXPIPE_BIN_DIR (default target/release), TXPIPE_STRIP (1 = strip debug info from the
# staged copies, default 1; the originals in target/release are never modified).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN_DIR=${TXPIPE_BIN_DIR:-target/release}
OUT=${TXPIPE_DOCKER_DIR:-target/docker}
BASE_IMAGE=${TXPIPE_BASE_IMAGE:-txpipe-base:local}
STRIP=${TXPIPE_STRIP:-1}
BINARIES=(txpipe-broker txpipe-worker txpipe-producer txpipe-operator txpipe)
UID_NONROOT=65532

die() { echo "docker-base: $*" >&2; exit 1; }
command -v ldd >/dev/null || die "ldd not found"
command -v docker >/dev/null || die "docker not found"

for b in "${BINARIES[@]}"; do
  [[ -x "$BIN_DIR/$b" ]] || die "$BIN_DIR/$b missing: run 'cargo build --release --workspace' first"
done

ROOTFS="$OUT/base-rootfs"
CTX="$OUT/context"
rm -rf "$ROOTFS" "$CTX"
mkdir -p "$ROOTFS"/{etc,tmp,home/nonroot,usr/local/bin,var/lib/txpipe} "$CTX/bin" "$CTX/data"

# --- 1. shared libraries the binaries need --------------------------------------------------
# ldd lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x..)", "/lib64/ld-linux-x86-64.so.2 (0x..)",
# "linux-vdso.so.1 (0x..)" (kernel-provided, nothing to copy), "libfoo.so => not found".
declare -A NEEDED=()
for b in "${BINARIES[@]}"; do
  out=$(ldd "$BIN_DIR/$b" 2>&1) || die "ldd $b failed: $out"
  if grep -q "not found" <<<"$out"; then die "$b: unresolved library: $(grep 'not found' <<<"$out")"; fi
  while read -r line; do
    path=""
    if [[ $line == *"=>"* ]]; then path=$(awk '{print $3}' <<<"$line")
    elif [[ $line == /* ]]; then path=$(awk '{print $1}' <<<"$line")
    fi
    [[ -n $path ]] && NEEDED[$path]=1
  done <<<"$out"
done
for lib in "${!NEEDED[@]}"; do
  # copy the real file under the path the loader asks for (symlinks resolved), and the same
  # under its canonical path so /lib -> usr/lib style layouts resolve both ways
  for dst in "$lib" "$(readlink -f "$lib")"; do
    mkdir -p "$ROOTFS$(dirname "$dst")"
    cp -L "$lib" "$ROOTFS$dst"
  done
done
# ld.so's default search path includes /lib/x86_64-linux-gnu and /usr/lib/x86_64-linux-gnu;
# no ld.so.cache is needed. Check: every needed library is in the rootfs.
for lib in "${!NEEDED[@]}"; do
  [[ -f "$ROOTFS$lib" ]] || die "library $lib needed by the binaries is not in the rootfs"
done
echo "docker-base: libraries: $(printf '%s ' "${!NEEDED[@]}")"

# --- 2. users, tmp, certificates ------------------------------------------------------------
cat >"$ROOTFS/etc/passwd" <<PW
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:$UID_NONROOT:$UID_NONROOT:nonroot:/home/nonroot:/sbin/nologin
PW
cat >"$ROOTFS/etc/group" <<GR
root:x:0:
nobody:x:65534:
nonroot:x:$UID_NONROOT:
GR
echo "hosts: files dns" >"$ROOTFS/etc/nsswitch.conf"
chmod 1777 "$ROOTFS/tmp"
chown "$UID_NONROOT:$UID_NONROOT" "$ROOTFS/home/nonroot" "$ROOTFS/var/lib/txpipe" 2>/dev/null \
  || echo "docker-base: warning: not root, /home/nonroot and /var/lib/txpipe not owned by $UID_NONROOT" >&2
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  mkdir -p "$ROOTFS/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/"
fi

# --- 3. import ------------------------------------------------------------------------------
tar --numeric-owner -C "$ROOTFS" -cf "$OUT/base-rootfs.tar" .
docker import \
  -c "USER $UID_NONROOT:$UID_NONROOT" \
  -c "WORKDIR /home/nonroot" \
  -c "ENV PATH=/usr/local/bin:/usr/bin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
  -m "txpipe runtime base: glibc libraries of the txpipe binaries, uid 65532" \
  "$OUT/base-rootfs.tar" "$BASE_IMAGE" >/dev/null
echo "docker-base: $BASE_IMAGE ($(du -h "$OUT/base-rootfs.tar" | cut -f1) rootfs)"

# --- 4. build context of the `prebuilt` target ----------------------------------------------
for b in "${BINARIES[@]}"; do
  cp "$BIN_DIR/$b" "$CTX/bin/$b"          # a copy: target/release stays untouched
  if [[ $STRIP == 1 ]] && command -v strip >/dev/null; then strip --strip-debug "$CTX/bin/$b"; fi
done
chmod 0755 "$CTX/bin/"*
echo "docker-base: context $CTX ($(du -sh "$CTX" | cut -f1)): docker build -f Dockerfile --target prebuilt --build-arg BASE_IMAGE=$BASE_IMAGE $CTX"
