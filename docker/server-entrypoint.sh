#!/bin/sh
# Start SmartEdit on one machine (docker-compose.yml): export the model repository on first start,
# then run `smartedit serve` (tritonserver, supervised) in the foreground on all interfaces.
#
#   SMARTEDIT_MODEL    diffusers SD folder or hub id (inpainting or text-to-image) (default: the embedded tiny model);
#                      several, separated by spaces, each [NAME=]PATH, serve several pipelines (the first also
#                      as the plain `inpaint`)
#   SMARTEDIT_PROFILE  tensorrt | onnx-gpu | onnx-cpu (default onnx-gpu)
#   SMARTEDIT_EXIT_TIMEOUT_SECONDS  how long edits in flight may take to finish on stop (default 300)
#   SMARTEDIT_ADMIN_KEY  the key of Triton's admin APIs (default: a random one kept beside the repository)
#   SMARTEDIT_NO_RESTRICT=1  leave the admin APIs open
# Extra arguments go to smartedit serve (--triton-arg=ARG passes one on to tritonserver).
set -eu
REPOSITORY=${SMARTEDIT_MODEL_REPOSITORY:-/models/model_repository}
if [ ! -d "$REPOSITORY/inpaint" ]; then
  echo "server-entrypoint: exporting ${SMARTEDIT_MODEL:-the embedded tiny model} to $REPOSITORY (${SMARTEDIT_PROFILE:-onnx-gpu})"
  cd "$(dirname "$REPOSITORY")"
  MODELS=""
  for model in ${SMARTEDIT_MODEL:-}; do MODELS="$MODELS --model=$model"; done
  # shellcheck disable=SC2086  # one word per --model=[NAME=]PATH, as SMARTEDIT_MODEL lists them
  smartedit export --profile "${SMARTEDIT_PROFILE:-onnx-gpu}" $MODELS --out "$REPOSITORY"
fi
# Admin APIs (shared memory, model repository/config, statistics, trace, logging) behind a key, as the
# chart does: HTTP header smartedit-admin-key, gRPC triton-grpc-protocol-smartedit-admin-key.
RESTRICT=""
if [ "${SMARTEDIT_NO_RESTRICT:-0}" = 1 ]; then
  RESTRICT="--no-restrict"
elif [ -z "${SMARTEDIT_ADMIN_KEY:-}" ]; then
  KEY_FILE="$(dirname "$REPOSITORY")/admin-key"
  [ -s "$KEY_FILE" ] || (umask 077 && head -c 60 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$KEY_FILE")
  SMARTEDIT_ADMIN_KEY=$(cat "$KEY_FILE")
  export SMARTEDIT_ADMIN_KEY
  echo "server-entrypoint: Triton's admin APIs need the key in $KEY_FILE"
fi
# smartedit serve runs tritonserver: on SIGTERM (docker stop) it drains -- no new edits, every admitted
# one answered -- then stops it; a model process that dies is replaced in seconds.
exec smartedit serve \
  --model-repository="$REPOSITORY" \
  --host=0.0.0.0 \
  --drain-timeout="${SMARTEDIT_EXIT_TIMEOUT_SECONDS:-300}" \
  --work-dir="$(dirname "$REPOSITORY")/.triton" \
  $RESTRICT "$@"
