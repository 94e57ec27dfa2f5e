#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine, then lints and runs the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)          # ffprobe: tests and Gradio's video checks
[ -x /usr/bin/chromium ] || missing+=(chromium)                    # the browser test's browser
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
# torch and torchvision pinned as a matching pair (spandrel needs torchvision, whose compiled ops load only with
# the torch they were built for); PyPI's builds run on a machine without a GPU.
"$py" -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
"$py" -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt

"$py" -m ruff check .
"$py" -m ruff format --check .
# Two processes, each running whole files (a file's studio, cluster or browser is started once, in one).
"$py" -m pytest -q -n 2 --dist loadfile "$@"
