#!/usr/bin/env bash
# Local Kubernetes for tests: etcd + kube-apiserver + kube-controller-manager + kube-scheduler built from Go
# modules (e2e/cluster/build.sh) and a real node: containerd + runc + CNI, kubelet, kube-proxy, CoreDNS
# (e2e/node/build.sh), running the images images/build.sh builds (operator, runtime), imported into containerd
# (docs/testing.md "Real node"). Needs root (network namespaces, mounts, iptables) and the host tools
# scripts/system-deps.sh installs.
#
#   e2e/localcluster.sh up      build what is missing, start (or find running) cluster; last line: kubeconfig path
#   e2e/localcluster.sh down    stop everything, remove pods' namespaces/mounts and the state (not the images)
#   e2e/localcluster.sh env     print `export KUBECONFIG=...` and PATH for kubectl/helm
#   e2e/localcluster.sh build   build (a no-op while cached) the binaries and the images the node imports
#   e2e/localcluster.sh bin     build (if needed) and print the control plane binaries' directory
#   e2e/localcluster.sh status  "ready" (exit 0) or "not ready" (exit 1)
#
# State (certs, etcd data, logs/<component>.log, kubeconfig, containerd's images): ${KUBETUNE_STATE_DIR:-/tmp/kubetune-cluster}
# Binaries: ${KUBETUNE_CACHE_DIR:-~/.cache/kubetune}/{cluster,node}/<hash>/bin; images: .../images/<name>-<hash>/
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PY="${KUBETUNE_PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

# Everything `up` needs, each cached by the hash of its inputs. The images are the ones realnode.py imports
# by default (the runtime image holds this checkout's code, so a change under runtime/ or operator/ rebuilds
# it: images/README.md has the cost); $KUBETUNE_NODE_IMAGES names other archives instead.
build_all() {
  "$REPO/scripts/system-deps.sh" install node
  "$HERE/cluster/build.sh" build >/dev/null
  "$HERE/node/build.sh" build >/dev/null
  if [ -z "${KUBETUNE_NODE_IMAGES+set}" ]; then
    "$REPO/scripts/system-deps.sh" install images
    "$REPO/images/build.sh" operator >/dev/null
    "$REPO/images/build.sh" runtime >/dev/null
  fi
}

case "${1:-}" in
  up)
    build_all
    exec "$PY" "$HERE/cluster/localcluster.py" up --bin-dir "$("$HERE/cluster/build.sh" bindir)" \
      --node-bin-dir "$("$HERE/node/build.sh" bindir)" --python "$PY" "${@:2}"
    ;;
  build)
    build_all
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
    echo "usage: $0 up|down|env|build|bin|status" >&2; exit 2 ;;
esac
