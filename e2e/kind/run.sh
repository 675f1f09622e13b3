#!/usr/bin/env bash
# End-to-end on kind, for hosts with Docker (a workstation, GitHub Actions): build the operator
# and runtime images with the project's own build (images/build.sh: mmdebstrap + buildah, the same
# one `make images` runs; no Docker involved), load their OCI archives into a kind cluster, install
# the Helm chart, apply the CPU smoke FineTuneJob and wait for it to succeed. The development
# machines of this project have no Docker engine for kind, so this runs in CI
# (e2e/kind/github-workflow.yaml) and by hand, not in `make test`; `make test` covers the same path
# on the local process cluster (tests/e2e/test_helm_install.py).
#
#   e2e/kind/run.sh            create (or reuse) the cluster, run, keep the cluster
#   e2e/kind/run.sh down       delete the cluster
#
# Needs on PATH: docker (for kind's nodes), kind (>= v0.27), kubectl, helm (v3.14+ or v4); for
# images/build.sh: root or sudo, buildah, mmdebstrap, and a Python 3.11 with pip (PYTHON).
# Environment (all optional):
#   KIND_CLUSTER_NAME   cluster name                           (kubetune-e2e)
#   KIND_NODE_IMAGE     kindest/node image to create it with   (kind's default)
#   NAMESPACE           where the chart is installed           (kubetune-system)
#   JOB_NAMESPACE       where the smoke job runs               (default)
#   TIMEOUT             wait for Succeeded                     (20m)
#   ARTIFACTS           directory for diagnostics on failure   (./kind-e2e-artifacts)
#   KUBETUNE_CACHE_DIR  where images/build.sh keeps its archives ($HOME/.cache/kubetune of root)
#   PYTHON              the Python 3.11 images/build.sh downloads the wheelhouse with (.venv/bin/python)
#   SUDO                how images/build.sh gets root (sudo; empty when already root)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CLUSTER="${KIND_CLUSTER_NAME:-kubetune-e2e}"
NAMESPACE="${NAMESPACE:-kubetune-system}"
JOB_NAMESPACE="${JOB_NAMESPACE:-default}"
TIMEOUT="${TIMEOUT:-20m}"
ARTIFACTS="${ARTIFACTS:-$PWD/kind-e2e-artifacts}"
EXAMPLE="$REPO/examples/finetune-cpu-smoke.yaml"
# The images are built under the names the chart and the example use by default, so nothing has to
# be overridden and kind never tries to pull them (non-latest tags are pulled only when missing).
APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$REPO/helm/kubetune/Chart.yaml")"
OPERATOR_IMAGE="ghcr.io/kubetune/operator:$APP_VERSION"
RUNTIME_IMAGE="ghcr.io/kubetune/runtime:$APP_VERSION"  # one image for CPU and GPU nodes

log() { printf '\n== %s\n' "$*" >&2; }

need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "e2e/kind/run.sh: missing on PATH: ${missing[*]} (see the header of this script)" >&2
    exit 2
  fi
}

diagnostics() {
  log "diagnostics -> $ARTIFACTS"
  mkdir -p "$ARTIFACTS"
  kubectl get ftj,statefulsets,pods,pvc,events -A -o wide >"$ARTIFACTS/objects.txt" 2>&1 || true
  kubectl get ftj -A -o yaml >"$ARTIFACTS/finetunejobs.yaml" 2>&1 || true
  kubectl -n "$NAMESPACE" logs deployment/kubetune --all-containers --tail=-1 >"$ARTIFACTS/operator.log" 2>&1 || true
  local pod
  for pod in $(kubectl -n "$JOB_NAMESPACE" get pods -o name 2>/dev/null); do
    kubectl -n "$JOB_NAMESPACE" logs "$pod" --all-containers --tail=-1 >"$ARTIFACTS/${pod#pod/}.log" 2>&1 || true
    kubectl -n "$JOB_NAMESPACE" logs "$pod" --all-containers --previous --tail=-1 \
      >"$ARTIFACTS/${pod#pod/}.previous.log" 2>/dev/null || true
  done
  kind export logs "$ARTIFACTS/kind" --name "$CLUSTER" >/dev/null 2>&1 || true
  tail -n 50 "$ARTIFACTS/operator.log" >&2 || true
}

if [ "${1:-}" = "down" ]; then
  need kind
  kind delete cluster --name "$CLUSTER"
  exit 0
fi

need docker kind kubectl helm
[ -f "$EXAMPLE" ] || { echo "e2e/kind/run.sh: $EXAMPLE not found" >&2; exit 2; }

log "kind cluster $CLUSTER"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 180s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

