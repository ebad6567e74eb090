"""Where a worker runs: the device its host gives it (a ``Placement``), the backend it picks for that device from
its model config (skipping, with a log line, backends whose artifact or runtime provider is missing; env
FMVAE_CPU_DECODER names a decoder a CPU worker tries first), its thread count, and whether it captures CUDA
graphs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from handlers.config import WorkerConfig
from handlers.errors import ConfigError
from runtime.artifacts import DECODERS, ENCODERS, Backend
from runtime.backends import RUNTIMES, TORCH_MISSING, GraphCapture, cuda_capture, torch
from runtime.cpus import available_cpus

LOG = logging.getLogger("fmvae.worker")
ARTIFACTS = {"decoder": DECODERS, "encoder": ENCODERS}
CPU_DECODER = "FMVAE_CPU_DECODER"  # env: a decoder backend CPU workers try before their model config's


@dataclass(frozen=True)
class Placement:
    """A worker's device: ``name`` as answers and metrics report it ("cpu", "cuda:0"), the device its tensors live
    on, and how it captures CUDA graphs (None: it does not)."""

    name: str
    device: str
    graph_capture: GraphCapture | None = None

    @property
    def kind(self) -> str:
        """"cpu" or "cuda": the key of the model config's backend lists."""
        return self.name.split(":")[0]


CPU = Placement("cpu", "cpu")


def cuda_devices() -> int:
    """How many CUDA devices torch sees here (0 without torch or CUDA)."""
    return torch.cuda.device_count() if torch is not None and torch.cuda.is_available() else 0


def placement(gpu_id: int | None) -> Placement:
    """CUDA device ``gpu_id`` when the host gave the worker a GPU and torch sees CUDA, else the CPU."""
    if gpu_id is not None and torch is not None and torch.cuda.is_available():
        return Placement(f"cuda:{gpu_id}", f"cuda:{gpu_id}", cuda_capture)
    if gpu_id is not None:
        LOG.warning("given GPU %s, but %s: running on the CPU", gpu_id, TORCH_MISSING or "torch sees no CUDA device")
    return CPU


def worker_threads(setting: str | int, store_workers: int = 1, cpus: int | None = None, kind: str = "cpu") -> int:
    """Intra-op threads per worker: "auto" divides the CPUs this process may use among the ``store_workers``
    workers of all models in the store, so that they do not oversubscribe the machine (at least 1); a CUDA worker
    gets 1 (its CPU threads only feed the GPU). Env FMVAE_WORKER_THREADS overrides the setting."""
    setting = os.environ.get("FMVAE_WORKER_THREADS", setting)
    if str(setting) != "auto":
        return max(1, int(setting))
    if kind == "cuda":
        return 1
    cpus = cpus or available_cpus()
    return max(1, cpus // store_workers)


def runnable(backend: Backend, device: str) -> str | None:
    """Why this process cannot run ``backend`` on ``device``, or None when it can: the backend is meant for another
    kind of device, or its runtime cannot run there (``runtime/backends.py``, ``RUNTIMES``)."""
    kind = device.split(":")[0]
    if kind not in backend.devices:
        return f"it runs on {' and '.join(backend.devices)} only"
    return RUNTIMES[backend.runtime].unavailable(kind)


def choose_backend(config: WorkerConfig, part: str, model: str, where: Placement, model_dir: Path,
                   log: Callable[..., None] = LOG.warning) -> str:
    """The first backend the model config names for ``part`` ("decoder" or "encoder") on this device kind whose
    artifact is in ``model_dir`` and that this process can run; each one skipped is logged with the reason. A CPU
    worker's decoder tries env FMVAE_CPU_DECODER's backend first, when set."""
    choices = getattr(config, part).get(where.kind)
    if not choices:
        raise ConfigError(f"model {model}: its worker config names no {part} for {where.kind} workers "
                          f"(WorkerConfig.{part}; serving/settings.py builds it)")
    first = os.environ.get(CPU_DECODER) if (part, where.kind) == ("decoder", "cpu") else None
    if first:
        choices = [first, *(b for b in choices if b != first)]
    reasons = []
    for backend in choices:
        record = ARTIFACTS[part].get(backend)
        reason = (f"unknown backend {backend}" if record is None
                  else f"{record.artifact} is not in the archive" if not (model_dir / record.artifact).is_file()
                  else runnable(record, where.name))
        if reason is None:
            return backend
        log("model %s: %s %s skipped on %s: %s", model, part, backend, where.name, reason)
        reasons.append(f"{backend}: {reason}")
    raise ConfigError(f"model {model}: none of the {part} backends can run on {where.name} here ({'; '.join(reasons)})")
