#!/usr/bin/env bash
# `make demo`: a local Kubernetes control plane, the kubetune operator, and a real two-worker CPU
# fine-tune through it (examples/finetune-cpu-smoke.yaml), printed as it goes. Details: docs/demo.md.
#
#   1. e2e/localcluster.sh up       (builds the control plane once, then reuses the cached binaries)
#   2. the FineTuneJob CRD, and a fresh namespace (a previous demo's is deleted first)
#   3. kubetune-operator as a background process watching that namespace (log in the cluster's logs dir)
#   4. kubectl apply -f examples/finetune-cpu-smoke.yaml, then `kubectl get ftj` until Succeeded
#   5. where the adapter and training_summary.json are on this machine, and the loss figures
#
# The operator is stopped at the end; the cluster keeps running so the result can be looked at
# (`e2e/localcluster.sh down` stops it and deletes the volumes). Exit 1 with the operator's and the
# pods' log tails if the job fails or times out.
#
# Environment: KUBETUNE_DEMO_NAMESPACE (kubetune-demo), KUBETUNE_DEMO_TIMEOUT (600 s), and the local
# cluster's own (KUBETUNE_STATE_DIR, KUBETUNE_CACHE_DIR, ports: docs/testing.md).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
cd "$REPO"
export PATH="$REPO/.venv/bin:$PATH"
NS="${KUBETUNE_DEMO_NAMESPACE:-kubetune-demo}"
TIMEOUT="${KUBETUNE_DEMO_TIMEOUT:-600}"
STATE="${KUBETUNE_STATE_DIR:-/tmp/kubetune-cluster}"
EXAMPLE="examples/finetune-cpu-smoke.yaml"
JOB=cpu-smoke
OUTPUTS_MOUNT=/var/lib/kubetune/outputs

step() { printf '\n== %s\n' "$*"; }
elapsed() { printf '%3ds' "$SECONDS"; }
die() { echo "demo: $*" >&2; exit 1; }

[ -x "$REPO/.venv/bin/kubetune-operator" ] || die "no virtualenv with kubetune: run 'make demo' (it runs 'make venv' first)"
[ "$(id -u)" = 0 ] || die "the local cluster needs root (network namespaces, bind mounts); see docs/testing.md"

# --- 1. the cluster ---------------------------------------------------------------------------------
step "local Kubernetes control plane"
if [ ! -x "$("$HERE/cluster/build.sh" bindir)/kube" ]; then
  echo "first run: building etcd, Kubernetes and helm from their Go modules (once; cached in" \
    "${KUBETUNE_CACHE_DIR:-~/.cache/kubetune}; docs/demo.md quotes the time)"
fi
cluster_started=$SECONDS
KUBECONFIG="$("$HERE/localcluster.sh" up | tail -n1)"
export KUBECONFIG
export PATH="$("$HERE/cluster/build.sh" bindir):$PATH"   # kubectl of the same build
cluster_seconds=$((SECONDS - cluster_started))
echo "ready after ${cluster_seconds}s: $(kubectl get nodes --no-headers | awk '{print $1, $2, $5}')"

# --- 2. CRD and namespace ---------------------------------------------------------------------------
step "FineTuneJob CRD and namespace $NS"
kubectl apply --server-side --force-conflicts -f crds/finetunejob.yaml >/dev/null
kubectl wait --for=condition=Established crd/finetunejobs.kubetune.dev --timeout=60s >/dev/null
if kubectl get namespace "$NS" >/dev/null 2>&1; then
  echo "deleting the previous demo's namespace $NS (its job, pods and volumes)"
  kubectl delete namespace "$NS" --wait=true --timeout=180s >/dev/null
fi
kubectl create namespace "$NS" >/dev/null
for _ in $(seq 1 150); do kubectl -n "$NS" get serviceaccount default >/dev/null 2>&1 && break; sleep 0.2; done

# --- 3. the operator --------------------------------------------------------------------------------
step "kubetune operator (a background process watching $NS)"
OPERATOR_LOG="$STATE/logs/demo-operator.log"
PIDFILE="$STATE/demo-operator.pid"
mkdir -p "$(dirname "$OPERATOR_LOG")"
if [ -f "$PIDFILE" ] && grep -qs kubetune-operator "/proc/$(cat "$PIDFILE")/cmdline"; then
  kill "$(cat "$PIDFILE")" 2>/dev/null || true   # a previous demo's operator, interrupted before it stopped it
fi
kubetune-operator --standalone --namespace "$NS" --log-format plain --metrics-port 0 --health-port 0 \
  >"$OPERATOR_LOG" 2>&1 &
