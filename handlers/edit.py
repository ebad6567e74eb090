"""TorchServe handler of ``edit``: move a point from one class toward another.

z = start + strength * (mean_to - mean_from), the attribute vector being the difference of the two classes' means
of the training set's posterior means; strength 0 is the start (for an image, its reconstruction). Request:
``EditRequest`` in openapi.yaml.
"""

from __future__ import annotations

import numpy as np

from handlers.service import Answer, Plan, Service, Worker, images_of

GRID_COLS = 16


def plan(request: dict, worker: Worker) -> Plan:
    start = worker.point(request["start"], "start")
    strengths = request["strength"] if isinstance(request["strength"], list) else [request["strength"]]
    vector = worker.stats.class_direction(worker.class_index(request["from"]), worker.class_index(request["to"]))
    z = start + np.asarray(strengths, np.float64)[:, None] * vector
    return Plan(z, lambda logits: Answer(images_of(logits), min(len(z), GRID_COLS),
                                         fields={"latents": z, "strengths": strengths}))


handle = Service(plan)
