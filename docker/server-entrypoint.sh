#!/bin/sh
# Start SmartEdit on one machine (docker-compose.yml): export the model repository on first start,
# then run tritonserver in the foreground on all interfaces of the container.
#
#   SMARTEDIT_MODEL    diffusers inpainting folder or hub id (default: the embedded tiny model)
#   SMARTEDIT_PROFILE  tensorrt | onnx-gpu | onnx-cpu (default onnx-gpu)
#   SMARTEDIT_EXIT_TIMEOUT_SECONDS  how long in-flight edits may drain on stop (default 300)
# Extra arguments go to tritonserver.
set -eu
REPOSITORY=${SMARTEDIT_MODEL_REPOSITORY:-/models/model_repository}
if [ ! -d "$REPOSITORY/inpaint" ]; then
  echo "server-entrypoint: exporting ${SMARTEDIT_MODEL:-the embedded tiny model} to $REPOSITORY (${SMARTEDIT_PROFILE:-onnx-gpu})"
  cd "$(dirname "$REPOSITORY")"
  smartedit export --profile "${SMARTEDIT_PROFILE:-onnx-gpu}" ${SMARTEDIT_MODEL:+--model "$SMARTEDIT_MODEL"} --out "$REPOSITORY"
fi
exec tritonserver \
  --model-repository="$REPOSITORY" \
  --allow-metrics=true \
  --strict-readiness=true \
  --exit-timeout-secs="${SMARTEDIT_EXIT_TIMEOUT_SECONDS:-300}" \
  --backend-config=python,shm-default-byte-size=16777216 \
  "$@"
