#!/usr/bin/env bash
# Everything the tests need beyond .venv, fetched once here so that the tests themselves never reach
# the network (they run offline):
#   - helm, for the chart tests (scripts/install-helm.sh: .tools/bin/helm);
#   - Chromium from the distribution, for the browser tests (scripts/install-browser.sh);
#   - a wheelhouse (.tools/wheels) from which the packaging tests install the client and the gateway
#     into fresh virtual environments with `pip install --no-index`.
# Idempotent. Any tool that cannot be fetched fails the script: a test group silently skipped would
# make "passed" say less than it seems.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-helm.sh >/dev/null
bash scripts/install-browser.sh
# The client's and the gateway's dependencies plus the build backend their pyproject.toml names
# (pip builds them from source in an isolated environment).
.venv/bin/python -m pip download -q -d .tools/wheels ./client ./gateway "setuptools>=68"
echo "test tools installed: .tools/bin/helm, chromium, .tools/wheels"
