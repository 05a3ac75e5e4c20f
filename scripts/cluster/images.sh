#!/bin/bash
# Makes the images Tier 2 needs on the Docker daemon at $DOCKER_HOST, with no registry:
#   debian:bookworm-slim                 debootstrap --variant=minbase (cached as a tarball)
#   gcr.io/distroless/cc-debian12:nonroot  Debian .debs (libc6 libgcc-s1 libstdc++6 libssl3 ...), uid 65532
#   oven/bun:1                           debian + the bun executable of the project's pinned npm "bun"
#   k8s.gcr.io/pause:3.2                 FROM scratch + the pause binary built by build-node.sh
# then builds the project image from Dockerfile.distroless (tag $IMAGE, default peat-mesh-node:tier2).
# The machine's CA bundle is copied into the local oven/bun stand-in only (RUN bun install reaches
# the npm registry through it); it never enters the project's image or the repository.
# Usage: DOCKER_HOST=unix://... scripts/cluster/images.sh [CACHE_DIR] ; needs root, debootstrap, apt-get.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${1:-${PEAT_IMAGES_CACHE:-$HOME/.cache/peat-mesh/images}}
NODE_BIN=${PEAT_K8S_NODE_CACHE:-$HOME/.cache/peat-mesh/k8s-node-v1.20.2}/bin
IMAGE=${IMAGE:-peat-mesh-node:tier2}
DOCKER=${DOCKER:-/usr/bin/docker}
: "${DOCKER_HOST:?set DOCKER_HOST to the build daemon}"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! have debian:bookworm-slim; then
  if [ ! -s "$CACHE/bookworm-minbase.tar" ]; then
    URI=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    : "${URI:=http://deb.debian.org/debian}"
    debootstrap --variant=minbase bookworm "$work/rootfs" "$URI" >/dev/null
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    tar -C "$work/rootfs" -cf "$CACHE/bookworm-minbase.tar.tmp" . && mv "$CACHE/bookworm-minbase.tar.tmp" "$CACHE/bookworm-minbase.tar"
    rm -rf "$work/rootfs"
  fi
  "$DOCKER" import -c 'CMD ["bash"]' "$CACHE/bookworm-minbase.tar" debian:bookworm-slim >/dev/null
fi

if ! have gcr.io/distroless/cc-debian12:nonroot; then
  mkdir -p "$work/dl/debs" "$work/dl/root"
  (cd "$work/dl/debs" && apt-get download -qq libc6 libgcc-s1 libstdc++6 libssl3 ca-certificates base-files netbase tzdata >/dev/null)
  for d in "$work"/dl/debs/*.deb; do dpkg -x "$d" "$work/dl/root"; done
  mkdir -p "$work/dl/root/tmp" "$work/dl/root/home/nonroot" "$work/dl/root/etc/ssl/certs"
  chmod 1777 "$work/dl/root/tmp"; chown 65532:65532 "$work/dl/root/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$work/dl/root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$work/dl/root/etc/group"
  printf 'FROM scratch\nCOPY root/ /\nUSER 65532:65532\n' > "$work/dl/Dockerfile"
  DOCKER_BUILDKIT=0 "$DOCKER" build -q -t gcr.io/distroless/cc-debian12:nonroot "$work/dl" >/dev/null
fi

if ! have oven/bun:1; then
  mkdir -p "$work/bun"
  cp "$ROOT/node_modules/bun/bin/bun.exe" "$work/bun/bun"
  cp /etc/ssl/certs/ca-certificates.crt "$work/bun/host-ca.crt"
  cat > "$work/bun/Dockerfile" <<'DF'
FROM debian:bookworm-slim
COPY bun /usr/local/bin/bun
COPY host-ca.crt /etc/ssl/certs/ca-certificates.crt
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
RUN ln -s /usr/local/bin/bun /usr/local/bin/bunx && mkdir -p /home/bun/app
WORKDIR /home/bun/app
CMD ["bun"]
DF
  DOCKER_BUILDKIT=0 "$DOCKER" build -q --network host -t oven/bun:1 "$work/bun" >/dev/null
fi

if ! have k8s.gcr.io/pause:3.2; then
  mkdir -p "$work/pause"
  cp "$NODE_BIN/pause" "$work/pause/pause"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' > "$work/pause/Dockerfile"
  DOCKER_BUILDKIT=0 "$DOCKER" build -q -t k8s.gcr.io/pause:3.2 "$work/pause" >/dev/null
fi

# The project image, from the repository's real Dockerfile (legacy builder: TARGETARCH unset, so
# the build machine's architecture; RUN bun install reaches the registry through --network host).
start=$(date +%s)
DOCKER_BUILDKIT=0 "$DOCKER" build -q --network host -f "$ROOT/Dockerfile.distroless" -t "$IMAGE" "$ROOT" >/dev/null
echo "built $IMAGE in $(( $(date +%s) - start )) s: $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE") bytes" >&2
