# syntax=docker/dockerfile:1
# The fmvae service: TorchServe 0.12 serving archives built from the committed model_store/export*/, GPU by default.
#   GPU image: docker build -t fmvae .                      (torch 2.13.0 from PyPI: its Linux build is CUDA 13)
#   CPU image: docker build -t fmvae:cpu --build-arg KIND=cpu .   (torch 2.13.0+cpu from PyTorch's CPU index)
# Installs are hash-checked against deploy/requirements-serve.lock (and, for the CPU image, requirements-cpu.lock);
# the GPU image's torch and onnxruntime-gpu come by exact pin (their CUDA wheels are not hashed here: make lock).
#   Without Docker: make image / make image-cpu (buildah, deploy/image.py), which can also take the CPU wheel from
#   deploy/wheels/ instead of an index.
# The GPU image runs on CPU-only hosts too: the handlers fall back to the CPU backends.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG KIND=gpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY deploy/requirements-serve.lock deploy/requirements-cpu.lock /tmp/lock/
COPY deploy/wheels/ /tmp/wheels/
RUN if [ "${KIND}" = cpu ]; then \
        pip install --require-hashes --no-deps --find-links /tmp/wheels --extra-index-url "${TORCH_INDEX}" \
            -r /tmp/lock/requirements-cpu.lock; \
    else \
        pip install torch==2.13.0 onnxruntime-gpu==1.31.1; \
    fi \
    && pip install --require-hashes --no-deps -r /tmp/lock/requirements-serve.lock \
    && find /opt/venv/lib -path '*/site-packages/nvidia/*/lib' -type d | sort > /opt/venv/nvidia-libs.conf
# The TorchServe archives are build outputs: made here from the committed artifacts and the worker code.
WORKDIR /src
COPY handlers/ handlers/
COPY runtime/ runtime/
COPY serving/ serving/
COPY model_store/export/ model_store/export/
COPY model_store/export-2d/ model_store/export-2d/
RUN python -m serving.archive --store model_store --out /opt/model_store

FROM ${PYTHON_IMAGE} AS runtime
# Java 17 runs TorchServe's frontend. Debian's security updates move the exact version: not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 fmvae \
    && install -d -o fmvae -g fmvae /home/fmvae/run /home/fmvae/logs
COPY --from=build /opt/venv /opt/venv
# ONNX Runtime's CUDA provider links the CUDA libraries of the nvidia-* wheels (libcublasLt.so.13, ...), which
# are not on the loader's path: add their folders (none in the CPU image).
RUN ln -s /opt/venv/nvidia-libs.conf /etc/ld.so.conf.d/fmvae-nvidia-wheels.conf && ldconfig
WORKDIR /app
# The launcher (serving/) and what it shares with the workers (runtime/); the worker code is in the archives.
COPY runtime/ runtime/
COPY serving/ serving/
COPY --from=build /opt/model_store/ model_store/
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001
# 8080 inference (public). Inside the container network only: 8082 TorchServe metrics, 8083 handler metrics.
# 8081 management listens on the container's loopback and cannot be published.
EXPOSE 8080 8082 8083
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serving.health", "--work-dir", "/home/fmvae/run"]
ENTRYPOINT ["python", "-m", "serving"]
CMD ["--host", "0.0.0.0", "--metrics-host", "0.0.0.0", "--token-auth", "--token-expiration-min", "1440", \
     "--work-dir", "/home/fmvae/run", "--log-dir", "/home/fmvae/logs", "--model-store", "model_store", \
     "--no-explorer"]
