"""Where a worker runs: the device TorchServe gives it, the backend it picks for that device from its model
config, and its thread count."""

from __future__ import annotations

import os

import onnxruntime as ort
import torch

from handlers.errors import ConfigError


def worker_threads(setting: str | int, store_workers: int = 1, cpus: int | None = None) -> int:
    """Intra-op threads per worker: "auto" divides the CPUs this process may use among the ``store_workers``
    workers of all models in the store, so that they do not oversubscribe the machine (at least 1)."""
    setting = os.environ.get("FMVAE_WORKER_THREADS", setting)
    if str(setting) != "auto":
        return max(1, int(setting))
    cpus = cpus or len(os.sched_getaffinity(0))
    return max(1, cpus // store_workers)


def runnable(backend: str, device: str) -> bool:
    """Whether this process can run ``backend`` on ``device`` (ONNX on CUDA needs onnxruntime's CUDA provider)."""
    return device == "cpu" or not backend.startswith("onnx") or \
        "CUDAExecutionProvider" in ort.get_available_providers()


def choose_backend(config: dict, part: str, model: str, gpu_id: int | None) -> tuple[str, str]:
    """(backend, device) for ``part`` ("decoder" or "encoder"): the first backend the config names for this
    worker's device kind that it can run. CUDA when TorchServe gave the worker a GPU and torch sees CUDA."""
    device = f"cuda:{gpu_id}" if gpu_id is not None and torch.cuda.is_available() else "cpu"
    kind = device.split(":")[0]
    choices = config.get(part) or {}
    if not choices.get(kind):
        raise ConfigError(f"model {model}: its model config names no {part} for {kind} workers "
                          f"(handler.{part}.{kind} in model-config.yaml; serving/settings.py writes it)")
    for backend in choices[kind]:
        if runnable(backend, device):
            return backend, device
    raise ConfigError(f"model {model}: none of the {part} backends {choices[kind]} can run on {device} here "
                      f"(onnxruntime providers: {ort.get_available_providers()})")
