"""Handler of ``encode``: images to their posterior means and log-variances (no decoder call).

Request and response: ``EncodeRequest`` and ``EncodeResponse`` in handlers/openapi.yaml.
"""

from __future__ import annotations

import numpy as np

from handlers.service import Answer, Plan, Service, Worker


def plan(request: dict, worker: Worker) -> Plan:
    """Nothing to decode; the answer is (mu, logvar), as json lists or npy (N, 2, latent_dim)."""
    mu, logvar = worker.encode(worker.pixels(request["images"], "images"))
    return Plan(np.zeros((0, worker.shapes.latent_dim)),
                lambda _: Answer(None, array=np.stack([mu, logvar], axis=1), fields={"mu": mu, "logvar": logvar}))


handle = Service(plan)
