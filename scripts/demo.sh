#!/usr/bin/env bash
# Set up, then run the end-to-end demo on the embedded tiny model (or --model <folder|hub id>):
# export → tritonserver → one edit through the client SDK → prints the PNG's path.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/smartedit demo "$@"
