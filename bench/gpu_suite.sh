#!/usr/bin/env bash
# The GPU benchmark on a lent GPU machine, in one command: install the wheels it lacks from .whl/ (gathered
# beforehand by scripts/gpu_wheels.sh; no network there), then run bench/gpu_suite.py inside its time budget.
# The JSON and the log go to $OUT when it is set (the device tool brings that folder back), else bench/results/.
# Extra arguments go to gpu_suite.py (e.g. --budget-s 420, --tiny).
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wan-site .whl/*.whl \
    || { echo "installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/wan-site${PYTHONPATH:+:$PYTHONPATH}"
fi
out="${OUT:-bench/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null | tee "$out/gpu.txt"
PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 "$python" bench/gpu_suite.py --json "$out/gpu_suite.json" "$@" 2>&1 | tee "$out/gpu_suite.log"
exit "${PIPESTATUS[0]}"
