#!/usr/bin/env bash
# Create .venv and install SmartEdit (server side + client + REST gateway + test tools) into it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is the CPU build these machines carry; an unpinned torch pulled in
# by diffusers would fetch the newest CUDA build (several GB) instead.
.venv/bin/python -m pip install -q "torch==${SMARTEDIT_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e "./client[loadtest]" -e ./gateway -e ".[local-server,test,eval]"
# No helm, Chromium or wheelhouse here: the demo needs none of them. The tests' tools come from
# scripts/install-test-tools.sh (scripts/test.sh runs it).
echo "SmartEdit is installed in .venv"
