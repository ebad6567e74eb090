"""Handler of ``edit``: move a point toward a class.

``"strength": "auto"`` (the default): the start moves on the straight line toward the nearest anchor of the target
class (a training image of the class that the classifier recognises, from the latent statistics) and stops at the
first of ``AUTO_STEPS`` where the class model gives the target class at least ``target_probability``; a start
that never gets there along the line ends at the anchor, with ``reached`` false (best effort). Its ``strengths``
are the fractions of the way taken. A numeric strength (or a list of them, a strip) keeps the class-mean edit:
z = start + strength * (mean_to - mean_from), the means of the training set's posterior means; strength 0 is the
start itself (for an image, its reconstruction). Request: ``EditRequest`` in openapi.yaml.
"""

from __future__ import annotations

import numpy as np

from handlers.errors import RequestError
from handlers.service import Answer, Plan, Service, Worker, images_of
from runtime.artifacts import LatentStats

GRID_COLS = 16
AUTO_STEPS = np.linspace(0, 1, 101)  # the fractions of the way to the anchor that an "auto" edit tries
DEFAULT_TARGET_PROBABILITY = 0.99  # openapi.yaml says so


def calibrated(start: np.ndarray, target: int, probability: float, stats: LatentStats
               ) -> tuple[np.ndarray, float, bool]:
    """The "auto" edit of ``start`` toward class ``target``: (latent, fraction of the way, whether the class model
    reached ``probability``)."""
    anchor = stats.nearest_anchor(target, start[None])[0]
    path = start + AUTO_STEPS[:, None] * (anchor - start)
    hits = np.flatnonzero(stats.class_probabilities(path)[:, target] >= probability)
    step = int(hits[0]) if len(hits) else len(AUTO_STEPS) - 1
    return path[step], float(AUTO_STEPS[step]), bool(len(hits))


def plan(request: dict, worker: Worker) -> Plan:
    start = worker.point(request["start"], "start")
    target = worker.class_index(request["to"])
    strength = request["strength"]
    if strength == "auto":
        probability = request.get("target_probability", DEFAULT_TARGET_PROBABILITY)
        z, fraction, reached = calibrated(start, target, probability, worker.stats)
        return Plan(z[None], lambda logits: Answer(images_of(logits), 1, fields={
            "latents": z[None], "strengths": [fraction], "reached": [reached]}))
    if "target_probability" in request:
        raise RequestError("target_probability", "conflict",
                           'target_probability is the aim of "strength": "auto"; a numeric strength is its own aim')
    if "from" not in request:
        raise RequestError("from", "missing_field", "a numeric strength moves by the difference of two class means: "
                                              "give the class to move from")
    strengths = strength if isinstance(strength, list) else [strength]
    vector = worker.stats.class_direction(worker.class_index(request["from"]), target)
    z = start + np.asarray(strengths, np.float64)[:, None] * vector
    return Plan(z, lambda logits: Answer(images_of(logits), min(len(z), GRID_COLS),
                                         fields={"latents": z, "strengths": strengths}))


handle = Service(plan)
