"""What the KServe host's launcher hands its serving processes: one typed document (``ProcessSettings``), written
as JSON by ``serving/kserve/host.py`` and read back whole by ``serving/kserve/app.py``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from handlers.config import WorkerConfig
from runtime.manifest import Manifest
from serving.settings import ModelSpec, ServerConfig, worker_config

SETTINGS_FILE = "kserve.json"  # the settings document, in the host's control folder (its temp dir)
LIGHT_IMAGES = 4  # a route whose request decodes this many images or fewer by default is light: decode, encode, edit


@dataclass(frozen=True)
class RouteSettings:
    """One route in a serving process: its operation (handler), export folder and worker config, its queue bound
    and batch size (requests per inference call), whether it goes on a GPU when there is one, whether its requests
    are light (``LIGHT_IMAGES`` or fewer images by default: they have an inference thread of their own,
    ``lane.py``), and the generation of its build (``serving/kserve/builds.py``: 1 at start, one more for each
    roll-out)."""

    operation: str
    export_dir: str
    worker: WorkerConfig
    queue_size: int
    batch_size: int
    gpu: bool
    light: bool = False
    generation: int = 1

    def to_dict(self) -> dict:
        return asdict(self) | {"worker": self.worker.to_dict()}

    @classmethod
    def from_dict(cls, document: dict) -> RouteSettings:
        return cls(**document | {"worker": WorkerConfig.from_dict(document["worker"])})

    @classmethod
    def of(cls, spec: ModelSpec, export_dir: Path, batch_size: int, store_workers: int,
           generation: int = 1) -> RouteSettings:
        """A route served as ``spec`` from ``export_dir``; ``batch_size`` 0: the spec's."""
        return cls(spec.handler.stem, str(export_dir), worker_config(spec, Manifest.read(export_dir), store_workers),
                   spec.job_queue_size, batch_size or spec.batch_size, spec.gpu, spec.request_images <= LIGHT_IMAGES,
                   generation)


@dataclass(frozen=True)
class ProcessSettings:
    """Every serving process's settings: its routes, how many processes share the CPUs, the host's control folder
    (the switchboard and roll-out messages, ``serving/kserve/builds.py``), the key file (token auth on) and the
    supervisor's status file, the body limit, the kept-alive connections' idle limit, the access log."""

    routes: dict[str, RouteSettings]
    processes: int
    control_dir: str
    key_file: str | None
    status_file: str | None
    max_request_size: int
    idle_timeout: float
    access_log: bool
    ray_address: str | None = None  # the Ray host's fronts: the cluster whose deployments answer (serving/ray/lane.py)
    ray_calls: int = 2  # the Ray host's fronts: calls in flight per running replica (RayConfig.calls_per_replica)

    @classmethod
    def of(cls, config: ServerConfig, specs: dict[str, ModelSpec], processes: int, control_dir: Path,
           key_file: Path | None, status_file: Path | None, ray_address: str | None = None) -> ProcessSettings:
        """The settings of a host started with ``config``, serving ``specs`` in ``processes`` processes."""
        routes = {route: RouteSettings.of(specs[route], (config.export_store / specs[route].export).resolve(),
                                          config.kserve.batch_size, processes) for route in config.models}
        return cls(routes, processes, str(control_dir), str(key_file) if key_file else None,
                   str(status_file) if status_file else None, config.max_request_size, config.idle_timeout,
                   config.access_log, ray_address, config.ray.calls_per_replica)

    def to_json(self) -> str:
        document = asdict(self)
        document["routes"] = {name: route.to_dict() for name, route in self.routes.items()}
        return json.dumps(document)

    @classmethod
    def from_json(cls, text: str) -> ProcessSettings:
        document = json.loads(text)
        routes = {name: RouteSettings.from_dict(route) for name, route in document.pop("routes").items()}
        return replace(cls(routes=routes, **document))
