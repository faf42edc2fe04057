#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up .venv and the test tools, then the three groups.
#   1. the default group (`pytest -q`): unit, functional against a real tritonserver, gateway, chart,
#      Locust smoke;
#   2. `-m restart`: model processes and tritonserver killed under `smartedit serve`;
#   3. `-m browser`: the editor and the API docs pages in a real headless Chromium.
# Exits non-zero if any group fails or cannot run (a tool that cannot be installed included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-test-tools.sh
# A new order each run (modules shuffled, and the tests within each): no test may rely on what an
# earlier one left behind. The seed is printed; SMARTEDIT_TEST_SEED=<seed> repeats that order.
seed=${SMARTEDIT_TEST_SEED:-$RANDOM}
echo "test order: --random-order-seed=$seed (SMARTEDIT_TEST_SEED=$seed repeats it)"
order=(--random-order-bucket=module --random-order-seed="$seed")
status=0
.venv/bin/python -m pytest -q "${order[@]}" "$@" || status=1
.venv/bin/python -m pytest -q -m restart "${order[@]}" "$@" || status=1
.venv/bin/python -m pytest -q -m browser "${order[@]}" "$@" || status=1
exit $status
