"""A route's worker run in this process, through the same ``handle(data, context)`` entry TorchServe calls, with
a stand-in for TorchServe's context built from the route's settings and export folder: no TorchServe, Java or
archive. The fast tests and the in-process benchmarks use it.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.service import Service
from runtime.manifest import Manifest
from serving.archive import model_config
from serving.settings import MODELS, ModelSpec

MODEL_STORE = Path("model_store")


class Context:
    """What the handlers use of TorchServe's ``ts.context.Context``, with its method signatures (a test compares
    them): the model's name, model-config YAML and system properties, and each request's response status and
    headers in the current batch."""

    def __init__(self, model_name: str, model_dir: Path, model_yaml_config: dict, gpu_id: int | None = None,
                 batch_size: int = 1) -> None:
        self.model_name = model_name
        self.model_yaml_config = model_yaml_config
        self._system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id, "batch_size": batch_size}
        self._status: dict[int, tuple[int, str]] = {}
        self._headers: dict[int, dict[str, str]] = {}

    @property
    def system_properties(self) -> dict:
        return self._system_properties

    def new_batch(self) -> None:
        """Forget the previous batch's answers (TorchServe makes a new request processor per batch)."""
        self._status, self._headers = {}, {}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self._status[idx] = (code, phrase)

    def get_response_status(self, idx: int) -> tuple[int, str]:
        return self._status.get(idx, (200, None))

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self._headers.setdefault(idx, {})[key] = value

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self._headers.get(idx, {})

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)


@dataclass
class Reply:
    """One request's answer: HTTP status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class InProcessWorker:
    """The worker of ``route`` (a key of MODELS, or any name with ``spec``) over ``model_store/<export>/``, loaded
    as TorchServe loads it (the initialization call); ``worker(bodies)`` is one batch, one reply per body."""

    def __init__(self, route: str, model_store: Path = MODEL_STORE, spec: ModelSpec | None = None,
                 gpu_id: int | None = None) -> None:
        spec = spec or MODELS[route]
        model_dir = Path(model_store) / spec.export
        config = model_config(spec, Manifest.read(model_dir))
        self.context = Context(route, model_dir, config, gpu_id, spec.batch_size)
        handler = importlib.import_module(f"handlers.{spec.handler.stem}")
        self.service = Service(handler.plan)  # a worker of its own, not the module's shared ``handle``
        self.service(None, self.context)

    @property
    def worker(self) -> Any:
        """The loaded ``handlers.service.Worker`` (backend, device, decoder, ...)."""
        return self.service.worker

    def __call__(self, bodies: list[bytes | str | dict]) -> list[Reply]:
        data = [{"body": json.dumps(b).encode() if isinstance(b, dict) else b} for b in bodies]
        self.context.new_batch()
        answers = self.service(data, self.context)
        replies = []
        for i, answer in enumerate(answers):
            headers = {k.lower(): str(v) for k, v in self.context.get_response_headers(i).items()}
            body = answer.encode() if isinstance(answer, str) else answer
            replies.append(Reply(self.context.get_response_status(i)[0], headers, body))
        return replies