log "build images ($OPERATOR_IMAGE, $RUNTIME_IMAGE) with images/build.sh"
cd "$REPO"
# build.sh needs root (mmdebstrap, buildah --isolation chroot); it is a no-op for an archive already built from
# the same inputs. Its archives carry the names the chart and the example use by default
# (org.opencontainers.image.ref.name), so nothing is overridden and kind never tries to pull them.
build() {
  ${SUDO-sudo} env "PATH=$PATH" ${KUBETUNE_CACHE_DIR:+"KUBETUNE_CACHE_DIR=$KUBETUNE_CACHE_DIR"} \
    ${PYTHON:+"PYTHON=$PYTHON"} images/build.sh "$1" | tail -1
}
operator_archive="$(build operator)"
runtime_archive="$(build runtime)"
for pair in "$operator_archive=$OPERATOR_IMAGE" "$runtime_archive=$RUNTIME_IMAGE"; do
  # build.sh tags pyproject.toml's version; the chart's appVersion must be the same
  index="$(tar --occurrence=1 -xOf "${pair%%=*}" index.json)"
  case "$index" in
    *"\"org.opencontainers.image.ref.name\":\"${pair#*=}\""*) ;;
    *) echo "e2e/kind/run.sh: ${pair%%=*} is not tagged ${pair#*=}: $index" >&2; exit 2 ;;
  esac
done
# Every image the example names must be one of the two loaded here.
while read -r image; do
  if [ -n "$image" ] && [ "$image" != "$RUNTIME_IMAGE" ] && [ "$image" != "$OPERATOR_IMAGE" ]; then
    echo "e2e/kind/run.sh: $EXAMPLE names $image, which images/build.sh does not build" >&2
    exit 2
  fi
done < <(sed -n 's/^ *image: *\([^ ]*\).*/\1/p' "$EXAMPLE" | sort -u)

log "load images into kind: $operator_archive $runtime_archive"
kind load image-archive "$operator_archive" --name "$CLUSTER"
kind load image-archive "$runtime_archive" --name "$CLUSTER"

on_exit() {
  local status=$?
  [ "$status" -eq 0 ] || diagnostics
  exit "$status"
}
trap on_exit EXIT

log "helm install"
helm lint helm/kubetune
helm upgrade --install kubetune helm/kubetune \
  --namespace "$NAMESPACE" --create-namespace \
  --wait --timeout 5m
kubectl -n "$NAMESPACE" rollout status deployment/kubetune --timeout=180s

log "the webhook refuses a bad config with its key path"
bad_job() {
  kubectl -n "$JOB_NAMESPACE" apply -f - 2>&1 <<'YAML' || true
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata:
  name: kind-e2e-bad-config
spec:
  workers: 1
  config:
    base_model: /data/model
    datasets:
      - path: /data/data/train.jsonl
        type: alpacca          # misspelt on purpose: the webhook must name this key
    sequence_len: 128
    adapter: lora
    lora_r: 8
    lora_alpha: 16
    lora_target_modules: [q_proj, v_proj]
    micro_batch_size: 1
    max_steps: 1
    learning_rate: 0.001
YAML
}
# The webhook may still be starting: retry while the API server cannot reach it.
for _ in $(seq 30); do
  bad_output="$(bad_job)"
  case "$bad_output" in *"failed calling webhook"*) sleep 2 ;; *) break ;; esac
done
echo "$bad_output" >&2
case "$bad_output" in
  *"denied the request"*"datasets[0].type"*) ;;
  *) echo "e2e/kind/run.sh: the webhook did not refuse the bad job with its key path" >&2; exit 1 ;;
esac

log "apply $EXAMPLE"
applied="$(kubectl -n "$JOB_NAMESPACE" apply -f "$EXAMPLE" -o name)"
echo "$applied"
job="$(echo "$applied" | sed -n 's#^finetunejob[^/]*/##p' | head -n1)"
[ -n "$job" ] || { echo "e2e/kind/run.sh: $EXAMPLE holds no FineTuneJob" >&2; exit 1; }

log "wait for FineTuneJob/$job to succeed (timeout $TIMEOUT)"
# Print progress while waiting, so the CI log shows the run.
( while sleep 15; do kubectl -n "$JOB_NAMESPACE" get ftj "$job" --no-headers 2>/dev/null || true; done ) &
watcher=$!
if ! kubectl -n "$JOB_NAMESPACE" wait "ftj/$job" --for=jsonpath='{.status.phase}'=Succeeded --timeout="$TIMEOUT"; then
  kill "$watcher" 2>/dev/null || true
  kubectl -n "$JOB_NAMESPACE" get ftj "$job" -o yaml >&2 || true
  echo "e2e/kind/run.sh: FineTuneJob/$job did not succeed" >&2
  exit 1
fi
kill "$watcher" 2>/dev/null || true
kubectl -n "$JOB_NAMESPACE" get ftj "$job" -o wide
kubectl -n "$JOB_NAMESPACE" get ftj "$job" -o jsonpath='{.status.progress}{"\n"}'

log "the operator was refused nothing (the chart's RBAC covers its calls)"
if kubectl -n "$NAMESPACE" logs deployment/kubetune --tail=-1 | grep -E "Forbidden|forbidden" >&2; then
  echo "e2e/kind/run.sh: the operator's API calls were refused: see the log lines above" >&2
  exit 1
fi
log "kind e2e passed"
