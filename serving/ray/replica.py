"""A route's Ray Serve replica: the same worker as every host's (``Service.load`` / ``Service.answer``), one batch of
request bodies per call from the front (``answer_many``), on the replica's event loop. ``app`` is a route's
application for a KubeRay RayService (``deploy/k8s/fmvae-ray.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from handlers.config import WorkerConfig
from serving.inprocess import service_of

Answer = tuple[int, str, dict[str, str], bytes]  # status, content type, headers, body


class Route:
    """One route's worker in a replica process (``owner.py`` deploys it)."""

    def __init__(self, route: str, operation: str, export_dir: str, worker: dict) -> None:
        self.service = service_of(operation).load(route, Path(export_dir), WorkerConfig.from_dict(worker))

    async def answer_many(self, bodies: list[bytes | dict]) -> list[Answer]:
        """One decoder call for the batch the front gathered; one answer per body."""
        return [(r.status, r.content_type, r.headers, r.body) for r in self.service.answer(bodies)]


def app(args: dict[str, str]) -> Any:
    """A route's Serve application, built from its name and the export store as a RayService's ``serveConfigV2``
    gives them (``import_path: serving.ray.replica:app``, ``args: {route: sample, export_store: model_store}``);
    the deployment's scaling and resources come from the same entry's ``deployments``."""
    from ray import serve

    from serving.kserve.settings import RouteSettings
    from serving.settings import MODELS

    route = args["route"]
    spec = MODELS[route]
    export_dir = (Path(args.get("export_store", "model_store")) / spec.export).resolve()
    settings = RouteSettings.of(spec, export_dir, 0, 1)
    return serve.deployment(Route, name=route).bind(route, settings.operation, settings.export_dir,
                                                    settings.worker.to_dict())
