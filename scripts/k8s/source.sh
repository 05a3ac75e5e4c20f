#!/bin/bash
# Sourced by the Kubernetes build scripts (scripts/k8s/build-k8s.sh, scripts/cluster/build-node.sh):
# fetches Debian bookworm's "kubernetes" source package (upstream v1.20.2 with vendor/) through a
# private deb-src list, applies the three fixes it needs to build with Debian's Go 1.19, and leaves
# the shell in the GOPATH source tree with $LDF set to the version ldflags.
# Expects: $WORK (an empty work directory) and APT_WAIT; needs golang-go and
# golang-github-modern-go-reflect2-dev installed.

ORIG=kubernetes_1.20.5+really1.20.2.orig.tar.gz
ORIG_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc

k8s_prepare_source() {
  # A private deb-src list, so the machine's own apt sources are left untouched.
  rm -rf "$WORK" && mkdir -p "$WORK/apt/lists/partial" "$WORK/src"
  DEB_URI=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [ -z "$DEB_URI" ]; then
    DEB_URI=$(awk '$1=="deb"{for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
  fi
  : "${DEB_URI:=http://deb.debian.org/debian}"
  {
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEB_URI bookworm main"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEB_URI bookworm-updates main"
  } > "$WORK/apt/src.list"
  # The private lists live under root's home, which the _apt sandbox user cannot enter.
  APTO=(-o Dir::Etc::sourcelist="$WORK/apt/src.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$WORK/apt/lists"
    -o APT::Sandbox::User=root)
  apt-get "${APTO[@]}" update -qq
  cd "$WORK/src"
  # The Debian revision may move on (deb12uN); the checksum of the upstream tarball is what matters.
  apt-get "${APTO[@]}" source --download-only -qq kubernetes >/dev/null
  echo "$ORIG_SHA256  $ORIG" | sha256sum -c --quiet -
  tar xzf "$ORIG"
  K="$WORK/src/kubernetes-1.20.2"
  [ -d "$K/vendor" ] || { echo "build-k8s: $ORIG has no vendor/ tree" >&2; exit 1; }

  # Fix 3: the vendored reflect2 v1.0.1 crashes the apiserver ("fatal error: fault" in mapiterinit)
  # when built with Go >= 1.18; Debian's 1.0.2 does not.
  R2=/usr/share/gocode/src/github.com/modern-go/reflect2
  rm -rf "$K/vendor/github.com/modern-go/reflect2" && mkdir -p "$K/vendor/github.com/modern-go/reflect2"
  cp "$R2"/*.go "$R2"/*.s "$K/vendor/github.com/modern-go/reflect2/"
  rm -f "$K"/vendor/github.com/modern-go/reflect2/*_test.go

  # Fix 1: k8s 1.20's vendor/k8s.io/* are symlinks into staging/, which module mode rejects; GOPATH mode builds.
  mkdir -p "$WORK/gopath/src/k8s.io" && ln -sfn "$K" "$WORK/gopath/src/k8s.io/kubernetes"
  export GO111MODULE=off GOPATH="$WORK/gopath" GOCACHE="$WORK/gocache" CGO_ENABLED=0 GOFLAGS= GOPROXY=off
  cd "$WORK/gopath/src/k8s.io/kubernetes"

  # Fix 2: pkg/generated/openapi/zz_generated.openapi.go is not in the tarball; generate it.
  go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  DIRS=$(find -H . \( -path ./_\* -o -path ./.\* -o -path ./vendor \) -prune -o -type f -name '*.go' -print \
    | sed 's|^./staging/src|vendor|; s|^\./||' | xargs grep -l '^// *+k8s:openapi-gen=' \
    | grep -vE '^vendor/k8s.io/(code-generator|sample-apiserver)/' | xargs -n1 dirname | LC_ALL=C sort -u \
    | sed 's|^|k8s.io/kubernetes/|' | paste -sd,)
  "$WORK/openapi-gen" -i "$DIRS" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
    -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$WORK/openapi-violations.report"

  # Without these, /version says v0.0.0-master and kubectl/helm version checks misbehave.
  LDF="-s -w"
  for V in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    LDF="$LDF -X $V.gitVersion=v1.20.2 -X $V.gitMajor=1 -X $V.gitMinor=20 -X $V.gitTreeState=clean"
    LDF="$LDF -X $V.gitCommit=faecb196815e248d3ecfb03c680a4507229c2a56 -X $V.buildDate=2021-01-13T00:00:00Z"
  done
}
