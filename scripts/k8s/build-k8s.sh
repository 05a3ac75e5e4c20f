#!/bin/bash
# Builds kube-apiserver (and kube-controller-manager) v1.20.2 from Debian bookworm's "kubernetes"
# source package, which carries the full upstream tree including vendor/, with Debian's Go 1.19, and
# installs etcd from Debian. Nothing comes from the Go module proxy or any other registry: only the
# Debian archive. Measured ~3 min from an empty cache on 2 cores (see k8s-test-infra.md §1.2).
#
# Usage: scripts/k8s/build-k8s.sh [CACHE_DIR]
#   CACHE_DIR defaults to $PEAT_K8S_CACHE, else ~/.cache/peat-mesh/k8s-v1.20.2.
#   Binaries land in CACHE_DIR/bin; a finished build is marked by CACHE_DIR/bin/.complete.
#   WITH_KCM=0 skips kube-controller-manager. PEAT_K8S_KEEP_WORK=1 keeps the 1.6 GB source and Go
#   cache under CACHE_DIR/work (a rebuild then takes seconds).
# Needs root and apt-get (Debian bookworm). Safe to run concurrently: a lock serialises builders.
set -euo pipefail

CACHE=${1:-${PEAT_K8S_CACHE:-$HOME/.cache/peat-mesh/k8s-v1.20.2}}
BIN="$CACHE/bin"
WORK="$CACHE/work"

mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9
export DEBIAN_FRONTEND=noninteractive
# Other jobs on the machine may hold the dpkg lock briefly: wait for it rather than fail.
APT_WAIT=(-o DPkg::Lock::Timeout=600)
if [ -e "$BIN/.complete" ] && [ -x "$BIN/kube-apiserver" ]; then
  if ! command -v etcd >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
    apt-get "${APT_WAIT[@]}" update -qq
    apt-get "${APT_WAIT[@]}" install -y -qq --no-install-recommends etcd-server openssl >/dev/null
  fi
  echo "k8s binaries already built in $BIN" >&2
  exit 0
fi

if [ "$(id -u)" != 0 ]; then echo "build-k8s: needs root (apt-get install)" >&2; exit 2; fi
command -v apt-get >/dev/null || { echo "build-k8s: needs apt-get (Debian bookworm)" >&2; exit 2; }

started=$(date +%s)
apt-get "${APT_WAIT[@]}" update -qq
apt-get "${APT_WAIT[@]}" install -y -qq --no-install-recommends \
  golang-go etcd-server golang-github-modern-go-reflect2-dev openssl ca-certificates >/dev/null

mkdir -p "$BIN"
# shellcheck source=scripts/k8s/source.sh
. "$(dirname "$0")/source.sh"
k8s_prepare_source
go build -ldflags "$LDF" -o "$BIN/kube-apiserver.tmp" ./cmd/kube-apiserver
mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
if [ "${WITH_KCM:-1}" = 1 ]; then
  go build -ldflags "$LDF" -o "$BIN/kube-controller-manager.tmp" ./cmd/kube-controller-manager
  mv "$BIN/kube-controller-manager.tmp" "$BIN/kube-controller-manager"
fi
"$BIN/kube-apiserver" --version
command -v etcd >/dev/null && etcd --version | head -1
cd /
[ "${PEAT_K8S_KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"
touch "$BIN/.complete"
echo "build-k8s: done in $(( $(date +%s) - started )) s; binaries in $BIN" >&2