operator_pid=$!
echo "$operator_pid" >"$PIDFILE"
stop_operator() {
  if kill -0 "$operator_pid" 2>/dev/null; then
    kill "$operator_pid" 2>/dev/null || true
    wait "$operator_pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}
trap stop_operator EXIT
for _ in $(seq 1 150); do
  grep -q "kubetune-operator watching" "$OPERATOR_LOG" && break
  kill -0 "$operator_pid" 2>/dev/null || { tail -n 30 "$OPERATOR_LOG" >&2; die "the operator exited"; }
  sleep 0.2
done
echo "pid $operator_pid, log $OPERATOR_LOG"

# --- 4. the fine-tune -------------------------------------------------------------------------------
step "kubectl -n $NS apply -f $EXAMPLE"
demo_started=$SECONDS
APPLIED="$STATE/demo-applied"
touch "$APPLIED"
kubectl -n "$NS" apply -f "$EXAMPLE"

failure() {
  echo
  echo "demo: FineTuneJob $JOB did not succeed: $*" >&2
  kubectl -n "$NS" get ftj,pods,jobs,pvc -o wide >&2 || true
  kubectl -n "$NS" get ftj "$JOB" -o jsonpath='{.status.reason}: {.status.message}{"\n"}' >&2 || true
  echo "--- operator log (tail; all of it: $OPERATOR_LOG)" >&2
  tail -n 30 "$OPERATOR_LOG" >&2 || true
  local f
  # This run's pods only (earlier demos' logs are kept under the same namespace name).
  find "$STATE/logs/pods" -path "*/${NS}_*" -name '*.log' -newer "$APPLIED" 2>/dev/null | sort |
    while read -r f; do
      echo "--- ${f#"$STATE"/logs/pods/} (tail)" >&2
      tail -n 15 "$f" >&2
    done
  exit 1
}

step "training (kubectl -n $NS get ftj, while the setup Job makes the data and the two workers train)"
echo "      $(kubectl -n "$NS" get ftj | head -n1)"
last="" setup_done=""
while :; do
  row="$(kubectl -n "$NS" get ftj "$JOB" --no-headers 2>/dev/null || true)"
  if [ -z "$setup_done" ] && [ "$(kubectl -n "$NS" get job cpu-smoke-setup -o jsonpath='{.status.succeeded}' 2>/dev/null)" = 1 ]; then
    setup_done=1
    echo "$(elapsed) setup Job complete: the tiny model and dataset are in claim cpu-smoke-data"
  fi
  # The AGE column changes every second: compare the rows without it.
  if [ -n "$row" ] && [ "${row% *}" != "${last% *}" ]; then
    echo "$(elapsed) $row"
    last="$row"
  fi
  phase="$(kubectl -n "$NS" get ftj "$JOB" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
  [ "$phase" = Succeeded ] && break
  [ "$phase" = Failed ] && failure "phase Failed"
  [ $((SECONDS - demo_started)) -ge "$TIMEOUT" ] && failure "timed out after ${TIMEOUT}s (phase ${phase:-none})"
  sleep 2
done
train_seconds=$((SECONDS - demo_started))

# --- 5. the result ----------------------------------------------------------------------------------
step "result"
output_dir="$(kubectl -n "$NS" get ftj "$JOB" -o jsonpath='{.status.outputs.outputDir}')"
volume="$(kubectl -n "$NS" get pvc "$JOB-outputs" -o jsonpath='{.spec.volumeName}')"
host_root="$(kubectl get pv "$volume" -o jsonpath='{.spec.hostPath.path}')"
result="$host_root/${output_dir#"$OUTPUTS_MOUNT"/}"
[ -f "$result/training_summary.json" ] || failure "no training_summary.json in $result"
echo "outputs: claim $JOB-outputs, $output_dir in the pods; on this machine:"
echo "  $result"
ls -l "$result" | sed 's/^/    /'
python - "$result/training_summary.json" <<'PY'
import json, sys

summary = json.load(open(sys.argv[1]))
history = summary["history"]
print(
    f"loss: {history[0]['loss']:.4f} at step {history[0]['step']} -> {summary['final_train_loss']:.4f} "
    f"at step {summary['steps']} (best {summary['best_train_loss']:.4f})"
)
print(
    f"{summary['world_size']} ranks (gloo), {summary['trained_tokens']} trained tokens, "
    f"{summary['train_seconds']}s in the training loop, adapter: {summary['adapter']}"
)
PY

step "done in ${SECONDS}s (cluster ${cluster_seconds}s, apply to Succeeded ${train_seconds}s)"
cat <<EOF
The operator is stopped; the cluster keeps running. To keep going:
  export KUBECONFIG=$KUBECONFIG PATH=$(dirname "$(command -v kubectl)"):\$PATH
  kubectl -n $NS get ftj,pods,pvc          # the finished job and its volumes
  kubectl -n $NS describe ftj $JOB      # conditions and events
  # the operator again (in another terminal), then run the example once more:
  kubetune-operator --standalone --namespace $NS --log-format plain
  kubectl -n $NS delete -f $EXAMPLE && kubectl -n $NS apply -f $EXAMPLE
  # or simply: make demo   (starts over in a fresh namespace)
  e2e/localcluster.sh down                 # stop everything; this deletes the volumes above
EOF
