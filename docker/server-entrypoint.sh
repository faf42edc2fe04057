#!/bin/sh
# Start SmartEdit on one machine (docker-compose.yml): export the model repository on first start,
# then run tritonserver in the foreground on all interfaces of the container.
#
#   SMARTEDIT_MODEL    diffusers inpainting folder or hub id (default: the embedded tiny model)
#   SMARTEDIT_PROFILE  tensorrt | onnx-gpu | onnx-cpu (default onnx-gpu)
#   SMARTEDIT_EXIT_TIMEOUT_SECONDS  how long in-flight edits may drain on stop (default 300)
#   SMARTEDIT_ADMIN_KEY  the key of Triton's admin APIs (default: a random one kept beside the repository)
#   SMARTEDIT_NO_RESTRICT=1  leave the admin APIs open
# Extra arguments go to tritonserver.
set -eu
REPOSITORY=${SMARTEDIT_MODEL_REPOSITORY:-/models/model_repository}
if [ ! -d "$REPOSITORY/inpaint" ]; then
  echo "server-entrypoint: exporting ${SMARTEDIT_MODEL:-the embedded tiny model} to $REPOSITORY (${SMARTEDIT_PROFILE:-onnx-gpu})"
  cd "$(dirname "$REPOSITORY")"
  smartedit export --profile "${SMARTEDIT_PROFILE:-onnx-gpu}" ${SMARTEDIT_MODEL:+--model "$SMARTEDIT_MODEL"} --out "$REPOSITORY"
fi
# Admin APIs (shared memory, model repository/config, statistics, trace, logging) behind a key, as
# `smartedit serve` and the chart do: HTTP header smartedit-admin-key, gRPC triton-grpc-protocol-smartedit-admin-key.
if [ "${SMARTEDIT_NO_RESTRICT:-0}" != 1 ]; then
  if [ -z "${SMARTEDIT_ADMIN_KEY:-}" ]; then
    KEY_FILE="$(dirname "$REPOSITORY")/admin-key"
    [ -s "$KEY_FILE" ] || (umask 077 && head -c 60 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$KEY_FILE")
    SMARTEDIT_ADMIN_KEY=$(cat "$KEY_FILE")
    echo "server-entrypoint: Triton's admin APIs need the key in $KEY_FILE"
  fi
  APIS=shared-memory,model-config,model-repository,statistics,trace,logging
  set -- "--grpc-restricted-protocol=$APIS:smartedit-admin-key=$SMARTEDIT_ADMIN_KEY" \
    "--http-restricted-api=$APIS:smartedit-admin-key=$SMARTEDIT_ADMIN_KEY" "$@"
fi
exec tritonserver \
  --model-repository="$REPOSITORY" \
  --allow-metrics=true \
  --strict-readiness=true \
  --exit-timeout-secs="${SMARTEDIT_EXIT_TIMEOUT_SECONDS:-300}" \
  --backend-config=python,shm-default-byte-size=16777216 \
  --grpc-infer-allocation-pool-size=0 \
  "$@"
