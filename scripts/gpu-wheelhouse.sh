#!/usr/bin/env bash
# The wheels a GPU call carries (the device image has torch, transformers, peft and accelerate, but not
# these), for its Python 3.12, into .whl/ (git-ignored), plus the seed configs the tests read as ../shared.
#   scripts/gpu-wheelhouse.sh            then, in the device call (carry: [".whl"]):
#   bash scripts/gpu-call.sh [pytest args]   (default: -m gpu tests/gpu)
# Versions are the ones constraints.txt and images/runtime/constraints-cuda.txt pin.
set -euo pipefail
cd "$(dirname "$0")/.."
# a pin as constraints.txt writes it ("-" and "_" alike); empty when there is none
pin() { grep -h -i -E "^${1//-/[-_]}==" constraints.txt images/runtime/constraints-cuda.txt | head -1 || true; }
mkdir -p .whl/shared
python=".venv/bin/python"
names=(pydantic pydantic-core annotated-types typing-inspection datasets dill multiprocess bitsandbytes
  liger-kernel hjson torchao trl)
specs=()
for name in "${names[@]}"; do
  spec="$(pin "$name")"
  [[ -n "$spec" ]] || { echo "no pin for $name in constraints.txt" >&2; exit 1; }
  specs+=("$spec")
done
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "${specs[@]}"
# the test runner's parallel workers (the device image has pytest and pytest-timeout, not xdist): one
# device call runs the GPU tests four at a time, the torchrun ones included (--standalone picks free ports)
"$python" -m pip download --quiet --no-deps --only-binary=:all: -d .whl pytest-xdist==3.8.0 execnet==2.1.2
# deepspeed publishes no wheel: build its pure-Python one here (DS_BUILD_OPS=0 compiles nothing)
if ! ls .whl/deepspeed-*.whl >/dev/null 2>&1; then
  DS_BUILD_OPS=0 "$python" -m pip wheel --quiet --no-deps -w .whl "$(pin deepspeed)"
fi
rm -rf .whl/shared/seed-configs && cp -r ../shared/seed-configs .whl/shared/
du -sh .whl
