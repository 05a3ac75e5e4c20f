#!/bin/bash
# Builds the node-side Kubernetes v1.20.2 binaries Tier 2 needs (kube-scheduler, kubelet, kube-proxy)
# and the pause binary, from Debian bookworm's "kubernetes" source package with Debian's Go 1.19,
# exactly like scripts/k8s/build-k8s.sh builds the apiserver (that script is not extended so the
# two caches stay independent). Also installs the Debian packages Tier 2 uses: docker.io (dockerd,
# containerd, runc), debootstrap, iptables, etcd-server, openssl.
#
# Usage: scripts/cluster/build-node.sh [CACHE_DIR]
#   CACHE_DIR defaults to $PEAT_K8S_NODE_CACHE, else ~/.cache/peat-mesh/k8s-node-v1.20.2.
#   Binaries land in CACHE_DIR/bin; a finished build is marked by CACHE_DIR/bin/.complete.
# Two patches for VMs that refuse a negative oom_score_adj (k8s-test-infra.md §1.7): the dockershim
# sandbox (-998) and Guaranteed pods (-997) get 0. Needs root and apt-get. ~3.5 min cold on 2 cores.
set -euo pipefail

CACHE=${1:-${PEAT_K8S_NODE_CACHE:-$HOME/.cache/peat-mesh/k8s-node-v1.20.2}}
ORIG=kubernetes_1.20.5+really1.20.2.orig.tar.gz
ORIG_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc
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

rm -rf "$WORK" && mkdir -p "$WORK/apt/lists/partial" "$WORK/src" "$BIN"
DEB_URI=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -z "$DEB_URI" ]; then
  DEB_URI=$(awk '$1=="deb"{for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
fi
: "${DEB_URI:=http://deb.debian.org/debian}"
{
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEB_URI bookworm main"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEB_URI bookworm-updates main"
} > "$WORK/apt/src.list"
APTO=(-o Dir::Etc::sourcelist="$WORK/apt/src.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$WORK/apt/lists"
  -o APT::Sandbox::User=root)
apt-get "${APTO[@]}" update -qq
cd "$WORK/src"
apt-get "${APTO[@]}" source --download-only -qq kubernetes >/dev/null
echo "$ORIG_SHA256  $ORIG" | sha256sum -c --quiet -
tar xzf "$ORIG"
K="$WORK/src/kubernetes-1.20.2"

R2=/usr/share/gocode/src/github.com/modern-go/reflect2
rm -rf "$K/vendor/github.com/modern-go/reflect2" && mkdir -p "$K/vendor/github.com/modern-go/reflect2"
cp "$R2"/*.go "$R2"/*.s "$K/vendor/github.com/modern-go/reflect2/"
rm -f "$K"/vendor/github.com/modern-go/reflect2/*_test.go

mkdir -p "$WORK/gopath/src/k8s.io" && ln -sfn "$K" "$WORK/gopath/src/k8s.io/kubernetes"
export GO111MODULE=off GOPATH="$WORK/gopath" GOCACHE="$WORK/gocache" CGO_ENABLED=0 GOFLAGS= GOPROXY=off
cd "$WORK/gopath/src/k8s.io/kubernetes"

go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
DIRS=$(find -H . \( -path ./_\* -o -path ./.\* -o -path ./vendor \) -prune -o -type f -name '*.go' -print \
  | sed 's|^./staging/src|vendor|; s|^\./||' | xargs grep -l '^// *+k8s:openapi-gen=' \
  | grep -vE '^vendor/k8s.io/(code-generator|sample-apiserver)/' | xargs -n1 dirname | LC_ALL=C sort -u \
  | sed 's|^|k8s.io/kubernetes/|' | paste -sd,)
"$WORK/openapi-gen" -i "$DIRS" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
  -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$WORK/openapi-violations.report"

sed -i 's/defaultSandboxOOMAdj int = -998/defaultSandboxOOMAdj int = 0/' pkg/kubelet/dockershim/docker_sandbox.go
sed -i 's/guaranteedOOMScoreAdj int = -997/guaranteedOOMScoreAdj int = 0/' pkg/kubelet/qos/policy.go
grep -q 'defaultSandboxOOMAdj int = 0' pkg/kubelet/dockershim/docker_sandbox.go
grep -q 'guaranteedOOMScoreAdj int = 0' pkg/kubelet/qos/policy.go

LDF="-s -w"
for V in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  LDF="$LDF -X $V.gitVersion=v1.20.2 -X $V.gitMajor=1 -X $V.gitMinor=20 -X $V.gitTreeState=clean"
  LDF="$LDF -X $V.gitCommit=faecb196815e248d3ecfb03c680a4507229c2a56 -X $V.buildDate=2021-01-13T00:00:00Z"
done
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
