#!/usr/bin/env bash
# Gathers, on a machine that reaches PyPI, the wheels a lent GPU machine lacks for bench/gpu_suite.sh, into
# .whl/ (git-ignored; name it in the device tool's `carry`). That machine has Python 3.12 on x86-64 with torch,
# transformers, accelerate, huggingface_hub, safetensors, numpy, pillow, regex, requests and psutil, but not
# diffusers, peft (LoRAs) or ftfy (with wcwidth), and it has no network.
# Install there, offline, with: bash bench/gpu_suite.sh (it installs .whl/*.whl first).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
diffusers_version="$(python3 - <<'PY'
try:
    import diffusers
    print(diffusers.__version__)  # the version the tests ran with
except ImportError:
    print("0.42.1")
PY
)"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "diffusers==${diffusers_version}" "peft>=0.19,<0.22" ftfy wcwidth
ls -la .whl
du -sh .whl
