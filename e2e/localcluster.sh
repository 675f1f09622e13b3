#!/usr/bin/env bash
# Local Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager +
# kube-scheduler built from Go modules (e2e/cluster/build.sh) and a node agent that runs pods as
# processes (e2e/nodeagent), or with KUBETUNE_NODE=kubelet a real node: containerd, kubelet, kube-proxy,
# CoreDNS (e2e/node/build.sh; docs/testing.md "Real node"). Needs root (network namespaces, bind mounts),
# iproute2, util-linux.
#
#   e2e/localcluster.sh up      start (or find running) cluster; last line: kubeconfig path
#   e2e/localcluster.sh down    stop everything, remove pods' namespaces/mounts and the state
#   e2e/localcluster.sh env     print `export KUBECONFIG=...` and PATH for kubectl/helm
#   e2e/localcluster.sh bin     build (if needed) and print the binaries' directory
#   e2e/localcluster.sh status  "ready" (exit 0) or "not ready" (exit 1)
#
# State (certs, etcd data, logs/<component>.log, kubeconfig): ${KUBETUNE_STATE_DIR:-/tmp/kubetune-cluster}
# Binaries: ${KUBETUNE_CACHE_DIR:-~/.cache/kubetune}/cluster/<hash>/bin
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PY="${KUBETUNE_PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

need_tools() {  # fresh machines without iproute2 / util-linux: install them (root with apt-get only)
  if [ "${KUBETUNE_NODE:-agent}" = kubelet ]; then
    "$REPO/scripts/system-deps.sh" install node
  else
    "$REPO/scripts/system-deps.sh"
  fi
}

case "${1:-}" in
  up)
    need_tools
    BIN="$("$HERE/cluster/build.sh" build | tail -n1)"
    NODE_ARGS=()
    if [ "${KUBETUNE_NODE:-agent}" = kubelet ]; then
      NODE_ARGS=(--node-bin-dir "$("$HERE/node/build.sh" build | tail -n1)")
    fi
    exec "$PY" "$HERE/cluster/localcluster.py" up --bin-dir "$BIN" "${NODE_ARGS[@]}" --python "$PY" "${@:2}"
    ;;
  down|status)
    exec "$PY" "$HERE/cluster/localcluster.py" "$1"
    ;;
  env)
    "$PY" "$HERE/cluster/localcluster.py" env
    echo "export PATH=$("$HERE/cluster/build.sh" bindir):\$PATH"
    ;;
  bin)
    "$HERE/cluster/build.sh" build | tail -n1
    ;;
  *)
    echo "usage: $0 up|down|env|bin|status" >&2; exit 2 ;;
esac
