"""TorchServe handler of ``traverse``: from a start, straight along latent directions.

A direction is a unit vector: a latent dimension, a principal direction of the test set's posterior means, or
from the mean of all class means toward one class's mean. Without directions: the most active dimensions, as in
the evaluation report's traversal figure, but from the given start. Request: ``TraverseRequest`` in openapi.yaml.
"""

from __future__ import annotations

import numpy as np

from handlers.errors import RequestError
from handlers.service import Answer, Plan, Service, Worker, images_of

DEFAULT_DIRECTIONS = 8


def unit(direction: dict, worker: Worker) -> np.ndarray:
    """The unit vector (latent_dim,) of a validated Direction."""
    stats = worker.stats
    if "dimension" in direction:
        return np.eye(worker.shapes.latent_dim)[direction["dimension"]]
    if "principal" in direction:
        return stats.principal_directions[direction["principal"]].astype(np.float64)
    toward = stats.class_means[worker.class_index(direction["class"])] - stats.class_means.mean(0)
    if np.linalg.norm(toward) < 1e-9:
        raise RequestError("directions", "invalid_value", f"class {direction['class']!r} sits at the mean of all "
                                                          "classes: it gives no direction")
    return toward.astype(np.float64) / np.linalg.norm(toward)


def plan(request: dict, worker: Worker) -> Plan:
    """start + t * u for each direction u (a row each) and each t evenly over the range."""
    start = worker.point(request["start"], "start")
    directions = request.get("directions") or [
        {"dimension": int(d)} for d in worker.stats.active_order[:DEFAULT_DIRECTIONS]]
    units = np.stack([unit(d, worker) for d in directions])
    t = np.linspace(*request["range"], request["steps"])
    z = (start + t[None, :, None] * units[:, None, :]).reshape(-1, len(start))

    def finish(logits: np.ndarray) -> Answer:
        images = images_of(logits)
        return Answer(images, len(t), array=images.reshape(len(directions), len(t), *images.shape[1:]),
                      fields={"latents": z, "directions": directions})

    return Plan(z, finish)


handle = Service(plan)
