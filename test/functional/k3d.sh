#!/usr/bin/env bash
# Functional test on real k3d clusters (needs Docker, k3d, kubectl, helm, openssl, curl, jq).
# Asserts what Tier 2 (test/cluster/tier2.test.ts) asserts on the built-in single-node cluster:
#   every pod healthy, each connected to 2 peers, a document written on one pod readable on the
#   others, device_id unchanged after deleting a pod, scale 3 -> 5 -> 3 with peers joining and
#   leaving, no ERROR lines; then two clusters federated through gateway pods + static peers.
# The image is distroless (no shell, no curl): the broker is reached through kubectl port-forward.
# Usage: test/functional/k3d.sh            (FEDERATION=0 skips the two-cluster part)
set -euo pipefail
cd "$(dirname "$0")/../.."

for tool in docker k3d kubectl helm openssl curl jq; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed"; exit 0; }
done

RUN="peat-$$"
A="$RUN-a"; B="$RUN-b"
NET="$RUN-fed"
IMAGE="peat-mesh-node:k3d-$$"
SECRET=$(openssl rand -base64 32)
CHART=deploy/helm/peat-mesh
PF_PIDS=()
cleanup() {
  for p in "${PF_PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  k3d cluster delete "$A" >/dev/null 2>&1 || true
  k3d cluster delete "$B" >/dev/null 2>&1 || true
  docker network rm "$NET" >/dev/null 2>&1 || true
  docker image rm "$IMAGE" >/dev/null 2>&1 || true
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# poll CMD until it succeeds or SECS pass (no sleeps as synchronisation: every wait has a deadline)
until_ok() { local secs=$1; shift; local end=$((SECONDS + secs)); until "$@"; do [ $SECONDS -lt $end ] || return 1; sleep 1; done; }

docker build -t "$IMAGE" -f Dockerfile.distroless .
docker image inspect -f 'image size: {{.Size}} bytes, user {{.Config.User}}' "$IMAGE"
docker network create "$NET" >/dev/null
k3d cluster create "$A" --no-lb --network "$NET" --wait >/dev/null
k3d image import "$IMAGE" -c "$A" >/dev/null

K="kubectl --context k3d-$A"
REL=peat-mesh
install() { # cluster release replicas [extra helm args]
  local c=$1 r=$2 n=$3; shift 3
  helm upgrade --install "$r" "$CHART" --kube-context "k3d-$c" --wait --timeout 180s \
    --set "formationSecret=$SECRET" --set replicaCount="$n" \
    --set image.repository="${IMAGE%%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never "$@" >/dev/null
}
# port-forward pod $2 in context $1 to a free local port; echoes the port
forward() {
  local ctx=$1 pod=$2 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  kubectl --context "$ctx" port-forward "pod/$pod" "$port:8081" >/dev/null 2>&1 &
  PF_PIDS+=($!)
  until_ok 20 curl -sf "localhost:$port/api/v1/health" >/dev/null || fail "port-forward to $pod"
  echo "$port"
}
connected() { curl -sf "localhost:$1/api/v1/peers" | jq '[.peers[] | select(.connected)] | length'; }
peers_are() { [ "$(connected "$1")" = "$2" ]; }

install "$A" "$REL" 3
$K rollout status statefulset/$REL --timeout=180s
declare -A PORT
for i in 0 1 2; do
  PORT[$i]=$(forward "k3d-$A" "$REL-$i")
  [ "$(curl -sf "localhost:${PORT[$i]}/api/v1/health" | jq -r .status)" = healthy ] || fail "$REL-$i unhealthy"
  [ "$(curl -sf "localhost:${PORT[$i]}/api/v1/ready" | jq -r .ready)" = true ] || fail "$REL-$i not ready"
done
echo "OK: all pods healthy"
for i in 0 1 2; do until_ok 60 peers_are "${PORT[$i]}" 2 || fail "$REL-$i has $(connected "${PORT[$i]}") connected peers (expected 2)"; done
echo "OK: each pod connected to 2 peers"

curl -sf -X PUT "localhost:${PORT[0]}/api/v1/documents/k3d/doc-1" -d '{"from":"peat-mesh-0","n":1}' >/dev/null
for i in 1 2; do
  until_ok 30 sh -c "curl -sf localhost:${PORT[$i]}/api/v1/documents/k3d/doc-1 | jq -e '.document.n == 1' >/dev/null" || fail "doc-1 not on $REL-$i"
done
echo "OK: document synced to every pod"

BEFORE=$(curl -sf "localhost:${PORT[0]}/api/v1/node" | jq -r .device_id)
$K logs "$REL-0" | grep -q "Mesh started.*device_id=$BEFORE" || fail "log does not show device_id $BEFORE"
$K delete pod "$REL-0" --wait=true >/dev/null
until_ok 60 $K wait --for=condition=ready "pod/$REL-0" --timeout=5s >/dev/null 2>&1 || fail "$REL-0 not ready again"
PORT[0]=$(forward "k3d-$A" "$REL-0")
AFTER=$(curl -sf "localhost:${PORT[0]}/api/v1/node" | jq -r .device_id)
[ "$BEFORE" = "$AFTER" ] || fail "device_id changed after restart ($BEFORE -> $AFTER)"
echo "OK: device_id stable across pod deletion"

install "$A" "$REL" 5
$K rollout status statefulset/$REL --timeout=180s
until_ok 60 peers_are "${PORT[0]}" 4 || fail "$REL-0 did not see the 2 new peers"
install "$A" "$REL" 3
until_ok 60 peers_are "${PORT[0]}" 2 || fail "$REL-0 did not drop the 2 removed peers"
echo "OK: scale 3 -> 5 -> 3"

for i in 0 1 2; do
  n=$($K logs "$REL-$i" | grep -c ' ERROR ' || true)
  [ "$n" -eq 0 ] || { $K logs "$REL-$i" | grep ' ERROR ' >&2; fail "$REL-$i logged $n ERROR lines"; }
done
echo "OK: no ERROR lines"

if [ "${FEDERATION:-1}" = 1 ]; then
  # Two clusters on one Docker network; each gateway is exposed by a NodePort Service on its
  # server node, and the other cluster's gateway dials it as a static peer. The sync transport's
  # ICE host candidates are pod IPs, which the other cluster cannot route to: cross-cluster sync
  # needs a TURN server (irohRelayUrls) reachable from both, given here as $PEAT_TURN if set.
  k3d cluster create "$B" --no-lb --network "$NET" --wait >/dev/null
  k3d image import "$IMAGE" -c "$B" >/dev/null
  ip_of() { docker inspect "k3d-$1-server-0" --format "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}"; }
  GW=(--set gateway.enabled=true --set gateway.service.type=NodePort --set gateway.service.nodePorts.broker=30081 --set gateway.service.nodePorts.sync=31204)
  [ -n "${PEAT_TURN:-}" ] && GW+=(--set "irohRelayUrls=$PEAT_TURN")
  install "$B" bravo 2 "${GW[@]}" --set "gateway.staticPeers[0]=$(ip_of "$A"):30081"
  install "$A" "$REL" 2 "${GW[@]}" --set "gateway.staticPeers[0]=$(ip_of "$B"):30081"
  PA=$(forward "k3d-$A" "$REL-0"); PB=$(forward "k3d-$B" "bravo-peat-mesh-0")
  curl -sf -X PUT "localhost:$PA/api/v1/documents/fed/doc-1" -d '{"from":"alpha"}' >/dev/null
  until_ok 90 sh -c "curl -sf localhost:$PB/api/v1/documents/fed/doc-1 | jq -e '.document.from == \"alpha\"' >/dev/null" \
    || fail "document did not cross from cluster $A to cluster $B"
  echo "OK: federation: a document crossed from one cluster to the other through the gateways"
fi
echo "PASS: all functional checks passed"
