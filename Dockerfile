# syntax=docker/dockerfile:1
# The fmvae service, one image per host (HOST) and kind (KIND), GPU by default:
#   TorchServe (the design card's host):  docker build -t fmvae .                        (KIND=cpu: --build-arg KIND=cpu)
#   KServe's ModelServer (no Java):       docker build -t fmvae-kserve --build-arg HOST=kserve .
#   KServe's ModelServer over Ray Serve:  docker build -t fmvae-ray --build-arg HOST=ray .   (also a KubeRay pod's)
# GPU images: torch 2.13.0 from PyPI (its Linux build is CUDA 13) and onnxruntime-gpu, by exact pin (their CUDA
# wheels are not hashed here: make lock). CPU images: the host's CPU runtimes, hash-checked against
# deploy/requirements-<host>-cpu.lock (the TorchServe image torch and onnxruntime; the KServe image onnxruntime
# only: its workers run the ONNX backends on the CPU). Then the host's packages, hash-checked against
# deploy/requirements-<host>.lock (the venv's versions).
#   Without Docker: make image / make image-cpu [HOST=kserve] (buildah, deploy/image.py), which can also take the
#   CPU wheel from deploy/wheels/ instead of an index.
# A GPU image runs on CPU-only hosts too: the workers fall back to the CPU backends.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG HOST=torchserve

FROM ${PYTHON_IMAGE} AS build
ARG KIND=gpu
ARG HOST
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY deploy/requirements-${HOST}.lock deploy/requirements-${HOST}-cpu.lock /tmp/lock/
COPY deploy/wheels/ /tmp/wheels/
RUN if [ "${KIND}" = cpu ]; then \
        pip install --require-hashes --no-deps --find-links /tmp/wheels --extra-index-url "${TORCH_INDEX}" \
            -r "/tmp/lock/requirements-${HOST}-cpu.lock"; \
    else \
        pip install torch==2.13.0 onnxruntime-gpu==1.31.1; \
    fi \
    && pip install --require-hashes --no-deps -r "/tmp/lock/requirements-${HOST}.lock" \
    && find /opt/venv/lib -path '*/site-packages/nvidia/*/lib' -type d | sort > /opt/venv/nvidia-libs.conf
# What the host serves: TorchServe archives (build outputs, made here from the committed artifacts and the worker
# code), or the export folders themselves for the KServe host.
WORKDIR /src
COPY handlers/ handlers/
COPY runtime/ runtime/
COPY serving/ serving/
COPY model_store/export/ model_store/export/
COPY model_store/export-2d/ model_store/export-2d/
RUN if [ "${HOST}" = torchserve ]; then \
        python -m serving.torchserve.archive --store model_store --out /opt/model_store; \
    else \
        cp -r model_store /opt/model_store; \
    fi

# Per host: what the runtime needs beyond Python, its ports, health check and command.
FROM ${PYTHON_IMAGE} AS host-torchserve
# Java 17 runs TorchServe's frontend. Debian's security updates move the exact version: not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
# 8080 inference (public). Inside the container network only: 8082 TorchServe metrics, 8083 handler metrics.
# 8081 management listens on the container's loopback and cannot be published.
EXPOSE 8080 8082 8083
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serving.health", "--work-dir", "/home/fmvae/run"]
ENTRYPOINT ["python", "-m", "serving"]
CMD ["--host", "0.0.0.0", "--metrics-host", "0.0.0.0", "--token-auth", "--token-expiration-min", "1440", \
     "--work-dir", "/home/fmvae/run", "--log-dir", "/home/fmvae/logs", "--model-store", "model_store", \
     "--no-explorer"]

FROM ${PYTHON_IMAGE} AS host-kserve
# 8080 inference (public: the API, KServe's health, readiness and v1 predict). 8083 handler metrics (inside the
# container network). One serving process per CPU the container may use, all routes in each.
EXPOSE 8080 8083
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serving.health", "--server", "kserve", "--work-dir", "/home/fmvae/run"]
ENTRYPOINT ["python", "-m", "serving"]
CMD ["--server", "kserve", "--host", "0.0.0.0", "--metrics-host", "0.0.0.0", "--token-auth", \
     "--work-dir", "/home/fmvae/run", "--log-dir", "/home/fmvae/logs", "--export-store", "model_store", \
     "--no-explorer"]

FROM ${PYTHON_IMAGE} AS host-ray
# The KServe host's image with Ray: by default the fronts over a local cluster in the container; in a KubeRay
# cluster the head and worker pods run it with `ray start` and the fronts with --ray-address (deploy/k8s/fmvae-ray.yaml).
EXPOSE 8080 8083
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 \
    CMD ["python", "-m", "serving.health", "--server", "ray", "--work-dir", "/home/fmvae/run"]
ENTRYPOINT ["python", "-m", "serving"]
CMD ["--server", "ray", "--host", "0.0.0.0", "--metrics-host", "0.0.0.0", "--token-auth", \
     "--work-dir", "/home/fmvae/run", "--log-dir", "/home/fmvae/logs", "--export-store", "model_store", \
     "--no-explorer"]

# The chosen host's stage above (hadolint reads it as an untagged image).
# hadolint ignore=DL3006
FROM host-${HOST} AS runtime
RUN useradd --create-home --uid 10001 fmvae \
    && install -d -o fmvae -g fmvae /home/fmvae/run /home/fmvae/logs
COPY --from=build /opt/venv /opt/venv
# ONNX Runtime's CUDA provider links the CUDA libraries of the nvidia-* wheels (libcublasLt.so.13, ...), which
# are not on the loader's path: add their folders (none in the CPU images).
RUN ln -s /opt/venv/nvidia-libs.conf /etc/ld.so.conf.d/fmvae-nvidia-wheels.conf && ldconfig
WORKDIR /app
# The launcher (serving/) and what it shares with the workers (runtime/); TorchServe's worker code is in its
# archives, the KServe host's processes import it from handlers/; the client package, which the launcher and the
# health check call the service with.
COPY handlers/ handlers/
COPY runtime/ runtime/
COPY serving/ serving/
COPY client/fmvae_client/ fmvae_client/
COPY --from=build /opt/model_store/ model_store/
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001
