"""TorchServe handler of the ``sample`` model: n latents z ~ N(0, temperature^2 I) from a seed, decoded.

Request and response: ``SampleRequest`` in handlers/openapi.yaml. Without a seed, one is drawn and returned.
"""

from __future__ import annotations

import secrets

import numpy as np

from handlers.service import Service, Worker, square_cols
from runtime.latent import seeded_latents


def sample_job(request: dict, worker: Worker) -> tuple[np.ndarray, dict]:
    """Latents of one sample request, and the seed they came from."""
    seed = request["seed"] if "seed" in request else secrets.randbits(63)  # get() would draw one every time
    return seeded_latents(seed, request["n"], worker.shapes.latent_dim, request["temperature"]), {"seed": seed}


handle = Service("sample", sample_job, square_cols)
