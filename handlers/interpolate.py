"""Handler of ``interpolate``: a lerp, slerp or constant-norm path between two latents, decoded.

The endpoints come as two seeds (each the first latent of ``sample`` with that seed), two latent vectors, two
images encoded to their posterior means, or two classes' means. Request and response: ``InterpolateRequest`` in
openapi.yaml.
"""

from __future__ import annotations

import numpy as np

from handlers.service import Answer, Plan, Service, Worker, images_of
from runtime.latent import interpolate

GRID_COLS = 16


def endpoints(request: dict, worker: Worker) -> np.ndarray:
    """The two endpoint latents (2, latent_dim) of a validated request."""
    if "seeds" in request:
        return np.stack([worker.prior_latents(seed, 1)[0] for seed in request["seeds"]])
    if "latents" in request:
        return np.asarray(request["latents"], dtype=np.float64)
    if "classes" in request:
        return worker.stats.class_means[[worker.class_index(c) for c in request["classes"]]].astype(np.float64)
    return worker.encode(worker.pixels(request["images"], "images"))[0].astype(np.float64)


def plan(request: dict, worker: Worker) -> Plan:
    """The path's latents (steps, latent_dim); json adds each step's norm and the path's smoothness."""
    path = interpolate(*endpoints(request, worker), request["steps"], request["method"])

    def finish(logits: np.ndarray) -> Answer:
        images = images_of(logits)
        return Answer(images, min(len(images), GRID_COLS), fields={
            "latents": path, "norms": np.linalg.norm(path, axis=1),
            "smoothness": float(np.mean(np.diff(images, axis=0) ** 2))})

    return Plan(path, finish)


handle = Service(plan)
