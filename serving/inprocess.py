"""A route's worker run in this process, through the host-neutral entry every host calls (``Service.answer``), built
from the route's settings and export folder: no TorchServe, Java, KServe or archive. The fast tests and the
in-process benchmarks use it.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from handlers.service import Reply, Service
from runtime.manifest import Manifest
from serving.settings import MODELS, ModelSpec, worker_config

MODEL_STORE = Path("model_store")


def load_service(route: str, model_store: Path, spec: ModelSpec, gpu_id: int | None = None,
                 store_workers: int | None = None) -> Service:
    """The loaded handler of ``route`` served as ``spec`` says, over ``model_store/<export>/``; ``store_workers``
    overrides how many workers share the CPUs (a host that serves every route in one process has one)."""
    model_dir = Path(model_store) / spec.export
    config = worker_config(spec, Manifest.read(model_dir), store_workers)
    return service_of(spec.handler.stem).load(route, model_dir, config, gpu_id)


def service_of(operation: str) -> Service:
    """A new ``Service`` of ``operation``'s handler (a worker of its own, not the handler module's ``handle``)."""
    return Service(importlib.import_module(f"handlers.{operation}").plan)


class InProcessWorker:
    """The worker of ``route`` (a key of MODELS, or any name with ``spec``) over ``model_store/<export>/``;
    ``worker(bodies)`` is one batch, one reply per body."""

    def __init__(self, route: str, model_store: Path = MODEL_STORE, spec: ModelSpec | None = None,
                 gpu_id: int | None = None) -> None:
        self.service = load_service(route, model_store, spec or MODELS[route], gpu_id)

    @property
    def worker(self) -> Any:
        """The loaded ``handlers.service.Worker`` (backend, device, decoder, ...)."""
        return self.service.worker

    def __call__(self, bodies: list[bytes | str | dict]) -> list[Reply]:
        return self.service.answer([json.dumps(b).encode() if isinstance(b, dict) else b for b in bodies])
