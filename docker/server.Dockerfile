# SmartEdit server image: NGC Triton (TensorRT, ONNX Runtime and Python backends) with SmartEdit's
# Python models, its export tooling and the client installed.
#
#   docker build -f docker/server.Dockerfile -t smartedit-server:0.1.0 .
#
# The Helm chart runs `smartedit serve` from it (and `smartedit export` in its init container);
# docker-compose.yml runs docker/server-entrypoint.sh.

# 24.10 = Triton 2.51, the server version the test suite runs (nvidia-pytriton 0.7.0).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}

# The TensorRT Python API must match the TensorRT inside this Triton image (10.5 in 24.10), or
# the backend refuses the engines `smartedit export --profile tensorrt` builds.
ARG TENSORRT_VERSION=10.5.0
# torch runs the loop's scheduler arithmetic and the ONNX export; this CUDA 12.4 build runs on the
# image's CUDA 12.6 driver stack.
ARG TORCH_VERSION=2.5.1

WORKDIR /opt/smartedit
COPY pyproject.toml README.md ./
COPY client ./client
COPY smartedit ./smartedit
COPY loadtests ./loadtests
COPY docker/server-entrypoint.sh ./docker/server-entrypoint.sh

# Editable so that `smartedit loadtest` finds loadtests/ beside the package (export and serve need only the
# package: the Python models' sources are its data).
RUN python3 -m pip install --no-cache-dir "torch==${TORCH_VERSION}" "tensorrt-cu12==${TENSORRT_VERSION}" \
 && python3 -m pip install --no-cache-dir -e ./client -e . \
 && mkdir -p /models && chown 1000:1000 /models

# What the chart and compose run (smartedit serve, which runs tritonserver; smartedit drain, the preStop)
# must exist here: fail the build, not the rollout.
RUN command -v tritonserver \
 && command -v smartedit \
 && test -x /opt/smartedit/docker/server-entrypoint.sh \
 && python3 -c "import smartedit.export.repository, smartedit_client, tensorrt, diffusers, onnxruntime"

# The NGC image's triton-server user; the chart runs as this uid with a read-only root filesystem.
USER 1000
ENV HOME=/tmp
# Large buffers in their own mappings, given back when freed (why: smartedit/ops/server.py, server_environment).
ENV MALLOC_MMAP_THRESHOLD_=1048576
EXPOSE 8000 8001 8002
ENTRYPOINT ["/opt/smartedit/docker/server-entrypoint.sh"]
