"""A route's worker run in this process, through the host-neutral entry every host calls (``Service.answer``), built
from the route's settings and export folder: no TorchServe, Java, KServe or archive. The fast tests and the
in-process benchmarks use it.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.service import Service
from runtime.manifest import Manifest
from serving.settings import MODELS, ModelSpec
from serving.torchserve.archive import model_config

MODEL_STORE = Path("model_store")


@dataclass
class Reply:
    """One request's answer: HTTP status, headers (lower-case names, the content type among them) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def load_service(route: str, model_store: Path, spec: ModelSpec, gpu_id: int | None = None,
                 store_workers: int | None = None) -> Service:
    """The loaded handler of ``route`` served as ``spec`` says, over ``model_store/<export>/``; ``store_workers``
    overrides how many workers share the CPUs (a host that serves every route in one process has one)."""
    model_dir = Path(model_store) / spec.export
    config = model_config(spec, Manifest.read(model_dir))["handler"]
    if store_workers is not None:
        config = config | {"store_workers": store_workers}
    handler = importlib.import_module(f"handlers.{spec.handler.stem}")
    return Service(handler.plan).load(route, model_dir, config, gpu_id)  # a worker of its own, not ``handle``'s


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
        answers = self.service.answer([json.dumps(b).encode() if isinstance(b, dict) else b for b in bodies])
        return [Reply(a.status, {k.lower(): v for k, v in a.headers.items()} | {"content-type": a.content_type},
                      a.body) for a in answers]
