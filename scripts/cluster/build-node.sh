#!/bin/bash
# Builds the node-side Kubernetes v1.20.2 binaries Tier 2 needs (kube-scheduler, kubelet, kube-proxy)
# and the pause binary, from Debian bookworm's "kubernetes" source package with Debian's Go 1.19,
# with the same source preparation as scripts/k8s/build-k8s.sh (scripts/k8s/source.sh); the two
# caches stay independent. Also installs the Debian packages Tier 2 uses: docker.io (dockerd,
# containerd, runc), debootstrap, iptables, etcd-server, openssl.
#
# Usage: scripts/cluster/build-node.sh [CACHE_DIR]
#   CACHE_DIR defaults to $PEAT_K8S_NODE_CACHE, else ~/.cache/peat-mesh/k8s-node-v1.20.2.
#   Binaries land in CACHE_DIR/bin; a finished build is marked by CACHE_DIR/bin/.complete.
# Two patches for VMs that refuse a negative oom_score_adj (k8s-test-infra.md §1.7): the dockershim
# sandbox (-998) and Guaranteed pods (-997) get 0. Needs root and apt-get. ~3.5 min cold on 2 cores.
set -euo pipefail

CACHE=${1:-${PEAT_K8S_NODE_CACHE:-$HOME/.cache/peat-mesh/k8s-node-v1.20.2}}
BIN="$CACHE/bin"
WORK="$CACHE/work"
PKGS=(docker.io debootstrap iptables etcd-server openssl ca-certificates)

mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9
export DEBIAN_FRONTEND=noninteractive
APT_WAIT=(-o DPkg::Lock::Timeout=600)
if [ "$(id -u)" != 0 ]; then echo "build-node: needs root (apt-get install)" >&2; exit 2; fi
command -v apt-get >/dev/null || { echo "build-node: needs apt-get (Debian bookworm)" >&2; exit 2; }

need_pkgs() { command -v dockerd >/dev/null && command -v debootstrap >/dev/null && command -v iptables >/dev/null \
  && command -v etcd >/dev/null && command -v openssl >/dev/null; }
if ! need_pkgs; then
  apt-get "${APT_WAIT[@]}" update -qq
  apt-get "${APT_WAIT[@]}" install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
fi
if [ -e "$BIN/.complete" ]; then echo "k8s node binaries already built in $BIN" >&2; exit 0; fi

started=$(date +%s)
apt-get "${APT_WAIT[@]}" update -qq
apt-get "${APT_WAIT[@]}" install -y -qq --no-install-recommends \
  golang-go golang-github-modern-go-reflect2-dev gcc libc6-dev >/dev/null

rm -rf "$WORK" && mkdir -p "$BIN"
# shellcheck source=scripts/k8s/source.sh
. "$(dirname "$0")/../k8s/source.sh"
k8s_prepare_source
sed -i 's/defaultSandboxOOMAdj int = -998/defaultSandboxOOMAdj int = 0/' pkg/kubelet/dockershim/docker_sandbox.go
sed -i 's/guaranteedOOMScoreAdj int = -997/guaranteedOOMScoreAdj int = 0/' pkg/kubelet/qos/policy.go
grep -q 'defaultSandboxOOMAdj int = 0' pkg/kubelet/dockershim/docker_sandbox.go
grep -q 'guaranteedOOMScoreAdj int = 0' pkg/kubelet/qos/policy.go

for c in kube-scheduler kubelet kube-proxy; do
  go build -ldflags "$LDF" -o "$BIN/$c.tmp" "./cmd/$c"
  mv "$BIN/$c.tmp" "$BIN/$c"
done
gcc -Os -static -DVERSION=v3.2 -o "$BIN/pause" build/pause/linux/pause.c
"$BIN/kubelet" --version
cd /
[ "${PEAT_K8S_KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"
touch "$BIN/.complete"
echo "build-node: done in $(( $(date +%s) - started )) s; binaries in $BIN" >&2
