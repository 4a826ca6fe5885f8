# syntax=docker/dockerfile:1
#
# The iBRNet prediction service. Two targets:
#   docker build -t ibrnet-service:cpu .                  # `cpu`, the default (the last stage)
#   docker build --target gpu -t ibrnet-service:gpu .     # CUDA runtime + onnxruntime-gpu
#   docker run --rm -p 8000:8000 ibrnet-service:cpu
#   docker run --rm --gpus all -p 8000:8000 ibrnet-service:gpu
#
# Neither image contains torch: serving runs ONNX Runtime only (the `train` extra is never
# installed), and each target's last RUN fails the build if torch or the wrong onnxruntime got in.
# CI builds the cpu target with podman and runs it (scripts/container-check.sh: health, a prediction,
# not root, the HEALTHCHECK, the PostgreSQL cache across a restart); tests/deploy/ lints this file
# with hadolint and checks its structure.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# onnxruntime-gpu 1.27 and later are built for CUDA 13 + cuDNN 9 (NVIDIA driver >= 580). For an
# older driver build with CUDA 12 instead (1.26.0 is the last CUDA 12 release):
#   --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 --build-arg ORT_GPU_VERSION=1.26.0
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG ORT_GPU_VERSION=1.31.1

# ---------------------------------------------------------------------------------------------
# build: the project's wheel, the gpu target's requirement list, and the small image tools.
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app/ app/
COPY training/ training/
COPY scripts/requirements_from_pyproject.py scripts/check_image_packages.py scripts/healthcheck.py /dist/tools/
# onnxruntime is left out of the gpu list: onnxruntime-gpu replaces it (see the gpu stage).
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist/wheels . \
    && python /dist/tools/requirements_from_pyproject.py --exclude onnxruntime > /dist/requirements-gpu.txt

# ---------------------------------------------------------------------------------------------
# gpu: NVIDIA's CUDA + cuDNN runtime (Ubuntu 24.04, Python 3.12) and onnxruntime-gpu.
FROM ${CUDA_IMAGE} AS gpu
ARG ORT_GPU_VERSION

# The CUDA base image is the pin that matters; Ubuntu's python3 follows it.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && groupadd --system --gid 10001 ibrnet \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --create-home --home-dir /home/ibrnet ibrnet \
    && mkdir -p /data /opt/ibrnet \
    && chown 10001:10001 /data

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The project's dependencies WITHOUT onnxruntime, then onnxruntime-gpu, then the project itself with
# --no-deps. Never both onnxruntime packages: they share one module and whichever is written last
# wins, so the CUDA provider silently disappears. check_image_packages.py proves it did not happen.
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-cache-dir -r /tmp/dist/requirements-gpu.txt "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && pip install --no-cache-dir --no-deps /tmp/dist/wheels/*.whl \
    && python /tmp/dist/tools/check_image_packages.py \
        --require ibrnet-service onnxruntime-gpu --forbid onnxruntime torch --provider CUDAExecutionProvider \
    && cp /tmp/dist/tools/healthcheck.py /opt/ibrnet/healthcheck.py \
    && rm -rf /tmp/dist

# Models are read-only data owned by root; the SQLite cache (when no PostgreSQL is configured)
# lives in /data, the only folder the service user may write.
COPY models/ /opt/ibrnet/models/
# ONNX Runtime sizes its thread pool from the host's cores, not the container's CPU quota
# (`--cpus`, compose `cpus:`), and the default here counts CPU affinity, which a quota does not
# change either: on a 64-core host with --cpus=2 it would run 64 threads on 2 CPUs. Set
# IBRNET_INTRA_OP_THREADS to the quota (`docker run -e IBRNET_INTRA_OP_THREADS=8 ...`).
# DEVICE=auto uses CUDA when the container sees a GPU; set IBRNET_DEVICE=cuda to refuse a CPU fallback.
ENV IBRNET_MODELS_DIR=/opt/ibrnet/models \
    IBRNET_DATABASE_URL=sqlite:////data/ibrnet.db \
    IBRNET_DEVICE=auto \
    IBRNET_INTRA_OP_THREADS=2

WORKDIR /data
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/ibrnet/healthcheck.py", "http://127.0.0.1:8000/health"]
CMD ["ibrnet", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
# cpu (default): slim Python 3.11 and the CPU onnxruntime wheel. Keep it the LAST stage: a plain
# `docker build .` builds the last stage.
FROM ${PYTHON_IMAGE} AS cpu

RUN python -m venv /opt/venv \
    && groupadd --system --gid 10001 ibrnet \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --create-home --home-dir /home/ibrnet ibrnet \
    && mkdir -p /data /opt/ibrnet \
    && chown 10001:10001 /data

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-cache-dir /tmp/dist/wheels/*.whl \
    && python /tmp/dist/tools/check_image_packages.py \
        --require ibrnet-service onnxruntime --forbid onnxruntime-gpu torch --provider CPUExecutionProvider \
    && cp /tmp/dist/tools/healthcheck.py /opt/ibrnet/healthcheck.py \
    && rm -rf /tmp/dist

COPY models/ /opt/ibrnet/models/
# See the gpu stage: ONNX Runtime would count the host's cores, not the container's CPU quota.
ENV IBRNET_MODELS_DIR=/opt/ibrnet/models \
    IBRNET_DATABASE_URL=sqlite:////data/ibrnet.db \
    IBRNET_DEVICE=cpu \
    IBRNET_INTRA_OP_THREADS=2

WORKDIR /data
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/ibrnet/healthcheck.py", "http://127.0.0.1:8000/health"]
CMD ["ibrnet", "serve", "--host", "0.0.0.0", "--port", "8000"]
