#!/usr/bin/env bash
# Chromium from the distribution's packages, for the browser editor's test (`pytest -m browser`).
# Playwright drives it (its own browser downloads are not reachable from these machines).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium
