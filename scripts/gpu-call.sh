#!/usr/bin/env bash
# Run on the device machine (see scripts/gpu-wheelhouse.sh): install the carried wheels, put the seed
# configs where the tests look (../shared), run pytest with a log under $OUT that comes back even when
# the call's time limit cuts the run. Keep the whole call inside the 10-minute limit: the GPU tests take
# 60-110 s each on one H200 (4 torchrun launches for the seed overlay tests).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/runtime:$PWD/operator:$PWD" PYTHONUNBUFFERED=1
mkdir -p ../shared && cp -r .whl/shared/seed-configs ../shared/
log="${OUT:-/tmp}/gpu_pytest.log"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } | tee "$log"
if [[ $# -eq 0 ]]; then set -- -m gpu -n 4 tests/gpu; fi
timeout "${GPU_CALL_SECONDS:-560}" python3 -m pytest -v -rs -p no:cacheprovider --timeout 400 "$@" 2>&1 | tee -a "$log"
