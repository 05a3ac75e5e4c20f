#!/bin/bash
# A real single-node Kubernetes v1.20.2 cluster inside a network namespace with no uplink
# (k8s-test-infra.md Appendix C): etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet (dockershim on Debian's docker.io) and kube-proxy (iptables), all started here and
# recorded by PID in STATE_DIR/pids, so `down` stops exactly what `up` started.
#
#   scripts/cluster/cluster.sh up   STATE_DIR NETNS IMAGE_TAR...   # prints nothing; STATE_DIR/env has the details
#   scripts/cluster/cluster.sh down STATE_DIR
#   scripts/cluster/cluster.sh in   STATE_DIR CMD...               # runs CMD in the namespace (KUBECONFIG set)
# Needs root; binaries from scripts/k8s/build-k8s.sh and scripts/cluster/build-node.sh.
set -euo pipefail
CMD=$1; S=$2; shift 2
K8S_BIN=${PEAT_K8S_CACHE:-$HOME/.cache/peat-mesh/k8s-v1.20.2}/bin
NODE_BIN=${PEAT_K8S_NODE_CACHE:-$HOME/.cache/peat-mesh/k8s-node-v1.20.2}/bin
NODE_IP=10.79.0.1

in_ns() { local ns; ns=$(cat "$S/netns"); KUBECONFIG="$S/admin.kubeconfig" nsenter --net="/run/netns/$ns" "$@"; }
bg() { # name argv... : start in the namespace, log to STATE/name.log, record the PID
  local name=$1; shift
  local ns; ns=$(cat "$S/netns")
  nsenter --net="/run/netns/$ns" "$@" >"$S/$name.log" 2>&1 &
  echo "$name $!" >> "$S/pids"
}
wait_for() { # secs what cmd...
  local secs=$1 what=$2; shift 2; local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then echo "cluster: timed out after ${secs}s waiting for $what" >&2; return 1; fi
    sleep 0.2
  done
}

case "$CMD" in
up)
  NS=$1; shift
  mkdir -p "$S"/{pki,etcd,docker/data,docker/exec,kubelet,manifests}
  echo "$NS" > "$S/netns"; : > "$S/pids"
  ip netns add "$NS"; ip -n "$NS" link set lo up
  P="$S/pki"
  (
    cd "$P"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=peat-test-ca 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' "$NODE_IP" > ext.cnf
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 2 -extfile ext.cnf 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout kubelet-client.key -out kubelet-client.csr -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null
    openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out kubelet-client.crt -days 2 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    echo "$(openssl rand -hex 16),admin,admin,system:masters" > tokens.csv
  )
  TOKEN=$(cut -d, -f1 "$P/tokens.csv")
  cat > "$S/admin.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: t2
  cluster: {server: "https://$NODE_IP:6443", certificate-authority: "$P/ca.crt"}
users:
- name: admin
  user: {token: "$TOKEN"}
contexts:
- name: t2
  context: {cluster: t2, user: admin, namespace: default}
current-context: t2
KC
  KC="$S/admin.kubeconfig"
  D="unix://$S/docker.sock"
  bg dockerd dockerd --data-root "$S/docker/data" --exec-root "$S/docker/exec" --pidfile "$S/docker/pid" \
    --host "$D" --bip "$NODE_IP/24" --containerd-namespace "peat-$NS" --containerd-plugins-namespace "peat-$NS-p"
  wait_for 30 dockerd /usr/bin/docker -H "$D" version
  for tar in "$@"; do /usr/bin/docker -H "$D" load -q -i "$tar" >/dev/null; done
  bg etcd etcd --name t2 --data-dir "$S/etcd" --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster t2=http://127.0.0.1:2380 --log-level warn --logger zap
  bg kube-apiserver "$K8S_BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 --bind-address=0.0.0.0 --advertise-address=$NODE_IP \
    --secure-port=6443 --insecure-port=0 --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
    --client-ca-file="$P/ca.crt" --token-auth-file="$P/tokens.csv" --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$P/sa.pub" \
    --service-account-signing-key-file="$P/sa.key" --service-cluster-ip-range=10.0.0.0/24 \
    --kubelet-preferred-address-types=InternalIP --kubelet-client-certificate="$P/kubelet-client.crt" --kubelet-client-key="$P/kubelet-client.key" \
    --cert-dir="$S/apiserver-certs"
  wait_for 60 "kube-apiserver /readyz" in_ns curl -sf --cacert "$P/ca.crt" -H "Authorization: Bearer $TOKEN" "https://$NODE_IP:6443/readyz"
  bg kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig="$KC" --leader-elect=false --bind-address=127.0.0.1 \
    --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" --use-service-account-credentials=false \
    --controllers='*,-nodeipam,-cloud-node-lifecycle,-service,-route,-attachdetach,-csrsigning'
  bg kube-scheduler "$NODE_BIN/kube-scheduler" --kubeconfig="$KC" --leader-elect=false --bind-address=127.0.0.1 --port=0
  bg kubelet "$NODE_BIN/kubelet" --kubeconfig="$KC" --hostname-override=node-1 --node-ip=$NODE_IP --address=$NODE_IP --read-only-port=0 \
    --docker-endpoint="$D" --pod-infra-container-image=k8s.gcr.io/pause:3.2 --network-plugin= \
    --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= --fail-swap-on=false \
    --root-dir="$S/kubelet" --cert-dir="$S/kubelet/pki" --anonymous-auth=false --client-ca-file="$P/ca.crt" \
    --authentication-token-webhook=false --authorization-mode=AlwaysAllow \
    --eviction-hard= --oom-score-adj=0 --image-gc-high-threshold=100 --image-gc-low-threshold=99 --resolv-conf=/etc/resolv.conf \
    --cluster-domain=cluster.local --serialize-image-pulls=false --sync-frequency=5s --node-status-update-frequency=2s
  bg kube-proxy "$NODE_BIN/kube-proxy" --kubeconfig="$KC" --hostname-override=node-1 --proxy-mode=iptables --cluster-cidr=10.79.0.0/24 \
    --bind-address=$NODE_IP --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 --conntrack-max-per-core=0
  wait_for 90 "node-1 Ready" sh -c "KUBECONFIG='$KC' nsenter --net=/run/netns/$NS kubectl get node node-1 -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' 2>/dev/null | grep -qx True"
  ;;
in)
  in_ns "$@"
  ;;
down)
  [ -f "$S/pids" ] || exit 0
  NS=$(cat "$S/netns" 2>/dev/null || true)
  # Control plane first (so nothing restarts pods), then the pods' containers, then dockerd.
  for name in kubelet kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do
    pid=$(awk -v n="$name" '$1==n{print $2}' "$S/pids"); [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for name in kubelet kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do
    pid=$(awk -v n="$name" '$1==n{print $2}' "$S/pids")
    for _ in $(seq 100); do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done
  if [ -S "$S/docker.sock" ]; then
    ids=$(/usr/bin/docker -H "unix://$S/docker.sock" ps -aq 2>/dev/null || true)
    [ -n "$ids" ] && /usr/bin/docker -H "unix://$S/docker.sock" rm -f $ids >/dev/null 2>&1 || true
  fi
  { grep " $S/kubelet" /proc/mounts || true; } | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  pid=$(awk '$1=="dockerd"{print $2}' "$S/pids")
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  { grep " $S/" /proc/mounts || true; } | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  [ -n "$NS" ] && ip netns del "$NS" 2>/dev/null || true
  rm -f "$S/pids"
  ;;
*) echo "usage: cluster.sh up|down|in STATE_DIR ..." >&2; exit 2 ;;
esac
