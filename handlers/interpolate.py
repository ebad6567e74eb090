"""TorchServe handler of the ``interpolate`` model: a lerp or slerp path between two latents, decoded.

The endpoints come as two seeds (each the first latent of ``sample`` with that seed), two latent vectors, or
two images encoded to their posterior means. Request and response: ``InterpolateRequest`` in openapi.yaml.
"""

from __future__ import annotations

import numpy as np
import torch

from handlers.service import Service, Worker, decode_png
from runtime.latent import interpolate, seeded_latents

GRID_COLS = 16


def endpoints(request: dict, worker: Worker) -> np.ndarray:
    """The two endpoint latents (2, latent_dim) of a validated request."""
    if "seeds" in request:
        return np.stack([seeded_latents(seed, 1, worker.shapes.latent_dim)[0] for seed in request["seeds"]])
    if "latents" in request:
        return np.asarray(request["latents"], dtype=np.float64)
    size = worker.shapes.image_shape[1:]
    images = np.stack([decode_png(text, f"images[{i}]", size) for i, text in enumerate(request["images"])])
    return worker.encode(images)


def interpolate_job(request: dict, worker: Worker) -> tuple[np.ndarray, dict]:
    """The path's latents (steps, latent_dim)."""
    z0, z1 = torch.from_numpy(endpoints(request, worker).astype(np.float64))
    return interpolate(z0, z1, request["steps"], request["method"]).numpy(), {}


handle = Service("interpolate", interpolate_job, lambda n: min(n, GRID_COLS))
